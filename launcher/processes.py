"""Process trees, read with psutil: what a process started, directly or not, and stopping all of it.

A process group is not enough: the SuperLink starts ``flower-superexec`` in a session of its
own, and the simulation it starts outlives a SuperLink killed alone.
"""

from __future__ import annotations

import os
import signal
import subprocess

import psutil


def descendants(*roots: int) -> list[int]:
    """Every process started, directly or not, by one of ``roots`` (zombies included);
    none for a root that is gone."""
    found: dict[int, None] = {}  # in the order found, each once
    for root in roots:
        try:
            children = psutil.Process(root).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        found.update(dict.fromkeys(child.pid for child in children))
    return list(found)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to collect it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_tree(*roots: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``roots``, everything they started and their process groups (not ours)."""
    tree = [*roots, *descendants(*roots)]
    groups = set()
    for member in tree:
        try:
            groups.add(os.getpgid(member))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass
    for member in tree:
        try:
            os.kill(member, sig)
        except ProcessLookupError:
            pass


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """Stop a process started in its own session, with everything it started (Ray workers,
    the SuperExec and the simulation or ServerApp it runs): SIGTERM, ``grace`` seconds, then SIGKILL."""
    tree = [proc.pid, *descendants(proc.pid)]  # before they are orphaned
    if proc.poll() is None:
        kill_tree(proc.pid, sig=signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    kill_tree(*tree)  # children that outlived their parent, in its group or not
    proc.wait()
