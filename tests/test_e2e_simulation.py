"""`flwr run` in simulation for real: a SuperLink of its own, Ray, 10 virtual clients."""

import signal
import subprocess
import sys
import time

import psutil
import pytest

import run_folder as rf
from launcher import PROJECT_ROOT, FlowerError
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.processes import descendants, running
from launcher.runtime import start_superlink
from launcher.simulate import run_simulation

pytestmark = pytest.mark.slow


def test_ten_clients_two_rounds_reach_85_percent(tmp_path):
    run_dir = run_simulation(
        {"num-server-rounds": 2, "fraction-train": 0.5, "local-epochs": 1, "run-name": "e2e"},
        num_supernodes=10,
        output_dir=tmp_path,
        echo=False,
    )
    assert run_dir == tmp_path / "e2e"
    run = rf.read_completed_run(run_dir)  # completed, and model.pt matches config.json
    history = run.history
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    accuracy = [r["server"]["accuracy"] for r in history["rounds"]]
    assert accuracy[0] < 0.3 < 0.85 < accuracy[2]
    assert accuracy[1] < accuracy[2]
    assert history["rounds"][1]["clients-train"]["num-examples"] > 0
    # Round 0 is the initial evaluation, before any training: it takes no round time.
    assert [r["wall-time-s"] > 0 for r in history["rounds"]] == [False, True, True]
    assert history["rounds"][2]["elapsed-s"] == pytest.approx(
        sum(r["wall-time-s"] for r in history["rounds"]), abs=0.01
    )

    assert run.config["num-server-rounds"] == 2 and run.num_partitions == 10 and history["num-nodes"] == 10


def test_a_bad_value_fails_the_run_with_its_message(tmp_path):
    """Straight through `flwr run` (no launcher pre-check): the ServerApp refuses."""
    with flower_home() as home:
        home.add_connection("sim", start_superlink(home, simulation=True))
        with pytest.raises(FlowerError, match=r"fraction-train=1.5 is not allowed"):
            flwr_run(
                home,
                "sim",
                {"fraction-train": 1.5, "output-dir": str(tmp_path)},
                {"num-supernodes": 2},
                echo=False,
            )
    assert not list(tmp_path.iterdir())  # nothing written for a run that never started


def _is_flwr_log(cmdline: list[str]) -> bool:
    return any(part.endswith("flwr") for part in cmdline[:2]) and "log" in cmdline


def test_the_launcher_follows_the_log_itself_and_echoes_it(tmp_path):
    """--verbose prints Flower's log as it comes; the launcher reads it over the Control API,
    so no `flwr log` process runs beside it."""
    out = tmp_path / "out.txt"
    argv = ["--num-supernodes", "2", "--output-dir", str(tmp_path), "--verbose"]
    with out.open("w") as stdout:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "launcher.simulate", *argv, "--run-config", "num-server-rounds=1 run-name='v'"],
            cwd=PROJECT_ROOT,
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
        seen: dict[int, list[str]] = {}
        while launcher.poll() is None:
            for child in psutil.Process(launcher.pid).children(recursive=True):
                try:
                    seen.setdefault(child.pid, child.cmdline())
                except psutil.Error:  # gone meanwhile
                    pass
            time.sleep(0.2)
    text = out.read_text()
    assert launcher.returncode == 0, text
    assert any("flower-superlink" in " ".join(cmd) for cmd in seen.values())  # the watch saw the run's processes
    assert [cmd for cmd in seen.values() if _is_flwr_log(cmd)] == []
    assert "Round 1/1: server test accuracy" in text  # the ServerApp's log, echoed by the launcher
    assert "Round 1/1: server test accuracy" in (tmp_path / "v" / rf.FLOWER_LOG).read_text()


def test_a_launcher_stopped_with_sigterm_stops_flower_and_marks_the_run_interrupted(tmp_path):
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.simulate",
            "--num-supernodes",
            "4",
            "--output-dir",
            str(tmp_path),
            "--run-config",
            "num-server-rounds=50 local-epochs=1 run-name='long'",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    history = tmp_path / "long" / rf.HISTORY
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        history.is_file() and len(rf.RunFolder(tmp_path / "long").history()["rounds"]) >= 2
    ):
        time.sleep(0.5)
    started = descendants(launcher.pid)  # SuperLink, SuperExec, the simulation, Ray
    assert len(started) >= 4
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    time.sleep(1)
    assert [pid for pid in started if running(pid)] == []
    finished = rf.RunFolder(tmp_path / "long").history()
    assert finished["status"] == rf.INTERRUPTED and finished["rounds"][-1]["round"] < 50
