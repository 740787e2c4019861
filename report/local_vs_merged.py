"""Local against merged: would a node have done better on its own?

For a sample of nodes: a model trained only on that node's training shard, from
the federation's initial weights (by default for ``local-epochs`` epochs, as the
tutorial did), and the merged global model, both tested on that node's
held-out local test images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from report.central import Log, log_stderr
from report.device import small_batch_threads
from task.config import Settings
from task.models import build_model
from task.shards import load_node_data
from task.training import evaluate, train


@dataclass
class NodeComparison:
    """One sampled node: its shard sizes and both models' metrics on its test images."""

    node: int
    train_images: int
    test_images: int
    local: dict[str, float]
    merged: dict[str, float]


@dataclass
class LocalVsMerged:
    rows: list[NodeComparison]
    epochs: int
    metric: str
    seconds: float

    def mean(self, which: str) -> float:
        """Mean over the sampled nodes of ``which`` ("local" or "merged")."""
        return float(np.mean([getattr(row, which)[self.metric] for row in self.rows]))


def sample_nodes(num_nodes: int, count: int, seed: int) -> list[int]:
    """``count`` distinct partition ids, the same for the same seed on every machine."""
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_nodes, size=min(count, num_nodes), replace=False))


def compare_local_and_merged(
    settings: Settings,
    num_nodes: int,
    merged_state: dict[str, torch.Tensor],
    epochs: int,
    device: torch.device,
    nodes: int = 10,
    log: Log = log_stderr,
) -> LocalVsMerged:
    """Train a local model per sampled node and test it and the merged model there."""
    objective = settings.objective
    merged = build_model(settings)
    merged.load_state_dict(merged_state)
    sample = sample_nodes(num_nodes, nodes, settings.seed)
    log(f"Local vs merged: {len(sample)} of {num_nodes} nodes, {epochs} local epoch(s) each on {device}")
    rows: list[NodeComparison] = []
    start = time.monotonic()
    for i, node in enumerate(sample, 1):
        data = load_node_data(settings, node, num_nodes)
        local = build_model(settings)
        with small_batch_threads(device):
            train(local, data.train, settings, device, seed=settings.seed * 1_000_003 + node, epochs=epochs)
        row = NodeComparison(
            node=node,
            train_images=len(data.train),
            test_images=len(data.test),
            local=evaluate(local, data.test, device, objective),
            merged=evaluate(merged, data.test, device, objective),
        )
        rows.append(row)
        log(
            f"Node {node} ({i}/{len(sample)}): local {objective.format(row.local[objective.key])}, "
            f"merged {objective.format(row.merged[objective.key])} on its {row.test_images} test images"
        )
    return LocalVsMerged(rows, epochs, objective.key, time.monotonic() - start)
