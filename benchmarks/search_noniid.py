"""Searches behind the non-IID, IID and strategy presets of RESULTS.md: in-process FedAvg with
the server-side updates of Flower's FedAvgM and FedAdam written out in a plain loop.

    .venv/bin/python -m benchmarks.search_noniid [--rounds=N] [--no-stop] GRID [ROW ...]

GRID is one of the names in ``GRIDS``; rows are 0-based (all rows by default); N rounds
(default 100; beyond 50 a row stops at the first round at 97% unless ``--no-stop``). Prints
one Markdown row per configuration: the knobs, the first round at >= 97%, the accuracy at a
few rounds, the last round's and the wall time. For the search only: every figure in RESULTS.md comes from a
Flower run (launcher.simulate) of the chosen setting.

The server updates follow flwr/serverapp/strategy (Flower 1.41); tests/test_search_noniid.py
checks them against Flower's own classes on the same replies:

- fedavgm: g = w - avg; v = mu * v + g (v = g in round 1); w -= server_lr * v
- fedadam: d = avg - w; m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2;
  w += eta * sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) * m / (sqrt(v) + tau), b1 0.9, b2 0.99, tau 1e-3
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.fedavg_inprocess import ServerUpdate, fedavg
from task.config import Settings

NONIID = dict(partitioning="shards", num_shards=200, shards_per_client=2)

# Each row: (label, strategy, server lr, server momentum, Settings keyword arguments)
GRIDS: dict[str, list[tuple[str, str, float, float, dict]]] = {
    # The client learning rate of the paper's non-IID 2NN setting (C=0.1, E=1, B=10).
    "mcmahan-lr": [
        (f"lr {lr}", "fedavg", 1.0, 0.0, dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=lr))
        for lr in (0.02, 0.05, 0.1, 0.2)
    ],
    # The fastest non-IID setting (goal: 97% in at most 332 rounds).
    "noniid-best": [
        (
            "fedavg C=0.1 E=1 lr0.1",
            "fedavg",
            1.0,
            0.0,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavg C=0.2 E=5 lr0.05",
            "fedavg",
            1.0,
            0.0,
            dict(NONIID, fraction_train=0.2, local_epochs=5, learning_rate=0.05),
        ),
        (
            "fedavgm 0.9 C=0.1 E=1 lr0.05",
            "fedavgm",
            1.0,
            0.9,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.05),
        ),
        (
            "fedavgm 0.9 C=0.2 E=1 lr0.05",
            "fedavgm",
            1.0,
            0.9,
            dict(NONIID, fraction_train=0.2, local_epochs=1, learning_rate=0.05),
        ),
        (
            "fedavgm 0.9 C=0.2 E=2 lr0.05",
            "fedavgm",
            1.0,
            0.9,
            dict(NONIID, fraction_train=0.2, local_epochs=2, learning_rate=0.05),
        ),
        (
            "fedavgm 0.9 C=0.1 E=1 lr0.02",
            "fedavgm",
            1.0,
            0.9,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.02),
        ),
        (
            "fedadam 0.01 C=0.1 E=1 lr0.05",
            "fedadam",
            0.01,
            0.0,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.05),
        ),
        (
            "fedavgm 0.7 C=0.2 E=1 lr0.1",
            "fedavgm",
            1.0,
            0.7,
            dict(NONIID, fraction_train=0.2, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavgm 0.9 C=0.3 E=1 lr0.05",
            "fedavgm",
            1.0,
            0.9,
            dict(NONIID, fraction_train=0.3, local_epochs=1, learning_rate=0.05),
        ),
        (
            "fedavgm 0.5 C=0.1 E=1 lr0.1",
            "fedavgm",
            1.0,
            0.5,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavg C=0.2 E=1 lr0.1",
            "fedavg",
            1.0,
            0.0,
            dict(NONIID, fraction_train=0.2, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavgm 0.9 C=0.1 E=1 lr0.01",
            "fedavgm",
            1.0,
            0.9,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.01),
        ),
    ],
    # The fastest IID setting (goal: 97% in at most 11 rounds; `fast` needs 16 with FedAvg).
    "iid-best": [
        (
            "fedavg fast",
            "fedavg",
            1.0,
            0.0,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 fast",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.7 C=0.2 E=5",
            "fedavgm",
            1.0,
            0.7,
            dict(fraction_train=0.2, local_epochs=5, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.2 E=5 lr0.05 no mom",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=5, learning_rate=0.05),
        ),
        (
            "fedadam 0.003 fast",
            "fedadam",
            0.003,
            0.0,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.3 E=10",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.3, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm slr1.5 C=0.2 E=10",
            "fedavgm",
            1.5,
            0.0,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
    ],
    # The IID goal: 97% within 11 rounds (8 at best). `fast` costs 20 clients x 10 epochs x 600
    # images = 120,000 sample-steps a round; the "x" in a label is a row's cost against that.
    "iid-11": [
        (
            "fedavgm 0.7 C=0.2 E=10 (1x)",
            "fedavgm",
            1.0,
            0.7,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.9 slr0.3 C=0.2 E=10 (1x)",
            "fedavgm",
            0.3,
            0.9,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.5 E=4 (1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.5, local_epochs=4, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=1.0 E=2 (1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=1.0, local_epochs=2, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavg C=1.0 E=2 (1x)",
            "fedavg",
            1.0,
            0.0,
            dict(fraction_train=1.0, local_epochs=2, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.5 E=10 (2.5x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.5, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedadam 0.003 C=0.2 E=10 (1x)",
            "fedadam",
            0.003,
            0.0,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.7 C=0.5 E=4 (1x)",
            "fedavgm",
            1.0,
            0.7,
            dict(fraction_train=0.5, local_epochs=4, learning_rate=0.02, momentum=0.9),
        ),
    ],
    # Second IID grid: `iid-11` plateaus near 96.8-97.0% (local SGD noise), so less
    # noise per client step: a smaller client learning rate, larger batches, more epochs.
    "iid-11b": [
        (
            "fedavgm 0.5 C=0.2 E=10 lr0.01 (1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.01, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.2 E=10 B=20 (1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, batch_size=20, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.5 E=10 lr0.01 (2.5x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.5, local_epochs=10, learning_rate=0.01, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.2 E=20 lr0.01 (2x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=20, learning_rate=0.01, momentum=0.9),
        ),
    ],
    # Third IID grid: FedAdam with a server rate that moves the weights (0.003 moves each
    # by about 0.002 a round: `iid-11` row 6).
    "iid-11c": [
        (
            "fedadam 0.01 C=0.2 E=10 (1x)",
            "fedadam",
            0.01,
            0.0,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedadam 0.03 C=0.2 E=10 (1x)",
            "fedadam",
            0.03,
            0.0,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
    ],
    # The non-IID goal: shards, 97% within 120 rounds (80 at best). `noniid-fast` (FedAvgM 0.5,
    # C=0.1, E=1) costs 10 clients x 1 epoch x 600 images = 6,000 sample-steps a round.
    "noniid-120": [
        (
            "fedavgm 0.5 C=0.1 E=1 lr0.1 (noniid-fast, 1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavgm 0.7 C=0.2 E=1 lr0.1 (2x)",
            "fedavgm",
            1.0,
            0.7,
            dict(NONIID, fraction_train=0.2, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavgm 0.9 slr0.5 C=0.2 E=1 lr0.1 (2x)",
            "fedavgm",
            0.5,
            0.9,
            dict(NONIID, fraction_train=0.2, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavgm 0.7 C=0.3 E=1 lr0.1 (3x)",
            "fedavgm",
            1.0,
            0.7,
            dict(NONIID, fraction_train=0.3, local_epochs=1, learning_rate=0.1),
        ),
        (
            "fedavgm 0.5 C=0.2 E=2 lr0.1 (4x)",
            "fedavgm",
            1.0,
            0.5,
            dict(NONIID, fraction_train=0.2, local_epochs=2, learning_rate=0.1),
        ),
        (
            "fedprox mu0.1 C=0.2 E=2 lr0.1 (4x)",
            "fedprox",
            1.0,
            0.0,
            dict(NONIID, fraction_train=0.2, local_epochs=2, learning_rate=0.1, proximal_mu=0.1),
        ),
        (
            "fedadam 0.01 C=0.1 E=1 lr0.05 (1x)",
            "fedadam",
            0.01,
            0.0,
            dict(NONIID, fraction_train=0.1, local_epochs=1, learning_rate=0.05),
        ),
        (
            "fedavgm 0.5 C=0.2 E=1 lr0.02 mom0.9 (2x)",
            "fedavgm",
            1.0,
            0.5,
            dict(NONIID, fraction_train=0.2, local_epochs=1, learning_rate=0.02, momentum=0.9),
        ),
    ],
    # IID, the client learning rate decayed every round (`learning-rate-decay`): the IID
    # plateau near 96.8-97.0% is local SGD noise, so later rounds take smaller steps.
    "iid-decay": [
        (
            "fedavgm 0.5 C=0.2 E=10 lr0.02 decay0.9 (1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9, learning_rate_decay=0.9),
        ),
        (
            "fedavgm 0.5 C=0.2 E=10 lr0.03 decay0.8 (1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.03, momentum=0.9, learning_rate_decay=0.8),
        ),
        (
            "fedavgm 0.5 C=0.5 E=10 lr0.02 decay0.9 (2.5x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.5, local_epochs=10, learning_rate=0.02, momentum=0.9, learning_rate_decay=0.9),
        ),
        (
            "fedavgm 0.5 C=0.2 E=10 lr0.02 decay0.8 (1x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9, learning_rate_decay=0.8),
        ),
        (
            "fedavgm 0.5 slr1.5 C=0.2 E=10 lr0.02 (1x)",
            "fedavgm",
            1.5,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 C=0.2 E=20 lr0.02 (2x)",
            "fedavgm",
            1.0,
            0.5,
            dict(fraction_train=0.2, local_epochs=20, learning_rate=0.02, momentum=0.9),
        ),
    ],
    # IID, the server's step larger than the average update (server learning rate above 1):
    # 11 rounds of 600 local steps are about one central epoch, so the server extrapolates.
    "iid-slr": [
        (
            "fedavgm 0.5 slr1.5 C=0.2 E=10 lr0.02 decay0.9 (1x)",
            "fedavgm",
            1.5,
            0.5,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9, learning_rate_decay=0.9),
        ),
        (
            "fedavgm 0.0 slr2.0 C=0.2 E=10 lr0.02 (1x)",
            "fedavgm",
            2.0,
            0.0,
            dict(fraction_train=0.2, local_epochs=10, learning_rate=0.02, momentum=0.9),
        ),
        (
            "fedavgm 0.5 slr1.5 C=0.5 E=10 lr0.02 decay0.9 (2.5x)",
            "fedavgm",
            1.5,
            0.5,
            dict(fraction_train=0.5, local_epochs=10, learning_rate=0.02, momentum=0.9, learning_rate_decay=0.9),
        ),
    ],
}


class FedAvgM:
    """Flower's FedAvgM server update (see the module doc)."""

    def __init__(self, server_lr: float, server_momentum: float) -> None:
        self.server_lr, self.server_momentum = server_lr, server_momentum
        self.momentum: list[np.ndarray] | None = None

    def __call__(self, rnd: int, weights: list[np.ndarray], avg: list[np.ndarray]) -> list[np.ndarray]:
        g = [w - a for w, a in zip(weights, avg)]
        if self.server_momentum > 0:
            self.momentum = (
                g if self.momentum is None else [self.server_momentum * p + q for p, q in zip(self.momentum, g)]
            )
            g = self.momentum
        return [w - self.server_lr * p for w, p in zip(weights, g)]


