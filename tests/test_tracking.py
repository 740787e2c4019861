"""Runs in MLflow (``tracking = "mlflow"``), read back through MLflow's own client: the
parameters and every round's metrics equal config.json and history.json; a tracker that is
down, refuses or hangs costs a run a few seconds once and is named once; a URI that cannot
work is refused before round 1, naming the knob."""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

import run_folder as rf
from server_app.tracking import REQUEST_TIMEOUT_S, MlflowLog
from server_app.tracking import main as tracking_main
from task.config import Settings
from task.errors import ConfigError
from tests.test_server_app import TWO, _run

WARNING_TEXT = "the run goes on without MLflow"


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_the_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def expected_params(config: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def expected_metrics(rounds: list[dict]) -> dict[str, dict[int, float]]:
    """history.json's numbers by metric name, then round."""
    wanted: dict[str, dict[int, float]] = {}
    for entry in rounds:
        step = entry["round"]
        for group in ("server", "clients-train", "clients-evaluate"):
            for key, value in (entry[group] or {}).items():
                if isinstance(value, dict):
                    for sub, number in value.items():
                        if isinstance(number, (int, float)):
                            wanted.setdefault(f"{key}/{sub}", {})[step] = number
                else:
                    wanted.setdefault(f"{group}/{key}", {})[step] = value
        wanted.setdefault("round/dropped-replies", {})[step] = len(entry["failures"])
        wanted.setdefault("round/wall-time-s", {})[step] = entry["wall-time-s"]
        wanted.setdefault("round/elapsed-s", {})[step] = entry["elapsed-s"]
    return wanted


def logged_metrics(client: MlflowClient, run_id: str) -> dict[str, dict[int, float]]:
    names = client.get_run(run_id).data.metrics
    found: dict[str, dict[int, float]] = {}
    for name in names:
        history = client.get_metric_history(run_id, name)
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)), f"{name} logged twice for a round: {steps}"
        found[name] = {m.step: m.value for m in history}
    return found


def assert_mlflow_run_equals_folder(client: MlflowClient, folder: rf.RunFolder) -> str:
    run_id = folder.tracking_run()["run-id"]
    run = client.get_run(run_id)
    config, rounds = folder.config(), folder.history()["rounds"]
    assert run.data.params == expected_params(config)
    assert logged_metrics(client, run_id) == expected_metrics(rounds)  # float64 both ways: exactly
    tags = run.data.tags
    assert tags["strategy"] == config["strategy"] and tags["partitioning"] == config["partitioning"]
    assert tags["flower-run-id"] == str(config["run-id"]) and tags["mlflow.runName"] == folder.name
    assert run.info.status == "FINISHED"
    return run_id


