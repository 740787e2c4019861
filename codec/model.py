"""A run's trained autoencoder, loaded from its folder and checked."""

from __future__ import annotations

import json
from pathlib import Path

from server_app.outputs import CONFIG_FILE, ModelFileError, load_model
from task.config import ConfigError, Settings
from task.models import Autoencoder


class CodecError(RuntimeError):
    """Bad input for the encode/decode/anomaly commands; the message says what to do."""


def load_autoencoder(run_dir: str | Path) -> tuple[Autoencoder, Settings]:
    """The final global autoencoder of a completed run, on the CPU, in eval mode."""
    run_dir = Path(run_dir).expanduser()
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CodecError(f"{run_dir} is not a run folder (no config.json): pass the folder a run printed at its end.")
    try:
        settings = Settings.from_run_config(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError) as exc:
        raise CodecError(f"{config_path} is not a valid run config ({exc}).") from None
    if settings.model != "autoencoder":
        raise CodecError(
            f"{run_dir} trained the {settings.model!r} model, not the autoencoder: these commands need a run "
            "with model='autoencoder' (e.g. --run-config presets/autoencoder.toml)."
        )
    try:
        model = load_model(run_dir, settings)
    except ModelFileError as exc:
        raise CodecError(
            f"{exc}; config.json describes the autoencoder 784-{settings.ae_hidden}-{settings.ae_code_size}: "
            "use the model.pt this run wrote, or run the simulation again."
        ) from None
    return model.eval(), settings
