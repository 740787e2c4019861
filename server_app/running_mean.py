"""The mean of a round's training replies, folded in as they arrive.

With plain FedAvg or FedProx on a real Flower grid a round holds a running sum, not every
reply: the same arithmetic in the same order as Flower's ``aggregate_train``, so the same
bytes, whenever every sampled node's reply is good and counts the examples its shard holds.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict


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


class MetricsOnly:
    """What is kept of a good training reply once its arrays are in the running sum: its metrics."""

    def __init__(self, reply: Message) -> None:
        (metrics,) = reply.content.metric_records.values()
        self.content = RecordDict({"metrics": metrics})
        self.metadata = reply.metadata
