"""report.md for one run folder: the federated model against a centrally trained one.

Everything is computed first (central baseline, local models, figures); the
files are then written together, each under a temporary name and renamed, so a
failure half-way leaves the folder as it was.
"""

from __future__ import annotations

import time
from dataclasses import replace
from itertools import zip_longest
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

import run_folder as rf
from partitioning import label_counts
from report.central import (
    CONVERGED_GAIN,
    CONVERGED_MAX_EPOCHS,
    CONVERGED_PATIENCE,
    CentralResult,
    Log,
    central_baseline,
    log_stderr,
)
from report.device import report_device
from report.figures import curves_png, grid_png, label_heatmap_png, local_vs_merged_png
from report.local_vs_merged import OWN_SHARD, LocalVsMerged, compare_local_and_merged
from report.markdown import first_at_target, render_markdown
from run_folder import CompletedRun, read_completed_run
from task.config import Settings
from task.data import load_mnist
from task.errors import UserError
from task.models import build_model
from task.objective import Objective
from task.pca import PCA
from task.shards import server_test_set, train_shards
from task.strategies import STRATEGIES

GRID_DIGITS = 10


class ReportError(UserError):
    """A report option is invalid."""


def make_report(
    run_dir: str | Path,
    *,
    central_epochs: int | None = None,
    nodes: int = 10,
    local_epochs: int | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
    log: Log = log_stderr,
) -> Path:
    """Write ``report.md`` and its figures into ``run_dir``; return the report's path."""
    if central_epochs is not None and central_epochs < 1:
        raise ReportError(f"central epochs={central_epochs}: use 1 or more.")
    if nodes < 1:
        raise ReportError(f"nodes={nodes} for the local-vs-merged comparison: use 1 or more.")
    if local_epochs is not None and local_epochs < 1:
        raise ReportError(f"local epochs={local_epochs} for the local models: use 1 or more.")
    run = read_completed_run(run_dir)
    settings = run.settings if central_epochs is None else replace(run.settings, central_epochs=central_epochs)
    dev = report_device(settings, device)
    central = central_baseline(settings, run.num_partitions, dev, cache_dir, log)
    converged = (
        central_baseline(settings, run.num_partitions, dev, cache_dir, log, until_converged=True)
        if settings.central_converged
        else None
    )
    epochs = local_epochs or settings.local_epochs
    local = compare_local_and_merged(settings, run.num_partitions, run.model.state_dict(), epochs, dev, nodes, log)
    counts = label_counts(load_mnist(settings.data_dir).train_labels, train_shards(settings, run.num_partitions), 10)
    files = figures(run, settings, central, converged, local, counts)
    pca_mse = None
    if not settings.objective.classifier:
        files[rf.REPORT_RECONSTRUCTIONS], pca_mse = reconstructions(run, central, settings)
    files[rf.REPORT] = render(run, settings, central, local, counts, converged, pca_mse).encode()
    run.folder.write_files(files)
    return run.folder.file(rf.REPORT)


def figures(
    run: CompletedRun,
    settings: Settings,
    central: CentralResult,
    converged: CentralResult | None,
    local: LocalVsMerged,
    counts: np.ndarray,
) -> dict[str, bytes]:
    """The curves, the label heatmap and the local-vs-merged bars, by file name."""
    objective = settings.objective
    sampled = [r.node for r in local.rows]
    return {
        rf.REPORT_CURVES: curves_png(
            run.rounds,
            central.epochs,
            objective,
            f"{run.folder.name}: federated vs central",
            converged.epochs if converged else None,
        ),
        rf.REPORT_LABELS: label_heatmap_png(
            counts,
            f"Training images of each digit on each of the {run.num_partitions} nodes ({_partitioning(settings)}); "
            "red marks: the nodes sampled for local vs merged",
            sampled,
        ),
        rf.REPORT_LOCAL_VS_MERGED: local_vs_merged_png(
            sampled,
            [r.local[objective.key] for r in local.rows],
            [r.merged[objective.key] for r in local.rows],
            objective,
            f"Each node's {local.test_set}: its own model vs the merged model",
        ),
    }


def reconstructions(run: CompletedRun, central: CentralResult, settings: Settings) -> tuple[bytes, float]:
    """The same test digits through the federated model, the central model and PCA with the
    same code size; and PCA's test MSE per pixel, the linear baseline."""
    test = server_test_set(settings)
    picks = [int(np.flatnonzero(test.y.numpy() == d)[0]) for d in range(GRID_DIGITS)]
    x = test.x[picks]
    rows = [x.numpy()]
    for state in (run.model.state_dict(), central.state_dict):
        model = build_model(settings)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            rows.append(model(x).numpy())
    mnist = load_mnist(settings.data_dir)
    train = mnist.train_images.reshape(len(mnist.train_images), -1).astype(np.float32) / 255.0
    pca = PCA.fit(train, settings.ae_code_size)
    rows.append(pca.decode(pca.encode(x.numpy())))
    png = grid_png(
        rows,
        ["original", "federated", "central", f"PCA-{settings.ae_code_size}"],
        "The first test image of each digit, reconstructed",
    )
    return png, pca.mse(test.x.numpy())


