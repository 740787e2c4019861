"""One round of federated training and evaluation: who is asked, what is kept, what is retried.

:class:`RoundRunner` composes the pieces: nodes are sampled by partition id from a generator
seeded by the run's seed, the round and the attempt (:func:`sample_partitions`); the messages
travel through :mod:`server_app.transport`; every training reply passes the checks of
:mod:`server_app.checks` (one path, whether replies are averaged as they arrive or at the end);
Flower's strategy (:mod:`server_app.strategy`) averages what passed, in partition order, so the
same seed gives the same run whatever order replies arrive in.

A round short of ``min-train-replies`` good replies (a node died, hung past ``round-timeout``,
or sent something the checks refuse) is retried with other nodes, at most ``round-retries``
times; then the run stops with what happened. An averaged model that is not finite is
discarded, never kept. Every dropped reply is recorded with the node, the round and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, Message, MessageType, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server_app.checks import (
    WEIGHTED_BY,
    ReplyRules,
    array_spec,
    check_metrics,
    example_count,
    is_finite,
    record_drop,
    screen_updates,
    training_reply_problem,
)
from server_app.nodes import NodeBook
from server_app.privacy import PrivacyLedger
from server_app.running_mean import MetricsOnly, RunningMean
from server_app.sampling import sample_partitions
from server_app.strategy import STREAMED, build_strategy, carried_state, min_replies, restore_carried
from server_app.transport import Transport, pullable
from task.config import Settings


class RoundFailed(RuntimeError):
    """A round could not gather enough good training replies, even after retries."""


@dataclass
class PhaseResult:
    """One phase of a round: the averaged arrays (training only), the metrics and what went wrong."""

    arrays: ArrayRecord | None = None
    metrics: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Attempt:
    """What one try at a round's training phase gathered."""

    good: list[tuple[int, Message]]
    dropped: list[tuple[int, str]]
    averaged: ArrayRecord | None = None
    metrics: MetricRecord | None = None


