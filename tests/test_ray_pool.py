"""Actors that die leave Flower's pool (task/ray_pool.py), on a real Ray started here, with
Flower's own BasicActorPool driven as its Ray backend drives it. Killing an actor with
``ray.kill`` gives the ActorDiedError a dead machine's actors give; the two-machine run is in
tests/test_ray_two_nodes.py."""

from __future__ import annotations

import inspect
import threading
import time

import pytest

from task import flower_compat, ray_pool

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
POOL, _ = flower_compat.owner("actor_pool_submit")


@ray.remote
class Echo:
    def run(self, text: str) -> tuple[None, str, None]:
        if text == "boom":
            raise ValueError("the ClientApp raised")
        return None, text, None


def ask(actor, _app_fn, message, _cid, _context):
    return actor.run.remote(message)


def answer(pool, text: str):
    """What Flower's RayBackend.process_message does with the pool: submit, fetch, and on any
    error put the actor back before raising."""
    future = pool.submit(ask, (None, text, "0", None))
    try:
        return pool.fetch_result_and_return_actor_to_pool(future)[0]
    except Exception:
        pool.add_actor_back_to_pool(future)
        raise


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def pool(cluster, monkeypatch):
    for name in ("submit", "add_actor_back_to_pool"):  # Flower's own, put back after the test
        monkeypatch.setattr(POOL, name, getattr(POOL, name))
    assert ray_pool.install()
    made = POOL(Echo, {"num_cpus": 1}, {})
    made.add_actors_to_pool(2)
    yield made
    for actor in made.pool:
        ray.kill(actor)


def test_a_dead_actor_leaves_the_pool_and_the_next_message_goes_to_a_live_one(pool):
    victim = pool.pool[-1]  # the one the next message takes
    ray.kill(victim)
    with pytest.raises(ray.exceptions.ActorDiedError):
        answer(pool, "to the dead one")
    assert pool.num_actors == 1 and victim not in pool.pool and len(pool.pool) == 1
    assert answer(pool, "hello") == "hello"
    assert answer(pool, "again") == "again"


def test_an_actor_whose_clientapp_raised_stays(pool):
    with pytest.raises(ray.exceptions.RayTaskError):
        answer(pool, "boom")
    assert pool.num_actors == 2 and len(pool.pool) == 2


def test_the_last_actor_is_kept_even_dead(pool):
    for actor in list(pool.pool):
        ray.kill(actor)
    for _ in range(3):
        with pytest.raises(ray.exceptions.ActorDiedError):
            answer(pool, "nobody")
    assert pool.num_actors == 1 and len(pool.pool) == 1


def test_a_message_waits_for_a_busy_actor_instead_of_failing(pool):
    busy = [pool.pool.pop(), pool.pool.pop()]  # both taken by other messages
    threading.Timer(0.3, lambda: pool.pool.append(busy.pop())).start()
    started = time.monotonic()
    assert answer(pool, "waited") == "waited"
    assert time.monotonic() - started >= 0.25
    pool.pool.extend(busy)


def test_the_pool_still_keeps_what_is_read_by_name():
    source = inspect.getsource(POOL)
    for name in ("self.pool", "self.num_actors", "self._future_to_actor"):
        assert name in source, f"Flower's BasicActorPool no longer has {name}: task/ray_pool.py reads it"
