"""Run a node's Flower command next to a fork server of its own, so that its ClientApp processes
start warm (:mod:`launcher.forkserver`)::

    python -m launcher.warm flower-supernode --insecure --superlink 127.0.0.1:9092 ...
    fedmnist-warm flower-superexec --insecure --runtime-api-address supernode-1:9094   # the same, installed

It makes a private folder (mode 0700) for the server's socket and for a ``flwr-clientapp``
command (:mod:`launcher.warm_clientapp`), starts the server, and then becomes the command (``exec``:
the same process, so its pid, signals and exit code are the command's) with that folder first on
``PATH`` and the socket in ``FEDMNIST_FORKSERVER``: the SuperExec the command starts (a SuperNode's
own, or ``flower-superexec`` itself) then finds this ``flwr-clientapp`` before Flower's. The server
stops, and removes the folder, within a second of the command's end. Flower itself is not changed.

``FEDMNIST_WARM_CLIENTAPP=0`` turns it off: the command then runs as it is (``exec``).
"""

from __future__ import annotations

import os
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


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command or command[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    if not enabled():
        os.execvp(command[0], command)
    folder = Path(tempfile.mkdtemp(prefix="fedmnist-warm-"))  # mode 0700
    env = prepare(folder)
    # The server leaves (and removes the folder) once this process, which becomes the command, is gone.
    server = subprocess.Popen(server_command(folder) + ["--parent", str(os.getpid()), "--remove-folder"])
    wait_ready(server, folder / SOCKET_NAME)
    os.environ.update(env)
    try:
        os.execvp(command[0], command)  # the same pid: signals, exit code and `kill` reach the command itself
    except OSError as exc:
        print(f"fedmnist-warm: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        server.terminate()
        server.wait()
        return 127


if __name__ == "__main__":
    sys.exit(main())
