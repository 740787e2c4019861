"""deploy/supervise.py: a SuperNode that gives up its connection (or is killed) is started again,
a broken TLS connection is retried with Flower's own policy instead of ending the node's session,
and the health check says whether the node is connected.

The supervisor runs for real here, around a stand-in ``flower-supernode`` that does what Flower
1.41's does when it gives up: its connection loop returns while a non-daemon thread (its Runtime
API server) keeps the process alive."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from deploy import entrypoint, supervise
from task import flower_compat

ROOT = Path(__file__).resolve().parent.parent
SUPERVISE = ROOT / "deploy" / "supervise.py"

# What the stand-in does at its Nth start (from 0), read from a counter file.
STAND_IN = textwrap.dedent(
    """\
    #!{python}
    import os, signal, sys, threading, time
    from pathlib import Path
    counter = Path(os.environ["STAND_IN_COUNTER"])
    start = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(start + 1))
    plan = os.environ["STAND_IN_PLAN"].split(",")[min(start, len(os.environ["STAND_IN_PLAN"].split(",")) - 1)]

    def flower_supernode():
        threading.Thread(target=time.sleep, args=(3600,)).start()  # like the Runtime API's server
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # Flower's graceful exit
        if plan == "refused":
            print("Failed to activate SuperNode", file=sys.stderr, flush=True)
            sys.exit(1)
        print("INFO :      SuperNode ID: 42", file=sys.stderr, flush=True)
        if plan == "gives-up":
            print("ERROR :     SSL/TLS handshake error detected.", file=sys.stderr, flush=True)
            return None
        time.sleep(3600)

    if __name__ == "__main__":
        sys.exit(flower_supernode())
    """
)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """PATH, counter and state file for a stand-in flower-supernode; returns a runner."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "flower-supernode"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    state = tmp_path / "state.json"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STAND_IN_COUNTER": str(tmp_path / "starts"),
        "FEDMNIST_SUPERNODE_STATE": str(state),
    }

    def start(plan: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(SUPERVISE), "flower-supernode", "--node-config", "partition-id=0 num-partitions=1"],
            env={**env, "STAND_IN_PLAN": plan},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    start.state = state  # type: ignore[attr-defined]
    start.starts = tmp_path / "starts"  # type: ignore[attr-defined]
    return start


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _connected(state: Path) -> bool:
    try:
        return json.loads(state.read_text())["connected"]
    except (OSError, ValueError):
        return False


def test_a_supernode_that_gives_up_is_started_again_until_the_superlink_takes_it_back(stand_in):
    # gives up once, is refused once (the SuperLink still counts the old session), then stays
    proc = stand_in("gives-up,refused,stays")
    try:
        _wait_for(lambda: stand_in.starts.exists() and int(stand_in.starts.read_text()) == 3)
        _wait_for(lambda: _connected(stand_in.state))
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out  # SIGTERM reached the SuperNode, which left properly
    assert "gave up its connection to the SuperLink" in out
    assert "exited with 1 while rejoining; trying again" in out
    assert out.count("SuperNode ID: 42") == 2  # Flower's own lines pass through
    assert not _connected(stand_in.state)


def test_a_supernode_that_fails_at_its_first_start_is_left_to_dockers_restart_policy(stand_in):
    """A key nobody registered fails at once, every time: exiting lets Docker (and its user) see it."""
    proc = stand_in("refused")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and int(stand_in.starts.read_text()) == 1, out


def test_a_broken_tls_connection_is_retried_by_the_supernodes_policy(monkeypatch):
    module, name = flower_compat.owner("make_simple_http_retry_invoker")
    flowers = getattr(module, name)
    monkeypatch.setattr(module, name, flowers)  # put back after the test
    eof = httpx.ReadError("TLS/SSL connection has been closed (EOF) (_ssl.c:992)")
    assert flowers().should_giveup(eof)  # what Flower does on its own

    supervise.broken_connections_are_retried()
    invoker = getattr(module, name)()
    assert not invoker.should_giveup(eof)
    assert not invoker.should_giveup(httpx.ConnectError("[SSL: UNEXPECTED_EOF_WHILE_READING] EOF in violation"))
    assert invoker.should_giveup(httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    request = httpx.Request("POST", "https://superlink/v1/fleet/activate-node")
    refused = httpx.HTTPStatusError("412", request=request, response=httpx.Response(412, request=request))
    assert invoker.should_giveup(refused)  # an answer Flower gives up on is still one

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise eof
        return "answered"

    invoker.wait_function = lambda seconds: None
    assert invoker.invoke(flaky) == "answered" and len(calls) == 3


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_healthy_means_the_port_answers_and_the_node_is_connected(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/health"
    state = tmp_path / "state.json"
    env = {**os.environ, "FEDMNIST_SUPERNODE_STATE": str(state)}

    def health() -> subprocess.CompletedProcess:
        argv = [sys.executable, str(SUPERVISE), "--health", url]
        return subprocess.run(argv, env=env, capture_output=True, text=True)

    try:
        assert health().returncode == 1  # no state: not started
        state.write_text(json.dumps({"connected": False, "since": time.time() - 30}))
        refused = health()
        assert refused.returncode == 1 and "not connected to the SuperLink for 30 s" in refused.stderr
        state.write_text(json.dumps({"connected": True, "since": time.time()}))
        assert health().returncode == 0
    finally:
        server.shutdown()
    assert health().returncode == 1  # connected, but its port no longer answers


def test_the_entrypoint_runs_supernodes_and_only_them_under_the_supervisor(monkeypatch):
    started = []
    monkeypatch.setattr(entrypoint.os, "getuid", lambda: 1000)  # no privileges to drop
    monkeypatch.setattr(entrypoint.shutil, "which", lambda name: f"/usr/local/bin/{name}")
    monkeypatch.setattr(entrypoint.os, "execvp", lambda path, argv: started.append(argv))
    entrypoint.main(["flower-supernode", "--insecure", "--node-config", "partition-id=0 num-partitions=1"])
    entrypoint.main(["flower-superlink", "--insecure"])
    assert started[0][:2] == ["/usr/local/bin/fedmnist-supervise", "flower-supernode"]
    assert started[1][0] == "flower-superlink"
