"""A node's share of MNIST: its training shard and its held-out local test shard."""

import numpy as np
import pytest

from partitioning import follow_label_mix, label_counts
from task.config import Settings
from task.errors import ConfigError
from task.shards import check_partition, load_node_data, local_test_shards, server_test_set, train_shards


def test_a_node_holds_its_training_shard_and_its_share_of_the_test_images(mnist):
    settings = Settings()
    data = load_node_data(settings, 3, 100)
    idx = train_shards(settings, 100, mnist)[3]
    assert len(data.train) == 600 and len(data.test) == 100
    assert np.array_equal(data.train.y.numpy(), mnist.train_labels[idx])
    assert data.train.x.shape == (600, 784) and float(data.train.x.min()) >= 0 and float(data.train.x.max()) <= 1


def test_local_test_shards_are_disjoint_and_cut_from_the_test_images(mnist):
    shards = local_test_shards(Settings(), 10, mnist)
    joined = np.concatenate(shards)
    assert len(joined) == len(np.unique(joined)) == 10000


def test_the_server_tests_on_all_10000_images():
    assert len(server_test_set(Settings())) == 10000


@pytest.mark.parametrize(
    "pid, n, message",
    [
        (2, 2, r"partition-id=2 is out of range for num-partitions=2 \(0 to 1\)"),
        (0, 0, "num-partitions=0 must be at least 1"),
    ],
)
def test_partitions_out_of_range_are_refused(pid, n, message):
    with pytest.raises(ConfigError, match=message):
        check_partition(pid, n)


def test_a_split_the_test_images_cannot_give_is_a_config_error():
    with pytest.raises(ConfigError, match="local test shards cannot be cut"):
        local_test_shards(Settings(), 20000)


@pytest.mark.parametrize("partitioning, options", [("shards", {}), ("dirichlet", {"dirichlet_alpha": 0.1})])
def test_under_a_non_iid_split_a_node_tests_on_its_own_digits(mnist, partitioning, options):
    settings = Settings(partitioning=partitioning, **options)
    train = train_shards(settings, 100, mnist)
    test = local_test_shards(settings, 100, mnist)
    assert len(np.unique(np.concatenate(test))) == sum(map(len, test)) == 10000  # disjoint, every image used
    train_mix, test_mix = label_counts(mnist.train_labels, train, 10), label_counts(mnist.test_labels, test, 10)
    assert (test_mix[train_mix == 0] == 0).all()  # never a digit the node does not train on
    assert (test_mix.sum(axis=1) > 0).all()
    # the same proportions, within rounding: a node's test share of a digit is about a sixth of its training share
    expected = train_mix * (
        np.bincount(mnist.test_labels, minlength=10) / np.bincount(mnist.train_labels, minlength=10)
    )
    assert np.abs(test_mix - expected).max() <= 1.5


def test_a_node_with_a_single_training_image_still_gets_a_test_image():
    labels = np.array([0, 0, 0, 1, 1, 1])
    counts = np.array([[100, 0], [1, 0], [0, 50]])  # node 1's share of class 0 rounds to nothing
    parts = follow_label_mix(counts, labels, seed=0)
    assert [len(p) for p in parts] == [2, 1, 3]
    assert (labels[parts[1]] == 0).all()
    assert all(np.array_equal(a, b) for a, b in zip(parts, follow_label_mix(counts, labels, seed=0)))
