"""What the container tests check of the warm ClientApp path (launcher/warm.py) on a node host:
that each node's messages ran as children of its fork server, and that only processes in the
fork server's own container can ask it for one."""

from __future__ import annotations

import json
import subprocess

import psutil

from deploy import harness

# Run inside a container: try the fork server's socket at argv[1] and print what happened as one
# JSON line. A request that was answered "ready" is then dropped before "go", so nothing runs.
PROBE = """
import glob, json, socket, sys
from launcher.forkserver import receive, send
path = sys.argv[1]
# The same socket reached through any process this container can see (/proc/PID/root/...).
found = {"path": path, "via-proc": [p for p in glob.glob("/proc/*/root" + path) if p.endswith(path)]}
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.settimeout(10)
try:
    sock.connect(path)
    send(sock, {"argv": ["flwr-clientapp", "--help"], "env": {}, "cwd": "/", "umask": 18, "fds": []})
    found["answer"] = receive(sock)[0]
except Exception as exc:
    found["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(found))
"""


def fork_server(compose: harness.Compose, service: str) -> tuple[int, str, str]:
    """The fork server in ``service``'s container: its pid on this machine, its uid and its socket."""
    top = subprocess.run(
        [compose.docker, "top", compose.container(service) or service, "-eo", "pid,uid,args"],
        capture_output=True,
        text=True,
    )
    for line in top.stdout.splitlines()[1:]:
        pid, uid, args = line.split(None, 2)
        if "launcher.forkserver" in args and "--socket" in args:
            argv = args.split()
            return int(pid), uid, argv[argv.index("--socket") + 1]
    raise AssertionError(f"{service}: no fork server running (warm path off?):\n{top.stdout}{top.stderr}")


def children_cpu_s(pid: int) -> float:
    """CPU seconds of the fork server's ended descendants (each message's child is reaped by a
    waiter the server forked, so the server's cutime holds them): above zero only if messages ran
    as its children, not as Flower's own processes started by the SuperExec."""
    times = psutil.Process(pid).cpu_times()
    return times.children_user + times.children_system


def probe(compose: harness.Compose, service: str, path: str, user: str) -> dict:
    """Ask the fork server at ``path`` from ``service``'s container, as ``user``."""
    done = compose.exec(service, "python", "-c", PROBE, path, user=user)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stdout + done.stderr
    return json.loads(lines[-1])


def check_warm_and_private(compose: harness.Compose, nodes: list[str], neighbours: dict[str, list[str]]) -> dict:
    """Every node in ``nodes`` (its ClientApp container) ran its messages warm; its own container's
    user gets an answer from its fork server; each service in ``neighbours[node]`` (another
    container, as the same user) finds no socket to ask, not even through /proc. What each
    neighbour was told, by "NEIGHBOUR asking NODE's fork server"."""
    refused: dict[str, str] = {}
    for node in nodes:
        pid, uid, path = fork_server(compose, node)
        assert uid != "0", f"{node}: the fork server runs as root"
        cpu = children_cpu_s(pid)
        assert cpu > 1.0, f"{node}: the fork server's children used {cpu} CPU s: messages did not run warm"
        assert "cannot take messages" not in compose.logs(node, 400), compose.logs(node, 400)
        friend = probe(compose, node, path, uid)
        assert friend.get("answer") == {"ready": True}, friend
        assert friend["via-proc"], friend  # the /proc route works where there is something to find
        for other in neighbours.get(node, []):
            stranger = probe(compose, other, path, uid)
            assert "answer" not in stranger and stranger["error"].startswith("FileNotFoundError"), stranger
            assert stranger["via-proc"] == [], stranger  # nor through another process's root folder
            refused[f"{other} asking {node}'s fork server"] = stranger["error"]
    return refused
