import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server_app.outputs import (
    ModelFileError,
    load_model,
    new_run_dir,
    resolve_output_dir,
    write_json,
    write_model,
)
from server_app.strategy import CheckedFedAvg, RoundFailed
from task.config import Settings
from task.models import build_model


def _reply(value: float, num_examples: int, node: int, **extra: int) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, node
    ask = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.full((2, 2), value, dtype=np.float32)]),
            "metrics": MetricRecord({"train-loss": value, "num-examples": num_examples, **extra}),
        }
    )
    return Message(content=content, reply_to=ask)


def _error(node: int, reason: str) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, node
    ask = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(Error(code=0, reason=reason), reply_to=ask)


def test_fedavg_weights_each_node_by_its_number_of_examples():
    strategy = CheckedFedAvg()
    arrays, metrics = strategy.aggregate_train(1, [_reply(1.0, 100, 1), _reply(4.0, 300, 2)])
    (mean,) = arrays.to_numpy_ndarrays()
    assert np.allclose(mean, (1.0 * 100 + 4.0 * 300) / 400)
    assert metrics["train-loss"] == pytest.approx(3.25)
    assert strategy.train_metrics[1] == {"train-loss": pytest.approx(3.25), "nodes": 2, "num-examples": 400}


def test_a_round_where_every_node_failed_stops_the_run():
    strategy = CheckedFedAvg()
    with pytest.raises(RoundFailed, match="partition-id=7 is outside"):
        strategy.aggregate_train(2, [_error(1, "partition-id=7 is outside [0, 2)"), _error(2, "x")])


def test_a_round_where_no_node_replied_stops_the_run():
    with pytest.raises(RoundFailed, match="Round 3: no node replied"):
        CheckedFedAvg().aggregate_train(3, [])


def test_num_partitions_is_collected_not_averaged():
    strategy = CheckedFedAvg()
    replies = [_reply(1.0, 100, 1, **{"num-partitions": 50}), _reply(2.0, 100, 2, **{"num-partitions": 50})]
    _, metrics = strategy.aggregate_train(1, replies)
    strategy.aggregate_train(2, [_reply(1.0, 100, 3, **{"num-partitions": 20})])
    assert strategy.num_partitions == {50, 20}
    assert dict(metrics) == {"train-loss": pytest.approx(1.5)}
    assert "num-partitions" not in strategy.train_metrics[1]


def test_one_failed_node_does_not_stop_the_round():
    arrays, _ = CheckedFedAvg().aggregate_train(1, [_error(1, "boom"), _reply(2.0, 10, 2)])
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 2.0)


def test_relative_output_dir_is_taken_from_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_output_dir("runs") == tmp_path / "runs"
    assert resolve_output_dir("/abs/runs") == Path("/abs/runs")
    assert resolve_output_dir("~/runs") == tmp_path / "runs"


def test_run_folders_are_never_reused(tmp_path):
    first = new_run_dir(str(tmp_path), "exp", "mlp", 1)
    write_json(first / "history.json", {"status": "completed"})
    with pytest.raises(FileExistsError, match="never overwritten"):
        new_run_dir(str(tmp_path), "exp", "mlp", 2)
    assert json.loads((first / "history.json").read_text()) == {"status": "completed"}


def test_model_file_loads_back(tmp_path):
    state = {"w": torch.arange(4.0)}
    write_model(tmp_path / "model.pt", state)
    assert torch.equal(torch.load(tmp_path / "model.pt")["w"], state["w"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_model_checks_the_file_against_the_run_config(tmp_path):
    settings = Settings.from_run_config({"model": "autoencoder", "ae-hidden": "64", "ae-code-size": 8})
    with pytest.raises(ModelFileError, match="model.pt is missing"):
        load_model(tmp_path, settings)
    write_model(tmp_path / "model.pt", build_model(Settings()).state_dict())  # an MLP
    with pytest.raises(ModelFileError, match="does not match config.json .model='autoencoder', encoder.0.weight"):
        load_model(tmp_path, settings)
    trained = build_model(settings)
    write_model(tmp_path / "model.pt", trained.state_dict())
    loaded = load_model(tmp_path, settings)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))
