"""report.md for one run folder: the federated model against a centrally trained one.

Everything is computed first (central baseline, local models, figures); the
files are then written together, each under a temporary name and renamed, so a
failure half-way leaves the folder as it was.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import run_folder as rf
from report.central import CentralResult, Log, central_baseline, log_stderr
from report.device import report_device
from report.figures import curves_png, grid_png, local_vs_merged_png
from report.local_vs_merged import LocalVsMerged, compare_local_and_merged
from run_folder import CompletedRun, read_completed_run
from task.data import load_mnist
from task.errors import UserError
from task.models import build_model
from task.pca import PCA
from task.shards import server_test_set

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
    objective = settings.objective
    dev = report_device(settings, device)
    central = central_baseline(settings, run.num_partitions, dev, cache_dir, log)
    epochs = local_epochs or settings.local_epochs
    local = compare_local_and_merged(settings, run.num_partitions, run.model.state_dict(), epochs, dev, nodes, log)

    files: dict[str, bytes] = {
        rf.REPORT_CURVES: curves_png(run.rounds, central.epochs, objective, f"{run.folder.name}: federated vs central"),
        rf.REPORT_LOCAL_VS_MERGED: local_vs_merged_png(
            [r.node for r in local.rows],
            [r.local[objective.key] for r in local.rows],
            [r.merged[objective.key] for r in local.rows],
            objective,
            "Each node's test images: its own model vs the merged model",
        ),
    }
    extra: list[str] = []
    if not objective.classifier:
        files[rf.REPORT_RECONSTRUCTIONS], extra = reconstructions(run, central, settings)
    files[rf.REPORT] = render(run, settings, central, local, extra).encode()
    run.folder.write_files(files)
    return run.folder.file(rf.REPORT)


def reconstructions(run: CompletedRun, central: CentralResult, settings) -> tuple[bytes, list[str]]:
    """The same test digits through the federated and the central model, and the PCA line."""
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
    pca_mse = pca.mse(test.x.numpy())
    png = grid_png(
        rows,
        ["original", "federated", "central", f"PCA-{settings.ae_code_size}"],
        "The first test image of each digit, reconstructed",
    )
    fed = run.rounds[-1]["server"][settings.objective.key]
    lines = [
        "## Reconstructions",
        "",
        f"![reconstructions]({rf.REPORT_RECONSTRUCTIONS})",
        "",
        f"Linear baseline: PCA with {settings.ae_code_size} components, fitted on the 60,000 training images "
        f"(numpy), reconstructs the 10,000 test images with MSE {pca_mse:.5f} per pixel "
        f"({784 * pca_mse:.2f} summed squared error per image). The federated autoencoder's "
        f"{fed:.5f} is {fed / pca_mse:.2f} times PCA's.",
        "",
    ]
    return png, lines


def render(run: CompletedRun, settings, central: CentralResult, local: LocalVsMerged, extra: list[str]) -> str:
    objective = settings.objective
    metric, fmt, column = objective.key, objective.format, objective.column
    fed_final = run.rounds[-1]["server"][metric]
    cen_final = central.epochs[-1][metric]
    rounds = run.rounds[-1]["round"]
    fed_seconds = run.rounds[-1]["elapsed-s"]
    winner = "federated" if objective.better(fed_final, cen_final) else "central"
    unit = objective.label + ("" if objective.higher_is_better else " (lower is better)")

    lines = [
        f"# Federated vs central: {run.path.name}",
        "",
        f"The {_model_name(settings)} trained with FedAvg over {run.num_partitions} nodes "
        f"({settings.partitioning} shards), against the same model trained centrally on the union "
        f"of those shards. Both are tested on the 10,000 MNIST test images; the headline number is {unit}.",
        "",
        "## Headline",
        "",
        "| | federated (FedAvg) | central |",
        "|---|---|---|",
        f"| final {objective.label} | {fmt(fed_final)} | {fmt(cen_final)} |",
        f"| best {objective.label} | {fmt(objective.best([r['server'][metric] for r in run.rounds]))} "
        f"| {fmt(objective.best([e[metric] for e in central.epochs]))} |",
        f"| training | {rounds} rounds x {settings.local_epochs} local epoch(s), "
        f"{100 * settings.fraction_train:g}% of nodes per round | {len(central.epochs) - 1} epoch(s) on "
        f"{central.train_images:,} images |",
    ]
    if objective.target is not None:
        lines.append(
            f"| first at >= {objective.format(objective.target)} | "
            f"{_first_hit(objective, [r['server'] for r in run.rounds], 'round')} "
            f"| {_first_hit(objective, central.epochs, 'epoch')} |"
        )
    lines += [
        f"| wall time | {fed_seconds:.0f} s (rounds only, {run.history.get('num-nodes', run.num_partitions)} nodes) "
        f"| {central.train_seconds:.0f} s (on {central.device}) |",
        "",
        f"Gap (central minus federated): **{objective.format_gap(fed_final, cen_final)}**; "
        f"the {winner} model ends ahead.",
        "",
        f"![federated vs central]({rf.REPORT_CURVES})",
        "",
        "## Per round and per epoch",
        "",
        "Round r is the global model after r FedAvg rounds; epoch e is the central model after e passes "
        "over all the data (0 = the shared initial weights).",
        "",
        f"| step | federated {column} | federated loss | clients' train loss | round s "
        f"| central {column} | central loss | epoch s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i in range(max(len(run.rounds), len(central.epochs))):
        fed = run.rounds[i] if i < len(run.rounds) else None
        cen = central.epochs[i] if i < len(central.epochs) else None
        train = (fed or {}).get("clients-train") or {}
        lines.append(
            "| "
            + " | ".join(
                [
                    str(i),
                    fmt(fed["server"][metric]) if fed else "",
                    f"{fed['server']['loss']:.4f}" if fed else "",
                    f"{train['train-loss']:.4f}" if "train-loss" in train else "",
                    f"{fed['wall-time-s']:.1f}" if fed and i > 0 else "",
                    fmt(cen[metric]) if cen else "",
                    f"{cen['loss']:.4f}" if cen else "",
                    f"{cen['wall-time-s']:.1f}" if cen and i > 0 else "",
                ]
            )
            + " |"
        )
    lines += ["", *extra]
    lines += [
        "## Local against merged",
        "",
        f"For {len(local.rows)} sampled nodes: a model trained only on the node's own training shard "
        f"(from the same initial weights, with the run's optimizer, for {local.epochs} epoch(s)"
        + (" = local-epochs, as the tutorial did; `python -m report --local-epochs N` gives it more"
           if local.epochs == settings.local_epochs else "")
        + ") against the merged global model, both tested on the node's held-out local test images (its share of "
        "the 10,000 test images, never used for training).",
        "",
        f"| node | train images | test images | local {column} | merged {column} |",
        "|---|---|---|---|---|",
    ]
    for row in local.rows:
        lines.append(
            f"| {row.node} | {row.train_images} | {row.test_images} | {fmt(row.local[metric])} "
            f"| {fmt(row.merged[metric])} |"
        )
    wins = sum(objective.better(r.merged[metric], r.local[metric]) for r in local.rows)
    lines += [
        f"| **mean** | | | **{fmt(local.mean('local'))}** | **{fmt(local.mean('merged'))}** |",
        "",
        f"The merged model is better on {wins} of {len(local.rows)} nodes' own test images.",
        "",
        f"![local vs merged]({rf.REPORT_LOCAL_VS_MERGED})",
        "",
        "## Configuration",
        "",
        "| key | value |",
        "|---|---|",
        # the run's config.json, with the central epochs this report actually trained
        *[f"| {k} | {_show(v)} |" for k, v in {**run.config, "central-epochs": settings.central_epochs}.items()],
        "",
        "## Where the numbers come from",
        "",
        f"- Federated: `{run.folder.file(rf.HISTORY)}` (server-side evaluation of the global model after "
        f"every round) and `{rf.MODEL}` (the final global weights, used for the local-vs-merged and "
        "reconstruction figures).",
        f"- Central: trained by this report with the run's model, seed, optimizer ({settings.optimizer}, "
        f"learning rate {settings.learning_rate:g}"
        + (f", momentum {settings.momentum:g}" if settings.optimizer == "sgd" else "")
        + f"), batch size {settings.batch_size} on {central.device}; cached in `{central.folder}` "
        f"({'reused from ' + central.created if central.cached else 'trained ' + central.created}).",
        *(
            [
                f"- The federated run pretrained its autoencoder layer by layer ({settings.ae_pretrain_rounds} "
                f"rounds per encoder/decoder pair, rounds 1-{settings.ae_pretraining_rounds}); "
                "the central model trains the whole stack from the first epoch."
            ]
            if settings.ae_pretrain_rounds
            else []
        ),
        f"- Local models: trained by this report on {local.seconds:.0f} s of {central.device}; node "
        f"sample drawn with seed {settings.seed}.",
        f"- Report written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
    ]
    return "\n".join(lines)


def _model_name(settings) -> str:
    if settings.model == "mlp":
        return "MLP (784-200-200-10)"
    widths = "-".join(str(w) for w in (784, *settings.ae_hidden_sizes, settings.ae_code_size))
    return f"stacked autoencoder ({widths}, mirrored decoder)"


def _first_hit(objective, steps: list[dict[str, Any]], key: str) -> str:
    """The first round/epoch whose metric meets the objective's target."""
    for i, step in enumerate(steps):
        if objective.reached(step[objective.key]):
            return f"{key} {i}"
    return "not reached"


def _show(value: Any) -> str:
    return f"`{value}`" if value != "" else '`""`'
