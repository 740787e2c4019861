"""IID splits: every node sees every digit in about the global proportions.

Moved here unchanged from ``partitioning/__init__.py``: runs already recorded
depend on their exact output (``tests/test_partitioning.py`` pins it).
"""

from __future__ import annotations

import numpy as np

from partitioning._checks import check_num_partitions


def iid(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then split into equal shards (McMahan et al. 2017: 600 images per
    node for 100 nodes). The ``len(labels) % num_partitions`` images left over are
    not used, so that every node weighs the same."""
    check_num_partitions(len(labels), num_partitions)
    order = np.random.default_rng(seed).permutation(len(labels))
    per_node = len(labels) // num_partitions
    return [np.sort(order[i * per_node : (i + 1) * per_node]) for i in range(num_partitions)]


def iid_balanced(labels: np.ndarray, num_partitions: int, seed: int, samples_per_class: int = 0) -> list[np.ndarray]:
    """Every node gets ``samples_per_class`` images of each class (the tutorial's
    split: 45 of each digit per node). ``0`` means as many as the rarest class
    allows for every node."""
    check_num_partitions(len(labels), num_partitions)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    rarest = min(int(np.sum(labels == c)) for c in classes)
    per_class = samples_per_class or rarest // num_partitions
    if per_class < 1 or per_class * num_partitions > rarest:
        raise ValueError(
            f"samples-per-class={samples_per_class} with {num_partitions} partitions needs "
            f"{max(per_class, 1) * num_partitions} images of every class, but the rarest "
            f"class has {rarest}. Use at most {rarest // num_partitions} (0 = that maximum)."
        )
    shards: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        for node in range(num_partitions):
            shards[node].append(idx[node * per_class : (node + 1) * per_class])
    return [np.sort(np.concatenate(parts)) for parts in shards]
