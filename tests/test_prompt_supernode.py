"""The SuperNode's fixed 3 s sleep after an empty pull, shortened through the piece that
task/flower_compat.py lists: still where Flower 1.41 has it, and only that sleep shorter."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time

import pytest

from launcher.prompt_supernode import FLOWER_IDLE_SLEEP_S, IdleSleep, install
from task.flower_compat import PIECES, owner


def test_the_sleep_is_still_the_one_after_a_pull_that_found_no_message():
    module, name = owner("supernode_loop_time")
    source = inspect.getsource(module.start_client_internal)
    found = source.count(f"{name}.sleep({FLOWER_IDLE_SLEEP_S})")
    empty_pull = "if run_id is None:" in source.split(f"{name}.sleep({FLOWER_IDLE_SLEEP_S})")[0][-400:]
    if found != 1 or not empty_pull or getattr(module, name) is not time:
        piece = PIECES["supernode_loop_time"]
        pytest.fail(
            f"Flower moved the SuperNode's idle sleep: {piece.path} has {found} `{name}.sleep(3)` after an empty "
            f"pull (expected 1), so piece 'supernode_loop_time' of task/flower_compat.py shortens nothing "
            f"({piece.why})",
            pytrace=False,
        )


def test_only_the_idle_sleep_is_shorter_and_the_rest_of_time_is_time(monkeypatch):
    module, name = owner("supernode_loop_time")
    monkeypatch.setattr(module, name, time)  # restored after the test
    install(0.05)
    clock = getattr(module, name)
    assert isinstance(clock, IdleSleep)
    start = time.monotonic()
    clock.sleep(FLOWER_IDLE_SLEEP_S)
    assert time.monotonic() - start < 1.0
    start = time.monotonic()
    clock.sleep(0.3)
    assert time.monotonic() - start >= 0.3
    assert abs(clock.time() - time.time()) < 1 and clock.monotonic is time.monotonic


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--idle-s", "0.5"], "give the flower-supernode command"),
        (["--idle-s", "0", "flower-supernode"], "--idle-s must be above 0"),
        (["--idle-s", "5", "flower-supernode"], "at most Flower's 3 s"),
    ],
)
def test_a_bad_command_line_is_refused_with_the_fix(args, says):
    done = subprocess.run([sys.executable, "-m", "launcher.prompt_supernode", *args], capture_output=True, text=True)
    assert done.returncode == 2 and says in done.stderr


def test_flowers_supernode_gets_its_own_arguments():
    done = subprocess.run(
        [sys.executable, "-m", "launcher.prompt_supernode", "--idle-s", "0.5", "flower-supernode", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--superlink" in done.stdout and "--node-config" in done.stdout
