"""Poisoning attacks, as plain arithmetic on a node's reply, FOR TESTS AND BENCHMARKS ONLY.

``G`` is the global model a node received, ``T`` the model it trained from it; its update
is ``T - G``. Each function returns what an attacking node sends instead of ``T``, in ``T``'s
dtypes (the server checks them). Which node attacks, when and how is parsed in
:mod:`task.faults`; these functions only compute, so tests can check them to the bit.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10  # MNIST's digits


def scaled(received: list[np.ndarray], trained: list[np.ndarray], k: float) -> list[np.ndarray]:
    """``G + k (T - G)``: the update scaled by ``k`` (``k = -1``: the update negated)."""
    return [(g + k * (t - g)).astype(t.dtype, copy=False) for g, t in zip(received, trained)]


def sign_flipped(received: list[np.ndarray], trained: list[np.ndarray]) -> list[np.ndarray]:
    """``G - (T - G)``: the node pushes the model away from where its data pulls it."""
    return scaled(received, trained, -1.0)


def noisy(trained: list[np.ndarray], sigma: float, seed: int) -> list[np.ndarray]:
    """``T + N(0, sigma^2)`` per weight, drawn from a generator seeded by ``seed`` (the node's
    seed for the round: the run's seed, its partition and the round), so reruns send the same."""
    rng = np.random.default_rng(seed)
    return [(t + rng.normal(0.0, sigma, t.shape)).astype(t.dtype, copy=False) for t in trained]


def flipped_labels(labels: np.ndarray) -> np.ndarray:
    """``y -> 9 - y``: a fixed permutation of the ten digits that moves every one of them
    (0 <-> 9, 1 <-> 8, ..., 4 <-> 5), so the node learns a consistently wrong classifier."""
    return (NUM_CLASSES - 1) - labels


def colluding(received: list[np.ndarray], k: float) -> list[np.ndarray]:
    """``G - k G``: an update of ``-k`` times the global model, pulling it towards zero (``k = 1``:
    all zeros) and beyond. It depends on ``G`` and ``k`` alone, so every colluding node sends
    byte-identical weights whatever its own training gave (identical updates are what fools
    defences that trust updates close to many others, such as Krum)."""
    return [(g - k * g).astype(g.dtype, copy=False) for g in received]
