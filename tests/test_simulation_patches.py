"""task.simulation_patches: the ServerApp installs the simulation's two changes first thing in its
main, only inside Flower's simulation, and each says so once in the log."""

from __future__ import annotations

import sys

import pytest
from flwr.app import Context, RecordDict

from task import flower_compat, ray_lean, ray_pool, simulation_patches, simulation_queue
from task.flower_compat import (
    FLWR_IN_MEMORY_DB_NAME,
    InMemoryGrid,
    LinkStateFactory,
    NoOpFederationManager,
    ObjectStoreFactory,
    vce_api,
)

RAY_PARAMS, _ = flower_compat.owner(ray_lean.PIECES[0])
POOL, _ = flower_compat.owner(ray_pool.PIECES[0])
LINES = (
    "Simulation: Ray starts without its monitor, log monitor and API server",
    "Simulation: messages reach the virtual clients in one pass over the queue",
    "Simulation: actors that die with their Ray machine leave the pool",
)


@pytest.fixture
def untouched(ray_lean_undone):
    """Flower's loop and Ray's functions put back after the test; the simulation runtime loaded."""
    monkeypatch = ray_lean_undone
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    monkeypatch.setattr(POOL, "submit", POOL.submit)
    monkeypatch.setattr(POOL, "add_actor_back_to_pool", POOL.add_actor_back_to_pool)
    monkeypatch.setitem(sys.modules, flower_compat.PIECES[simulation_queue.PIECE].module, vce_api)
    monkeypatch.delenv(simulation_queue.DISABLE_ENV, raising=False)
    return monkeypatch


def _simulation_grid():
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    return InMemoryGrid(state_factory=factory)


def _installed() -> list[bool]:
    return [
        getattr(RAY_PARAMS.__init__, "__wrapped__", None) is not None,
        vce_api.add_messages_to_queue is simulation_queue.add_messages_to_queue,
        getattr(POOL.submit, "_fedmnist_drops_dead", False),
    ]


def test_in_the_simulation_all_three_are_installed_ray_first_and_each_says_so_once(untouched, caplog):
    grid = _simulation_grid()
    caplog.clear()
    simulation_patches.install(grid)
    simulation_patches.install(grid)
    assert _installed() == [True, True, True]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3 and all(m.startswith(line) for m, line in zip(messages, LINES))


def test_a_serverapp_given_another_grid_changes_nothing(untouched, caplog):
    simulation_patches.install(object())  # a deployment's grid, or a test's
    assert _installed() == [False, False, False] and caplog.text == ""


def test_a_process_without_the_simulation_runtime_changes_nothing(untouched, caplog):
    grid = _simulation_grid()
    untouched.delitem(sys.modules, flower_compat.PIECES[simulation_queue.PIECE].module)
    caplog.clear()
    simulation_patches.install(grid)
    assert _installed() == [False, False, False] and caplog.text == ""


def test_the_serverapp_installs_them_before_anything_else(monkeypatch):
    """Before it reads its config or loads MNIST: Flower starts Ray soon after main begins."""
    from server_app import app as server_app

    class Installed(Exception):
        pass

    def install(grid):
        raise Installed(grid)

    monkeypatch.setattr(simulation_patches, "install", install)
    grid = object()
    with pytest.raises(Installed) as caught:
        server_app.main(grid, Context(1, 0, {}, RecordDict(), {"num-server-rounds": "not a number"}))
    assert caught.value.args == (grid,)
