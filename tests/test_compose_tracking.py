"""The MLflow tracking service of docker-compose.yml and deploy/superlink-host: opt-in (the
`tracking` profile), on the internal network, its UI on the host's loopback only, its store in a
named volume, an unprivileged server; the ServerApp's container logs to it by default; the images
carry what each needs (the app the client, the tracking image the server, the same version).

No Docker engine is needed: the slow test runs the service's own command line as a local
`mlflow server` and a deployed run (a real SuperLink and SuperNodes on loopback) whose ServerApp
has the compose file's MLFLOW_TRACKING_URI, then reads the MLflow run back and compares it with
the run folder. tests/test_container_tracking.py does the same in real containers.
"""

from __future__ import annotations

import re
import shlex

import pytest
from mlflow import MlflowClient
from mlflow.cli import server as mlflow_server_cli
from mlflow.server.security_utils import is_allowed_host_header

import run_folder as rf
from deploy import harness, requirements
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.runtime import free_port, start_superlink, start_supernode
from task.config import check_tracking_uri
from tests.test_tracking import WARNING_TEXT, assert_mlflow_run_equals_folder, mlflow_server_process

ROOT = harness.ROOT
FILES = {"one machine": harness.COMPOSE_FILE, "superlink host": harness.SUPERLINK_HOST_FILE}
# The container that runs the ServerApps in each file (the SuperLink itself, or its SuperExec).
SERVERAPP_SERVICE = {"one machine": "superlink", "superlink host": "superexec"}
TRACKER = "mlflow"
DEFAULT_URI = "${FEDMNIST_TRACKING_URI:-http://mlflow:5000}"
DOCKERFILE = ROOT / "deploy" / "tracking" / "Dockerfile"


def server_options(service: dict) -> dict:
    """The service's `mlflow server` options, as MLflow's own command line parser reads them."""
    argv = shlex.split(service["command"])
    assert argv[:2] == ["mlflow", "server"]
    return mlflow_server_cli.make_context("server", argv[2:]).params


