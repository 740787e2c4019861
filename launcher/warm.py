"""Run a node's Flower command next to a fork server of its own, so that its ClientApp processes
start warm (:mod:`launcher.forkserver`)::

    python -m launcher.warm flower-supernode --insecure --superlink 127.0.0.1:9092 ...
    fedmnist-warm flower-superexec --insecure --runtime-api-address supernode-1:9094   # the same, installed

It makes a private folder (mode 0700) for the server's socket and for a ``flwr-clientapp``
command (:mod:`launcher.warm_clientapp`), starts the server, and runs the command with that
folder first on ``PATH`` and the socket in ``FEDMNIST_FORKSERVER``: the SuperExec the command
starts (a SuperNode's own, or ``flower-superexec`` itself) then finds this ``flwr-clientapp``
before Flower's. Signals are passed on to the command; when it ends, the server is stopped, the
folder removed, and this exits as the command did. Flower itself is not changed.

``FEDMNIST_WARM_CLIENTAPP=0`` turns it off: the command then runs as it is (``exec``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launcher.forkserver import SOCKET_ENV
from launcher.warm_clientapp import enabled

SOCKET_NAME = "forkserver.sock"
# The command starts once the server listens (its imports take seconds), so that a node's first
# message is warm too; a server slower than this is not waited for (messages go plain until it is up).
READY_WAIT_S = 60.0
SHIM = """#!{python}
# Flower's SuperExec runs `flwr-clientapp` by name; this one asks the node's fork server first.
import sys
from launcher.warm_clientapp import main
sys.exit(main())
"""


def prepare(folder: Path, python: str = sys.executable) -> dict[str, str]:
    """Put the ``flwr-clientapp`` command in ``folder`` (which must be private); the environment that
    makes a node's SuperExec use it and ask the socket in ``folder``."""
    shim = folder / "bin" / "flwr-clientapp"
    shim.parent.mkdir(mode=0o700, exist_ok=True)
    shim.write_text(SHIM.format(python=python))
    shim.chmod(0o700)
    return {"PATH": f"{shim.parent}{os.pathsep}{os.environ.get('PATH', '')}", SOCKET_ENV: str(folder / SOCKET_NAME)}


def server_command(folder: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "launcher.forkserver", "--socket", str(folder / SOCKET_NAME)]


def wait_ready(server: subprocess.Popen, socket_path: Path, timeout: float = READY_WAIT_S) -> bool:
    """Until the server's socket exists (it binds once its imports are done), it exits, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not socket_path.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return socket_path.exists()


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command or command[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    if not enabled():
        os.execvp(command[0], command)
    folder = Path(tempfile.mkdtemp(prefix="fedmnist-warm-"))  # mode 0700
    env = {**os.environ, **prepare(folder)}
    server = subprocess.Popen(server_command(folder))
    wait_ready(server, folder / SOCKET_NAME)
    try:
        proc = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        print(f"fedmnist-warm: no command {command[0]!r} on PATH", file=sys.stderr)
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)
        return 127
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    try:
        code = proc.wait()
    finally:
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
