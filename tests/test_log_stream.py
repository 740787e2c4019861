"""Following a run's log in the launcher's own process, against a stand-in Control API: a real HTTP
server that streams Flower's framed StreamLogsResponse messages the way the SuperLink does, and
breaks, refuses or goes quiet on request."""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import flwr
import pytest

from launcher import FlowerError
from launcher.flower_home import FlowerHome
from launcher.flwr_cli import READER_THREAD, flwr_run
from launcher.log_stream import LogStream, plain_address
from task.flower_compat import StreamLogsRequest, StreamLogsResponse


@dataclass
class Opened:
    """One request the stand-in SuperLink received, and whether its client has hung up."""

    after: float
    headers: dict[str, str]
    hung_up: threading.Event = field(default_factory=threading.Event)


class ControlApi(ThreadingHTTPServer):
    """``plans[n]`` scripts the n-th stream: ("log", text, timestamp), ("break",) (the connection
    dies mid-stream), ("refuse", status, body) or ("quiet",) (holds the stream open, sending
    nothing, until the client hangs up). A plan that runs out ends the stream as the SuperLink
    does once a run has finished."""

    daemon_threads = True

    def __init__(self, plans: list[list[tuple]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.plans = plans
        self.opened: list[Opened] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ControlApi

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        request = StreamLogsRequest.FromString(self.rfile.read(int(self.headers["content-length"])))
        opened = Opened(request.after_timestamp, {k.lower(): v for k, v in self.headers.items()})
        self.server.opened.append(opened)
        plan = self.server.plans[min(len(self.server.opened), len(self.server.plans)) - 1]
        if self.path != "/v1/control/stream-logs" or (plan[:1] and plan[0][0] == "refuse"):
            status, body = plan[0][1:] if plan else (404, "no such path")
            self._reply(status, body.encode())
            return
        self.send_response(200)
        self.send_header("content-type", "application/flower-protobuf-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for step in plan:
            if step[0] == "break":  # no final chunk: the stream is cut short
                self.close_connection = True
                return
            if step[0] == "quiet":
                self.rfile.read(1)  # returns once the client has hung up
                opened.hung_up.set()
                self.close_connection = True
                return
            payload = StreamLogsResponse(log_output=step[1], latest_timestamp=step[2]).SerializeToString()
            self._chunk(len(payload).to_bytes(4, "big") + payload)
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def api():
    servers: list[ControlApi] = []

    def start(*plans: list[tuple]) -> ControlApi:
        servers.append(ControlApi(list(plans)))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _read_all(stream: LogStream) -> list[str]:
    try:
        return list(stream.lines())
    finally:
        stream.close()


def test_lines_arrive_whole_and_in_order_however_the_superlink_cuts_them(api):
    server = api([("log", "one\ntw", 1.0), ("log", "o\r\nthree\r", 2.0), ("log", "\nlast, no newline", 3.0)])
    lines = _read_all(LogStream(server.address, 7, still_running=lambda: pytest.fail("the stream did not break")))
    assert lines == ["one\n", "two\n", "three\n", "last, no newline"]
    (opened,) = server.opened
    assert opened.after == 0.0
    assert opened.headers["flwr-package-version"] == flwr.__version__  # the SuperLink checks the version
    assert opened.headers["flwr-package-name"] == "flwr" and opened.headers["flwr-component-name"] == "flwr CLI"


def test_a_broken_stream_of_a_run_that_goes_on_is_opened_again_after_the_last_part(api):
    server = api([("log", "a\nb", 5.5), ("break",)], [("log", "c\n", 6.0), ("break",)], [("log", "d\n", 7.0)])
    asked = []

    def still_running() -> bool:
        asked.append(True)
        return True

    lines = _read_all(LogStream(server.address, 7, still_running, retry_s=0.01))
    assert lines == ["a\n", "bc\n", "d\n"]  # nothing twice, nothing lost, the cut line joined
    assert [o.after for o in server.opened] == [0.0, 5.5, 6.0]
    assert len(asked) == 2


def test_a_broken_stream_of_a_finished_run_is_not_opened_again(api):
    server = api([("log", "a\n", 1.0), ("break",)])
    assert _read_all(LogStream(server.address, 7, still_running=lambda: False, retry_s=0.01)) == ["a\n"]
    assert len(server.opened) == 1


def test_a_refused_stream_ends_with_one_line_saying_why(api):
    body = '{"message": "Run 7 not found while streaming logs."}'
    server = api([("refuse", 404, body)])
    lines = _read_all(LogStream(server.address, 7, still_running=lambda: True, retry_s=0.01))
    assert lines == [
        'The SuperLink refused the log of run 7 (HTTP 404): {"message": "Run 7 not found while streaming logs."}\n'
    ]
    assert len(server.opened) == 1


def test_close_cuts_a_read_that_waits_for_the_next_line_and_hangs_up(api):
    server = api([("log", "a\n", 1.0), ("quiet",)])
    stream = LogStream(server.address, 7, still_running=lambda: pytest.fail("a closed stream is not reopened"))
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(stream.lines()))
    reader.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    stream.close()
    assert time.monotonic() - start < 2
    assert not reader.is_alive() and got == ["a\n"]
    assert server.opened[0].hung_up.wait(5)  # the server saw the connection go


def test_plain_address_reads_only_the_launchers_own_plain_connections(tmp_path):
    home = FlowerHome(tmp_path)
    assert plain_address(home, "sim") is None  # no config.toml yet
    home.add_connection("sim", "127.0.0.1:9999")
    assert plain_address(home, "sim") == "127.0.0.1:9999"
    assert plain_address(home, "other") is None
    assert plain_address(FlowerHome(tmp_path, flwr_home=tmp_path), "sim") is None  # the operator's FLWR_HOME
    (tmp_path / "config.toml").write_text(
        '[superlink.lab]\naddress = "lab:8000"\nroot-certificates = "/ca.crt"\n', encoding="utf-8"
    )
    assert plain_address(home, "lab") is None  # TLS: left to `flwr log`


# --- flwr_run with the stand-in: `flwr run` and `flwr list` a shell script, the log over HTTP ---


class _ScriptHome(FlowerHome):
    @property
    def env(self) -> dict[str, str]:
        env = super().env
        return {**env, "PATH": f"{self.path / 'bin'}{os.pathsep}{env['PATH']}"}


def _home(tmp_path: Path, address: str, status: str = "finished:completed") -> _ScriptHome:
    """``flwr run`` submits run 7, ``flwr list`` says ``status``; any other ``flwr`` call is recorded."""
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "flwr"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = run ]; then echo \'{{"success": true, "run-id": "7"}}\'; exit 0; fi\n'
        f'if [ "$1" = list ]; then echo \'{{"runs": [{{"run-id": 7, "status": "{status}"}}]}}\'; exit 0; fi\n'
        f'echo "$@" >> "{tmp_path}/other-calls"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    home = _ScriptHome(tmp_path)
    home.add_connection("sim", address)
    return home


def _log_threads() -> list[threading.Thread]:
    """The launcher's log readers alive now (the stand-in server's own threads, and other tests', are not)."""
    return [t for t in threading.enumerate() if t.name == READER_THREAD]


def test_flwr_run_echoes_the_log_read_in_process_and_starts_no_flwr_log(api, tmp_path, capsys):
    server = api([("log", "INFO : [ROUND 1/1]\n", 1.0), ("log", "INFO : Run finished\n", 2.0)])
    home = _home(tmp_path, server.address)
    seen: list[str] = []
    assert flwr_run(home, "sim", {}, echo=True, timeout=30, on_line=seen.append) == 7
    assert seen == ["INFO : [ROUND 1/1]\n", "INFO : Run finished\n"]
    assert capsys.readouterr().out == "".join(seen)
    assert not (tmp_path / "other-calls").exists()  # no `flwr log`


def test_flwr_run_at_its_deadline_stops_a_quiet_log_and_hangs_up(api, tmp_path):
    server = api([("log", "started\n", 1.0), ("quiet",)])
    home = _home(tmp_path, server.address, status="running")
    before = set(_log_threads())
    start = time.monotonic()
    with pytest.raises(FlowerError, match=r"Run 7 did not finish within 1 s, so it was stopped: give a larger"):
        flwr_run(home, "sim", {}, echo=False, timeout=1)
    assert time.monotonic() - start < 10
    assert server.opened[0].hung_up.wait(5)
    assert [t for t in _log_threads() if t not in before and t.is_alive()] == []  # no reader left blocked


def test_flwr_run_stops_following_once_the_caller_says_the_run_is_over(api, tmp_path):
    server = api([("log", "Round 2 done\n", 1.0), ("quiet",)])
    home = _home(tmp_path, server.address, status="running")
    asked: list[float] = []

    def ended() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 3

    assert flwr_run(home, "sim", {}, echo=False, timeout=60, ended=ended) == 7
    assert server.opened[0].hung_up.wait(5)
    assert not (tmp_path / "other-calls").exists()
