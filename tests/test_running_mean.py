"""Training replies averaged as they arrive (server_app.running_mean.RunningMean): the bytes of
Flower's own aggregate_train whatever order the replies come in, the checks unchanged, and
only plain FedAvg/FedProx on a grid that can be pulled from take this path."""

import dataclasses
import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from server_app.rounds import RoundFailed, RoundRunner
from server_app.running_mean import RunningMean
from server_app.strategy import build_strategy
from task.config import Settings
from task.flower_compat import TaskIdentity
from tests.test_strategy import FakeBook, ScriptedGrid

SHAPES = {"w": (3, 5), "b": (5,)}
SPEC = ArrayRecord({k: Array(np.zeros(s, np.float32)) for k, s in SHAPES.items()})


@pytest.fixture(autouse=True)
def _server_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # the ServerApp's


def _arrays(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _answer(message: Message, count: int, bad: bool = False) -> Message:
    node = message.metadata.dst_node_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, node, node
    try:
        if bad == "error":
            return Message(Error(code=0, reason="boom"), reply_to=message)
        arrays = _arrays(node)
        if bad:
            arrays["w"][0, 0] = np.nan
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                "metrics": MetricRecord({"train-loss": 0.1 * node, "num-examples": count}),
            }
        )
        return Message(content=content, reply_to=message)
    finally:
        TaskIdentity.node_id = 0


class PulledGrid:
    """Flower's push/pull grid in miniature: replies come ``per_pull`` at a time in ``order``."""

    pull_interval = 0.0

    def __init__(self, counts: dict[int, int], order: list[int], per_pull: int = 2, bad=None) -> None:
        self.counts, self.order, self.per_pull, self.bad = counts, order, per_pull, bad or {}
        self.pushed: dict[str, Message] = {}
        self.held_at_most = 0

    def push_messages(self, messages):
        ids = []
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{i}-{m.metadata.dst_node_id}"
            self.pushed[m.metadata.message_id] = m
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        by_node = {m.metadata.dst_node_id: mid for mid, m in self.pushed.items() if mid in wanted}
        ready = [n for n in self.order if n in by_node][: self.per_pull]
        return [
            _answer(self.pushed[by_node[n]], self.counts[n], self.bad.get(n, False))
            for n in ready
            if self.bad.get(n) != "silent"
        ]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.push_messages(messages)
        return [
            _answer(m, self.counts[m.metadata.dst_node_id], self.bad.get(m.metadata.dst_node_id, False))
            for m in messages
            if self.bad.get(m.metadata.dst_node_id) != "silent"
        ]


NODES = {0: 10, 1: 11, 2: 12, 3: 13, 4: 14}  # partition -> node
COUNTS = {10: 600, 11: 450, 12: 600, 13: 17, 14: 1200}  # node -> examples
SIZES = [COUNTS[NODES[p]] for p in sorted(NODES)]


def _runner(strategy="fedavg", sizes=SIZES, **knobs) -> RoundRunner:
    settings = Settings.from_run_config(
        {"fraction-train": 1.0, "fraction-evaluate": 0.0, "strategy": strategy, "round-timeout": 5, **knobs}
    )
    return RoundRunner(settings, FakeBook(NODES), expected_examples=sizes)


