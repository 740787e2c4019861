"""Which nodes a round asks: a seeded sample of the partitions held by connected nodes."""

from __future__ import annotations

import numpy as np

_PHASES = {"train": 0, "evaluate": 1}


def sample_partitions(
    available: list[int], fraction: float, minimum: int, seed: int, server_round: int, attempt: int, phase: str
) -> list[int]:
    """``max(fraction x available, minimum)`` partition ids, the same for the same
    seed, round, attempt and phase on every machine (Flower's own sampling uses
    the unseeded global ``random`` over node ids that change from run to run)."""
    size = min(len(available), max(int(len(available) * fraction), minimum))
    rng = np.random.default_rng([seed, server_round, attempt, _PHASES[phase]])
    return sorted(int(p) for p in rng.choice(sorted(available), size=size, replace=False))
