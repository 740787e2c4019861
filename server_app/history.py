"""The run's history, round by round: what ``history.json`` holds and the console shows.

After every round the server's test metric, the clients' means, the replies dropped and
the wall time are added, ``history.json`` is rewritten (so a run can be followed while it
goes) and one line is logged; a run that ends for any reason says how.
"""

from __future__ import annotations

import time
from logging import ERROR, INFO

from flwr.common import log

from run_folder import INTERRUPTED, RUNNING, Checkpoint, RunFolder
from server_app.records import TensorBoardLog
from server_app.tracking import MlflowLog
from task.config import Settings


class HistoryRecorder:
    """Collects each round's server and client metrics, rewrites the history, logs progress."""

    def __init__(
        self,
        folder: RunFolder,
        settings: Settings,
        tensorboard: TensorBoardLog | None = None,
        tracking: MlflowLog | None = None,
    ) -> None:
        self.folder = folder
        self.settings = settings
        self.tensorboard = tensorboard or TensorBoardLog(folder, enabled=False)
        self.tracking = tracking
        self.rounds: list[dict] = []
        self.last = time.monotonic()
        self.elapsed = 0.0
        self.num_nodes = 0
        self.finished = False

    @property
    def last_round(self) -> int:
        return self.rounds[-1]["round"] if self.rounds else -1

    def resume(self, checkpoint: Checkpoint) -> None:
        self.rounds = list(checkpoint.rounds)
        self.num_nodes = checkpoint.num_nodes
        self.elapsed = float(self.rounds[-1]["elapsed-s"]) if self.rounds else 0.0
        if self.tracking is not None:
            self.tracking.resumed(self.rounds)

    def record(
        self,
        server_round: int,
        server_metrics: dict[str, float],
        num_nodes: int,
        clients_train: dict | None = None,
        clients_evaluate: dict | None = None,
        failures: list[dict] | None = None,
    ) -> None:
        now = time.monotonic()
        wall = 0.0 if server_round == 0 else now - self.last
        self.elapsed += wall
        self.last = now
        self.num_nodes = max(self.num_nodes, num_nodes)
        entry = {
            "round": server_round,
            "server": server_metrics,
            "clients-train": clients_train,
            "clients-evaluate": clients_evaluate,
            "failures": failures or [],
            "wall-time-s": round(wall, 3),
            "elapsed-s": round(self.elapsed, 3),
        }
        self.rounds.append(entry)
        self.write(RUNNING)
        self.tensorboard.round(entry)
        if self.tracking is not None:
            self.tracking.round(entry)
        objective = self.settings.objective
        stage = self.settings.pretrain_stage(server_round)
        log(
            INFO,
            "Round %d/%d: server %s %s, loss %.4f (%.1f s)%s%s",
            server_round,
            self.settings.num_server_rounds,
            objective.label,
            objective.format(server_metrics[objective.key]),
            server_metrics["loss"],
            entry["wall-time-s"],
            f", {len(entry['failures'])} repl(ies) dropped" if entry["failures"] else "",
            "" if stage is None else f" [pretraining pair {stage + 1}/{self.settings.ae_num_stages}]",
        )

    def write(self, status: str, error: str | None = None) -> None:
        self.folder.write_history(status, self.rounds, self.num_nodes, error)
        self.finished = status != RUNNING
        if self.finished and self.tracking is not None:
            self.tracking.finish(status, error)

    def interrupted(self, why: str) -> None:
        """Once, and only for a run that has not ended otherwise."""
        if not self.finished:
            self.write(INTERRUPTED, error=why)
            log(ERROR, "Run interrupted after round %d (%s): %s", self.last_round, why, self.folder.path)