def render(
    run: CompletedRun,
    settings: Settings,
    central: CentralResult,
    local: LocalVsMerged,
    counts: np.ndarray | None = None,
    converged: CentralResult | None = None,
    pca_mse: float | None = None,
) -> str:
    """report.md's text, from ``report/templates/report.md.j2``."""
    objective = settings.objective
    key = objective.key
    fed = [r["server"][key] for r in run.rounds]
    cen = [e[key] for e in central.epochs]
    return render_markdown(
        "report.md.j2",
        run=run,
        settings=settings,
        central=central,
        converged=converged,
        local=local,
        objective=objective,
        metric=objective.format,
        spec=STRATEGIES[settings.strategy],
        model_name=_model_name(settings),
        partitioning=_partitioning(settings),
        fed=_Summary(
            fed[-1],
            objective.best(fed),
            first_at_target(objective, fed),
            run.rounds[-1]["round"],
            run.rounds[-1]["elapsed-s"],
            run.history.get("num-nodes", run.num_partitions),
        ),
        cen=_Summary(cen[-1], objective.best(cen), first_at_target(objective, cen)),
        until_converged={"gain": CONVERGED_GAIN, "patience": CONVERGED_PATIENCE, "max_epochs": CONVERGED_MAX_EPOCHS},
        steps=list(zip_longest(run.rounds, central.epochs)),
        refused=[f for r in run.rounds for f in r.get("failures") or []],
        privacy=_last_privacy(run.rounds),
        pca_mse=pca_mse,
        labels=None if counts is None else _label_stats(counts),
        nodes=_node_summary(objective, local),
        own_shard=OWN_SHARD,
        digit_counts=_digit_counts,
        # the run's config.json, with the central epochs this report actually trained
        config={**run.config, "central-epochs": settings.central_epochs},
        files=rf,
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


class _Summary(NamedTuple):
    """One side of the headline table: the federated rounds or the central epochs."""

    final: float
    best: float
    hit: int | None  # the first round/epoch at the objective's target
    rounds: int = 0
    seconds: float = 0.0
    nodes: int = 0


def _last_privacy(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last round's privacy record (epsilon spent so far), if the run kept one."""
    for r in reversed(rounds):
        spent = (r.get("clients-train") or {}).get("privacy")
        if spent is not None:
            return {"round": r["round"], "spent": spent}
    return None


def _label_stats(counts: np.ndarray) -> dict[str, Any]:
    """Per node (rows of ``counts``, images of each digit): its images, digits present, digits
    making up at least 10% of it, and the share of its largest digit (mean, in %)."""
    sizes = counts.sum(axis=1)
    shares = counts / np.maximum(sizes[:, None], 1)
    return {
        "sizes": sizes,
        "digits": (counts > 0).sum(axis=1),
        "major": (shares >= 0.1).sum(axis=1),
        "top_share": 100 * shares.max(axis=1).mean(),
    }


def _node_summary(objective: Objective, local: LocalVsMerged) -> dict[str, Any]:
    """What the local-vs-merged table adds up: the merged model's wins and the all-images means."""
    key = objective.key
    local_all = [r.local_all[key] for r in local.rows if r.local_all]
    return {
        "wins": sum(objective.better(r.merged[key], r.local[key]) for r in local.rows),
        "mean_local_all": float(np.mean(local_all)) if local_all else None,
        "merged_all": local.merged_all.get(key),
    }


def _digit_counts(digits: list[int]) -> str:
    """A node's training digits and their images, e.g. "3 (120), 7 (80)"."""
    return ", ".join(f"{d} ({n})" for d, n in enumerate(digits) if n)


def _partitioning(settings: Settings) -> str:
    """The partitioning and its knobs, in words."""
    name = settings.partitioning
    if name == "shards":
        per = settings.shards_per_client or "num-shards / nodes"
        return f"shards: {settings.num_shards} label-sorted shards, {per} per node"
    if name == "dirichlet":
        return f"dirichlet, alpha = {settings.dirichlet_alpha:g}"
    if name == "iid-balanced":
        return "iid-balanced" + (
            f", {settings.samples_per_class} images per digit" if settings.samples_per_class else ""
        )
    return f"{name} shards"


def _model_name(settings: Settings) -> str:
    if settings.model == "mlp":
        return "MLP (784-200-200-10)"
    widths = "-".join(str(w) for w in (784, *settings.ae_hidden_sizes, settings.ae_code_size))
    return f"stacked autoencoder ({widths}, mirrored decoder)"
