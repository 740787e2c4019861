"""A finished run folder, read and checked before any report work starts.

Every problem becomes a :class:`ReportError` whose message names the folder,
what is wrong and what to do, so the CLI can print one line instead of a
traceback and leave the folder as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from server_app.outputs import CONFIG_FILE, HISTORY_FILE, ModelFileError, load_model
from task.config import ConfigError, Settings
from task.training import metric_key


class ReportError(RuntimeError):
    """The run folder cannot be reported on (or a report option is invalid)."""


@dataclass
class Run:
    """What a completed run left behind, already checked against each other."""

    path: Path
    config: dict[str, Any]
    settings: Settings
    history: dict[str, Any]
    num_nodes: int
    state_dict: dict[str, torch.Tensor]

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.history["rounds"]

    @property
    def metric(self) -> str:
        return metric_key(self.settings.model)


def load_run(run_dir: Path) -> Run:
    """Read config.json, history.json and model.pt; raise :class:`ReportError` on any problem."""
    run_dir = Path(run_dir).expanduser()
    fix_path = "pass the run folder printed at the end of a run (the one holding config.json, history.json and model.pt)"
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a folder: {fix_path}.")
    for name in (CONFIG_FILE, HISTORY_FILE):
        if not (run_dir / name).is_file():
            raise ReportError(f"{run_dir} is not a run folder (no {name}): {fix_path}.")
    config = _read_json(run_dir / CONFIG_FILE)
    history = _read_json(run_dir / HISTORY_FILE)
    _check_history(run_dir, history)
    try:
        settings = Settings.from_run_config(config)
    except ConfigError as exc:
        raise ReportError(f"{run_dir / CONFIG_FILE} is not a valid run config ({exc}); run the simulation again.") from None
    num_nodes = _num_nodes(run_dir, config, history)
    state_dict = _load_model(run_dir, settings)
    return Run(run_dir, config, settings, history, num_nodes, state_dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is unreadable ({exc}): the run folder is damaged; run the simulation again.") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} does not hold a JSON object: the run folder is damaged; run the simulation again.")
    return data


def _check_history(run_dir: Path, history: dict[str, Any]) -> None:
    status = history.get("status")
    rounds = history.get("rounds")
    if status == "running":
        done = len(rounds) - 1 if isinstance(rounds, list) else 0
        raise ReportError(
            f"run {run_dir} is still in progress (history.json says 'running', {max(done, 0)} round(s) so far): "
            "wait until it completes and run the report again (if it was stopped, run the simulation again)."
        )
    if status == "failed":
        raise ReportError(
            f"run {run_dir} failed ({history.get('error', 'no error recorded')}): fix the cause and run the "
            "simulation again; a report needs a completed run."
        )
    if status != "completed":
        raise ReportError(
            f"run {run_dir} has status {status!r} in history.json, not 'completed': run the simulation again."
        )
    if not isinstance(rounds, list) or not rounds or not all(isinstance(r, dict) and "server" in r for r in rounds):
        raise ReportError(f"{run_dir / HISTORY_FILE} lists no evaluated rounds: run the simulation again.")


def _num_nodes(run_dir: Path, config: dict[str, Any], history: dict[str, Any]) -> int:
    """How many shards the training set was split into: the nodes' ``num-partitions``
    (a deployment may run fewer nodes than partitions), else the number of nodes."""
    value = config.get("num-partitions")
    if isinstance(value, list):
        raise ReportError(
            f"the nodes of {run_dir} split MNIST into different numbers of shards (num-partitions {value}), "
            "so their shards overlap and no baseline matches them: give every SuperNode the same num-partitions."
        )
    value = value or config.get("num-nodes") or history.get("num-nodes")
    if not isinstance(value, int) or value < 1:
        raise ReportError(
            f"{run_dir} does not record how many nodes took part ('num-nodes' in config.json): "
            "run the simulation again with this version of the app."
        )
    return value


def _load_model(run_dir: Path, settings: Settings) -> dict[str, torch.Tensor]:
    try:
        return load_model(run_dir, settings).state_dict()
    except ModelFileError as exc:
        raise ReportError(f"{exc}: put back the model.pt this run wrote, or run the simulation again.") from None
