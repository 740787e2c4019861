"""ClientApp serving :class:`MnistClient`, a ``NumPyClient`` for one MNIST shard.

The ServerApp drives the run with Flower's message-based FedAvg, so the
handlers below unpack each message, call the NumPyClient, and pack its answer:
the NumPyClient keeps the plain ``fit`` / ``evaluate`` contract, the messages
keep the current wire format. A third handler tells the server which shard
this node holds, before round 1.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from task.config import ConfigError, Settings
from task.faults import fault_for, misbehave
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
        weights = get_weights(self.model)
        fault = fault_for(self.settings.fault_injection, self.partition_id, server_round)
        if fault:  # tests only: see task/faults.py
            weights = misbehave(fault, weights)
        return weights, len(self.data.train), {"train-loss": loss}

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


# An absolute path in an error message; what the server sees keeps only its last part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:/[^/\s'\"()]+)+/?")


def scrub_paths(text: str) -> str:
    """Error messages leave the node: its folders are none of the server's business."""
    return _ABSOLUTE_PATH.sub(lambda m: "<local>/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def reports_without_paths(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Flower sends a handler's exception text to the server: strip local paths from it."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:
            raise type(exc)(scrub_paths(str(exc))) if isinstance(exc, ConfigError) else RuntimeError(
                f"{type(exc).__name__}: {scrub_paths(str(exc))}"
            ) from None

    return wrapped


app = ClientApp()


@app.query()
@reports_without_paths
def handle_query(msg: Message, context: Context) -> Message:
    """Tell the server which shard this node holds (no data is loaded)."""
    partition_id, num_partitions = node_partition(context)
    answer = ConfigRecord({PARTITION_ID: partition_id, NUM_PARTITIONS: num_partitions})
    return Message(content=RecordDict({NODE_RECORD: answer}), reply_to=msg)


@app.train()
@reports_without_paths
def handle_train(msg: Message, context: Context) -> Message:
    client = client_from_context(context)
    config = dict(msg.content["config"])
    weights, num_examples, metrics = client.fit(msg.content["arrays"].to_numpy_ndarrays(), config)
    names = client.model.state_dict().keys()  # the model's own array names, which the server checks
    content = RecordDict(
        {
            "arrays": ArrayRecord({name: Array(w) for name, w in zip(names, weights)}),
            "metrics": MetricRecord({**metrics, "num-examples": num_examples}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
@reports_without_paths
def handle_evaluate(msg: Message, context: Context) -> Message:
    client = client_from_context(context)
    loss, num_examples, metrics = client.evaluate(msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"]))
    content = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": num_examples})})
    return Message(content=content, reply_to=msg)
