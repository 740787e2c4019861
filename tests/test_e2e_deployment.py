"""Flower's deployment runtime on loopback: one SuperLink and two SuperNodes,
talking over HTTP, each SuperNode serving one partition through `--node-config`."""

import pytest

import run_folder as rf
from launcher.flower import flower_home, flwr_run, start_superlink, start_supernode

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
            {"num-server-rounds": 1, "fraction-train": 1.0, "fraction-evaluate": 1.0, "local-epochs": 1,
             "output-dir": str(tmp_path), "run-name": "again"},
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
