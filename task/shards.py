"""One node's share of MNIST: its training shard and its held-out local test shard.

The training shard comes from the 60,000 training images, the local test shard
from the 10,000 test images (the tutorial's "local test images"): split the same
way under an IID partitioning, with the node's own mix of digits under a non-IID one. The server still evaluates
the global model on all 10,000 test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from partitioning import NON_IID, follow_label_mix, label_counts, partition
from task.config import Settings
from task.data import Batchable, Mnist, load_mnist
from task.errors import ConfigError
from task.node_config import NUM_PARTITIONS, PARTITION_ID, partition_problem

# The record of a node's answer when the server asks which shard it holds (its keys are
# the node-config keys of task.node_config).
NODE_RECORD = "node"


@dataclass
class NodeData:
    train: Batchable
    test: Batchable

    @classmethod
    def cut(cls, mnist: Mnist, train_idx: np.ndarray, test_idx: np.ndarray) -> NodeData:
        """The training images at ``train_idx`` and the test images at ``test_idx`` (copies: the
        pages of MNIST read for them are let go)."""
        cut = cls(
            train=Batchable.from_uint8(mnist.train_images[train_idx], mnist.train_labels[train_idx]),
            test=Batchable.from_uint8(mnist.test_images[test_idx], mnist.test_labels[test_idx]),
        )
        mnist.drop_pages()
        return cut


def check_partition(partition_id: int, num_partitions: int) -> None:
    problem = partition_problem(partition_id, num_partitions)
    if problem is not None:
        raise ConfigError(
            f'{problem}: give each SuperNode --node-config "{PARTITION_ID}=N {NUM_PARTITIONS}=M" '
            "with M >= 1 and 0 <= N < M."
        )


def train_shards(settings: Settings, num_partitions: int, mnist: Mnist | None = None) -> list[np.ndarray]:
    """Indices into the 60,000 training images, one array per node."""
    mnist = mnist or load_mnist(settings.data_dir)
    try:
        return partition(
            settings.partitioning, mnist.train_labels, num_partitions, settings.seed, **settings.partition_options
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def local_test_shards(
    settings: Settings, num_partitions: int, mnist: Mnist | None = None, train: list[np.ndarray] | None = None
) -> list[np.ndarray]:
    """Indices into the 10,000 test images, one array per node. IID partitionings cut
    the test images the same way (as many per class as fit); under a non-IID one each
    node's test images follow its training label mix, so a node that trains on 2 and 7
    tests on 2 and 7 (``train``: the training shards, when already cut)."""
    mnist = mnist or load_mnist(settings.data_dir)
    if settings.partitioning in NON_IID:
        train = train if train is not None else train_shards(settings, num_partitions, mnist)
        counts = label_counts(mnist.train_labels, train)
        return follow_label_mix(counts, mnist.test_labels, settings.seed + 1)
    try:
        options = {k: v for k, v in settings.partition_options.items() if k != "samples_per_class"}
        return partition(settings.partitioning, mnist.test_labels, num_partitions, settings.seed + 1, **options)
    except ValueError as exc:
        raise ConfigError(
            f"the nodes' local test shards cannot be cut from the 10,000 test images ({exc}): "
            f"use fewer nodes for partitioning='{settings.partitioning}'."
        ) from None


def load_node_data(settings: Settings, partition_id: int, num_partitions: int) -> NodeData:
    """One node's shards, cut afresh (the ClientApp keeps the cut per process: client_app.app)."""
    check_partition(partition_id, num_partitions)
    mnist = load_mnist(settings.data_dir)
    train = train_shards(settings, num_partitions, mnist)
    return NodeData.cut(
        mnist, train[partition_id], local_test_shards(settings, num_partitions, mnist, train)[partition_id]
    )


def server_test_set(settings: Settings) -> Batchable:
    mnist = load_mnist(settings.data_dir)
    return Batchable.from_uint8(mnist.test_images, mnist.test_labels)
