"""The project's ServerApp rounds and ClientApp in one process, without Ray or a SuperLink.

:class:`LoopbackGrid` is a Flower ``Grid`` whose nodes are the real ClientApp
(``client_app.app``) called in this process, one message at a time, as Flower's runtime calls
it; :func:`run_rounds` drives the ServerApp's own round code (:class:`server_app.rounds.RoundRunner`:
the node book, the reply checks, the screen, Flower's strategy) and tests the global model on the
server after every round, as the ServerApp does. What it leaves out is transport: messages
never leave the process, so a round costs its training and averaging only. The benchmarks
use it to run many settings quickly; a cell checked against a real Flower run gives the same
accuracy (RESULTS.md says which).
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict

from client_app.app import app as client_app
from server_app.nodes import NodeBook
from server_app.rounds import RoundRunner
from server_app.strategy import check_fits
from task.config import Settings
from task.flower_compat import ErrorCode, TaskIdentity
from task.models import build_model
from task.shards import server_test_set, train_shards
from task.training import evaluate, set_weights

SERVER_NODE = 0  # the ServerApp's node id, as in Flower's runtime
FIRST_NODE = 1000  # node ids of the partitions: FIRST_NODE + partition id


class LoopbackGrid:
    """A Grid of ``num_nodes`` nodes in this process, node ``FIRST_NODE + p`` holding partition ``p``."""

    def __init__(self, run_config: dict, num_nodes: int) -> None:
        self.contexts = {
            FIRST_NODE + p: Context(
                run_id=1,
                node_id=FIRST_NODE + p,
                node_config={"partition-id": p, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for p in range(num_nodes)
        }

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        return [self._deliver(message) for message in messages]

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        TaskIdentity.node_id = node  # the reply comes from the node, as in Flower's runtime
        try:
            return client_app(message, self.contexts[node])
        except Exception as exc:  # what Flower's runtime sends for a ClientApp that raised
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=message)
        finally:
            TaskIdentity.node_id = SERVER_NODE


def run_rounds(run_config: dict, num_nodes: int, echo=None) -> dict:
    """The run's rounds on a :class:`LoopbackGrid`: the server's test metric after each round,
    every dropped reply, and the seconds each round took."""
    torch.set_num_threads(1)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE, 1
    settings = Settings.from_run_config(run_config)
    grid = LoopbackGrid(settings.to_run_config(), num_nodes)
    book = NodeBook()
    num_partitions = book.start(grid, grid.get_node_ids(), timeout=60)
    check_fits(settings, len(book.available()))
    sizes = [len(shard) for shard in train_shards(settings, num_partitions)]
    runner = RoundRunner(settings, book, expected_examples=sizes)
    model = build_model(settings)
    test_set = server_test_set(settings)
    device = torch.device("cpu")
    arrays = ArrayRecord(model.state_dict())
    key = settings.objective.key
    by_round, failures, seconds = [], [], []
    for server_round in range(1, settings.num_server_rounds + 1):
        started = time.monotonic()
        trained = runner.train(grid, server_round, arrays)
        arrays = trained.arrays
        seconds.append(time.monotonic() - started)
        failures += trained.failures
        set_weights(model, arrays.to_numpy_ndarrays())
        by_round.append(evaluate(model, test_set, device, settings.objective)[key])
        if echo:
            echo(f"  round {server_round}: {key} {by_round[-1]:.4f}, {len(trained.failures)} dropped")
    return {"metric": key, "by-round": by_round, "failures": failures, "seconds-per-round": seconds}