class RoundRunner:
    """Runs the training and evaluation phases of each round through a Flower strategy."""

    def __init__(
        self,
        settings: Settings,
        book: NodeBook,
        strategy: Strategy | None = None,
        expected_examples: list[int] | None = None,
    ) -> None:
        self.settings = settings
        self.book = book
        # examples in each partition's training shard (index: partition id), as the server cuts them:
        # what lets replies be averaged as they arrive (see RunningMean); None: averaged at the end
        self.expected_examples = expected_examples
        self.min_replies = min_replies(settings)
        num_sampled = max(int(len(book.available()) * settings.fraction_train), self.min_replies)
        self.num_sampled = num_sampled  # the DP wrapper sizes its noise for this many nodes
        self.strategy = strategy or build_strategy(settings, num_sampled)
        self.privacy = PrivacyLedger(settings, max(len(book.available()), 1)) if settings.differential_privacy else None
        self.transport = Transport(self.strategy, book, settings.round_timeout)
        self.rules = ReplyRules(
            shard_sizes=expected_examples,
            max_examples=settings.max_examples_per_node,
            # with client-side clipping the server checks that every node clipped its own update
            clipping_norm=settings.dp_clipping_norm if settings.clips_on_nodes else None,
        )

    def train(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> PhaseResult:
        s = self.settings
        result = PhaseResult()
        excluded: set[int] = set()  # nodes whose reply was dropped this round: others are asked first
        good = 0
        for attempt in range(s.round_retries + 1):
            chosen = self._choose(grid, server_round, attempt, excluded)
            if not chosen:
                result.failures.append(self._failure(server_round, attempt, "train", None, "no node available"))
                continue
            tried = self._train_once(grid, chosen, server_round, arrays)
            good = len(tried.good)
            for pid, reason in tried.dropped:
                excluded.add(self.book.node_of(pid))
                result.failures.append(self._failure(server_round, attempt, "train", pid, reason))
            if good >= self.min_replies:
                if tried.averaged is not None and is_finite(tried.averaged):
                    result.arrays = tried.averaged
                    result.metrics = self._train_metrics(tried, len(chosen))
                    return result
                why = "the averaged model is not finite" if tried.averaged else f"'{s.strategy}' could not aggregate"
                result.failures.append(self._failure(server_round, attempt, "train", None, f"{why}: discarded"))
            if attempt < s.round_retries:
                log(
                    WARNING,
                    "Round %d: %d good training replies of %d needed; retrying with other nodes",
                    server_round,
                    good,
                    self.min_replies,
                )
        reasons = "; ".join(
            f"partition {f['partition-id']}: {f['reason']}" if f["partition-id"] is not None else f["reason"]
            for f in result.failures[-5:]
        )
        raise RoundFailed(
            f"Round {server_round}: {good} good training replies, fewer than the {self.min_replies} needed "
            f"(min-train-replies={s.min_train_replies}, strategy='{s.strategy}'), after {s.round_retries + 1} "
            f"attempt(s). Last failures: {reasons}"
        )

    def _choose(self, grid: Grid, server_round: int, attempt: int, excluded: set[int]) -> list[int]:
        """This attempt's partitions: nodes whose reply was dropped earlier in the round are left
        out while enough others are connected."""
        s = self.settings
        self.book.refresh(grid, s.round_timeout)
        available = [p for p in self.book.available() if self.book.node_of(p) not in excluded]
        if len(available) < self.min_replies:  # too few fresh nodes: give the failed ones another chance
            available = self.book.available()
        if not available:
            return []
        fraction, minimum = s.fraction_train, self.min_replies
        return sample_partitions(available, fraction, minimum, s.seed, server_round, attempt, "train")

    def _train_once(self, grid: Grid, chosen: list[int], server_round: int, arrays: ArrayRecord) -> Attempt:
        """Ask ``chosen`` to train; check every reply on one path; average the good ones as they
        arrive where the strategy is a plain weighted mean, else once all are in."""
        expected = array_spec(arrays)
        streamed = self._streams(grid, chosen)
        mean = RunningMean({p: self.expected_examples[p] for p in chosen}) if streamed else None
        replies = (
            self.transport.stream(grid, MessageType.TRAIN, chosen, server_round, arrays)
            if streamed
            else self.transport.ask(grid, MessageType.TRAIN, chosen, server_round, arrays).items()
        )
        good: dict[int, Message] = {}
        dropped: dict[int, str] = {}
        for pid, reply in replies:
            reason = training_reply_problem(reply, pid, arrays, expected, self.rules)
            if reason is not None:
                dropped[pid] = reason
                if mean is not None:
                    mean.skip(pid)
            elif mean is not None:
                (record,) = reply.content.array_records.values()
                (metrics,) = reply.content.metric_records.values()
                mean.add(pid, record, metrics[WEIGHTED_BY])
                good[pid] = MetricsOnly(reply)  # the arrays are in the running sum: let them go
            else:
                good[pid] = reply
        if mean is None and self.settings.update_screen:
            kept = [(p, good[p]) for p in chosen if p in good]
            for pid, reason in screen_updates(kept, arrays, self.settings.update_screen).items():
                dropped[pid] = reason
                del good[pid]
        tried = Attempt([(p, good[p]) for p in chosen if p in good], sorted(dropped.items()))
        if len(tried.good) < self.min_replies or not tried.good:
            return tried
        log(INFO, "Round %d: averaging %d training replies, %d dropped", server_round, len(good), len(dropped))
        if mean is None:
            tried.averaged, tried.metrics = self.strategy.aggregate_train(server_round, [m for _, m in tried.good])
            return tried
        tried.averaged = mean.result()
        tried.metrics = self.strategy.train_metrics_aggr_fn([m.content for _, m in tried.good], WEIGHTED_BY)
        if not mean.exact:
            log(INFO, "Round %d: mean of %d replies rescaled to the examples they hold", server_round, len(good))
        return tried

    def _streams(self, grid: Grid, chosen: list[int]) -> bool:
        """Whether this round's training replies are averaged as they arrive: plain FedAvg or
        FedProx (Flower's weighted mean and nothing else), the shard sizes known, and a grid
        that can be pulled from before every reply is in (Flower's own grids can)."""
        sizes = self.expected_examples
        return (
            type(self.strategy) in STREAMED
            and not self.settings.update_screen  # the screen needs the round's median: every reply at once
            and sizes is not None
            and all(0 <= p < len(sizes) for p in chosen)
            and pullable(grid)
        )

    def _train_metrics(self, tried: Attempt, asked: int) -> dict[str, Any]:
        replies = [m for _, m in tried.good]
        metrics = {**self._with_counts(tried.metrics, replies), "asked": asked}
        if self.privacy is not None:
            counts = {example_count(m) for m in replies}
            metrics["privacy"] = self.privacy.release(len(replies), self.num_sampled, uniform=len(counts) == 1)
        return metrics

    def evaluate(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> PhaseResult:
        """The global model on the sampled nodes' local test images; failures are recorded, not retried."""
        s = self.settings
        result = PhaseResult()
        if s.fraction_evaluate == 0:
            return result
        available = self.book.available()
        chosen = sample_partitions(available, s.fraction_evaluate, 1, s.seed, server_round, 0, "evaluate")
        good = []
        for pid, reply in self.transport.ask(grid, MessageType.EVALUATE, chosen, server_round, arrays).items():
            reason = "no reply within round-timeout" if reply is None else check_metrics(reply)
            if reason is None:
                good.append(reply)
            else:
                result.failures.append(self._failure(server_round, 0, "evaluate", pid, reason))
        log(INFO, "Round %d: %d evaluation replies, %d dropped", server_round, len(good), len(result.failures))
        if good:
            metrics = self.strategy.aggregate_evaluate(server_round, good)
            result.metrics = {**self._with_counts(metrics, good), "asked": len(chosen)} if metrics is not None else None
        return result

    def _failure(self, server_round: int, attempt: int, phase: str, pid: int | None, reason: str) -> dict[str, Any]:
        node = self.book.node_of(pid) if pid is not None else None
        return record_drop(server_round, attempt, phase, pid, node, reason)

    @staticmethod
    def _with_counts(metrics: MetricRecord | None, replies: list[Message]) -> dict[str, Any]:
        """The weighted means plus how many nodes and examples they stand for."""
        return {**dict(metrics or {}), "nodes": len(replies), "num-examples": sum(example_count(m) for m in replies)}

    def state(self) -> dict[str, Any]:
        """What the run carries from round to round, for the checkpoint: the strategy's state
        and the privacy spent."""
        state = carried_state(self.strategy)
        if self.privacy is not None:
            state["privacy"] = self.privacy.state_dict()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        restore_carried(self.strategy, state)
        if self.privacy is not None and "privacy" in state:
            self.privacy.load_state_dict(state["privacy"])
