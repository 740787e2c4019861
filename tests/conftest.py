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
