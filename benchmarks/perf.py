"""How fast the project runs and how far it scales, measured on this machine.

    .venv/bin/python -m benchmarks.perf                       # every row (about half an hour on 2 cores)
    .venv/bin/python -m benchmarks.perf --only overhead,coldstart
    .venv/bin/python -m benchmarks.perf --only scale --scale 10,100,1000

Prints one table and appends it to ``benchmarks/RESULTS-perf.md`` (a section per
run: date, command, machine, versions) and every row, with all of those, to
``benchmarks/perf-results.jsonl``. Every row records the 1-minute load average
before and after it: on a shared machine a row measured under load is slow for
reasons of its own, so compare rows measured side by side in one run.

Rows (the work is the issue's: the MLP, 600 images per client, every client every
round, 1 local epoch, batch 32, SGD 0.01 with momentum 0.9, no client evaluation):

- overhead: the same FedAvg rounds (a) as a plain in-process PyTorch loop, no
  Flower, no Ray (one process, one thread; ``--plain-threads 1,2`` adds more), and (b) through ``flwr run`` simulation
  with this project's apps (``launcher.simulate``); steady-state seconds per round
  (median of rounds 2..R, round 1 holds the start-up) and the ratio. MLP and autoencoder.
- coldstart: from the launcher command to the end of round 1 with 100 clients, and
  when each phase ended (the launcher's ``[timing]`` lines and the run's log lines).
- scale: 10 to 10,000 virtual clients sharing MNIST (so 6,000 to 6 images each),
  10% of them per round (the same 6,000 training images per round): seconds per
  round and the peak of the resident set (and of PSS, shared pages counted once)
  summed over every process the benchmark started, sampled every 0.2 s.
- deployment: 3 SuperNodes on loopback (``flower-supernode``, one ClientApp process
  per message) against the simulation with 3 clients, the same work.
- gpu: local training throughput on CUDA against the CPU for both models, and a
  simulation with the clients sharing the GPU; "not measured" with the reason where
  this machine has none.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import run_folder as rf
from client_app.simulation_queue import DISABLE_ENV
from launcher.flower import (
    PROJECT_ROOT,
    TIMINGS_ENV,
    descendants,
    flower_home,
    flwr_run,
    start_superlink,
    start_supernode,
    visible_gpus,
)
from task.host import machine, versions
from task.objective import Objective, objective_for

RESULTS_MD = PROJECT_ROOT / "benchmarks" / "RESULTS-perf.md"
RESULTS_JSONL = PROJECT_ROOT / "benchmarks" / "perf-results.jsonl"
SECTIONS = ("overhead", "coldstart", "scale", "deployment", "gpu")

# The issue's work: every client every round, 1 local epoch, batch 32, SGD 0.01 momentum 0.9.
WORK = {
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 0.01,
    "momentum": 0.9,
}
TARGETS = {
    "overhead-mlp": ("simulation / plain loop, MLP, steady state", 1.3, "x"),
    "coldstart": ("command to end of round 1, 100 clients", 15.0, "s"),
    "scale-1000": ("peak memory, 1,000 clients (RSS summed)", 3.0, "GB"),
    "scale-10000": ("peak memory, 10,000 clients (RSS summed)", 4.0, "GB"),
}


# --- what a row is, and where it goes ------------------------------------------------


@dataclass
class Row:
    section: str
    name: str
    s_per_round: float | None = None  # steady state: median of rounds 2..R
    ratio: float | None = None  # against the plain loop (overhead) or the simulation (deployment)
    first_round_s: float | None = None  # round 1, or the whole cold start
    peak_rss_gb: float | None = None
    peak_pss_gb: float | None = None
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- memory of a process tree ----------------------------------------------------------


class _Poller:
    """Calls :meth:`sample` every ``interval`` seconds on a thread of its own while in a ``with``."""

    interval: float

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        raise NotImplementedError


class TreeMemory(_Poller):
    """Samples, every ``interval`` seconds, the resident set (RSS) and the proportional set
    (PSS: shared pages divided among the processes that share them) summed over every
    descendant of ``root`` (the root itself only with ``include_root``); keeps the peaks."""

    def __init__(self, root: int, include_root: bool = False, interval: float = 0.2) -> None:
        self.root, self.include_root, self.interval = root, include_root, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self.peak_names: list[str] = []
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds so far)
        self.started = time.perf_counter()
        self.first_seen: dict[str, float] = {}  # role -> seconds after start when a process of it appeared
        super().__init__()

    def sample(self) -> None:
        pids = [self.root, *descendants(self.root)] if self.include_root else descendants(self.root)
        rss = pss = 0
        names = []
        for pid in pids:
            r, p = memory_of(pid)
            rss, pss = rss + r, pss + p
            names.append(f"{_read(f'/proc/{pid}/comm').strip()} {r / 1e6:.0f}/{p / 1e6:.0f} MB")
            seconds = cpu_seconds(pid)
            if seconds is not None:  # the role as last seen: a Ray worker becomes an actor after it starts
                role = role_of(pid)
                if role == "other" and pid in self.cpu:  # an exiting process has no command line left
                    role = self.cpu[pid][0]
                self.cpu[pid] = (role, seconds)
                self.first_seen.setdefault(role, time.perf_counter() - self.started)
        if rss > self.peak_rss:
            self.peak_rss, self.peak_names = rss, names
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))


    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds used by the sampled processes, summed by role (as last sampled)."""
        roles: dict[str, float] = {}
        for role, seconds in self.cpu.values():
            roles[role] = roles.get(role, 0.0) + seconds
        return dict(sorted(roles.items(), key=lambda kv: -kv[1]))


