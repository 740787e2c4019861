"""Flower 1.41's simulation hands messages to the virtual clients in one pass, not one per node.

In the simulation process a thread of Flower's runtime (``add_messages_to_queue``
in ``flwr.server.superlink.fleet.vce.vce_api``) wakes every 0.1 s and asks the
in-memory state for one undelivered message *per registered node*; each ask
scans *every* stored message and re-checks it (a lock, the clock, its TTL, the
federation). With N nodes and M messages in flight that is N x M checks per
pass: with 100 nodes and 100 messages the thread kept about half a core busy
for the whole round on a 2-core machine, CPU taken from the clients' training,
and with 10,000 nodes a pass would take longer than a round.

:func:`add_messages_to_queue` below delivers exactly what Flower's does (at
most one undelivered message per node per pass, the same validity checks, the
same ``delivered_at`` stamp) in one scan of the stored messages: M checks per
pass. :func:`install` puts it in place of Flower's, for the Flower minor version it
was written against; on another it leaves Flower's loop and says so in the log.
``FEDMNIST_FLOWER_DELIVERY=1`` in the environment keeps Flower's own (to measure the
difference). :mod:`task.simulation_patches` calls :func:`install` in Flower's
simulation process, before the loop starts.

Flower's loop, and the attributes of its in-memory state read here, are not Flower's public
API: both are listed in :mod:`task.flower_compat` (piece ``add_messages_to_queue``, and
``InMemoryLinkState`` in its ``ATTRIBUTES``), where tests/test_flower_compat.py checks them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from logging import INFO, WARNING
from queue import Queue
from typing import Any

from flwr.common import log

from task import flower_compat

PIECE = "add_messages_to_queue"  # the piece of task.flower_compat this replaces
DISABLE_ENV = "FEDMNIST_FLOWER_DELIVERY"  # =1: keep Flower's own loop (to measure the difference)
POLL_S = 0.1  # as Flower's own loop


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """Drop-in for Flower's ``add_messages_to_queue``: same arguments, same deliveries."""
    nodes = set(nodes_mapping)
    while not f_stop.is_set():
        for message in take_undelivered(state, nodes):
            queue.put(message)
        f_stop.wait(POLL_S)


def take_undelivered(state: Any, nodes: Iterable[int]) -> list:
    """At most one undelivered message per node in ``nodes``, oldest first, stamped as
    delivered; expired or invalid messages are dropped on the way, as Flower does."""
    from flwr.common import now

    nodes = set(nodes)
    store = getattr(state, "message_ins_store", None)
    if store is None or not hasattr(state, "_check_stored_messages"):  # not the in-memory state: ask per node
        return [m for node in nodes for m in state.get_message_ins(node_id=node, limit=1)]
    taken: list = []
    served: set[int] = set()
    with state.lock:
        ids = list(store.keys())
        state._check_stored_messages(set(ids))  # TTL and federation checks, once per message
        for msg_id in ids:
            message = store.get(msg_id)
            if message is None:
                continue
            meta = message.metadata
            node = meta.dst_node_id
            if node in nodes and node not in served and meta.delivered_at == "":
                taken.append(message)
                served.add(node)
    delivered_at = now().isoformat()
    for message in taken:
        message.metadata.delivered_at = delivered_at
    return taken


def install() -> bool:
    """Put :func:`add_messages_to_queue` in place of Flower's loop, in a process where Flower's
    simulation runtime is loaded; log once what was done. True if in place."""
    vce_api = flower_compat.loaded(PIECE)  # never imports it: only where Flower has loaded it
    if vce_api is None:
        return False
    if getattr(vce_api, flower_compat.PIECES[PIECE].attr, None) is add_messages_to_queue:
        return True
    if os.environ.get(DISABLE_ENV) == "1":
        log(INFO, "Simulation: Flower's own message delivery kept (%s=1)", DISABLE_ENV)
        return False
    wrong = flower_compat.version_mismatch("flwr", PIECE)
    if wrong:
        log(WARNING, "Simulation: Flower's own message delivery kept: %s", wrong)
        return False
    try:
        holder, attr = flower_compat.owner(PIECE)
    except flower_compat.MissingFlowerPiece as exc:
        log(WARNING, "Simulation: Flower's own message delivery kept: %s", exc)
        return False
    setattr(holder, attr, add_messages_to_queue)
    log(INFO, "Simulation: messages reach the virtual clients in one pass over the queue (task/simulation_queue.py)")
    return True
