import hashlib
import time

import numpy as np
import pytest

from partitioning import OPTIONS, PARTITIONERS, dirichlet, iid, iid_balanced, label_counts, partition, shards


def _labels(n_per_class: int = 60, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), n_per_class))


def _digest(parts: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(np.asarray(p, dtype="<i8").tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def _disjoint(parts: list[np.ndarray]) -> bool:
    together = np.concatenate(parts)
    return len(np.unique(together)) == len(together)


def _top90(counts: np.ndarray) -> float:
    """Mean number of labels that together hold 90% of a node's images."""
    ordered = -np.sort(-counts, axis=1)
    held = np.cumsum(ordered, axis=1) / ordered.sum(axis=1, keepdims=True)
    return float(np.mean(np.argmax(held >= 0.9 - 1e-12, axis=1) + 1))


def _tv(counts: np.ndarray, labels: np.ndarray) -> float:
    """Mean total-variation distance of a node's label mix from the global one."""
    overall = np.bincount(labels, minlength=counts.shape[1]) / len(labels)
    return float(np.mean(0.5 * np.abs(counts / counts.sum(axis=1, keepdims=True) - overall).sum(axis=1)))


# --- iid and iid-balanced: unchanged -------------------------------------------------------------


# Digests and a few indices of the splits as they were before the non-IID partitioners were added
# (computed with the earlier module): recorded runs depend on these exact shards.
PINNED = [
    ("iid", "train", 100, 42, {}, "dac3a3687c820bcc", [74, 77, 137, 162], [59727, 59957]),
    ("iid", "test", 100, 43, {}, "225dd68fa6bc8d6f", [78, 192, 239, 241], [9698, 9910]),
    ("iid", "synthetic", 7, 0, {}, "671a295cc00010a9", [5, 12, 18, 26], [587, 598]),
    (
        "iid-balanced",
        "train",
        100,
        42,
        {"samples_per_class": 45},
        "e11f5e2b1cf27299",
        [103, 413, 587, 605],
        [59897, 59951],
    ),
    ("iid-balanced", "train", 100, 42, {}, "8214c4d80230a513", [103, 413, 587, 605], [59901, 59994]),
    ("iid-balanced", "test", 100, 43, {}, "e9b185de09a5f155", [306, 396, 510, 564], [9811, 9838]),
    ("iid-balanced", "synthetic", 5, 9, {}, "ee11c8cc9355b7fe", [1, 4, 7, 12], [586, 598]),
]


@pytest.mark.parametrize("name, data, n, seed, options, digest, first, last", PINNED)
def test_iid_splits_are_pinned(mnist, name, data, n, seed, options, digest, first, last):
    labels = {"train": mnist.train_labels, "test": mnist.test_labels, "synthetic": _labels()}[data]
    parts = partition(name, labels, n, seed, **options)
    assert parts[0][:4].tolist() == first
    assert parts[-1][-2:].tolist() == last
    assert _digest(parts) == digest
    direct = iid(labels, n, seed) if name == "iid" else iid_balanced(labels, n, seed, **options)
    assert _digest(direct) == digest


def test_the_old_positional_samples_per_class_still_works(mnist):
    """task.shards passes the run config's samples-per-class fifth, for every partitioning."""
    labels = mnist.train_labels
    assert _digest(partition("iid", labels, 100, 42, 0)) == "dac3a3687c820bcc"
    assert _digest(partition("iid-balanced", labels, 100, 42, 45)) == "e11f5e2b1cf27299"
    assert len(partition("shards", labels, 100, 42, 0)) == 100
    with pytest.raises(ValueError, match=r"samples-per-class=45 does not apply to partitioning='iid'"):
        partition("iid", labels, 100, 42, 45)


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


# --- shards --------------------------------------------------------------------------------------


def test_shards_is_mcmahans_split_on_mnist(mnist):
    labels = mnist.train_labels
    parts = shards(labels, 100, seed=0)  # 200 shards of 300, 2 per node
    assert {len(p) for p in parts} == {600}
    assert len(np.unique(np.concatenate(parts))) == 60000  # disjoint, and all data used
    held = (label_counts(labels, parts) > 0).sum(axis=1)
    # No digit has a multiple of 300 images (5,421 to 6,742), so each of the 9 boundaries between
    # digits in the sorted order may fall inside a shard: at most 9 shards hold two digits. A node
    # has two shards, so it holds at most 4 digits, and at most 9 nodes hold more than 2.
    assert held.max() <= 4
    assert np.sum(held > 2) <= 9
    assert held.mean() <= 2.2  # against 10 for iid


def test_each_shard_is_one_run_of_the_sorted_labels(mnist):
    labels = mnist.train_labels
    parts = shards(labels, 200, seed=3, num_shards=200)  # one shard per node
    for p in parts:
        digits = np.unique(labels[p])
        assert len(digits) <= 2 and (len(digits) == 1 or digits[1] == digits[0] + 1)
    assert sum(len(np.unique(labels[p])) == 2 for p in parts) <= 9


def test_shards_is_deterministic_and_seed_dependent():
    labels = _labels()
    a, b = shards(labels, 10, seed=5, num_shards=20), shards(labels, 10, seed=5, num_shards=20)
    c = shards(labels, 10, seed=6, num_shards=20)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_the_seed_also_decides_which_images_of_a_digit_share_a_shard():
    labels = _labels()
    cut = [{frozenset(p.tolist()) for p in shards(labels, 20, seed=s, num_shards=20)} for s in (1, 2)]
    assert cut[0] != cut[1]  # not just the same shards dealt differently


def test_shards_knobs():
    labels = _labels()  # 600 images
    parts = shards(labels, 10, seed=0, num_shards=20)
    assert {len(p) for p in parts} == {60}
    assert len(np.unique(np.concatenate(parts))) == 600
    one_each = shards(labels, 10, seed=0, num_shards=20, shards_per_client=1)
    assert {len(p) for p in one_each} == {30} and _disjoint(one_each)
    assert {len(np.unique(labels[p])) for p in one_each} == {1}  # 30-image shards of 60-image digits


def test_shards_left_over_are_not_used(mnist):
    parts = shards(mnist.train_labels, 30, seed=0)  # 200 shards: 6 each, 20 unused
    assert {len(p) for p in parts} == {1800}
    assert _disjoint(parts) and sum(map(len, parts)) == 54000


@pytest.mark.parametrize(
    "n, options, message",
    [
        (
            10,
            {"num_shards": 7},
            r"num-shards=7 does not cut the 600 images into equal shards: use a divisor of 600, e\.g\. 5, 6, 8, 10\.",
        ),
        (10, {"num_shards": 0}, r"num-shards=0 is not allowed: use a whole number >= 1\."),
        (10, {"num_shards": 20.0}, r"num-shards=20\.0 is not allowed: use a whole number >= 1\."),
        (10, {"num_shards": True}, r"num-shards=True is not allowed"),
        (
            20,
            {"num_shards": 10},
            r"num-shards=10 is fewer than the 20 partitions, which would leave nodes empty: "
            r"use num-shards >= 20 \(a divisor of 600, e\.g\. 20, 24, 25, 30\) or at most 10 partitions\.",
        ),
        (
            10,
            {"num_shards": 20, "shards_per_client": 3},
            r"shards-per-client=3 with 10 partitions needs 30 shards, but num-shards=20: "
            r"use 1 to 2 \(0 = 2\) or raise num-shards\.",
        ),
        (
            10,
            {"num_shards": 20, "shards_per_client": -1},
            r"shards-per-client=-1 is not allowed: use a whole number >= 0 \(0 = num-shards // num-partitions\)\.",
        ),
    ],
)
def test_shards_refuses_bad_counts(n, options, message):
    with pytest.raises(ValueError, match=message):
        shards(_labels(), n, seed=0, **options)
    with pytest.raises(ValueError, match=message):
        partition("shards", _labels(), n, 0, **options)


def test_more_nodes_than_mcmahans_200_shards_is_refused(mnist):
    with pytest.raises(ValueError, match=r"num-shards=200 is fewer than the 1000 partitions"):
        partition("shards", mnist.train_labels, 1000, 0)


# --- dirichlet -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_dirichlet_is_disjoint_covering_and_never_empty(mnist, alpha):
    labels = mnist.train_labels
    parts = dirichlet(labels, 100, seed=0, alpha=alpha)
    assert len(parts) == 100
    together = np.concatenate(parts)
    assert len(together) == 60000 and len(np.unique(together)) == 60000  # every image, once
    assert min(map(len, parts)) >= 1
    assert all(np.all(np.diff(p) > 0) for p in parts)  # each sorted


def test_dirichlet_repairs_empty_nodes(mnist):
    # 1,000 nodes at alpha 0.1: each draw leaves a few dozen nodes empty, so the repair step runs.
    parts = dirichlet(mnist.train_labels, 1000, seed=0, alpha=0.1)
    assert min(map(len, parts)) >= 1 and _disjoint(parts)
    assert sum(map(len, parts)) == 60000
    # As many nodes as images: every node ends with exactly one.
    tiny = dirichlet(np.arange(30) % 3, 30, seed=0, alpha=0.05)
    assert {len(p) for p in tiny} == {1} and _disjoint(tiny)


def test_dirichlet_is_deterministic_and_seed_dependent(mnist):
    labels = mnist.train_labels
    a, b = dirichlet(labels, 50, seed=7, alpha=0.3), dirichlet(labels.copy(), 50, seed=7, alpha=0.3)
    c = dirichlet(labels, 50, seed=8, alpha=0.3)
    assert _digest(a) == _digest(b) != _digest(c)
    assert _digest(dirichlet(labels, 50, seed=7, alpha=0.4)) != _digest(a)


def test_dirichlet_skew_grows_as_alpha_shrinks(mnist):
    labels = mnist.train_labels
    top90, tv = [], []
    for alpha in (100.0, 1.0, 0.5, 0.1):
        counts = label_counts(labels, dirichlet(labels, 100, seed=0, alpha=alpha))
        top90.append(_top90(counts))
        tv.append(_tv(counts, labels))
    # Measured: labels holding 90% of a node's images 9.0, 6.5, 5.2, 2.4; distance 0.04, 0.35, 0.47, 0.72.
    assert top90 == sorted(top90, reverse=True) and top90[0] - top90[-1] > 5
    assert tv == sorted(tv) and tv[-1] > 0.6
    iid_counts = label_counts(labels, iid(labels, 100, seed=0))
    assert _top90(iid_counts) == 9.0 and _tv(iid_counts, labels) < 0.1
    assert abs(tv[0] - _tv(iid_counts, labels)) < 0.05  # alpha 100 is close to IID


@pytest.mark.parametrize("alpha", [0, -0.5, float("nan"), float("inf"), "0.5", True, None])
def test_dirichlet_refuses_alpha_that_is_not_positive(alpha):
    with pytest.raises(ValueError, match=r"alpha=.* is not allowed: use a number > 0"):
        partition("dirichlet", _labels(), 5, 0, alpha=alpha)


# --- every partitioner ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_a_node_can_compute_its_own_shard_alone(name):
    labels = _labels()
    everyone = partition(name, labels, 5, seed=9)
    mine = partition(name, labels.copy(), 5, seed=9)[3]
    assert np.array_equal(everyone[3], mine)
    assert _disjoint(everyone) and min(map(len, everyone)) >= 1


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
@pytest.mark.parametrize("bad", [0, -1, 601])
def test_number_of_partitions_is_checked(name, bad):
    with pytest.raises(ValueError, match="num-partitions"):
        partition(name, _labels(), bad, seed=0)


def test_unknown_partitioner_names_the_choices():
    with pytest.raises(
        ValueError,
        match=r"partitioning='noniid' is unknown; choose one of \['dirichlet', 'iid', 'iid-balanced', 'shards'\]",
    ):
        partition("noniid", _labels(), 2, seed=0)


def test_options_are_declared_by_each_partitioner():
    assert OPTIONS == {
        "iid": {},
        "iid-balanced": {"samples_per_class": 0},
        "shards": {"num_shards": 200, "shards_per_client": 0},
        "dirichlet": {"alpha": 0.5},
    }


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("iid", {"alpha": 0.5}, r"alpha=0\.5 does not apply to partitioning='iid': it takes no options\."),
        (
            "shards",
            {"alpha": 0.5},
            r"alpha=0\.5 does not apply to partitioning='shards': it takes num-shards, shards-per-client\.",
        ),
        (
            "dirichlet",
            {"num_shards": 20},
            r"num-shards=20 does not apply to partitioning='dirichlet': it takes alpha\.",
        ),
        ("dirichlet", {"alpa": 0.1}, r"alpa=0\.1 does not apply to partitioning='dirichlet': it takes alpha\."),
        (
            "iid-balanced",
            {"shards_per_client": 2},
            r"shards-per-client=2 does not apply to partitioning='iid-balanced': it takes samples-per-class\.",
        ),
    ],
)
def test_an_option_that_does_not_apply_is_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        partition(name, _labels(), 5, 0, **options)


