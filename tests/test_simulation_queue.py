"""The one-pass delivery that replaces Flower 1.41's per-node scan in its simulation
runtime: the same messages reach the same nodes, pass by pass, on Flower's own
in-memory state; it is put in place only where Flower's simulation runtime is loaded, and it
says in the log what it did, or why it stayed out."""

from __future__ import annotations

import queue
import sys
import threading

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from task import flower_compat, simulation_queue
from task.flower_compat import (  # Flower's simulation internals, listed there
    FLWR_IN_MEMORY_DB_NAME,
    NOOP_FEDERATION_ID,
    RUN_ID_NUM_BYTES,
    SUPERLINK_NODE_ID,
    TASK_ID_NUM_BYTES,
    InMemoryGrid,
    LinkStateFactory,
    NoOpFederationManager,
    ObjectStoreFactory,
    Run,
    RunRecord,
    Task,
    TaskIdentity,
    generate_rand_int_from_bytes,
    register_nodes,
    vce_api,
)
from task.simulation_queue import add_messages_to_queue, install, take_undelivered

VCE_MODULE = flower_compat.PIECES[simulation_queue.PIECE].module


def _federation(num_nodes: int, sends: list[int]):
    """Flower's own in-memory state and grid, as its simulation sets them up, with one
    message pushed to the n-th node for every n in ``sends`` (in that order)."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    # messages take their sender from the task identity, as in Flower's simulation process
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run.run_id, SUPERLINK_NODE_ID, run.primary_task_id
    state = factory.state()
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    nodes = list(register_nodes(num_nodes, factory))
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    messages = [
        Message(RecordDict({"c": ConfigRecord({"seq": seq})}), dst_node_id=nodes[n], message_type=MessageType.TRAIN)
        for seq, n in enumerate(sends)
    ]
    assert len(list(grid.push_messages(messages))) == len(sends)
    return state, nodes


def _seen(messages) -> list[tuple[int, int]]:
    return sorted((m.metadata.dst_node_id, int(m.content["c"]["seq"])) for m in messages)


def _flower_pass(state, nodes):
    """What one pass of Flower's own add_messages_to_queue takes from the state."""
    return [m for node in nodes for m in state.get_message_ins(node_id=node, limit=1)]


def test_one_pass_delivers_what_flowers_per_node_scan_delivers_pass_by_pass():
    sends = [0, 1, 2, 0, 0, 3, 1, 7, 7, 2, 9]  # several messages for some nodes, none for others
    flower_state, flower_nodes = _federation(10, sends)
    ours_state, ours_nodes = _federation(10, sends)
    for _ in range(4):  # node 0 holds three messages: three passes, then nothing
        flower = sorted((flower_nodes.index(n), s) for n, s in _seen(_flower_pass(flower_state, flower_nodes)))
        ours = sorted((ours_nodes.index(n), s) for n, s in _seen(take_undelivered(ours_state, ours_nodes)))
        assert ours == flower
    assert ours == []


def test_delivered_messages_are_stamped_and_other_nodes_messages_stay_queued():
    state, nodes = _federation(4, [0, 1, 2, 3])
    taken = take_undelivered(state, nodes[:2])
    assert _seen(taken) == sorted([(nodes[0], 0), (nodes[1], 1)])
    assert all(m.metadata.delivered_at for m in taken)
    assert _seen(take_undelivered(state, nodes)) == sorted([(nodes[2], 2), (nodes[3], 3)])


def test_the_loop_feeds_the_queue_until_stopped():
    state, nodes = _federation(3, [0, 1, 2, 1])
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(
        target=add_messages_to_queue, args=(state, out, {n: i for i, n in enumerate(nodes)}, stop)
    )
    thread.start()
    got = [out.get(timeout=10) for _ in range(4)]
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert _seen(got) == sorted([(nodes[0], 0), (nodes[1], 1), (nodes[2], 2), (nodes[1], 3)])


@pytest.fixture
def flowers_loop(monkeypatch):
    """Flower's own loop in vce_api, put back after the test (install replaces it)."""
    original = vce_api.add_messages_to_queue
    monkeypatch.setattr(vce_api, "add_messages_to_queue", original)
    monkeypatch.delenv(simulation_queue.DISABLE_ENV, raising=False)
    return original


def test_install_replaces_flowers_loop_only_where_the_simulation_runtime_is_loaded(flowers_loop, monkeypatch, caplog):
    monkeypatch.delitem(sys.modules, VCE_MODULE)
    assert install() is False and vce_api.add_messages_to_queue is flowers_loop
    assert caplog.text == ""  # not the simulation: nothing to say
    monkeypatch.setitem(sys.modules, VCE_MODULE, vce_api)
    assert install() is True and vce_api.add_messages_to_queue is add_messages_to_queue
    assert install() is True  # twice is harmless, and said once
    assert caplog.text.count("messages reach the virtual clients in one pass") == 1


def test_install_can_be_turned_off_to_measure_flowers_own_loop(flowers_loop, monkeypatch, caplog):
    monkeypatch.setenv(simulation_queue.DISABLE_ENV, "1")
    assert install() is False and vce_api.add_messages_to_queue is flowers_loop
    assert f"Flower's own message delivery kept ({simulation_queue.DISABLE_ENV}=1)" in caplog.text


def test_install_leaves_other_flower_versions_alone_and_says_so(flowers_loop, monkeypatch, caplog):
    monkeypatch.setitem(flower_compat.CHECKED_WITH, "flwr", "1.40.0")
    assert install() is False and vce_api.add_messages_to_queue is flowers_loop
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "Flower 1.41.0 is not the 1.40.0 that piece(s) add_messages_to_queue" in record.getMessage()


def test_install_leaves_a_loop_with_other_parameters_alone_and_says_so(flowers_loop, monkeypatch, caplog):
    def five_parameters(state, queue, nodes_mapping, f_stop, metrics):  # a later Flower's loop, say
        pass

    monkeypatch.setattr(vce_api, "add_messages_to_queue", five_parameters)
    assert install() is False and vce_api.add_messages_to_queue is five_parameters
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "piece 'add_messages_to_queue'" in record.getMessage()
    assert "(state, queue, nodes_mapping, f_stop, metrics)" in record.getMessage()


@pytest.mark.parametrize("num_nodes", [2000])
def test_a_pass_over_many_idle_nodes_costs_one_scan(num_nodes):
    """Flower's scan asks every stored message once per node; ours once per pass."""
    state, nodes = _federation(num_nodes, list(range(0, num_nodes, 10)))
    calls = {"n": 0}
    check = state._check_stored_messages

    def counting(ids, run_id=None):
        calls["n"] += len(ids)
        return check(ids, run_id)

    state._check_stored_messages = counting
    taken = take_undelivered(state, nodes)
    assert len(taken) == num_nodes // 10
    assert calls["n"] == num_nodes // 10
