"""Start and stop Flower's own processes, isolated from anything else on the machine.

``flwr run .`` on its own starts a detached SuperLink on fixed ports that
outlives the command and serves every later run, from any checkout, with the
environment of whoever started it first. The helpers here give each job its
own Flower home, free ports and child processes, and stop them afterwards.
They drive the real runtime (``flower-superlink``, ``flower-supernode``,
``flwr``); the simulation launcher and the deployment tests both use them.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class FlowerError(RuntimeError):
    """A Flower process failed to start, or a run did not complete."""


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
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


TIMINGS_ENV = "FEDMNIST_TIMINGS"


def mark(label: str) -> None:
    """With ``FEDMNIST_TIMINGS=1``, print ``[timing] label`` as a phase ends: the
    benchmark (``benchmarks/perf.py``) times the launcher's phases by these lines."""
    if os.environ.get(TIMINGS_ENV) == "1":
        print(f"[timing] {label}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FlowerHome:
    """A throw-away ``FLWR_HOME`` with one named SuperLink connection."""

    path: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.path)

    def add_connection(self, name: str, address: str) -> None:
        (self.path / "config.toml").write_text(
            f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\ninsecure = true\n'
        )

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
            _rmtree(path)


def start_superlink(
    home: FlowerHome,
    simulation: bool,
    env: dict[str, str | None] | None = None,
    while_starting: Callable[[], object] | None = None,
) -> str:
    """Start ``flower-superlink`` on free loopback ports; return its address.

    ``env`` is added to its environment (the simulation it runs inherits it, e.g.
    ``RAY_ADDRESS``); ``while_starting`` is called once the process is spawned and
    before waiting for it to answer, so slow imports can overlap its start-up."""
    port, control = free_port(), free_port()
    args = [
        "flower-superlink",
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--control-api-address",
        f"127.0.0.1:{control}",
        "--disable-runtime-dependency-installation",
    ]
    if simulation:
        args.append("--simulation")
    proc = home.spawn("superlink", args, env=env)
    address = f"127.0.0.1:{port}"
    if while_starting is not None:
        while_starting()
    _wait_healthy(proc, f"http://{address}/health", home, "superlink")
    mark("superlink up")
    return address


