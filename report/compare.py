"""Several run folders side by side: one Markdown table and one figure.

    python -m report.compare RUN_DIR RUN_DIR ... [--out DIR] [--name NAME]

Writes ``DIR/NAME.md`` and ``DIR/NAME.png``; by default ``comparison.md`` and
``comparison.png`` beside the runs, in the folder that holds them (``outputs/``
for runs the launcher made there). For each run its model, the settings that differ between the
runs, how many rounds it has, its final and best server test metric, the first
round at the objective's target and its wall time, ordered by the final metric
(best first); then the metric by round and by wall time, overlaid. The runs are read and
checked by ``report.comparison``; the Markdown comes from ``report/templates/comparison.md.j2``.
The two files are written together, and writing the same name again replaces both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import run_folder as rf
from report.comparison import MISSING, CompareError, Comparison, Run, compare
from report.figures import comparison_png
from report.markdown import render_markdown, shown
from run_folder import RunFolder, RunFolderError
from task.errors import run_cli
from task.files import write_files

__all__ = ["CompareError", "compare", "main", "render", "write_comparison"]

DEFAULT_NAME = "comparison"


def render(comparison: Comparison, png_name: str, out_dir: Path) -> str:
    """The comparison's Markdown; ``png_name`` is the figure beside it in ``out_dir``."""
    objective, runs = comparison.objective, comparison.runs
    by_round = [{r["round"]: r["server"][objective.key] for r in run.rounds} for run in runs]
    round_numbers = sorted({n for values in by_round for n in values})
    head, rows = _table(comparison)
    return render_markdown(
        "comparison.md.j2",
        objective=objective,
        runs=runs,
        head=head,
        rows=rows,
        unfinished=[r for r in runs if r.status != rf.COMPLETED],
        png_name=png_name,
        knobs=comparison.knobs,
        settings_rows=[[k, *(shown(r.config.get(k, MISSING)) for r in runs)] for k in comparison.knobs],
        older=[r for r in runs if r.defaulted],
        unset=any(MISSING in comparison.knob_text(r) for r in runs),
        missing=MISSING,
        shared=comparison.shared,
        round_rows=[[n, *(objective.format(values.get(n)) for values in by_round)] for n in round_numbers],
        sources=[_source(run, out_dir) for run in runs],
        run_folder=rf,
        written=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


def _table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The main table's header and rows: the differing settings and the target's column only
    when there are any."""
    objective, knobs = comparison.objective, bool(comparison.knobs)
    fmt, column, target = objective.format, objective.column, objective.target is not None
    head = [
        *("#", "run", "model"),
        *(["settings that differ"] if knobs else []),
        *("status", "rounds", f"final {column}", f"best {column} (round)"),
        *([f"first round at {fmt(objective.target)} (wall time)"] if target else []),
        "wall time",
    ]
    rows = []
    for i, run in enumerate(comparison.runs, 1):
        hit = run.first_at_target()
        reached = f"{hit['round']} ({hit['elapsed-s']:.0f} s)" if hit else "not reached"
        rows.append(
            [
                *(str(i), run.label, run.model),
                *([comparison.knob_text(run)] if knobs else []),
                *(run.status_text(), str(run.last_round), fmt(run.final), f"{fmt(run.best)} ({run.best_round})"),
                *([reached] if target else []),
                f"{run.seconds:.0f} s",
            ]
        )
    return head, rows


def _source(run: Run, out_dir: Path) -> dict[str, Any]:
    """Where a run's numbers come from: its history and, when it has one, its report."""
    report = run.folder.file(rf.REPORT)
    return {
        "label": run.label,
        "history": _relative(run.folder.file(rf.HISTORY), out_dir),
        "nodes": run.num_nodes,
        "report": f"[{report.name}]({_relative(report, out_dir)})" if report.is_file() else None,
    }


def write_comparison(
    paths: list[str | Path], out_dir: str | Path | None = None, name: str = DEFAULT_NAME
) -> tuple[Path, bool]:
    """Compare the runs and write ``NAME.md`` and ``NAME.png`` into ``out_dir`` together
    (default: the folder that holds the run folders).

    Returns the Markdown's path and whether an earlier comparison of that name was replaced."""
    name = name.removesuffix(".md").removesuffix(".png")  # "presets.md" means "presets"
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("~"):
        raise CompareError(f"--name '{name}' is not allowed: give a plain file name without a suffix, e.g. 'presets'.")
    comparison = compare(paths)
    out_dir = Path(out_dir).expanduser() if out_dir is not None else _beside_the_runs(paths)
    _refuse_run_folder(out_dir)
    md, png = out_dir / f"{name}.md", out_dir / f"{name}.png"
    figure = comparison_png(
        [(r.label, r.rounds) for r in comparison.runs],
        comparison.objective,
        f"Server {comparison.objective.label}: " + ", ".join(r.label for r in comparison.runs),
    )
    text = render(comparison, png.name, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompareError(
            f"cannot create the output folder {out_dir} ({exc.strerror}): choose another --out."
        ) from None
    replaced = md.exists() or png.exists()
    try:
        write_files({md: text.encode(), png: figure})
    except OSError as exc:
        raise CompareError(f"cannot write into {out_dir} ({exc.strerror}): choose another --out.") from None
    return md, replaced


def _beside_the_runs(paths: list[str | Path]) -> Path:
    """The folder that holds every run folder, as the user spelled the first one."""
    parents = {Path(p).expanduser().resolve().parent for p in paths}
    if len(parents) > 1:
        raise CompareError(
            f"the runs are in different folders ({', '.join(sorted(map(str, parents)))}): "
            "say where the comparison goes with --out DIR."
        )
    return Path(paths[0]).expanduser().parent


def _refuse_run_folder(out_dir: Path) -> None:
    """A comparison never goes into a run folder, whose files belong to the run."""
    try:
        RunFolder.open(out_dir)
    except RunFolderError:
        return
    raise CompareError(
        f"--out {out_dir} is a run folder: put the comparison in a folder of its own "
        "(by default it goes beside the run folders)."
    )


def _relative(path: Path, start: Path) -> str:
    """Relative to the comparison when the two share a folder below the root (the link survives
    moving both), else absolute."""
    path, start = path.resolve(), start.resolve()
    try:
        if Path(os.path.commonpath([path, start])) != Path(path.anchor):
            return os.path.relpath(path, start)
    except ValueError:  # another drive
        pass
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m report.compare",
        description="Compare several run folders: a table of final and best metrics, rounds to the target and "
        "wall time, and the metric by round and by wall time overlaid; writes NAME.md and NAME.png.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="two or more run folders")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder to write into, created if needed (default: the folder holding the run folders)",
    )
    parser.add_argument(
        "--name", default=DEFAULT_NAME, help=f"file name of the comparison, without suffix (default {DEFAULT_NAME})"
    )
    args = parser.parse_args(argv)

    def run() -> None:
        path, replaced = write_comparison(args.run_dirs, args.out, args.name)
        print(f"Comparison: {path}" + (" (replaced the earlier comparison of that name)" if replaced else ""))

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
