"""A fork server for a node's ClientApp processes: Python, Flower, PyTorch and NumPy imported
once, a fresh forked process for every message.

Flower 1.41's SuperExec starts a new ``flwr-clientapp`` process for every message, and each one
spends seconds of CPU importing the same libraries before it does any work. This server imports
them once (third-party code only: never the app's own modules, which each run brings in its
FAB, and never CUDA, which must start after the fork) and, for each request of
:mod:`launcher.warm_clientapp`, forks a child that runs Flower's own ``flwr-clientapp`` entry
point with that message's command line, environment, working folder and standard streams. Each
message still gets a process of its own (its memory, exit code and signals); only the imports
are shared. ``launcher.warm`` starts one next to each SuperNode or SuperExec.

One request on a Unix ``SOCK_SEQPACKET`` socket (one JSON message per packet), in a folder only
this user can open, the peer's uid checked again with ``SO_PEERCRED``:

    client -> server   {"argv", "env", "cwd", "umask", "fds"}
    server             forks a waiter for the request and goes back to accept()
    waiter -> client   {"ready": true}    (or {"refused": why} from the server)
    client -> waiter   {"go": true} with its stdin, stdout and stderr (SCM_RIGHTS)
    waiter             forks the child, which becomes the message's process at once
    waiter -> client   {"pid": child}, then {"exit": code} or {"signal": number} once the child has ended

The client waits for "ready" at most a few seconds and only then commits: a server that is stuck
never holds its streams, and a request it takes up after the client gave up never runs.

A client that goes away (killed) takes its child with it (SIGKILL), as Flower's own process
would have died with it. Linux only (``SO_PEERCRED``, ``pidfd_open``).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import importlib.metadata
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOCKET_ENV = "FEDMNIST_FORKSERVER"  # the socket a node's `flwr-clientapp` asks
NOTED_FILE = "fallback-noted"  # next to the socket: the plain path has been announced in the node's log
# Third-party modules every message imports (with Flower's `flwr-clientapp` module itself).
DEFAULT_PRELOAD = ("numpy", "torch", "flwr.app", "flwr.client", "flwr.clientapp", "flwr.clientapp.mod")
MAX_PACKET = 1 << 20
CHILD_NAME = "flwr-clientapp"  # what ps, top and psutil call a child, as they call Flower's own process


def flower_clientapp_entry() -> str:
    """What Flower's ``flwr-clientapp`` command runs, ``module:function``, read from its console-script
    entry point as the command's own launcher script finds it (no private Flower name in this project)."""
    found = importlib.metadata.entry_points(group="console_scripts", name="flwr-clientapp")
    if not found:
        raise SystemExit("no `flwr-clientapp` entry point: is Flower (flwr) installed in this Python?")
    return next(iter(found)).value


def name_process(name: str) -> None:
    """The name ps, top and psutil show for this process (Linux's ``comm``; the command line stays)."""
    try:
        Path("/proc/self/comm").write_text(name)
    except OSError:
        pass


def load_entry(value: str) -> Any:
    """The function named by an entry-point value ``module:function``."""
    return importlib.metadata.EntryPoint(name="entry", value=value, group="console_scripts").load()


def send(sock: socket.socket, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket, maxfds: int = 0) -> tuple[dict, list[int]]:
    """One message (and the descriptors sent with it); EOFError when the other side has closed."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, maxfds)
    if not data:
        raise EOFError("the other side closed the connection")
    return json.loads(data), fds


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket, as the kernel saw it connect."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def check_private(folder: Path) -> None:
    """The socket's folder must be this user's and closed to everyone else: the folder's mode is what
    keeps other users (and other containers sharing a volume) from reaching the socket at all."""
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise SystemExit(
            f"forkserver: {folder} must belong to uid {os.getuid()} with mode 0700 (it has uid {info.st_uid}, "
            f"mode {info.st_mode & 0o777:o}): `chmod 700 {folder}`, or give --socket a path in a private folder"
        )


class _BecomeChild(BaseException):
    """Raised in a forked child: unwinds the server's frames (closing their sockets) up to :func:`main`,
    which then runs the message outside the server's loop and ends the process (:func:`exit_code_of`)."""

    def __init__(self, request: dict, fds: list[int]) -> None:
        super().__init__()
        self.request, self.fds = request, fds


def serve(path: Path, parent: int | None = None, remove_folder: bool = False) -> None:
    """Accept requests on ``path`` until SIGTERM or SIGINT, or until process ``parent`` is gone (this
    server then belongs to no one); a waiter process per request. ``remove_folder``: the socket's
    folder goes with the server."""
    check_private(path.parent)
    path.unlink(missing_ok=True)
    owner = os.getpid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(64)
        (path.parent / NOTED_FILE).unlink(missing_ok=True)
        try:
            while parent is None or os.getppid() == parent:
                reap_waiters()
                if not select.select([listener], [], [], 1.0)[0]:
                    continue
                conn, _ = listener.accept()
                with conn:
                    uid = peer_uid(conn)
                    if uid != os.getuid():
                        print(f"forkserver: refused a request from uid {uid}", file=sys.stderr, flush=True)
                        send(conn, {"refused": f"the fork server serves uid {os.getuid()} only, not {uid}"})
                        continue
                    sys.stdout.flush()
                    sys.stderr.flush()
                    if os.fork() == 0:
                        listener.close()
                        _wait_on_child(conn)  # never returns in the waiter; raises _BecomeChild in the child
        finally:
            if os.getpid() == owner:  # not in a child unwinding through here
                path.unlink(missing_ok=True)
                if remove_folder:
                    shutil.rmtree(path.parent, ignore_errors=True)


