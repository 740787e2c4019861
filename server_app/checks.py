"""Which replies can be trusted: every check a node's reply must pass before it is used.

A reply is never trusted because the node is registered. Training replies go through
:func:`training_reply_problem`, one path whether they are averaged as they arrive or at the
end of the round: the model's exact array names, shapes and dtypes, all finite; finite
metrics with a positive example count; with client-side clipping, an update no longer than
``dp-clipping-norm``. Evaluation replies go through :func:`check_metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.common import log

from server_app.nodes import node_error

WEIGHTED_BY = "num-examples"

ArraySpec = dict[str, tuple[tuple[int, ...], str]]


def array_spec(arrays: ArrayRecord) -> ArraySpec:
    """Name -> (shape, dtype) of every array: what a reply must match exactly."""
    return {name: (tuple(arr.shape), str(arr.dtype)) for name, arr in arrays.items()}


@dataclass(frozen=True)
class ReplyRules:
    """What a round's training replies must match besides the model's arrays: the examples each
    partition's shard holds where the server cut the shards (``shard_sizes``, by partition id),
    a cap on the count a node may claim otherwise (``max_examples``, 0: none), and, under
    client-side differential privacy, the norm every node must have clipped its update to."""

    shard_sizes: list[int] | None = None
    max_examples: int = 0
    clipping_norm: float | None = None


def training_reply_problem(
    reply: Message | None, pid: int, sent: ArrayRecord, expected: ArraySpec, rules: ReplyRules
) -> str | None:
    """Why partition ``pid``'s training reply cannot be averaged, or None when it can. ``reply``
    is None when the node did not answer in time."""
    if reply is None:
        return "no reply within round-timeout"
    reason = check_train_reply(reply, expected) or count_problem(example_count(reply), pid, rules)
    if reason is None and rules.clipping_norm is not None:
        reason = check_clipped(reply, sent, rules.clipping_norm)
    return reason


def count_problem(count: int, pid: int, rules: ReplyRules) -> str | None:
    """Why a reply's example count cannot be its weight in the mean, or None. FedAvg weighs each
    update by the count its node claims: one node claiming 10^9 would outweigh every other node
    together. The server cut the shards, so it knows what each holds; a count that differs is
    dropped rather than corrected, since a node that lies about its count cannot be trusted
    with its weights either."""
    sizes = rules.shard_sizes
    if sizes is not None and 0 <= pid < len(sizes):
        if count != sizes[pid]:
            return f"{WEIGHTED_BY}={count}, but partition {pid}'s shard holds {sizes[pid]} images"
    elif rules.max_examples and count > rules.max_examples:
        return f"{WEIGHTED_BY}={count} is more than max-examples-per-node={rules.max_examples}"
    return None


def check_train_reply(reply: Message, expected: ArraySpec) -> str | None:
    """Why a training reply's arrays and metrics cannot be used, or None when they can."""
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
    norm, scale = _update_norm(reply, sent)
    tolerance = 1e-4 * clipping_norm + 4 * float(np.finfo(np.float32).eps) * scale
    if norm > clipping_norm + tolerance:
        return (
            f"its update has L2 norm {norm:.6g}, more than dp-clipping-norm={clipping_norm:g}: with "
            "dp-clipping='client' every node must clip its own update (is it running this app's ClientApp?)"
        )
    return None


def screen_updates(good: list[tuple[int, Message]], sent: ArrayRecord, factor: float) -> dict[int, str]:
    """The partitions whose update (weights minus those ``sent``) is more than ``factor`` times as
    long as the round's median update, with why. A scaled or boosted update stands out by its length
    whatever the strategy; an update as long as an honest one (a flipped sign) does not: that is
    for robust aggregation. Needs at least three replies to tell one out of line."""
    norms = {pid: _update_norm(reply, sent)[0] for pid, reply in good}
    median = float(np.median(list(norms.values()))) if norms else 0.0
    return {
        pid: f"its update's L2 norm {norm:.4g} is more than update-screen={factor:g} x the round's median {median:.4g}"
        for pid, norm in norms.items()
        if norm > factor * median
    }


def _update_norm(reply: Message, sent: ArrayRecord) -> tuple[float, float]:
    """The L2 norm of a reply's update, and that of the two weight vectors together (a scale for rounding)."""
    (record,) = reply.content.array_records.values()
    squared = 0.0
    scale = 0.0
    for name, arr in record.items():
        new = arr.numpy().astype(np.float64)
        old = sent[name].numpy().astype(np.float64)
        squared += float(np.sum((new - old) ** 2))
        scale += float(np.sum(new**2) + np.sum(old**2))
    return math.sqrt(squared), math.sqrt(scale)


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


def example_count(reply: Message) -> int:
    """The examples a reply that passed :func:`check_metrics` stands for."""
    (metrics,) = reply.content.metric_records.values()
    return int(metrics[WEIGHTED_BY])


def is_finite(arrays: ArrayRecord) -> bool:
    return all(np.isfinite(arr.numpy()).all() for arr in arrays.values())


def record_drop(
    server_round: int, attempt: int, phase: str, pid: int | None, node: int | None, reason: str
) -> dict[str, Any]:
    """What the history records of a dropped reply (``pid`` None: the whole round), logged once."""
    where = f"partition {pid} (node {node})" if pid is not None else "the round"
    log(WARNING, "Round %d (%s, attempt %d): dropped %s: %s", server_round, phase, attempt + 1, where, reason)
    return {
        "round": server_round,
        "phase": phase,
        "attempt": attempt + 1,
        "partition-id": pid,
        "node": node,
        "reason": reason,
    }
