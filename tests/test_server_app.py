"""The ServerApp's main loop, in process: a Grid that hands each message to the real
ClientApp of the node it is addressed to (no SuperLink, no Ray)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from flwr.app import Context, Error, Message, RecordDict

import run_folder as rf
from client_app.app import app as client_app
from server_app.app import main as server_main
from task.errors import ConfigError
from task.flower_compat import TaskIdentity

TINY = {
    "num-server-rounds": 2,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "min-available-nodes": 2,
    "local-epochs": 1,
    "partitioning": "iid-balanced",
    "samples-per-class": 20,
    "device": "cpu",
    "run-name": "inprocess",
}


class InProcessGrid:
    """Just enough of Flower's Grid: nodes that answer through the real ClientApp."""

    def __init__(self, node_configs: dict[int, dict], run_config: dict) -> None:
        self.node_configs = node_configs
        self.run_config = run_config
        self.sent: list[str] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for _i, message in enumerate(messages):
            node = message.metadata.dst_node_id
            self.sent.append(message.metadata.message_type)
            context = Context(1, node, self.node_configs[node], RecordDict(), self.run_config)
            TaskIdentity.node_id = node
            try:
                replies.append(client_app(message, context))
            except Exception as exc:  # as Flower does: the error travels back in a reply
                replies.append(Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message))
            finally:
                TaskIdentity.node_id = 0
        return replies


def _run(tmp_path, node_configs: dict[int, dict], **knobs) -> InProcessGrid:
    run_config = {**TINY, "output-dir": str(tmp_path), **knobs}
    grid = InProcessGrid(node_configs, run_config)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    server_main(grid, Context(1, 0, {}, RecordDict(), run_config))
    return grid


def test_a_run_asks_the_nodes_trains_evaluates_and_fills_the_run_folder(tmp_path):
    grid = _run(tmp_path, {11: {"partition-id": 0, "num-partitions": 2}, 12: {"partition-id": 1, "num-partitions": 2}})
    assert grid.sent[:2] == ["query", "query"]
    assert grid.sent[2:] == ["train", "train", "evaluate", "evaluate"] * 2
    run = rf.read_completed_run(tmp_path / "inprocess")
    assert run.num_partitions == 2 and run.history["num-nodes"] == 2
    assert [r["round"] for r in run.rounds] == [0, 1, 2]
    assert run.rounds[2]["server"]["accuracy"] > run.rounds[0]["server"]["accuracy"] + 0.3
    assert run.rounds[1]["clients-train"]["nodes"] == 2
    assert run.rounds[1]["clients-train"]["num-examples"] == 2 * 200  # 20 of each digit per node
    assert run.rounds[1]["clients-evaluate"]["nodes"] == 2
    assert run.config["run-id"] == 1 and "num-nodes" not in run.config  # config.json: what is known at the start


def test_nodes_claiming_the_same_shard_stop_the_run_before_any_folder_is_made(tmp_path):
    nodes = {11: {"partition-id": 1, "num-partitions": 2}, 12: {"partition-id": 1, "num-partitions": 2}}
    with pytest.raises(ConfigError, match="partition-id=1 on nodes 11, 12"):
        _run(tmp_path, nodes)
    assert not (tmp_path / "inprocess").exists()


def test_a_node_without_a_partition_is_named_in_the_log_and_the_others_carry_on(tmp_path, caplog):
    nodes = {11: {"partition-id": 0, "num-partitions": 2}, 12: {}}
    grid = _run(tmp_path, nodes)
    assert "Node 12 is left out of the run" in caplog.text and "lacks whole-number partition-id" in caplog.text
    run = rf.read_completed_run(tmp_path / "inprocess")
    assert run.rounds[1]["clients-train"]["nodes"] == 1 and grid.sent.count("query") == 2


def test_a_failed_round_marks_the_history_failed(tmp_path, monkeypatch):
    import client_app.app as client_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(client_module, "train_round", broken)
    nodes = {11: {"partition-id": 0, "num-partitions": 2}, 12: {"partition-id": 1, "num-partitions": 2}}
    with pytest.raises(Exception, match="Round 1: 0 good training replies.*RuntimeError: disk full"):
        _run(tmp_path, nodes, **{"round-retries": 1})
    history = json.loads((tmp_path / "inprocess" / "history.json").read_text())
    assert history["status"] == "failed" and "disk full" in history["error"]
    assert [r["round"] for r in history["rounds"]] == [0]


