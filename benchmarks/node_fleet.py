"""The deployment that ``benchmarks.perf --only nodes`` measures (benchmarks/nodes.py).

The two-host layout without Docker, on this machine: the SuperLink with TLS, SuperNode
authentication and its state in a database file, behind nginx as deploy/bare-host/nginx_conf.py
configures it; each SuperNode (``flower-supernode``, its ClientApp processes started by its own
SuperExec) in a network namespace of its own, so it reaches the proxy from an address of its own as
a node on another host would (the proxy's per-address limits apply to it alone), with its own key,
registered before it starts. Everything it starts is stopped, and every namespace removed, on
the way out; namespaces left by a run that was killed are removed at the next start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deploy.connection import write_connection
from deploy.harness import ROOT, wait_healthy
from deploy.neighbour import Neighbour
from deploy.register import flwr_command, register
from launcher.flower_home import FlowerHome, flower_home
from launcher.forkserver import SOCKET_ENV
from launcher.processes import stop
from launcher.runtime import free_port, supernode_threads
from launcher.warm import SOCKET_NAME, prepare, server_command, wait_ready

NGINX_CONF_TOOL = ROOT / "deploy" / "bare-host" / "nginx_conf.py"
NAMESPACE_PREFIX = "fedmnist-nodes-"  # + the benchmark's pid + node index
LINKS = "10.254.0.0/16"  # deploy/neighbour.py takes each node's /30 from here
NODE_RUNTIME_PORT = 9094  # every node in its own namespace: the same port for all
# Flower's default: here every node's SuperExec polls on the two cores the SuperLink needs too.
NODE_POLL_S = "1"
# The nodes run on hosts of their own in a real federation; here they yield the cores to the SuperLink,
# the proxy and the ServerApp, so that a burst of ClientApp processes does not starve them.
NICE = ("nice", "-n", "19")
SUPERVISE = ROOT / "deploy" / "supervise.py"
CONNECTION = "nodes-bench"


def offline_events(nodes: list[dict]) -> dict[str, int]:
    """From ``flwr supernode list --format json``: nodes online now, nodes not online now, and
    nodes that were marked offline at least once (a missed heartbeat), whatever their state now."""
    online = sum(node["status"] == "online" for node in nodes)
    ever = sum(node.get("offline-at") not in (None, "", "N/A") for node in nodes)
    return {"online": online, "not-online": len(nodes) - online, "ever-offline": ever}


@dataclass
class Deployment:
    """The processes of one measured deployment and where they keep their files."""

    home: FlowerHome
    folder: Path  # certificates, the state database, nginx's files, the run folders
    public: str = ""  # the proxy's public listener, as the nodes reach it
    superlink: subprocess.Popen | None = None
    proxy: subprocess.Popen | None = None
    nodes: list[subprocess.Popen] = field(default_factory=list)
    forkserver: subprocess.Popen | None = None
    node_env: dict[str, str] = field(default_factory=dict)  # the fork server's, once it runs

    @property
    def certs(self) -> Path:
        return self.folder / "certs"

    @property
    def database(self) -> Path:
        return self.folder / "state.db"

    def stop(self) -> None:
        """Every process started here with what it started, several at a time."""
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(stop, self.home.processes))
        self.home.processes.clear()


def _remove_stale_namespaces() -> None:
    """Namespaces an earlier run of this benchmark left behind (it was killed): their pid is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in (word for word in listed if word.startswith(NAMESPACE_PREFIX)):
        pid = name[len(NAMESPACE_PREFIX) :].split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextmanager
def node_namespaces(count: int) -> Iterator[list[Neighbour]]:
    """``count`` network namespaces, each with a veth pair to this machine and a route to the
    others' host ends; all removed on the way out."""
    _remove_stale_namespaces()
    made: list[Neighbour] = []
    try:
        for i in range(count):
            ns = Neighbour(routes=(LINKS,), name=f"{NAMESPACE_PREFIX}{os.getpid()}-{i}")
            tag = f"{os.getpid() % 10000:04d}{i:03d}"
            ns.host_link, ns.inner_link = f"fnb{tag}h", f"fnb{tag}n"  # 15 characters at most
            made.append(ns.__enter__())
        yield made
    finally:
        for ns in made:
            ns.close()


