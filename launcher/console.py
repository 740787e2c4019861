"""What a person sees while a run goes: one progress line, then a short summary.

The progress comes from the run folder's ``history.json`` (rewritten by the
ServerApp after every round), not from parsing log text: rounds done out of N,
the server's metric, replies received out of asked, seconds per round and an
estimate of the time left. On a terminal the line is redrawn in place; anywhere
else (CI logs, files) each round is one plain line, without escape codes.
Flower's and Ray's own records go to a log file in the run folder instead.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import IO, Any

from task.objective import Objective

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Text without terminal escape codes (Flower colours its log levels)."""
    return _ANSI.sub("", text)


def progress_line(entry: dict[str, Any], total_rounds: int, objective: Objective, per_round: float | None) -> str:
    """One round of ``history.json`` as a line: ``Round 3/10 | test accuracy 93.10% | ...``."""
    done = entry["round"]
    metric = entry["server"].get(objective.key)
    parts = [
        f"Round {done}/{total_rounds}",
        f"{objective.label} {objective.format(metric) if metric is not None else '?'}",
    ]
    train = entry.get("clients-train") or {}
    if "nodes" in train:
        parts.append(f"replies {train['nodes']}/{train.get('asked', train['nodes'])}")
    if entry.get("failures"):
        parts.append(f"{len(entry['failures'])} dropped")
    if done > 0 and per_round is not None:
        parts.append(f"{per_round:.1f} s/round")
        parts.append(f"about {_duration(per_round * (total_rounds - done))} left" if done < total_rounds else "done")
    return " | ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressDisplay:
    """Shows each new round of a history once; redraws one line on a terminal."""

    def __init__(self, total_rounds: int, objective: Objective, out: IO[str] | None = None) -> None:
        self.total_rounds = total_rounds
        self.objective = objective
        self.out = out or sys.stdout
        self.tty = hasattr(self.out, "isatty") and self.out.isatty()
        self.shown = -1
        self.width = 0

    def update(self, history: dict[str, Any]) -> None:
        rounds = history.get("rounds") or []
        if not rounds or rounds[-1]["round"] <= self.shown:
            return
        last, first = rounds[-1], rounds[0]
        span = last["round"] - first["round"]
        per_round = (float(last["elapsed-s"]) - float(first["elapsed-s"])) / span if span > 0 else None
        line = progress_line(last, self.total_rounds, self.objective, per_round)
        if self.tty:
            self.out.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()
        self.shown = last["round"]

    def close(self) -> None:
        if self.tty and self.width:
            self.out.write("\n")
            self.out.flush()


def summary(history: dict[str, Any], objective: Objective) -> str:
    """The short summary after a run: how it ended, the final and best metric, where it is."""
    rounds = history.get("rounds") or []
    lines = [f"Run {history.get('status', 'unknown')}."]
    if len(rounds) > 1:
        values = [r["server"][objective.key] for r in rounds if r["server"].get(objective.key) is not None]
        last = rounds[-1]
        lines.append(
            f"  {last['round']} rounds in {last['elapsed-s']:.0f} s; final {objective.label} "
            f"{objective.format(values[-1])}, best {objective.format(objective.best(values))}"
        )
        hit = next((r["round"] for r in rounds if objective.reached(r["server"].get(objective.key) or 0.0)), None)
        if objective.target is not None:
            lines.append(
                f"  first at {objective.format(objective.target)}: "
                + (f"round {hit}" if hit is not None else "not reached")
            )
        dropped = sum(len(r.get("failures") or []) for r in rounds)
        if dropped:
            lines.append(f"  {dropped} repl(ies) dropped along the way (see history.json and server.log)")
    if history.get("error"):
        lines.append(f"  error: {history['error']}")
    return "\n".join(lines)


class RunWatcher:
    """While a run goes: shows its progress from the run folder (when ``show``), keeps
    every line Flower prints, and at the end writes them to the run folder's log and
    prints the summary."""

    def __init__(self, run_dir: Path, total_rounds: int, objective: Objective, show: bool, verbose: bool) -> None:
        self.run_dir = run_dir
        self.objective = objective
        self.show, self.verbose = show, verbose
        self.display = ProgressDisplay(total_rounds, objective) if show and not verbose else None
        self.lines: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> RunWatcher:
        if self.display is not None:
            print(
                f"Run {self.run_dir.name}: {self.display.total_rounds} round(s); Flower's own records go to "
                f"{self.run_dir}/flower.log (--verbose shows them here)",
                flush=True,
            )
        self.thread.start()
        return self

    def on_line(self, line: str) -> None:
        self.lines.append(strip_ansi(line))
        if self.show and self.verbose:
            tty = sys.stdout.isatty()
            sys.stdout.write(line if tty else strip_ansi(line))
            sys.stdout.flush()

    def _history(self) -> dict[str, Any] | None:
        from run_folder import RunFolder, RunFolderError

        try:
            return RunFolder(self.run_dir).history()
        except (RunFolderError, OSError):
            return None

    def _watch(self) -> None:
        while not self.stop_event.wait(0.5):
            history = self._history()
            if history is not None and self.display is not None:
                self.display.update(history)

    def __exit__(self, *exc: object) -> None:
        from run_folder import FLOWER_LOG

        self.stop_event.set()
        self.thread.join(5)
        history = self._history()
        if self.display is not None:
            if history is not None:
                self.display.update(history)
            self.display.close()
        if self.run_dir.is_dir() and self.lines:
            (self.run_dir / FLOWER_LOG).write_text("".join(self.lines), encoding="utf-8")
        if self.show and history is not None:
            print(summary(history, self.objective), flush=True)
