"""Central baseline: the federation's model trained on the union of its shards.

The same initial weights (``build_model`` with the run's seed), optimizer,
learning rate, momentum, batch size and gradient clipping as the nodes use, on
the images the nodes hold together, tested on the 10,000 test images after
every epoch. Only the place of the data differs, so the gap to the federated
model is the price of federating.

Results are cached by the settings they depend on (``cache_fields``), so the
reports of runs that share them train the baseline once.

Besides the baseline of ``central-epochs`` epochs, ``central-converged`` asks for the same
model trained until it stops learning: until the best training loss of the last
``CONVERGED_PATIENCE`` epochs is less than ``CONVERGED_GAIN`` below the best before them
(at most ``CONVERGED_MAX_EPOCHS``). The training loss decides, not the test error, so the
test images stay out of every choice.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from report.device import small_batch_threads
from task.config import Settings
from task.data import Batchable, load_mnist
from task.files import atomic_write
from task.models import build_model
from task.shards import server_test_set, train_shards
from task.training import evaluate, make_optimizer, train_epoch

CACHE_VERSION = 2
CONVERGED_PATIENCE = 5
CONVERGED_GAIN = 0.01
CONVERGED_MAX_EPOCHS = 150
# An entry of the cache: its metadata (written last, so it marks the entry complete) and its weights.
ENTRY_META = "central.json"
ENTRY_WEIGHTS = "central-weights.pt"

Log = Callable[[str], None]


@dataclass
class CentralResult:
    """Per-epoch test metrics (epoch 0 = the initial weights) and the final weights."""

    epochs: list[dict[str, Any]]
    state_dict: dict[str, torch.Tensor]
    train_images: int
    fields: dict[str, Any]
    folder: Path
    cached: bool
    created: str
    device: str

    @property
    def train_seconds(self) -> float:
        return float(self.epochs[-1]["elapsed-s"])


def log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_cache_dir() -> Path:
    """``$FEDMNIST_CACHE_DIR/central``, else ``~/.cache/fedmnist/central``."""
    env = os.environ.get("FEDMNIST_CACHE_DIR")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "fedmnist"
    return root / "central"


def converged(train_losses: list[float]) -> bool:
    """Whether training has stopped paying: the best of the last ``CONVERGED_PATIENCE`` epochs'
    training losses is less than ``CONVERGED_GAIN`` (relative) below the best of those before."""
    if len(train_losses) <= CONVERGED_PATIENCE:
        return False
    before, recent = min(train_losses[:-CONVERGED_PATIENCE]), min(train_losses[-CONVERGED_PATIENCE:])
    return recent > (1 - CONVERGED_GAIN) * before


def cache_fields(settings: Settings, num_nodes: int, until_converged: bool = False) -> dict[str, Any]:
    """The settings the baseline depends on; knobs that cannot change it are left out
    (autoencoder widths of an MLP run, momentum under Adam, samples-per-class of an iid split)."""
    fields: dict[str, Any] = {
        "version": CACHE_VERSION,
        "model": settings.model,
        "optimizer": settings.optimizer,
        "learning-rate": settings.learning_rate,
        "batch-size": settings.batch_size,
        "max-grad-norm": settings.max_grad_norm,
        "central-epochs": f"converged ({CONVERGED_PATIENCE}, {CONVERGED_GAIN}, {CONVERGED_MAX_EPOCHS})"
        if until_converged
        else settings.central_epochs,
        "partitioning": settings.partitioning,
        "seed": settings.seed,
        "num-nodes": num_nodes,
    }
    if settings.model == "autoencoder":
        fields["ae-hidden"] = list(settings.ae_hidden_sizes)
        fields["ae-code-size"] = settings.ae_code_size
    if settings.optimizer == "sgd":
        fields["momentum"] = settings.momentum
    if settings.partitioning == "iid-balanced":
        fields["samples-per-class"] = settings.samples_per_class
    return fields


def cache_key(settings: Settings, num_nodes: int, until_converged: bool = False) -> str:
    text = json.dumps(cache_fields(settings, num_nodes, until_converged), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def central_baseline(
    settings: Settings,
    num_nodes: int,
    device: torch.device,
    cache_dir: Path | None = None,
    log: Log = log_stderr,
    until_converged: bool = False,
) -> CentralResult:
    """The cached baseline for these settings, trained (and cached) on first use."""
    folder = Path(cache_dir or default_cache_dir()) / cache_key(settings, num_nodes, until_converged)
    fields = cache_fields(settings, num_nodes, until_converged)
    cached = read_cache(folder, fields)
    if cached is not None:
        log(f"Central baseline: reusing {folder} ({len(cached.epochs) - 1} epochs, trained {cached.created})")
        return cached
    result = train_central(settings, num_nodes, device, log, until_converged)
    result.folder = folder
    write_cache(result)
    log(f"Central baseline cached in {folder}")
    return result


def train_central(
    settings: Settings, num_nodes: int, device: torch.device, log: Log = log_stderr, until_converged: bool = False
) -> CentralResult:
    """Train on the concatenated training shards of all ``num_nodes`` nodes, for ``central-epochs``
    epochs or, ``until_converged``, until :func:`converged` says so."""
    mnist = load_mnist(settings.data_dir)
    indices = np.concatenate(train_shards(settings, num_nodes, mnist))
    train_set = Batchable.from_uint8(mnist.train_images[indices], mnist.train_labels[indices]).to(device)
    test_set = server_test_set(settings)
    objective = settings.objective
    model = build_model(settings).to(device)
    optimizer = make_optimizer(model, settings)
    gen = torch.Generator().manual_seed(settings.seed)
    limit = CONVERGED_MAX_EPOCHS if until_converged else settings.central_epochs
    planned = f"until converged (at most {limit} epochs)" if until_converged else f"{limit} epoch(s)"
    log(
        f"Central baseline: {planned} on {len(train_set)} images "
        f"(the union of {num_nodes} nodes' shards), batch {settings.batch_size}, {settings.optimizer} "
        f"lr {settings.learning_rate}, on {device}"
    )
    epochs = [{"epoch": 0, **evaluate(model, test_set, device, objective), "wall-time-s": 0.0, "elapsed-s": 0.0}]
    elapsed = 0.0
    with small_batch_threads(device):
        for epoch in range(1, limit + 1):
            if until_converged and converged([e["train-loss"] for e in epochs[1:]]):
                break
            start = time.monotonic()
            train_loss = train_epoch(model, train_set, optimizer, settings, gen)
            metrics = evaluate(model, test_set, device, objective)
            seconds = time.monotonic() - start
            elapsed += seconds
            epochs.append(
                {
                    "epoch": epoch,
                    **metrics,
                    "train-loss": train_loss,
                    "wall-time-s": round(seconds, 3),
                    "elapsed-s": round(elapsed, 3),
                }
            )
            log(
                f"Central epoch {epoch}/{limit}: {objective.label} "
                f"{objective.format(metrics[objective.key])}, loss {metrics['loss']:.4f} ({seconds:.1f} s)"
            )
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return CentralResult(
        epochs=epochs,
        state_dict=state,
        train_images=len(train_set),
        fields=cache_fields(settings, num_nodes, until_converged),
        folder=Path(),
        cached=False,
        created=datetime.datetime.now().isoformat(timespec="seconds"),
        device=str(device),
    )


def read_cache(folder: Path, fields: dict[str, Any]) -> CentralResult | None:
    """The cached result in ``folder`` if it is complete and for these ``fields``."""
    try:
        meta = json.loads((folder / ENTRY_META).read_text())
        if meta.get("fields") != fields:
            return None
        state = torch.load(folder / ENTRY_WEIGHTS, map_location="cpu", weights_only=True)
        return CentralResult(
            epochs=meta["epochs"],
            state_dict=state,
            train_images=int(meta["train-images"]),
            fields=fields,
            folder=folder,
            cached=True,
            created=str(meta["created"]),
            device=str(meta["device"]),
        )
    except Exception:  # absent, half-deleted or from an older layout: train again
        return None


def write_cache(result: CentralResult) -> None:
    """Weights first, then the history that marks the entry complete; each atomically."""
    result.folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "fields": result.fields,
        "epochs": result.epochs,
        "train-images": result.train_images,
        "created": result.created,
        "device": result.device,
        "torch-version": torch.__version__,
    }
    atomic_write(result.folder / ENTRY_WEIGHTS, lambda fh: torch.save(result.state_dict, fh))
    atomic_write(result.folder / ENTRY_META, lambda fh: fh.write(json.dumps(meta, indent=2).encode()))
