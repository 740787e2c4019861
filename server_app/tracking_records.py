"""What a run's records become in MLflow: the tracking URI, parameters and per-round metrics.

Pure functions of the run folder's values, kept apart from :mod:`server_app.tracking`, which
talks to MLflow.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

import run_folder as rf
from task.config import Settings


def tracking_uri(settings: Settings) -> str:
    """The knob, else ``MLFLOW_TRACKING_URI``, else the local store in output-dir."""
    if settings.tracking_uri:
        return settings.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str(rf.resolve_output_dir(settings.output_dir) / rf.TRACKING_STORE)


def param_value(value: Any) -> str:
    """A config.json value as an MLflow parameter: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def round_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """One history round as metric names and values: ``server/…``, ``clients-train/…``,
    ``clients-evaluate/…``, ``privacy/…`` (the privacy spent) and ``round/…``."""
    metrics: dict[str, float] = {}
    for group in ("server", "clients-train", "clients-evaluate"):
        for key, value in (entry.get(group) or {}).items():
            if isinstance(value, dict):  # the privacy spent: its own group
                metrics.update({f"{key}/{k}": v for k, v in value.items() if _number(v)})
            elif _number(value):
                metrics[f"{group}/{key}"] = value
    metrics["round/dropped-replies"] = len(entry.get("failures") or [])
    metrics["round/wall-time-s"] = entry["wall-time-s"]
    metrics["round/elapsed-s"] = entry["elapsed-s"]
    return {k: float(v) for k, v in metrics.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def shown_uri(uri: str) -> str:
    """The URI without a password that MLFLOW_TRACKING_URI may carry."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        return uri
    return uri.replace(password, "***") if password else uri
