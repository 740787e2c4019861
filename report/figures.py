"""The report's plots, rendered to PNG bytes (written together with report.md)."""

from __future__ import annotations

import io
from typing import Any

from report.metrics import metric_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def curves_png(rounds: list[dict[str, Any]], epochs: list[dict[str, Any]], metric: str, title: str) -> bytes:
    """Federated (per round) and central (per epoch) test curves, by step and by wall time."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    scale = 100.0 if metric == "accuracy" else 1.0
    fed_x = [r["round"] for r in rounds]
    fed_y = [scale * r["server"][metric] for r in rounds]
    cen_x = [e["epoch"] for e in epochs]
    cen_y = [scale * e[metric] for e in epochs]
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_step.plot(fed_x, fed_y, "o-", ms=3, label="federated (FedAvg), per round")
    by_step.plot(cen_x, cen_y, "s--", ms=3, label="central, per epoch")
    by_step.set_xlabel("round (federated) / epoch (central)")
    by_step.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.plot([r["elapsed-s"] for r in rounds], fed_y, "o-", ms=3, label="federated")
    by_time.plot([e["elapsed-s"] for e in epochs], cen_y, "s--", ms=3, label="central")
    by_time.set_xlabel("wall time (s)")
    ylabel = metric_label(metric) + (" (%)" if metric == "accuracy" else "")
    for ax in (by_step, by_time):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        if metric == "accuracy":
            # the first evaluation (untrained, ~10%) would flatten everything else
            tail = [y for y in fed_y[1:] + cen_y[1:]] or fed_y
            ax.set_ylim(max(0.0, min(tail) - 2), 100)
        else:
            ax.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def local_vs_merged_png(nodes: list[int], local: list[float], merged: list[float], metric: str, title: str) -> bytes:
    """One pair of bars per sampled node: its own model against the merged one, on its test images."""
    plt = _pyplot()
    scale = 100.0 if metric == "accuracy" else 1.0
    xs = range(len(nodes))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(nodes) + 2), 4.2))
    ax.bar([x - 0.2 for x in xs], [scale * v for v in local], width=0.4, label="local (own shard only)")
    ax.bar([x + 0.2 for x in xs], [scale * v for v in merged], width=0.4, label="merged (global FedAvg model)")
    ax.set_xticks(list(xs), [str(n) for n in nodes])
    ax.set_xlabel("node (partition id)")
    ax.set_ylabel(metric_label(metric) + (" (%)" if metric == "accuracy" else ""))
    if metric == "accuracy":
        ax.set_ylim(max(0.0, scale * min(local + merged) - 5), 100)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
