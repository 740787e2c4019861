"""The speed benchmark's five sections, each a function that measures and returns its rows:
overhead, coldstart, scale, deployment and gpu (what each measures: ``benchmarks/perf.py``)."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import run_folder as rf
from benchmarks.perf_results import Row, cpu_note, load1, steady
from benchmarks.perf_runs import RunWatch, final_metric, launch, launch_gpu, plain_loop
from benchmarks.sampling import CLIENTAPP_PROCESS, TreeMemory
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.gpus import visible_gpus
from launcher.runtime import start_superlink, start_supernode
from task.objective import objective_for
from task.simulation_queue import DISABLE_ENV

# The work every row measures: every client every round, 1 local epoch, batch 32, SGD 0.01 momentum 0.9.
WORK = {
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 0.01,
    "momentum": 0.9,
}


def overhead(
    rounds: int,
    work_dir: Path,
    with_flower_delivery: bool = True,
    plain_threads: tuple[int, ...] = (1,),
    models: tuple[str, ...] = ("mlp", "autoencoder"),
) -> list[Row]:
    rows = []
    for model in models:
        config = {**WORK, "model": model, "num-server-rounds": rounds}
        objective = objective_for(model)
        key = objective.key
        plain = []
        for threads in plain_threads:
            l0 = load1()
            run = plain_loop(config, 100, rounds, threads=threads)
            plain.append(run)
            rows.append(
                Row(
                    "overhead",
                    f"{model}: plain loop, one process, {threads} thread(s)",
                    steady(run["times"]),
                    None,
                    run["times"][0],
                    load=(l0, load1()),
                    notes=f"{key} after {rounds} rounds {run['metric']:.4f}",
                    extra={"rounds": run["times"]},
                )
            )
        l2 = load1()
        sim = launch(100, {**config, "run-name": f"overhead-{model}"}, work_dir)
        l3 = load1()
        best = min(steady(run["times"]) for run in plain)
        rows.append(
            Row(
                "overhead",
                f"{model}: flwr run simulation, 100 clients",
                steady(sim["times"]),
                steady(sim["times"]) / best,
                sim["times"][0],
                sim["peak_rss"] / 1e9,
                sim["peak_pss"] / 1e9,
                load=(l2, l3),
                notes=f"{key} {final_metric(sim['history'], objective):.4f}; ratio against the plain loop; "
                + cpu_note(sim["cpu"]),
                extra={"rounds": sim["times"], "cpu": sim["cpu"]},
            )
        )
        if model == "mlp" and with_flower_delivery:  # the same run with Flower's own message loop, for comparison
            old = launch(
                100, {**config, "run-name": f"overhead-{model}-flower-delivery"}, work_dir, env={DISABLE_ENV: "1"}
            )
            l4 = load1()
            rows.append(
                Row(
                    "overhead",
                    f"{model}: the same, Flower's own per-node delivery",
                    steady(old["times"]),
                    steady(old["times"]) / best,
                    old["times"][0],
                    old["peak_rss"] / 1e9,
                    old["peak_pss"] / 1e9,
                    load=(l3, l4),
                    notes=f"{key} {final_metric(old['history'], objective):.4f}; " + cpu_note(old["cpu"]),
                    extra={"rounds": old["times"], "cpu": old["cpu"]},
                )
            )
    return rows


COLD_PHASES = (  # (label, where its end is seen: a launcher line, a process appearing, or the run folder)
    ("launcher started, run config and shards checked", "line", "[timing] checks done"),
    ("SuperLink started and healthy", "line", "[timing] superlink up"),
    ("run submitted (flwr run: FAB built and sent)", "line", "[timing] run submitted"),
    ("simulation process started", "process", "simulation process (ServerApp + Flower runtime)"),
    ("Ray up, first ClientApp actor started", "process", "clients (Ray actors)"),
    ("all 100 nodes answered the query, run folder created", "folder", "config"),
    ("round 0: server test of the initial model", "folder", "round 0"),
    ("round 1: 100 clients trained, averaged, tested", "folder", "round 1"),
)


def coldstart(work_dir: Path) -> list[Row]:
    l0 = load1()
    run = launch(100, {**WORK, "num-server-rounds": 1, "run-name": "coldstart"}, work_dir)
    l1 = load1()
    phases, previous = [], 0.0
    for label, kind, marker in COLD_PHASES:
        if kind == "line":
            at = next((t for t, text in run["lines"] if marker in text), None)
        else:
            at = (run["first_seen"] if kind == "process" else run["folder"]).get(marker)
        if at is None:
            phases.append(f"{label}: not seen")
            continue
        phases.append(f"{label}: +{at - previous:.1f} s (at {at:.1f} s)")
        previous = max(previous, at)
    end = run["folder"].get("round 1")
    return [
        Row(
            "coldstart",
            "command to end of round 1, 100 clients",
            None,
            None,
            end,
            run["peak_rss"] / 1e9,
            run["peak_pss"] / 1e9,
            load=(l0, l1),
            notes="; ".join(phases + [cpu_note(run["cpu"])]),
            extra={"total_s": run["total_s"], "phases": phases, "cpu": run["cpu"]},
        )
    ]


def scale(sizes: list[int], work_dir: Path) -> list[Row]:
    rows = []
    cores = os.cpu_count() or 1
    # every size with one worker per core; 1,000 clients also with a single worker (cores per client = all)
    plan = [(n, 1.0) for n in sizes] + ([(1000, float(cores))] if 1000 in sizes and cores > 1 else [])
    for n, cpus in plan:
        config = {
            **WORK,
            "fraction-train": 0.1,
            "fraction-evaluate": 0.1,
            "num-server-rounds": 3,
            "run-name": f"scale-{n}-{cpus:g}",
        }
        l0 = load1()
        run = launch(n, config, work_dir, timeout=5400, cpus_per_client=cpus)
        l1 = load1()
        per = max(1, int(n * 0.1))
        workers = "" if cpus == 1 else f", one worker (--cpus-per-client {cpus:g})"
        rows.append(
            Row(
                "scale",
                f"{n:,} clients ({60000 // n:,} images each, {per:,} per round{workers})",
                steady(run["times"]),
                None,
                run["times"][0],
                run["peak_rss"] / 1e9,
                run["peak_pss"] / 1e9,
                load=(l0, l1),
                notes=f"{run['procs']} processes at most; start to finish {run['total_s']:.0f} s; "
                + cpu_note(run["cpu"]),
                extra={"rounds": run["times"], "names_at_peak": run["names"], "cpu": run["cpu"]},
            )
        )
    return rows


PROMPT_IDLE_S = 0.5  # the third deployment row's wait after an empty pull (launcher/prompt_supernode.py)


def deployed(config: dict, work_dir: Path, name: str, warm: bool, idle_s: float | None = None) -> dict:
    """A run of 3 SuperNodes on loopback (``warm``: each next to a fork server; ``idle_s``: the wait
    after an empty pull, Flower's 3 s when None): its round times,
    and from its processes (sampled every 0.2 s) the lifetime and CPU of each ClientApp process,
    the peak memory of the nodes' processes, and how long each round's messages waited for a node."""
    with TreeMemory(os.getpid(), interval=0.1) as mem, flower_home() as home:  # a warm process lives 0.5 s
        address = start_superlink(home, simulation=False)
        home.add_connection("loopback", address)
        mem.group_roots = [start_supernode(home, address, i, 3, warm=warm, idle_s=idle_s).pid for i in range(3)]
        start, epoch = time.perf_counter(), time.time()
        with RunWatch(work_dir / name, start) as watch:
            run_config = {**config, "output-dir": str(work_dir), "run-name": name}
            flwr_run(home, "loopback", run_config, echo=False, timeout=3600)
    history = rf.RunFolder(work_dir / name).history()
    started = [begun for pid, (begun, _) in mem.lived.items() if mem.cpu[pid][0] == CLIENTAPP_PROCESS]
    answered = epoch + watch.seen.get("config", float("inf"))  # the run folder appears once the nodes answered
    queries = [cpu for begun, cpu in zip(sorted(started), mem.cpu_of(CLIENTAPP_PROCESS)) if begun < answered]
    return {
        "history": history,
        "times": [r["wall-time-s"] for r in history["rounds"] if r["round"] > 0],
        "lives": mem.lifetimes(CLIENTAPP_PROCESS),
        "cpus": mem.cpu_of(CLIENTAPP_PROCESS),
        "query-cpus": queries,  # the processes that answered the server's query before round 1: no training
        "cpu": mem.cpu_by_role(),
        "peak": (mem.peak_rss, mem.peak_pss, mem.peak_group_rss, mem.peak_group_pss),
        "pickup": pickup_delays(sorted(started), {k: epoch + v for k, v in watch.seen.items()}),
    }


def pickup_delays(started: list[float], seen: dict[str, float]) -> list[float]:
    """For each round from 2 on, how long after the round before was recorded (when the server sends
    the round's messages) the last of its ClientApp processes started: the nodes' pickup (a SuperNode
    that found no message sleeps 3 s before it asks again), the SuperExec's poll and the process start."""
    delays, r = [], 2
    while f"round {r}" in seen:
        sent, done = seen[f"round {r - 1}"], seen[f"round {r}"]
        starts = [t - sent for t in started if sent - 0.2 <= t < done]  # the watch sees a round up to 0.1 s late
        if starts:
            delays.append(max(starts))
        r += 1
    return delays


def deployment(rounds: int, work_dir: Path) -> list[Row]:
    """The same run on 3 SuperNodes with Flower's process per message, then with warm processes (a fork
    server per node), then simulated with 3 clients; each deployment against the simulation."""
    config = {**WORK, "num-server-rounds": rounds, "min-available-nodes": 3}
    mlp = objective_for("mlp")
    variants = {  # name: (label, warm, idle_s)
        "deployment": ("Flower's process per message", False, None),
        "deployment-warm": ("warm: a fork server per node", True, None),
        "deployment-warm-idle": (
            f"warm, and {PROMPT_IDLE_S:g} s instead of 3 s after an empty pull",
            True,
            PROMPT_IDLE_S,
        ),
    }
    runs, loads = {}, {}
    for name, (_, warm, idle_s) in variants.items():
        before = load1()
        runs[name] = deployed(config, work_dir, name, warm, idle_s)
        loads[name] = (before, load1())
    l1 = load1()
    sim = launch(3, {**config, "run-name": "deployment-sim"}, work_dir)
    l2 = load1()
    rows = []
    for name, (label, warm, idle_s) in variants.items():
        run = runs[name]
        rss, pss, node_rss, node_pss = run["peak"]
        rows.append(
            Row(
                "deployment",
                f"3 SuperNodes on loopback, {label} (20,000 images each)",
                steady(run["times"]),
                steady(run["times"]) / steady(sim["times"]),
                run["times"][0],
                rss / 1e9,
                pss / 1e9,
                load=loads[name],
                notes=f"{mlp.key} {final_metric(run['history'], mlp):.4f}; ratio against the simulation below; "
                f"{message_note(run['lives'], run['cpus'], run['query-cpus'])}; nodes' processes at their peak "
                f"{node_rss / 1e9:.2f} GB RSS, {node_pss / 1e9:.2f} GB PSS; {pickup_note(run['pickup'])}; "
                f"{cpu_note(run['cpu'])}",
                extra={
                    "rounds": run["times"],
                    "cpu": run["cpu"],
                    "message-s": run["lives"],
                    "message-cpu-s": run["cpus"],
                    "query-cpu-s": run["query-cpus"],
                    "pickup-s": run["pickup"],
                    "node-peak-rss-gb": node_rss / 1e9,
                    "node-peak-pss-gb": node_pss / 1e9,
                    "warm": warm,
                    "idle-s": idle_s or 3.0,
                },
            )
        )
    rows.append(
        Row(
            "deployment",
            "simulation, 3 clients (20,000 images each)",
            steady(sim["times"]),
            None,
            sim["times"][0],
            sim["peak_rss"] / 1e9,
            sim["peak_pss"] / 1e9,
            load=(l1, l2),
            notes=f"{mlp.key} {final_metric(sim['history'], mlp):.4f}; {cpu_note(sim['cpu'])}",
            extra={"rounds": sim["times"], "cpu": sim["cpu"]},
        )
    )
    return rows


def pickup_note(delays: list[float]) -> str:
    if not delays:
        return "message pickup not seen"
    return (
        f"a round's messages reached their last ClientApp process {statistics.median(delays):.1f} s after they were "
        f"sent (median of rounds 2-{len(delays) + 1}; {min(delays):.1f}-{max(delays):.1f} s)"
    )


def message_note(lives: list[float], cpus: list[float], query_cpus: list[float] = ()) -> str:
    """What a deployed message costs on its node: a ClientApp process per message (``query_cpus``: of
    those, the ones that answered the server's query and trained nothing)."""
    if not lives:
        return "no ClientApp process seen"
    note = (
        f"one ClientApp process per message: {len(lives)} processes, each alive {statistics.median(lives):.1f} s "
        f"(median; {min(lives):.1f}-{max(lives):.1f} s) and using {statistics.median(cpus):.2f} CPU s "
        f"(median; {min(cpus):.2f}-{max(cpus):.2f})"
    )
    if query_cpus:
        note += (
            f", of which {len(query_cpus)} answered the query (no training) with "
            f"{statistics.median(query_cpus):.2f} CPU s each (median)"
        )
    return note


def gpu_reason() -> str | None:
    """Why the GPU rows cannot run here, or None when they can."""
    import torch

    if torch.cuda.is_available():
        return None
    smi = visible_gpus()
    if smi:
        return f"nvidia-smi shows {', '.join(smi)} but torch {torch.__version__} sees no CUDA device"
    return "no GPU on this machine (nvidia-smi finds none and torch.cuda.is_available() is False)"


def throughput(model_kind: str, device_name: str, epochs: int = 3) -> float:
    """Training images per second of one client (600 images, batch 32) on a device."""
    import torch

    from task.config import Settings
    from task.models import build_model
    from task.shards import load_node_data
    from task.training import train

    settings = Settings.from_run_config({**WORK, "model": model_kind})
    data = load_node_data(settings, 0, 100)
    device = torch.device(device_name)
    model = build_model(settings)
    train(model, data.train, settings, device, seed=0, epochs=1)  # warm-up: CUDA context, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(model, data.train, settings, device, seed=1, epochs=epochs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(data.train) / (time.perf_counter() - start)


def gpu(rounds: int, work_dir: Path) -> list[Row]:
    reason = gpu_reason()
    if reason is not None:
        return [
            Row("gpu", name, notes=f"not measured: {reason}")
            for name in (
                "training throughput, CUDA vs CPU, MLP and autoencoder",
                "simulation, 100 clients sharing the GPU",
            )
        ]
    rows = []
    for kind in ("mlp", "autoencoder"):
        l0 = load1()
        cpu, cuda = throughput(kind, "cpu"), throughput(kind, "cuda")
        rows.append(
            Row(
                "gpu",
                f"{kind}: training throughput, CUDA vs CPU",
                None,
                cuda / cpu,
                load=(l0, load1()),
                notes=f"{cuda:,.0f} images/s on CUDA, {cpu:,.0f} on the CPU (one client, batch 32)",
            )
        )
    l0 = load1()
    name = "gpu-sim"
    cmd_config = {**WORK, "num-server-rounds": rounds, "run-name": name}
    run = launch_gpu(100, cmd_config, work_dir)
    rows.append(
        Row(
            "gpu",
            "simulation, 100 clients, 0.25 GPU each",
            steady(run["times"]),
            None,
            run["times"][0],
            run["peak_rss"] / 1e9,
            run["peak_pss"] / 1e9,
            load=(l0, load1()),
            notes="clients and server on CUDA",
        )
    )
    return rows
