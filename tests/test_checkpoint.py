"""checkpoint.pt: every value comes back exactly, Flower's carried state and the privacy
ledger continue as if the run had not stopped, and a file made to run code is refused
unread (checked from the attacker's side: the same file does run code when unpickled)."""

from __future__ import annotations

import importlib
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

import run_folder as rf
from run_folder.checkpoint import FORMAT, VERSION, Checkpoint
from run_folder.convert import main as convert_main
from task.config import Settings
from task.flower_compat import ATTRIBUTES, STRATEGY_STATE, TaskIdentity


class WritesAMarker:
    """What an attacker puts in a checkpoint: unpickling it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def run_folder(tmp_path: Path) -> rf.RunFolder:
    folder = rf.RunFolder.create(tmp_path, "run", "mlp")
    folder.write_config(Settings().to_run_config())
    return folder


def a_checkpoint() -> Checkpoint:
    arrays = {
        "w": np.random.default_rng(0).standard_normal((20, 7)).astype(np.float32),
        "half": np.array([1.5, -0.0, np.inf], np.float16),
        "empty": np.zeros((0, 3)),
        "scalar": np.array(7, np.int64),
        "mask": np.array([True, False]),
        "bytes": np.arange(5, dtype=np.uint8),
    }
    rounds = [
        {"round": 0, "server": {"loss": math.nan, "accuracy": np.float64(0.1)}, "failures": []},
        {"round": 1, "server": {"loss": 2.5, "accuracy": 0.5}, "clients-train": None, "failures": [{"node": 3}]},
    ]
    strategy = {
        "momentum_vector": [np.full(3, 0.25, np.float32), np.ones((2, 2))],
        "m_t": {"w": np.full(2, 1e-9)},
        "privacy": {"accountant": {"orders": [1.5, 2.0], "compositions": []}, "accountable": True},
        "pair": (1, "a"),
    }
    return Checkpoint(3, arrays, rounds, 4, strategy)


def same(a, b) -> bool:
    """Equal values of equal types; arrays equal in dtype, shape and every byte; NaN equals NaN."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_every_value_comes_back_exactly(tmp_path):
    folder, written = run_folder(tmp_path), a_checkpoint()
    folder.write_checkpoint(written)
    read = folder.read_checkpoint()
    assert (read.server_round, read.num_nodes) == (3, 4)
    for name in ("arrays", "rounds", "strategy_state"):
        assert same(getattr(written, name), getattr(read, name)), name
    assert not same(written.arrays, {**read.arrays, "w": read.arrays["w"].astype(np.float64)})  # same() can fail


def test_the_file_holds_only_tensors_and_plain_values(tmp_path):
    folder = run_folder(tmp_path)
    folder.write_checkpoint(a_checkpoint())
    data = torch.load(folder.file(rf.CHECKPOINT), weights_only=True)
    assert (data["format"], data["version"]) == (FORMAT, VERSION)
    assert isinstance(data["arrays"]["w"], torch.Tensor) and isinstance(data["strategy"]["m_t"]["w"], torch.Tensor)


@pytest.mark.parametrize(
    "value, culprit",
    [(object(), "strategy.x: object"), (np.array([None]), "strategy.x: object"), ({1, 2}, "strategy.x: set")],
)
def test_a_value_a_checkpoint_cannot_give_back_is_refused_when_written(tmp_path, value, culprit):
    checkpoint = a_checkpoint()
    checkpoint.strategy_state["x"] = value
    with pytest.raises(TypeError, match=culprit):
        run_folder(tmp_path).write_checkpoint(checkpoint)


def _carried_strategies():
    return [a for a in ATTRIBUTES if set(a.names) <= set(STRATEGY_STATE)]


