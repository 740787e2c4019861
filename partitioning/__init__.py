"""Split a labelled dataset into one index array per node.

Every partitioner is a pure function ``(labels, num_partitions, seed, **options)
-> list of index arrays``: the same inputs give the same split on every machine,
so a node needs only its own ``partition-id`` to find its shard, and the server can
rebuild any node's shard (for the central baseline and the report) without asking
it. The shards are disjoint and each is sorted.

A partitioner's options are its keyword parameters after ``seed``; :data:`OPTIONS`
lists them with their defaults, and :func:`partition` refuses any other.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from partitioning._checks import dashed
from partitioning.iid import iid, iid_balanced
from partitioning.noniid import dirichlet, shards

Partitioner = Callable[..., list[np.ndarray]]

PARTITIONERS: dict[str, Partitioner] = {
    "iid": iid,
    "iid-balanced": iid_balanced,
    "shards": shards,
    "dirichlet": dirichlet,
}


def _options(fn: Partitioner) -> dict[str, Any]:
    return {p.name: p.default for p in list(inspect.signature(fn).parameters.values())[3:]}


# name -> {option: default}, read from each partitioner's signature so the two cannot drift apart.
OPTIONS: dict[str, dict[str, Any]] = {name: _options(fn) for name, fn in PARTITIONERS.items()}


def partition(
    name: str,
    labels: np.ndarray,
    num_partitions: int,
    seed: int,
    samples_per_class: int | None = None,
    **options: Any,
) -> list[np.ndarray]:
    """Run the partitioner called ``name`` (a key of :data:`PARTITIONERS`) with
    ``options`` (keyword names as in :data:`OPTIONS`).

    ``samples_per_class`` keeps its old fifth place because callers pass the run
    config's value for every partitioning: the partitionings that do not take it
    ignore 0 (the run config's "not set") and refuse anything else.
    """
    if name not in PARTITIONERS:
        raise ValueError(f"partitioning='{name}' is unknown; choose one of {sorted(PARTITIONERS)}.")
    allowed = OPTIONS[name]
    if samples_per_class is not None and ("samples_per_class" in allowed or samples_per_class != 0):
        options["samples_per_class"] = samples_per_class
    for key, value in options.items():
        if key not in allowed:
            takes = ", ".join(dashed(k) for k in allowed) or "no options"
            raise ValueError(f"{dashed(key)}={value!r} does not apply to partitioning='{name}': it takes {takes}.")
    return PARTITIONERS[name](labels, num_partitions, seed, **options)


# Partitionings whose nodes see a skewed mix of digits: a node's local test images must
# follow its own training mix (:func:`follow_label_mix`), not a split of their own.
NON_IID = frozenset({"shards", "dirichlet"})


def follow_label_mix(counts: np.ndarray, labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Split ``labels`` (e.g. the test set) so that each node's share has the label
    mix of its training shard: every class's images, shuffled, are dealt to the nodes
    in proportion to their training images of that class (``counts``, from
    :func:`label_counts`; cumulative rounding, so every image is used). A node that
    gets nothing but trains on something then takes one image of its most common
    class from the node holding the most of that class's images, so every node that
    can train can also test. Disjoint, sorted, deterministic."""
    labels = np.asarray(labels)
    counts = np.asarray(counts, dtype=np.int64)
    num_partitions = len(counts)
    rng = np.random.default_rng(seed)
    owner = np.full(len(labels), -1, dtype=np.int64)
    for c in range(counts.shape[1]):
        idx = rng.permutation(np.flatnonzero(labels == c))
        total = counts[:, c].sum()
        if total == 0 or len(idx) == 0:
            continue
        cuts = np.round(np.cumsum(counts[:, c]) / total * len(idx)).astype(np.int64)
        owner[idx] = np.searchsorted(cuts, np.arange(len(idx)), side="right")
    for node in range(num_partitions):
        if counts[node].sum() == 0 or (owner == node).any():
            continue
        c = int(np.argmax(counts[node]))
        holders = np.bincount(owner[(labels == c) & (owner >= 0)], minlength=num_partitions)
        donor = int(np.argmax(holders))
        if holders[donor] >= 2:
            owner[np.flatnonzero((labels == c) & (owner == donor))[-1]] = node
    return [np.flatnonzero(owner == node) for node in range(num_partitions)]


def label_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """``[num_partitions, num_classes]`` counts of each label on each node: the
    report's nodes-by-digits picture, and how the tests measure skew. Classes are
    ``0 .. max(labels)`` unless ``num_classes`` is given, so every picture of MNIST
    has the same ten columns even when a node lacks the last digit."""
    labels = np.asarray(labels)
    top = int(labels.max()) + 1 if labels.size else 0
    k = top if num_classes is None else num_classes
    if k < top:
        raise ValueError(f"num_classes={num_classes} is too few: the labels go up to {top - 1}.")
    counts = np.zeros((len(parts), k), dtype=np.int64)
    for row, part in enumerate(parts):
        counts[row] = np.bincount(labels[part], minlength=k)
    return counts
