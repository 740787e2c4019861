"""A run ends when its ServerApp ends, whatever Flower's simulation is still waiting for.

The ServerApp writes ``completed`` or ``failed`` into the run folder's history as its
last act. Flower's simulation only finishes once every ClientApp call it handed out
has returned, so a client that is still stuck (asleep, deadlocked, waiting on a
device) keeps the simulation, and the launcher that follows it, running long after
the run is over, up to the launcher's ``--timeout`` (an hour by default) for a client
that never returns. :class:`ServerAppEnd` watches the history; once it is
final, Flower gets :data:`GRACE_S` seconds to finish on its own, and after that the
launcher stops it (the SuperLink and everything it started) and names the clients it
abandons: those the history records as never having replied.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Seconds Flower is given to finish on its own once the ServerApp has written its final
# status. Measured on 2 busy cores, a healthy simulation (3 or 100 nodes) ends its log
# stream about 3.8 s after it (Ray shutting down, the run's status, the log poll); a
# margin on that, so that a run that was only slow to close is not cut short.
GRACE_S = 10.0
# A run that completed with every client accounted for (none recorded as unanswered) has left all
# its results in the run folder: what Flower still does (Ray shutting down, the run's status, the
# log poll; those 3.8 s) adds nothing to it. Flower gets this long, then it is stopped like a stuck
# run, without the 'abandoned' line: there is nothing to abandon.
DONE_GRACE_S = 1.0
# How the ServerApp records a node that did not answer in time (server_app/rounds.py).
NO_REPLY = "no reply within round-timeout"
# run_folder.COMPLETED and run_folder.FAILED, spelt out: importing run_folder brings torch.
COMPLETED, FAILED = "completed", "failed"
FINAL = (COMPLETED, FAILED)


def read_history(run_dir: Path) -> dict[str, Any] | None:
    """The run's history.json through :mod:`run_folder`, or None while there is none to read."""
    from run_folder import RunFolder, RunFolderError  # brings torch: only once a run is under way

    try:
        return RunFolder(run_dir).history()
    except (RunFolderError, OSError):
        return None


def history_stamp(run_dir: Path) -> tuple[int, int, int] | None:
    """Which history.json the folder holds now (every write renames a new file into place)."""
    from run_folder import HISTORY, RunFolder

    try:
        st = RunFolder(run_dir).file(HISTORY).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def fresh_history(run_dir: Path) -> Callable[[], dict[str, Any] | None]:
    """Reads the run's history, but only one written after this call: a folder that already
    held a final history (a reused run-name, which the ServerApp refuses) must not end the
    run before it began."""
    before = history_stamp(run_dir)
    return lambda: read_history(run_dir) if history_stamp(run_dir) != before else None


@dataclass
class ServerAppEnd:
    """Says when to stop waiting for Flower: :data:`GRACE_S` after the history turned final.

    Called (no arguments) while the launcher follows the run; ``read`` gives the
    current history (None: not written yet), ``clock`` the time."""

    read: Callable[[], dict[str, Any] | None]
    grace_s: float = GRACE_S
    clock: Callable[[], float] = time.monotonic
    done_grace_s: float = DONE_GRACE_S
    history: dict[str, Any] | None = None  # the final history, once seen
    final_at: float | None = None
    expired: bool = False  # the grace ran out with Flower still running

    @classmethod
    def of(cls, run_dir: Path, grace_s: float | None = None) -> ServerAppEnd:
        """For a run about to start in ``run_dir`` (imports run_folder, and so torch)."""
        return cls(fresh_history(run_dir), GRACE_S if grace_s is None else grace_s)

    @property
    def status(self) -> str | None:
        return self.history.get("status") if self.history is not None else None

    def __call__(self) -> bool:
        """True once the ServerApp's final status is at least ``grace_s`` old (``done_grace_s``
        when the run completed with no client left unanswered: see :attr:`done`)."""
        if self.final_at is None:
            history = self.read()
            if history is None or history.get("status") not in FINAL:
                return False
            self.history, self.final_at = history, self.clock()
        grace = min(self.grace_s, self.done_grace_s) if self.done else self.grace_s
        self.expired = self.clock() - self.final_at >= grace
        return self.expired

    @property
    def done(self) -> bool:
        """The run completed and no client is recorded as unanswered: nothing is left to wait for."""
        return self.status == COMPLETED and not unanswered(self.history or {})


def unanswered(history: dict[str, Any]) -> list[dict[str, Any]]:
    """The clients (partition, node) the history records as not replying in time, each
    once, with the last round it went unanswered, in partition order."""
    last: dict[Any, dict[str, Any]] = {}
    for entry in history.get("rounds") or []:
        for failure in entry.get("failures") or []:
            if failure.get("reason") == NO_REPLY and failure.get("partition-id") is not None:
                last[(failure["partition-id"], failure.get("node"))] = failure
    return [last[key] for key in sorted(last, key=lambda k: (k[0], str(k[1])))]


def abandoned_line(end: ServerAppEnd) -> str:
    """The one console line for a run whose Flower was stopped after the grace."""
    clients = unanswered(end.history or {})
    named = ", ".join(
        f"partition {f['partition-id']}"
        + (f" (node {f['node']})" if f.get("node") is not None else "")
        + f" since round {f['round']}"
        for f in clients
    )
    abandoned = (
        f"abandoned client(s) that had not replied: {named}"
        if clients
        else ("no client is recorded as unanswered in history.json")
    )
    return (
        f"The run {end.status} (so says its ServerApp), but Flower's simulation had not finished "
        f"{end.grace_s:g} s later: stopping Flower's processes; {abandoned}."
    )