def test_label_counts_gives_nodes_by_digits(mnist):
    labels = np.array([0, 0, 1, 2, 2, 2])
    counts = label_counts(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])])
    assert counts.tolist() == [[1, 0, 1], [1, 1, 2]]
    assert label_counts(labels, [np.array([0])], num_classes=5).tolist() == [[1, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="num_classes=2 is too few: the labels go up to 2"):
        label_counts(labels, [np.array([0])], num_classes=2)
    parts = shards(mnist.train_labels, 100, seed=0)
    counts = label_counts(mnist.train_labels, parts)
    assert counts.shape == (100, 10)
    assert counts.sum(axis=1).tolist() == [600] * 100
    assert counts.sum(axis=0).tolist() == np.bincount(mnist.train_labels).tolist()


@pytest.mark.parametrize(
    "name, options",
    [("iid", {}), ("iid-balanced", {}), ("shards", {"num_shards": 2000}), ("dirichlet", {"alpha": 0.1})],
)
def test_fast_enough_for_1000_nodes(mnist, name, options):
    partition(name, mnist.train_labels, 1000, 0, **options)  # warm up
    start = time.perf_counter()
    parts = partition(name, mnist.train_labels, 1000, 0, **options)
    assert len(parts) == 1000
    assert time.perf_counter() - start < 1.0  # measured: 5 to 40 ms
