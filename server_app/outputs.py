"""The run folder: where a run's results live, and how they are written.

Layout of ``<output-dir>/<run-name>/``:

- ``config.json``: the resolved run config, plus the Flower run id and the
  number of nodes that took part.
- ``history.json``: ``{"status": "running" | "completed", "rounds": [...]}``,
  rewritten after every round, so a stopped run keeps what it had.
- ``model.pt``: the final global ``state_dict``, written when the run completes.

Every file is written to a temporary name first and then renamed, so a reader
never sees half a file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from task.files import atomic_write

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
    atomic_write(path, lambda fh: torch.save(state_dict, fh))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
