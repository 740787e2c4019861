"""Flower's deployment runtime on loopback: one SuperLink and two SuperNodes,
talking over HTTP, each SuperNode serving one partition through `--node-config`."""

import pytest

import run_folder as rf
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.runtime import start_superlink, start_supernode

pytestmark = pytest.mark.slow


def test_one_round_over_superlink_and_two_supernodes(tmp_path):
    with flower_home() as home:
        address = start_superlink(home, simulation=False)
        home.add_connection("loopback", address)
        nodes = [start_supernode(home, address, partition_id=i, num_partitions=2) for i in range(2)]
        run_id = flwr_run(
            home,
            "loopback",
            {
                "num-server-rounds": 1,
                "fraction-train": 1.0,
                "fraction-evaluate": 1.0,
                "local-epochs": 1,
                "output-dir": str(tmp_path),
                "run-name": "deployed",
            },
            echo=False,
        )
        assert all(node.poll() is None for node in nodes)  # still serving after the run
        again = flwr_run(
            home,
            "loopback",
            {
                "num-server-rounds": 1,
                "fraction-train": 1.0,
                "fraction-evaluate": 1.0,
                "local-epochs": 1,
                "output-dir": str(tmp_path),
                "run-name": "again",
            },
            echo=False,
        )
        assert again != run_id

    run = rf.read_completed_run(tmp_path / "deployed")
    history = run.history
    assert run.config["run-id"] == run_id and history["num-nodes"] == 2 and run.num_partitions == 2
    # both nodes trained, on 30,000 images each: the aggregate stands for all 60,000
    assert history["rounds"][1]["clients-train"]["nodes"] == 2
    assert history["rounds"][1]["clients-train"]["num-examples"] == 60000
    assert history["rounds"][1]["server"]["accuracy"] > 0.9
    assert run.folder.file(rf.MODEL).stat().st_size > 700_000
    # the same seed and config, once more on the same federation: the same bytes and metrics
    rerun = rf.read_completed_run(tmp_path / "again")
    assert rerun.folder.file(rf.MODEL).read_bytes() == run.folder.file(rf.MODEL).read_bytes()
    strip = lambda rounds: [{k: v for k, v in r.items() if k not in ("wall-time-s", "elapsed-s")} for r in rounds]  # noqa: E731
    assert strip(rerun.rounds) == strip(run.rounds)


def test_flwr_stop_leaves_an_interrupted_history_and_a_checkpoint_to_resume(tmp_path):
    import json
    import subprocess
    import threading
    import time

    from launcher import FlowerError

    with flower_home() as home:
        address = start_superlink(home, simulation=False)
        home.add_connection("loopback", address)
        for i in range(2):
            start_supernode(home, address, partition_id=i, num_partitions=2)
        outcome = {}

        def run() -> None:
            try:
                flwr_run(
                    home,
                    "loopback",
                    {
                        "num-server-rounds": 50,
                        "local-epochs": 1,
                        "fraction-evaluate": 0.0,
                        "output-dir": str(tmp_path),
                        "run-name": "stopped",
                    },
                    echo=False,
                    timeout=600,
                )
            except FlowerError as exc:
                outcome["error"] = str(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if len(rf.RunFolder(tmp_path / "stopped").history()["rounds"]) >= 2:
                    break
            except (rf.RunFolderError, FileNotFoundError):
                pass
            time.sleep(0.5)
        listed = subprocess.run(
            ["flwr", "list", "loopback", "--format", "json"], env=home.env, capture_output=True, text=True, check=True
        )
        run_id = json.loads(listed.stdout)["runs"][0]["run-id"]
        subprocess.run(["flwr", "stop", str(run_id), "loopback"], env=home.env, capture_output=True, check=True)
        thread.join(120)
    assert "finished:stopped" in outcome["error"]
    folder = rf.RunFolder(tmp_path / "stopped")
    history = folder.history()
    assert history["status"] == "interrupted" and "stopped by a signal" in history["error"]
    assert folder.read_checkpoint().server_round >= 1
    with pytest.raises(rf.RunFolderError, match="was interrupted .*resume-from="):
        rf.read_completed_run(folder.path)