def _flowers(strategy="fedavg", **knobs) -> tuple[np.ndarray, dict]:
    """Flower's aggregate_train on every reply at once (a grid that cannot be pulled from)."""
    grid = PulledGrid(COUNTS, list(NODES.values()))

    class Whole(ScriptedGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return grid.send_and_receive(messages, timeout=timeout)

    result = _runner(strategy, **knobs).train(Whole(None), 1, SPEC)
    return result.arrays, result.metrics


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
@pytest.mark.parametrize("order", [[10, 11, 12, 13, 14], [14, 13, 12, 11, 10], [12, 10, 14, 11, 13]])
def test_replies_averaged_as_they_arrive_give_flowers_bytes_in_any_order(strategy, order):
    expected, expected_metrics = _flowers(strategy)
    runner = _runner(strategy)
    assert runner._streams(PulledGrid(COUNTS, order), [0, 1, 2, 3, 4])
    result = runner.train(PulledGrid(COUNTS, order, per_pull=2), 1, SPEC)
    for key in SHAPES:
        assert result.arrays[key].numpy().tobytes() == expected[key].numpy().tobytes()
        assert result.arrays[key].numpy().dtype == np.float32
    assert result.metrics == expected_metrics
    assert result.metrics["nodes"] == 5 and result.metrics["num-examples"] == sum(COUNTS.values())


def test_a_dropped_or_missing_reply_is_recorded_and_the_mean_is_over_the_good_ones():
    bad = {11: True, 13: "silent", 14: "error"}
    result = _runner().train(PulledGrid(COUNTS, [14, 13, 12, 11, 10], bad=bad), 1, SPEC)
    reasons = {f["partition-id"]: f["reason"] for f in result.failures}
    assert reasons == {
        1: "array w holds NaN or infinite values",
        3: "no reply within round-timeout",
        4: "the node failed: boom",
    }
    assert [f["partition-id"] for f in result.failures] == [1, 3, 4]  # partition order, as before
    good = [10, 12]
    mean = sum(_arrays(n)["w"].astype(np.float64) * COUNTS[n] for n in good) / sum(COUNTS[n] for n in good)
    assert np.allclose(result.arrays["w"].numpy(), mean, rtol=1e-6, atol=1e-6)
    assert result.metrics["nodes"] == 2 and result.metrics["num-examples"] == 1200


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm"])  # averaged as they arrive, and at the end
def test_a_count_other_than_the_shards_is_dropped_and_the_mean_is_over_the_honest_ones(strategy):
    counts = {**COUNTS, 12: 10**9}  # partition 2 claims a billion examples: it would own the mean
    result = _runner(strategy, **{"server-momentum": 0.0}).train(PulledGrid(counts, [10, 11, 12, 13, 14]), 1, SPEC)
    assert [(f["partition-id"], f["reason"]) for f in result.failures] == [
        (2, "num-examples=1000000000, but partition 2's shard holds 600 images")
    ]
    honest = [10, 11, 13, 14]
    mean = sum(_arrays(n)["w"].astype(np.float64) * COUNTS[n] for n in honest) / sum(COUNTS[n] for n in honest)
    assert np.allclose(result.arrays["w"].numpy(), mean, rtol=1e-6, atol=1e-6)
    assert result.metrics["nodes"] == 4


def test_without_known_shards_a_cap_bounds_the_count_a_node_may_claim():
    counts = {**COUNTS, 12: 10**9}
    capped = _runner(sizes=None, **{"max-examples-per-node": 5000}).train(
        PulledGrid(counts, list(NODES.values())), 1, SPEC
    )
    assert [f["reason"] for f in capped.failures] == ["num-examples=1000000000 is more than max-examples-per-node=5000"]
    trusting = _runner(sizes=None).train(PulledGrid(counts, list(NODES.values())), 1, SPEC)
    assert trusting.failures == [] and trusting.metrics["num-examples"] > 10**9  # no cap, no shard: taken at its word


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam"])
def test_strategies_that_need_all_replies_are_not_streamed(strategy):
    runner = _runner(strategy)
    assert not runner._streams(PulledGrid(COUNTS, []), [0, 1])


def test_dp_wrapped_and_unknown_sizes_and_send_only_grids_are_not_streamed():
    settings = Settings.from_run_config({"dp-noise-multiplier": 0.5, "dp-clipping-norm": 1.0})
    dp = RoundRunner(settings, FakeBook(NODES), build_strategy(settings, 5), expected_examples=SIZES)
    assert not dp._streams(PulledGrid(COUNTS, []), [0])
    assert not _runner(sizes=None)._streams(PulledGrid(COUNTS, []), [0])
    assert not _runner(sizes=SIZES[:2])._streams(PulledGrid(COUNTS, []), [0, 4])
    assert not _runner()._streams(ScriptedGrid(None), [0])


def test_running_mean_holds_only_replies_ahead_of_their_turn():
    mean = RunningMean({0: 1, 1: 1, 2: 1})
    rec = ArrayRecord({"w": Array(np.ones(2, np.float32))})
    mean.add(2, rec, 1)
    assert list(mean.arrived) == [2]
    mean.add(0, rec, 1)
    assert list(mean.arrived) == [2]  # partition 1 is still missing
    mean.add(1, rec, 1)
    assert mean.arrived == {} and mean.exact
    assert np.allclose(mean.result()["w"].numpy(), 1.0)


class HttpLikeGrid(PulledGrid):
    """A pulled grid that, like Flower's HTTP grid, names no pull interval of its own and
    would wait 3 s between asks in ``send_and_receive``."""

    def __getattribute__(self, name):
        if name == "pull_interval":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("send_and_receive waits 3 s between asks over HTTP: the round must pull itself")


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm"])  # streamed, and asked as a whole
def test_a_round_asks_for_replies_every_fifth_of_a_second_not_every_three(strategy, monkeypatch):
    import server_app.transport as module

    sleeps = []
    monkeypatch.setattr(module.time, "sleep", sleeps.append)
    result = _runner(strategy).train(HttpLikeGrid(COUNTS, list(NODES.values()), per_pull=1), 1, SPEC)
    assert result.metrics["nodes"] == 5
    assert sleeps and set(sleeps) == {module.REPLY_POLL_S} and module.REPLY_POLL_S <= 0.2


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("pulled", [True, False])  # averaged as they arrive, and at the end
def test_the_rounds_log_line_counts_the_replies_really_dropped(pulled):
    lines = _Lines()
    logging.getLogger("flwr").addHandler(lines)
    bad = {11: True, 13: "silent"}
    grid = PulledGrid(COUNTS, [14, 13, 12, 11, 10], bad=bad)
    if not pulled:
        whole = grid

        class Whole(ScriptedGrid):
            def send_and_receive(self, messages, *, timeout=None):
                return whole.send_and_receive(messages, timeout=timeout)

        grid = Whole(None)
    try:
        _runner().train(grid, 1, SPEC)
    finally:
        logging.getLogger("flwr").removeHandler(lines)
    assert "Round 1: averaging 3 training replies, 2 dropped" in lines.lines
    assert not [line for line in lines.lines if "0 failures" in line], lines.lines


def test_replies_averaged_as_they_arrive_pass_the_same_checks_as_the_others():
    """One check path: a clipping norm the nodes must honour is enforced on streamed replies too."""
    runner = _runner(**{"round-retries": 0})
    runner.rules = dataclasses.replace(
        runner.rules, clipping_norm=0.5
    )  # every reply's update (standard normal weights minus zeros) is longer
    assert runner._streams(PulledGrid(COUNTS, []), [0, 1, 2, 3, 4])
    with pytest.raises(RoundFailed, match="more than dp-clipping-norm=0.5"):
        runner.train(PulledGrid(COUNTS, [10, 11, 12, 13, 14]), 1, SPEC)
