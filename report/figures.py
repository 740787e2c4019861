"""Pictures, rendered to PNG bytes: the report's curves and bars, and grids of digits."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from task.objective import Objective


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _pyplot().close(fig)
    return buf.getvalue()


def curves_png(
    rounds: list[dict[str, Any]],
    epochs: list[dict[str, Any]],
    objective: Objective,
    title: str,
    converged: list[dict[str, Any]] | None = None,
) -> bytes:
    """Federated (per round) and central (per epoch) test curves, by step and by wall time; with
    ``converged``, also the central model trained until it stopped learning."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    key = objective.key
    fed_x = [r["round"] for r in rounds]
    fed_y = [objective.scale(r["server"][key]) for r in rounds]
    cen_x = [e["epoch"] for e in epochs]
    cen_y = [objective.scale(e[key]) for e in epochs]
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_step.plot(fed_x, fed_y, "o-", ms=3, label="federated (FedAvg), per round")
    by_step.plot(cen_x, cen_y, "s--", ms=3, label="central, per epoch")
    by_step.set_xlabel("round (federated) / epoch (central)")
    by_step.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.plot([r["elapsed-s"] for r in rounds], fed_y, "o-", ms=3, label="federated")
    by_time.plot([e["elapsed-s"] for e in epochs], cen_y, "s--", ms=3, label="central")
    if converged:
        conv_y = [objective.scale(e[key]) for e in converged]
        by_step.plot([e["epoch"] for e in converged], conv_y, ":", label="central until converged, per epoch")
        by_time.plot([e["elapsed-s"] for e in converged], conv_y, ":", label="central until converged")
    by_time.set_xlabel("wall time (s)")
    for ax in (by_step, by_time):
        ax.set_ylabel(objective.axis_label)
        ax.grid(alpha=0.3)
        ax.legend()
        if objective.percent:
            # the first evaluation (untrained, ~10%) would flatten everything else
            tail = [y for y in fed_y[1:] + cen_y[1:]] or fed_y
            ax.set_ylim(max(0.0, min(tail) - 2), 100)
        else:
            ax.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def local_vs_merged_png(
    nodes: list[int], local: list[float], merged: list[float], objective: Objective, title: str
) -> bytes:
    """One pair of bars per sampled node: its own model against the merged one, on its test images."""
    plt = _pyplot()
    xs = range(len(nodes))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(nodes) + 2), 4.2))
    ax.bar([x - 0.2 for x in xs], [objective.scale(v) for v in local], width=0.4, label="local (own shard only)")
    ax.bar([x + 0.2 for x in xs], [objective.scale(v) for v in merged], width=0.4, label="merged (global FedAvg model)")
    ax.set_xticks(list(xs), [str(n) for n in nodes])
    ax.set_xlabel("node (partition id)")
    ax.set_ylabel(objective.axis_label)
    if objective.percent:
        ax.set_ylim(max(0.0, objective.scale(min(local + merged)) - 5), 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def grid_png(rows: Sequence[np.ndarray], labels: Sequence[str], title: str = "") -> bytes:
    """One row per array (``[n, 784]`` or ``[n, 28, 28]``, pixels in [0, 1]), labelled on the left."""
    plt = _pyplot()
    rows = [np.asarray(r, dtype=np.float32).reshape(len(r), 28, 28) for r in rows]
    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(0.9 * cols + 1.2, 0.95 * len(rows) + 0.4), squeeze=False)
    for i, (row, label) in enumerate(zip(rows, labels)):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(np.clip(row[j], 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig, dpi=100)


def comparison_png(runs: Sequence[tuple[str, list[dict[str, Any]]]], objective: Objective, title: str) -> bytes:
    """Several runs' server test curves overlaid, by round and by wall time; one colour per run
    in both panels, and the objective's target as a dotted line where it has one."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    key = objective.key
    fig, (by_round, by_time) = plt.subplots(1, 2, figsize=(11, 4.4))
    tails: list[float] = []
    for i, (label, rounds) in enumerate(runs):
        ys = [objective.scale(r["server"][key]) for r in rounds]
        tails += ys[1:] or ys
        style = dict(color=f"C{i % 10}", marker="o" if len(rounds) <= 50 else None, ms=3, label=label)
        by_round.plot([r["round"] for r in rounds], ys, **style)
        by_time.plot([r["elapsed-s"] for r in rounds], ys, **style)
    by_round.set_xlabel("round")
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set_xlabel("wall time from the first evaluation, round 0 (s)")
    for ax in (by_round, by_time):
        if objective.target is not None:
            ax.axhline(
                objective.scale(objective.target),
                color="grey",
                ls=":",
                lw=1,
                label=f"target {objective.format(objective.target)}",
            )
        ax.set_ylabel(objective.axis_label)
        ax.grid(alpha=0.3)
        if objective.percent:
            # the untrained round 0 (~10%) would flatten everything else
            floor = min(tails + ([objective.scale(objective.target)] if objective.target is not None else []))
            ax.set_ylim(max(0.0, floor - 2), 100)
        else:
            ax.set_yscale("log")
    handles, labels = by_round.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.045 * ((len(labels) - 1) // 4), 1, 1))
    return _png(fig)


def label_heatmap_png(counts: np.ndarray, title: str, marked: Sequence[int] = ()) -> bytes:
    """Nodes by digits: one column per node, one row per digit, colour = how many of the
    node's training images show that digit. Every node is drawn (100 columns stay readable);
    with 20 nodes or fewer each cell also carries its count. ``marked`` node ids (the
    report's local-vs-merged sample) get a tick mark under their column."""
    plt = _pyplot()
    counts = np.asarray(counts)
    nodes, digits = counts.shape
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.12 * nodes + 2.5)), 3.9))
    image = ax.imshow(counts.T, aspect="auto", cmap="viridis", interpolation="nearest", origin="lower")
    ax.set_yticks(range(digits), [str(d) for d in range(digits)])
    ax.set_ylabel("digit")
    step = 1 if nodes <= 20 else 5 if nodes <= 50 else 10
    ax.set_xticks(range(0, nodes, step), [str(n) for n in range(0, nodes, step)])
    ax.set_xlabel("node (partition id)")
    if nodes <= 20:
        top = counts.max() or 1
        for n in range(nodes):
            for d in range(digits):
                ax.text(
                    n,
                    d,
                    str(counts[n, d]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if counts[n, d] > 0.6 * top else "white",
                )
    for n in marked:
        ax.plot(n, -0.5, marker="^", color="red", ms=5, clip_on=False)
    fig.colorbar(image, ax=ax, label="training images", pad=0.01)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