ROLES = (  # (role, a piece of the command line that tells it)
    ("clients (Ray actors)", "ClientAppActor"),
    ("clients (ClientApp processes)", "flwr-clientapp"),
    ("simulation process (ServerApp + Flower runtime)", "flwr-simulation"),
    ("ServerApp process", "flwr-serverapp"),
    ("SuperNodes", "flower-supernode"),
    ("SuperLink, SuperExec", "flower-super"),
    ("flwr CLI", "bin/flwr "),
    ("launcher", "launcher.simulate"),
)


def role_of(pid: int) -> str:
    cmdline = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
    for role, marker in ROLES:
        if marker in cmdline:
            return role
    return "Ray's own processes" if "ray" in cmdline else "other"


def cpu_seconds(pid: int) -> float | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_note(cpu: dict[str, float]) -> str:
    return "CPU s: " + ", ".join(f"{role} {seconds:.0f}" for role, seconds in cpu.items() if seconds >= 0.5)


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes; (0, 0) once it is gone."""
    rss = pss = 0
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


# --- the plain loop ----------------------------------------------------------------------


def plain_loop(run_config: dict[str, Any], num_nodes: int, rounds: int, threads: int) -> dict[str, Any]:
    """FedAvg in this process: every node trains as the ClientApp would (same seeds, same
    training code, same shards), the weighted average in partition order, the server's
    test on the 10,000 test images after every round. Seconds per round and the metric."""
    import numpy as np
    import torch

    from task.config import Settings
    from task.models import build_model
    from task.shards import load_node_data, server_test_set
    from task.training import evaluate, get_weights, set_weights, train_round

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        settings = Settings.from_run_config(run_config)
        device = torch.device("cpu")
        nodes = [load_node_data(settings, i, num_nodes) for i in range(num_nodes)]
        test = server_test_set(settings)
        model = build_model(settings)
        weights = get_weights(model)
        times, metric = [], None
        for rnd in range(1, rounds + 1):
            start = time.perf_counter()
            total = sum(len(n.train) for n in nodes)
            merged = [np.zeros_like(w, dtype=np.float64) for w in weights]
            for pid, node in enumerate(nodes):
                set_weights(model, weights)
                seed = settings.seed * 1_000_003 + rnd * 10_007 + pid  # as MnistClient.fit
                train_round(model, node.train, settings, device, seed, rnd)
                for acc, w in zip(merged, get_weights(model)):
                    acc += w * (len(node.train) / total)
            weights = [m.astype(w.dtype) for m, w in zip(merged, weights)]
            set_weights(model, weights)
            metric = evaluate(model, test, device, settings.objective)[settings.objective.key]
            times.append(time.perf_counter() - start)
        return {"times": times, "metric": metric}
    finally:
        torch.set_num_threads(before)


def steady(times: list[float]) -> float:
    """Seconds per round once warm: the median of rounds 2..R."""
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


# --- runs through the launcher --------------------------------------------------------------


def launch(
    num_nodes: int,
    run_config: dict[str, Any],
    out: Path,
    timeout: float = 3600,
    env: dict[str, str] | None = None,
    cpus_per_client: float = 1.0,
) -> dict[str, Any]:
    """``python -m launcher.simulate`` as a user runs it, with the clients on the CPU: the run's
    round times, when each line of its output arrived, the peak memory of its processes and
    the CPU time each kind of process used."""
    name = str(run_config["run-name"])
    pairs = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    cmd = [sys.executable, "-m", "launcher.simulate", "--num-supernodes", str(num_nodes), "--output-dir", str(out),
           "--gpus-per-client", "0", "--cpus-per-client", str(cpus_per_client), "--timeout", str(timeout),
           "--run-config", pairs]
    env = {**os.environ, TIMINGS_ENV: "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = RunWatch(out / name, start)
    with TreeMemory(proc.pid, include_root=True) as mem, watch:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip()))
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise RuntimeError(f"launcher exited with {proc.returncode}:\n{tail}")
    history = rf.RunFolder(out / name).history()
    times = [r["wall-time-s"] for r in history["rounds"] if r["round"] > 0]
    return {"times": times, "lines": lines, "total_s": time.perf_counter() - start, "history": history,
            "peak_rss": mem.peak_rss, "peak_pss": mem.peak_pss, "procs": mem.peak_procs, "names": mem.peak_names,
            "cpu": mem.cpu_by_role(), "first_seen": mem.first_seen, "folder": watch.seen}


class RunWatch(_Poller):
    """Polls a run folder while the run goes: when its config appeared (the nodes had
    answered the ServerApp's query) and when its history first held each round.
    Seconds after ``start``; independent of what the log stream shows."""

    def __init__(self, folder: Path, start: float, interval: float = 0.1) -> None:
        self.folder, self.start, self.interval = rf.RunFolder(folder), start, interval
        self.seen: dict[str, float] = {}
        super().__init__()

    def sample(self) -> None:
        now = time.perf_counter() - self.start
        if "config" not in self.seen and self.folder.file(rf.CONFIG).exists():
            self.seen["config"] = now
        try:
            rounds = self.folder.history()["rounds"]
        except (rf.RunFolderError, ValueError, KeyError):
            rounds = []
        for r in rounds:
            self.seen.setdefault(f"round {r['round']}", now)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def _metric(history: dict, objective: Objective) -> float:
    return history["rounds"][-1]["server"][objective.key]


# --- the rows -------------------------------------------------------------------------------


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
            rows.append(Row("overhead", f"{model}: plain loop, one process, {threads} thread(s)", steady(run["times"]),
                            None, run["times"][0], load=(l0, load1()),
                            notes=f"{key} after {rounds} rounds {run['metric']:.4f}", extra={"rounds": run["times"]}))
        l2 = load1()
        sim = launch(100, {**config, "run-name": f"overhead-{model}"}, work_dir)
        l3 = load1()
        best = min(steady(run["times"]) for run in plain)
        rows.append(Row("overhead", f"{model}: flwr run simulation, 100 clients", steady(sim["times"]),
                        steady(sim["times"]) / best, sim["times"][0], sim["peak_rss"] / 1e9, sim["peak_pss"] / 1e9,
                        load=(l2, l3),
                        notes=f"{key} {_metric(sim['history'], objective):.4f}; ratio against the plain loop; "
                        + cpu_note(sim["cpu"]),
                        extra={"rounds": sim["times"], "cpu": sim["cpu"]}))
        if model == "mlp" and with_flower_delivery:  # the same run with Flower's own message loop, for comparison
            old = launch(100, {**config, "run-name": f"overhead-{model}-flower-delivery"}, work_dir,
                         env={DISABLE_ENV: "1"})
            l4 = load1()
            rows.append(Row("overhead", f"{model}: the same, Flower's own per-node delivery", steady(old["times"]),
                            steady(old["times"]) / best, old["times"][0], old["peak_rss"] / 1e9, old["peak_pss"] / 1e9,
                            load=(l3, l4), notes=f"{key} {_metric(old['history'], objective):.4f}; " + cpu_note(old["cpu"]),
                            extra={"rounds": old["times"], "cpu": old["cpu"]}))
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
    return [Row("coldstart", "command to end of round 1, 100 clients", None, None, end,
                run["peak_rss"] / 1e9, run["peak_pss"] / 1e9, load=(l0, l1), notes="; ".join(phases + [cpu_note(run["cpu"])]),
                extra={"total_s": run["total_s"], "phases": phases, "cpu": run["cpu"]})]


def scale(sizes: list[int], work_dir: Path) -> list[Row]:
    rows = []
    cores = os.cpu_count() or 1
    # every size with one worker per core; 1,000 clients also with a single worker (cores per client = all)
    plan = [(n, 1.0) for n in sizes] + ([(1000, float(cores))] if 1000 in sizes and cores > 1 else [])
    for n, cpus in plan:
        config = {**WORK, "fraction-train": 0.1, "fraction-evaluate": 0.1, "num-server-rounds": 3,
                  "run-name": f"scale-{n}-{cpus:g}"}
        l0 = load1()
        run = launch(n, config, work_dir, timeout=5400, cpus_per_client=cpus)
        l1 = load1()
        per = max(1, int(n * 0.1))
        workers = "" if cpus == 1 else f", one worker (--cpus-per-client {cpus:g})"
        rows.append(Row("scale", f"{n:,} clients ({60000 // n:,} images each, {per:,} per round{workers})", steady(run["times"]),
                        None, run["times"][0], run["peak_rss"] / 1e9, run["peak_pss"] / 1e9, load=(l0, l1),
                        notes=f"{run['procs']} processes at most; start to finish {run['total_s']:.0f} s; " + cpu_note(run["cpu"]),
                        extra={"rounds": run["times"], "names_at_peak": run["names"], "cpu": run["cpu"]}))
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
        flwr_run(home, "loopback", {**config, "output-dir": str(work_dir), "run-name": "deployment"}, echo=False,
                 timeout=3600)
    history = rf.RunFolder(work_dir / "deployment").history()
    deployed = [r["wall-time-s"] for r in history["rounds"] if r["round"] > 0]
    l1 = load1()
    sim = launch(3, {**config, "run-name": "deployment-sim"}, work_dir)
    l2 = load1()
    return [
        Row("deployment", "3 SuperNodes on loopback (20,000 images each)", steady(deployed), steady(deployed) / steady(sim["times"]),
            deployed[0], mem.peak_rss / 1e9, mem.peak_pss / 1e9, load=(l0, l1),
            notes=f"{mlp.key} {_metric(history, mlp):.4f}; ratio against the simulation below; one ClientApp process per "
            f"message; {cpu_note(mem.cpu_by_role())}",
            extra={"rounds": deployed, "cpu": mem.cpu_by_role()}),
        Row("deployment", "simulation, 3 clients (20,000 images each)", steady(sim["times"]), None, sim["times"][0],
            sim["peak_rss"] / 1e9, sim["peak_pss"] / 1e9, load=(l1, l2),
            notes=f"{mlp.key} {_metric(sim['history'], mlp):.4f}; {cpu_note(sim['cpu'])}", extra={"rounds": sim["times"], "cpu": sim["cpu"]}),
    ]


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
        return [Row("gpu", name, notes=f"not measured: {reason}") for name in
                ("training throughput, CUDA vs CPU, MLP and autoencoder", "simulation, 100 clients sharing the GPU")]
    rows = []
    for kind in ("mlp", "autoencoder"):
        l0 = load1()
        cpu, cuda = throughput(kind, "cpu"), throughput(kind, "cuda")
        rows.append(Row("gpu", f"{kind}: training throughput, CUDA vs CPU", None, cuda / cpu, load=(l0, load1()),
                        notes=f"{cuda:,.0f} images/s on CUDA, {cpu:,.0f} on the CPU (one client, batch 32)"))
    l0 = load1()
    name = "gpu-sim"
    cmd_config = {**WORK, "num-server-rounds": rounds, "run-name": name}
    run = launch_gpu(100, cmd_config, work_dir)
    rows.append(Row("gpu", "simulation, 100 clients, 0.25 GPU each", steady(run["times"]), None, run["times"][0],
                    run["peak_rss"] / 1e9, run["peak_pss"] / 1e9, load=(l0, load1()), notes="clients and server on CUDA"))
    return rows


def launch_gpu(num_nodes: int, run_config: dict[str, Any], out: Path) -> dict[str, Any]:
    """As :func:`launch`, with the launcher's default GPU share."""
    pairs = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    cmd = [sys.executable, "-m", "launcher.simulate", "--num-supernodes", str(num_nodes), "--output-dir", str(out),
           "--run-config", pairs]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(proc.pid, include_root=True) as mem:
        output = proc.communicate()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"launcher exited with {proc.returncode}:\n{output[-3000:]}")
    history = rf.RunFolder(out / str(run_config["run-name"])).history()
    return {"times": [r["wall-time-s"] for r in history["rounds"] if r["round"] > 0], "total_s": time.perf_counter() - start,
            "peak_rss": mem.peak_rss, "peak_pss": mem.peak_pss}


