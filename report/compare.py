"""Several run folders side by side: one Markdown table and one figure.

    python -m report.compare RUN_DIR RUN_DIR ... [--out DIR] [--name NAME]

Writes ``DIR/NAME.md`` and ``DIR/NAME.png``; by default ``comparison.md`` and
``comparison.png`` beside the runs, in the folder that holds them (``outputs/``
for runs the launcher made there). For each run its model, the settings that differ between the
runs, how many rounds it has, its final and best server test metric, the first
round at the objective's target and its wall time, ordered by the final metric
(best first); then the metric by round and by wall time, overlaid.

Runs must be judged by the same metric (the objective of their model): an MLP
run and an autoencoder run are refused together. A run that is still going or
that failed or was interrupted is compared on the rounds it has, and its
status says so, so a running run can be watched against finished ones. Nothing is read but each
run's configuration and history; the two files are written together, and
writing the same name again replaces both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path
from typing import Any

import run_folder as rf
from report.figures import comparison_png
from run_folder import RunFolder, RunFolderError
from task.errors import UserError, run_cli
from task.files import write_files
from task.objective import Objective

DEFAULT_NAME = "comparison"
# Config keys that name or locate a run rather than set it up: never "a knob that differs".
IDENTITY_KEYS = ("run-name", "run-id", "output-dir")
MISSING = "(unset)"
UNUSED = "-"


class CompareError(UserError):
    """The runs cannot be compared, or an option is invalid; the message says what to do."""


@dataclass
class Run:
    """One run folder as the comparison sees it."""

    folder: RunFolder
    label: str
    model: str
    objective: Objective
    config: dict[str, Any]
    status: str
    error: str | None
    num_nodes: int | None
    planned_rounds: int
    rounds: list[dict[str, Any]]
    defaulted: list[str]  # settings its config.json lacks, taken at their defaults
    unused: frozenset[str]  # knobs this run ignores (Settings.unused_knobs)

    @property
    def values(self) -> list[float]:
        return [r["server"][self.objective.key] for r in self.rounds]

    @property
    def final(self) -> float:
        return self.values[-1]

    @property
    def best(self) -> float:
        return self.objective.best(self.values)

    @property
    def best_round(self) -> int:
        return self.rounds[self.values.index(self.best)]["round"]

    @property
    def last_round(self) -> int:
        return self.rounds[-1]["round"]

    @property
    def seconds(self) -> float:
        return self.rounds[-1]["elapsed-s"]

    def first_at_target(self) -> dict[str, Any] | None:
        """The first round whose metric meets the objective's target, if any."""
        return next((r for r in self.rounds if self.objective.reached(r["server"][self.objective.key])), None)

    def status_text(self) -> str:
        if self.status == rf.COMPLETED:
            return rf.COMPLETED
        return f"{self.status} at round {self.last_round} of {self.planned_rounds}"


@dataclass
class Comparison:
    runs: list[Run]  # ordered, best final metric first
    objective: Objective
    knobs: list[str]  # config keys whose values differ between the runs
    shared: dict[str, Any]  # config keys with one value in every run

    def knob_text(self, run: Run) -> str:
        return ", ".join(f"{k}={_value(_knob(run, k))}" for k in self.knobs)


