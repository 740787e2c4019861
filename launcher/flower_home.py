"""A Flower home of its own for each job, and the processes started in it.

``flwr run .`` on its own starts a detached SuperLink on fixed ports that outlives the
command and serves every later run, from any checkout, with the environment of whoever
started it first. A :func:`flower_home` gives a job its own ``FLWR_HOME``, starts its
processes there, and stops them on the way out (an exception, Ctrl-C or SIGTERM included).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from launcher.processes import stop

SUPEREXEC_POLL_S = "0.25"


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: own home, this venv first on PATH, quiet, offline."""
    env = os.environ.copy()
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # Every SuperExec looks for new work this often (Flower's default: every 1 s). A
            # SuperNode's starts one ClientApp process per message, so the wait is paid per message;
            # each look is an HTTP request to its SuperNode, so idle nodes pay 4 a second.
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_S,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def user_flwr_home() -> Path:
    """Where the user's own ``flwr`` keeps its connections: ``$FLWR_HOME``, else ``~/.flwr``."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()


@dataclass
class FlowerHome:
    """A throw-away ``FLWR_HOME`` with one named SuperLink connection."""

    path: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
    # The CLI's FLWR_HOME when it is not ``path``: an operator's own connections (``path`` then
    # only holds this job's scratch files, such as the copy of the app that flwr run bundles).
    flwr_home: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home or self.path)

    def add_connection(self, name: str, address: str) -> None:
        """``config.toml`` with one connection, ``name``, the default: plain gRPC to ``address``."""
        config = {"superlink": {"default": name, name: {"address": address, "insecure": True}}}
        (self.path / "config.toml").write_text(tomlkit.dumps(config), encoding="utf-8")

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str | None] | None = None) -> subprocess.Popen:
        """Start a Flower process in its own process group, logging to ``<name>.log``;
        ``env`` adds to its environment (a ``None`` value removes that variable)."""
        log = open(self.path / f"{name}.log", "wb")
        merged = {**self.env, **(env or {})}
        proc = subprocess.Popen(
            list(args),
            env={k: v for k, v in merged.items() if v is not None},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop every process started here, with everything it started (Ray included)."""
        for proc in reversed(self.processes):
            stop(proc)
        self.processes.clear()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.path / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken like Ctrl-C: the processes started here are stopped on the way out."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated("stopped by SIGTERM")


@contextmanager
def flower_home(keep: bool = False) -> Iterator[FlowerHome]:
    """A Flower home folder for the processes started in it; on the way out, normal or not
    (an exception, Ctrl-C, SIGTERM), they are stopped and the folder is removed."""
    path = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    home = FlowerHome(path)
    try:  # without this, `kill` of the launcher would leave the SuperLink and Ray running
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: the caller owns the signals
        previous = None
    try:
        yield home
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        home.stop_all()
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
