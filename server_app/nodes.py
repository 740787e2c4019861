"""Which shard each node holds, asked of the nodes before round 1.

Every node knows its own ``partition-id`` and ``num-partitions`` (set by the
simulation, or by ``flower-supernode --node-config``). The server asks them all
with one query message, so that the run folder records how MNIST was split and
a federation whose nodes disagree stops before anything is averaged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from task.config import ConfigError
from task.shards import NODE_RECORD, NUM_PARTITIONS, PARTITION_ID


class NodesUnavailable(RuntimeError):
    """Too few nodes connected, or they did not answer in time."""


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """The connected node ids once at least ``count`` are there; at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    announced = False
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise NodesUnavailable(
                f"only {len(nodes)} of the {count} nodes that min-available-nodes asks for connected within "
                f"{timeout:g} s: start more SuperNodes, or lower min-available-nodes."
            )
        if not announced:
            log(INFO, "Waiting for %d nodes to connect (%d so far)", count, len(nodes))
            announced = True
        time.sleep(1.0)
    return nodes


def ask_partitions(grid: Grid, node_ids: Iterable[int], timeout: float) -> dict[int, tuple[int, int]]:
    """``{node id: (partition-id, num-partitions)}`` for every node that answered."""
    messages = [
        Message(content=RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY) for node_id in node_ids
    ]
    answers: dict[int, tuple[int, int]] = {}
    errors: list[str] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            errors.append(f"node {node_id}: {reply.error.reason}")
            continue
        record = reply.content[NODE_RECORD]
        answers[node_id] = (int(record[PARTITION_ID]), int(record[NUM_PARTITIONS]))
    if errors:
        raise ConfigError("nodes could not say which shard they hold: " + "; ".join(errors))
    return answers


def check_partitions(answers: dict[int, tuple[int, int]]) -> int:
    """The federation's ``num-partitions``, once the nodes are found to agree.

    Nodes that claim the same partition would train on the same images; nodes with
    different ``num-partitions`` cut overlapping shards: both stop the run, naming
    the nodes. Partitions that no node holds are allowed (a deployment may run
    fewer nodes than shards) and logged.
    """
    if not answers:
        raise NodesUnavailable("no node answered the question which shard it holds.")
    counts = sorted({n for _, n in answers.values()})
    if len(counts) > 1:
        by_count = {c: sorted(node for node, (_, n) in answers.items() if n == c) for c in counts}
        shown = "; ".join(f"num-partitions={c} on node(s) {', '.join(map(str, ids))}" for c, ids in by_count.items())
        raise ConfigError(
            f"the nodes disagree on how MNIST is split ({shown}): give every SuperNode the same "
            "num-partitions in --node-config."
        )
    num_partitions = counts[0]
    holders: dict[int, list[int]] = {}
    for node, (pid, _) in sorted(answers.items()):
        holders.setdefault(pid, []).append(node)
    shared = {pid: nodes for pid, nodes in holders.items() if len(nodes) > 1}
    if shared:
        shown = "; ".join(f"partition-id={pid} on nodes {', '.join(map(str, n))}" for pid, n in sorted(shared.items()))
        raise ConfigError(
            f"several nodes hold the same shard ({shown}), so they would train on the same images: "
            "give each SuperNode its own partition-id in --node-config."
        )
    missing = sorted(set(range(num_partitions)) - set(holders))
    if missing:
        log(WARNING, "No node holds partition(s) %s of %d: those images take no part", missing, num_partitions)
    return num_partitions
