"""Where the report trains, and with how many CPU threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from task.config import Settings
from task.training import pick_device


def report_device(settings: Settings, override: str | None = None) -> torch.device:
    """The run's ``device`` knob unless the caller names another ("cpu", "cuda", "auto")."""
    return pick_device(override or settings.device)


@contextmanager
def small_batch_threads(device: torch.device) -> Iterator[None]:
    """One CPU thread while training: with batches of ten images the threads spend
    more time handing work over than computing (5-10x slower on a shared 2-core CPU)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
