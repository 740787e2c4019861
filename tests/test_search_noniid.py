"""The search's server steps (benchmarks/search_noniid.py) give what Flower's own FedAvgM and
FedAdam give: the same rounds of replies go through both and the new global weights match."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM

from benchmarks.search_noniid import server_update
from task.flower_compat import TaskIdentity

ROUNDS = 4
NODES = {3: 40, 5: 100, 8: 60}  # node id -> its number of training examples


class _Nodes:
    """The part of a Grid that a strategy's configure_train uses."""

    def get_node_ids(self) -> list[int]:
        return list(NODES)


def _replies(asks, trained: dict[int, list[np.ndarray]]) -> list[Message]:
    """Each asked node answers with its trained arrays and its number of examples."""
    replies = []
    for ask in asks:
        node = ask.metadata.dst_node_id
        TaskIdentity.node_id = node
        arrays = ArrayRecord({f"p{i}": Array(a) for i, a in enumerate(trained[node])})
        metrics = MetricRecord({"num-examples": NODES[node]})
        replies.append(Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=ask))
    TaskIdentity.node_id = 0
    return replies


def _weighted_average(trained: dict[int, list[np.ndarray]]) -> list[np.ndarray]:
    """What benchmarks.fedavg_inprocess hands the server step: the replies weighted by examples."""
    total = sum(NODES.values())
    return [sum(trained[n][i] * (NODES[n] / total) for n in NODES) for i in range(len(trained[3]))]


def _both(flower_strategy, search_step) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run ROUNDS rounds of the same replies through Flower's strategy and the search's step."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    rng = np.random.default_rng(0)
    ours = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    flowers = ours
    for rnd in range(1, ROUNDS + 1):
        trained = {n: [w + rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in ours] for n in NODES}
        arrays = ArrayRecord({f"p{i}": Array(w) for i, w in enumerate(flowers)})
        asks = flower_strategy.configure_train(rnd, arrays, ConfigRecord({}), _Nodes())
        aggregated, _ = flower_strategy.aggregate_train(rnd, _replies(asks, trained))
        flowers = aggregated.to_numpy_ndarrays()
        ours = [w.astype(np.float32) for w in search_step(rnd, ours, _weighted_average(trained))]
    return flowers, ours


SAMPLING = dict(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)


@pytest.mark.parametrize("server_lr, momentum", [(1.0, 0.9), (1.5, 0.5), (2.0, 0.0), (0.7, 0.0)])
def test_fedavgm_step_matches_flowers_fedavgm(server_lr, momentum):
    flower = FedAvgM(server_learning_rate=server_lr, server_momentum=momentum, **SAMPLING)
    flowers, ours = _both(flower, server_update("fedavgm", server_lr, momentum))
    for a, b in zip(flowers, ours, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("server_lr", [0.1, 0.01, 0.003])
def test_fedadam_step_matches_flowers_fedadam(server_lr):
    flowers, ours = _both(FedAdam(eta=server_lr, **SAMPLING), server_update("fedadam", server_lr, 0.0))
    for a, b in zip(flowers, ours, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_the_steps_move_the_weights_away_from_the_plain_average():
    """A step that returned the average would match FedAvg, not the strategy: the inputs must tell them apart."""
    flowers, ours = _both(FedAdam(eta=0.1, **SAMPLING), lambda rnd, w, avg: avg)
    assert not np.allclose(flowers[0], ours[0], rtol=1e-3)


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_keep_the_plain_average(strategy):
    assert server_update(strategy, 1.0, 0.0) is None


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="fedyogi"):
        server_update("fedyogi", 0.01, 0.0)
