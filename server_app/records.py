"""What the ServerApp records beside the history: the manifest, its own log, TensorBoard.

The manifest says what it takes to run the same thing again: the versions, the
machine, the seeds, and a hash of every node's shard (the shards are a pure
function of the data, the partitioning and the seed, so the server computes
them without asking the nodes). The launcher adds the command and the checkout.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from typing import Any

import numpy as np

from run_folder import SERVER_LOG, TENSORBOARD, RunFolder
from task.config import Settings
from task.errors import ConfigError
from task.host import machine, versions
from task.shards import local_test_shards, train_shards


def shard_hashes(settings: Settings, num_partitions: int) -> dict[str, list[str]]:
    """SHA-256 (first 16 hex digits) of each node's training and local test indices."""

    def digest(indices: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]

    train = train_shards(settings, num_partitions)
    return {
        "train": [digest(i) for i in train],
        "test": [digest(i) for i in local_test_shards(settings, num_partitions, train=train)],
    }


def build_manifest(settings: Settings, num_partitions: int, run_id: int) -> dict[str, Any]:
    return {
        "run-id": run_id,
        "run-config": settings.to_run_config(),
        "num-partitions": num_partitions,
        "seeds": {
            "seed": settings.seed,
            "model-init": f"torch.manual_seed({settings.seed})",
            "partitioning": (
                f"numpy default_rng({settings.seed}) for training shards, ({settings.seed + 1}) for test shards"
            ),
            "sampling": f"numpy default_rng([{settings.seed}, round, attempt, phase])",
            "node-shuffling": f"torch seed {settings.seed} x 1000003 + round x 10007 + partition-id",
        },
        "shards": shard_hashes(settings, num_partitions),
        "versions": versions(),
        "machine": machine(),
        "argv": sys.argv,
    }


class ServerLog:
    """Flower's and this app's log records of the ServerApp process, also into the run folder."""

    def __init__(self, folder: RunFolder) -> None:
        self.handler = logging.FileHandler(folder.file(SERVER_LOG), encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.logger = logging.getLogger("flwr")

    def __enter__(self) -> ServerLog:
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


class TensorBoardLog:
    """Per-round metrics as TensorBoard scalars (``tensorboard = true``), in the run folder."""

    def __init__(self, folder: RunFolder, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard=true needs the tensorboard package in the ServerApp's environment: "
                "pip install tensorboard (or the project's extra: pip install '.[tensorboard]'), "
                "or set tensorboard=false."
            ) from None
        self.writer = SummaryWriter(log_dir=str(folder.file(TENSORBOARD)))

    @staticmethod
    def check_available(enabled: bool) -> None:
        """Fail before round 1, not after it, when TensorBoard is asked for and missing."""
        if enabled:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "tensorboard=true needs the tensorboard package in the ServerApp's environment: "
                    "pip install tensorboard, or set tensorboard=false."
                ) from None

    def round(self, entry: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = entry["round"]
        for group in ("server", "clients-train", "clients-evaluate"):
            for key, value in (entry.get(group) or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.add_scalar("round/wall-time-s", entry["wall-time-s"], step)
        self.writer.add_scalar("round/dropped-replies", len(entry["failures"]), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
