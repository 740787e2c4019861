"""One SuperLink behind the proxy under many real SuperNodes: the ``nodes`` rows of benchmarks/perf.py.

The deployment is benchmarks/node_fleet.py's (TLS, node authentication, nginx, each node in a
namespace of its own). Measured: the SuperLink's and the proxy's resident memory and CPU with 0,
N/2 and N nodes connected and idle (the least-squares slope is what one node costs them), then a
round with 10% of the nodes training and one with all of them (a run each: the ServerApp first asks
every node for its partition, one message to each), seconds per round, the peak memory of the
ServerApp, and the nodes Flower marked offline (a missed heartbeat) by the end of each.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil

from benchmarks.node_fleet import CONNECTION, Deployment, fleet, node_list, offline_events, start_nodes, wait_online
from benchmarks.node_usage import RunPeaks, database_bytes, link_usage, node_side, proxy_connections
from benchmarks.perf_results import Row, load1
from benchmarks.perf_runs import RunWatch
from launcher import FlowerError
from launcher.flwr_cli import flwr_run

SETTLE_S = 15.0  # after the last node of a batch came online, before its idle window
IDLE_WINDOW_S = 30.0  # CPU is measured over this long with the nodes connected and idle
# What one node costs this machine (SuperNode idle, its ClientApp process while it works) and what
# the SuperLink, the proxy, the ServerApp and the rest keep: the count is checked against both.
NODE_BYTES = 250e6
RESERVE_BYTES = 4e9
# A round of tiny shards (100 images a node), the server's test after it; only the plumbing grows.
TINY = {
    "num-server-rounds": 1,
    "fraction-evaluate": 0.0,
    "local-epochs": 1,
    "batch-size": 32,
    "partitioning": "iid-balanced",
    "samples-per-class": 10,
    "round-timeout": 900.0,
}
MB = 1e6
RUN_TIMEOUT_S = 900.0
# (log, words) of what went wrong, counted: the SuperLink's state database too busy to answer, a
# node's heartbeat that did not arrive in time, a node the SuperLink let go, an answer a node gives
# up on, a node its supervisor started again, a ClientApp task Flower stopped and started anew.
LOG_EVENTS = {
    "database-locked": ("superlink", "database is locked"),
    "heartbeat-errors": ("superlink", "send-node-heartbeat][UnexpectedError"),
    "nodes-deactivated": ("superlink", "[Fleet.DeactivateNode]"),
    "http-500-at-nodes": ("nodes", "500 Internal Server Error"),
    "node-restarts": ("nodes", "starting flower-supernode again"),
    "tasks-restarted": ("nodes", "Task stopped."),
}
WARM = True  # the nodes' ClientApp processes forked from a fork server (benchmarks/node_fleet.py)


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of ``value`` over ``count``: what one more node adds."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        raise ValueError("a slope needs at least two different node counts")
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def nodes_that_fit(available: float, per_node: float = NODE_BYTES, reserve: float = RESERVE_BYTES) -> int:
    """How many nodes of ``per_node`` bytes fit in ``available`` bytes with ``reserve`` kept free."""
    return max(0, int((available - reserve) // per_node))


def tiny_run_config(num_nodes: int, fraction: float, name: str, out: Path) -> dict:
    """One round of tiny shards on ``num_nodes`` nodes, ``fraction`` of them training."""
    return {
        **TINY,
        "fraction-train": fraction,
        "min-available-nodes": num_nodes,
        "run-name": name,
        "output-dir": str(out),
    }


def idle_point(dep: Deployment, count: int) -> dict:
    """With ``count`` nodes connected and idle: memory now, CPU over :data:`IDLE_WINDOW_S`."""
    before, t0 = link_usage(dep), time.monotonic()
    time.sleep(IDLE_WINDOW_S)
    after, seconds = link_usage(dep), time.monotonic() - t0
    nodes = node_side(dep)
    return {
        "nodes": count,
        **{f"{k}-rss-mb": after[k].rss / MB for k in after},
        **{f"{k}-pss-mb": after[k].pss / MB for k in after},
        **{f"{k}-cpu-per-min": (after[k].cpu - before[k].cpu) * 60 / seconds for k in after},
        "node-side-rss-mb": nodes.rss / MB,
        "node-side-pss-mb": nodes.pss / MB,
        "database-kb": database_bytes(dep) / 1e3,
        "connections": proxy_connections(dep),
        "load": load1(),
    }


def count_events(superlink_log: str, node_logs: str) -> dict[str, int]:
    """What went wrong, counted in the SuperLink's log and the nodes' logs (see :data:`LOG_EVENTS`)."""
    logs = {"superlink": superlink_log, "nodes": node_logs}
    return {event: logs[where].count(words) for event, (where, words) in LOG_EVENTS.items()}


def log_events(dep: Deployment) -> dict[str, int]:
    nodes = "".join(dep.home.log_tail(f"supernode-{p}", 10**6) for p in range(len(dep.nodes)))
    return count_events(dep.home.log_tail("superlink", 10**6), nodes)


def measured_run(dep: Deployment, count: int, fraction: float, out: Path) -> dict:
    """One round with ``fraction`` of ``count`` nodes training, watched from outside; a run that did
    not complete within :data:`RUN_TIMEOUT_S` is recorded with what Flower said."""
    name = f"nodes-{count}-{fraction:g}"
    before, events, l0 = link_usage(dep), log_events(dep), load1()
    start, error = time.perf_counter(), None
    with RunPeaks(dep) as peaks, RunWatch(out / name, start) as watch:
        try:
            flwr_run(
                dep.home, CONNECTION, tiny_run_config(count, fraction, name, out), echo=False, timeout=RUN_TIMEOUT_S
            )
        except FlowerError as exc:
            error = str(exc).splitlines()[0]
    after, total = link_usage(dep), time.perf_counter() - start
    rounds = watch.folder.history()["rounds"] if not error else []
    last = rounds[-1] if rounds else {"wall-time-s": None, "failures": []}
    return {
        "fraction": fraction,
        "error": error,
        "trained": (last.get("clients-train") or {}).get("nodes"),
        "round-s": last["wall-time-s"],
        "query-s": watch.seen.get("config"),  # submitted until every node had answered the query
        "run-s": total,
        "dropped": len(last["failures"]),
        "cpu-s": {k: after[k].cpu - before[k].cpu for k in after} | {"serverapp": sum(peaks.serverapp_cpu.values())},
        "peak-mb": {k: v / MB for k, v in peaks.peak.items()},
        "least-available-gb": peaks.least_available / 1e9,
        "heartbeats": offline_events(node_list(dep)),
        "events": {k: v - events[k] for k, v in log_events(dep).items()},
        "load": (l0, load1()),
        "database-kb": database_bytes(dep) / 1e3,
    }


def measure(count: int, out: Path, warm: bool = WARM) -> tuple[list[dict], list[dict]]:
    """The idle points at 0, N/2 and N nodes, then the two rounds (the second only if the first ended)."""
    with fleet(count, warm) as (dep, namespaces):
        points = [idle_point(dep, 0)]
        for batch in (range(0, count // 2), range(count // 2, count)):
            start_nodes(dep, namespaces, batch, count)
            online_s = wait_online(dep, batch.stop)
            time.sleep(SETTLE_S)
            points.append({**idle_point(dep, batch.stop), "online-after-s": online_s, "events": log_events(dep)})
        runs = [measured_run(dep, count, 0.1, out)]
        if not runs[0]["error"]:
            runs.append(measured_run(dep, count, 1.0, out))
    return points, runs


def unmet_needs(count: int, available: float) -> str | None:
    """Why ``count`` nodes cannot be measured here (and what to do), or None when they can."""
    if os.geteuid() != 0:
        return "needs root (a network namespace per node): run it as root"
    missing = [tool for tool in ("ip", "nginx") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} missing: run deploy/bare-host/host-packages.sh as root"
    if count < 2:
        return f"--nodes {count}: give at least 2 (the slope needs 0, N/2 and N nodes)"
    if count > (fit := nodes_that_fit(available)):
        return (
            f"--nodes {count}: about {(count * NODE_BYTES + RESERVE_BYTES) / 1e9:.0f} GB needed, "
            f"{available / 1e9:.1f} GB available: give --nodes {fit} or fewer"
        )
    return None


def nodes(count: int, work_dir: Path) -> list[Row]:
    """The idle row (what one connected node costs the SuperLink and the proxy) and a row per round;
    one row saying why where they cannot be measured."""
    reason = unmet_needs(count, psutil.virtual_memory().available)
    if reason is not None:
        return [Row("nodes", f"{count} SuperNodes behind the proxy", notes=f"not measured: {reason}")]
    l0 = load1()
    points, runs = measure(count, work_dir)
    return [idle_row(points, (l0, points[-1]["load"])), *(round_row(count, run) for run in runs)]


def idle_row(points: list[dict], load: tuple[float, float]) -> Row:
    count = points[-1]["nodes"]
    per = {
        key: slope([(p["nodes"], p[key]) for p in points]) for key in points[0] if key.endswith(("-mb", "-kb", "-min"))
    }
    first, last = points[0], points[-1]
    notes = (
        f"per connected node: SuperLink {per['superlink-rss-mb']:.2f} MB RSS, "
        f"{per['superlink-cpu-per-min'] * 1e3:.0f} CPU ms a minute; proxy {per['proxy-rss-mb']:.3f} MB RSS, "
        f"{per['proxy-cpu-per-min'] * 1e3:.0f} CPU ms a minute; "
        f"state database {per['database-kb']:.1f} kB; node side {per['node-side-pss-mb']:.0f} MB PSS a node "
        f"({per['node-side-rss-mb']:.0f} MB RSS). SuperLink at 0 / {count // 2} / {count} nodes: "
        + " / ".join(f"{p['superlink-rss-mb']:.0f}" for p in points)
        + " MB RSS, "
        + " / ".join(f"{p['superlink-cpu-per-min']:.2f}" for p in points)
        + " CPU s a minute; proxy "
        + " / ".join(f"{p['proxy-rss-mb']:.0f}" for p in points)
        + f" MB RSS; proxy connections at {count} nodes: {last['connections']['from-nodes']} from nodes, "
        f"{last['connections']['to-superlink']} to the SuperLink (at 0: {first['connections']['from-nodes']}); "
        f"all online {points[1]['online-after-s']:.0f} s after the first {count // 2} started, "
        f"{last['online-after-s']:.0f} s after the rest; while they started and idled, {events_note(last['events'])}"
    )
    return Row(
        "nodes",
        f"{count} SuperNodes connected, idle: SuperLink and proxy per node",
        load=load,
        notes=notes,
        extra={"points": points, "per-node": per},
    )


def events_note(events: dict[str, int]) -> str:
    found = [f"{event} {n}" for event, n in events.items() if n]
    return "logs: " + (", ".join(found) if found else "no errors")


def round_row(count: int, run: dict) -> Row:
    cpu, peak, beats = run["cpu-s"], run["peak-mb"], run["heartbeats"]
    share = "10% of them" if run["fraction"] < 1 else "all of them"
    if run["error"]:
        outcome = f"not completed: {run['error']}; "
    else:
        outcome = (
            f"nodes trained: {run['trained']}, replies dropped: {run['dropped']}; every node answered the query "
            f"{run['query-s']:.1f} s after the submission; "
        )
    notes = (
        f"{outcome}CPU s during the run: SuperLink {cpu['superlink']:.1f}, "
        f"proxy {cpu['proxy']:.1f}, ServerApp {cpu['serverapp']:.1f}; peak RSS: SuperLink {peak['superlink']:.0f} MB, "
        f"proxy {peak['proxy']:.0f} MB, ServerApp {peak['serverapp']:.0f} MB, "
        f"node side {peak['node-side'] / 1e3:.1f} GB (shared pages counted per process; the machine's available "
        f"memory at its lowest {run['least-available-gb']:.1f} GB); "
        f"heartbeats: {beats['ever-offline']} nodes ever marked offline, {beats['not-online']} not online at the end; "
        f"{events_note(run['events'])}; run {run['run-s']:.0f} s from submission to end"
    )
    return Row(
        "nodes",
        f"{count} SuperNodes behind the proxy, a round with {share} training",
        s_per_round=run["round-s"],
        peak_rss_gb=peak["all"] / 1e3,
        load=run["load"],
        notes=notes,
        extra=run,
    )
