"""Summarize run folders as the rows of RESULTS.md.

    .venv/bin/python -m benchmarks.summarize outputs/presets/tutorial outputs/presets/fast ...

For each run: the final server test accuracy (or MSE per pixel), the first round
at the objective's target (97% accuracy), the accuracy by round, and the wall time of the rounds
(from history.json; Flower start-up before round 0 not included).
"""

from __future__ import annotations

import sys
from pathlib import Path

from run_folder import RunFolder


def summarize(run_dir: Path) -> dict:
    folder = RunFolder.open(run_dir)
    history, objective = folder.history(), folder.settings().objective
    rounds = history["rounds"]
    values = [r["server"][objective.key] for r in rounds]
    hit = next((r["round"] for r in rounds if objective.reached(r["server"][objective.key])), None)
    return {
        "run": folder.name,
        "status": history["status"],
        "nodes": history.get("num-nodes"),
        "rounds": rounds[-1]["round"],
        "objective": objective,
        "final": values[-1],
        "best": objective.best(values),
        "rounds-to-target": hit,
        "by-round": values,
        "seconds": rounds[-1]["elapsed-s"],
    }


def main(argv: list[str]) -> None:
    for arg in argv:
        s = summarize(Path(arg))
        objective = s["objective"]
        target = (
            f"rounds to {objective.format(objective.target)}: {s['rounds-to-target'] or 'not reached'}, "
            if objective.target
            else ""
        )
        print(
            f"{s['run']}: {s['status']}, {s['nodes']} nodes, {s['rounds']} rounds, final {objective.label} "
            f"{objective.format(s['final'])}, {target}{s['seconds']:.0f} s\n"
            f"  by round: {', '.join(objective.format(v) for v in s['by-round'])}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
