"""The deployment in real containers: the image built offline (local base image + wheelhouse),
docker-compose.yml as users run it, a 2-round run submitted from this machine with `flwr run`,
its run folder on the host; then the same with TLS and SuperNode authentication, where a
SuperNode with an unregistered key and an insecure CLI connection are refused; then
`down -v`, leaving no container, network or volume of its own.

Runs wherever a Docker engine answers (skipped, with how to get one, where none does; CI
prepares one with deploy/prepare.sh and sets FEDMNIST_REQUIRE_DOCKER=1, which turns the skip
into a failure). Its own compose project name, port, outputs and certificate folders keep
it apart from anything a user runs. The time of each phase is printed and written to
build/container-test.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from deploy import connection, harness, register
from launcher.flower import FlowerError, flower_home, free_port, flwr_run

pytestmark = pytest.mark.slow

ROOT = harness.ROOT
BASE = [harness.COMPOSE_FILE]
WITH_TLS = [harness.COMPOSE_FILE, harness.TLS_FILE]
NODES = ["supernode-0", "supernode-1", "supernode-2"]
HOWTO = (
    "no Docker engine answers: `sudo deploy/engine.sh` installs and starts one on Debian/Ubuntu "
    "(or start Docker Desktop/dockerd), then run this test again"
)
# Two short rounds: every node trains and evaluates in each; nothing passed about outputs, so
# the run folder goes where the compose file sends it by default.
RUN_CONFIG = {
    "num-server-rounds": 2,
    "local-epochs": 1,
    "batch-size": 100,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "min-available-nodes": 3,
}
TIMINGS = ROOT / "build" / "container-test.json"


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDMNIST_REQUIRE_DOCKER") == "1":
        pytest.fail(reason + " (FEDMNIST_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine() -> tuple[str, list[str]]:
    docker = harness.docker_cli()
    if docker is None:
        _unavailable(HOWTO)
    compose = harness.compose_cli(docker)
    if compose is None:
        _unavailable("no docker compose: install the compose plugin, or docker-compose (`sudo deploy/engine.sh`)")
    return docker, compose


@pytest.fixture(scope="module")
def timings(request) -> dict[str, float]:
    found: dict[str, float] = {}
    yield found
    if not found:
        return
    line = "container test: " + ", ".join(f"{k} {v:.0f} s" for k, v in found.items())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown with or without -s
            reporter.write_line(line)
    TIMINGS.parent.mkdir(exist_ok=True)
    TIMINGS.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M:%S"), **found}, indent=2) + "\n")


@pytest.fixture(scope="module")
def image(engine, timings) -> str:
    """The image docker-compose.yml runs, built with no network from a local base image and
    the wheelhouse (deploy/prepare.sh: each step is skipped when its result is there)."""
    docker, _ = engine
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "deploy" / "prepare.sh"), "--no-engine"],
        cwd=ROOT,
        env={**os.environ, "DOCKER": docker},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timings["build"] = time.monotonic() - t0
    return "fedavg-mnist:0.1.0"


def _outputs(tmp_path: Path) -> tuple[Path, int]:
    """A fresh outputs folder and the uid that should own what lands in it: ours, or, when
    this runs as root, a stand-in user's, to see the files follow the folder's owner."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    owner = os.getuid()
    if owner == 0:
        owner = 4321
        os.chown(outputs, owner, owner)
    return outputs, owner


def _check_run(outputs: Path, name: str, owner: int) -> dict:
    run = outputs / name
    history = json.loads((run / "history.json").read_text())
    assert history["status"] == "completed", history
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert all(r["clients-train"]["nodes"] == 3 == r["clients-evaluate"]["nodes"] for r in history["rounds"][1:])
    assert history["rounds"][2]["server"]["accuracy"] > 0.8
    assert (run / "model.pt").stat().st_size > 700_000
    for path in [run, *run.iterdir()]:
        assert path.stat().st_uid == owner, f"{path} belongs to uid {path.stat().st_uid}, not {owner}"
    return history


def _nobody_is_root(compose: harness.Compose, services: list[str]) -> None:
    """Every process but the init (which only passes signals on) runs unprivileged; so do the
    health checks, after their first instant (they start as the container's user)."""
    for service in services:
        cid = compose.container(service)
        top = subprocess.run([compose.docker, "top", cid, "-eo", "pid,uid,args"], capture_output=True, text=True)
        rows = [line.split(None, 2) for line in top.stdout.splitlines()[1:]]
        assert rows, top.stderr
        root = [args for _, uid, args in rows
                if uid == "0" and not args.startswith("/sbin/docker-init") and "--health" not in args]
        assert not root, f"{service} runs {root} as root"


def _up(compose: harness.Compose, files: list[Path], *services: str) -> None:
    compose(files, "up", "-d", *services)
    compose.wait_healthy(list(services) or ["superlink", *NODES], timeout=180)


