"""A node's share of MNIST: its training shard and its held-out local test shard."""

import numpy as np
import pytest

from task.config import ConfigError, Settings
from task.shards import check_partition, load_node_data, local_test_shards, server_test_set, train_shards


def test_a_node_holds_its_training_shard_and_its_share_of_the_test_images(mnist):
    settings = Settings()
    data = load_node_data(settings, 3, 100)
    idx = train_shards(settings, 100, mnist)[3]
    assert len(data.train) == 600 and len(data.test) == 100
    assert np.array_equal(data.train.y.numpy(), mnist.train_labels[idx])
    assert data.train.x.shape == (600, 784) and 0 <= float(data.train.x.min()) and float(data.train.x.max()) <= 1


def test_local_test_shards_are_disjoint_and_cut_from_the_test_images(mnist):
    shards = local_test_shards(Settings(), 10, mnist)
    joined = np.concatenate(shards)
    assert len(joined) == len(np.unique(joined)) == 10000


def test_the_server_tests_on_all_10000_images():
    assert len(server_test_set(Settings())) == 10000


@pytest.mark.parametrize("pid, n, message", [(2, 2, r"partition-id=2 is outside \[0, 2\)"), (0, 0, "num-partitions=0")])
def test_partitions_out_of_range_are_refused(pid, n, message):
    with pytest.raises(ConfigError, match=message):
        check_partition(pid, n)


def test_a_split_the_test_images_cannot_give_is_a_config_error():
    with pytest.raises(ConfigError, match="local test shards cannot be cut"):
        local_test_shards(Settings(), 20000)
