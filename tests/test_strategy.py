"""What happens to replies: sampling, the checks before averaging, retries, order."""

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict

from server_app.checks import array_spec, check_train_reply
from server_app.rounds import RoundFailed, RoundRunner
from server_app.sampling import sample_partitions
from task.config import Settings
from task.flower_compat import TaskIdentity
from task.strategies import STRATEGIES

SPEC_ARRAYS = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.zeros(2, np.float32))})


def _reply(node: int, w: np.ndarray | None = None, num_examples: int = 100, loss: float = 0.5, **arrays) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, node
    ask = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    TaskIdentity.node_id = node
    w = np.full((2, 2), 1.0, np.float32) if w is None else w
    record = arrays or {"w": w, "b": np.zeros(2, np.float32)}
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in record.items()}),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": num_examples}),
        }
    )
    reply = Message(content=content, reply_to=ask)
    TaskIdentity.node_id = 0
    return reply


def _error(node: int, reason: str) -> Message:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, node
    ask = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    TaskIdentity.node_id = node
    reply = Message(Error(code=0, reason=reason), reply_to=ask)
    TaskIdentity.node_id = 0
    return reply


def test_sampling_is_seeded_by_run_round_and_attempt_not_by_node_ids():
    available = list(range(100))
    a = sample_partitions(available, 0.1, 1, seed=42, server_round=3, attempt=0, phase="train")
    assert a == sample_partitions(list(reversed(available)), 0.1, 1, 42, 3, 0, "train")
    assert len(a) == 10 and a == sorted(a)
    assert a != sample_partitions(available, 0.1, 1, 42, 4, 0, "train")
    assert a != sample_partitions(available, 0.1, 1, 42, 3, 1, "train")
    assert a != sample_partitions(available, 0.1, 1, 43, 3, 0, "train")
    assert sample_partitions([4, 7], 0.1, 1, 42, 1, 0, "train") in ([4], [7])  # at least the minimum
    assert sample_partitions([4, 7], 0.1, 5, 42, 1, 0, "train") == [4, 7]  # at most what there is


@pytest.mark.parametrize(
    "reply, reason",
    [
        (lambda: _reply(1), None),
        (lambda: _error(1, "boom"), "the node failed: boom"),
        (lambda: _reply(1, np.full((2, 2), np.nan, np.float32)), "array w holds NaN or infinite values"),
        (
            lambda: _reply(1, np.zeros((3, 3), np.float32)),
            r"array w has shape \(3, 3\) and dtype float32, expected \(2, 2\)",
        ),
        (lambda: _reply(1, np.zeros((2, 2), np.float64)), "dtype float64, expected"),
        (lambda: _reply(1, x=np.zeros(2, np.float32)), "arrays named"),
        (lambda: _reply(1, loss=float("inf")), "metric train-loss=inf is not a finite number"),
        (lambda: _reply(1, num_examples=0), "num-examples=0: a reply must say how many examples"),
    ],
)
def test_every_reply_is_checked_before_it_is_averaged(reply, reason):
    found = check_train_reply(reply(), array_spec(SPEC_ARRAYS))
    if reason is None:
        assert found is None
    else:
        assert found is not None and re.search(reason, found), found


class FakeBook:
    def __init__(self, nodes: dict[int, int]) -> None:
        self.nodes = nodes  # partition -> node

    def refresh(self, grid, timeout):
        pass

    def available(self):
        return sorted(self.nodes)

    def node_of(self, pid):
        return self.nodes.get(pid, -1)