def test_compose_up_runs_with_and_without_tls_and_leaves_nothing_behind(engine, image, timings, tmp_path):
    docker, cli = engine
    outputs, owner = _outputs(tmp_path)
    certs = tmp_path / "certs"
    port = free_port()
    compose = harness.Compose(
        cli,
        docker,
        project=f"fedmnist-test-{uuid.uuid4().hex[:8]}",
        env={"FEDMNIST_OUTPUTS": str(outputs), "FEDMNIST_PORT": str(port), "FEDMNIST_CERTS": str(certs),
             "FEDMNIST_IMAGE": image},
    )
    address = f"127.0.0.1:{port}"
    try:
        with flower_home() as home:
            # --- as users run it: docker compose up, flwr run, outputs on the host ---------------
            t0 = time.monotonic()
            _up(compose, BASE)
            timings["up"] = time.monotonic() - t0
            _nobody_is_root(compose, ["superlink", *NODES])
            connection.write_connection("docker", address, home=home.path)
            t0 = time.monotonic()
            try:
                flwr_run(home, "docker", {**RUN_CONFIG, "run-name": "plain"}, echo=False, timeout=1800)
            except FlowerError as exc:
                raise AssertionError(f"{exc}\n{compose.logs('superlink')}") from None
            timings["run"] = time.monotonic() - t0
            _check_run(outputs, "plain", owner)

            # A SuperNode told a partition that does not exist never starts; the line says why.
            bad = compose.run(BASE, "run", "--rm", "--no-deps", "-T", "supernode-0", "flower-supernode",
                              "--insecure", "--superlink", "superlink:8000",
                              "--node-config", "partition-id=3 num-partitions=3")
            assert bad.returncode == 2, bad.stdout + bad.stderr
            assert "partition-id=3 is out of range for num-partitions=3" in bad.stdout + bad.stderr

            t0 = time.monotonic()
            compose(BASE, "down", "-v")
            timings["down"] = time.monotonic() - t0
            assert compose.leftovers() == {}

            # --- TLS and SuperNode authentication ---------------------------------------------
            made = subprocess.run([str(ROOT / "deploy" / "tls.sh"), "--dir", str(certs)], capture_output=True,
                                  text=True)
            assert made.returncode == 0, made.stderr
            t0 = time.monotonic()
            _up(compose, WITH_TLS, "superlink")
            connection.write_connection("docker-tls", address, root_certificates=certs / "ca.crt", home=home.path)
            connection.write_connection("docker-plain", address, home=home.path)

            # An insecure connection is refused, and the probe says why in one line.
            refused = subprocess.run(["flwr", "list", "docker-plain"], env=home.env, capture_output=True, text=True)
            assert refused.returncode != 0
            ok, message = connection.probe("docker-plain", address, None)
            assert not ok and "speaks TLS" in message, message

            for key in register.default_keys(certs):
                ok, message = register.register("docker-tls", key, env=home.env)
                assert ok, message

            # A SuperNode whose key was not registered is turned away before it gets anything.
            subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f",
                            str(tmp_path / "stranger.key")], check=True)
            stranger = compose.run(
                WITH_TLS, "run", "--rm", "--no-deps", "-T", "-v", f"{tmp_path / 'stranger.key'}:/certs/stranger.key:ro",
                "supernode-0", "flower-supernode", "--superlink", "superlink:8000",
                "--root-certificates", "/certs/ca.crt", "--auth-supernode-private-key", "/certs/stranger.key",
                "--host", "127.0.0.1", "--port", "9094", "--node-config", "partition-id=0 num-partitions=3",
            )
            assert stranger.returncode != 0, stranger.stdout + stranger.stderr
            assert "Failed to activate SuperNode" in stranger.stdout + stranger.stderr
            assert "No SuperNode found with the given public key" in compose.logs("superlink", 400)

            # A certificate that is not there: one line naming the file, before Flower starts.
            missing = compose.run(WITH_TLS, "run", "--rm", "--no-deps", "-T", "supernode-0", "flower-supernode",
                                  "--superlink", "superlink:8000", "--root-certificates", "/certs/nowhere.crt",
                                  "--node-config", "partition-id=0 num-partitions=3")
            assert missing.returncode == 2
            assert "--root-certificates /certs/nowhere.crt: CA certificate not found" in missing.stdout + missing.stderr

            _up(compose, WITH_TLS)
            timings["up-tls"] = time.monotonic() - t0
            t0 = time.monotonic()
            flwr_run(home, "docker-tls", {**RUN_CONFIG, "run-name": "tls"}, echo=False, timeout=1800)
            timings["run-tls"] = time.monotonic() - t0
            _check_run(outputs, "tls", owner)
            listed = subprocess.run(["flwr", "supernode", "ls", "docker-tls", "--format", "json"], env=home.env,
                                    capture_output=True, text=True)
            registered = json.loads(listed.stdout)["nodes"]
            assert len(registered) == 3  # the stranger is not among them
    finally:
        for files in (WITH_TLS, BASE):
            compose(files, "down", "-v", "--remove-orphans", check=False)
    assert compose.leftovers() == {}
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
