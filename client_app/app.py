"""ClientApp serving :class:`MnistClient`, a ``NumPyClient`` for one MNIST shard.

The ServerApp drives the run with Flower's message-based FedAvg, so the
handlers below unpack each message, call the NumPyClient, and pack its answer:
the NumPyClient keeps the plain ``fit`` / ``evaluate`` contract, the messages
keep the current wire format. A third handler tells the server which shard
this node holds, before round 1. With ``dp-clipping='client'`` the training
handler runs inside Flower's ``fixedclipping_mod`` (see :func:`clip_on_node`),
so the node's update is clipped before its reply leaves the node.

Flower calls a handler once per message. In simulation one worker process
(a Ray actor) serves many nodes and many rounds, so what does not change
between messages is kept per process: the checked settings of a run config,
the shard indices of a partitioning, the model object (its weights are
overwritten from every message) and the device. Only the node's own images are
cut per message, from MNIST already in memory. In deployment each message runs
in a fresh process, where these caches cost nothing.
"""

from __future__ import annotations

import functools
import re
import socket
import sys
from collections.abc import Callable
from logging import INFO

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.common import log

from task.config import Settings
from task.data import Batchable, load_mnist
from task.errors import ConfigError
from task.faults import faults_for, misbehave, poisoned_labels
from task.models import build_model
from task.node_config import NUM_PARTITIONS, PARTITION_ID
from task.shards import NODE_RECORD, NodeData, check_partition, local_test_shards, train_shards
from task.training import evaluate, get_weights, pick_device, set_weights, train_round