def compose_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default``."""
    return re.fullmatch(r"\$\{\w+:-([^}]*)\}", value).group(1)


@pytest.fixture(params=list(FILES), ids=list(FILES))
def compose(request) -> tuple[str, dict]:
    return request.param, harness.load(FILES[request.param])


def test_the_tracking_service_is_opt_in_and_nothing_waits_for_it(compose):
    _, spec = compose
    services = spec["services"]
    assert services[TRACKER]["profiles"] == ["tracking"]  # `up` without --profile tracking leaves it out
    assert [n for n, s in services.items() if "profiles" in s] == [TRACKER]
    for name, service in services.items():
        assert TRACKER not in (service.get("depends_on") or {}), f"{name} would pull the tracker into every `up`"


def test_the_ui_is_published_on_the_hosts_loopback_only(compose):
    where, spec = compose
    tracker = spec["services"][TRACKER]
    assert tracker["ports"] == ["127.0.0.1:${FEDMNIST_TRACKING_PORT:-5000}:5000"]
    assert server_options(tracker)["port"] == 5000
    if where == "superlink host":
        # The ServerApps reach it on the internal network; its port is published through a
        # network of its own (Docker publishes none of an internal one) that nothing else joins.
        assert spec["networks"]["inside"] == {"internal": True} and "inside" in tracker["networks"]
        assert "inside" in spec["services"]["superexec"]["networks"]
        (own,) = set(tracker["networks"]) - {"inside"}
        assert [n for n, s in spec["services"].items() if own in s.get("networks", [])] == [TRACKER]


def test_the_store_is_a_named_volume_and_the_server_runs_unprivileged(compose):
    _, spec = compose
    tracker = spec["services"][TRACKER]
    assert tracker["volumes"] == ["tracking-store:/mlflow"] and "tracking-store" in spec["volumes"]
    options = server_options(tracker)
    assert options["backend_store_uri"] == "sqlite:////mlflow/mlflow.db"
    assert options["artifacts_destination"] == "/mlflow/artifacts" and options["serve_artifacts"]
    # the image's own user, who owns /mlflow, so that a fresh volume (a copy of it) is theirs
    dockerfile = DOCKERFILE.read_text()
    uid = re.search(r"useradd --uid (\d+) --user-group --home-dir /mlflow", dockerfile).group(1)
    assert tracker["user"] == f"{uid}:{uid}" and uid != "0"
    assert "chown -R mlflow:mlflow /mlflow" in dockerfile and re.search(r"^USER mlflow$", dockerfile, re.M)
    assert tracker["cap_drop"] == ["ALL"] and "no-new-privileges:true" in tracker["security_opt"]
    assert "cap_add" not in tracker and tracker["read_only"] is True
    assert tracker["init"] is True and tracker["restart"] == "on-failure"
    assert "/health" in " ".join(tracker["healthcheck"]["test"])


def test_the_serverapp_logs_to_the_service_it_can_reach(compose):
    where, spec = compose
    env = spec["services"][SERVERAPP_SERVICE[where]]["environment"]
    assert env["MLFLOW_TRACKING_URI"] == DEFAULT_URI
    default = compose_default(env["MLFLOW_TRACKING_URI"])
    check_tracking_uri(default, "MLFLOW_TRACKING_URI")  # what the ServerApp checks before round 1
    host = default.removeprefix("http://")
    assert host == f"{TRACKER}:{server_options(spec['services'][TRACKER])['port']}"
    # MLflow answers that name and the published loopback port, and no other name (DNS rebinding)
    allowed = server_options(spec["services"][TRACKER])["allowed_hosts"].split(",")
    assert is_allowed_host_header(allowed, host) and is_allowed_host_header(allowed, "127.0.0.1:5000")
    assert is_allowed_host_header(allowed, "localhost:5000")  # an SSH tunnel's
    assert not is_allowed_host_header(allowed, "attacker.example.org:5000")


def test_the_app_image_carries_the_client_and_the_tracking_image_the_server_of_the_same_version():
    app = dict(requirements.pins((ROOT / "deploy" / "requirements.txt").read_text()))
    tracking = dict(requirements.pins((ROOT / "deploy" / "tracking" / "requirements.txt").read_text()))
    assert "mlflow-skinny" in app and "mlflow" not in app  # no server, UI, pandas or pyarrow next to Flower
    assert tracking["mlflow"] == tracking["mlflow-skinny"] == app["mlflow-skinny"]
    assert "torch" not in tracking and "flwr" not in tracking
    assert {n: v for n, v in tracking.items() if n in app} == {n: app[n] for n in tracking if n in app}
    assert "requirements.txt" in DOCKERFILE.read_text()


# --- the service's command line and a deployed run, for real on loopback ---------------------------


@pytest.mark.slow
def test_a_deployed_runs_metrics_arrive_at_the_tracking_service(tmp_path):
    """SuperLink + 2 SuperNodes on loopback, the ServerApp's environment as in docker-compose.yml,
    and the compose file's `mlflow server` command (store and address mapped to local ones). A
    run before the tracker is up (`up` without the profile) completes and names it once."""
    spec = harness.load(harness.COMPOSE_FILE)
    port = free_port()
    argv = harness.replace_flags(
        shlex.split(spec["services"][TRACKER]["command"]),
        {
            "--host": "127.0.0.1",
            "--port": str(port),
            "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination": str(tmp_path / "artifacts"),
        },
    )
    uri = f"http://127.0.0.1:{port}"
    in_compose = compose_default(spec["services"]["superlink"]["environment"]["MLFLOW_TRACKING_URI"])
    superlink_env = {"MLFLOW_TRACKING_URI": in_compose.replace("mlflow:5000", f"127.0.0.1:{port}")}
    runs = tmp_path / "runs"
    knobs = {"local-epochs": 1, "batch-size": 100, "fraction-train": 1.0, "fraction-evaluate": 1.0}
    knobs |= {"output-dir": str(runs), "tracking": "mlflow"}
    with flower_home() as home:
        address = start_superlink(home, simulation=False, env=superlink_env)
        home.add_connection("loopback", address)
        for i in range(2):
            start_supernode(home, address, partition_id=i, num_partitions=2)
        flwr_run(home, "loopback", {**knobs, "num-server-rounds": 1, "run-name": "down"}, echo=False, timeout=900)
        down = rf.read_completed_run(runs / "down")
        log = down.folder.file(rf.SERVER_LOG).read_text()
        assert log.count(WARNING_TEXT) == 1 and f"MLflow at {uri} failed while starting the run" in log

        with mlflow_server_process(argv, uri, tmp_path / "mlflow-server.log"):
            flwr_run(home, "loopback", {**knobs, "num-server-rounds": 2, "run-name": "up"}, echo=False, timeout=900)
            folder = rf.RunFolder(runs / "up")
            assert folder.tracking_run()["tracking-uri"] == uri  # from the environment, as in the container
            client = MlflowClient(tracking_uri=uri)
            run_id = assert_mlflow_run_equals_folder(client, folder)  # every parameter and round's metric
            history = folder.history()["rounds"]
            assert [r["round"] for r in history] == [0, 1, 2] and history[2]["clients-train"]["nodes"] == 2
            back = client.download_artifacts(run_id, rf.MODEL, str(tmp_path / "back"))
            assert open(back, "rb").read() == folder.file(rf.MODEL).read_bytes()
            experiment = client.get_run(run_id).info.experiment_id
            assert [r.info.run_name for r in client.search_runs([experiment])] == ["up"]  # "down" never got there
    assert not (runs / rf.TRACKING_STORE).exists()  # nothing fell back to a local store
    assert WARNING_TEXT not in folder.file(rf.SERVER_LOG).read_text()