class ScriptedGrid:
    """Answers each node with a scripted reply (None: the node stays silent)."""

    def __init__(self, script):
        self.script = script
        self.asked: list[list[int]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.asked.append([m.metadata.dst_node_id for m in messages])
        replies = [self.script(m.metadata.dst_node_id) for m in messages]
        return [r for r in replies if r is not None]


def _runner(nodes, **knobs) -> RoundRunner:
    settings = Settings.from_run_config({"fraction-train": 1.0, "fraction-evaluate": 0.0, **knobs})
    return RoundRunner(settings, FakeBook(nodes))


def test_weights_are_averaged_by_examples_whatever_order_replies_arrive_in():
    values = {11: (1.0, 100), 12: (4.0, 300), 13: (2.0, 200)}
    results = []
    for order in ([11, 12, 13], [13, 11, 12]):
        replies = {n: _reply(n, np.full((2, 2), values[n][0], np.float32), values[n][1]) for n in order}

        class Shuffled(ScriptedGrid):
            def send_and_receive(self, messages, *, timeout=None, replies=replies, order=order):
                list(messages)
                return [replies[n] for n in order]

        result = _runner({0: 11, 1: 12, 2: 13}).train(Shuffled(None), 1, SPEC_ARRAYS)
        results.append(result.arrays["w"].numpy())
        assert result.metrics["nodes"] == 3 and result.metrics["num-examples"] == 600
    assert np.array_equal(results[0], results[1])
    assert np.allclose(results[0], (1 * 100 + 4 * 300 + 2 * 200) / 600)


def test_bad_replies_are_dropped_and_recorded_and_the_round_counts():
    script = {
        11: _reply(11, np.full((2, 2), np.nan, np.float32)),
        12: _reply(12, np.full((2, 2), 2.0, np.float32)),
        13: None,
    }
    result = _runner({0: 11, 1: 12, 2: 13}).train(ScriptedGrid(script.get), 1, SPEC_ARRAYS)
    assert np.allclose(result.arrays["w"].numpy(), 2.0)
    reasons = {f["partition-id"]: f["reason"] for f in result.failures}
    assert reasons == {0: "array w holds NaN or infinite values", 2: "no reply within round-timeout"}
    assert all(f["round"] == 1 and f["phase"] == "train" for f in result.failures)


def test_a_node_the_superlink_lost_is_recorded_as_gone_not_as_a_timeout():
    """The SuperLink answers for a node whose heartbeats stopped: the reply comes from the
    SuperLink (node 0), answers the message sent to the node, and carries NODE_UNAVAILABLE."""
    from task.flower_compat import ErrorCode

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # the ServerApp's

    class LostNode(ScriptedGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            for i, m in enumerate(messages):  # what the grid does when it pushes them
                m.metadata.__dict__["_message_id"] = f"sent-{i}"
            lost = next(m for m in messages if m.metadata.dst_node_id == 13)
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
            gone = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Error: Node Unavailable"), reply_to=lost)
            gone.metadata.__dict__["_src_node_id"] = 0  # as Flower's linkstate writes it: from the SuperLink
            assert gone.metadata.src_node_id == 0 and gone.metadata.reply_to_message_id == "sent-2"
            return [_reply(11), _reply(12), gone]

    result = _runner({0: 11, 1: 12, 2: 13}).train(LostNode(None), 1, SPEC_ARRAYS)
    assert result.metrics["nodes"] == 2
    assert [(f["partition-id"], f["reason"]) for f in result.failures] == [
        (2, "the node left the federation before replying (the SuperLink stopped receiving its heartbeats)")
    ]


def test_a_round_short_of_good_replies_is_retried_without_the_nodes_that_failed():
    script = {11: _error(11, "boom"), 12: _reply(12), 13: _reply(13)}
    runner = _runner({0: 11, 1: 12, 2: 13}, **{"fraction-train": 0.34, "min-train-replies": 1})
    # a round whose first pick (one node of three) is the failing partition 0
    server_round = next(r for r in range(1, 100) if sample_partitions([0, 1, 2], 0.34, 1, 42, r, 0, "train") == [0])
    grid = ScriptedGrid(script.get)
    result = runner.train(grid, server_round, SPEC_ARRAYS)
    assert grid.asked[0] == [11] and len(grid.asked) == 2 and grid.asked[1] in ([12], [13])
    assert np.allclose(result.arrays["w"].numpy(), 1.0)
    assert [(f["attempt"], f["partition-id"]) for f in result.failures] == [(1, 0)]


def test_a_round_that_stays_short_stops_the_run_saying_what_happened():
    grid = ScriptedGrid(lambda node: _error(node, "out of memory"))
    with pytest.raises(
        RoundFailed,
        match=r"Round 2: 0 good training replies, fewer than the 1 needed \(min-train-replies=1, strategy='fedavg'\), "
        r"after 2 attempt\(s\). Last failures: partition \d: the node failed: out of memory",
    ):
        _runner({0: 11, 1: 12}, **{"round-retries": 1, "fraction-train": 0.5}).train(grid, 2, SPEC_ARRAYS)


@pytest.mark.parametrize(
    "knobs, cls, attrs",
    [
        ({}, "FedAvg", {}),
        (
            {"strategy": "fedavgm", "server-momentum": 0.9},
            "FedAvgM",
            {"server_momentum": 0.9, "server_learning_rate": 1.0},
        ),
        ({"strategy": "fedadam", "server-learning-rate": 0.02}, "FedAdam", {"eta": 0.02}),
        ({"strategy": "fedyogi"}, "FedYogi", {"eta": 0.01}),  # Flower's own default when the knob is 0
        ({"strategy": "fedprox", "proximal-mu": 0.5}, "FedProx", {"proximal_mu": 0.5}),
    ],
)
def test_the_strategy_knob_builds_flowers_own_class(knobs, cls, attrs):
    from server_app.strategy import build_strategy

    strategy = build_strategy(Settings.from_run_config(knobs), num_sampled=10)
    assert type(strategy).__name__ == cls
    assert all(getattr(strategy, k) == v for k, v in attrs.items())


@pytest.mark.parametrize("spec", STRATEGIES.values(), ids=lambda s: s.name)
def test_the_strategy_table_matches_flowers_classes(spec):
    """task/strategies.py names Flower's classes, keywords and defaults as text: each must exist,
    and the default server step the report quotes must be Flower's own."""
    from server_app.strategy import STRATEGY_CLASSES

    cls = STRATEGY_CLASSES[spec.name]
    assert cls.__name__ == spec.flower_class
    params = inspect.signature(cls.__init__).parameters
    for keyword, field in spec.knobs:
        assert keyword in params and hasattr(Settings(), field)
    if spec.client_lr_arg:
        assert spec.client_lr_arg in params
    assert (spec.server_lr_arg is None) == (spec.default_server_lr is None)
    if spec.server_lr_arg:
        assert params[spec.server_lr_arg].default == spec.default_server_lr


def test_pyprojects_comments_name_every_strategy_and_its_default_server_step():
    lines = (Path(__file__).parent.parent / "pyproject.toml").read_text().splitlines()
    strategy = next(line for line in lines if line.startswith("strategy ="))
    server_lr = next(line for line in lines if line.startswith("server-learning-rate ="))
    for spec in STRATEGIES.values():
        assert spec.name in strategy
        if spec.default_server_lr is not None:
            assert f"{spec.name} {spec.default_server_lr}" in server_lr


@pytest.mark.parametrize(
    "where, cls",
    [
        ("server", "DifferentialPrivacyServerSideFixedClipping"),
        ("client", "DifferentialPrivacyClientSideFixedClipping"),
    ],
)
def test_differential_privacy_wraps_the_strategy(where, cls):
    from server_app.strategy import build_strategy

    knobs = {"strategy": "fedavgm", "server-momentum": 0.9, "dp-clipping-norm": 1.0, "dp-noise-multiplier": 0.5}
    strategy = build_strategy(Settings.from_run_config({**knobs, "dp-clipping": where}), 10)
    assert type(strategy).__name__ == cls
    assert strategy.clipping_norm == 1.0 and strategy.noise_multiplier == 0.5 and strategy.num_sampled_clients == 10
    assert type(strategy.strategy).__name__ == "FedAvgM"


def test_client_side_clipping_tells_every_node_the_clipping_norm():
    from flwr.app import ConfigRecord

    from server_app.strategy import build_strategy
    from server_app.transport import ChosenNodes

    strategy = build_strategy(Settings.from_run_config({"dp-clipping-norm": 0.7, "dp-clipping": "client"}), 2)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    messages = list(strategy.configure_train(3, SPEC_ARRAYS, ConfigRecord({}), ChosenNodes([11, 12])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12]  # Flower samples in random order
    assert all(
        m.content["config"]["clipping_norm"] == 0.7 and m.content["config"]["server-round"] == 3 for m in messages
    )
    evaluate = list(strategy.configure_evaluate(3, SPEC_ARRAYS, ConfigRecord({}), ChosenNodes([11])))
    assert "clipping_norm" not in evaluate[0].content["config"]  # the nodes clip training replies only


def test_with_client_side_clipping_a_reply_longer_than_the_norm_is_dropped_and_the_rest_averaged_untouched():
    """SPEC_ARRAYS are zeros, so a reply's weights are its update. The server clips nothing:
    it checks that each node did, and averages the clipped updates as they came."""
    script = {
        11: _reply(11, np.full((2, 2), 0.25, np.float32)),  # norm 0.5
        12: _reply(12, np.full((2, 2), 2.0, np.float32)),  # norm 4: this node did not clip
        13: _reply(13, np.full((2, 2), 0.5, np.float32)),  # norm 1.0, exactly the clipping norm
    }
    runner = _runner({0: 11, 1: 12, 2: 13}, **{"dp-clipping-norm": 1.0, "dp-clipping": "client"})
    result = runner.train(ScriptedGrid(script.get), 1, SPEC_ARRAYS)
    assert np.allclose(result.arrays["w"].numpy(), 0.375) and result.metrics["nodes"] == 2  # no noise: the mean
    assert [(f["partition-id"], f["reason"]) for f in result.failures] == [
        (
            1,
            "its update has L2 norm 4, more than dp-clipping-norm=1: with dp-clipping='client' every node must "
            "clip its own update (is it running this app's ClientApp?)",
        )
    ]
    assert result.metrics["privacy"] == {"epsilon": None, "delta": 1e-5, "why-not": "no noise"}

    # Server-side clipping takes the same long reply and clips it itself: nothing is dropped.
    runner = _runner({0: 11, 1: 12, 2: 13}, **{"dp-clipping-norm": 1.0})
    result = runner.train(ScriptedGrid(script.get), 1, SPEC_ARRAYS)
    assert result.failures == [] and np.allclose(result.arrays["w"].numpy(), (0.25 + 0.5 + 0.5) / 3)


def test_the_clipping_check_allows_float32_rounding_only():
    from server_app.checks import check_clipped

    sent = ArrayRecord({"w": Array(np.full((2, 2), 3.0, np.float32)), "b": Array(np.zeros(2, np.float32))})
    exact = np.float32(3.0) + np.float32(0.5)  # an update of norm 1.0, added to the weights in float32
    assert check_clipped(_reply(1, np.full((2, 2), exact, np.float32)), sent, 1.0) is None
    assert check_clipped(_reply(1, np.full((2, 2), 3.5 * (1 + 1e-6), np.float32)), sent, 1.0) is None
    assert "L2 norm 1.01" in check_clipped(_reply(1, np.full((2, 2), 3.505, np.float32)), sent, 1.0)


def test_the_privacy_spent_is_the_same_wherever_the_updates_are_clipped():
    script = {n: _reply(n, np.full((2, 2), 0.1 * (n - 10), np.float32)) for n in (11, 12, 13)}
    spent = {}
    for where in ("server", "client"):
        runner = _runner(
            {0: 11, 1: 12, 2: 13}, **{"dp-clipping-norm": 1.0, "dp-noise-multiplier": 1.0, "dp-clipping": where}
        )
        rounds = [runner.train(ScriptedGrid(script.get), r, SPEC_ARRAYS) for r in (1, 2)]
        assert all(r.failures == [] for r in rounds)
        spent[where] = [r.metrics["privacy"] for r in rounds]
        state = runner.state()
        assert state["privacy"]["accountable"] and "accountant" in state["privacy"]
    assert spent["server"] == spent["client"]
    assert 0 < spent["client"][0]["epsilon"] < spent["client"][1]["epsilon"]


def test_a_round_with_a_dropped_reply_is_accounted_with_the_noise_it_really_had():
    """Flower's DP wrapper sizes the noise for the nodes it was built for (3 here); with one
    reply dropped the mean of 2 has a larger sensitivity, so the round spends more privacy."""
    knobs = {"dp-clipping-norm": 1.0, "dp-noise-multiplier": 1.0}
    good = {n: _reply(n, np.full((2, 2), 0.1, np.float32)) for n in (11, 12, 13)}
    dropped = {**good, 13: _reply(13, np.full((2, 2), np.nan, np.float32))}
    spent = {}
    for name, script in (("all", good), ("dropped", dropped)):
        runner = _runner({0: 11, 1: 12, 2: 13}, **knobs)
        spent[name] = runner.train(ScriptedGrid(script.get), 1, SPEC_ARRAYS).metrics["privacy"]
    assert "noise-multiplier" not in spent["all"]
    assert spent["dropped"]["noise-multiplier"] == pytest.approx(2 / 3)
    assert spent["dropped"]["epsilon"] > spent["all"]["epsilon"]


@pytest.mark.parametrize(
    "knobs, cls, attrs",
    [
        ({"strategy": "fedmedian"}, "FedMedian", {}),
        ({"strategy": "fedtrimmedavg"}, "FedTrimmedAvg", {"beta": 0.2}),  # Flower's default when the knob is 0
        ({"strategy": "fedtrimmedavg", "trim-beta": 0.1}, "FedTrimmedAvg", {"beta": 0.1}),
        ({"strategy": "krum", "num-malicious-nodes": 2}, "Krum", {"num_malicious_nodes": 2}),
        (
            {"strategy": "multikrum", "num-malicious-nodes": 1},
            "MultiKrum",
            {"num_malicious_nodes": 1, "num_nodes_to_select": 9},  # 10 sampled - 1 assumed malicious
        ),
        ({"strategy": "multikrum", "krum-select": 4}, "MultiKrum", {"num_nodes_to_select": 4}),
        ({"strategy": "bulyan", "num-malicious-nodes": 1}, "Bulyan", {"num_malicious_nodes": 1}),
    ],
)
def test_the_robust_strategies_are_flowers_own_classes_with_the_runs_knobs(knobs, cls, attrs):
    from server_app.strategy import build_strategy

    strategy = build_strategy(Settings.from_run_config(knobs), num_sampled=10)
    assert type(strategy).__name__ == cls
    assert {k: getattr(strategy, k) for k in attrs} == attrs


@pytest.mark.parametrize(
    "knob, value, owners",
    [("trim-beta", 0.1, "'fedtrimmedavg'"), ("num-malicious-nodes", 1, "'krum' or 'multikrum' or 'bulyan'")],
)
def test_a_robust_strategys_knob_is_refused_for_another_strategy(knob, value, owners):
    from task.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{knob}={value} applies to strategy={owners} only"):
        Settings.from_run_config({"strategy": "fedavg", knob: value})


def test_a_federation_too_small_for_the_malicious_nodes_assumed_is_refused_saying_how_many_are_needed():
    from server_app.strategy import check_fits
    from task.errors import ConfigError

    check_fits(Settings.from_run_config({"strategy": "krum", "num-malicious-nodes": 3}), num_nodes=9)  # 2 x 3 + 3
    with pytest.raises(ConfigError, match=r"needs 9 good training replies a round \(2 x 3 \+ 3\), but only 8 nodes"):
        check_fits(Settings.from_run_config({"strategy": "krum", "num-malicious-nodes": 3}), num_nodes=8)
    with pytest.raises(ConfigError, match=r"needs 11 .* \(4 x 2 \+ 3\), .* lower num-malicious-nodes to 1 or fewer"):
        check_fits(Settings.from_run_config({"strategy": "bulyan", "num-malicious-nodes": 2}), num_nodes=10)


def test_krum_asks_enough_nodes_for_its_assumption_whatever_fraction_train_says():
    nodes = {p: 20 + p for p in range(10)}
    grid = ScriptedGrid(lambda node: _reply(node))
    runner = _runner(nodes, **{"strategy": "krum", "num-malicious-nodes": 2, "fraction-train": 0.1})
    result = runner.train(grid, 1, SPEC_ARRAYS)
    assert len(grid.asked[0]) == 7 and result.metrics["nodes"] == 7  # 2 x 2 + 3, not 10% of 10


def _scaled_round(strategy: str, **knobs):
    """Nine honest nodes (updates near 1.0) and one that sends its update x20."""
    honest = {20 + p: 1.0 + 0.01 * p for p in range(9)}
    nodes = {p: 20 + p for p in range(10)}

    def answer(node):
        value = 20.0 if node == 29 else honest[node]
        return _reply(node, np.full((2, 2), value, np.float32))

    return _runner(nodes, strategy=strategy, **knobs).train(ScriptedGrid(answer), 1, SPEC_ARRAYS)


def test_the_update_screen_drops_a_scaled_update_and_records_why():
    result = _scaled_round("fedavg", **{"update-screen": 3.0})
    assert [(f["partition-id"], f["node"]) for f in result.failures] == [(9, 29)]
    assert re.search(
        r"update's L2 norm 40 is more than update-screen=3 x the round's median 2\.0\d", result.failures[0]["reason"]
    )
    assert result.arrays["w"].numpy().max() < 1.1 and result.metrics["nodes"] == 9
    unscreened = _scaled_round("fedavg")
    assert unscreened.failures == [] and unscreened.arrays["w"].numpy().max() > 2.5  # what the screen prevents


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"])
def test_each_robust_strategy_keeps_a_scaled_update_out_of_the_model(strategy):
    knobs = {"num-malicious-nodes": 1} if strategy in ("krum", "multikrum", "bulyan") else {}
    result = _scaled_round(strategy, **knobs)
    assert result.failures == []  # nothing dropped: the strategy itself discounts the outlier
    assert result.arrays["w"].numpy().min() >= 0.99 and result.arrays["w"].numpy().max() < 1.1