class MnistClient(NumPyClient):
    """Trains and evaluates the run's model on this node's shard only."""

    def __init__(
        self,
        settings: Settings,
        data: NodeData,
        partition_id: int,
        num_partitions: int,
        model: torch.nn.Module | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.settings = settings
        self.data = data
        self.partition_id = partition_id
        self.num_partitions = num_partitions
        self.device = device if device is not None else pick_device(settings.device)
        # A model shared with other clients of this process is fine: fit and evaluate
        # load every weight from the message before using it.
        self.model = model if model is not None else build_model(settings)

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        set_weights(self.model, parameters)
        # Seed per node and round: reruns reproduce, nodes do not shuffle alike.
        server_round = int(config.get("server-round", 0))
        seed = self.settings.seed * 1_000_003 + server_round * 10_007 + self.partition_id
        faults = faults_for(self.settings.fault_injection, self.partition_id, server_round)  # tests only
        data = self.data.train
        if faults:  # attacks on the labels act before training (see task/faults.py)
            data = Batchable(data.x, torch.from_numpy(poisoned_labels(faults, data.y.numpy())))
        loss = train_round(self.model, data, self.settings, self.device, seed, server_round)
        weights, num_examples = get_weights(self.model), len(self.data.train)
        if faults:  # the others on the reply
            weights, num_examples = misbehave(
                faults, parameters, weights, num_examples, seed, self.settings.round_timeout
            )
        return weights, num_examples, {"train-loss": loss}

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
    """This node's client for the run config and the node config: settings, shard
    indices, model and device come from this process's caches (see the module doc)."""
    settings = run_settings(context.run_config)
    partition_id, num_partitions = node_partition(context)
    data = load_node_data_cached(settings, partition_id, num_partitions)
    return MnistClient(
        settings, data, partition_id, num_partitions, model=run_model(settings), device=run_device(settings)
    )


def run_settings(run_config: dict) -> Settings:
    """The checked :class:`Settings` of a run config, built once per process and config."""
    # The type is part of the key: 1, 1.0 and True are equal but not the same setting.
    return _settings(tuple(sorted((key, type(value).__name__, value) for key, value in dict(run_config).items())))


@functools.lru_cache(maxsize=8)
def _settings(items: tuple) -> Settings:
    return Settings.from_run_config({key: value for key, _, value in items})


@functools.lru_cache(maxsize=4)
def _shard_indices(settings: Settings, num_partitions: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every node's training and local test indices: cut once per process, not per message
    (a partitioning shuffles all 60,000 labels; a node keeps only its own slice)."""
    mnist = load_mnist(settings.data_dir)
    train = train_shards(settings, num_partitions, mnist)
    return train, local_test_shards(settings, num_partitions, mnist, train)


def load_node_data_cached(settings: Settings, partition_id: int, num_partitions: int) -> NodeData:
    """The same arrays as :func:`task.shards.load_node_data`, cut from this process's cached
    indices of every node's shards (``_shard_indices``) instead of partitioning afresh."""
    check_partition(partition_id, num_partitions)
    train_idx, test_idx = (shards[partition_id] for shards in _shard_indices(settings, num_partitions))
    return NodeData.cut(load_mnist(settings.data_dir), train_idx, test_idx)


@functools.lru_cache(maxsize=2)
def run_model(settings: Settings) -> torch.nn.Module:
    """One model object per process and run config; every message overwrites its weights."""
    return build_model(settings)


@functools.lru_cache(maxsize=2)
def run_device(settings: Settings) -> torch.device:
    return pick_device(settings.device)


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
            text = scrub_paths(str(exc))
            try:
                clean = type(exc)(text)
            except Exception:  # an exception type that wants other arguments
                clean = RuntimeError(f"{type(exc).__name__}: {text}")
            raise clean from None

    return wrapped


def clip_on_node(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A mod around the training handler: under ``dp-clipping='client'`` the reply goes through
    Flower's ``fixedclipping_mod``, which clips the update (the trained weights minus the weights
    received) to the clipping norm the server sent; under server-side clipping, or without
    differential privacy, the reply passes untouched.

    The run config decides, not the message: a node told to clip refuses (an error reply, from
    ``fixedclipping_mod``) a training message that carries no clipping norm, and one whose norm is
    not its run's ``dp-clipping-norm``, rather than send an unclipped update. ``fixedclipping_mod``
    itself would answer every training message without a norm with an error, so it cannot simply
    be put on the app for every run."""
    try:
        settings = run_settings(context.run_config)
    except ConfigError:
        return call_next(msg, context)  # the handler reports the bad config (without local paths)
    if not settings.clips_on_nodes:
        return call_next(msg, context)
    from task.flower_compat import KEY_CLIPPING_NORM

    for config in msg.content.config_records.values():
        asked = config.get(KEY_CLIPPING_NORM)
        if asked is not None and asked != settings.dp_clipping_norm:
            raise ConfigError(
                f"the server asks this node to clip its update to L2 norm {asked}, but the run's "
                f"dp-clipping-norm is {settings.dp_clipping_norm:g}: refusing to send the update"
            )
    return fixedclipping_mod(msg, context, call_next)


@functools.cache
def ray_node() -> str | None:
    """The Ray node and host this process runs on, in simulation (None elsewhere: Ray not loaded)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return f"Ray node {ray.get_runtime_context().get_node_id()} (host {socket.gethostname()})"


app = ClientApp()


@app.query()
@reports_without_paths
def handle_query(msg: Message, context: Context) -> Message:
    """Tell the server which shard this node holds (no data is loaded)."""
    partition_id, num_partitions = node_partition(context)
    answer = ConfigRecord({PARTITION_ID: partition_id, NUM_PARTITIONS: num_partitions})
    return Message(content=RecordDict({NODE_RECORD: answer}), reply_to=msg)


@app.train(mods=[clip_on_node])
@reports_without_paths
def handle_train(msg: Message, context: Context) -> Message:
    client = client_from_context(context)
    if (node := ray_node()) is not None:  # on a Ray cluster, the run's log says which node trained whom
        log(INFO, "partition %d trains on %s", client.partition_id, node)
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
    _loss, num_examples, metrics = client.evaluate(
        msg.content["arrays"].to_numpy_ndarrays(), dict(msg.content["config"])
    )
    content = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": num_examples})})
    return Message(content=content, reply_to=msg)
