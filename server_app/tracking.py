"""The run in MLflow too (``tracking = "mlflow"``): its knobs, its rounds, its files.

The run folder stays the record; MLflow gets a copy as the run goes: every knob of
config.json as a parameter, every round's metrics with the round as step, a few tags,
and the run's files as artifacts when it ends. One MLflow run per run folder (its id is
kept in the folder), and a resumed run continues the MLflow run of the folder it resumes.

The rounds never wait for MLflow: its calls run in order on a thread of their own. A
tracker that cannot be reached, refuses or does not answer within MLflow's request timeout
(10 s here, no retries) is named once in the log and left alone for the rest of the run,
which at its end waits for the last calls (its files, its status) 30 s at most.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import queue
import sys
import threading
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common import log

import run_folder as rf
from run_folder import RunFolder, RunFolderError
from server_app.tracking_records import param_value, round_metrics, shown_uri, tracking_uri
from task.config import Settings, check_tracking_uri
from task.errors import ConfigError, run_cli

EXPERIMENT = "fedavg-mnist"
# Model training, not a GenAI app: MLflow's UI then opens the experiment on its runs and their metrics.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's own HTTP settings, where the environment does not set them: one try of 10 s at most
# (a server's first answer can take seconds on a busy machine).
REQUEST_TIMEOUT_S = 10
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
}
# The history's ending, as MLflow's run status.
STATUS = {rf.COMPLETED: "FINISHED", rf.FAILED: "FAILED", rf.INTERRUPTED: "KILLED"}
FINISH_WAIT_S = 30
# The run's files that go to MLflow as artifacts when present; the report comes later (MlflowLog.after_run).
ARTIFACTS = (rf.CONFIG, rf.HISTORY, rf.MANIFEST, rf.MODEL, rf.REPORT)
ARTIFACTS += (rf.REPORT_CURVES, rf.REPORT_LOCAL_VS_MERGED, rf.REPORT_RECONSTRUCTIONS, rf.REPORT_LABELS)
MAX_PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch


class MlflowLog:
    """The MLflow run of one run folder, fed from a thread of its own. Every call is guarded:
    the first failure is logged and tracking stops for the rest of the run."""

    def __init__(self, folder: RunFolder, settings: Settings, start: bool = True) -> None:
        self.folder = folder
        self.active = settings.tracking == "mlflow"
        self.uri = tracking_uri(settings) if self.active else ""
        self.client: Any = None
        self.run_id = ""
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.worker: threading.Thread | None = None
        if start and self.active:
            self.worker = threading.Thread(target=self._work, name="mlflow-tracking", daemon=True)
            self.worker.start()
            self._submit("starting the run", self._start)

    def _submit(self, doing: str, call, *args: Any) -> None:
        if self.worker is not None:
            self.calls.put((doing, call, args))

    def _work(self) -> None:
        while (item := self.calls.get()) is not None:
            doing, call, args = item
            self._guarded(doing, call, *args)

    @classmethod
    def after_run(cls, path: str | Path) -> bool:
        """What a run folder gains after its run (the launcher's git commit in the manifest,
        the report and its figures), into the same MLflow run; nothing for an untracked folder.
        False when MLflow failed (and the log says so)."""
        try:
            folder = RunFolder.open(path)
        except RunFolderError:  # no run folder there (the run never started one): nothing was tracked
            return True
        record = folder.tracking_run()
        if record is None:
            return True
        tracker = cls(folder, Settings(tracking="mlflow"), start=False)
        tracker.uri = record["tracking-uri"]
        if "***" in tracker.uri:  # its password stays out of the run folder: it is in the environment
            tracker.uri = os.environ.get("MLFLOW_TRACKING_URI", tracker.uri)
        tracker.run_id = record["run-id"]
        tracker._guarded("adding the files made after the run", tracker._add_later_files)
        return tracker.active

    def _add_later_files(self) -> None:
        self.client = _client(self.uri)
        self._tag_commit()
        self.upload_files(skip={a.path for a in self.client.list_artifacts(self.run_id)} - {rf.MANIFEST})

    @staticmethod
    def check_available(settings: Settings) -> None:
        """Before round 1: MLflow is installed, and the URI from the environment could work."""
        if settings.tracking != "mlflow":
            return
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                "tracking='mlflow' needs MLflow's client in the ServerApp's environment: pip install "
                "mlflow-skinny (or the project's extra: pip install '.[mlflow]'), or set tracking='off'."
            )
        if not settings.tracking_uri and os.environ.get("MLFLOW_TRACKING_URI"):
            check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")

    def _guarded(self, doing: str, call, *args: Any) -> None:
        if not self.active:
            return
        try:
            call(*args)
        except Exception as exc:  # whatever the tracker does, the run goes on
            self.active = False
            why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            where = f"MLflow at {shown_uri(self.uri)} failed while {doing} ({why})"
            log(WARNING, "%s: the run goes on without MLflow; its run folder %s keeps all", where, self.folder.path)

    def _start(self) -> None:
        self.client = _client(self.uri)
        config = self.folder.config()
        self.run_id = self._continued(config.get("resumed-from")) or self._new_run()
        self.folder.write_tracking_run({"run-id": self.run_id, "tracking-uri": shown_uri(self.uri)})
        self._log_params(config)
        log(INFO, "MLflow: run %s in experiment '%s' at %s", self.run_id, EXPERIMENT, shown_uri(self.uri))

    def _continued(self, resumed_from: str | None) -> str | None:
        """The MLflow run of the folder this run resumes, if it lives in the same store."""
        from mlflow.exceptions import MlflowException

        earlier = RunFolder(Path(resumed_from)).tracking_run() if resumed_from else None
        if not earlier or earlier.get("tracking-uri") != shown_uri(self.uri):
            return None
        try:
            run = self.client.get_run(earlier["run-id"])
        except MlflowException:  # deleted from the store since: start afresh
            return None
        if run.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id

    def _new_run(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(
                    EXPERIMENT, artifact_location=self._artifact_root(), tags=EXPERIMENT_TAGS
                )
            except MlflowException:  # another run created it a moment ago
                experiment_id = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            experiment_id = experiment.experiment_id
        return self.client.create_run(experiment_id, run_name=self.folder.name).info.run_id

    def _artifact_root(self) -> str | None:
        """Beside a SQLite store (MLflow's default would be the working folder Flower picks);
        a server or another database keeps its own default."""
        if not self.uri.startswith("sqlite:///"):
            return None
        return (Path(self.uri.removeprefix("sqlite:///")).parent / rf.TRACKING_ARTIFACTS).as_uri()

    def _log_params(self, config: dict[str, Any]) -> None:
        """Every knob of config.json. A continued run keeps its first values (MLflow's parameters
        never change); the knobs a resume changed are tagged ``resumed.<knob>``."""
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(self.run_id).data.params
        values = {key: param_value(value) for key, value in config.items()}
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        changed = [RunTag(f"resumed.{k}", v) for k, v in values.items() if k in logged and logged[k] != v]
        for start in range(0, len(new), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=new[start : start + MAX_PARAMS_PER_CALL])
        tags = {key: config.get(key) for key in ("strategy", "partitioning", "model")}
        tags |= {"flower-run-id": config.get("run-id"), "run-folder": self.folder.path}
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()] + changed)
        self._tag_commit()

    def _tag_commit(self) -> None:
        """The project's git commit, when the manifest knows it (the launcher adds it)."""
        manifest = self.folder.manifest() if self.folder.file(rf.MANIFEST).is_file() else {}
        commit = (manifest.get("git") or {}).get("commit")
        if commit:
            self.client.set_tag(self.run_id, "git-commit", commit)

    def resumed(self, rounds: list[dict[str, Any]]) -> None:
        """The earlier rounds of a resumed run that this MLflow run does not hold yet."""
        self._submit("copying the earlier rounds", self._backfill, [(r["round"], round_metrics(r)) for r in rounds])

    def _backfill(self, rounds: list[tuple[int, dict[str, float]]]) -> None:
        logged = self.client.get_metric_history(self.run_id, "server/loss")
        last = max((m.step for m in logged), default=-1)
        for step, metrics in rounds:
            if step > last:
                self._log_metrics(step, metrics)

    def round(self, entry: dict[str, Any]) -> None:
        self._submit(f"logging round {entry['round']}", self._log_metrics, entry["round"], round_metrics(entry))

    def _log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, status: str, error: str | None = None) -> None:
        """The run's files as artifacts and MLflow's status from the history's; then the thread
        ends. The run waits for it FINISH_WAIT_S at most."""
        if self.worker is None:
            return
        self._submit("ending the run", self._finish, status, error)
        self.calls.put(None)
        self.worker.join(FINISH_WAIT_S)
        if self.worker.is_alive():
            log(WARNING, "MLflow at %s is still busy: the run ends without waiting for it", shown_uri(self.uri))
        self.worker = None

    def _finish(self, status: str, error: str | None) -> None:
        self.upload_files()
        if error:
            self.client.set_tag(self.run_id, "error", error[:5000])
        self.client.set_terminated(self.run_id, STATUS[status])

    def upload_files(self, skip: set[str] = frozenset()) -> None:
        for name in ARTIFACTS:
            if name not in skip and self.folder.file(name).is_file():
                self.client.log_artifact(self.run_id, str(self.folder.file(name)))


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


def main(argv: list[str] | None = None) -> int:
    """``python -m server_app.tracking RUN_DIR``: a report made after the run, into its MLflow run."""
    parser = argparse.ArgumentParser(
        prog="python -m server_app.tracking",
        description="Add what a run folder gained after its run (report.md and its figures, the checkout's "
        "commit) to the MLflow run it was logged to.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder of a run with tracking='mlflow'")
    args = parser.parse_args(argv)

    def add() -> int:
        folder = RunFolder.open(args.run_dir)
        if folder.tracking_run() is None:
            raise RunFolderError(f"{folder.path} was not logged to MLflow (no {rf.TRACKING_RUN}): tracking was off.")
        return 0 if MlflowLog.after_run(folder.path) else 1

    return run_cli(add)


if __name__ == "__main__":
    sys.exit(main())