def _aggregate(strategy, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
    """One round of training replies (each node sends the arrays plus its id and the round) through the strategy."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    class Nodes:
        def get_node_ids(self):
            return [1, 2]

    replies = []
    for ask in strategy.configure_train(server_round, arrays, ConfigRecord({}), Nodes()):
        TaskIdentity.node_id = node = ask.metadata.dst_node_id
        trained = ArrayRecord({k: Array(v.numpy() + node * server_round * 0.1) for k, v in arrays.items()})
        content = RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 10 * node})})
        replies.append(Message(content=content, reply_to=ask))
    TaskIdentity.node_id = 0
    averaged, _ = strategy.aggregate_train(server_round, replies)
    return averaged


@pytest.mark.parametrize("attrs", _carried_strategies(), ids=lambda a: a.cls)
def test_flowers_carried_state_continues_through_the_file_as_if_never_stopped(tmp_path, attrs):
    """Round 2 of a strategy restored from the file gives the bytes of the strategy that never stopped."""

    def new_strategy():
        knobs = {"server_momentum": 0.9} if attrs.cls == "FedAvgM" else {}
        cls = getattr(importlib.import_module(attrs.module), attrs.cls)
        return cls(fraction_train=1.0, min_train_nodes=2, min_available_nodes=2, **knobs)

    start = ArrayRecord({"w": Array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3))})
    uninterrupted = new_strategy()
    after_1 = _aggregate(uninterrupted, 1, start)
    folder = run_folder(tmp_path)
    carried = {k: v for k, v in vars(uninterrupted).items() if k in STRATEGY_STATE}
    folder.write_checkpoint(Checkpoint(1, {k: v.numpy() for k, v in after_1.items()}, [], 2, carried))

    read = folder.read_checkpoint()
    resumed = new_strategy()
    for key, value in read.strategy_state.items():
        setattr(resumed, key, value)
    arrays = ArrayRecord({k: Array(v) for k, v in read.arrays.items()})
    expected = _aggregate(uninterrupted, 2, after_1)["w"].numpy()
    assert _aggregate(resumed, 2, arrays)["w"].numpy().tobytes() == expected.tobytes()
    forgetful = new_strategy()  # the test can fail: without the carried state round 2 differs
    assert (
        _aggregate(forgetful, 2, ArrayRecord({k: Array(v) for k, v in read.arrays.items()}))["w"].numpy().tobytes()
        != expected.tobytes()
    )


def test_the_privacy_spent_continues_through_the_file(tmp_path):
    from flwr.serverapp import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        RdpAccountant,
        SamplingMethod,
    )

    def accountant():
        config = PrivacyConfig(1e-5, 10, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
        return RdpAccountant(config)

    uninterrupted = accountant()
    for noise in (1.1, 0.7):
        uninterrupted.compose(GaussianPrivacyEvent(noise, 10, 10))
    folder = run_folder(tmp_path)
    privacy = {"privacy": {"accountant": uninterrupted.state_dict(), "accountable": True}}
    folder.write_checkpoint(Checkpoint(2, {}, [], 10, privacy))

    resumed = accountant()
    resumed.load_state_dict(folder.read_checkpoint().strategy_state["privacy"]["accountant"])
    for ledger in (uninterrupted, resumed):
        ledger.compose(GaussianPrivacyEvent(0.9, 10, 10))
    assert resumed.get_privacy_spent().epsilon == uninterrupted.get_privacy_spent().epsilon
    assert resumed.get_privacy_spent().epsilon > accountant().get_privacy_spent().epsilon


def test_a_torch_file_made_to_run_code_is_refused_and_runs_nothing(tmp_path):
    folder, marker = run_folder(tmp_path), tmp_path / "pwned"
    torch.save({"format": FORMAT, "version": VERSION, "round": WritesAMarker(marker)}, folder.file(rf.CHECKPOINT))
    with pytest.raises(rf.RunFolderError) as refused:
        folder.read_checkpoint()
    message = str(refused.value)
    assert "\n" not in message and str(folder.file(rf.CHECKPOINT)) in message
    assert (
        "would import io.open when read, which no file of this app does" in message and "nothing in it ran" in message
    )
    assert not marker.exists()
    torch.load(folder.file(rf.CHECKPOINT), weights_only=False)  # what an unguarded reader would do
    assert marker.exists()


def test_a_pickle_made_to_run_code_is_refused_by_resume_and_by_convert_and_runs_nothing(tmp_path, capsys):
    folder, marker = run_folder(tmp_path), tmp_path / "pwned"
    payload = pickle.dumps({"version": 1, "round": WritesAMarker(marker)}, protocol=pickle.HIGHEST_PROTOCOL)
    folder.file(rf.CHECKPOINT).write_bytes(payload)
    with pytest.raises(rf.RunFolderError, match=r"checkpoint.pt would import io.open when read.*start the run afresh"):
        folder.read_checkpoint()
    assert convert_main([str(folder.path)]) == 2
    assert "would import io.open when read" in capsys.readouterr().err
    assert not marker.exists()
    pickle.loads(payload)  # what an unguarded reader would do
    assert marker.exists()


def _old_checkpoint(folder: rf.RunFolder, checkpoint: Checkpoint) -> None:
    """checkpoint.pt exactly as the previous version wrote it: a pickle."""
    data = {
        "version": 1,
        "round": checkpoint.server_round,
        "arrays": checkpoint.arrays,
        "rounds": checkpoint.rounds,
        "num-nodes": checkpoint.num_nodes,
        "strategy": checkpoint.strategy_state,
    }
    folder.file(rf.CHECKPOINT).write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))


def test_an_old_pickled_checkpoint_is_refused_with_the_command_that_converts_it(tmp_path, capsys):
    folder, old = run_folder(tmp_path), a_checkpoint()
    _old_checkpoint(folder, old)
    with pytest.raises(rf.RunFolderError) as refused:
        folder.read_checkpoint()
    message = str(refused.value)
    assert "is a checkpoint of an older version of this app" in message and "\n" not in message
    assert f"`python -m run_folder.convert {folder.path}`" in message and "only for folders you trust" in message

    assert convert_main([str(folder.path)]) == 0
    out, err = capsys.readouterr()
    assert "warning: this unpickles" in err and "only run folders you made yourself or trust" in err
    assert "converted (round 3)" in out and f"resume-from='{folder.path}'" in out
    read = folder.read_checkpoint()
    assert (read.server_round, read.num_nodes) == (3, 4)
    assert all(same(getattr(old, k), getattr(read, k)) for k in ("arrays", "rounds", "strategy_state"))

    assert convert_main([str(folder.path)]) == 0
    assert "already in the current format" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is not a checkpoint .not a file torch.save wrote"),
        (b"PK\x03\x04 truncated", "cannot be loaded"),
        (None, "is not a checkpoint this app wrote .no format and version"),
    ],
)
def test_a_damaged_checkpoint_is_named_with_what_to_do(tmp_path, content, message):
    folder = run_folder(tmp_path)
    with pytest.raises(rf.RunFolderError, match="is missing: this run has no completed round"):
        folder.read_checkpoint()
    if content is None:  # a torch file, but someone else's
        torch.save({"weight": torch.zeros(2)}, folder.file(rf.CHECKPOINT))
    else:
        folder.file(rf.CHECKPOINT).write_bytes(content)
    with pytest.raises(rf.RunFolderError, match=message + ".*run the simulation again"):
        folder.read_checkpoint()


def test_a_checkpoint_holding_what_this_app_never_writes_is_refused(tmp_path):
    folder = run_folder(tmp_path)
    data = {"format": FORMAT, "version": VERSION, "round": 1, "num-nodes": 2, "arrays": {}, "rounds": []}
    torch.save({**data, "strategy": {"x": torch.nn.Parameter(torch.zeros(1))}}, folder.file(rf.CHECKPOINT))
    with pytest.raises(rf.RunFolderError, match=r"not a checkpoint this app wrote \(strategy.x holds a Parameter\)"):
        folder.read_checkpoint()
