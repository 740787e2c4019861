"""ClientApp serving :class:`MnistClient`, a ``NumPyClient`` for one MNIST shard.

The ServerApp drives the run with Flower's message-based FedAvg, so the
handlers below unpack each message, call the NumPyClient, and pack its answer:
the NumPyClient keeps the plain ``fit`` / ``evaluate`` contract, the messages
keep the current wire format. A third handler tells the server which shard
this node holds, before round 1.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from task.config import ConfigError, Settings
from task.models import build_model
from task.shards import NODE_RECORD, NUM_PARTITIONS, PARTITION_ID, NodeData, check_partition, load_node_data
from task.training import evaluate, get_weights, pick_device, set_weights, train_round


class MnistClient(NumPyClient):
    """Trains and evaluates the run's model on this node's shard only."""

    def __init__(self, settings: Settings, data: NodeData, partition_id: int, num_partitions: int) -> None:
        self.settings = settings
        self.data = data
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.device = pick_device(settings.device)
        self.model = build_model(settings)

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        set_weights(self.model, parameters)
        # Seed per node and round: reruns reproduce, nodes do not shuffle alike.
        server_round = int(config.get("server-round", 0))
        seed = self.settings.seed * 1_000_003 + server_round * 10_007 + self.partition_id
        loss = train_round(self.model, self.data.train, self.settings, self.device, seed, server_round)
        return get_weights(self.model), len(self.data.train), {"train-loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        set_weights(self.model, parameters)
        metrics = evaluate(self.model, self.data.test, self.device, self.settings.objective)
        return metrics["loss"], len(self.data.test), metrics


def node_partition(context: Context) -> tuple[int, int]:
    """This node's ``partition-id`` and ``num-partitions``, checked."""
    try:
        partition_id = int(context.node_config[PARTITION_ID])
        num_partitions = int(context.node_config[NUM_PARTITIONS])
    except (KeyError, ValueError):
        raise ConfigError(
            f"node config {dict(context.node_config)} lacks whole-number partition-id and num-partitions: "
            'start the SuperNode with --node-config "partition-id=N num-partitions=M".'
        ) from None
    check_partition(partition_id, num_partitions)
    return partition_id, num_partitions


def client_from_context(context: Context) -> MnistClient:
    """Build this node's client from the run config and the node config."""
    settings = Settings.from_run_config(dict(context.run_config))
    partition_id, num_partitions = node_partition(context)
    data = load_node_data(settings, partition_id, num_partitions)
    return MnistClient(settings, data, partition_id, num_partitions)


app = ClientApp()


@app.query()
def handle_query(msg: Message, context: Context) -> Message:
    """Tell the server which shard this node holds (no data is loaded)."""
    partition_id, num_partitions = node_partition(context)
    answer = ConfigRecord({PARTITION_ID: partition_id, NUM_PARTITIONS: num_partitions})
    return Message(content=RecordDict({NODE_RECORD: answer}), reply_to=msg)


@app.train()
def handle_train(msg: Message, context: Context) -> Message:
    client = client_from_context(context)
    config = dict(msg.content["config"])
    weights, num_examples, metrics = client.fit(msg.content["arrays"].to_numpy_ndarrays(), config)
    content = RecordDict(
        {
            "arrays": ArrayRecord(weights),
            "metrics": MetricRecord({**metrics, "num-examples": num_examples}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def handle_evaluate(msg: Message, context: Context) -> Message:
    client = client_from_context(context)
    loss, num_examples, metrics = client.evaluate(msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"]))
    content = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": num_examples})})
    return Message(content=content, reply_to=msg)
