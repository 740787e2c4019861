"""A run's trained autoencoder, loaded from its folder and checked."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from task.config import ConfigError, Settings
from task.models import Autoencoder, build_model


class CodecError(RuntimeError):
    """Bad input for the encode/decode/anomaly commands; the message says what to do."""


def load_autoencoder(run_dir: str | Path) -> tuple[Autoencoder, Settings]:
    """The final global autoencoder of a completed run, on the CPU, in eval mode."""
    run_dir = Path(run_dir).expanduser()
    config_path, model_path = run_dir / "config.json", run_dir / "model.pt"
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
    if not model_path.is_file():
        raise CodecError(f"{model_path} is missing: the run has not completed (or the file was removed); run it again.")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CodecError(f"{model_path} cannot be loaded ({type(exc).__name__}): run the simulation again.") from None
    model = build_model(settings)
    try:
        model.load_state_dict(state, strict=True)
    except Exception:
        raise CodecError(
            f"{model_path} does not hold the autoencoder that config.json describes "
            f"(784-{settings.ae_hidden}-{settings.ae_code_size}): it is from another run or model; run it again."
        ) from None
    return model.eval(), settings
