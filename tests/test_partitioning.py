import numpy as np
import pytest

from partitioning import iid, iid_balanced, partition


def _labels(n_per_class: int = 60, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), n_per_class))


def test_iid_gives_600_images_to_each_of_100_nodes(mnist):
    shards = iid(mnist.train_labels, 100, seed=1)
    assert len(shards) == 100
    assert {len(s) for s in shards} == {600}
    together = np.concatenate(shards)
    assert len(np.unique(together)) == 60000  # disjoint and covering all


def test_iid_is_deterministic_and_seed_dependent():
    labels = _labels()
    a, b, c = iid(labels, 7, seed=3), iid(labels, 7, seed=3), iid(labels, 7, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_drops_only_the_remainder():
    shards = iid(_labels(), 7, seed=0)  # 600 items, 7 nodes
    assert {len(s) for s in shards} == {85}
    assert len(np.unique(np.concatenate(shards))) == 7 * 85


def test_iid_balanced_gives_every_node_the_same_count_of_each_digit(mnist):
    shards = iid_balanced(mnist.train_labels, 100, seed=0, samples_per_class=45)
    for s in shards:
        assert np.array_equal(np.bincount(mnist.train_labels[s], minlength=10), np.full(10, 45))
    assert len(np.unique(np.concatenate(shards))) == 100 * 450


def test_iid_balanced_default_takes_as_many_as_the_rarest_class_allows(mnist):
    shards = iid_balanced(mnist.train_labels, 100, seed=0)
    assert {len(s) for s in shards} == {540}  # digit 5 has 5421 images -> 54 per node


def test_iid_balanced_refuses_more_than_the_rarest_class_holds():
    with pytest.raises(ValueError, match="rarest class has 60"):
        iid_balanced(_labels(), 10, seed=0, samples_per_class=7)


def test_a_node_can_compute_its_own_shard_alone():
    labels = _labels()
    everyone = partition("iid-balanced", labels, 5, seed=9)
    mine = partition("iid-balanced", labels.copy(), 5, seed=9)[3]
    assert np.array_equal(everyone[3], mine)


@pytest.mark.parametrize("bad", [0, -1, 601])
def test_number_of_partitions_is_checked(bad):
    with pytest.raises(ValueError, match="num-partitions"):
        iid(_labels(), bad, seed=0)


def test_unknown_partitioner_names_the_choices():
    with pytest.raises(ValueError, match="iid-balanced"):
        partition("dirichlet", _labels(), 2, seed=0)
