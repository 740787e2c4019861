"""Search for the `fast` preset: 97% test accuracy within 20 FedAvg rounds,
100 IID clients of 600 images, the 784-200-200-10 MLP.

    .venv/bin/python -m benchmarks.search_fast [ROW ...]

Prints one row per configuration: the knobs, the first round at >= 97%, the
accuracy after 20 rounds, and the wall time of the in-process run on this machine.
"""

from __future__ import annotations

import sys

from benchmarks.fedavg_inprocess import fedavg
from task.config import Settings

GRID = [
    # fraction-train, local-epochs, batch-size, learning-rate, momentum
    (0.1, 1, 10, 0.1, 0.0),  # the paper's C = 0.1, E = 1, B = 10
    (1.0, 1, 10, 0.1, 0.0),  # every client every round
    (0.1, 5, 10, 0.1, 0.0),
    (0.1, 20, 10, 0.1, 0.0),
    (0.1, 5, 10, 0.02, 0.9),
    (0.1, 10, 10, 0.02, 0.9),
    (0.2, 10, 10, 0.02, 0.9),
    (0.1, 10, 10, 0.05, 0.9),
]


def main(rows: list[int]) -> None:
    print("| fraction-train | local-epochs | batch | lr | momentum | rounds to 97% | acc @20 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for c, e, b, lr, mom in (GRID[i] for i in rows):
        settings = Settings(
            num_server_rounds=20, fraction_train=c, local_epochs=e, batch_size=b, learning_rate=lr, momentum=mom
        )
        r = fedavg(settings)
        hit = r["rounds-to-target"] or "not reached"
        print(
            f"| {c} | {e} | {b} | {lr} | {mom} | {hit} | {100 * r['by-round'][-1]:.2f}% | {r['seconds']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    # Optional row numbers (0-based) to run part of the grid, e.g. on two cores at once.
    main([int(a) for a in sys.argv[1:]] or list(range(len(GRID))))
