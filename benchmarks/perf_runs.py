"""The runs the speed benchmark measures: FedAvg as a plain in-process PyTorch loop (no Flower,
no Ray), and ``python -m launcher.simulate`` as a user runs it, watched from outside (its
output lines, its run folder, the memory and CPU time of its processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import run_folder as rf
from benchmarks.sampling import Poller, TreeMemory
from launcher import PROJECT_ROOT
from launcher.flwr_cli import toml_value
from launcher.timings import TIMINGS_ENV
from task.objective import Objective


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


def _run_config_pairs(run_config: dict[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())


def _launcher_command(num_nodes: int, out: Path, run_config: dict[str, Any], *options: str) -> list[str]:
    """``python -m launcher.simulate`` for ``num_nodes`` clients writing into ``out``."""
    return [
        sys.executable, "-m", "launcher.simulate", "--num-supernodes", str(num_nodes), "--output-dir", str(out),
        *options, "--run-config", _run_config_pairs(run_config),
    ]  # fmt: skip


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
    cmd = _launcher_command(
        num_nodes, out, run_config, "--gpus-per-client", "0", "--cpus-per-client", str(cpus_per_client),
        "--timeout", str(timeout),
    )  # fmt: skip
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
    return {
        "times": times,
        "lines": lines,
        "total_s": time.perf_counter() - start,
        "history": history,
        "peak_rss": mem.peak_rss,
        "peak_pss": mem.peak_pss,
        "procs": mem.peak_procs,
        "names": mem.peak_names,
        "cpu": mem.cpu_by_role(),
        "first_seen": mem.first_seen,
        "folder": watch.seen,
    }


def launch_gpu(num_nodes: int, run_config: dict[str, Any], out: Path) -> dict[str, Any]:
    """As :func:`launch`, with the launcher's default GPU share."""
    cmd = _launcher_command(num_nodes, out, run_config)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(proc.pid, include_root=True) as mem:
        output = proc.communicate()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"launcher exited with {proc.returncode}:\n{output[-3000:]}")
    history = rf.RunFolder(out / str(run_config["run-name"])).history()
    return {
        "times": [r["wall-time-s"] for r in history["rounds"] if r["round"] > 0],
        "total_s": time.perf_counter() - start,
        "peak_rss": mem.peak_rss,
        "peak_pss": mem.peak_pss,
    }


class RunWatch(Poller):
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


def final_metric(history: dict, objective: Objective) -> float:
    """The server's metric after the last round of a run's history."""
    return history["rounds"][-1]["server"][objective.key]
