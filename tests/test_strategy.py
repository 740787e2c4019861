"""CheckedFedAvg: FedAvg's weighting, the per-round metrics it keeps, failed rounds."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server_app.strategy import CheckedFedAvg, RoundFailed


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


def test_one_failed_node_does_not_stop_the_round():
    arrays, _ = CheckedFedAvg().aggregate_train(1, [_error(1, "boom"), _reply(2.0, 10, 2)])
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 2.0)
