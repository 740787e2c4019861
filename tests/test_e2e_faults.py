"""Faults injected for real, through Flower's runtime: misbehaving clients in a Ray
simulation, a client still stuck when the ServerApp completes (the launcher ends the
run anyway), a SuperNode killed with SIGKILL mid-round and restarted, a SuperLink
killed after round 2 and the run resumed to the same bytes as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import run_folder as rf
from launcher import PROJECT_ROOT, FlowerError
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.processes import kill_tree, running
from launcher.runtime import start_superlink, start_supernode
from launcher.simulate import federation_config, run_simulation

pytestmark = pytest.mark.slow

QUICK = {"local-epochs": 1, "fraction-train": 1.0, "fraction-evaluate": 0.0, "seed": 7}


@pytest.fixture
def faults_allowed(monkeypatch):
    monkeypatch.setenv("FEDMNIST_ALLOW_FAULTS", "1")  # reaches the SuperLink, the ServerApp and every ClientApp


def _wait_for_round(folder: Path, server_round: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(r["round"] >= server_round for r in rf.RunFolder(folder).history()["rounds"]):
                return
        except (rf.RunFolderError, FileNotFoundError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"round {server_round} never appeared in {folder}")


def test_misbehaving_clients_are_dropped_and_the_run_completes(tmp_path, faults_allowed):
    run_dir = run_simulation(
        {
            **QUICK,
            "num-server-rounds": 2,
            "round-timeout": 45.0,
            "run-name": "faulty",
            "fault-injection": "nan@1 shape@2 raise@3:1 hang@0:2",
        },
        num_supernodes=5,
        output_dir=tmp_path,
        echo=False,
    )
    run = rf.read_completed_run(run_dir)
    first, second = run.rounds[1], run.rounds[2]
    reasons = {(f["round"], f["partition-id"]): f["reason"] for r in run.rounds for f in r["failures"]}
    assert reasons[(1, 1)] == reasons[(2, 1)] == "array net.1.weight holds NaN or infinite values"
    assert reasons[(1, 2)].startswith("array net.1.weight has shape (3, 3)")
    assert "injected fault" in reasons[(1, 3)]
    assert reasons[(2, 0)] == "no reply within round-timeout"
    assert first["clients-train"]["nodes"] == 2 and second["clients-train"]["nodes"] == 2  # 5 asked, 3 dropped
    assert all(np.isfinite(v.numpy()).all() for v in run.model.state_dict().values())
    assert second["server"]["accuracy"] > 0.85


def test_a_client_that_never_returns_is_abandoned_once_the_server_app_completes(tmp_path, faults_allowed):
    """Partition 1 sleeps through the last round (round-timeout + 20 s): the ServerApp gives up on it,
    completes the run, and Flower's simulation would wait for the sleeper. The launcher stops it."""
    mark = f"FEDMNIST_TEST_MARK=abandon-{uuid.uuid4().hex}"  # inherited by every process the launcher starts
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}  # FEDMNIST_ALLOW_FAULTS=1 included
    knobs = (
        "local-epochs=1 fraction-train=1.0 fraction-evaluate=0.0 seed=7 num-server-rounds=2 round-timeout=15.0 "
        "run-name='stuck' fault-injection='hang@1:2'"
    )
    console = tmp_path / "console.txt"
    with console.open("w") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher.simulate",
                "--num-supernodes",
                "3",
                "--output-dir",
                str(tmp_path),
                "--timeout",
                "600",
                "--run-config",
                knobs,
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        final_at = None
        while launcher.poll() is None:
            if final_at is None:
                try:
                    if rf.RunFolder(tmp_path / "stuck").history()["status"] in (rf.COMPLETED, rf.FAILED):
                        final_at = time.monotonic()
                except rf.RunFolderError:
                    pass
            try:
                launcher.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        exited_at = time.monotonic()
    text = console.read_text()
    assert launcher.returncode == 0, text
    assert final_at is not None, text
    print(f"launcher exit {exited_at - final_at:.1f} s after the ServerApp's final status")
    assert exited_at - final_at < 60, text
    assert "abandoned client(s) that had not replied: partition 1 (node " in text and "since round 2." in text, text
    run = rf.read_completed_run(tmp_path / "stuck")  # 'completed', the model and the rounds as the ServerApp wrote them
    assert [r["round"] for r in run.rounds] == [0, 1, 2]
    assert [(f["partition-id"], f["reason"]) for f in run.rounds[2]["failures"]] == [
        (1, "no reply within round-timeout")
    ]
    deadline = time.monotonic() + 10  # and nothing the launcher started is left, the sleeping client included
    while (left := _processes_with(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []


def _processes_with(entry: str) -> list[int]:
    """Live processes whose environment holds ``entry`` (``NAME=value``)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0") and running(int(environ.parent.name)):
                found.append(int(environ.parent.name))
        except OSError:
            pass
    return found


def test_a_supernode_killed_mid_round_does_not_end_the_run_and_rejoins(tmp_path):
    with flower_home() as home:
        address = start_superlink(home, simulation=False)
        home.add_connection("loopback", address)
        nodes = [start_supernode(home, address, partition_id=i, num_partitions=3) for i in range(3)]
        folder = tmp_path / "killed"
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["run-id"] = flwr_run(
                    home,
                    "loopback",
                    {
                        **QUICK,
                        "num-server-rounds": 6,
                        "min-available-nodes": 3,
                        "round-timeout": 120.0,
                        "output-dir": str(tmp_path),
                        "run-name": "killed",
                    },
                    echo=False,
                    timeout=900,
                )
            except FlowerError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        _wait_for_round(folder, 1)
        os.kill(nodes[2].pid, signal.SIGKILL)  # round 2 is under way: its reply never comes
        _wait_for_round(folder, 2)
        start_supernode(home, address, partition_id=2, num_partitions=3)  # the same shard, a new node id
        thread.join(900)
        assert "error" not in outcome, outcome.get("error")
    run = rf.read_completed_run(folder)
    trained = [r["clients-train"]["nodes"] for r in run.rounds[1:]]
    assert trained[0] == 3 and trained[1] == 2  # round 2 went on without the killed node
    assert trained[-1] == 3  # the restarted node took part again
    # The SuperLink answers for the node it lost (within round-timeout=120): recorded as gone, not as a timeout.
    lost = [f["reason"] for f in run.rounds[2]["failures"] if f["partition-id"] == 2]
    assert lost and set(lost) == {
        "the node left the federation before replying (the SuperLink stopped receiving its heartbeats)"
    }, lost


def test_a_killed_run_resumes_to_the_bytes_of_an_uninterrupted_one(tmp_path):
    knobs = {**QUICK, "num-server-rounds": 4, "fraction-train": 0.5, "fraction-evaluate": 0.5}
    whole = run_simulation({**knobs, "run-name": "whole"}, num_supernodes=4, output_dir=tmp_path, echo=False)
    again = run_simulation({**knobs, "run-name": "again"}, num_supernodes=4, output_dir=tmp_path, echo=False)
    assert rf.RunFolder(whole).file(rf.MODEL).read_bytes() == rf.RunFolder(again).file(rf.MODEL).read_bytes()
    assert _metrics(whole) == _metrics(again)

    cut = tmp_path / "cut"
    with flower_home() as home:
        home.add_connection("sim", start_superlink(home, simulation=True))
        superlink = home.processes[0]
        ended: dict[str, Exception] = {}

        def run() -> None:
            try:
                flwr_run(
                    home,
                    "sim",
                    {**knobs, "output-dir": str(tmp_path), "run-name": "cut"},
                    federation_config(4),
                    echo=False,
                    timeout=600,
                )
            except FlowerError as exc:
                ended["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        _wait_for_round(cut, 2)
        kill_tree(superlink.pid)  # the SuperLink, its SuperExec, the simulation and Ray, all at once
        thread.join(120)
        assert not thread.is_alive()
        assert "SuperLink has not answered" in str(ended.get("error")), ended
    history = rf.RunFolder(cut).history()
    assert history["status"] == "running"  # a reader can tell the run never finished
    assert history["rounds"][-1]["round"] < 4  # nothing outlived the kill to finish it
    with pytest.raises(rf.RunFolderError, match="resume-from="):
        rf.read_completed_run(cut)

    resumed = run_simulation(
        {**knobs, "run-name": "resumed", "resume-from": str(cut)}, num_supernodes=4, output_dir=tmp_path, echo=False
    )
    assert rf.RunFolder(resumed).config()["resumed-from"] == str(cut)
    assert rf.RunFolder(resumed).file(rf.MODEL).read_bytes() == rf.RunFolder(whole).file(rf.MODEL).read_bytes()
    assert _metrics(resumed) == _metrics(whole)


def _metrics(run_dir: Path) -> list[dict]:
    """Each round's metrics and failures, without the wall times."""
    rounds = rf.RunFolder(run_dir).history()["rounds"]
    return [{k: v for k, v in r.items() if k not in ("wall-time-s", "elapsed-s")} for r in rounds]
