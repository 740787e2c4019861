"""Argument checks shared by the partitioners, so every refusal names the key,
the value and what is allowed, as the run config's own checks do."""

from __future__ import annotations

import numpy as np


def check_num_partitions(num_items: int, num_partitions: int) -> None:
    if not 1 <= num_partitions <= num_items:
        raise ValueError(f"num-partitions={num_partitions} must be between 1 and the {num_items} items.")


def check_whole(key: str, value: object, minimum: int, meaning: str = "") -> int:
    """A whole number >= ``minimum``; a float or a bool is refused rather than
    truncated, so a typo cannot silently change the split."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{key}={value!r} is not allowed: use a whole number >= {minimum}{meaning}.")
    return int(value)


def dashed(option: str) -> str:
    """``num_shards`` -> ``num-shards``: the run config's spelling, used in messages."""
    return option.replace("_", "-")