# --- the table and the files ------------------------------------------------------------------


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def table(rows: list[Row]) -> str:
    head = ("| row | s/round (steady) | ratio | round 1 / cold start (s) | peak RSS, summed (GB) | peak PSS, summed (GB) "
            "| load 1-min before → after | notes |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.section}: {r.name} | {_num(r.s_per_round, '.2f')} | {_num(r.ratio, '.2f')} | {_num(r.first_round_s, '.1f')} "
        f"| {_num(r.peak_rss_gb, '.2f')} | {_num(r.peak_pss_gb, '.2f')} | {r.load[0]:.1f} → {r.load[1]:.1f} | {r.notes} |\n"
        for r in rows
    )
    return head + body


def targets(rows: list[Row]) -> str:
    """Each target of the issue that this run measured: met, or missed and by how much."""
    found: dict[str, float] = {}
    for r in rows:
        if r.section == "overhead" and r.name.startswith("mlp: flwr run") and r.ratio is not None:
            found["overhead-mlp"] = r.ratio
        if r.section == "coldstart" and r.first_round_s is not None:
            found["coldstart"] = r.first_round_s
        if r.section == "scale" and r.peak_rss_gb is not None and "one worker" not in r.name:
            n = r.name.split(" ")[0].replace(",", "")
            if f"scale-{n}" in TARGETS:
                found[f"scale-{n}"] = r.peak_rss_gb
    lines = []
    for key, value in found.items():
        label, limit, unit = TARGETS[key]
        verdict = "met" if value <= limit else f"missed by {value - limit:.2f} {unit} ({value / limit - 1:.0%} over)"
        lines.append(f"| {label} | at most {limit:g} {unit} | {value:.2f} {unit} | {verdict} |")
    if not lines:
        return ""
    return "| target | limit | measured | verdict |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"