class FedAdam:
    """Flower's FedAdam server update (see the module doc)."""

    def __init__(self, server_lr: float) -> None:
        self.server_lr = server_lr
        self.m: list[np.ndarray] | None = None
        self.v: list[np.ndarray] | None = None

    def __call__(self, rnd: int, weights: list[np.ndarray], avg: list[np.ndarray]) -> list[np.ndarray]:
        d = [a - w for w, a in zip(weights, avg)]
        m = [np.zeros_like(x) for x in d] if self.m is None else self.m
        v = [np.zeros_like(x) for x in d] if self.v is None else self.v
        self.m = [0.9 * p + 0.1 * q for p, q in zip(m, d)]
        self.v = [0.99 * p + 0.01 * q * q for p, q in zip(v, d)]
        eta = self.server_lr * np.sqrt(1 - 0.99 ** (rnd + 1.0)) / (1 - 0.9 ** (rnd + 1.0))
        return [w + eta * p / (np.sqrt(q) + 1e-3) for w, p, q in zip(weights, self.m, self.v)]


def server_update(strategy: str, server_lr: float, server_momentum: float) -> ServerUpdate | None:
    """The server update of ``strategy`` (None: FedAvg's plain average)."""
    if strategy in ("fedavg", "fedprox"):  # FedProx: FedAvg's average; proximal-mu acts on the nodes
        return None
    if strategy == "fedavgm":
        return FedAvgM(server_lr, server_momentum)
    if strategy == "fedadam":
        return FedAdam(server_lr)
    raise ValueError(strategy)


