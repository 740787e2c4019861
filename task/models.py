"""The two models: the FedAvg paper's MLP and a stacked autoencoder."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from task.config import Settings

INPUT_SIZE = 28 * 28


class MLP(nn.Module):
    """784-200-200-10 with ReLU: the "2NN" of McMahan et al. 2017."""

    def __init__(self, hidden: int = 200, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(INPUT_SIZE, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Autoencoder(nn.Module):
    """Fully connected encoder narrowing to a linear code, and its mirror image.

    The decoder ends in a sigmoid, so reconstructions are pixels in [0, 1].
    """

    def __init__(self, hidden: Sequence[int] = (500, 250), code_size: int = 30) -> None:
        super().__init__()
        widths = [INPUT_SIZE, *hidden, code_size]
        self.hidden = tuple(hidden)
        self.code_size = code_size
        self.encoder = _stack(widths, last=None)
        self.decoder = _stack(widths[::-1], last=nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @property
    def num_stages(self) -> int:
        return len(self.hidden) + 1

    def stage(self, k: int) -> tuple[nn.Sequential, StagePair]:
        """Greedy layer-wise pretraining, stage ``k`` (0 = next to the pixels):
        the encoder layers below it, which only feed it, and the shallow
        autoencoder it trains (encoder layer ``k`` and its mirror in the decoder).

        Both share this model's parameters, so training the pair trains the stack.
        """
        if not 0 <= k < self.num_stages:
            raise ValueError(f"stage {k} is outside 0..{self.num_stages - 1}")
        # encoder: Linear, ReLU, ..., Linear (the code has no activation);
        # decoder: Linear, ReLU, ..., Linear, Sigmoid; layer j sits at index 2j.
        last = self.num_stages - 1
        below = self.encoder[: 2 * k]
        enc = self.encoder[2 * k : 2 * k + 2] if k < last else self.encoder[2 * k : 2 * k + 1]
        j = last - k
        dec = self.decoder[2 * j : 2 * j + 2]
        return below, StagePair(enc, dec)


class StagePair(nn.Module):
    """A one-layer autoencoder cut out of a stack: reconstructs its own input."""

    def __init__(self, encoder: nn.Sequential, decoder: nn.Sequential) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _stack(widths: Sequence[int], last: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


def build_model(settings: Settings) -> nn.Module:
    """The model a run trains, with weights seeded by ``settings.seed``."""
    torch.manual_seed(settings.seed)
    if settings.model == "mlp":
        return MLP()
    return Autoencoder(settings.ae_hidden_sizes, settings.ae_code_size)
