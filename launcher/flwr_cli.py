"""The ``flwr`` command line as a client: ``flwr run`` submits the app, ``flwr list`` tells how
the run ended. Its log is followed in this process over the Control API where the connection is
the launcher's own (:mod:`launcher.log_stream`), else with ``flwr log --stream``. Run configs
reach ``flwr run`` as TOML (written with tomlkit)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from launcher import PROJECT_ROOT, FlowerError
from launcher.flower_home import FlowerHome
from launcher.log_stream import LogStream, plain_address
from launcher.processes import stop
from launcher.staging import staged_app
from launcher.timings import mark

READER_THREAD = "launcher-log-reader"  # the thread that reads a run's log (lines_until)


def _scalar(value: object) -> bool | int | float | str:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def toml_value(value: object) -> str:
    """A Python scalar written as a TOML value (anything else as its ``str``, a TOML string)."""
    return tomlkit.item(_scalar(value)).as_string()


def write_toml(path: Path, values: dict[str, object]) -> Path:
    """A flat table of scalars as a TOML file: how a merged run config reaches ``flwr run``
    (a file needs no shell quoting, whatever the strings hold)."""
    path.write_text(tomlkit.dumps({key: _scalar(value) for key, value in values.items()}), encoding="utf-8")
    return path


def flwr_run(
    home: FlowerHome,
    connection: str,
    run_config: dict[str, object],
    federation_config: dict[str, object] | None = None,
    app_dir: Path = PROJECT_ROOT,
    echo: bool = True,
    timeout: float = 3600,
    on_line: Callable[[str], None] | None = None,
    ended: Callable[[], bool] | None = None,
) -> int:
    """Submit the app with ``flwr run``, follow its log (:func:`followed_log`, echoed when
    ``echo``), and return the run id once the run has finished. Raises :class:`FlowerError`
    unless it completed within ``timeout`` seconds; at the deadline following stops even if
    the log has gone quiet, and leaving ``flower_home`` stops the rest (SuperLink, Ray).

    ``ended`` (asked about twice a second) ends the wait early once it returns True: the
    run is over by the caller's account (its ServerApp has written how it ended) although
    Flower has not finished it. The run id is then returned without asking Flower how the
    run ended; the caller knows, and stops Flower by leaving ``flower_home``."""
    deadline = time.monotonic() + timeout
    run_config_args = [str(write_toml(home.path / "run-config.toml", run_config))] if run_config else []
    run_id = submit_run(home, connection, run_config_args, federation_config, app_dir, timeout)
    mark("run submitted")
    cut_short: list[bool] = []

    def over() -> bool:
        if ended is not None and ended():
            cut_short.append(True)
            return True
        return False

    try:
        with followed_log(home, connection, run_id) as log:
            for line in lines_until(log, deadline, stop_when=over if ended is not None else None):
                if on_line is not None:
                    on_line(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
    except TimeoutError:
        raise FlowerError(
            f"Run {run_id} did not finish within {timeout:g} s, so it was stopped: "
            "give a larger --timeout for longer runs."
        ) from None
    if cut_short:
        return run_id
    status, details = wait_for_run(home, connection, run_id, timeout=max(30.0, deadline - time.monotonic()))
    if status != "finished:completed":
        raise FlowerError(f"Run {run_id} ended as '{status}': {details}")
    return run_id


@contextmanager
def followed_log(home: FlowerHome, connection: str, run_id: int) -> Iterator[Iterable[str]]:
    """The lines of run ``run_id``'s log as they come, until the run has finished; stopped on
    the way out, however that comes. Read in this process where the connection is a plain one
    of the launcher's own (see :mod:`launcher.log_stream`), else by ``flwr log --stream``."""
    address = plain_address(home, connection)
    if address is not None:

        def still_running() -> bool:
            found = run_status(home, connection, run_id)
            return found.status is not None and not found.finished

        stream = LogStream(address, run_id, still_running)
        try:
            yield stream.lines()
        finally:
            stream.close()
        return
    follow = subprocess.Popen(
        ["flwr", "log", str(run_id), connection, "--stream"],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert follow.stdout is not None
    try:
        yield follow.stdout
    finally:
        stop(follow)


def submit_run(
    home: FlowerHome,
    connection: str,
    run_config_args: Sequence[str] = (),
    federation_config: dict[str, object] | None = None,
    app_dir: Path = PROJECT_ROOT,
    timeout: float = 3600,
) -> int:
    """Submit the app with ``flwr run`` and return its run id; a refused submission raises
    :class:`FlowerError` in Flower's words. Each of ``run_config_args`` goes to ``flwr run`` as
    one ``--run-config`` value, as flwr takes it (``"k=v k2=v2"`` or a TOML file)."""
    args = ["flwr", "run", str(staged_app(home, app_dir)), connection, "--format", "json"]
    for value in run_config_args:
        args += ["--run-config", value]
    if federation_config:
        args += ["--federation-config", " ".join(f"{k}={toml_value(v)}" for k, v in federation_config.items())]
    submitted = subprocess.run(args, env=home.env, capture_output=True, text=True, timeout=max(1.0, timeout))
    run_id = _run_id_in(submitted.stdout)
    if submitted.returncode != 0 or run_id is None:
        # with --format json, flwr run reports a refused submission in JSON and exits 0
        detail = _error_in(submitted.stdout) or f"{submitted.stdout}{submitted.stderr}"
        raise FlowerError(f"flwr run did not start the run (exit {submitted.returncode}):\n{detail}")
    return run_id


def lines_until(
    stream: Iterable[str], deadline: float, stop_when: Callable[[], bool] | None = None, poll_s: float = 0.5
) -> Iterator[str]:
    """The lines of ``stream`` until it ends, or until ``stop_when()`` (asked every ``poll_s``
    seconds, printing or not) returns True; :class:`TimeoutError` once ``deadline``
    (``time.monotonic()``) passes, even while the stream prints nothing. A daemon
    thread reads, because a blocked ``readline`` cannot be given a timeout."""
    received: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        try:
            for line in stream:
                received.put(line)
        except (OSError, ValueError):  # the stream was closed under us
            pass
        finally:  # whatever ended the reading, the wait ends
            received.put(None)

    threading.Thread(target=pump, daemon=True, name=READER_THREAD).start()
    next_check = time.monotonic()
    while True:
        now = time.monotonic()
        if stop_when is not None and now >= next_check:
            if stop_when():
                return
            next_check = now + poll_s
        remaining = deadline - now
        if remaining <= 0:
            raise TimeoutError
        try:
            line = received.get(timeout=remaining if stop_when is None else min(remaining, next_check - now))
        except queue.Empty:
            continue  # the deadline, or the next look at stop_when
        if line is None:
            return
        yield line


@dataclass(frozen=True)
class RunStatus:
    """What ``flwr list --run-id`` said of one run: its status and details, or why it said neither."""

    status: str | None  # e.g. 'running', 'finished:failed'; None when the SuperLink did not say
    details: str = ""
    error: str = ""  # Flower's reason when there is no status (unreachable, no such run)

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.startswith("finished")

    @property
    def unknown_run(self) -> bool:
        """The SuperLink answered that it has no such run (a wrong id, or its state was lost)."""
        return "run id not found" in self.error.lower()


def run_status(home: FlowerHome, connection: str, run_id: int) -> RunStatus:
    """Ask the SuperLink once how run ``run_id`` stands."""
    out = subprocess.run(
        ["flwr", "list", connection, "--run-id", str(run_id), "--format", "json"],
        env=home.env,
        capture_output=True,
        text=True,
    )
    found = _status_in(out.stdout)
    if found is not None:
        return RunStatus(*found)
    return RunStatus(None, error=_last_line(_error_in(out.stdout)) or out.stderr.strip() or out.stdout.strip())


def wait_for_run(
    home: FlowerHome, connection: str, run_id: int, timeout: float = 600, unreachable_s: float = 30
) -> tuple[str, str]:
    """Poll ``flwr list`` until the run has finished; return its status and details.
    A SuperLink that stops answering for ``unreachable_s`` ends the wait with why."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    silent_since: float | None = None
    while time.monotonic() < deadline:
        found = run_status(home, connection, run_id)
        if found.status is None:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= unreachable_s:
                raise FlowerError(
                    f"Run {run_id}: the SuperLink has not answered for {unreachable_s:.0f} s "
                    f"(last seen '{status}'): {found.error}"
                )
        else:
            silent_since = None
            status = found.status
            if found.finished:
                return status, found.details
        time.sleep(1.0)
    raise FlowerError(f"Run {run_id} still '{status}' after {timeout:.0f} s")


def _error_in(text: str) -> str:
    """The error message in ``flwr ... --format json`` output, or ''."""
    try:
        return (json.loads(text).get("error-message") or "").strip()
    except (json.JSONDecodeError, AttributeError):
        return ""


def _last_line(text: str) -> str:
    return text.splitlines()[-1] if text else ""


def _status_in(text: str) -> tuple[str, str] | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    for run in data.get("runs", []) if isinstance(data, dict) else []:
        if run.get("status"):
            return str(run["status"]), str(run.get("status-details", ""))
    return None


def _run_id_in(text: str) -> int | None:
    """The run id in the JSON that ``flwr run --format json`` prints."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    value = data.get("run-id") if isinstance(data, dict) else None
    return int(value) if isinstance(value, (str, int)) and str(value).isdigit() else None