def write(rows: list[Row], command: str, started: str, md: Path, jsonl: Path) -> None:
    info, vers = machine(), versions()
    header = (
        f"\n## {started} UTC: `{command}`\n\n"
        f"Machine: {info['cpu']}, {info['cpu-count']} cores, {info['memory-gb']} GB, "
        f"GPU: {', '.join(info['gpus']) or 'none'}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in vers.items())
        + ".\n\n"
    )
    checks = targets(rows)
    with md.open("a") as fh:
        fh.write(header + table(rows) + ("\n" + checks if checks else ""))
    with jsonl.open("a") as fh:
        for r in rows:
            fh.write(json.dumps({"date": started, "command": command, "machine": info, "versions": vers, **asdict(r)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the overhead and deployment rows (default 4)")
    parser.add_argument("--plain-threads", default="1",
                        help="PyTorch threads of the plain loop, e.g. 1,2 for both (default 1: one process, one thread)")
    parser.add_argument("--scale", default="10,100,1000,10000", help="client counts of the scale rows")
    parser.add_argument("--models", default="mlp,autoencoder", help="models of the overhead rows")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help="Markdown file the table is appended to")
    parser.add_argument("--jsonl", type=Path, default=RESULTS_JSONL, help="file every row is appended to as JSON")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    command = "python -m benchmarks.perf " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fedmnist-perf-") as tmp:
        work = Path(tmp)
        for section in sections:
            print(f"[perf] {section} ...", file=sys.stderr, flush=True)
            if section == "overhead":
                rows += overhead(args.rounds, work, plain_threads=tuple(int(t) for t in args.plain_threads.split(",")),
                                 models=tuple(m.strip() for m in args.models.split(",")))
            elif section == "coldstart":
                rows += coldstart(work)
            elif section == "scale":
                rows += scale([int(x) for x in args.scale.split(",")], work)
            elif section == "deployment":
                rows += deployment(args.rounds, work)
            elif section == "gpu":
                rows += gpu(args.rounds, work)
            print(table(rows[-3:]), file=sys.stderr, flush=True)
    print(table(rows))
    print(targets(rows))
    if not args.no_write:
        write(rows, command.strip(), started, args.results, args.jsonl)
        print(f"Appended to {args.results} and {args.jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
