"""Several run folders read for comparison: each run's configuration and history, checked, ordered
best first, and the settings they differ in. ``report.compare`` writes the table and the figure.

Runs must be judged by the same metric (the objective of their model): an MLP run and an
autoencoder run are refused together. A run that is still going or that failed or was
interrupted is compared on the rounds it has, and its status says so. Nothing is read but each
run's configuration and history.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path
from typing import Any

import run_folder as rf
from report.markdown import first_at_target, shown
from run_folder import RunFolder
from task.errors import UserError
from task.objective import Objective

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
        hit = first_at_target(self.objective, self.values)
        return None if hit is None else self.rounds[hit]

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
        return ", ".join(f"{k}={shown(_knob(run, k))}" for k in self.knobs)


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
    knobs = [k for k in keys if len({shown(_knob(r, k)) for r in runs}) > 1]
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


def _knob(run: Run, key: str) -> Any:
    return UNUSED if key in run.unused else run.config.get(key, MISSING)
