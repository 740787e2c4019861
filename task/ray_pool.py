"""A Ray machine that dies takes its virtual-client actors out of Flower's pool.

Flower 1.41's Ray backend keeps a pool of actors, one per client slot of the cluster, and puts an
actor back into it after any error, even one saying the actor is gone with its machine
(``ray.exceptions.ActorDiedError``, or ``ActorUnavailableError``: Flower's actors are never
restarted). On a cluster that lost a machine, every later message handed to one of its actors then
fails at once, and every later round loses the clients sent there. Here:

- an actor whose message failed because it is gone is left out of the pool, said once per actor in
  the log; the last actor is always kept, so that a pool never empties (its messages then fail, as
  before, instead of waiting for ever);
- a message that finds every remaining actor busy waits for one, where Flower's pool would raise:
  Flower starts one thread per actor it made, so there can be more threads than live actors.

The message that met the dead actor still fails, and is recorded as any failed reply is; the
rounds after it train on the machines that are left. The two methods replaced are not Flower's
public API: they are listed in :mod:`task.flower_compat` (pieces in :data:`PIECES`).
:mod:`task.simulation_patches` calls :func:`install` in Flower's simulation process.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Any

from flwr.common import log

from task import flower_compat

PIECES = ("actor_pool_submit", "actor_pool_add_back")  # the pieces of task.flower_compat replaced here
WAIT_S = 0.05  # how often a message waiting for an actor looks again
_MARK = "_fedmnist_drops_dead"


def gone(future: Any) -> bool:
    """Whether ``future`` (a finished actor call) failed because its actor is gone for good."""
    import ray

    try:
        ray.get(future, timeout=0)
    except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError):
        return True
    except Exception:  # (the ClientApp's own error, or not finished: the actor lives)
        return False
    return False


def install() -> bool:
    """Put the two methods in place in this process's Flower; log what was done. True if in place."""
    try:
        (pool_class, submit), (_, add_back) = (flower_compat.owner(name) for name in PIECES)
    except flower_compat.MissingFlowerPiece as exc:
        log(WARNING, "Simulation: a Ray machine's dead actors stay in Flower's pool: %s", exc)
        return False
    if getattr(getattr(pool_class, submit), _MARK, False):
        return True
    setattr(pool_class, submit, _waiting_submit(getattr(pool_class, submit)))
    setattr(pool_class, add_back, _add_back_unless_gone(getattr(pool_class, add_back)))
    log(INFO, "Simulation: actors that die with their Ray machine leave the pool (task/ray_pool.py)")
    return True


def _waiting_submit(submit: Any) -> Any:
    def waiting_submit(self: Any, actor_fn: Any, job: Any) -> Any:
        while True:
            if self.pool:
                try:
                    return submit(self, actor_fn, job)
                except IndexError:  # another thread took the last idle actor first
                    pass
            time.sleep(WAIT_S)

    setattr(waiting_submit, _MARK, True)
    return waiting_submit


def _add_back_unless_gone(add_back: Any) -> Any:
    def add_back_unless_gone(self: Any, future: Any) -> None:
        alive = self.num_actors
        if alive > 1 and gone(future):
            self._future_to_actor.pop(future)
            self.num_actors = alive - 1
            log(WARNING, "A Ray actor died with its machine: %d client slot(s) left in the pool", alive - 1)
            return
        add_back(self, future)

    return add_back_unless_gone
