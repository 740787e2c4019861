"""What the deployment of benchmarks/node_fleet.py uses: the SuperLink's and the proxy's memory and
CPU, the nodes' processes, the proxy's connections, the state database, and the peaks while a run
goes."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import psutil

from benchmarks.node_fleet import Deployment
from benchmarks.sampling import Poller, cpu_seconds, memory_of, role_of
from launcher.processes import descendants


@dataclass
class Usage:
    rss: int = 0  # bytes
    pss: int = 0  # bytes
    cpu: float = 0.0  # seconds

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.rss + other.rss, self.pss + other.pss, self.cpu + other.cpu)


def usage(pids: list[int]) -> Usage:
    """Resident memory, PSS (shared pages counted once) and CPU seconds summed over ``pids``."""
    total = Usage()
    for pid in pids:
        rss, pss = memory_of(pid)
        total += Usage(rss, pss, cpu_seconds(pid) or 0.0)
    return total


def rss_of(pids: list[int]) -> int:
    """Resident memory summed over ``pids``: no PSS and no CPU, cheap enough to read every second."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass  # gone since the tree was read
    return total


def tree(proc: subprocess.Popen) -> list[int]:
    return [proc.pid, *descendants(proc.pid)]


def link_usage(dep: Deployment) -> dict[str, Usage]:
    """The SuperLink alone (not the ServerApps it starts) and the proxy with its workers."""
    return {"superlink": usage([dep.superlink.pid]), "proxy": usage(tree(dep.proxy))}


def node_pids(dep: Deployment) -> list[int]:
    """Every node's processes: the SuperNodes, what they started, and the fork server with its children."""
    roots = [proc.pid for proc in (*dep.nodes, dep.forkserver) if proc is not None]
    return [*roots, *descendants(*roots)]


def node_side(dep: Deployment) -> Usage:
    return usage(node_pids(dep))


def proxy_connections(dep: Deployment) -> dict[str, int]:
    """Open TCP connections of the proxy: from nodes to its public listener, and to the SuperLink."""
    public = int(dep.public.rsplit(":", 1)[1])
    upstream = int(dep.superlink.args[dep.superlink.args.index("--port") + 1])
    found, proxy = {"from-nodes": 0, "to-superlink": 0}, set(tree(dep.proxy))
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_ESTABLISHED:
            continue
        if conn.laddr and conn.laddr.port == public:
            found["from-nodes"] += 1
        elif conn.raddr and conn.raddr.port == upstream and conn.pid in proxy:
            found["to-superlink"] += 1
    return found


def database_bytes(dep: Deployment) -> int:
    """The SuperLink's state database with its write-ahead log."""
    files = [dep.database, dep.database.with_name(dep.database.name + "-wal")]
    return sum(f.stat().st_size for f in files if f.exists())


class RunPeaks(Poller):
    """Peak resident memory of the SuperLink, the proxy and the ServerApp while a run goes, and the
    ServerApp's CPU seconds (it is gone when the run ends), sampled every second. The nodes' RSS sums
    count the pages their forked ClientApp processes share once per process: the machine's available
    memory at its lowest says what they really took."""

    interval = 1.0

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.peak: dict[str, int] = {"superlink": 0, "proxy": 0, "serverapp": 0, "node-side": 0, "all": 0}
        self.serverapp_cpu: dict[int, float] = {}
        self.least_available = psutil.virtual_memory().available  # the machine's, at its lowest
        super().__init__()

    def sample(self) -> None:
        link = self.dep.superlink.pid
        apps = [pid for pid in descendants(link) if role_of(pid) == "ServerApp process"]
        found = {
            "superlink": rss_of([link]),
            "proxy": rss_of(tree(self.dep.proxy)),
            "serverapp": rss_of(apps),
            "node-side": rss_of(node_pids(self.dep)),
        }
        found["all"] = sum(found.values())
        for key, value in found.items():
            self.peak[key] = max(self.peak[key], value)
        self.least_available = min(self.least_available, psutil.virtual_memory().available)
        for pid in apps:
            self.serverapp_cpu[pid] = cpu_seconds(pid) or self.serverapp_cpu.get(pid, 0.0)
