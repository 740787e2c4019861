"""Which shard each node holds, asked of the nodes before round 1.

Every node knows its own ``partition-id`` and ``num-partitions`` (set by the
simulation, or by ``flower-supernode --node-config``). The server asks them all
with one query message, so that the run folder records how MNIST was split and
a federation whose nodes disagree stops before anything is averaged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from logging import ERROR, INFO, WARNING

from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from task.errors import ConfigError
from task.node_config import NUM_PARTITIONS, PARTITION_ID
from task.shards import NODE_RECORD


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


def node_error(reply: Message) -> str:
    """A node's error in one line. Flower's simulation wraps the ClientApp's exception
    in Ray's traceback; the exception's own message is at its end. A node the SuperLink
    stopped hearing from gets its reply from the SuperLink itself, with its own code."""
    from task.flower_compat import ErrorCode

    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        return "the node left the federation before replying (the SuperLink stopped receiving its heartbeats)"
    reason = reply.error.reason
    found = re.findall(r"Exception ClientAppException occurred\. Message: (.*?)'?>?\s*$", reason, flags=re.S)
    return f"the node failed: {(found[-1] if found else reason).strip()}"


def ask_partitions(
    grid: Grid, node_ids: Iterable[int], timeout: float
) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """``{node id: (partition-id, num-partitions)}`` for the nodes that answered, and
    ``{node id: why not}`` for those that could not (e.g. no partition in their node config)."""
    node_ids = list(node_ids)
    messages = [
        Message(content=RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY) for node_id in node_ids
    ]
    answers: dict[int, tuple[int, int]] = {}
    errors: dict[int, str] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            errors[node_id] = node_error(reply)
            continue
        record = reply.content[NODE_RECORD]
        answers[node_id] = (int(record[PARTITION_ID]), int(record[NUM_PARTITIONS]))
    for node_id in set(node_ids) - set(answers) - set(errors):
        errors[node_id] = f"no answer within {timeout:g} s"
    return answers, errors


class NodeBook:
    """Which connected node holds which partition, kept up to date round by round.

    Before round 1 (:meth:`start`) the nodes must agree: duplicates and mismatched
    ``num-partitions`` stop the run. Nodes that join later are asked when they appear,
    and so is a node that left and came back: a SuperNode restarted after a crash
    returns with a new node id, or with the same one where the id follows its
    registered key (SuperNode authentication), and may have been restarted with
    another ``--node-config``. One that cannot say is left out with an error in the
    log, and the run goes on with the others; one that claims a shard a connected node
    still holds waits until that node is gone.
    """

    def __init__(self) -> None:
        self.partition_of: dict[int, tuple[int, int]] = {}
        self.refused: dict[int, str] = {}
        self.connected: dict[int, int] = {}  # partition id -> node id, connected nodes only
        self.num_partitions = 0

    def start(self, grid: Grid, node_ids: list[int], timeout: float) -> int:
        answers, errors = ask_partitions(grid, node_ids, timeout)
        self._refuse(errors)
        self.num_partitions = check_partitions(answers)
        self.partition_of.update(answers)
        self.connected = {pid: node for node, (pid, _) in answers.items()}
        return self.num_partitions

    def refresh(self, grid: Grid, timeout: float) -> None:
        """Forget nodes that left (what they said too); ask and admit the ones that joined or came back."""
        online = set(grid.get_node_ids())
        for node in sorted(set(self.partition_of) - online):
            if node in self.connected.values():
                log(WARNING, "Node %d (partition %d) left the federation", node, self.partition_of[node][0])
            del self.partition_of[node]
        for node in sorted(set(self.refused) - online):
            del self.refused[node]
        self.connected = {pid: node for pid, node in self.connected.items() if node in online}
        new = sorted(online - set(self.partition_of) - set(self.refused))
        if not new:
            return
        answers, errors = ask_partitions(grid, new, timeout)
        self._refuse(errors)
        for node, (pid, n) in sorted(answers.items()):
            self.partition_of[node] = (pid, n)
            if n != self.num_partitions or not 0 <= pid < n:
                self._refuse({node: f"num-partitions={n} disagrees with the run's {self.num_partitions}"})
            elif pid in self.connected and self.connected[pid] != node:
                # Perhaps a restarted node whose old self the SuperLink has not yet let go: ask again next round.
                log(
                    WARNING,
                    "Node %d holds partition %d, still held by node %d: not used yet",
                    node,
                    pid,
                    self.connected[pid],
                )
                del self.partition_of[node]
            else:
                log(INFO, "Node %d joined with partition %d", node, pid)
                self.connected[pid] = node

    def available(self) -> list[int]:
        """Partition ids held by connected nodes."""
        return sorted(self.connected)

    def node_of(self, partition_id: int) -> int:
        return self.connected.get(partition_id, -1)

    def _refuse(self, errors: dict[int, str]) -> None:
        for node, reason in errors.items():
            log(ERROR, "Node %d is left out of the run: %s", node, reason)
            self.refused[node] = reason


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
