"""What each model kind is trained for and judged by, defined once.

The classifier minimises cross-entropy and is judged by test accuracy; the
autoencoder minimises the mean squared error per pixel and is judged by that
same error. Training, evaluation, the server's log, the report and the
benchmarks all ask the :class:`Objective` of the run's model instead of
deciding "accuracy or MSE" themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only where a loss is computed: the launcher stays light
    import torch


@dataclass(frozen=True)
class Objective:
    """The loss a model trains on and the headline metric it is judged by."""

    key: str  # the metric's key in evaluate()'s results and in history.json
    label: str  # in sentences and axis labels
    column: str  # in table headers, next to "federated"/"central"
    higher_is_better: bool
    percent: bool  # shown as a percentage
    classifier: bool  # targets are the labels (else the inputs themselves)
    target: float | None = None  # the threshold reports count rounds to (None: no such threshold)

    def loss(self, output: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss over a batch, for training."""
        from torch.nn import functional as F

        return F.cross_entropy(output, y) if self.classifier else F.mse_loss(output, x)

    def batch_sums(self, output: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Summed loss and summed metric over a batch; divided by the number of
        images they give the test loss and the headline metric."""
        from torch.nn import functional as F

        if self.classifier:
            return float(F.cross_entropy(output, y, reduction="sum")), float((output.argmax(1) == y).sum())
        total = float(F.mse_loss(output, x, reduction="mean")) * len(x)
        return total, total

    def format(self, value: float | None) -> str:
        if value is None:
            return ""
        return f"{100 * value:.2f}%" if self.percent else f"{value:.5f}"

    def format_gap(self, federated: float, central: float) -> str:
        """Central minus federated, in the unit people compare in (points for a percentage)."""
        diff = central - federated
        return f"{100 * diff:+.2f} points" if self.percent else f"{diff:+.5f}"

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats score ``b``."""
        return a > b if self.higher_is_better else a < b

    def best(self, values: Sequence[float]) -> float:
        return max(values) if self.higher_is_better else min(values)

    def reached(self, value: float) -> bool:
        """Whether ``value`` meets :attr:`target` (never, for objectives without one)."""
        if self.target is None:
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def scale(self, value: float) -> float:
        """The value as plotted (percent points for a percentage)."""
        return 100 * value if self.percent else value

    @property
    def axis_label(self) -> str:
        return f"{self.label} (%)" if self.percent else self.label


CLASSIFICATION = Objective(
    key="accuracy",
    label="test accuracy",
    column="accuracy",
    higher_is_better=True,
    percent=True,
    classifier=True,
    target=0.97,  # McMahan et al. 2017 count rounds to 97% for the 2NN on MNIST
)
RECONSTRUCTION = Objective(
    key="mse",
    label="test MSE per pixel",
    column="MSE per pixel",
    higher_is_better=False,
    percent=False,
    classifier=False,
)

OBJECTIVES: dict[str, Objective] = {"mlp": CLASSIFICATION, "autoencoder": RECONSTRUCTION}


def objective_for(model: str) -> Objective:
    """The objective of a model name (a key of :data:`OBJECTIVES`)."""
    return OBJECTIVES[model]
