"""Non-IID splits: each node sees a skewed mix of digits, as real federations do.

Like the IID splits they are pure functions of (labels, num_partitions, seed,
options) and return disjoint index arrays, each sorted, one per node.
"""

from __future__ import annotations

import math

import numpy as np

from partitioning._checks import check_num_partitions, check_whole

# Dirichlet draws tried before the repair step fills the nodes left empty.
DIRICHLET_RESAMPLES = 10


def shards(
    labels: np.ndarray,
    num_partitions: int,
    seed: int,
    num_shards: int = 200,
    shards_per_client: int = 0,
) -> list[np.ndarray]:
    """McMahan et al. 2017's pathological split: sort the images by label, cut
    them into ``num_shards`` equal shards (200 of 300 for MNIST's 60,000) and deal
    each node ``shards_per_client`` of them at random (0 = ``num_shards //
    num_partitions``: the paper's 2 for 100 nodes), so most nodes see two digits.

    Images of one label are shuffled (seeded) before sorting, so which images of
    a digit share a shard depends on the seed. Shards left over when the nodes do
    not take them all are not used, as ``iid`` drops its remainder, so that every
    node weighs the same.
    """
    labels = np.asarray(labels)
    n = len(labels)
    check_num_partitions(n, num_partitions)
    num_shards = check_whole("num-shards", num_shards, 1)
    shards_per_client = check_whole("shards-per-client", shards_per_client, 0, " (0 = num-shards // num-partitions)")
    if n % num_shards:
        raise ValueError(
            f"num-shards={num_shards} does not cut the {n} images into equal shards: "
            f"use a divisor of {n}, e.g. {_nearby_divisors(n, num_shards)}."
        )
    if num_shards < num_partitions:
        raise ValueError(
            f"num-shards={num_shards} is fewer than the {num_partitions} partitions, which would "
            f"leave nodes empty: use num-shards >= {num_partitions} (a divisor of {n}, e.g. "
            f"{_nearby_divisors(n, num_partitions, at_least=num_partitions)}) or at most {num_shards} partitions."
        )
    most = num_shards // num_partitions
    per_node = shards_per_client or most
    if per_node > most:
        raise ValueError(
            f"shards-per-client={shards_per_client} with {num_partitions} partitions needs "
            f"{per_node * num_partitions} shards, but num-shards={num_shards}: use 1 to {most} "
            f"(0 = {most}) or raise num-shards."
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    cut = by_label.reshape(num_shards, n // num_shards)
    dealt = rng.permutation(num_shards)[: per_node * num_partitions].reshape(num_partitions, per_node)
    return [np.sort(cut[row].ravel()) for row in dealt]


def dirichlet(labels: np.ndarray, num_partitions: int, seed: int, alpha: float = 0.5) -> list[np.ndarray]:
    """Hsu et al. 2019's split (Flower Datasets' ``DirichletPartitioner``): for
    each class, the shares of the nodes are drawn from Dirichlet(``alpha``) and
    the class's shuffled images are cut in those shares. Small ``alpha`` (0.1)
    gives each node a few digits, large ``alpha`` (100) comes close to IID. Every
    image is used; node sizes vary, as they do in the paper.

    Every node gets at least one image, because a node with nothing cannot train:
    the shares are drawn again, up to ``DIRICHLET_RESAMPLES`` times, until no node
    is empty; if one still is (many nodes, small ``alpha``), each empty node in
    turn takes the highest-numbered image of the then largest node. That node
    holds at least two images whenever another is empty (there are at least as
    many images as nodes), so the repair always ends, and it is deterministic.
    """
    labels = np.asarray(labels)
    n = len(labels)
    check_num_partitions(n, num_partitions)
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float, np.integer, np.floating))
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(
            f"alpha={alpha!r} is not allowed: use a number > 0 (e.g. 0.1: each node sees "
            "few digits; 100: close to IID)."
        )
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    concentration = np.full(num_partitions, float(alpha))
    owner = np.empty(n, dtype=np.int64)
    for _ in range(DIRICHLET_RESAMPLES):
        for idx in members:
            cuts = (np.cumsum(rng.dirichlet(concentration))[:-1] * len(idx)).astype(np.int64)
            owner[idx] = np.searchsorted(cuts, np.arange(len(idx)), side="right")
        sizes = np.bincount(owner, minlength=num_partitions)
        if sizes.min() > 0:
            break
    for empty in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        owner[np.flatnonzero(owner == donor)[-1]] = empty
        sizes[donor] -= 1
        sizes[empty] += 1
    order = np.argsort(owner, kind="stable")  # by node, then by index
    return np.split(order, np.cumsum(sizes)[:-1])


def _nearby_divisors(n: int, target: int, at_least: int = 1) -> str:
    """Up to two divisors of ``n`` below ``target`` (and >= ``at_least``) and the
    first ones from ``target`` up, four in all, for messages."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    divisors = sorted({*small, *(n // d for d in small)})
    below = [d for d in divisors if at_least <= d < target][-2:]
    above = [d for d in divisors if d >= target][: 4 - len(below)]
    return ", ".join(map(str, below + above))
