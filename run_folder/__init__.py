"""The run folder: every file a run leaves behind, written and read only here.

Layout of ``<output-dir>/<run-name>/``:

- ``config.json``: written once, when the run starts: every knob as resolved,
  the Flower run id and version, ``num-partitions`` (how many shards the nodes
  split MNIST into, learnt from the nodes before round 1) and, for a resumed
  run, ``resumed-from`` (the folder it continued).
- ``history.json``: ``{"status", "num-nodes", "rounds": [...]}`` (and
  ``"error"`` when the run failed), rewritten after every round; ``status`` is
  ``running``, ``completed``, ``failed`` or ``interrupted``. Round 0 is the
  initial model; each round lists the replies that were dropped (``failures``).
- ``checkpoint.pt``: after every round, everything needed to continue the run
  (global weights, round, history, the strategy's state) as tensors and plain
  values, which cannot run code when read (see :mod:`run_folder.checkpoint`);
  ``resume-from`` reads it.
- ``model.pt``: the final global ``state_dict`` (CPU tensors), written when the
  run completes.
- ``manifest.json``: what it takes to rerun the run: versions, Python, machine,
  seeds, a hash of every node's shard, and (when a launcher started it) the
  exact command and the project's git commit.
- ``server.log``: the ServerApp's own log of the run (Flower's records included).
- ``flower.log``: everything Flower and Ray printed while the launcher ran it.
- ``tensorboard/``: per-round metrics as TensorBoard event files, when asked for.
- ``mlflow-run.json``: with ``tracking = "mlflow"``, the MLflow run this folder is
  logged to (its id and tracking URI), which a resumed run continues.
- What later tools add: the report (``report.md`` and its figures) and the
  autoencoder's outputs (codes, pictures, anomaly scores).

Every file is written to a temporary name, flushed and renamed, so a reader
never sees half a file; files that belong together are renamed together.
Nothing outside this module names a file of the run folder.

Beside the run folders, ``output-dir`` holds the local MLflow store that runs with
``tracking = "mlflow"`` and no tracking URI share: ``mlflow.db`` and ``mlartifacts/``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from run_folder.checkpoint import Checkpoint, load_checkpoint, read_torch_file, save_checkpoint
from run_folder.errors import REDO, RunFolderError
from task.config import Settings
from task.errors import ConfigError
from task.files import atomic_write, write_files

if TYPE_CHECKING:  # torch is imported where it is used: the launcher reads history.json without it
    import torch
    from torch import nn

CONFIG = "config.json"
HISTORY = "history.json"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
MANIFEST = "manifest.json"
SERVER_LOG = "server.log"
FLOWER_LOG = "flower.log"
TENSORBOARD = "tensorboard"
TRACKING_RUN = "mlflow-run.json"
REPORT = "report.md"
REPORT_CURVES = "report-curves.png"
REPORT_LOCAL_VS_MERGED = "report-local-vs-merged.png"
REPORT_RECONSTRUCTIONS = "report-reconstructions.png"
REPORT_LABELS = "report-labels.png"
CODES = "codes.npy"
DECODED = "decoded.npy"
RECONSTRUCTIONS = "reconstructions.png"
ANOMALY = "anomaly.json"

# The local MLflow store in output-dir, shared by its runs (one MLflow run per run folder).
TRACKING_STORE, TRACKING_ARTIFACTS = "mlflow.db", "mlartifacts"

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


def resolve_output_dir(output_dir: str | Path) -> Path:
    """An absolute path is used as given; a relative one is taken from the home
    folder, because the ServerApp runs in a Flower-managed working directory
    that the user never sees."""
    path = Path(output_dir).expanduser()
    return path if path.is_absolute() else Path.home() / path


def default_run_name(model: str, run_id: int | None = None) -> str:
    """``<date>-<time>-<model>``, and the Flower run id when it is known."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"
    return f"{name}-{run_id}" if run_id is not None else name


def to_json(data: Any) -> bytes:
    """JSON that every reader accepts: a NaN or infinity becomes ``null``."""
    return json.dumps(_finite(data), indent=2).encode()


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


