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
from run_folder import CompletedRun, read_completed_run
from task.data import load_mnist
from task.errors import UserError
from task.models import build_model
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
    objective = settings.objective
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

    files: dict[str, bytes] = {
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
            [r.node for r in local.rows],
        ),
        rf.REPORT_LOCAL_VS_MERGED: local_vs_merged_png(
            [r.node for r in local.rows],
            [r.local[objective.key] for r in local.rows],
            [r.merged[objective.key] for r in local.rows],
            objective,
            f"Each node's {local.test_set}: its own model vs the merged model",
        ),
    }
    extra: list[str] = []
    if not objective.classifier:
        files[rf.REPORT_RECONSTRUCTIONS], extra = reconstructions(run, central, settings)
    files[rf.REPORT] = render(run, settings, central, local, extra, counts, converged).encode()
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


def render(
    run: CompletedRun,
    settings,
    central: CentralResult,
    local: LocalVsMerged,
    extra: list[str],
    counts: np.ndarray | None = None,
    converged: CentralResult | None = None,
) -> str:
    objective = settings.objective
    metric, fmt, column = objective.key, objective.format, objective.column
    fed_final = run.rounds[-1]["server"][metric]
    cen_final = central.epochs[-1][metric]
    rounds = run.rounds[-1]["round"]
    fed_seconds = run.rounds[-1]["elapsed-s"]
    winner = "federated" if objective.better(fed_final, cen_final) else "central"
    unit = objective.label + ("" if objective.higher_is_better else " (lower is better)")

    strategy = STRATEGIES[settings.strategy].label
    private = " with differential privacy" if settings.differential_privacy else ""
    lines = [
        f"# Federated vs central: {run.path.name}",
        "",
        f"The {_model_name(settings)} trained with {strategy}{private} over {run.num_partitions} nodes "
        f"({_partitioning(settings)}), against the same model trained centrally on the union "
        f"of those shards. Both are tested on the 10,000 MNIST test images; the headline number is {unit}.",
        "",
        *strategy_lines(run, settings),
        "## Headline",
        "",
        f"| | federated ({strategy}{', DP' if private else ''}) | central |",
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
        *converged_lines(objective, fed_final, converged),
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
    if counts is not None:
        lines += label_lines(settings, counts, [r.node for r in local.rows])
    lines += local_lines(settings, local)
    lines += [
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
                f"- The federated run pretrained its autoencoder layer by layer ({settings.ae_rounds_per_stage} "
                f"rounds per encoder/decoder pair, rounds 1-{settings.ae_pretraining_rounds_total}); "
                "the central model trains the whole stack from the first epoch."
            ]
            if settings.ae_rounds_per_stage
            else []
        ),
        f"- Local models: trained by this report on {local.seconds:.0f} s of {central.device}; node "
        f"sample drawn with seed {settings.seed}.",
        f"- Report written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
    ]
    return "\n".join(lines)


def converged_lines(objective, fed_final: float, converged: CentralResult | None) -> list[str]:
    """The central model trained until it stopped learning (``central-converged``): how far the
    federated model is from what this model can do with all the data in one place."""
    if converged is None:
        return []
    final = converged.epochs[-1][objective.key]
    return [
        f"Central, trained until it stopped learning (its training loss improved by less than "
        f"{100 * CONVERGED_GAIN:g}% over {CONVERGED_PATIENCE} epochs; at most {CONVERGED_MAX_EPOCHS}): "
        f"**{objective.format(final)}** after {len(converged.epochs) - 1} epochs "
        f"({converged.train_seconds:.0f} s on {converged.device}, cached in `{converged.folder}`). "
        f"Gap to it (converged central minus federated): **{objective.format_gap(fed_final, final)}**.",
        "",
    ]


def strategy_lines(run: CompletedRun, settings) -> list[str]:
    """The server-side strategy and the DP setting, when they are not the defaults."""
    if settings.strategy == "fedavg" and not settings.differential_privacy:
        return []
    lines = ["## Strategy and privacy", ""]
    spec = STRATEGIES[settings.strategy]
    name, what = spec.label, f"{spec.label} (Flower's `{spec.flower_class}`)"
    lr = settings.server_learning_rate or spec.default_server_lr
    lr_text = (
        f"server learning rate {lr:g}" + (" (Flower's default)" if not settings.server_learning_rate else "")
        if lr is not None
        else ""
    )
    if settings.strategy == "fedavg":
        lines.append(f"- Strategy: {what}, the default.")
    elif settings.strategy == "fedavgm":
        lines.append(f"- Strategy: {what}: {lr_text}, server momentum {settings.server_momentum:g}.")
    elif settings.strategy == "fedprox":
        lines.append(
            f"- Strategy: {what}: proximal term mu = {settings.proximal_mu:g} "
            "in every node's local loss, FedAvg's averaging on the server."
        )
    else:
        lines.append(
            f"- Strategy: {what}: {lr_text}; the server treats the averaged update "
            "as a gradient and steps with its own adaptive optimizer."
        )
    if settings.differential_privacy:
        wrapper, where = (
            (
                "DifferentialPrivacyClientSideFixedClipping",
                "by the node itself before sending it (Flower's `fixedclipping_mod`)",
            )
            if settings.clips_on_nodes
            else ("DifferentialPrivacyServerSideFixedClipping", "on the server")
        )
        lines.append(
            f"- Differential privacy: Flower's `{wrapper}` around {name}: each "
            f"node's update (its weights minus the global weights) clipped to L2 norm {settings.dp_clipping_norm:g} "
            f"{where}, then Gaussian noise of standard deviation {settings.dp_noise_multiplier:g} x "
            f"{settings.dp_clipping_norm:g} / (nodes sampled) added to the average (noise multiplier "
            f"{settings.dp_noise_multiplier:g})."
        )
        lines.append(f"- Privacy spent: {privacy_text(run)}")
    return lines + [""]


