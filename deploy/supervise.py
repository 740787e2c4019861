#!/opt/venv/bin/python
"""Keep a SuperNode in the federation: run flower-supernode, and start it again when it has
given up its connection to the SuperLink.

    fedmnist-supervise flower-supernode ARGS...      (the image's entrypoint does this for every SuperNode)
    fedmnist-supervise --health URL                  (docker healthcheck: URL answers and the node is connected)

Flower 1.41's SuperNode gives up its connection for good on any error whose message mentions
SSL or TLS (``_should_giveup`` in flwr/supercore/retry/http_retry.py), such as a connection
that a restarting proxy or an overloaded one closed in the middle of a request, and on any
answer but 502/503/504. Its connection loop then ends, but the process does not: the thread
that serves its own port (9094) keeps it alive, healthy to Docker and lost to the SuperLink.
Two remedies, both here:

- The child process retries a broken connection like a refused one
  (:func:`broken_connections_are_retried`), so a proxy restart or a flood costs the node a
  few retries, not its place: it keeps its session and the message it was sending.
- When the connection loop ends anyway (an answer Flower gives up on), the child exits with
  :data:`LOST` (``flower-supernode`` only returns once that loop has ended) and this
  supervisor starts it again after :data:`RESTART_DELAY` seconds.

A child killed by a signal (the kernel's out-of-memory killer) is started again the same way.
A node that left while the SuperLink could not be told still counts as online there for up to
two heartbeat intervals (60 s), and the SuperLink refuses to activate it again until then
("Failed to activate SuperNode"); so for :data:`REJOIN_WINDOW` seconds after a lost connection,
a start that fails is tried again every :data:`REJOIN_DELAY` seconds. Any other exit is passed
on, so Docker's restart policy decides (a key nobody registered keeps failing, as it should).
SIGTERM, SIGINT and SIGQUIT go to the SuperNode, which leaves the SuperLink properly.

What the SuperNode logs passes through unchanged; the supervisor also reads it to know whether
the node is connected (Flower logs "SuperNode ID" once activated, "Connection attempt failed"
while retrying, "Connection successful" once through), which it keeps in :data:`STATE_FILE`
for ``--health``. Standard library only, but for the child's retry policy (httpx, Flower).
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

LOST = 75  # the child's exit status when Flower's connection loop has ended
RESTART_DELAY = 2.0
REJOIN_WINDOW = 150.0
REJOIN_DELAY = 3.0
STATE_FILE = Path(os.environ.get("FEDMNIST_SUPERNODE_STATE", "/tmp/fedmnist-supernode.json"))
# Lines of Flower's log that say whether the node is connected (flwr 1.41).
CONNECTED = (b"SuperNode ID:", b"Connection successful after")
DISCONNECTED = (b"Connection attempt failed",)


def say(message: str) -> None:
    print(f"fedmnist-supervise: {message}", file=sys.stderr, flush=True)


def broken_connections_are_retried() -> None:
    """Make the SuperNode's retry policy retry a connection broken at the TLS level (closed
    mid-handshake, an end of stream where an answer was due) as it retries a refused one, with
    Flower's own backoff; a certificate that fails verification still ends the connection, as do
    the answers Flower gives up on (a key the SuperLink does not know, a 4xx or 500)."""
    import httpx

    from task.flower_compat import MissingFlowerPiece, owner  # Flower's internals, listed there

    try:
        module, name = owner("make_simple_http_retry_invoker")
    except MissingFlowerPiece as exc:  # another Flower: its own policy, and restarts, still apply
        say(f"broken connections end the session as Flower decides: {exc}")
        return
    make_flowers = getattr(module, name)

    def make_patient() -> object:
        invoker = make_flowers()
        gives_up = invoker.should_giveup

        def should_giveup(exc: Exception) -> bool:
            if isinstance(exc, httpx.TransportError) and "certificate" not in str(exc).lower():
                return False
            return gives_up(exc)

        invoker.should_giveup = should_giveup
        return invoker

    setattr(module, name, make_patient)


def run_child(argv: list[str]) -> None:
    """Run the ``flower-supernode`` command in this process; exit :data:`LOST` when it returns."""
    broken_connections_are_retried()
    script = shutil.which(argv[0])
    if script is None:
        say(f"{argv[0]}: command not found")
        os._exit(127)
    sys.argv = [script, *argv[1:]]
    code: object = 1
    try:
        runpy.run_path(script, run_name="__main__")  # ends in sys.exit(flower_supernode())
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # a traceback is all there is to say
        import traceback

        traceback.print_exc()
    if code is None:
        say("flower-supernode gave up its connection to the SuperLink (its connection loop ended)")
        code = LOST
    sys.stdout.flush()
    sys.stderr.flush()
    # The Runtime API's server thread is not a daemon: a normal exit would wait for it forever.
    os._exit(code if isinstance(code, int) else 1)


def write_state(connected: bool) -> None:
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps({"connected": connected, "since": time.time(), "pid": os.getpid()}))
    tmp.replace(STATE_FILE)


def relay(stream, out) -> None:
    """Pass the child's output on, and keep :data:`STATE_FILE` up to date from it."""
    connected: bool | None = None
    for line in iter(stream.readline, b""):
        out.write(line)
        out.flush()
        now = True if any(m in line for m in CONNECTED) else False if any(m in line for m in DISCONNECTED) else None
        if now is not None and now != connected:
            connected = now
            write_state(connected)


class Supervisor:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.child: subprocess.Popen | None = None
        self.stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self.forward)

    def forward(self, signum: int, _frame: object) -> None:
        self.stopping.set()
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def start(self) -> int:
        write_state(False)
        self.child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", *self.argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        pump = threading.Thread(target=relay, args=(self.child.stdout, sys.stderr.buffer), daemon=True)
        pump.start()
        code = self.child.wait()
        pump.join(timeout=5)
        write_state(False)
        return code

    def run(self) -> int:
        lost_at: float | None = None
        while True:
            code = self.start()
            if self.stopping.is_set():
                return code
            if code == LOST or code < 0:  # gave up, or killed (the kernel's OOM killer, a kill -9)
                lost_at = time.monotonic()
                if code < 0:
                    say(f"flower-supernode was killed by signal {-code}")
                say(f"starting flower-supernode again in {RESTART_DELAY:g} s")
                delay = RESTART_DELAY
            elif code != 0 and lost_at is not None and time.monotonic() - lost_at < REJOIN_WINDOW:
                # The SuperLink may still count the lost connection as online (up to 60 s).
                say(f"flower-supernode exited with {code} while rejoining; trying again in {REJOIN_DELAY:g} s")
                delay = REJOIN_DELAY
            else:
                return code
            if self.stopping.wait(delay):
                return 0


def health(url: str) -> int:
    """0 when ``url`` (the SuperNode's own /health) answers 200 and the node is connected."""
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        print(f"{STATE_FILE}: no state yet (the SuperNode has not started)", file=sys.stderr)
        return 1
    if not state.get("connected"):
        print(f"not connected to the SuperLink for {time.time() - state.get('since', 0):.0f} s", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return 0 if resp.status == 200 else 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        run_child(argv[1:])
    if argv[:1] == ["--health"] and len(argv) == 2:
        return health(argv[1])
    if not argv or argv[0].startswith("-"):
        print("usage: fedmnist-supervise flower-supernode ARGS... | --health URL", file=sys.stderr)
        return 2
    return Supervisor(argv).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