def load_run(path: str | Path) -> Run:
    """Open a run folder and read what the comparison needs: configuration and history.

    A completed run must pass the run folder's checks; a running or failed one is
    taken with the rounds it recorded, provided it recorded at least round 0."""
    folder = RunFolder.open(path)
    history = folder.history()
    status = history.get("status")
    if status != rf.COMPLETED and isinstance(status, str) and status:
        # running, failed, interrupted: compared on the rounds it has, with its status shown
        rounds = history.get("rounds")
        if not isinstance(rounds, list) or not rounds or not all(isinstance(r, dict) and "server" in r for r in rounds):
            raise CompareError(
                f"run {folder.path} is {status} and has no evaluated round yet: "
                + ("wait for its first evaluation" if status == rf.RUNNING else "leave it out")
                + ", or compare the other runs without it."
            )
    else:
        history = folder.completed_history()  # refuses a damaged history, saying why
        rounds = history["rounds"]
    settings = folder.settings()
    objective = settings.objective
    # Every knob as resolved: a knob that the run's version of the app did not have yet is
    # missing from its written configuration and counts as its default, not as a difference.
    written = folder.config()
    config = {**settings.to_run_config(), **written}
    for r in rounds:
        if not isinstance(r["server"], dict) or objective.key not in r["server"] or "elapsed-s" not in r:
            raise CompareError(
                f"round {r.get('round', '?')} of run {folder.path} does not record the server's {objective.label} "
                f"and wall time ({objective.key}, elapsed-s): the run folder is damaged or from another version; "
                "run the simulation again."
            )
    return Run(
        folder=folder,
        label=folder.name,
        model=settings.model,
        objective=objective,
        config=config,
        defaulted=[k for k in config if k not in written],
        unused=settings.unused_knobs,
        status=status,
        error=history.get("error"),
        num_nodes=history.get("num-nodes"),
        planned_rounds=settings.num_server_rounds,
        rounds=rounds,
    )


def compare(paths: list[str | Path]) -> Comparison:
    """Read and check the runs, order them and find the settings they differ in."""
    if len(paths) < 2:
        raise CompareError(f"give two or more run folders to compare (got {len(paths)}).")
    seen: dict[Path, str] = {}
    for p in paths:
        resolved = Path(p).expanduser().resolve()
        if resolved in seen:
            raise CompareError(f"{p} is given twice (also as {seen[resolved]}): give each run folder once.")
        seen[resolved] = str(p)
    runs = [load_run(p) for p in paths]
    _check_one_objective(runs)
    _unique_labels(runs)
    objective = runs[0].objective

    def by_final(a: Run, b: Run) -> int:
        return -1 if objective.better(a.final, b.final) else 1 if objective.better(b.final, a.final) else 0

    runs.sort(key=cmp_to_key(by_final))  # stable: equal finals keep the order given
    keys = list(dict.fromkeys(k for r in runs for k in r.config if k not in IDENTITY_KEYS))
    # A knob a run ignores (another partitioning's option, the autoencoder's shape in an MLP
    # run) is not a difference; it shows as "-" in that run's row.
    knobs = [k for k in keys if len({_value(_knob(r, k)) for r in runs}) > 1]
    shared = {k: runs[0].config[k] for k in keys if k not in knobs and not all(k in r.unused for r in runs)}
    return Comparison(runs, objective, knobs, shared)


def _check_one_objective(runs: list[Run]) -> None:
    groups: dict[Objective, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.objective, []).append(run)
    if len(groups) > 1:
        shown = "; ".join(
            f"{', '.join(f'{r.folder.path} (model={r.model})' for r in group)} judged by {objective.label}"
            for objective, group in groups.items()
        )
        raise CompareError(
            f"these runs are judged by different metrics and cannot share one table or plot: {shown}. "
            "Compare runs of one model kind at a time."
        )


def _unique_labels(runs: list[Run]) -> None:
    """Folders of the same name under different output folders get their parent's name too."""
    for run in runs:
        if sum(r.folder.name == run.folder.name for r in runs) > 1:
            run.label = f"{run.folder.path.parent.name}/{run.folder.name}"
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = str(run.folder.path)


