"""Before a simulation goes to an existing Ray cluster: is the address a Ray head, and can every
node run this app's clients?

Flower's simulation hands virtual clients to any node of the cluster, and each node imports the
project and loads MNIST on its own (only the launcher's machine gets the app bundle). A node that
cannot would fail its clients one by one, round after round, and an address that is not a Ray
head would leave ``ray.init()`` waiting or failing deep inside Ray. So before the SuperLink starts:

1. :func:`probe_address`: HOST:PORT accepts a connection and answers in HTTP/2, as the gRPC server
   of a Ray head does; a web server, a silent listener or nothing at all is named for what it is.
2. :func:`node_facts` runs once on every live node, pinned to it, from a short Ray driver in a
   child process (so whatever Ray does on a bad address stays there, bounded by a timeout), with
   the PYTHONPATH the simulation's clients get: the node's host, its Python, Flower and PyTorch,
   the project's version and a digest of each module the ClientApp runs, and whether MNIST loads.
3. :func:`problems` compares each node with this machine: the first problem ends the launch with
   one line naming the node (host, IP, Ray node id) and the fix.

    python -m launcher.ray_cluster HOST:PORT   # what the launcher checks, as JSON
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from launcher import PROJECT_ROOT
from task.errors import UserError
from task.host import versions

# What a client runs on a node (the ClientApp's own imports); their code must match everywhere.
CLIENT_PACKAGES = ("client_app", "task", "partitioning")
DISTRIBUTIONS = ("flwr", "torch", "fedavg-mnist")
# The clients' Ray workers start afresh for every run: a node needs no restart after a reinstall.
INSTALL = "install this checkout there, into the Python that runs its Ray (pip install .)"
# The opening of an HTTP/2 connection: the client preface and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
PROBE_TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 120.0


class RayClusterError(UserError):
    """The Ray address is not a Ray head, or a node of the cluster cannot run the app's clients."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in address:
        raise RayClusterError(
            f"--ray-address '{address}' is not HOST:PORT: give the head's address as `ray start --head` "
            "prints it (e.g. 10.0.0.5:6379), not a URL."
        )
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`RayClusterError` unless ``address`` answers as a gRPC (HTTP/2) server does
    (``auto``, Ray's word for the cluster started on this machine, is left to Ray)."""
    if address == "auto":
        return
    host, port = split_address(address)
    fix = "give the address `ray start --head` printed on the head (port 6379 unless --port was given)"
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RayClusterError(
            f"--ray-address {address}: cannot connect ({exc.strerror or exc}): is the head's Ray running "
            f"(`ray start --head` there) and its port open to this machine? Else {fix}."
        ) from None
    with conn:
        try:
            conn.sendall(HTTP2_PREFACE)
            answer = conn.recv(64)
        except OSError:  # a timeout, or a listener that hung up on the preface
            answer = b""
    if answer.startswith(b"HTTP/") or b"<html" in answer.lower() or b"<!doctype" in answer.lower():
        first = answer.splitlines()[0].decode(errors="replace")
        raise RayClusterError(
            f"--ray-address {address} is a web server (it answered {first!r}), not a Ray head (the "
            f"dashboard's or job server's port is not the cluster's address): {fix}."
        )
    if len(answer) < 9 or answer[3] != 4:  # an HTTP/2 server's first frame is its SETTINGS (type 4)
        said = f"answered {answer[:24]!r}" if answer else f"said nothing within {timeout:g} s"
        raise RayClusterError(f"--ray-address {address} accepts connections but {said}: it is not a Ray head; {fix}.")


def node_facts(data_dir: str) -> dict[str, object]:
    """What one node offers the app's clients (runs on that node, in a Ray worker)."""
    import ray

    context = ray.get_runtime_context()
    facts: dict[str, object] = {"node": context.get_node_id(), "host": socket.gethostname(), **client_facts()}
    try:
        from task.data import load_mnist, release_mnist

        load_mnist(data_dir or None)
        release_mnist()
        facts["mnist"] = None
    except Exception as exc:  # what a client there would meet; its message says what to do
        facts["mnist"] = f"{type(exc).__name__}: {exc}"
    return facts


def client_facts() -> dict[str, object]:
    """What decides whether this process runs the clients as another would: Python (major.minor:
    what pickles and wheels depend on), Flower, PyTorch and the project, and the project's code."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {**versions(DISTRIBUTIONS), "python": python, "code": code_digests()}


def code_digests() -> dict[str, str]:
    """SHA-256 of each module of :data:`CLIENT_PACKAGES` as this process would import them."""
    import hashlib
    import importlib.util
    from pathlib import Path

    digests: dict[str, str] = {}
    for package in CLIENT_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(folder.rglob("*.py")):
            digests[f"{package}/{path.relative_to(folder).as_posix()}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def problems(here: dict[str, object], nodes: list[dict[str, object]]) -> list[str]:
    """One line per node that cannot run the clients as this machine would, naming node and fix."""
    found = []
    for node in nodes:
        name = f"Ray node {node['ip']} (host {node['host']}, node id {str(node['node'])[:12]})"
        if node.get("error"):
            found.append(f"{name} cannot run this project's check ({node['error']}): {INSTALL}.")
        elif (differs := _differences(here, node)) is not None:
            found.append(f"{name} has {differs}: {INSTALL}.")
        elif node["mnist"]:
            found.append(
                f"{name} cannot load MNIST: {node['mnist']} (Or copy mnist-uint8.npz there, into its Ray's "
                "$FEDMNIST_DATA_DIR or the run's data-dir.)"
            )
    return found


def _differences(here: dict[str, object], node: dict[str, object]) -> str | None:
    for key in ("python", *DISTRIBUTIONS):
        if node.get(key) != here.get(key):
            return f"{'Python' if key == 'python' else key} {node.get(key) or '(not installed)'} (here {here.get(key)})"
    ours, theirs = here["code"], node["code"]
    assert isinstance(ours, dict) and isinstance(theirs, dict)
    changed = sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        return f"another copy of the project's code ({shown} differ)"
    return None


def check_cluster(address: str, data_dir: str = "", cpus_per_client: float = 1.0, echo: bool = True) -> None:
    """Probe ``address``, check every node, and say which nodes will run clients; raise
    :class:`RayClusterError` with one line on the first thing that would fail the run."""
    probe_address(address)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "launcher.ray_cluster", address, data_dir]
    try:
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise RayClusterError(
            f"the Ray head at {address} did not let this machine run its check on every node within "
            f"{CHECK_TIMEOUT_S:g} s: see `ray status` on the head; a node whose Ray is stuck needs `ray stop` "
            "and `ray start` again."
        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RayClusterError(f"joining the Ray cluster at {address} failed: {last}")
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    found = problems(client_facts(), nodes)
    if found:
        raise RayClusterError(found[0] + (f" ({len(found) - 1} more node(s) with problems)" if len(found) > 1 else ""))
    slots = {node["node"]: int(node["cpus"] // cpus_per_client) for node in nodes}
    if not any(slots.values()):
        raise RayClusterError(
            f"no node of the Ray cluster at {address} has {cpus_per_client:g} CPU(s) for a client: "
            "lower --cpus-per-client or give the nodes more (`ray start --num-cpus`)."
        )
    if echo:
        shown = ", ".join(f"{n['host']} ({n['ip']}, {slots[n['node']]} client(s) at a time)" for n in nodes)
        print(f"Ray cluster at {address}: {len(nodes)} node(s) checked: {shown}.", flush=True)


def gather(address: str, data_dir: str) -> list[dict[str, object]]:
    """Run :func:`node_facts` on every live node with CPUs; a node that fails it gets ``error``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # As Flower does for its clients: the workers get this process's import path (here: the checkout).
    path = os.pathsep.join([str(PROJECT_ROOT), *sys.path[1:]])
    ray.init(
        address=address, logging_level="ERROR", log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}}
    )
    probe = ray.remote(num_cpus=0, max_retries=0)(node_facts)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(data_dir)
        for n in nodes
    ]
    found = []
    for node, ref in zip(nodes, refs):
        base = {"node": node["NodeID"], "ip": node["NodeManagerAddress"], "host": node["NodeManagerHostname"]}
        try:
            facts = ray.get(ref, timeout=CHECK_TIMEOUT_S / 2)
        except Exception as exc:  # the node could not even run the check
            facts = {"error": str(exc).strip().splitlines()[-1][:300]}
        found.append({**base, **facts, "cpus": node["Resources"]["CPU"]})
    ray.shutdown()
    return found


if __name__ == "__main__":
    print(json.dumps(gather(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")))