@dataclass(frozen=True)
class RunFolder:
    """One run's folder. :meth:`create` makes a new one; :meth:`open` an existing one."""

    path: Path

    @classmethod
    def create(cls, output_dir: str | Path, run_name: str, model: str, run_id: int | None = None) -> RunFolder:
        """A fresh folder; one that already exists is never reused or overwritten."""
        path = resolve_output_dir(output_dir) / (run_name or default_run_name(model, run_id))
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise RunFolderError(
                f"Run folder {path} already exists: choose another run-name, or leave it empty "
                "for a time-stamped one. Existing results are never overwritten."
            ) from None
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """An existing run folder (one holding config.json)."""
        path = Path(path).expanduser()
        hint = "pass the run folder printed at the end of a run (the one holding config.json and history.json)"
        if not path.is_dir():
            raise RunFolderError(f"{path} is not a folder: {hint}.")
        if not (path / CONFIG).is_file():
            raise RunFolderError(f"{path} is not a run folder (no {CONFIG}): {hint}.")
        return cls(path)

    @classmethod
    def of_run(cls, output_dir: str | Path, run_id: int) -> RunFolder | None:
        """The folder directly under ``output_dir`` whose config.json names Flower run ``run_id``
        (the run folder of a resumed run names the run that wrote it), or None."""
        for config in sorted(Path(output_dir).expanduser().glob(f"*/{CONFIG}")):
            try:
                data = json.loads(config.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # a damaged or unreadable folder is not the one asked for
            if isinstance(data, dict) and data.get("run-id") == run_id:
                return cls(config.parent)
        return None

    def file(self, name: str) -> Path:
        """The path of one of this module's file names inside the folder."""
        return self.path / name

    @property
    def name(self) -> str:
        return self.path.name

    # Writing, by the ServerApp and the tools that add to a finished run.

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write(self.path / CONFIG, lambda fh: fh.write(to_json(config)))

    def write_history(
        self, status: str, rounds: list[dict[str, Any]], num_nodes: int, error: str | None = None
    ) -> None:
        history: dict[str, Any] = {"status": status, "num-nodes": num_nodes, "rounds": rounds}
        if error:
            history["error"] = error
        atomic_write(self.path / HISTORY, lambda fh: fh.write(to_json(history)))

    def mark_interrupted(self, why: str) -> bool:
        """For the process that started a run whose ServerApp ended without a word (killed
        with its simulation by `flwr stop`, or lost with its SuperLink): a history still
        'running' says 'interrupted' and why; anything else is left as it is."""
        return self.mark_ended(INTERRUPTED, why)

    def mark_ended(self, status: str, why: str) -> bool:
        """A history still 'running' says ``status`` ('failed' or 'interrupted') and why, for a
        run whose ServerApp died without writing how it ended; True if it was changed. A final
        history (the ServerApp's own word) is left as it is."""
        if status not in (FAILED, INTERRUPTED):
            raise ValueError(f"a run that ended without its ServerApp is 'failed' or 'interrupted', not {status!r}")
        try:
            history = self.history()
        except RunFolderError:
            return False
        if history.get("status") != RUNNING:
            return False
        self.write_history(status, history.get("rounds", []), history.get("num-nodes", 0), why)
        return True

    def write_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Saved as CPU tensors, so that a model trained on a GPU loads anywhere."""
        import torch

        cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
        atomic_write(self.path / MODEL, lambda fh: torch.save(cpu, fh))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write(self.path / MANIFEST, lambda fh: fh.write(to_json(manifest)))

    def update_manifest(self, **entries: Any) -> None:
        """Add what only the process that started the run knows (its command, the checkout)."""
        manifest = self._read_json(MANIFEST) if (self.path / MANIFEST).is_file() else {}
        self.write_manifest({**manifest, **entries})

    def write_tracking_run(self, record: dict[str, Any]) -> None:
        atomic_write(self.path / TRACKING_RUN, lambda fh: fh.write(to_json(record)))

    def tracking_run(self) -> dict[str, Any] | None:
        """The MLflow run this folder is logged to, or None for a run that never was."""
        return self._read_json(TRACKING_RUN) if (self.path / TRACKING_RUN).is_file() else None

    def manifest(self) -> dict[str, Any]:
        if not (self.path / MANIFEST).is_file():
            raise RunFolderError(f"{self.path} has no {MANIFEST}: it was made by an older version; {REDO}.")
        return self._read_json(MANIFEST)

    def write_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Atomically: a crash at any instant leaves the last complete round's checkpoint."""
        save_checkpoint(self.path / CHECKPOINT, checkpoint)

    def read_checkpoint(self) -> Checkpoint:
        """The last checkpoint of this run, read without running anything in it."""
        return load_checkpoint(self.path / CHECKPOINT)

    def write_files(self, contents: dict[str, bytes]) -> None:
        """Several files by name, all or none (a report and its figures)."""
        write_files({self.path / name: data for name, data in contents.items()})

    def write_file(self, name: str, data: bytes, at: Path | None = None) -> Path:
        """One output file, by name, or at a path the user chose instead."""
        path = at or self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fh.write(data))
        return path

    # Reading, by the report, the autoencoder tools and the benchmarks.

    def config(self) -> dict[str, Any]:
        return self._read_json(CONFIG)

    def history(self) -> dict[str, Any]:
        if not (self.path / HISTORY).is_file():
            raise RunFolderError(f"{self.path} has no {HISTORY}: the run never started; {REDO}.")
        return self._read_json(HISTORY)

    def settings(self) -> Settings:
        try:
            return Settings.from_run_config(self.config())
        except ConfigError as exc:
            raise RunFolderError(f"{self.path / CONFIG} is not a valid run config ({exc}); {REDO}.") from None

    def completed_history(self) -> dict[str, Any]:
        """history.json of a run that completed; anything else is refused with what to do."""
        history = self.history()
        status, rounds = history.get("status"), history.get("rounds")
        resume = f"continue it with --run-config \"resume-from='{self.path.resolve()}'\""
        if status in (RUNNING, INTERRUPTED):
            done = max(len(rounds) - 1, 0) if isinstance(rounds, list) else 0
            state = "is still in progress" if status == RUNNING else "was interrupted"
            raise RunFolderError(
                f"run {self.path} {state} (history.json says '{status}', {done} round(s) so far): "
                f"wait until it completes, or if it was stopped, {resume}."
            )
        if status == FAILED:
            raise RunFolderError(
                f"run {self.path} failed ({history.get('error', 'no error recorded')}): fix the cause and "
                f"{REDO}; this needs a completed run."
            )
        if status != COMPLETED:
            raise RunFolderError(f"run {self.path} has status {status!r} in history.json, not 'completed': {REDO}.")
        if not isinstance(rounds, list) or not rounds or not all(isinstance(r, dict) and "server" in r for r in rounds):
            raise RunFolderError(f"{self.path / HISTORY} lists no evaluated rounds: {REDO}.")
        return history

    def num_partitions(self) -> int:
        """How many shards the nodes split the training set into (the report rebuilds them)."""
        value = self.config().get("num-partitions")
        if not isinstance(value, int) or value < 1:
            raise RunFolderError(
                f"{self.path / CONFIG} does not record how the nodes split MNIST ('num-partitions'): "
                f"{REDO} with this version of the app."
            )
        return value

    def load_model(self, settings: Settings | None = None) -> nn.Module:
        """The run's final global model, on the CPU, checked against its run config."""
        import torch

        from task.models import build_model

        settings = settings or self.settings()
        path = self.path / MODEL
        fix = f"put back the {MODEL} this run wrote, or {REDO}"
        if not path.is_file():
            raise RunFolderError(f"{path} is missing: the run did not complete, or the file was removed; {fix}.")
        state = read_torch_file(path, fix)
        model = build_model(settings)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = (
            {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
            if isinstance(state, dict)
            else {}
        )
        if found != expected:
            first = next((k for k in expected if expected[k] != found.get(k)), None)
            detail = (
                f"{first}: expected {expected[first]}, found {found.get(first, 'nothing')}"
                if first
                else "different keys"
            )
            raise RunFolderError(f"{path} does not match {CONFIG} (model='{settings.model}', {detail}); {fix}.")
        model.load_state_dict(state, strict=True)
        return model

    def _read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{path} is unreadable ({exc}): the run folder is damaged; {REDO}.") from None
        if not isinstance(data, dict):
            raise RunFolderError(f"{path} does not hold a JSON object: the run folder is damaged; {REDO}.")
        return data


@dataclass
class CompletedRun:
    """What a completed run left behind, read and checked against each other."""

    folder: RunFolder
    config: dict[str, Any]
    settings: Settings
    history: dict[str, Any]
    num_partitions: int
    model: nn.Module

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.history["rounds"]

    @property
    def path(self) -> Path:
        return self.folder.path


def read_completed_run(path: str | Path) -> CompletedRun:
    """Open a completed run folder and check config, history and model together."""
    folder = RunFolder.open(path)
    history = folder.completed_history()
    settings = folder.settings()
    return CompletedRun(
        folder, folder.config(), settings, history, folder.num_partitions(), folder.load_model(settings)
    )
