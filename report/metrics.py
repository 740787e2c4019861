"""Which number a report leads with, and how it is written."""

from __future__ import annotations


def metric_label(metric: str) -> str:
    return "test accuracy" if metric == "accuracy" else "test MSE per pixel"


def format_metric(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.5f}"


def format_gap(metric: str, federated: float, central: float) -> str:
    """Central minus federated, in the unit people compare in (points for accuracy)."""
    diff = central - federated
    if metric == "accuracy":
        return f"{100 * diff:+.2f} points"
    return f"{diff:+.5f}"


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is a better score than ``b``."""
    return a > b if metric == "accuracy" else a < b
