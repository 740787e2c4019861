"""Summarize run folders as the rows of RESULTS.md.

    .venv/bin/python -m benchmarks.summarize outputs/presets/tutorial outputs/presets/fast ...

For each run: the final server test accuracy (or MSE per pixel), the first round
at or above 97% accuracy, the accuracy by round, and the wall time of the rounds
(from history.json; Flower start-up before round 0 not included).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from task.training import metric_key


def summarize(run_dir: Path, target: float = 0.97) -> dict:
    history = json.loads((run_dir / "history.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    rounds = history["rounds"]
    key = metric_key(config["model"])
    values = [r["server"][key] for r in rounds]
    hit = next((r["round"] for r in rounds if key == "accuracy" and r["server"][key] >= target), None)
    return {
        "run": run_dir.name,
        "status": history["status"],
        "nodes": config.get("num-nodes"),
        "rounds": rounds[-1]["round"],
        "metric": key,
        "final": values[-1],
        "best": max(values) if key == "accuracy" else min(values),
        "rounds-to-97": hit,
        "by-round": values,
        "seconds": rounds[-1]["elapsed-s"],
    }


def main(argv: list[str]) -> None:
    for arg in argv:
        s = summarize(Path(arg))
        shown = (lambda v: f"{100 * v:.2f}%") if s["metric"] == "accuracy" else (lambda v: f"{v:.5f}")
        print(
            f"{s['run']}: {s['status']}, {s['nodes']} nodes, {s['rounds']} rounds, final {s['metric']} "
            f"{shown(s['final'])}, rounds to 97%: {s['rounds-to-97'] or 'not reached'}, "
            f"{s['seconds']:.0f} s\n  by round: {', '.join(shown(v) for v in s['by-round'])}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
