"""The run folder: where a run's results live, and how they are written.

Layout of ``<output-dir>/<run-name>/``:

- ``config.json``: the resolved run config, plus the Flower run id, the
  number of nodes that took part and the ``num-partitions`` their shards came
  from.
- ``history.json``: ``{"status", "num-nodes", "rounds": [...]}`` (and
  ``"error"`` when the run failed), rewritten after every round, so a stopped
  run keeps what it had; ``status`` is ``running``, ``completed`` or ``failed``.
- ``model.pt``: the final global ``state_dict`` (CPU tensors), written when the
  run completes.

Every file is written to a temporary name first and then renamed, so a reader
never sees half a file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from task.config import Settings
from task.files import atomic_write
from task.models import build_model

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
MODEL_FILE = "model.pt"


def resolve_output_dir(output_dir: str) -> Path:
    """An absolute path is used as given; a relative one is taken from the home
    folder, because the ServerApp runs in a Flower-managed working directory
    that the user never sees."""
    path = Path(output_dir).expanduser()
    return path if path.is_absolute() else Path.home() / path


def new_run_dir(output_dir: str, run_name: str, model: str, run_id: int) -> Path:
    """Create a fresh run folder; never reuse one that already holds results."""
    root = resolve_output_dir(output_dir)
    name = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{run_id}"
    run_dir = root / name
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise FileExistsError(
            f"Run folder {run_dir} already exists: choose another run-name, or leave it empty "
            "for a time-stamped one. Existing results are never overwritten."
        ) from None
    return run_dir


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(data, indent=2).encode()))


def write_model(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Saved as CPU tensors, so that a model trained on a GPU loads anywhere."""
    cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda fh: torch.save(cpu, fh))


class ModelFileError(ValueError):
    """``model.pt`` is missing, unreadable, or not the model ``config.json`` describes."""


def load_model(run_dir: Path, settings: Settings) -> nn.Module:
    """The run's final global model, on the CPU, checked against its run config."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} is missing: the run did not complete, or the file was removed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file at all
        raise ModelFileError(f"{path} cannot be loaded ({type(exc).__name__})") from None
    model = build_model(settings)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if found != expected:
        first = next((k for k in expected if expected[k] != found.get(k)), None)
        detail = f"{first}: expected {expected[first]}, found {found.get(first, 'nothing')}" if first else "different keys"
        raise ModelFileError(f"{path} does not match config.json (model='{settings.model}', {detail})")
    model.load_state_dict(state, strict=True)
    return model