def reap_waiters() -> None:
    """Collect the waiters that have ended (at most a second after they did). Collected rather than
    left to the kernel, so that what each message cost shows in this server's children's CPU times
    (``ps``'s cutime, psutil's ``cpu_times().children_user``): a waiter waits for its message's child."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:  # no waiter at all
        pass


def _wait_on_child(conn: socket.socket) -> None:
    """The waiter: on the client's go, fork the message's child with the client's streams, hand the
    client its pid, and report how it ended."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        request, _ = receive(conn)
        send(conn, {"ready": True})
        go, fds = receive(conn, maxfds=3)
    except (OSError, EOFError, ValueError):  # the client gave up: Flower's plain process takes the message
        os._exit(0)
    if go.get("go") is not True:
        os._exit(0)
    try:
        pid = os.fork()
    except OSError as exc:  # out of processes or memory: nothing ran, Flower's plain process may try
        send(conn, {"refused": f"fork failed ({exc})"})
        os._exit(0)
    if pid == 0:
        raise _BecomeChild(request, fds)
    for fd in fds:
        os.close(fd)
    try:
        send(conn, {"pid": pid})
    except OSError:
        pass  # the client is gone: _until_ended sees it and ends the child
    status = _until_ended(conn, pid)
    try:
        send(conn, status)
    except OSError:
        pass
    os._exit(0)


def _until_ended(conn: socket.socket, pid: int) -> dict:
    """Wait for the child to end; kill it if its client goes away first."""
    pidfd = os.pidfd_open(pid)
    while pidfd not in select.select([conn, pidfd], [], [])[0]:
        if not conn.recv(1):  # the client is gone (nothing else is ever sent now)
            os.kill(pid, signal.SIGKILL)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.waitstatus_to_exitcode(status)}


def run_child(request: dict, fds: list[int], entry: str) -> Any:
    """Become the message's process: the client's streams, folder, umask, environment and command
    line, then Flower's entry point (its return value or SystemExit is the exit code)."""
    for target, fd in zip(request["fds"], fds):
        os.dup2(fd, target)
        if fd not in request["fds"]:
            os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    importlib.invalidate_caches()  # the run's FAB is installed after the server's imports
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # Python's `random` reseeds itself in a forked child; NumPy's global state does not
        numpy.random.seed()
    name_process(CHILD_NAME)
    return load_entry(entry)()


def exit_code_of(run: Callable[[], Any]) -> int:
    """Run the message, and end it as Python ends a program (the exit code, a traceback or a message,
    logs and streams flushed) but for the teardown of every module: in a forked child that teardown
    writes to every object it shares with the server (reference counts), copying most of the server's
    memory, about 1 CPU s per message for nothing. Flower registers no atexit handler; a thread still
    running ends with the process, as it would after a SIGTERM."""
    try:
        code = _code(run())
    except SystemExit as exc:
        code = _code(exc.code)
    except KeyboardInterrupt:  # as Python does: end by the signal, so that the caller sees it
        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    _flush()
    return code


def _code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _flush() -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def preload(modules: list[str], entry: str) -> float:
    """Import ``modules`` and the entry point; refuse a state that must not be forked. Seconds taken."""
    start = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    load_entry(entry)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise SystemExit("forkserver: CUDA was initialised while preloading; it must start in each child")
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        print(f"forkserver: threads running before fork ({names}); children get none of them", file=sys.stderr)
    gc.freeze()  # what is loaded now stays out of the children's garbage collections (and so unwritten)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, required=True, help="socket path, in a folder of mode 0700")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD), help="comma-separated modules to import")
    parser.add_argument("--entry-point", default=None, help="module:function each child runs (Flower's by default)")
    parser.add_argument("--parent", type=int, default=None, help="stop when this process (the node's command) is gone")
    parser.add_argument("--remove-folder", action="store_true", help="remove the socket's folder on the way out")
    args = parser.parse_args(argv)
    entry = args.entry_point or flower_clientapp_entry()
    if sys.path and sys.path[0] in ("", os.getcwd()):  # `python -m` put the working folder first;
        sys.path[0] = sysconfig.get_path("scripts")  # Flower's own command has its script's folder there
    modules = [m.strip() for m in args.preload.split(",") if m.strip()]
    try:
        seconds = preload(modules, entry)
        print(
            f"forkserver: ready on {args.socket} ({', '.join(modules)} and {entry} imported in {seconds:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        serve(args.socket, args.parent, args.remove_folder)
    except _BecomeChild as child:
        os._exit(exit_code_of(functools.partial(run_child, child.request, child.fds, entry)))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
