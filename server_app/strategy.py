"""What happens to the nodes' replies: who is asked, which replies are trusted,
and how the trusted ones are averaged.

Small pure helpers (sample, check) and a thin :class:`RoundRunner` around one of
Flower's own strategies (``strategy``: FedAvg by default, or another of those in
``task/strategies.py``; optionally wrapped in one of Flower's fixed-clipping
differential-privacy wrappers: server-side clipping, or client-side clipping where
the nodes clip with ``fixedclipping_mod`` and the server only adds the noise), which
configures the messages and does the averaging. On top of what the strategy does:

- every training reply is checked before it is averaged (the model's exact array
  names, shapes and dtypes, all finite; finite metrics; with client-side clipping,
  an update no longer than ``dp-clipping-norm``), and a bad one is dropped
  with the node, the round and the reason recorded;
- nodes are sampled by partition id from a generator seeded by the run's seed, the
  round and the attempt, and replies are averaged in partition order, so the same
  seed gives the same run whatever order replies arrive in;
- with plain FedAvg or FedProx on a real Flower grid, training replies are checked and
  averaged as they arrive (:class:`RunningMean`), so a round holds a running sum, not
  every reply: the same arithmetic in the same order as Flower's ``aggregate_train``, so
  the same bytes, whenever every sampled node's reply is good and counts the examples
  its shard holds (otherwise the mean is rescaled to the replies that count: the same
  weighted mean up to float32 rounding);
- a round short of ``min-train-replies`` good replies (a node died, hung past
  ``round-timeout``, or sent garbage) is retried with other nodes, at most
  ``round-retries`` times; then the run stops with what happened. An averaged
  model that is not finite is discarded, never kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import GaussianPrivacyEvent, Grid, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
    Strategy,
)

from server_app.nodes import NodeBook, node_error
from task.config import Settings
from task.flower_compat import STRATEGY_STATE, WRAPPED_STRATEGY
from task.strategies import STRATEGIES

WEIGHTED_BY = "num-examples"
# How often a round asks the SuperLink for replies. Flower's HTTP grid waits 3 s between asks, so a
# deployed round ended up to 3 s after its last reply; an ask is one small request to the SuperLink.
REPLY_POLL_S = 0.2
_PHASES = {"train": 0, "evaluate": 1}

ArraySpec = dict[str, tuple[tuple[int, ...], str]]


class RoundFailed(RuntimeError):
    """A round could not gather enough good training replies, even after retries."""


# Flower's class of each strategy in task/strategies.py (all FedAvg or built on it).
STRATEGY_CLASSES: dict[str, type[FedAvg]] = {
    name: getattr(flower_strategies, spec.flower_class) for name, spec in STRATEGIES.items()
}
# Strategies whose aggregate_train is exactly Flower's weighted mean of the replies (no server
# state, no wrapper): only these are averaged as replies arrive (see RunningMean).
STREAMED: tuple[type[Strategy], ...] = (FedAvg, FedProx)
DP_DELTA = 1e-5  # the delta at which the privacy spent is reported
# Flower's wrapper for each value of the dp-clipping knob: who clips each node's update.
DP_WRAPPERS: dict[str, type[Strategy]] = {
    "server": DifferentialPrivacyServerSideFixedClipping,
    "client": DifferentialPrivacyClientSideFixedClipping,
}


def build_strategy(settings: Settings, num_sampled: int) -> Strategy:
    """Flower's own strategy for ``settings.strategy``, with the run's server-side knobs.

    Sampling is done here, by partition id (see :func:`sample_partitions`), so the
    strategy is told to take every node it is shown."""
    common: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=WEIGHTED_BY,
    )
    spec = STRATEGIES[settings.strategy]
    common.update({keyword: getattr(settings, field) for keyword, field in spec.knobs})
    if spec.server_lr_arg and settings.server_learning_rate:  # 0: Flower's own default
        common[spec.server_lr_arg] = settings.server_learning_rate
    if spec.client_lr_arg:
        common[spec.client_lr_arg] = settings.learning_rate
    strategy: Strategy = STRATEGY_CLASSES[spec.name](**common)
    if settings.differential_privacy:
        # "client": the wrapper only tells the nodes the norm and adds the noise; the nodes clip.
        strategy = DP_WRAPPERS[settings.dp_clipping](
            strategy, settings.dp_noise_multiplier, settings.dp_clipping_norm, num_sampled
        )
    return strategy


class PrivacyLedger:
    """The privacy spent so far, with Flower's RDP accountant (Google's dp-accounting):
    client-level (add or remove one node's data), one Gaussian release per round, with
    no credit taken for sampling (an upper bound). Only rounds whose nodes weighed the
    same are accountable: FedAvg's weighting by examples otherwise changes the sensitivity."""

    def __init__(self, settings: Settings, population: int) -> None:
        from flwr.serverapp import RdpAccountant  # Flower imports it (and dp-accounting) only when asked

        self.settings = settings
        self.population = population
        self.accountant = RdpAccountant(
            PrivacyConfig(DP_DELTA, population, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.NO_AMPLIFICATION)
        )
        self.accountable = True

    def release(self, averaged: int, noised_for: int, uniform: bool) -> dict[str, Any]:
        """Account one round: ``averaged`` replies went into the mean, with noise that Flower's
        wrapper sized for ``noised_for`` nodes (its ``num_sampled_clients``, fixed when it was
        built). With fewer replies than that (some dropped) the noise is smaller than the mean's
        sensitivity needs: the round is accounted with the multiplier it really had,
        ``z x averaged / noised_for``."""
        z = self.settings.dp_noise_multiplier
        self.accountable = self.accountable and uniform and z > 0
        if not self.accountable:
            why = "no noise" if z == 0 else "nodes of unequal weight"
            return {"epsilon": None, "delta": DP_DELTA, "why-not": why}
        effective = z * averaged / noised_for
        self.accountant.compose(GaussianPrivacyEvent(effective, averaged, self.population))
        spent = self.accountant.get_privacy_spent()
        released = {"epsilon": float(spent.epsilon), "delta": DP_DELTA}
        if averaged != noised_for:
            released["noise-multiplier"] = effective
        return released


def array_spec(arrays: ArrayRecord) -> ArraySpec:
    """Name -> (shape, dtype) of every array: what a reply must match exactly."""
    return {name: (tuple(arr.shape), str(arr.dtype)) for name, arr in arrays.items()}


def sample_partitions(
    available: list[int], fraction: float, minimum: int, seed: int, server_round: int, attempt: int, phase: str
) -> list[int]:
    """``max(fraction x available, minimum)`` partition ids, the same for the same
    seed, round, attempt and phase on every machine (Flower's own sampling uses
    the unseeded global ``random`` over node ids that change from run to run)."""
    size = min(len(available), max(int(len(available) * fraction), minimum))
    rng = np.random.default_rng([seed, server_round, attempt, _PHASES[phase]])
    return sorted(int(p) for p in rng.choice(sorted(available), size=size, replace=False))


def check_train_reply(reply: Message, expected: ArraySpec) -> str | None:
    """Why a training reply cannot be averaged, or None when it can."""
    if reply.has_error():
        return node_error(reply)
    arrays, metrics = reply.content.array_records, reply.content.metric_records
    if len(arrays) != 1 or len(metrics) != 1:
        return f"expected one ArrayRecord and one MetricRecord, got {len(arrays)} and {len(metrics)}"
    (record,) = arrays.values()
    found = array_spec(record)
    if list(found) != list(expected):
        return f"arrays named {list(found)[:3]}..., expected the model's {list(expected)[:3]}..."
    for name, spec in expected.items():
        if found[name] != spec:
            return f"array {name} has shape {found[name][0]} and dtype {found[name][1]}, expected {spec[0]} {spec[1]}"
    for name, arr in record.items():
        if not np.isfinite(arr.numpy()).all():
            return f"array {name} holds NaN or infinite values"
    return check_metrics(reply)


def check_clipped(reply: Message, sent: ArrayRecord, clipping_norm: float) -> str | None:
    """Why a reply that should have been clipped by its node is not (its update, the weights
    minus those ``sent``, is longer than ``clipping_norm`` in L2 norm), or None when it is.

    With client-side clipping the server clips nothing: the noise it adds is scaled to
    ``clipping_norm`` on the promise that no node's update is longer. Call it on a reply that
    passed :func:`check_train_reply`. The tolerance covers float32 rounding of the node's
    ``global + clipped update``, nothing more."""
    (record,) = reply.content.array_records.values()
    squared = 0.0
    scale = 0.0
    for name, arr in record.items():
        new = arr.numpy().astype(np.float64)
        old = sent[name].numpy().astype(np.float64)
        squared += float(np.sum((new - old) ** 2))
        scale += float(np.sum(new**2) + np.sum(old**2))
    norm = math.sqrt(squared)
    tolerance = 1e-4 * clipping_norm + 4 * float(np.finfo(np.float32).eps) * math.sqrt(scale)
    if norm > clipping_norm + tolerance:
        return (
            f"its update has L2 norm {norm:.6g}, more than dp-clipping-norm={clipping_norm:g}: with "
            "dp-clipping='client' every node must clip its own update (is it running this app's ClientApp?)"
        )
    return None


def check_metrics(reply: Message) -> str | None:
    """Why a reply's metrics cannot be used (non-finite values, no example count), or None."""
    if reply.has_error():
        return node_error(reply)
    if len(reply.content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(reply.content.metric_records)}"
    (metrics,) = reply.content.metric_records.values()
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"metric {key}={value!r} is not a finite number"
    count = metrics.get(WEIGHTED_BY)
    if not isinstance(count, (int, float)) or count <= 0:
        return f"{WEIGHTED_BY}={count!r}: a reply must say how many examples it stands for"
    return None


def is_finite(arrays: ArrayRecord) -> bool:
    return all(np.isfinite(arr.numpy()).all() for arr in arrays.values())


class RunningMean:
    """Flower's ``aggregate_arrayrecords`` (FedAvg, FedProx) folded in as replies arrive.

    Flower averages the good replies in the order given (here: partition order), each array
    times ``num-examples / total`` in float32, summed in place. The total is known only once
    every reply is in; here it is taken in advance from ``expected`` (partition id ->
    examples in its shard, which the server cuts as the nodes do), so each reply is folded
    in as soon as the partitions before it are, and then let go: the round holds the sum and
    the replies that arrived ahead of their turn, not every reply. When every expected
    partition's reply is good and counts what was expected, the result is Flower's, bit for
    bit. Otherwise (a dropped reply, an unexpected count) it is rescaled by expected over
    actual total: the same weighted mean, up to float32 rounding."""

    def __init__(self, expected: dict[int, int]) -> None:
        self.order = sorted(expected)
        self.expected = expected
        self.total = sum(expected[p] for p in self.order)
        self.arrived: dict[int, tuple[ArrayRecord, int]] = {}  # out of turn: waiting for the partitions before
        self.skipped: set[int] = set()
        self.sum: dict[str, np.ndarray] = {}
        self.counted = 0  # examples of the replies folded in so far
        self.exact = True
        self._next = 0

    def add(self, pid: int, arrays: ArrayRecord, count: int | float) -> None:
        if count != self.expected[pid]:
            self.exact = False
        self.arrived[pid] = (arrays, count)
        self._fold()

    def skip(self, pid: int) -> None:
        """This partition's reply will not count (dropped, or none came)."""
        self.skipped.add(pid)
        self.exact = False
        self._fold()

    def _fold(self) -> None:
        while self._next < len(self.order):
            pid = self.order[self._next]
            if pid not in self.skipped:
                if pid not in self.arrived:
                    return
                arrays, count = self.arrived.pop(pid)
                weight = count / self.total
                for key, value in arrays.items():  # as flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords
                    if key not in self.sum:
                        self.sum[key] = value.numpy() * weight
                    else:
                        self.sum[key] += value.numpy() * weight
                self.counted += count
            self._next += 1

    def result(self) -> ArrayRecord | None:
        """The mean of what was added (every partition not added counts as skipped)."""
        for pid in self.order[self._next :]:
            if pid not in self.arrived:
                self.skipped.add(pid)
        self._fold()
        if not self.sum or self.counted <= 0:
            return None
        if not self.exact and self.counted != self.total:
            scale = self.total / self.counted
            return ArrayRecord({k: Array(np.asarray(v * np.float32(scale))) for k, v in self.sum.items()})
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in self.sum.items()})


