"""``flwr-clientapp`` on a node with a fork server: the message runs in a child of
:mod:`launcher.forkserver` (Flower, PyTorch and NumPy already imported), or in this process
as Flower's plain ``flwr-clientapp`` when there is no server to ask.

Flower's SuperExec starts ``flwr-clientapp`` by name from ``PATH`` for every message;
:mod:`launcher.warm` puts a folder holding this command first on that ``PATH``. It passes its
command line, environment, working folder, umask and its own stdin, stdout and stderr to the
server (the child writes straight into the SuperExec's pipes, so its output lands in the node's
log), forwards the signals it gets to the child, and exits as the child did: the same code, or
killed by the same signal. It imports the standard library only, so asking costs milliseconds.

A missing, dead, refusing or stuck server (no answer within ``HANDSHAKE_S``) never fails the
message: it runs here as Flower's plain process, and the node's log says so once until a server
is ready again. ``FEDMNIST_WARM_CLIENTAPP=0`` (or no ``FEDMNIST_FORKSERVER``) skips the server.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from launcher.forkserver import (
    CHILD_NAME,
    NOTED_FILE,
    SOCKET_ENV,
    flower_clientapp_entry,
    load_entry,
    name_process,
    receive,
    send,
)

WARM_ENV = "FEDMNIST_WARM_CLIENTAPP"  # "0": every message runs Flower's plain flwr-clientapp
HANDSHAKE_S = 5.0  # to the server's ready: a server that takes longer is treated as absent
ASKER_NAME = "flwr-warm-ask"  # this process's name while it only waits on a child (ps, top, the benchmark)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class Unavailable(Exception):
    """The fork server cannot take this message; why, in words."""


def enabled(env: dict[str, str] | os._Environ = os.environ) -> bool:
    return env.get(WARM_ENV, "1") != "0"


def ask(path: str, argv: list[str], timeout: float = HANDSHAKE_S) -> tuple[socket.socket, int]:
    """Hand this message to the server at ``path``: the connection and the child's pid, the child started."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        streams = [fd for fd in (0, 1, 2) if _is_open(fd)]
        umask = os.umask(0)
        os.umask(umask)
        send(sock, {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "umask": umask, "fds": streams})
        reply, _ = receive(sock)
        if reply.get("ready") is not True:
            raise Unavailable(reply.get("refused", f"unexpected answer {reply}"))
    except Unavailable:
        sock.close()
        raise
    except (OSError, EOFError, ValueError) as exc:  # no socket, no server, not ours, timeout, garbage
        sock.close()
        raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
    sock.settimeout(None)  # committed: from here on the message is the child's, however long it takes
    try:
        send(sock, {"go": True}, streams)
        reply, _ = receive(sock)
    except (OSError, EOFError, ValueError) as exc:  # the waiter died: whether the child started is unknown,
        sock.close()  # and running the message twice is worse than failing it
        raise SystemExit(f"fedmnist: the fork server lost this message ({type(exc).__name__}: {exc})") from None
    if "pid" not in reply:
        sock.close()
        raise Unavailable(reply.get("refused", f"unexpected answer {reply}"))
    return sock, int(reply["pid"])


def follow(sock: socket.socket, pid: int) -> int:
    """Forward our signals to the child until it ends; its exit code (a signal it died of is
    raised on this process too, so that the SuperExec sees the same end)."""
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: _kill(pid, signum))
    try:
        status, _ = receive(sock)
    except (OSError, EOFError, ValueError):  # the waiter is gone: wait for the child itself
        while _kill(pid, 0):
            time.sleep(0.2)
        print(f"fedmnist: lost track of ClientApp process {pid}; its exit code is unknown", file=sys.stderr)
        return 1
    finally:
        sock.close()
    if "signal" in status:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
        time.sleep(1)  # a signal that does not end a process by default: exit as a shell would report it
        return 128 + status["signal"]
    return int(status["exit"])


def note_once(path: str, why: str) -> None:
    """Say in the node's log (our stderr) that messages run without the server, once per outage."""
    try:
        os.close(os.open(Path(path).parent / NOTED_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    except OSError:
        pass  # no folder to remember it in: say it every time rather than never
    print(
        f"fedmnist: the ClientApp fork server at {path} cannot take messages ({why}); they run as Flower's "
        "plain flwr-clientapp processes until it is back (said once)",
        file=sys.stderr,
        flush=True,
    )


def plain(argv: list[str]) -> object:
    """This process becomes Flower's own ``flwr-clientapp`` for the message."""
    name_process(CHILD_NAME)
    sys.argv = list(argv)
    return load_entry(flower_clientapp_entry())()


def main() -> object:
    name_process(ASKER_NAME)
    path = os.environ.get(SOCKET_ENV)
    if not path or not enabled():
        return plain(sys.argv)
    try:
        sock, pid = ask(path, sys.argv)
    except Unavailable as why:
        note_once(path, str(why))
        return plain(sys.argv)
    return follow(sock, pid)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


if __name__ == "__main__":
    sys.exit(main())