def render(comparison: Comparison, png_name: str, out_dir: Path) -> str:
    """The comparison's Markdown; ``png_name`` is the figure beside it in ``out_dir``."""
    objective, runs = comparison.objective, comparison.runs
    fmt = objective.format
    direction = "higher" if objective.higher_is_better else "lower"
    target = objective.target
    unfinished = [r for r in runs if r.status != rf.COMPLETED]

    head = ["#", "run", "model"]
    if comparison.knobs:
        head.append("settings that differ")
    head += ["status", "rounds", f"final {objective.column}", f"best {objective.column} (round)"]
    if target is not None:
        head.append(f"first round at {fmt(target)} (wall time)")
    head.append("wall time")

    lines = [
        f"# {len(runs)} runs compared",
        "",
        f"Server {objective.label} of the global model on the 10,000 MNIST test images ({direction} is better), "
        f"ordered by the final value, best first"
        + (" (for a run not completed: the latest round it recorded)" if unfinished else "")
        + ". Wall time is measured from the start of the first evaluation, round 0 (Flower's start-up is not "
        "included); a round's metric is the global model's after that many rounds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for i, run in enumerate(runs, 1):
        cells = [str(i), run.label, run.model]
        if comparison.knobs:
            cells.append(comparison.knob_text(run))
        cells += [run.status_text(), str(run.last_round), fmt(run.final), f"{fmt(run.best)} ({run.best_round})"]
        if target is not None:
            hit = run.first_at_target()
            cells.append(f"{hit['round']} ({hit['elapsed-s']:.0f} s)" if hit else "not reached")
        cells.append(f"{run.seconds:.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    for run in unfinished:
        if run.status == rf.FAILED:
            lines.append(f"- {run.label} failed: {run.error or 'no error recorded'}.")
        elif run.status == rf.RUNNING:
            lines.append(f"- {run.label} was still running when this was written: compare again for its later rounds.")
        else:
            lines.append(f"- {run.label} stopped after round {run.last_round} (status '{run.status}').")
    if unfinished:
        lines.append("")
    lines += [
        f"![{objective.label} by round and by wall time]({png_name})",
        "",
        "## Settings",
        "",
    ]
    if comparison.knobs:
        lines += [
            "| setting | " + " | ".join(r.label for r in runs) + " |",
            "|---|" + "---|" * len(runs),
            *[
                f"| {k} | " + " | ".join(_value(r.config.get(k, MISSING)) for r in runs) + " |"
                for k in comparison.knobs
            ],
            "",
        ]
    else:
        lines += ["The runs share every setting.", ""]
    older = [r for r in runs if r.defaulted]
    for run in older:
        lines.append(
            f"- {run.label}'s configuration has no {', '.join(run.defaulted)}: it was written by a version of the "
            "app without them, so they count at their defaults."
        )
    unset = any(MISSING in comparison.knob_text(r) for r in runs)
    if unset:
        lines.append(f"- {MISSING}: that run's {rf.CONFIG} does not record it.")
    if older or unset:
        lines.append("")
    lines += [
        "The same in every run: " + ", ".join(f"`{k}={_value(v)}`" for k, v in comparison.shared.items()) + ".",
        "",
        "## By round",
        "",
        "| round | " + " | ".join(r.label for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    by_round = [{r["round"]: r["server"][objective.key] for r in run.rounds} for run in runs]
    for n in sorted({n for values in by_round for n in values}):
        lines.append(f"| {n} | " + " | ".join(fmt(values.get(n)) for values in by_round) + " |")
    lines += ["", "## Where the numbers come from", ""]
    for run in runs:
        where = f"- {run.label}: `{_relative(run.folder.file(rf.HISTORY), out_dir)}`"
        if run.num_nodes:
            where += f", {run.num_nodes} nodes"
        report = run.folder.file(rf.REPORT)
        if report.is_file():
            where += f"; its report against central training: [{report.name}]({_relative(report, out_dir)})"
        lines.append(where)
    lines += ["", f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} by `python -m report.compare`.", ""]
    return "\n".join(lines)


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


def _knob(run: Run, key: str) -> Any:
    return UNUSED if key in run.unused else run.config.get(key, MISSING)


def _value(value: Any) -> str:
    return '""' if value == "" else str(value)


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