@dataclass
class PhaseResult:
    """One phase of a round: the averaged arrays (training only), the metrics and what went wrong."""

    arrays: ArrayRecord | None = None
    metrics: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)


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
        num_sampled = max(int(len(book.available()) * settings.fraction_train), settings.min_train_replies)
        self.num_sampled = num_sampled  # the DP wrapper sizes its noise for this many nodes
        self.strategy = strategy or build_strategy(settings, num_sampled)
        self.privacy = PrivacyLedger(settings, max(len(book.available()), 1)) if settings.differential_privacy else None

    def train(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> PhaseResult:
        s = self.settings
        expected = array_spec(arrays)
        result = PhaseResult()
        excluded: set[int] = set()
        good: list[tuple[int, Message]] = []
        for attempt in range(s.round_retries + 1):
            self.book.refresh(grid, s.round_timeout)
            available = [p for p in self.book.available() if self.book.node_of(p) not in excluded]
            if len(available) < s.min_train_replies:  # too few fresh nodes: give the failed ones another chance
                available = self.book.available()
            if not available:
                result.failures.append(self._failure(server_round, attempt, "train", None, "no node available"))
                continue
            chosen = sample_partitions(
                available, s.fraction_train, s.min_train_replies, s.seed, server_round, attempt, "train"
            )
            streamed = self._streams(grid, chosen)
            if streamed:
                good, averaged, metrics, dropped = self._train_streamed(grid, chosen, server_round, arrays, expected)
            else:
                good, dropped = [], []
                for pid, reply in self._ask(grid, MessageType.TRAIN, chosen, server_round, arrays).items():
                    reason = "no reply within round-timeout" if reply is None else check_train_reply(reply, expected)
                    if reason is None and s.clips_on_nodes:
                        reason = check_clipped(reply, arrays, s.dp_clipping_norm)
                    if reason is None:
                        good.append((pid, reply))
                    else:
                        dropped.append((pid, reason))
                averaged = metrics = None
            for pid, reason in dropped:
                excluded.add(self.book.node_of(pid))
                result.failures.append(self._failure(server_round, attempt, "train", pid, reason))
            if len(good) >= s.min_train_replies:
                if not streamed:  # not averaged on the way in
                    averaged, metrics = self.strategy.aggregate_train(server_round, [m for _, m in good])
                if averaged is not None and is_finite(averaged):
                    result.arrays = averaged
                    result.metrics = {**self._with_counts(metrics, [m for _, m in good]), "asked": len(chosen)}
                    if self.privacy is not None:
                        counts = {self._count(m) for _, m in good}
                        result.metrics["privacy"] = self.privacy.release(
                            len(good), self.num_sampled, uniform=len(counts) == 1
                        )
                    return result
                result.failures.append(
                    self._failure(server_round, attempt, "train", None, "the averaged model is not finite: discarded")
                )
            if attempt < s.round_retries:
                log(
                    WARNING,
                    "Round %d: %d good training replies of %d needed; retrying with other nodes",
                    server_round,
                    len(good),
                    s.min_train_replies,
                )
        reasons = "; ".join(
            f"partition {f['partition-id']}: {f['reason']}" if f["partition-id"] is not None else f["reason"]
            for f in result.failures[-5:]
        )
        raise RoundFailed(
            f"Round {server_round}: {len(good)} good training replies, fewer than min-train-replies="
            f"{s.min_train_replies}, after {s.round_retries + 1} attempt(s). Last failures: {reasons}"
        )

    def _streams(self, grid: Grid, chosen: list[int]) -> bool:
        """Whether this round's training replies are averaged as they arrive: plain FedAvg or
        FedProx (Flower's weighted mean and nothing else), the shard sizes known, and a grid
        that can be pulled from before every reply is in (Flower's own grids can)."""
        sizes = self.expected_examples
        return (
            type(self.strategy) in STREAMED
            and sizes is not None
            and all(0 <= p < len(sizes) for p in chosen)
            and _pullable(grid)
        )

    def _train_streamed(
        self, grid: Grid, chosen: list[int], server_round: int, arrays: ArrayRecord, expected: ArraySpec
    ) -> tuple[list[tuple[int, Message]], ArrayRecord | None, MetricRecord | None, list[tuple[int, str]]]:
        """The training phase with replies checked and averaged as they arrive: what the loop in
        :meth:`train` and Flower's ``aggregate_train`` give, holding the running sum instead of
        the replies. The good replies come back stripped to their metrics."""
        sizes = self.expected_examples
        assert sizes is not None
        mean = RunningMean({p: sizes[p] for p in chosen})
        good: dict[int, Message] = {}
        dropped: dict[int, str] = {}
        for pid, reply in self._stream(grid, MessageType.TRAIN, chosen, server_round, arrays):
            reason = "no reply within round-timeout" if reply is None else check_train_reply(reply, expected)
            if reason is None:
                (record,) = reply.content.array_records.values()
                (metrics,) = reply.content.metric_records.values()
                mean.add(pid, record, metrics[WEIGHTED_BY])
                good[pid] = _MetricsOnly(reply)
            else:
                mean.skip(pid)
                dropped[pid] = reason
        in_order = [(p, good[p]) for p in chosen if p in good]
        if len(in_order) < self.settings.min_train_replies or not in_order:
            return in_order, None, None, sorted(dropped.items())
        log(INFO, "aggregate_train: Received %s results and %s failures", len(in_order), 0)
        averaged = mean.result()
        metrics = self.strategy.train_metrics_aggr_fn([m.content for _, m in in_order], WEIGHTED_BY)
        if not mean.exact:
            log(INFO, "Round %d: mean of %d replies rescaled to the examples they hold", server_round, len(in_order))
        return in_order, averaged, metrics, sorted(dropped.items())

    def evaluate(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> PhaseResult:
        """The global model on the sampled nodes' local test images; failures are recorded, not retried."""
        s = self.settings
        result = PhaseResult()
        if s.fraction_evaluate == 0:
            return result
        available = self.book.available()
        chosen = sample_partitions(available, s.fraction_evaluate, 1, s.seed, server_round, 0, "evaluate")
        good = []
        for pid, reply in self._ask(grid, MessageType.EVALUATE, chosen, server_round, arrays).items():
            reason = "no reply within round-timeout" if reply is None else check_metrics(reply)
            if reason is None:
                good.append(reply)
            else:
                result.failures.append(self._failure(server_round, 0, "evaluate", pid, reason))
        if good:
            metrics = self.strategy.aggregate_evaluate(server_round, good)
            result.metrics = {**self._with_counts(metrics, good), "asked": len(chosen)} if metrics is not None else None
        return result

    def _ask(
        self, grid: Grid, kind: str, partitions: list[int], server_round: int, arrays: ArrayRecord
    ) -> dict[int, Message | None]:
        """Send to the nodes holding ``partitions``; their replies by partition id, in
        partition order (None where no reply came within ``round-timeout``)."""
        if _pullable(grid):
            got = dict(self._stream(grid, kind, partitions, server_round, arrays))
            return {p: got[p] for p in partitions}
        messages = self._configure(kind, partitions, server_round, arrays, by_partition=False)
        replies = list(grid.send_and_receive(messages, timeout=self.settings.round_timeout))
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        asked = {m.metadata.dst_node_id for m in messages}
        by_node = {_replier(reply, asked, sent): reply for reply in replies}
        return {p: by_node.get(self.book.node_of(p)) for p in partitions}

    def _stream(
        self, grid: Grid, kind: str, partitions: list[int], server_round: int, arrays: ArrayRecord
    ) -> Iterator[tuple[int, Message | None]]:
        """What :meth:`_ask` gives, one ``(partition id, reply)`` at a time as the replies come
        in (then ``(partition id, None)`` for each node that did not reply within
        ``round-timeout``); a second reply for the same node is ignored. Messages are sent
        in partition order, so that replies tend to come in the order they are averaged in."""
        messages = self._configure(kind, partitions, server_round, arrays, by_partition=True)
        pid_of = {self.book.node_of(p): p for p in partitions}
        ids = list(grid.push_messages(messages))
        sent = {mid: m.metadata.dst_node_id for m, mid in zip(messages, ids) if mid}
        asked = {m.metadata.dst_node_id for m in messages}
        del messages
        waiting = set(sent)
        answered: set[int] = set()
        interval = min(float(getattr(grid, "pull_interval", REPLY_POLL_S)), REPLY_POLL_S)  # simulation's: 0.1 s
        deadline = time.time() + self.settings.round_timeout
        while waiting and time.time() < deadline:
            replies = list(grid.pull_messages(waiting))
            for reply in replies:
                waiting.discard(reply.metadata.reply_to_message_id)
                node = _replier(reply, asked, sent)
                if node in pid_of and node not in answered:
                    answered.add(node)
                    yield pid_of[node], reply
            del replies
            if waiting:
                time.sleep(interval)
        for p in partitions:
            if self.book.node_of(p) not in answered:
                yield p, None

    def _configure(
        self, kind: str, partitions: list[int], server_round: int, arrays: ArrayRecord, by_partition: bool
    ) -> list[Message]:
        """The strategy's messages to the nodes holding ``partitions`` (it writes their config:
        server-round, FedProx's proximal-mu, ...; and remembers the arrays it sent: FedOpt, FedAvgM
        and DP clipping need them to aggregate), in partition or node-id order; logs the round's line."""
        chosen = _ChosenNodes([self.book.node_of(p) for p in partitions])
        configure = self.strategy.configure_train if kind == MessageType.TRAIN else self.strategy.configure_evaluate
        order = {node: i for i, node in enumerate(chosen.node_ids)}
        messages = sorted(
            configure(server_round, arrays, ConfigRecord({}), chosen),
            key=lambda m: order[m.metadata.dst_node_id] if by_partition else m.metadata.dst_node_id,
        )
        log(
            INFO,
            "Round %d: %s on %d of %d available node(s)",
            server_round,
            kind,
            len(messages),
            len(self.book.available()),
        )
        return messages

    def _failure(self, server_round: int, attempt: int, phase: str, pid: int | None, reason: str) -> dict[str, Any]:
        node = self.book.node_of(pid) if pid is not None else None
        log(
            WARNING,
            "Round %d (%s, attempt %d): dropped %s: %s",
            server_round,
            phase,
            attempt + 1,
            f"partition {pid} (node {node})" if pid is not None else "the round",
            reason,
        )
        return {
            "round": server_round,
            "phase": phase,
            "attempt": attempt + 1,
            "partition-id": pid,
            "node": node,
            "reason": reason,
        }

    @staticmethod
    def _count(reply: Message) -> int:
        (metrics,) = reply.content.metric_records.values()
        return int(metrics[WEIGHTED_BY])

    def _with_counts(self, metrics: MetricRecord | None, replies: list[Message]) -> dict[str, Any]:
        """The weighted means plus how many nodes and examples they stand for."""
        return {**dict(metrics or {}), "nodes": len(replies), "num-examples": sum(self._count(m) for m in replies)}

    def state(self) -> dict[str, Any]:
        """What the strategy carries from round to round (nothing for FedAvg; the server
        momentum of FedAvgM, the moments of FedAdam/FedYogi/FedAdagrad), and the privacy spent."""
        inner = getattr(self.strategy, WRAPPED_STRATEGY, self.strategy)  # inside the DP wrapper
        state = {k: v for k, v in vars(inner).items() if k in STRATEGY_STATE}
        if self.privacy is not None:
            state["privacy"] = {
                "accountant": self.privacy.accountant.state_dict(),
                "accountable": self.privacy.accountable,
            }
        return state

    def restore(self, state: dict[str, Any]) -> None:
        inner = getattr(self.strategy, WRAPPED_STRATEGY, self.strategy)
        for key, value in state.items():
            if key in STRATEGY_STATE:
                setattr(inner, key, value)
        if self.privacy is not None and "privacy" in state:
            self.privacy.accountant.load_state_dict(state["privacy"]["accountant"])
            self.privacy.accountable = state["privacy"]["accountable"]


def _pullable(grid: Grid) -> bool:
    """Whether replies can be pulled before every reply is in (Flower's own grids can)."""
    return callable(getattr(grid, "push_messages", None)) and callable(getattr(grid, "pull_messages", None))


def _replier(reply: Message, asked: set[int], sent: dict[str, int]) -> int:
    """The node a reply stands for. A reply the SuperLink writes for a node it lost comes from the
    SuperLink, not the node: it is matched by the message it answers (whose id the grid set
    when it was sent)."""
    node = reply.metadata.src_node_id
    return node if node in asked else sent.get(reply.metadata.reply_to_message_id, node)


class _HideFlowersSampledLine(logging.Filter):
    """Flower's strategies log "Sampled N nodes (out of N)" of the grid they are shown, which
    here is only the nodes the round already chose: it would read as if no other node existed.
    The round's own line ("train on 1 of 3 available node(s)") says it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("configure_train: Sampled", "configure_evaluate: Sampled"))


logging.getLogger("flwr").addFilter(_HideFlowersSampledLine())


class _MetricsOnly:
    """What is kept of a good training reply once its arrays are in the running sum: its metrics."""

    def __init__(self, reply: Message) -> None:
        (metrics,) = reply.content.metric_records.values()
        self.content = RecordDict({"metrics": metrics})
        self.metadata = reply.metadata


class _ChosenNodes:
    """A view of the Grid that shows a strategy only the nodes chosen for this round."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)