def supernode_threads(threads: int = 1) -> dict[str, str]:
    """Environment that caps PyTorch's CPU threads in a SuperNode's ClientApp.

    Several SuperNodes on one machine each start as many threads as there are
    cores; with batches of ten images the threads then wait on each other at every
    operation, and a round that takes seconds takes minutes (measured here: 124 s
    instead of about 3 s for two nodes on two cores)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def start_supernode(home: FlowerHome, superlink: str, partition_id: int, num_partitions: int) -> subprocess.Popen:
    """Start one ``flower-supernode`` serving the ClientApp for one partition,
    one PyTorch thread each (they share this machine's cores)."""
    args = [
        "flower-supernode",
        "--insecure",
        "--superlink",
        superlink,
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--node-config",
        f"partition-id={partition_id} num-partitions={num_partitions}",
    ]
    return home.spawn(f"supernode-{partition_id}", args, env=supernode_threads())


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this machine shows to its processes, by name, found without
    importing torch: ``nvidia-smi -L``, else the driver's ``/proc/driver/nvidia/gpus``;
    none when ``CUDA_VISIBLE_DEVICES`` hides them all (empty or ``-1``)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return []
    names: list[str] = []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            names = [line.split(" (UUID")[0].split(": ", 1)[-1] for line in out.stdout.splitlines() if line.startswith("GPU ")]
    except (OSError, subprocess.TimeoutExpired):
        gpus = Path("/proc/driver/nvidia/gpus")
        names = [f"NVIDIA GPU {d.name}" for d in sorted(gpus.iterdir())] if gpus.is_dir() else []
    if hidden is not None and names:
        keep = [x.strip() for x in hidden.split(",") if x.strip()]
        names = [name for i, name in enumerate(names) if str(i) in keep] or names[: len(keep)]
    return names


def toml_value(value: object) -> str:
    """A Python scalar written as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def write_toml(path: Path, values: dict[str, object]) -> Path:
    """A flat table of scalars as a TOML file: how a merged run config reaches ``flwr run``
    (a file needs no shell quoting, whatever the strings hold)."""
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in values.items()))
    return path


def staged_app(home: FlowerHome, app_dir: Path) -> Path:
    """A copy of ``app_dir`` without what its ``.gitignore`` leaves out, made once per Flower home and app.

    ``flwr run`` reads every file under the folder it is given, and only then drops what
    ``.gitignore`` excludes: here that is the virtual environment, run outputs and the
    wheelhouse, over 40,000 files and several seconds of each run's start. The copy holds
    the same files that would go into the app bundle, and nothing else."""
    import hashlib
    import shutil

    import pathspec

    staged = home.path / f"app-{hashlib.sha256(str(app_dir.resolve()).encode()).hexdigest()[:12]}"
    if staged.is_dir():
        return staged
    ignore_file = app_dir / ".gitignore"
    lines = ignore_file.read_text().splitlines() if ignore_file.is_file() else []
    ignored = pathspec.GitIgnoreSpec.from_lines([*lines, ".git/"])
    for folder, dirs, files in os.walk(app_dir):
        rel = Path(folder).relative_to(app_dir)
        dirs[:] = [d for d in dirs if not ignored.match_file(f"{(rel / d).as_posix()}/")
                   and not (Path(folder) / d).is_symlink()]
        for name in files:
            source = Path(folder) / name
            if source.is_symlink() or ignored.match_file((rel / name).as_posix()):
                continue
            (staged / rel).mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staged / rel / name)
    return staged


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
    """Submit the app with ``flwr run``, follow its log with ``flwr log --stream`` (echoed
    when ``echo``), and return the run id once the run has finished. Raises
    :class:`FlowerError` unless it completed within ``timeout`` seconds; at the deadline
    the CLI is stopped even if it has gone quiet, and leaving ``flower_home`` stops the
    rest (SuperLink, Ray).

    ``ended`` (asked about twice a second) ends the wait early once it returns True: the
    run is over by the caller's account (its ServerApp has written how it ended) although
    Flower has not finished it. The run id is then returned without asking Flower how the
    run ended; the caller knows, and stops Flower by leaving ``flower_home``."""
    deadline = time.monotonic() + timeout
    args = ["flwr", "run", str(staged_app(home, app_dir)), connection, "--format", "json"]
    if run_config:
        args += ["--run-config", str(write_toml(home.path / "run-config.toml", run_config))]
    if federation_config:
        args += ["--federation-config", " ".join(f"{k}={toml_value(v)}" for k, v in federation_config.items())]
    submitted = subprocess.run(args, env=home.env, capture_output=True, text=True, timeout=max(1.0, timeout))
    run_id = _run_id_in(submitted.stdout)
    if submitted.returncode != 0 or run_id is None:
        # with --format json, flwr run reports a refused submission in JSON and exits 0
        detail = _error_in(submitted.stdout) or f"{submitted.stdout}{submitted.stderr}"
        raise FlowerError(f"flwr run did not start the run (exit {submitted.returncode}):\n{detail}")
    mark("run submitted")
    follow = subprocess.Popen(
        ["flwr", "log", str(run_id), connection, "--stream"],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert follow.stdout is not None
    cut_short: list[bool] = []

    def over() -> bool:
        if ended is not None and ended():
            cut_short.append(True)
            return True
        return False

    try:
        for line in lines_until(follow.stdout, deadline, stop_when=over if ended is not None else None):
            if on_line is not None:
                on_line(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        if not cut_short:
            follow.wait()
    except TimeoutError:
        raise FlowerError(
            f"Run {run_id} did not finish within {timeout:g} s, so it was stopped: give a larger --timeout for longer runs."
        ) from None
    finally:
        stop(follow)
    if cut_short:
        return run_id
    status, details = wait_for_run(home, connection, run_id, timeout=max(30.0, deadline - time.monotonic()))
    if status != "finished:completed":
        raise FlowerError(f"Run {run_id} ended as '{status}': {details}")
    return run_id


def lines_until(
    stream: IO[str], deadline: float, stop_when: Callable[[], bool] | None = None, poll_s: float = 0.5
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
        received.put(None)

    threading.Thread(target=pump, daemon=True).start()
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


def wait_for_run(
    home: FlowerHome, connection: str, run_id: int, timeout: float = 600, unreachable_s: float = 30
) -> tuple[str, str]:
    """Poll ``flwr list`` until the run has finished; return its status and details.
    A SuperLink that stops answering for ``unreachable_s`` ends the wait with why."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    silent_since: float | None = None
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["flwr", "list", connection, "--run-id", str(run_id), "--format", "json"],
            env=home.env,
            capture_output=True,
            text=True,
        )
        found = _status_in(out.stdout)
        if found is None:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= unreachable_s:
                raise FlowerError(
                    f"Run {run_id}: the SuperLink has not answered for {unreachable_s:.0f} s "
                    f"(last seen '{status}'): {_last_line(_error_in(out.stdout)) or out.stderr.strip() or out.stdout.strip()}"
                )
        else:
            silent_since = None
            status, details = found
            if status.startswith("finished"):
                return status, details
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


def _wait_healthy(proc: subprocess.Popen, url: str, home: FlowerHome, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerError(f"{name} exited with {proc.returncode}:\n{home.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise FlowerError(f"{name} did not become healthy within {timeout:.0f} s:\n{home.log_tail(name)}")


def descendants(*roots: int) -> list[int]:
    """Every process started, directly or not, by one of ``roots`` (from ``/proc``; none elsewhere).

    A process group is not enough: the SuperLink starts ``flower-superexec`` in a session
    of its own, and the simulation it starts outlives a SuperLink killed alone."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to collect it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
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


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
