"""`python -m launcher.follow` on Flower's deployment runtime (loopback, no Docker): the operator's
connection goes through a relay that is restarted mid-run (a proxy restart: the log stream breaks
while the run goes on), then the process running the ServerApp is killed (a dead SuperExec)."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import run_folder as rf
from launcher import PROJECT_ROOT
from launcher.flower_home import flower_home
from launcher.flwr_cli import run_status
from launcher.outcome import NO_HEARTBEAT
from launcher.runtime import start_superlink, start_supernode

pytestmark = pytest.mark.slow


class Relay:
    """A TCP relay from a loopback port to ``target``; :meth:`restart` drops every connection and
    refuses new ones for a while, as a proxy being restarted does."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = 0
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return  # closed by restart()
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restart(self, down_s: float) -> None:
        assert self.listener is not None
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which close() alone would not
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
        self.sockets.clear()
        time.sleep(down_s)
        self.start()


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(poll)
    raise AssertionError(f"no {what} within {timeout:g} s")


def _rounds(folder: Path) -> int:
    try:
        return len(rf.RunFolder(folder).history()["rounds"]) - 1
    except (rf.RunFolderError, OSError):
        return -1


def _serverapp(superlink: subprocess.Popen) -> psutil.Process | None:
    for child in psutil.Process(superlink.pid).children(recursive=True):
        try:
            if any("flwr-serverapp" in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _follow(home, tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """``python -m launcher.follow loopback ARGS`` as an operator runs it, its output in two files."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        command = [sys.executable, "-m", "launcher.follow", "loopback", *args, "--outputs", str(tmp_path)]
        return subprocess.Popen(command, env=home.env, cwd=PROJECT_ROOT, stdout=stdout, stderr=stderr), out, err


def _break_then_kill(superlink: subprocess.Popen, relay: Relay, folder: Path, out: Path, err: Path) -> float:
    """After round 1 the relay restarts (6 s down); once a round and its log lines got through
    after that, the ServerApp's process is killed. Returns when, by time.time()."""
    _wait_for(lambda: _rounds(folder) >= 1, 300, "round 1")
    relay.restart(down_s=6)
    _wait_for(lambda: "broke off" in err.read_text(), 60, "broken-stream line")
    rounds_at_break, log_at_break = _rounds(folder), len(out.read_text())
    _wait_for(lambda: _rounds(folder) >= rounds_at_break + 1, 120, "a round after the break")
    _wait_for(lambda: len(out.read_text()) > log_at_break, 30, "log lines after the break")
    serverapp = _wait_for(lambda: _serverapp(superlink), 30, "flwr-serverapp process")
    killed_at = time.time()
    serverapp.send_signal(signal.SIGKILL)
    return killed_at


def test_a_broken_stream_is_followed_again_and_a_dead_serverapp_ends_the_run_failed_and_resumable(tmp_path):
    run_config = (
        f'num-server-rounds=50 local-epochs=1 fraction-train=1.0 fraction-evaluate=0.0 output-dir="{tmp_path}" '
        'run-name="killed" partitioning="iid-balanced" samples-per-class=30'
    )
    folder = tmp_path / "killed"
    with flower_home() as home:
        address = start_superlink(home, simulation=False)
        superlink = home.processes[0]
        relay = Relay(address)
        home.add_connection("loopback", f"127.0.0.1:{relay.port}")  # the operator's way in: through the relay
        for i in range(2):
            start_supernode(home, address, partition_id=i, num_partitions=2)
        follow, out, err = _follow(home, tmp_path, "follow", "--run-config", run_config, "--reattach-s", "120")
        try:
            killed_at = _break_then_kill(superlink, relay, folder, out, err)
            code = follow.wait(240)
        finally:
            if follow.poll() is None:
                follow.kill()
        told_after = time.time() - killed_at
        run_id = json.loads((folder / rf.CONFIG).read_text())["run-id"]
        state = run_status(home, "loopback", run_id)
        listed = subprocess.run(
            ["flwr", "list", "loopback", "--run-id", str(run_id), "--format", "json"],
            env=home.env,
            capture_output=True,
            text=True,
        )
        known_after = _seconds_since(json.loads(listed.stdout)["runs"][0]["finished-at"], killed_at)
        print(f"\nafter the kill: the SuperLink's finished-at {known_after:.1f} s, follow's exit {told_after:.1f} s")
        stdout, stderr = out.read_text(), err.read_text()
        print(stderr)
        ended = [line for line in stderr.splitlines() if line.startswith(f"Run {run_id} ended as")]
        assert len(ended) == 1, stderr
        # the printed resume command, run as printed (with as many rounds as it takes to finish)
        done = rf.RunFolder(folder).read_checkpoint().server_round
        resume = re.search(r"resume it with: python (.*)\.$", ended[0])
        assert resume, ended[0]
        again = [*shlex.split(resume.group(1)), "--run-config", f"num-server-rounds={done + 1}"]
        resumed, resumed_out, resumed_err = _follow(home, tmp_path, "resumed", *again[3:])
        assert resumed.wait(300) == 0, resumed_err.read_text()

    assert state.status == "finished:failed" and NO_HEARTBEAT in state.details
    assert code == 1, stderr
    # the break: one line, that the run goes on and how to follow it; then the log went on, not replayed
    broken = [line for line in stderr.splitlines() if "broke off" in line]
    assert len(broken) == 1 and "the run goes on" in broken[0] and f"flwr log {run_id} loopback --stream" in broken[0]
    assert stdout.count("Writing results to") == 1
    # the end: one line with Flower's word, the history marked, and how to resume
    assert f"'finished:failed' (Flower: {NO_HEARTBEAT})" in ended[0] and "died" in ended[0]
    assert f"history.json in {folder} now says 'failed'" in ended[0]
    assert f"--run-config \"resume-from='{folder}' run-name=''\"" in ended[0] and done >= 2
    history = rf.RunFolder(folder).history()
    assert history["status"] == "failed" and NO_HEARTBEAT in history["error"]
    # the resumed run: a new folder, every round up to the last, completed
    completed_line = resumed_out.read_text().splitlines()[-1]
    new_folder = Path(re.fullmatch(r"Run \d+ completed: its run folder is (.*)\.", completed_line).group(1))
    run = rf.read_completed_run(new_folder)
    assert run.config["resumed-from"] == str(folder) and new_folder != folder
    assert [r["round"] for r in run.rounds] == list(range(done + 2))


def _seconds_since(iso_or_text: str, then: float) -> float:
    """Seconds from ``then`` (time.time()) to a time flwr list printed (ISO 8601, maybe without zone: UTC)."""
    from datetime import UTC, datetime

    stamp = datetime.fromisoformat(iso_or_text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp() - then
