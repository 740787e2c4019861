"""A run's trained autoencoder, loaded from its folder and checked."""

from __future__ import annotations

from pathlib import Path

from run_folder import RunFolder
from task.config import Settings
from task.errors import UserError
from task.models import Autoencoder


class InputError(UserError):
    """Bad input for the encode/decode/grid/anomaly commands; the message says what to do."""


def load_autoencoder(run_dir: str | Path) -> tuple[Autoencoder, Settings, RunFolder]:
    """The final global autoencoder of a completed run, on the CPU, in eval mode."""
    folder = RunFolder.open(run_dir)
    settings = folder.settings()
    if settings.objective.classifier:
        raise InputError(
            f"{folder.path} trained the {settings.model!r} model, not the autoencoder: these commands need a run "
            "with model='autoencoder' (e.g. --run-config presets/autoencoder.toml)."
        )
    folder.completed_history()
    return folder.load_model(settings).eval(), settings, folder
