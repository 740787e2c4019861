"""``[timing]`` lines: when each phase of a launch ended, for the speed benchmark."""

from __future__ import annotations

import os

TIMINGS_ENV = "FEDMNIST_TIMINGS"


def mark(label: str) -> None:
    """With ``FEDMNIST_TIMINGS=1``, print ``[timing] label`` as a phase ends: the
    benchmark (``benchmarks/perf.py``) times the launcher's phases by these lines."""
    if os.environ.get(TIMINGS_ENV) == "1":
        print(f"[timing] {label}", flush=True)
