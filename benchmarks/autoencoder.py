"""Autoencoder settings side by side: FedAvg (in process), central on the same
budget, and PCA with the same code size. Test MSE per pixel on the 10,000 test images.

    .venv/bin/python -m benchmarks.autoencoder [--federated-only | --central-converged] "num-server-rounds=20" ...

Each argument is a set of run-config overrides on top of presets/autoencoder.toml.
The central model here gets ``rounds x fraction-train x local-epochs`` epochs: as
many passes over each image, on average, as the federation made (the larger of
the two budgets in RESULTS.md; the report's central baseline gets the preset's
``central-epochs``, the same number of sequential steps). ``--federated-only``
skips it and prints the federated MSE after every round instead. ``--central-converged`` trains
only the central model, until it converges (``report.central.converged``), through the report's
cache: the report of a run with the same settings and ``central-converged = true`` reuses it.
"""

from __future__ import annotations

import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from benchmarks.fedavg_inprocess import fedavg
from launcher.simulate import parse_run_config
from report.central import central_baseline, train_central
from task.config import Settings
from task.data import load_mnist
from task.errors import ConfigError
from task.pca import PCA

PRESET = Path(__file__).resolve().parent.parent / "presets" / "autoencoder.toml"


def main(argv: list[str]) -> None:
    federated_only = "--federated-only" in argv
    converged = "--central-converged" in argv
    argv = [a for a in argv if a not in ("--federated-only", "--central-converged")]
    base = tomllib.loads(PRESET.read_text()) if PRESET.is_file() else {"model": "autoencoder"}
    if converged:
        central_until_converged(base, argv)
        return
    if federated_only:
        print("| overrides | federated test MSE per pixel, round by round | fed s |")
        print("|---|---|---|")
    else:
        mnist = load_mnist()
        train = mnist.train_images.reshape(60000, -1).astype(np.float32) / 255
        test = mnist.test_images.reshape(10000, -1).astype(np.float32) / 255
        print(
            "| overrides | rounds | central epochs | federated MSE per pixel | central MSE per pixel | fed / central "
            "| PCA MSE per pixel | fed / PCA | fed s | central s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
    for item in argv or [""]:
        config = _with_overrides(base, item)
        settings = Settings.from_run_config(config)
        budget = settings.num_server_rounds * settings.fraction_train * settings.local_epochs
        settings = Settings.from_run_config({**config, "central-epochs": max(1, round(budget))})
        fed = fedavg(settings)
        if federated_only:
            print(
                f"| `{item}` | " + ", ".join(f"{v:.5f}" for v in fed["by-round"]) + f" | {fed['seconds']:.0f} s |",
                flush=True,
            )
            continue
        torch.set_num_threads(1)
        start = time.monotonic()
        central = train_central(settings, 100, torch.device("cpu"))
        central_s = time.monotonic() - start
        pca = PCA.fit(train, settings.ae_code_size).mse(test)
        f, c = fed["by-round"][-1], central.epochs[-1]["mse"]
        print(
            f"| `{item}` | {settings.num_server_rounds} | {settings.central_epochs} | {f:.5f} | {c:.5f} | {f / c:.2f} "
            f"| {pca:.5f} | {f / pca:.2f} | {fed['seconds']:.0f} | {central_s:.0f} |",
            flush=True,
        )


def _with_overrides(base: dict, item: str) -> dict:
    """The preset's run config with one argument's ``key=value`` overrides on top."""
    return {**base, **parse_run_config([item] if item else [])}


def central_until_converged(base: dict, overrides: list[str]) -> None:
    """The central model of each setting trained until it converges, 100 nodes' shards."""
    print("| overrides | epochs to convergence | central MSE per pixel (last) | best | seconds |")
    print("|---|---|---|---|---|")
    torch.set_num_threads(1)
    for item in overrides or [""]:
        settings = Settings.from_run_config(_with_overrides(base, item))
        result = central_baseline(settings, 100, torch.device("cpu"), until_converged=True)
        mse = [e["mse"] for e in result.epochs]
        print(
            f"| `{item}` | {len(mse) - 1} | {mse[-1]:.5f} | {min(mse):.5f} | {result.train_seconds:.0f} |", flush=True
        )


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