def start_link(dep: Deployment, nodes: int, san: str) -> None:
    """Certificates and keys, the SuperLink (TLS, node authentication, a database file), nginx in
    front of it with its public listener on every address, and the CLI's connection to its
    operators' listener."""
    made = subprocess.run(
        [ROOT / "deploy" / "tls.sh", "--dir", dep.certs, "--nodes", str(nodes), "--san", san],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise RuntimeError(f"deploy/tls.sh failed: {made.stderr.strip()}")
    port, public, control = free_port(), free_port(), free_port()
    ca = dep.certs / "ca.crt"
    dep.superlink = dep.home.spawn(
        "superlink",
        ["flower-superlink", "--host", "127.0.0.1", "--port", str(port), "--database", str(dep.database),
         "--disable-runtime-dependency-installation", "--enable-supernode-auth",
         "--ssl-ca-certfile", str(ca), "--ssl-certfile", str(dep.certs / "superlink.crt"),
         "--ssl-keyfile", str(dep.certs / "superlink.key")],
    )  # fmt: skip
    wait_healthy(f"https://127.0.0.1:{port}/health", ca=ca, alive=lambda: dep.superlink.poll() is None,
                 log=lambda: dep.home.log_tail("superlink"))  # fmt: skip
    nginx = dep.folder / "nginx"
    nginx.mkdir(mode=0o755)
    conf = subprocess.run(
        [sys.executable, NGINX_CONF_TOOL, "--certs", str(dep.certs), "--run-dir", str(nginx),
         "--superlink", f"127.0.0.1:{port}", "--public", str(public), "--control-port", str(control)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (nginx / "nginx.conf").write_text(conf)
    dep.proxy = dep.home.spawn("nginx", ["nginx", "-c", str(nginx / "nginx.conf"), "-g", "daemon off;"])
    for listener in (public, control):
        wait_healthy(f"https://127.0.0.1:{listener}/health", ca=ca, alive=lambda: dep.proxy.poll() is None,
                     log=lambda: dep.home.log_tail("nginx"))  # fmt: skip
    dep.public = f"{san}:{public}"
    write_connection(CONNECTION, f"127.0.0.1:{control}", ca, home=dep.home.path)


def register_keys(dep: Deployment, count: int) -> None:
    """Every node's public key, through the operators' listener, before any node starts."""
    keys = [dep.certs / f"supernode-{i}.key.pub" for i in range(count)]
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda key: register(CONNECTION, key, env=dep.home.env), keys))
    failed = [message for ok, message in done if not ok]
    if failed:
        raise RuntimeError(f"{len(failed)} keys not registered, e.g. {failed[0]}")


def start_fork_server(dep: Deployment) -> None:
    """One fork server (launcher.warm's) for every node's ClientApp processes. On hosts of their own
    each node has its own; here one process with PyTorch loaded (0.47 GB PSS) stands in for all of
    them, so that the machine holds more nodes. Its children reach their node's Runtime API on the
    node's own address; what the SuperLink and the proxy see is the same."""
    folder = dep.folder / "warm"
    folder.mkdir(mode=0o700)  # the server serves a private folder only
    shim = prepare(folder)
    dep.forkserver = server = dep.home.spawn("forkserver", [*NICE, *server_command(folder)])
    if not wait_ready(server, folder / SOCKET_NAME):
        raise RuntimeError(f"the fork server did not start:\n{dep.home.log_tail('forkserver')}")
    shim_dir = shim["PATH"].split(os.pathsep)[0]
    dep.node_env = {"PATH": f"{shim_dir}{os.pathsep}{dep.home.env['PATH']}", SOCKET_ENV: shim[SOCKET_ENV]}


def start_nodes(dep: Deployment, namespaces: list[Neighbour], partitions: range, total: int) -> None:
    """A SuperNode for each partition, in its own namespace and under deploy/supervise.py as deployed
    (it starts a node that gave up its connection again), its Runtime API on the namespace's address,
    one PyTorch thread for its ClientApps (forked from the fork server when one runs)."""
    env = {**supernode_threads(), "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": NODE_POLL_S, **dep.node_env}
    for p in partitions:
        command = [
            *NICE, sys.executable, str(SUPERVISE), "flower-supernode", "--superlink", dep.public,
            "--root-certificates", str(dep.certs / "ca.crt"),
            "--auth-supernode-private-key", str(dep.certs / f"supernode-{p}.key"),
            "--host", namespaces[p].address, "--port", str(NODE_RUNTIME_PORT),
            "--node-config", f"partition-id={p} num-partitions={total}",
        ]  # fmt: skip
        inside = ["ip", "netns", "exec", namespaces[p].name, *command]
        state = {"FEDMNIST_SUPERNODE_STATE": str(dep.folder / f"supernode-{p}.json")}
        dep.nodes.append(dep.home.spawn(f"supernode-{p}", inside, env={**env, **state}))


def node_list(dep: Deployment, tries: int = 6) -> list[dict]:
    """Flower's own list of the nodes the SuperLink knows, with their state. Asked again, every 5 s,
    while the Control API does not answer in time (the CLI gives up first while the nodes start)."""
    for attempt in range(tries):
        listed = subprocess.run(
            [flwr_command(), "supernode", "list", CONNECTION, "--format", "json"],
            env=dep.home.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            answer = json.loads(listed.stdout)
        except ValueError:
            answer = {}
        if "nodes" in answer:
            return answer["nodes"]
        if attempt < tries - 1:
            time.sleep(5)
    raise RuntimeError(f"flwr supernode list: {listed.stdout[-500:]}{listed.stderr[-500:]}")


def wait_online(dep: Deployment, count: int, timeout: float = 600) -> float:
    """Seconds until ``count`` nodes are online; stops at the first node process that exited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        gone = [p for p, node in enumerate(dep.nodes) if node.poll() is not None]
        if gone:
            raise RuntimeError(f"supernode-{gone[0]} exited:\n{dep.home.log_tail(f'supernode-{gone[0]}')}")
        if offline_events(node_list(dep))["online"] >= count:
            return time.monotonic() - start
        time.sleep(3)
    raise RuntimeError(f"fewer than {count} nodes online after {timeout:g} s:\n{dep.home.log_tail('superlink')}")


@contextmanager
def fleet(count: int, warm: bool) -> Iterator[tuple[Deployment, list[Neighbour]]]:
    """The SuperLink and its proxy up, ``count`` keys registered, a namespace for each node and
    (``warm``) the nodes' fork server; no node started yet. Everything stopped and removed on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="fedmnist-nodes-"))
    folder.chmod(0o755)  # nginx's workers (www-data) reach its folder inside
    try:
        with flower_home() as home, node_namespaces(count) as namespaces:
            dep = Deployment(home, folder)
            try:
                start_link(dep, count, san=namespaces[0].host_address)
                register_keys(dep, count)
                if warm:
                    start_fork_server(dep)
                yield dep, namespaces
            finally:
                dep.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
