"""`python -m launcher.follow` on Flower's deployment runtime (loopback, no Docker): the operator's
connection goes through a relay that is restarted mid-run (a proxy restart: the log stream breaks
while the run goes on), then the process running the ServerApp is killed (a dead SuperExec)."""

from __future__ import annotations

import json
import re
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


def test_a_broken_stream_is_followed_again_and_a_dead_serverapp_ends_the_run_failed(tmp_path):
    run_config = (
        f'num-server-rounds=50 local-epochs=1 fraction-train=1.0 fraction-evaluate=0.0 output-dir="{tmp_path}" '
        'run-name="killed" partitioning="iid-balanced" samples-per-class=30'
    )
    with flower_home() as home:
        address = start_superlink(home, simulation=False)
        superlink = home.processes[0]
        relay = Relay(address)
        home.add_connection("loopback", f"127.0.0.1:{relay.port}")  # the operator's way in: through the relay
        for i in range(2):
            start_supernode(home, address, partition_id=i, num_partitions=2)
        out, err = tmp_path / "follow.out", tmp_path / "follow.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            follow = subprocess.Popen(
                [sys.executable, "-m", "launcher.follow", "loopback", "--run-config", run_config]
                + ["--outputs", str(tmp_path), "--reattach-s", "120"],
                env=home.env,
                cwd=PROJECT_ROOT,
                stdout=stdout,
                stderr=stderr,
            )
        try:
            folder = tmp_path / "killed"
            _wait_for(lambda: _rounds(folder) >= 1, 300, "round 1")
            relay.restart(down_s=6)
            _wait_for(lambda: "broke off" in err.read_text(), 60, "broken-stream line")
            rounds_at_break, log_at_break = _rounds(folder), len(out.read_text())
            _wait_for(lambda: _rounds(folder) >= rounds_at_break + 1, 120, "a round after the break")
            _wait_for(lambda: len(out.read_text()) > log_at_break, 30, "log lines after the break")
            serverapp = _wait_for(lambda: _serverapp(superlink), 30, "flwr-serverapp process")
            killed_at, killed_wall = time.monotonic(), time.time()
            serverapp.send_signal(signal.SIGKILL)
            code = follow.wait(240)
            told_after = time.monotonic() - killed_at
            run_id = json.loads((folder / rf.CONFIG).read_text())["run-id"]
            state = run_status(home, "loopback", run_id)
            listed = subprocess.run(
                ["flwr", "list", "loopback", "--run-id", str(run_id), "--format", "json"],
                env=home.env,
                capture_output=True,
                text=True,
            )
        finally:
            if follow.poll() is None:
                follow.kill()
    finished_at = json.loads(listed.stdout)["runs"][0]["finished-at"]
    known_after = _seconds_since(finished_at, killed_wall)
    print(f"\nkill -> SuperLink's finished-at {known_after:.1f} s, kill -> launcher.follow's exit {told_after:.1f} s")

    stdout, stderr = out.read_text(), err.read_text()
    print(stderr)
    assert state.status == "finished:failed" and NO_HEARTBEAT in state.details
    assert code == 1, stderr
    # the break: one line, that the run goes on and how to follow it; then the log went on, not replayed
    broken = [line for line in stderr.splitlines() if "broke off" in line]
    assert len(broken) == 1 and "the run goes on" in broken[0] and f"flwr log {run_id} loopback --stream" in broken[0]
    assert stdout.count("Writing results to") == 1
    # the end: one line with Flower's word, the history marked, and how to resume
    ended = [line for line in stderr.splitlines() if line.startswith(f"Run {run_id} ended as")]
    assert len(ended) == 1, stderr
    assert f"'finished:failed' (Flower: {NO_HEARTBEAT})" in ended[0] and "died" in ended[0]
    assert f"history.json in {folder} now says 'failed'" in ended[0]
    resume = re.search(r"resume it with: (.*)\.$", ended[0])
    assert resume and f"--run-config \"resume-from='{folder}'\"" in resume.group(1), ended[0]
    history = rf.RunFolder(folder).history()
    assert history["status"] == "failed" and NO_HEARTBEAT in history["error"]
    assert rf.RunFolder(folder).read_checkpoint().server_round >= 2


def _seconds_since(iso_or_text: str, then: float) -> float:
    """Seconds from ``then`` (time.time()) to a time flwr list printed (ISO 8601, maybe without zone: UTC)."""
    from datetime import UTC, datetime

    stamp = datetime.fromisoformat(iso_or_text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp() - then
