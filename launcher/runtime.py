"""Flower's own servers as child processes: ``flower-superlink`` and ``flower-supernode`` on
free loopback ports, each started in a :class:`~launcher.flower_home.FlowerHome`; a SuperLink
counts as up once its ``/health`` answers."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

from launcher import FlowerError
from launcher.flower_home import FlowerHome
from launcher.timings import mark
from launcher.warm_clientapp import enabled as warm_enabled

HEALTH_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(
    url: str,
    timeout: float = HEALTH_TIMEOUT_S,
    *,
    ca: str | os.PathLike | None = None,
    check: Callable[[], None] | None = None,
    request_timeout: float = 1.0,
) -> bool:
    """Poll ``url`` (a SuperLink's ``/health``) every 0.3 s until it answers 200 (True), or
    until ``timeout`` seconds have passed (False). ``check`` is called before every try and
    raises to end the wait (the process behind the URL has exited); ``ca`` verifies an https URL."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            with urllib.request.urlopen(url, timeout=request_timeout, context=context) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def start_superlink(
    home: FlowerHome,
    simulation: bool,
    env: dict[str, str | None] | None = None,
    while_starting: Callable[[], object] | None = None,
) -> str:
    """Start ``flower-superlink`` on free loopback ports; return its address.

    ``env`` is added to its environment (the simulation it runs inherits it, e.g.
    ``RAY_ADDRESS``); ``while_starting`` is called once the process is spawned and
    before waiting for it to answer, so slow imports can overlap its start-up."""
    port, control = free_port(), free_port()
    args = [
        "flower-superlink",
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--control-api-address",
        f"127.0.0.1:{control}",
        "--disable-runtime-dependency-installation",
    ]
    if simulation:
        args.append("--simulation")
    proc = home.spawn("superlink", args, env=env)
    address = f"127.0.0.1:{port}"
    if while_starting is not None:
        while_starting()

    def still_running() -> None:
        if proc.poll() is not None:
            raise FlowerError(f"superlink exited with {proc.returncode}:\n{home.log_tail('superlink')}")

    if not wait_until_healthy(f"http://{address}/health", check=still_running):
        raise FlowerError(
            f"superlink did not become healthy within {HEALTH_TIMEOUT_S:.0f} s:\n{home.log_tail('superlink')}"
        )
    mark("superlink up")
    return address


def supernode_threads(threads: int = 1) -> dict[str, str]:
    """Environment that caps PyTorch's CPU threads in a SuperNode's ClientApp.

    Several SuperNodes on one machine each start as many threads as there are
    cores; with batches of ten images the threads then wait on each other at every
    operation, and a round that takes seconds takes minutes (measured here: 124 s
    instead of about 3 s for two nodes on two cores)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def start_supernode(
    home: FlowerHome,
    superlink: str,
    partition_id: int,
    num_partitions: int,
    warm: bool | None = None,
    idle_s: float | None = None,
) -> subprocess.Popen:
    """Start one ``flower-supernode`` serving the ClientApp for one partition, one PyTorch thread
    each (they share this machine's cores), next to a fork server of its own that starts its
    ClientApp processes warm (``launcher.warm``; ``warm=False`` or ``FEDMNIST_WARM_CLIENTAPP=0``:
    Flower's plain process per message). ``idle_s``: how long the node waits after a pull that
    found no message (``launcher.prompt_supernode``); None keeps Flower's 3 s."""
    prompt = [sys.executable, "-m", "launcher.prompt_supernode", "--idle-s", str(idle_s)] if idle_s else []
    args = [
        *prompt,
        "flower-supernode",
        "--insecure",
        "--superlink",
        superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--node-config",
        f"partition-id={partition_id} num-partitions={num_partitions}",
    ]
    if warm is None:
        warm = warm_enabled(home.env)
    if warm:
        args = [sys.executable, "-m", "launcher.warm", *args]
    return home.spawn(f"supernode-{partition_id}", args, env=supernode_threads())