def run(
    strategy: str, server_lr: float, server_momentum: float, settings: Settings, num_nodes: int = 100, stop: bool = True
) -> dict:
    """In-process FedAvg with ``strategy``'s server update; long searches stop at the target
    unless ``stop`` is False (``--no-stop``: every round, for the final accuracy)."""
    return fedavg(
        settings,
        num_nodes,
        server_update(strategy, server_lr, server_momentum),
        stop_at_target=stop and settings.num_server_rounds > 50,
    )


def main(grid: str, rows: list[int], rounds: int, stop: bool = True) -> None:
    table = GRIDS[grid]
    checkpoints = [r for r in (8, 10, 11, 50, 80, 100, 120, 200, 300) if r <= rounds]
    print("| row | setting | rounds to 97% | " + " | ".join(f"acc @{r}" for r in checkpoints) + " | final | seconds |")
    print("|---|---|---|" + "---|" * len(checkpoints) + "---|---|")
    for row in rows or range(len(table)):
        label, strategy, slr, smom, kwargs = table[row]
        settings = Settings(num_server_rounds=rounds, **kwargs)
        r = run(strategy, slr, smom, settings, stop=stop)
        vals = r["by-round"]
        accs = " | ".join(f"{100 * vals[c - 1]:.2f}%" if c <= len(vals) else "-" for c in checkpoints)
        hit = r["rounds-to-target"] or "not reached"
        final = f"{100 * vals[-1]:.2f}% (round {len(vals)})"
        print(f"| {row} | {label} | {hit} | {accs} | {final} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    rounds, stop = 100, True
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag.startswith("--rounds="):
            rounds = int(flag.split("=", 1)[1])
        elif flag == "--no-stop":
            stop = False
        else:
            raise SystemExit(f"unknown option {flag}")
    main(args[0], [int(a) for a in args[1:]], rounds, stop)
