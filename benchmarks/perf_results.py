"""What a row of the speed benchmark is, and where the rows go: the table printed and appended
to ``benchmarks/RESULTS-perf.md``, every row as JSON in ``benchmarks/perf-results.jsonl``, and
the verdict on each of the project's speed and memory targets (docs/speed.md)."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from launcher import PROJECT_ROOT
from task.host import machine, versions

RESULTS_MD = PROJECT_ROOT / "benchmarks" / "RESULTS-perf.md"
RESULTS_JSONL = PROJECT_ROOT / "benchmarks" / "perf-results.jsonl"
# The project's speed and memory targets, as in docs/speed.md's table: (what, limit, unit).
TARGETS = {
    "overhead-mlp": ("simulation / plain loop, MLP, steady state", 1.3, "x"),
    "coldstart": ("command to end of round 1, 100 clients", 15.0, "s"),
    "scale-1000": ("peak memory, 1,000 clients (RSS summed)", 3.0, "GB"),
    "scale-10000": ("peak memory, 10,000 clients (RSS summed)", 4.0, "GB"),
    "deployment-warm": ("3 SuperNodes on loopback, warm, against the simulation with 3 clients", 2.0, "x"),
    "deployment-warm-idle": ("the same, a shorter wait after an empty pull", 2.0, "x"),
    "message-cpu-warm": ("median CPU of a warm ClientApp process that trains nothing (the queries)", 0.5, "s"),
}


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


def steady(times: list[float]) -> float:
    """Seconds per round once warm: the median of rounds 2..R."""
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def cpu_note(cpu: dict[str, float]) -> str:
    return "CPU s: " + ", ".join(f"{role} {seconds:.0f}" for role, seconds in cpu.items() if seconds >= 0.5)


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def table(rows: list[Row]) -> str:
    head = (
        "| row | s/round (steady) | ratio | round 1 / cold start (s) | peak RSS, summed (GB) | peak PSS, summed (GB) "
        "| load 1-min before → after | notes |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r.section}: {r.name} | {_num(r.s_per_round, '.2f')} | {_num(r.ratio, '.2f')} "
        f"| {_num(r.first_round_s, '.1f')} "
        f"| {_num(r.peak_rss_gb, '.2f')} | {_num(r.peak_pss_gb, '.2f')} "
        f"| {r.load[0]:.1f} → {r.load[1]:.1f} | {r.notes} |\n"
        for r in rows
    )
    return head + body


def targets(rows: list[Row]) -> str:
    """Each target in TARGETS that this run measured: met, or missed and by how much."""
    found: dict[str, float] = {}
    for r in rows:
        if r.section == "overhead" and r.name.startswith("mlp: flwr run") and r.ratio is not None:
            found["overhead-mlp"] = r.ratio
        if r.section == "coldstart" and r.first_round_s is not None:
            found["coldstart"] = r.first_round_s
        if r.section == "deployment" and r.extra.get("warm") and r.ratio is not None:
            shorter = r.extra.get("idle-s", 3.0) < 3.0
            found["deployment-warm-idle" if shorter else "deployment-warm"] = r.ratio
            if r.extra.get("query-cpu-s") and not shorter:
                found["message-cpu-warm"] = statistics.median(r.extra["query-cpu-s"])
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
            fh.write(
                json.dumps({"date": started, "command": command, "machine": info, "versions": vers, **asdict(r)}) + "\n"
            )
