"""The simulation on an existing Ray cluster: a real one started here with
``ray start --head`` on loopback, joined by ``launcher.simulate --ray-address``,
and stopped afterwards (only the processes this test started)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import run_folder as rf
from launcher.processes import descendants
from launcher.runtime import free_port
from launcher.simulate import main

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"


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
    port = free_port()
    worker_low = free_port()
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
        f"--ray-client-server-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--min-worker-port={worker_low}",
        f"--max-worker-port={worker_low + 200}",
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
    assert f"Virtual clients run on the Ray cluster at {address}." in capsys.readouterr().out
    run = rf.read_completed_run(tmp_path / "on-ray")
    assert run.history["num-nodes"] == 4 and run.num_partitions == 4
    assert run.rounds[1]["clients-train"]["nodes"] == 4
    assert run.rounds[1]["clients-train"]["num-examples"] == 60000
    # The simulation joined this cluster as a driver, and its clients ran on this cluster's workers.
    logs = temp / "session_latest" / "logs"
    assert list(logs.glob("python-core-driver-*")), sorted(p.name for p in logs.iterdir())
    worker_logs = " ".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err"))
    assert "ClientAppActor" in worker_logs or list(logs.glob("python-core-worker-*"))
