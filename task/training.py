"""Local training and evaluation, shared by clients, the server and the baseline.

Batches are sliced from tensors held in memory instead of going through a
``DataLoader``: a node's shard is a few hundred images, and the per-sample
Python overhead of a loader would cost more than the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from task.config import ConfigError, Settings


@dataclass
class Batchable:
    """Images as float pixels in [0, 1] (``[N, 784]``) and their labels (``[N]``)."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_uint8(cls, images: np.ndarray, labels: np.ndarray) -> Batchable:
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        return cls(x, torch.from_numpy(labels.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Batchable:
        return Batchable(self.x.to(device), self.y.to(device))


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: the GPU when this process sees one, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' but this process sees no CUDA GPU: use device='auto' or 'cpu' "
            "(in simulation, give clients a GPU with client-resources-num-gpus > 0)."
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Copies, not views: on the CPU ``.numpy()`` shares memory with the model, so
    training it further would silently change weights already handed out."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"Expected {len(keys)} arrays for {type(model).__name__}, got {len(weights)}.")
    model.load_state_dict({k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights)}, strict=True)


def is_classifier(model: nn.Module) -> bool:
    return not hasattr(model, "encode")


def make_optimizer(model: nn.Module, settings: Settings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    return torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=settings.momentum)


def train(
    model: nn.Module,
    data: Batchable,
    settings: Settings,
    device: torch.device,
    seed: int,
    epochs: int | None = None,
) -> float:
    """Train in place for ``epochs`` (default ``local-epochs``); return the mean
    training loss of the last epoch."""
    model.to(device)
    data = data.to(device)
    optimizer = make_optimizer(model, settings)
    gen = torch.Generator().manual_seed(seed)
    last = 0.0
    for _ in range(epochs or settings.local_epochs):
        last = train_epoch(model, data, optimizer, settings, gen)
    return last


def train_epoch(
    model: nn.Module, data: Batchable, optimizer: torch.optim.Optimizer, settings: Settings, gen: torch.Generator
) -> float:
    """One pass over ``data`` (already on the model's device) in batches shuffled
    by ``gen``; returns the mean training loss. The caller owns the optimizer, so
    momentum and Adam state carry on across epochs (the central baseline) or start
    afresh every round (a node)."""
    model.train()
    loss_fn = _loss_fn(model)
    classifier = is_classifier(model)
    n, bs = len(data), settings.batch_size
    order = torch.randperm(n, generator=gen).to(data.x.device)
    total = torch.zeros((), device=data.x.device)
    for start in range(0, n, bs):
        idx = order[start : start + bs]
        x, y = data.x[idx], data.y[idx]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y if classifier else x)
        loss.backward()
        if settings.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        total += loss.detach() * len(idx)
    return float(total) / n


def train_round(
    model: nn.Module,
    data: Batchable,
    settings: Settings,
    device: torch.device,
    seed: int,
    server_round: int,
) -> float:
    """A node's work in one round: the whole model, or, while greedy pretraining
    (``ae-pretrain-rounds``) lasts, only this round's encoder/decoder pair."""
    stage = settings.pretrain_stage(server_round)
    if stage is None:
        return train(model, data, settings, device, seed)
    below, pair = model.stage(stage)
    with torch.no_grad():
        inputs = below.to(device)(data.x.to(device))
    return train(pair, Batchable(inputs, data.y), settings, device, seed)


def metric_key(model: str) -> str:
    """The headline number of :func:`evaluate` for a model name: test accuracy for
    the classifier, mean squared error per pixel for the autoencoder."""
    return "accuracy" if model == "mlp" else "mse"


@torch.no_grad()
def evaluate(model: nn.Module, data: Batchable, device: torch.device, batch_size: int = 2000) -> dict[str, float]:
    """Classifier: ``loss`` (cross-entropy) and ``accuracy``. Autoencoder: ``loss``
    and ``mse``, both the mean squared error per pixel."""
    model.to(device).eval()
    classifier = is_classifier(model)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        out = model(x)
        if classifier:
            loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
        else:
            loss_sum += float(nn.functional.mse_loss(out, x, reduction="mean")) * len(x)
    n = len(data)
    if classifier:
        return {"loss": loss_sum / n, "accuracy": correct / n}
    return {"loss": loss_sum / n, "mse": loss_sum / n}


def _loss_fn(model: nn.Module) -> nn.Module:
    return nn.CrossEntropyLoss() if is_classifier(model) else nn.MSELoss()
