"""Faults and attacks injected on purpose, FOR TESTS AND BENCHMARKS ONLY: nodes that
misbehave on demand.

The run-config key ``fault-injection`` lists items separated by spaces, each
``KIND[=VALUE]@PARTITIONS[:ROUNDS]``. PARTITIONS is one partition id or several
separated by commas; ROUNDS is left out (every round), ``R`` (round R only) or ``R+``
(round R and every later one). ``"nan@1 hang@2:3 scale=20@3,7:2+"``: the node holding
partition 1 returns NaN weights in every round, the one holding partition 2 hangs in
round 3, those holding partitions 3 and 7 send their updates scaled x20 from round 2 on.

Faults, which the server must survive:

- ``raise``: the training handler raises an error;
- ``hang``: the training handler sleeps for the run's ``round-timeout`` plus 20
  seconds, past the point where the server gives up on it (a finite sleep, so
  that Flower's simulation can still shut down afterwards);
- ``nan``: the returned weights are NaN;
- ``shape``: the first returned array has the wrong shape.

Attacks, well-formed replies which the aggregation must resist (arithmetic in
:mod:`task.attacks`; ``G`` the global model received, ``T`` the model trained from it):

- ``signflip``: sends ``G - (T - G)``, its update negated;
- ``scale=K``: sends ``G + K (T - G)``;
- ``noise=SIGMA``: sends ``T`` plus Gaussian noise of standard deviation SIGMA on every
  weight, seeded by the run's seed, the partition and the round (reruns send the same);
- ``labelflip``: trains on its images with labels ``y -> 9 - y`` (refused for the
  autoencoder, which trains on no labels);
- ``count=N``: claims ``num-examples = N`` with honest weights;
- ``collude=K``: sends ``G - K G`` (an update of ``-K`` times the global model), which
  depends on ``G`` and ``K`` only: all partitions listed send byte-identical weights.

Items naming the same node and round all apply, in the order written.

It exists so that the server's defences can be tested against real Flower
runs. It is refused unless the environment of every Flower process holds
``FEDMNIST_ALLOW_FAULTS=1``, so a production run can never enable it by a
stray config key.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from task import attacks
from task.errors import ConfigError

ENABLE_ENV = "FEDMNIST_ALLOW_FAULTS"
SYNTAX = "KIND[=VALUE]@PARTITION[,PARTITION...][:ROUND[+]]"
# Each kind and the value it takes (None: no value).
KINDS: dict[str, str | None] = {
    "raise": None,
    "hang": None,
    "nan": None,
    "shape": None,
    "signflip": None,
    "scale": "K, a number",
    "noise": "SIGMA, a number > 0",
    "labelflip": None,
    "count": "N, a whole number",
    "collude": "K, a number",
}
ITEM = re.compile(r"(?P<kind>[a-z]+)(?:=(?P<value>[^@]*))?@(?P<partitions>\d+(?:,\d+)*)(?::(?P<round>\d+)(?P<on>\+)?)?")


class FaultConfigError(ConfigError):
    """``fault-injection`` is malformed, or used without being enabled."""


@dataclass(frozen=True)
class Fault:
    kind: str
    partitions: tuple[int, ...]
    server_round: int | None  # None: every round
    later_rounds: bool = False  # True: server_round and every round after it
    value: float = 0.0

    def hits(self, partition_id: int, server_round: int) -> bool:
        if partition_id not in self.partitions:
            return False
        if self.server_round is None:
            return True
        return server_round >= self.server_round if self.later_rounds else server_round == self.server_round


def parse_faults(text: str) -> list[Fault]:
    """The faults in ``text``; refused unless ``FEDMNIST_ALLOW_FAULTS=1``."""
    if not text.strip():
        return []
    if os.environ.get(ENABLE_ENV) != "1":
        raise FaultConfigError(
            f"fault-injection='{text}' makes nodes misbehave on purpose and is for tests only: "
            f"leave it empty (or set {ENABLE_ENV}=1 in the environment of every Flower process to test faults)."
        )
    return [_parse_item(item) for item in text.split()]


def _parse_item(item: str) -> Fault:
    match = ITEM.fullmatch(item)
    if match is None or match["kind"] not in KINDS:
        raise FaultConfigError(
            f"fault-injection item '{item}' is not {SYNTAX} with KIND one of {', '.join(KINDS)} "
            "(e.g. 'nan@1', 'hang@2:3', 'scale=20@3,7:2+')."
        )
    kind, value = match["kind"], match["value"]
    wants = KINDS[kind]
    if (value is None) != (wants is None):
        fix = f"give {kind}={wants.split(',')[0]}" if wants else f"'{kind}' takes no value"
        raise FaultConfigError(f"fault-injection item '{item}': {fix} ({SYNTAX}).")
    rnd = match["round"]
    return Fault(
        kind,
        tuple(int(p) for p in match["partitions"].split(",")),
        int(rnd) if rnd else None,
        bool(match["on"]),
        _value(item, kind, value) if value is not None else 0.0,
    )


def _value(item: str, kind: str, text: str) -> float:
    try:
        value = float(text)  # so count=1e9 reads as it would in a paper
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (kind == "noise" and value <= 0) or (kind == "count" and not value.is_integer()):
        raise FaultConfigError(f"fault-injection item '{item}': {kind} takes {KINDS[kind]}, not '{text}' ({SYNTAX}).")
    return int(value) if kind == "count" else value


def check_faults(text: str, model: str) -> None:
    """Refuse ``text`` if it does not parse, or names an attack this model cannot suffer."""
    for fault in parse_faults(text):
        if fault.kind == "labelflip" and model == "autoencoder":
            raise FaultConfigError(
                f"fault-injection='{text}': labelflip changes the labels a node trains on, but "
                "model='autoencoder' trains on no labels (it rebuilds its images): use another attack."
            )


def faults_for(text: str, partition_id: int, server_round: int) -> list[Fault]:
    """The faults this node injects in this round, in the order written."""
    return [fault for fault in parse_faults(text) if fault.hits(partition_id, server_round)]


def poisoned_labels(faults: list[Fault], labels: np.ndarray) -> np.ndarray:
    """The labels the node trains on: flipped under ``labelflip``, its own otherwise."""
    return attacks.flipped_labels(labels) if any(f.kind == "labelflip" for f in faults) else labels


def misbehave(
    faults: list[Fault],
    received: list[np.ndarray],
    trained: list[np.ndarray],
    num_examples: int,
    seed: int,
    round_timeout: float,
) -> tuple[list[np.ndarray], int]:
    """The weights and example count a node sends after its faults (or raise/hang, as a
    fault says); ``seed`` is the node's seed for this round, ``received`` the global model."""
    weights = trained
    for fault in faults:
        if fault.kind == "raise":
            raise RuntimeError("injected fault: this node fails its training round")
        if fault.kind == "hang":
            time.sleep(round_timeout + 20)
        elif fault.kind == "nan":
            weights = [np.full_like(w, np.nan) for w in weights]
        elif fault.kind == "shape":
            weights = [np.zeros((3, 3), dtype=weights[0].dtype), *weights[1:]]
        elif fault.kind == "signflip":
            weights = attacks.sign_flipped(received, weights)
        elif fault.kind == "scale":
            weights = attacks.scaled(received, weights, fault.value)
        elif fault.kind == "noise":
            weights = attacks.noisy(weights, fault.value, seed)
        elif fault.kind == "collude":
            weights = attacks.colluding(received, fault.value)
        elif fault.kind == "count":
            num_examples = int(fault.value)
    return weights, num_examples
