"""Local training and evaluation, shared by clients, the server and the baseline.

Batches are sliced from tensors held in memory instead of going through a
``DataLoader``: a node's shard is a few hundred images, and the per-sample
Python overhead of a loader would cost more than the arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from task.config import Settings
from task.data import Batchable
from task.errors import ConfigError
from task.objective import Objective


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


class MomentumSGD:
    """SGD with optional momentum: the arithmetic of ``torch.optim.SGD`` (no weight decay,
    dampening or Nesterov), operation for operation, so every step gives the same bits.

    It stands in for ``torch.optim.SGD`` because of what comes with it: the first
    ``torch.optim`` optimizer a process creates imports ``torch._dynamo`` (about 3 s
    on a 2-core CPU, 20 s under load), which every simulation worker paid on its first
    message and a deployment pays on every message (one ClientApp process each), and
    every step passes through its hooks."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0) -> None:
        self.params = list(params)
        self.lr = lr
        self.momentum = momentum
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:  # as torch.optim: parameters without a gradient are left alone
                continue
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-self.lr)


def make_optimizer(
    model: nn.Module, settings: Settings, lr: float | None = None
) -> torch.optim.Optimizer | MomentumSGD:
    """The run's optimizer at ``lr`` (default ``learning-rate``)."""
    lr = settings.learning_rate if lr is None else lr
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return MomentumSGD(model.parameters(), lr=lr, momentum=settings.momentum)


def train(
    model: nn.Module,
    data: Batchable,
    settings: Settings,
    device: torch.device,
    seed: int,
    epochs: int | None = None,
    proximal_mu: float = 0.0,
    lr: float | None = None,
) -> float:
    """Train in place for ``epochs`` (default ``local-epochs``) at ``lr`` (default
    ``learning-rate``); return the mean training loss of the last epoch. ``proximal_mu`` > 0
    adds FedProx's term ``mu/2 ||w - w_start||^2``, which keeps the node near the model it was sent."""
    model.to(device)
    data = data.to(device)
    optimizer = make_optimizer(model, settings, lr)
    gen = torch.Generator().manual_seed(seed)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    last = 0.0
    for _ in range(epochs or settings.local_epochs):
        last = train_epoch(model, data, optimizer, settings, gen, anchor, proximal_mu)
    return last


def train_epoch(
    model: nn.Module,
    data: Batchable,
    optimizer: torch.optim.Optimizer | MomentumSGD,
    settings: Settings,
    gen: torch.Generator,
    anchor: list[torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
) -> float:
    """One pass over ``data`` (already on the model's device) in batches shuffled
    by ``gen``; returns the mean training loss. The caller owns the optimizer, so
    momentum and Adam state carry on across epochs (the central baseline) or start
    afresh every round (a node)."""
    model.train()
    objective = settings.objective
    n, bs = len(data), settings.batch_size
    order = torch.randperm(n, generator=gen).to(data.x.device)
    total = torch.zeros((), device=data.x.device)
    for start in range(0, n, bs):
        idx = order[start : start + bs]
        x, y = data.x[idx], data.y[idx]
        optimizer.zero_grad(set_to_none=True)
        loss = objective.loss(model(x), x, y)
        if anchor is not None:
            loss = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
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
    """A node's work in one round: the whole model (held near the global model by
    ``proximal-mu`` under FedProx), or, while greedy pretraining (``ae-pretrain-rounds``)
    lasts, only this round's encoder/decoder pair."""
    stage = settings.pretrain_stage(server_round)
    lr = settings.learning_rate_at(server_round)
    if stage is None:
        return train(model, data, settings, device, seed, proximal_mu=settings.proximal_mu, lr=lr)
    below, pair = model.stage(stage)
    with torch.no_grad():
        inputs = below.to(device)(data.x.to(device))
    return train(pair, Batchable(inputs, data.y), settings, device, seed, lr=lr)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Batchable, device: torch.device, objective: Objective, batch_size: int = 2000
) -> dict[str, float]:
    """``loss`` and the objective's headline metric (``objective.key``) over ``data``."""
    model.to(device).eval()
    loss_sum = metric_sum = 0.0
    for start in range(0, len(data), batch_size):
        x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        batch_loss, batch_metric = objective.batch_sums(model(x), x, y)
        loss_sum += batch_loss
        metric_sum += batch_metric
    n = len(data)
    return {"loss": loss_sum / n, objective.key: metric_sum / n}
