"""The MLflow tracking service in real containers (docker-compose.yml, `--profile tracking`):
the default `up` starts no tracker; with the profile, a 2-round run submitted with
tracking='mlflow' and nothing else arrives at the tracking server, read back through the UI's
published loopback port with MLflow's client and compared with the run folder; the server runs
unprivileged, answers no foreign Host header and no address but the host's loopback, and keeps
the run in its volume across a restart of its container. Nothing of its own is left behind.

Built offline like tests/test_containers.py (whose fixtures it uses); the times of its phases
are written to build/container-tracking.json.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from mlflow import MlflowClient

import run_folder as rf
from deploy import connection, harness
from launcher import FlowerError
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.runtime import free_port
from tests.figures import phase_line, report_figures
from tests.test_containers import BASE, RUN_CONFIG, _nobody_is_root, _outputs, _up, engine, image  # noqa: F401
from tests.test_tracking import WARNING_TEXT, assert_mlflow_run_equals_folder

pytestmark = pytest.mark.slow

TIMINGS = harness.ROOT / "build" / "container-tracking.json"
TRACKING = ["--profile", "tracking"]


@pytest.fixture(scope="module")
def timings(request) -> dict[str, float]:
    found: dict[str, float] = {}
    yield found
    if found:
        report_figures(request, TIMINGS, found, [phase_line("container tracking test", found)])


def _answer(url: str, host: str | None = None) -> int | str:
    """The HTTP status ``url`` answers (with ``host`` as the Host header), or why nothing did."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__


def _host_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (its LAN side, Docker's bridges)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if line.split()[1] != "lo"]


def test_the_tracking_profile_receives_a_deployed_run(engine, image, timings, tmp_path):  # noqa: F811
    docker, cli = engine
    outputs, _ = _outputs(tmp_path)
    port, ui_port = free_port(), free_port()
    compose = harness.Compose(
        cli,
        docker,
        project=f"fedmnist-tracking-{uuid.uuid4().hex[:8]}",
        env={
            "FEDMNIST_OUTPUTS": str(outputs),
            "FEDMNIST_PORT": str(port),
            "FEDMNIST_TRACKING_PORT": str(ui_port),
            "FEDMNIST_IMAGE": image,
        },
    )
    ui = f"http://127.0.0.1:{ui_port}"
    try:
        t0 = time.monotonic()
        _up(compose, BASE)
        assert compose.container("mlflow") is None  # the default `up` starts no tracker
        compose(BASE, *TRACKING, "up", "-d", "mlflow")
        compose.wait_healthy(["mlflow"], timeout=180)
        timings["up"] = time.monotonic() - t0
        _nobody_is_root(compose, ["mlflow"])
        assert compose.inspect("mlflow")["Config"]["User"] == "10002:10002"

        with flower_home() as home:
            connection.write_connection("docker", f"127.0.0.1:{port}", home=home.path)
            t0 = time.monotonic()
            knobs = {**RUN_CONFIG, "run-name": "tracked", "tracking": "mlflow"}
            try:  # tracking on, no tracking-uri: the superlink container's MLFLOW_TRACKING_URI
                flwr_run(home, "docker", knobs, echo=False, timeout=1800)
            except FlowerError as exc:
                raise AssertionError(f"{exc}\n{compose.logs('superlink')}\n{compose.logs('mlflow')}") from None
            timings["run"] = time.monotonic() - t0
        folder = rf.RunFolder(outputs / "tracked")
        assert folder.tracking_run()["tracking-uri"] == "http://mlflow:5000"
        assert WARNING_TEXT not in folder.file(rf.SERVER_LOG).read_text()
        client = MlflowClient(tracking_uri=ui)  # the UI's published port, as a person on the host
        run_id = assert_mlflow_run_equals_folder(client, folder)
        model = client.download_artifacts(run_id, rf.MODEL, str(tmp_path / "back"))
        assert open(model, "rb").read() == folder.file(rf.MODEL).read_bytes()

        # From elsewhere: a page whose name resolves to 127.0.0.1 (DNS rebinding) is refused, and
        # no other address of this machine answers on the UI's port.
        assert _answer(f"{ui}/api/2.0/mlflow/experiments/search?max_results=1", "attacker.example.org") == 403
        assert _answer(f"{ui}/api/2.0/mlflow/experiments/search?max_results=1") == 200
        for address in _host_addresses():
            assert not isinstance(_answer(f"http://{address}:{ui_port}/health"), int), address

        # The store is the volume's: a new container finds the run.
        t0 = time.monotonic()
        compose(BASE, *TRACKING, "rm", "-sf", "mlflow")
        compose(BASE, *TRACKING, "up", "-d", "mlflow")
        compose.wait_healthy(["mlflow"], timeout=180)
        timings["tracker restart"] = time.monotonic() - t0
        assert MlflowClient(tracking_uri=ui).get_run(run_id).info.status == "FINISHED"

        t0 = time.monotonic()
        compose(BASE, *TRACKING, "down", "-v")
        timings["down"] = time.monotonic() - t0
        assert compose.leftovers() == {}
    finally:
        compose(BASE, *TRACKING, "down", "-v", "--remove-orphans", check=False)
    assert compose.leftovers() == {}
