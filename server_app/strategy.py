"""FedAvg that keeps each round's client metrics at hand and refuses to carry
on when a whole round of training failed."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg


class RoundFailed(RuntimeError):
    """No node returned a model in a training round."""


class CheckedFedAvg(FedAvg):
    """Flower's FedAvg (weighted by ``num-examples``) with two additions.

    - The aggregated client metrics of each round are kept as they arrive, so
      the history can be written round by round rather than only at the end.
    - A round in which every node failed, or none replied, stops the run: plain
      FedAvg would keep the old model and the run would look like it converged
      to nothing.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_metrics: dict[int, dict] = {}
        self.evaluate_metrics: dict[int, dict] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        errors = [m.error.reason for m in replies if m.has_error()]
        if not replies:
            raise RoundFailed(f"Round {server_round}: no node replied to the training request.")
        if len(errors) == len(replies):
            raise RoundFailed(f"Round {server_round}: all {len(replies)} nodes failed. First error: {errors[0]}")
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            self.train_metrics[server_round] = self._with_counts(metrics, replies)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.evaluate_metrics[server_round] = self._with_counts(metrics, replies)
        return metrics

    def _with_counts(self, metrics: MetricRecord, replies: list[Message]) -> dict:
        """The weighted means plus how many nodes and examples they stand for."""
        ok = [m for m in replies if not m.has_error()]
        examples = sum(int(m.content["metrics"][self.weighted_by_key]) for m in ok)
        return {**dict(metrics), "nodes": len(ok), "num-examples": examples}