def privacy_text(run: CompletedRun) -> str:
    """Epsilon after the last round, and what it means, from the history's per-round privacy record."""
    last = None
    for r in run.rounds:
        privacy = (r.get("clients-train") or {}).get("privacy")
        if privacy is not None:
            last = (r["round"], privacy)
    if last is None:
        return "not recorded in history.json."
    rnd, privacy = last
    delta = privacy.get("delta", 1e-5)
    if privacy.get("epsilon") is None:
        return (
            f"not computed ({privacy.get('why-not', 'no reason recorded')}), so no (epsilon, delta) "
            "guarantee is claimed."
        )
    return (
        f"epsilon = {_epsilon(privacy['epsilon'])} at delta = {delta:g} after {rnd} rounds (Flower's RDP accountant). "
        "Client-level: it bounds what the released models reveal about whether any one node took part, "
        "whatever its data. No credit is taken for sampling only some nodes per round (amplification), so it "
        "is an upper bound on the loss of privacy under this accounting. It assumes the server is trusted "
        "(the server sees each node's update before clipping and noising) and says nothing about "
        "individual images within a node beyond what follows from the node-level bound."
    )


def _epsilon(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def label_lines(settings, counts: np.ndarray, marked: list[int]) -> list[str]:
    """The nodes-by-digits picture and a one-line summary of the skew."""
    sizes = counts.sum(axis=1)
    shares = counts / np.maximum(sizes[:, None], 1)
    digits = (counts > 0).sum(axis=1)
    major = (shares >= 0.1).sum(axis=1)
    return [
        "## Label distribution",
        "",
        f"Training images of each digit on each node ({_partitioning(settings)}); the red marks are the "
        f"{len(marked)} nodes of the local-vs-merged comparison below.",
        "",
        f"![label distribution per node]({rf.REPORT_LABELS})",
        "",
        f"Images per node: {sizes.min():,} to {sizes.max():,} (mean {sizes.mean():,.0f}). Digits per node: "
        f"{digits.min()} to {digits.max()} present (mean {digits.mean():.1f}), {major.min()} to {major.max()} "
        f"making up at least 10% of the node's images (mean {major.mean():.1f}). "
        f"The largest single digit holds {100 * shares.max(axis=1).mean():.0f}% of a node's images on average "
        "(10% for a perfectly IID split).",
        "",
    ]


def local_lines(settings, local: LocalVsMerged) -> list[str]:
    objective = settings.objective
    metric, fmt, column = objective.key, objective.format, objective.column
    own = local.test_set
    if own == OWN_SHARD:
        where = (
            "both tested on the node's held-out local test images (its share of the 10,000 test images, "
            "never used for training, spread over the digits like its training images)"
        )
    else:
        where = (
            "both tested on the node's own distribution: the 10,000 test images of the digits the node trains on, "
            "each digit weighted by its share of the node's training images (what the node's own users would "
            "send it). The node's local test shard is not used here: for a non-IID partitioning it is cut from the "
            "test images with another seed and holds other digits than the node's training shard"
        )
    lines = [
        "## Local against merged",
        "",
        f"For {len(local.rows)} sampled nodes: a model trained only on the node's own training shard "
        f"(from the same initial weights, with the run's optimizer, for {local.epochs} epoch(s)"
        + (
            " = local-epochs, as the tutorial did; `python -m report --local-epochs N` gives it more"
            if local.epochs == settings.local_epochs
            else ""
        )
        + f") against the merged global model, {where}. Both are also tested on all 10,000 test images.",
        "",
        f"| node | digits in training (images) | train images | test images | local {column}, {own} "
        f"| merged {column}, {own} | local {column}, all 10,000 | merged {column}, all 10,000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    merged_all = local.merged_all.get(metric)
    for row in local.rows:
        digits = ", ".join(f"{d} ({n})" for d, n in enumerate(row.digits) if n) if row.digits else ""
        lines.append(
            f"| {row.node} | {digits} | {row.train_images} | {row.test_images} | {fmt(row.local[metric])} "
            f"| {fmt(row.merged[metric])} | {fmt(row.local_all[metric]) if row.local_all else ''} "
            f"| {fmt(merged_all) if merged_all is not None else ''} |"
        )
    wins = sum(objective.better(r.merged[metric], r.local[metric]) for r in local.rows)
    local_all = [r.local_all[metric] for r in local.rows if r.local_all]
    mean_local_all = fmt(float(np.mean(local_all))) if local_all else ""
    lines += [
        f"| **mean** | | | | **{fmt(local.mean('local'))}** | **{fmt(local.mean('merged'))}** "
        f"| **{mean_local_all}** | **{fmt(merged_all) if merged_all is not None else ''}** |",
        "",
        f"The merged model is better on {wins} of {len(local.rows)} nodes' {own}.",
        "",
    ]
    if own == OWN_SHARD:
        lines.append(
            "What the gap means: on IID data a node's test images look like everyone's, so the gap is what "
            "the node gains from the others' data (more images of the same kind)."
        )
    else:
        lines.append(
            "What the gap means: on non-IID data a node's own model only has to tell apart the few digits it "
            "sees, so on its own distribution it can match or beat the merged model (a gap in the local model's "
            "favour is the price of one model for all nodes); on all 10,000 test images it fails on every digit "
            "it never saw, which the merged model recognises. A node joins the federation for that last column: "
            "to be right on inputs unlike its own data."
        )
    lines += ["", f"![local vs merged]({rf.REPORT_LOCAL_VS_MERGED})", ""]
    return lines


def _partitioning(settings) -> str:
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
