"""The three changes this project makes to Flower's simulation runtime, installed by the ServerApp.

With ``flwr run`` in simulation, the SuperLink starts one ``flwr-simulation`` process per run.
That process runs the ServerApp in a thread of its own and, in its main thread, loads the
ClientApp, starts Ray (``ray.init``), then starts the thread that hands messages to the virtual
clients. :func:`install` must come before both starts, and the ServerApp's ``main`` is the first
of this project's code Flower runs there: Flower loads the ServerApp before the ClientApp (the
ServerApp's thread starts first and both loads hold one import lock), and the ClientApp's load
then waits for the ServerApp's imports. Measured on 2 cores (10 and 100 nodes): ``main`` began
5-25 ms before the ClientApp's module had loaded, 0.6-0.8 s before ``ray.init`` built the
parameters of its Ray, and 5 s before the delivery thread started.

- :mod:`task.ray_lean`: the Ray starts without its monitor, log monitor and API server, passes the
  model in its messages, and malloc hands freed buffers back.
- :mod:`task.simulation_queue`: messages reach the virtual clients in one pass over the queue.
- :mod:`task.ray_pool`: actors that die with their Ray machine leave Flower's pool.

Each says in the log (the run folder's ``flower.log``) whether it is in place, or why not.
Anywhere else (a deployment's ServerApp process, tests that call ``main`` with a grid of their
own) :func:`install` does nothing.
"""

from __future__ import annotations

from typing import Any

from task import flower_compat, ray_lean, ray_pool, simulation_queue


def install(grid: Any) -> None:
    """Install the three changes if this ServerApp runs inside Flower's simulation (its ``grid`` is the
    simulation's in-memory grid, and the simulation runtime is loaded in this process)."""
    if flower_compat.loaded(simulation_queue.PIECE) is None:
        return  # not Flower's simulation process (asking does not load the runtime)
    if not isinstance(grid, flower_compat.resolve("InMemoryGrid")):
        return
    ray_lean.install()  # first: Ray starts before the delivery thread does
    simulation_queue.install()
    ray_pool.install()
