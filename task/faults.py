"""Faults injected on purpose, FOR TESTS ONLY: nodes that misbehave on demand.

The run-config key ``fault-injection`` lists faults as ``KIND@PARTITION`` or
``KIND@PARTITION:ROUND`` separated by spaces, e.g. ``"nan@1 hang@2:3"``: the
node holding partition 1 returns NaN weights in every round, the node holding
partition 2 hangs in round 3. Kinds:

- ``raise``: the training handler raises an error;
- ``hang``: the training handler sleeps for the run's ``round-timeout`` plus 20
  seconds, past the point where the server gives up on it (a finite sleep, so
  that Flower's simulation can still shut down afterwards);
- ``nan``: the returned weights are NaN;
- ``shape``: the first returned array has the wrong shape.

It exists so that the server's defences can be tested against real Flower
runs. It is refused unless the environment of every Flower process holds
``FEDMNIST_ALLOW_FAULTS=1``, so a production run can never enable it by a
stray config key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from task.errors import ConfigError

ENABLE_ENV = "FEDMNIST_ALLOW_FAULTS"
KINDS = ("raise", "hang", "nan", "shape")


class FaultConfigError(ConfigError):
    """``fault-injection`` is malformed, or used without being enabled."""


@dataclass(frozen=True)
class Fault:
    kind: str
    partition_id: int
    server_round: int | None  # None: every round


def parse_faults(text: str) -> list[Fault]:
    """The faults in ``text``; refused unless ``FEDMNIST_ALLOW_FAULTS=1``."""
    if not text.strip():
        return []
    if os.environ.get(ENABLE_ENV) != "1":
        raise FaultConfigError(
            f"fault-injection='{text}' makes nodes misbehave on purpose and is for tests only: "
            f"leave it empty (or set {ENABLE_ENV}=1 in the environment of every Flower process to test faults)."
        )
    faults = []
    for item in text.split():
        kind, _, where = item.partition("@")
        pid, _, rnd = where.partition(":")
        if kind not in KINDS or not pid.isdigit() or (rnd and not rnd.isdigit()):
            raise FaultConfigError(
                f"fault-injection item '{item}' is not KIND@PARTITION[:ROUND] with KIND one of {', '.join(KINDS)}."
            )
        faults.append(Fault(kind, int(pid), int(rnd) if rnd else None))
    return faults


def fault_for(text: str, partition_id: int, server_round: int) -> str | None:
    """The kind of fault this node injects in this round, if any."""
    for fault in parse_faults(text):
        if fault.partition_id == partition_id and fault.server_round in (None, server_round):
            return fault.kind
    return None


def misbehave(kind: str, weights: list[np.ndarray], round_timeout: float) -> list[np.ndarray]:
    """Apply a fault to a training result (or raise/hang, as the fault says)."""
    if kind == "raise":
        raise RuntimeError("injected fault: this node fails its training round")
    if kind == "hang":
        time.sleep(round_timeout + 20)
    if kind == "nan":
        return [np.full_like(w, np.nan) for w in weights]
    if kind == "shape":
        return [np.zeros((3, 3), dtype=weights[0].dtype), *weights[1:]]
    return weights
