"""Shared fixtures. MNIST is the real data set throughout (built once into the user cache)."""

from __future__ import annotations

import pytest

from task.config import Settings
from task.data import Mnist, load_mnist


@pytest.fixture(scope="session")
def mnist() -> Mnist:
    return load_mnist()


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def ray_lean_undone(monkeypatch):
    """What task.ray_lean.install() changes in this process, put back after the test: the Ray
    functions it wraps, and the malloc settings it puts in the environment (absent during the test)."""
    from task import flower_compat, ray_lean

    for piece in (*ray_lean.PIECES, ray_lean.ARROW_PIECE):
        holder, name = flower_compat.owner(piece)
        monkeypatch.setattr(holder, name, getattr(holder, name))
    monkeypatch.delenv(ray_lean.DISABLE_ENV, raising=False)
    for name in ray_lean.MALLOC_SETTINGS:
        monkeypatch.setenv(name, "")  # remembers what was there before the test ...
        monkeypatch.delenv(name)  # ... and the test starts without it
    return monkeypatch
