"""Local against merged: would a node have done better on its own?

For a sample of nodes: a model trained only on that node's training shard, from
the federation's initial weights (by default for ``local-epochs`` epochs, as the
tutorial did), and the merged global model, both tested on that node's test data:

- IID partitionings (``iid``, ``iid-balanced``): the node's held-out local test shard,
  as the tutorial did (its digits are spread like the node's training images);
- non-IID partitionings (``shards``, ``dirichlet``): the 10,000 test images of the
  digits the node trains on, each digit weighted by its share of the node's training
  images ("its own distribution"). Its local test shard has that mix too, but only about
  a sixth as many images as its training shard (a few dozen per digit), too few to
  tell two models apart.

Both models are also tested on all 10,000 test images, where the local model's
blind spots show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from partitioning import label_counts
from report.central import Log, log_stderr
from report.device import small_batch_threads
from task.config import Settings
from task.data import Batchable
from task.models import build_model
from task.shards import load_node_data, server_test_set
from task.training import evaluate, train

IID_PARTITIONINGS = ("iid", "iid-balanced")
OWN_SHARD, OWN_DISTRIBUTION = "own test shard", "own distribution"


@dataclass
class NodeComparison:
    """One sampled node: its shard sizes and both models' metrics on its test images."""

    node: int
    train_images: int
    test_images: int
    local: dict[str, float]
    merged: dict[str, float]
    digits: list[int] = field(default_factory=list)  # training images of each digit
    local_all: dict[str, float] = field(default_factory=dict)  # on all 10,000 test images


@dataclass
class LocalVsMerged:
    rows: list[NodeComparison]
    epochs: int
    metric: str
    seconds: float
    test_set: str = OWN_SHARD  # what "the node's test images" are (see the module's docstring)
    merged_all: dict[str, float] = field(default_factory=dict)  # the merged model on all 10,000

    def mean(self, which: str) -> float:
        """Mean over the sampled nodes of ``which`` ("local" or "merged")."""
        return float(np.mean([getattr(row, which)[self.metric] for row in self.rows]))


def test_set_for(settings: Settings) -> str:
    """Which test data stands for a node's own (see the module's docstring)."""
    return OWN_SHARD if settings.partitioning in IID_PARTITIONINGS else OWN_DISTRIBUTION


class _ByDigit:
    """The 10,000 test images split by digit, and a model's metrics on a node's digit mix."""

    def __init__(self, test: Batchable, device: torch.device, objective) -> None:
        self.parts = {d: Batchable(test.x[test.y == d], test.y[test.y == d]) for d in range(10)}
        self.device, self.objective = device, objective

    def images(self, digits: list[int]) -> int:
        return sum(len(self.parts[d]) for d, n in enumerate(digits) if n)

    def evaluate(self, model, digits: list[int], cache: dict | None = None) -> dict[str, float]:
        """The expected metrics on test images drawn like the node's training images:
        each digit's metrics weighted by its share of the node's training shard."""
        total = float(sum(digits))
        out: dict[str, float] = {}
        for d, n in enumerate(digits):
            if not n:
                continue
            if cache is not None and d in cache:
                got = cache[d]
            else:
                got = evaluate(model, self.parts[d], self.device, self.objective)
                if cache is not None:
                    cache[d] = got
            for k, v in got.items():
                out[k] = out.get(k, 0.0) + v * n / total
        return out


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
    test_set = test_set_for(settings)
    log(
        f"Local vs merged: {len(sample)} of {num_nodes} nodes, {epochs} local epoch(s) each on {device}, "
        f"tested on each node's {test_set}"
    )
    everything = server_test_set(settings)
    by_digit = _ByDigit(everything, device, objective)
    merged_by_digit: dict[int, dict[str, float]] = {}
    merged_all = evaluate(merged, everything, device, objective)
    rows: list[NodeComparison] = []
    start = time.monotonic()
    for i, node in enumerate(sample, 1):
        data = load_node_data(settings, node, num_nodes)
        digits = [int(c) for c in label_counts(data.train.y.numpy(), [np.arange(len(data.train))], 10)[0]]
        local = build_model(settings)
        with small_batch_threads(device):
            train(local, data.train, settings, device, seed=settings.seed * 1_000_003 + node, epochs=epochs)
        if test_set == OWN_SHARD:
            test_images = len(data.test)
            local_own = evaluate(local, data.test, device, objective)
            merged_own = evaluate(merged, data.test, device, objective)
        else:
            test_images = by_digit.images(digits)
            local_own = by_digit.evaluate(local, digits)
            merged_own = by_digit.evaluate(merged, digits, merged_by_digit)
        row = NodeComparison(
            node=node,
            train_images=len(data.train),
            test_images=test_images,
            local=local_own,
            merged=merged_own,
            digits=digits,
            local_all=evaluate(local, everything, device, objective),
        )
        rows.append(row)
        log(
            f"Node {node} ({i}/{len(sample)}): local {objective.format(row.local[objective.key])}, "
            f"merged {objective.format(row.merged[objective.key])} on its {test_set} ({row.test_images} test images)"
        )
    return LocalVsMerged(rows, epochs, objective.key, time.monotonic() - start, test_set, merged_all)
