"""How a round's messages reach the nodes and their replies come back.

The strategy writes the messages (its config, and what it must remember to aggregate); this
module sends them to the nodes holding the chosen partitions and hands the replies back by
partition id, either all at once (:meth:`Transport.ask`) or one at a time as they arrive
(:meth:`Transport.stream`). A node that does not answer within ``round-timeout`` gets None.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server_app.nodes import NodeBook

# How often a round asks the SuperLink for replies. Flower's HTTP grid waits 3 s between asks, so a
# deployed round ended up to 3 s after its last reply; an ask is one small request to the SuperLink.
REPLY_POLL_S = 0.2


class Transport:
    """Sends a strategy's messages to the nodes of chosen partitions and collects the replies."""

    def __init__(self, strategy: Strategy, book: NodeBook, round_timeout: float) -> None:
        self.strategy = strategy
        self.book = book
        self.round_timeout = round_timeout
        hide_flowers_round_lines()

    def ask(
        self, grid: Grid, kind: str, partitions: list[int], server_round: int, arrays: ArrayRecord
    ) -> dict[int, Message | None]:
        """Send to the nodes holding ``partitions``; their replies by partition id, in
        partition order (None where no reply came within ``round-timeout``)."""
        if pullable(grid):
            got = dict(self.stream(grid, kind, partitions, server_round, arrays))
            return {p: got[p] for p in partitions}
        messages = self.configure(kind, partitions, server_round, arrays, by_partition=False)
        replies = list(grid.send_and_receive(messages, timeout=self.round_timeout))
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        asked = {m.metadata.dst_node_id for m in messages}
        by_node = {replier(reply, asked, sent): reply for reply in replies}
        return {p: by_node.get(self.book.node_of(p)) for p in partitions}

    def stream(
        self, grid: Grid, kind: str, partitions: list[int], server_round: int, arrays: ArrayRecord
    ) -> Iterator[tuple[int, Message | None]]:
        """What :meth:`ask` gives, one ``(partition id, reply)`` at a time as the replies come
        in (then ``(partition id, None)`` for each node that did not reply within
        ``round-timeout``); a second reply for the same node is ignored. Messages are sent
        in partition order, so that replies tend to come in the order they are averaged in."""
        messages = self.configure(kind, partitions, server_round, arrays, by_partition=True)
        pid_of = {self.book.node_of(p): p for p in partitions}
        ids = list(grid.push_messages(messages))
        sent = {mid: m.metadata.dst_node_id for m, mid in zip(messages, ids) if mid}
        asked = {m.metadata.dst_node_id for m in messages}
        del messages
        waiting = set(sent)
        answered: set[int] = set()
        interval = min(float(getattr(grid, "pull_interval", REPLY_POLL_S)), REPLY_POLL_S)  # simulation's: 0.1 s
        deadline = time.time() + self.round_timeout
        while waiting and time.time() < deadline:
            replies = list(grid.pull_messages(waiting))
            for reply in replies:
                waiting.discard(reply.metadata.reply_to_message_id)
                node = replier(reply, asked, sent)
                if node in pid_of and node not in answered:
                    answered.add(node)
                    yield pid_of[node], reply
            del replies
            if waiting:
                time.sleep(interval)
        for p in partitions:
            if self.book.node_of(p) not in answered:
                yield p, None

    def configure(
        self, kind: str, partitions: list[int], server_round: int, arrays: ArrayRecord, by_partition: bool
    ) -> list[Message]:
        """The strategy's messages to the nodes holding ``partitions`` (it writes their config:
        server-round, FedProx's proximal-mu, ...; and remembers the arrays it sent: FedOpt, FedAvgM
        and DP clipping need them to aggregate), in partition or node-id order; logs the round's line."""
        chosen = ChosenNodes([self.book.node_of(p) for p in partitions])
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


def pullable(grid: Grid) -> bool:
    """Whether replies can be pulled before every reply is in (Flower's own grids can)."""
    return callable(getattr(grid, "push_messages", None)) and callable(getattr(grid, "pull_messages", None))


def replier(reply: Message, asked: set[int], sent: dict[str, int]) -> int:
    """The node a reply stands for. A reply the SuperLink writes for a node it lost comes from the
    SuperLink, not the node: it is matched by the message it answers (whose id the grid set
    when it was sent)."""
    node = reply.metadata.src_node_id
    return node if node in asked else sent.get(reply.metadata.reply_to_message_id, node)


class ChosenNodes:
    """A view of the Grid that shows a strategy only the nodes chosen for this round."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


class _HideFlowersRoundLines(logging.Filter):
    """Flower's strategies log "Sampled N nodes (out of N)" of the grid they are shown, which
    here is only the nodes the round already chose, and "Received N results and 0 failures" of
    the replies they are given, which here are only those that passed the checks: both would
    mislead. The round's own lines ("train on 1 of 3 available node(s)", "averaging 9 training
    replies, 1 dropped") say it instead."""

    HIDDEN = ("configure_train: Sampled", "configure_evaluate: Sampled", "aggregate_train: Received")
    HIDDEN += ("aggregate_evaluate: Received",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.HIDDEN)


def hide_flowers_round_lines() -> None:
    """Installs the filter on Flower's logger, once."""
    flower = logging.getLogger("flwr")
    if not any(isinstance(f, _HideFlowersRoundLines) for f in flower.filters):
        flower.addFilter(_HideFlowersRoundLines())