def test_two_rounds_in_the_local_store_equal_config_and_history(tmp_path, caplog):
    dp = {"dp-noise-multiplier": 0.1, "dp-clipping-norm": 10.0}  # so that the privacy spent is logged too
    _run(tmp_path, TWO, **{"run-name": "tracked", "tracking": "mlflow", **dp})
    folder = rf.RunFolder(tmp_path / "tracked")
    assert folder.tracking_run()["tracking-uri"] == f"sqlite:///{tmp_path / rf.TRACKING_STORE}"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / rf.TRACKING_STORE}")
    run_id = assert_mlflow_run_equals_folder(client, folder)
    wanted = expected_metrics(folder.history()["rounds"])
    assert sorted(wanted["server/accuracy"]) == [0, 1, 2] and sorted(wanted["privacy/epsilon"]) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {rf.CONFIG, rf.HISTORY, rf.MANIFEST, rf.MODEL} <= artifacts
    local = client.download_artifacts(run_id, rf.MODEL, str(tmp_path))
    assert open(local, "rb").read() == folder.file(rf.MODEL).read_bytes()
    assert str(tmp_path / rf.TRACKING_ARTIFACTS) in client.get_run(run_id).info.artifact_uri
    assert WARNING_TEXT not in caplog.text

    # What the launcher adds after the run (the checkout's commit, the report) reaches the same MLflow run.
    folder.update_manifest(git={"commit": "0123abc", "clean": True})
    folder.write_files({rf.REPORT: b"# Report", rf.REPORT_CURVES: b"\x89PNG..."})
    assert tracking_main([str(folder.path)]) == 0  # python -m server_app.tracking RUN_DIR, as the launcher does
    assert client.get_run(run_id).data.tags["git-commit"] == "0123abc"
    assert {rf.REPORT, rf.REPORT_CURVES} <= {a.path for a in client.list_artifacts(run_id)}
    manifest = json.loads(open(client.download_artifacts(run_id, rf.MANIFEST, str(tmp_path / "back"))).read())
    assert manifest["git"]["commit"] == "0123abc"


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    import server_app.app as server_module

    real = server_module.RoundRunner.train

    def stop_in_round_2(self, grid, server_round, arrays):
        if server_round == 2:
            raise KeyboardInterrupt
        return real(self, grid, server_round, arrays)

    monkeypatch.setattr(server_module.RoundRunner, "train", stop_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, TWO, **{"run-name": "cut", "tracking": "mlflow"})
    monkeypatch.setattr(server_module.RoundRunner, "train", real)
    cut = rf.RunFolder(tmp_path / "cut")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / rf.TRACKING_STORE}")
    assert client.get_run(cut.tracking_run()["run-id"]).info.status == "KILLED"

    _run(tmp_path, TWO, **{"run-name": "resumed", "tracking": "mlflow", "resume-from": str(cut.path)})
    resumed = rf.RunFolder(tmp_path / "resumed")
    run_id = resumed.tracking_run()["run-id"]
    assert run_id == cut.tracking_run()["run-id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["run-name"] == "cut"  # parameters never change
    assert run.data.tags["resumed.run-name"] == "resumed"
    assert run.data.params["resumed-from"] == str(cut.path)  # a knob the first run did not have
    # every round once, as the resumed folder's history has them (rounds 0 and 1 from the first folder)
    assert logged_metrics(client, run_id) == expected_metrics(resumed.history()["rounds"])
    assert len(client.search_runs([run.info.experiment_id])) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Refusing(http.server.BaseHTTPRequestHandler):
    """A tracker that answers every request with an error (and asks to be retried much later)."""

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Retry-After", "3600")
        self.end_headers()

    def do_POST(self) -> None:
        self.do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_tracker():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def silent_tracker():
    """Accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize("kind", ["closed port", "refusing", "silent"])
def test_a_tracker_down_costs_seconds_once_and_is_named_once(kind, tmp_path, caplog, request):
    uri = {
        "closed port": lambda: f"http://127.0.0.1:{free_port()}",
        "refusing": lambda: request.getfixturevalue("refusing_tracker"),
        "silent": lambda: request.getfixturevalue("silent_tracker"),
    }[kind]()
    folder = rf.RunFolder.create(tmp_path, "down", "mlp")
    folder.write_config(Settings().to_run_config())
    settings = Settings(tracking="mlflow", tracking_uri=uri)
    entry = {"round": 1, "server": {"loss": 0.5}, "failures": [], "wall-time-s": 1.0, "elapsed-s": 1.0}
    started = time.monotonic()
    tracker = MlflowLog(folder, settings)
    for server_round in range(1, 11):
        tracker.round({**entry, "round": server_round})
    rounds_s = time.monotonic() - started
    tracker.finish(rf.COMPLETED)
    spent = time.monotonic() - started
    assert rounds_s < 1, f"the rounds waited {rounds_s:.1f} s for a {kind} tracker"
    assert spent < REQUEST_TIMEOUT_S + 3, f"a {kind} tracker cost the run {spent:.1f} s in all"
    assert caplog.text.count(WARNING_TEXT) == 1 and uri in caplog.text
    assert folder.tracking_run() is None


def test_a_run_with_its_tracker_down_completes_and_names_it_once(tmp_path, caplog):
    uri = f"http://127.0.0.1:{free_port()}"
    _run(tmp_path, TWO, **{"run-name": "down", "tracking": "mlflow", "tracking-uri": uri})
    run = rf.read_completed_run(tmp_path / "down")
    assert [r["round"] for r in run.rounds] == [0, 1, 2]
    log_text = run.folder.file(rf.SERVER_LOG).read_text()
    assert log_text.count(WARNING_TEXT) == 1 and f"MLflow at {uri} failed while starting the run" in log_text


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("http://[::1", "cannot be parsed as a URI"),
        ("http://127.0.0.1:port", "cannot be parsed as a URI"),
        ("ftp://tracker:5000", "unknown scheme 'ftp'"),
        ("localhost:5000", "unknown scheme 'localhost'"),
        ("/home/me/mlruns", "MLflow's old file store"),
        ("http:///no-host", "names no host"),
        ("sqlite:///mlflow.db", "is a relative path"),
        ("http://me:secret@tracker:5000", "holds a password"),
    ],
)
def test_a_tracking_uri_that_cannot_work_is_refused_naming_the_knob(uri, why):
    with pytest.raises(ConfigError, match=f"tracking-uri.*{why}") as refused:
        Settings.from_run_config({"tracking": "mlflow", "tracking-uri": uri})
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:5000", "https://mlflow.example.org", "sqlite:////srv/mlflow.db", "postgresql+psycopg2://db/x"],
)
def test_tracking_uris_mlflow_takes_are_accepted(uri):
    assert Settings.from_run_config({"tracking": "mlflow", "tracking-uri": uri}).tracking_uri == uri


def test_a_bad_uri_stops_the_run_before_round_1(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="tracking-uri='ftp://x' has an unknown scheme"):
        _run(tmp_path, TWO, **{"run-name": "bad", "tracking": "mlflow", "tracking-uri": "ftp://x"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI='mlruns' is a folder"):
        _run(tmp_path, TWO, **{"run-name": "bad", "tracking": "mlflow"})
    assert not (tmp_path / "bad").exists()


def test_tracking_asked_for_without_mlflow_is_refused_before_round_1(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tracking='mlflow' needs MLflow's client.*\[mlflow\]"):
        _run(tmp_path, TWO, **{"run-name": "none", "tracking": "mlflow"})
    assert not (tmp_path / "none").exists()


def test_tracking_off_touches_no_store(tmp_path, capsys):
    folder = rf.RunFolder.create(tmp_path, "plain", "mlp")
    folder.write_config(Settings().to_run_config())
    tracker = MlflowLog(folder, Settings())
    tracker.round({"round": 0, "server": {"loss": 1.0}, "failures": [], "wall-time-s": 0.0, "elapsed-s": 0.0})
    tracker.finish(rf.COMPLETED)
    assert folder.tracking_run() is None and not (tmp_path / rf.TRACKING_STORE).exists()
    assert MlflowLog.after_run(folder.path)  # the launcher's call: nothing to do
    assert tracking_main([str(folder.path)]) == 2
    assert "was not logged to MLflow (no mlflow-run.json): tracking was off" in capsys.readouterr().err


def test_metric_values_are_finite_numbers_with_the_round_as_step():
    from server_app.tracking_records import round_metrics

    entry = {
        "round": 3,
        "server": {"accuracy": 0.9, "loss": 0.3},
        "clients-train": {"loss": 0.2, "nodes": 2, "privacy": {"epsilon": 1.5, "delta": 1e-5}},
        "clients-evaluate": None,
        "failures": [{"why": "timeout"}],
        "wall-time-s": 2.0,
        "elapsed-s": 6.0,
    }
    metrics = round_metrics(entry)
    assert metrics["privacy/epsilon"] == 1.5 and metrics["round/dropped-replies"] == 1
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


@contextlib.contextmanager
def mlflow_server_process(argv: list[str], url: str, log_path: Path) -> Iterator[str]:
    """``mlflow server ...`` (``argv``) as a local process until it answers ``url``/health; yields ``url``."""
    log = open(log_path, "w")
    executable = [str(Path(sys.executable).parent / argv[0]), *argv[1:]]  # the venv's mlflow
    server = subprocess.Popen(executable, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:  # (a session of its own: its workers too are stopped with it)
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer within 240 s"
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:  # uvicorn's graceful stop can take much longer
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port, with its own store."""
    port = free_port()
    argv = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    argv += ["--artifacts-destination", str(tmp_path / "server-artifacts")]
    with mlflow_server_process(argv, f"http://127.0.0.1:{port}", tmp_path / "mlflow-server.log") as url:
        yield url


@pytest.mark.slow
def test_a_simulated_run_sends_its_metrics_to_a_real_mlflow_server(tmp_path, mlflow_server):
    from launcher.simulate import run_simulation

    knobs = {"num-server-rounds": 2, "fraction-train": 0.5, "local-epochs": 1, "run-name": "e2e"}
    run_dir = run_simulation(
        {**knobs, "tracking": "mlflow", "tracking-uri": mlflow_server},
        num_supernodes=4,
        output_dir=tmp_path / "runs",
        echo=False,
    )
    folder = rf.RunFolder(run_dir)
    client = MlflowClient(tracking_uri=mlflow_server)  # over HTTP, as the ServerApp logged it
    run_id = assert_mlflow_run_equals_folder(client, folder)
    assert sorted(expected_metrics(folder.history()["rounds"])["server/accuracy"]) == [0, 1, 2]
    local = client.download_artifacts(run_id, rf.MODEL, str(tmp_path / "back"))
    assert open(local, "rb").read() == folder.file(rf.MODEL).read_bytes()
    assert not (tmp_path / "runs" / rf.TRACKING_STORE).exists()  # all of it went to the server
    assert WARNING_TEXT not in folder.file(rf.SERVER_LOG).read_text()