TWO = {11: {"partition-id": 0, "num-partitions": 2}, 12: {"partition-id": 1, "num-partitions": 2}}


def _files(folder):
    return {name: (folder / name).read_bytes() for name in (rf.MODEL,)}


def _metrics(folder):
    return [
        {k: v for k, v in r.items() if k not in ("wall-time-s", "elapsed-s")}
        for r in rf.RunFolder(folder).history()["rounds"]
    ]


def test_the_same_seed_gives_the_same_run_byte_for_byte(tmp_path):
    _run(tmp_path, TWO, **{"run-name": "a", "fraction-train": 0.5})
    _run(
        tmp_path, dict(reversed(TWO.items())), **{"run-name": "b", "fraction-train": 0.5}
    )  # nodes listed the other way
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_a_stopped_run_resumes_to_the_same_model_and_history(tmp_path, monkeypatch):
    _run(tmp_path, TWO, **{"run-name": "whole", "num-server-rounds": 3})

    import server_app.app as server_module

    real = server_module.RoundRunner.train

    def crash_in_round_3(self, grid, server_round, arrays):
        if server_round == 3:
            raise KeyboardInterrupt  # Ctrl-C in round 3
        return real(self, grid, server_round, arrays)

    monkeypatch.setattr(server_module.RoundRunner, "train", crash_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, TWO, **{"run-name": "cut", "num-server-rounds": 3})
    cut = rf.RunFolder(tmp_path / "cut")
    assert cut.history()["status"] == "interrupted" and not cut.file(rf.MODEL).exists()
    assert cut.read_checkpoint().server_round == 2
    monkeypatch.setattr(server_module.RoundRunner, "train", real)

    _run(tmp_path, TWO, **{"run-name": "resumed", "num-server-rounds": 3, "resume-from": str(cut.path)})
    resumed = rf.read_completed_run(tmp_path / "resumed")
    assert resumed.config["resumed-from"] == str(cut.path)
    assert [r["round"] for r in resumed.rounds] == [0, 1, 2, 3]
    assert _files(tmp_path / "whole") == _files(tmp_path / "resumed")
    assert _metrics(tmp_path / "whole") == _metrics(tmp_path / "resumed")


def test_resuming_with_other_settings_is_refused(tmp_path):
    _run(tmp_path, TWO, **{"run-name": "first", "num-server-rounds": 1})
    with pytest.raises(ConfigError, match=r"ran with other settings \(learning-rate=0.1 there, 0.5 here\)"):
        _run(tmp_path, TWO, **{"run-name": "second", "learning-rate": 0.5, "resume-from": str(tmp_path / "first")})
    with pytest.raises(ConfigError, match="already has 1 rounds and num-server-rounds=1"):
        _run(tmp_path, TWO, **{"run-name": "third", "num-server-rounds": 1, "resume-from": str(tmp_path / "first")})


def test_the_run_folder_keeps_the_manifest_the_log_and_tensorboard_events(tmp_path):
    _run(tmp_path, TWO, **{"run-name": "kept", "tensorboard": True})
    folder = rf.RunFolder(tmp_path / "kept")
    manifest = folder.manifest()
    assert manifest["versions"]["flwr"] == "1.41.0" and manifest["versions"]["python"].startswith("3.11")
    assert manifest["num-partitions"] == 2 and len(manifest["shards"]["train"]) == 2
    assert manifest["shards"]["train"][0] != manifest["shards"]["train"][1]
    assert manifest["run-config"]["seed"] == 42 and manifest["machine"]["cpu-count"] >= 1
    log_text = folder.file(rf.SERVER_LOG).read_text()
    assert "Round 2/2: server test accuracy" in log_text and "Run complete" in log_text
    events = list(folder.file(rf.TENSORBOARD).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100


def test_shard_hashes_are_the_same_for_the_same_seed_and_differ_for_another():
    from server_app.records import shard_hashes
    from task.config import Settings

    assert shard_hashes(Settings(), 10) == shard_hashes(Settings(), 10)
    assert shard_hashes(Settings(), 10)["train"] != shard_hashes(Settings(seed=1), 10)["train"]


def test_tensorboard_asked_for_but_missing_is_refused_before_round_1(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ConfigError, match="tensorboard=true needs the tensorboard package"):
        _run(tmp_path, TWO, **{"run-name": "tb", "tensorboard": True})
    assert not (tmp_path / "tb").exists()
