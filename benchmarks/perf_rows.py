"""The speed benchmark's five sections, each a function that measures and returns its rows:
overhead, coldstart, scale, deployment and gpu (what each measures: ``benchmarks/perf.py``)."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import run_folder as rf
from benchmarks.perf_results import Row, cpu_note, load1, steady
from benchmarks.perf_runs import final_metric, launch, launch_gpu, plain_loop
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


def deployment(rounds: int, work_dir: Path) -> list[Row]:
    config = {**WORK, "num-server-rounds": rounds, "min-available-nodes": 3}
    mlp = objective_for("mlp")
    l0 = load1()
    with TreeMemory(os.getpid()) as mem, flower_home() as home:
        address = start_superlink(home, simulation=False)
        home.add_connection("loopback", address)
        for i in range(3):
            start_supernode(home, address, partition_id=i, num_partitions=3)
        flwr_run(
            home,
            "loopback",
            {**config, "output-dir": str(work_dir), "run-name": "deployment"},
            echo=False,
            timeout=3600,
        )
    lives, cpus = mem.lifetimes(CLIENTAPP_PROCESS), mem.cpu_of(CLIENTAPP_PROCESS)
    history = rf.RunFolder(work_dir / "deployment").history()
    deployed = [r["wall-time-s"] for r in history["rounds"] if r["round"] > 0]
    l1 = load1()
    sim = launch(3, {**config, "run-name": "deployment-sim"}, work_dir)
    l2 = load1()
    return [
        Row(
            "deployment",
            "3 SuperNodes on loopback (20,000 images each)",
            steady(deployed),
            steady(deployed) / steady(sim["times"]),
            deployed[0],
            mem.peak_rss / 1e9,
            mem.peak_pss / 1e9,
            load=(l0, l1),
            notes=f"{mlp.key} {final_metric(history, mlp):.4f}; ratio against the simulation below; "
            f"{message_note(lives, cpus)}; {cpu_note(mem.cpu_by_role())}",
            extra={"rounds": deployed, "cpu": mem.cpu_by_role(), "message-s": lives, "message-cpu-s": cpus},
        ),
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
        ),
    ]


def message_note(lives: list[float], cpus: list[float]) -> str:
    """What a deployed message costs on its node: Flower starts one ClientApp process per message."""
    if not lives:
        return "no ClientApp process seen"
    return (
        f"one ClientApp process per message: {len(lives)} processes, each alive {statistics.median(lives):.1f} s "
        f"(median; {min(lives):.1f}-{max(lives):.1f} s) and using {statistics.median(cpus):.1f} CPU s"
    )


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
