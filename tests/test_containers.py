"""The deployment in real containers, built offline (local base image + wheelhouse):

1. docker-compose.yml as users run it on one machine: a 2-round run submitted with `flwr run`,
   its run folder on the host, then `down -v`.
2. Two hosts as two compose projects on separate Docker networks: the SuperLink host
   (deploy/superlink-host: proxy, SuperLink, SuperExec) and a node host (deploy/node-host: three
   SuperNodes and their ClientApp containers) that reaches it only through the proxy's published
   port. A stranger on the node host's network (deploy/stranger.py), a SuperNode with an
   unregistered key, an insecure CLI connection and a missing certificate are each refused; a
   2-round run submitted on the operators' listener finishes; an uploaded app that looks for keys
   and state finds none. Its nodes run their ClientApp processes warm (launcher/warm.py): each
   node's messages ran as children of its own fork server, whose socket no other container can
   reach; each round's time is printed. What each refusal said is written to
   build/container-test-refusals.json.

Both leave no container, network or volume of their own.

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
from launcher import FlowerError
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.runtime import free_port
from tests.figures import phase_line, report_figures
from tests.warm_checks import check_warm_and_private

pytestmark = pytest.mark.slow

ROOT = harness.ROOT
BASE = [harness.COMPOSE_FILE]
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
    if found:
        report_figures(request, TIMINGS, found, [phase_line("container test", found)])


def build_images(docker: str) -> str:
    """The images the compose files run, built with no network from a local base image and
    the wheelhouse (deploy/prepare.sh: each step is skipped when its result is there)."""
    proc = subprocess.run(
        [str(ROOT / "deploy" / "prepare.sh"), "--no-engine"],
        cwd=ROOT,
        env={**os.environ, "DOCKER": docker},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return "fedavg-mnist:0.1.0"


@pytest.fixture(scope="module")
def image(engine, timings) -> str:
    t0 = time.monotonic()
    built = build_images(engine[0])
    timings["build"] = time.monotonic() - t0
    return built


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


def _nobody_is_root(compose: harness.Compose, services: list[str], patience: float = 30) -> None:
    """Every process but the init (which only passes signals on) runs unprivileged; so do the
    health checks, after their first instant (they start as the container's user). A container
    that has just started may still be in its entrypoint, which drops root before Flower starts:
    it gets ``patience`` seconds to do so."""
    for service in services:
        cid = compose.container(service)
        deadline = time.monotonic() + patience
        while True:
            top = subprocess.run([compose.docker, "top", cid, "-eo", "pid,uid,args"], capture_output=True, text=True)
            rows = [line.split(None, 2) for line in top.stdout.splitlines()[1:]]
            assert rows, top.stderr
            root = [
                args
                for _, uid, args in rows
                if uid == "0" and not args.startswith("/sbin/docker-init") and "--health" not in args
            ]
            starting = all("fedmnist-entrypoint" in args for args in root)
            if not root or not starting or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not root, f"{service} runs {root} as root"


def _up(compose: harness.Compose, files: list[Path], *services: str) -> None:
    compose(files, "up", "-d", *services)
    compose.wait_healthy(list(services) or ["superlink", *NODES], timeout=180)


def test_compose_up_runs_on_one_machine_and_leaves_nothing_behind(engine, image, timings, tmp_path):
    docker, cli = engine
    outputs, owner = _outputs(tmp_path)
    certs = tmp_path / "certs"
    port = free_port()
    compose = harness.Compose(
        cli,
        docker,
        project=f"fedmnist-test-{uuid.uuid4().hex[:8]}",
        env={
            "FEDMNIST_OUTPUTS": str(outputs),
            "FEDMNIST_PORT": str(port),
            "FEDMNIST_CERTS": str(certs),
            "FEDMNIST_IMAGE": image,
        },
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
            bad = compose.run(
                BASE,
                "run",
                "--rm",
                "--no-deps",
                "-T",
                "supernode-0",
                "flower-supernode",
                "--insecure",
                "--superlink",
                "superlink:8000",
                "--node-config",
                "partition-id=3 num-partitions=3",
            )
            assert bad.returncode == 2, bad.stdout + bad.stderr
            assert "partition-id=3 is out of range for num-partitions=3" in bad.stdout + bad.stderr

            t0 = time.monotonic()
            compose(BASE, "down", "-v")
            timings["down"] = time.monotonic() - t0
            assert compose.leftovers() == {}
    finally:
        compose(BASE, "down", "-v", "--remove-orphans", check=False)
    assert compose.leftovers() == {}


def _snooped(findings: dict) -> list[str]:
    """Every key or state file the snooping app could read, wherever it ran (a folder it could
    list counts when it holds one: the public CA certificate alone is no secret)."""
    places = [findings["serverapp"], *findings["clientapps"]]
    assert len(places) == 4, findings  # the ServerApp and the three nodes' ClientApps
    secret = (".key", ".db", ".secret")
    leaks = []
    for where in places:
        for path, state in where.items():
            if not path.startswith(("known ", "found ")):
                continue
            listed = state.removeprefix("listable: ").split(",") if state.startswith("listable: ") else []
            if state == "readable" or any(name.endswith(secret) for name in listed):
                leaks.append(f"{where.get('host')}: {path} {state}")
    return leaks


def test_two_hosts_behind_the_proxy_refuse_strangers_and_keep_keys_from_uploaded_code(engine, image, timings, tmp_path):
    """The SuperLink host (proxy, SuperLink, SuperExec) and a node host (three SuperNodes, each
    with its ClientApp container) as two compose projects on separate Docker networks: the
    nodes reach the SuperLink only through the proxy's published port, as another machine
    would (host.docker.internal is this machine seen from the node host's network)."""
    docker, cli = engine
    outputs, owner = _outputs(tmp_path)
    certs = tmp_path / "certs"
    public, control = free_port(), free_port()
    tag = uuid.uuid4().hex[:8]
    common = {"FEDMNIST_CERTS": str(certs), "FEDMNIST_IMAGE": image}
    link_host = harness.Compose(
        cli,
        docker,
        project=f"fedmnist-link-{tag}",
        directory=harness.SUPERLINK_HOST_FILE.parent,
        env={
            **common,
            "FEDMNIST_OUTPUTS": str(outputs),
            "FEDMNIST_PUBLIC_PORT": str(public),
            "FEDMNIST_CONTROL_PORT": str(control),
        },
    )
    node_host = harness.Compose(
        cli,
        docker,
        project=f"fedmnist-nodes-{tag}",
        directory=harness.NODE_HOST_FILE.parent,
        env={**common, "SUPERLINK_ADDRESS": f"host.docker.internal:{public}"},
    )
    link_files, node_files = [harness.SUPERLINK_HOST_FILE], [harness.NODE_HOST_FILE]
    refusals: dict[str, str] = {}
    try:
        with flower_home() as home:
            made = subprocess.run(
                [str(ROOT / "deploy" / "tls.sh"), "--dir", str(certs), "--san", "host.docker.internal"],
                capture_output=True,
                text=True,
            )
            assert made.returncode == 0, made.stderr
            t0 = time.monotonic()
            link_host(link_files, "up", "-d")
            link_host.wait_healthy(["superlink"], timeout=180)
            harness.wait_healthy(
                f"https://127.0.0.1:{public}/health",
                timeout=60,
                ca=certs / "ca.crt",
                log=lambda: link_host.logs("proxy"),
            )
            _nobody_is_root(link_host, ["superlink", "superexec"])
            ops = f"127.0.0.1:{control}"
            connection.write_connection("ops", ops, root_certificates=certs / "ca.crt", home=home.path)
            connection.write_connection("ops-plain", ops, home=home.path)
            ok, message = connection.probe("ops-plain", ops, None)  # no TLS: refused, and said why
            assert not ok and "speaks TLS" in message, message
            for key in register.default_keys(certs):
                ok, message = register.register("ops", key, env=home.env)
                assert ok, message

            # A SuperNode whose key was not registered is turned away at the public listener.
            stranger_key = tmp_path / "stranger.key"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(stranger_key)], check=True
            )
            unregistered = node_host.run(
                node_files,
                "run",
                "--rm",
                "--no-deps",
                "-T",
                "-v",
                f"{stranger_key}:/certs/stranger.key:ro",
                "supernode-0",
                "flower-supernode",
                "--superlink",
                f"host.docker.internal:{public}",
                "--root-certificates",
                "/certs/ca.crt",
                "--auth-supernode-private-key",
                "/certs/stranger.key",
                "--max-retries",
                "2",
                "--node-config",
                "partition-id=0 num-partitions=3",
            )
            assert unregistered.returncode != 0, unregistered.stdout + unregistered.stderr
            assert "Failed to activate SuperNode" in unregistered.stdout + unregistered.stderr
            assert "No SuperNode found with the given public key" in link_host.logs("superlink", 400)
            refusals["unregistered SuperNode"] = f"Failed to activate SuperNode (exit {unregistered.returncode})"
            # A certificate that is not there: one line naming the file, before Flower starts.
            missing = node_host.run(
                node_files,
                "run",
                "--rm",
                "--no-deps",
                "-T",
                "supernode-0",
                "flower-supernode",
                "--superlink",
                f"host.docker.internal:{public}",
                "--root-certificates",
                "/certs/nowhere.crt",
                "--node-config",
                "partition-id=0 num-partitions=3",
            )
            assert missing.returncode == 2
            assert "--root-certificates /certs/nowhere.crt: CA certificate not found" in missing.stdout + missing.stderr

            node_host(node_files, "up", "-d")
            node_host.wait_healthy(["supernode-0", "supernode-1", "supernode-2"], timeout=180)
            _nobody_is_root(node_host, [*NODES, "clientapp-0", "clientapp-1", "clientapp-2"])
            timings["up-two-hosts"] = time.monotonic() - t0

            # A stranger on the node host's network, with the CA certificate and a key of their own.
            t0 = time.monotonic()
            stranger = subprocess.run(
                [
                    docker,
                    "run",
                    "--rm",
                    "--network",
                    node_host.network(),
                    "--add-host",
                    "host.docker.internal:host-gateway",
                    "-v",
                    f"{certs / 'ca.crt'}:/certs/ca.crt:ro",
                    "-v",
                    f"{ROOT / 'deploy' / 'stranger.py'}:/opt/stranger.py:ro",
                    image,
                    "python",
                    "/opt/stranger.py",
                    f"host.docker.internal:{public}",
                    "--ca",
                    "/certs/ca.crt",
                    "--closed",
                    f"host.docker.internal:{control}",
                    "--closed",
                    "superlink:8000",
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            tried = [json.loads(line) for line in stranger.stdout.splitlines() if line.startswith("{")]
            refusals.update({t["action"]: t["detail"] for t in tried})
            assert len(tried) == 14, stranger.stdout + stranger.stderr
            assert all(t["refused"] for t in tried), stranger.stdout
            assert stranger.returncode == 0, stranger.stderr
            timings["stranger"] = time.monotonic() - t0

            t0 = time.monotonic()
            try:
                flwr_run(home, "ops", {**RUN_CONFIG, "run-name": "two-hosts"}, echo=False, timeout=1800)
            except FlowerError as exc:
                raise AssertionError(f"{exc}\n{link_host.logs('superexec')}") from None
            timings["run-two-hosts"] = time.monotonic() - t0
            history = _check_run(outputs, "two-hosts", owner)
            for record in history["rounds"][1:]:  # the nodes' ClientApp processes forked warm (default)
                timings[f"warm round {record['round']}"] = record["wall-time-s"]
            refusals.update(
                check_warm_and_private(
                    node_host,
                    ["clientapp-0", "clientapp-1", "clientapp-2"],
                    {"clientapp-0": ["clientapp-1", "supernode-0"]},
                )
            )

            # Uploaded code looks for keys and state where it runs: there are none to read.
            t0 = time.monotonic()
            snoop = subprocess.run(
                ["flwr", "run", str(ROOT / "tests" / "apps" / "snoop"), "ops", "--stream"],
                env=home.env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert snoop.returncode == 0, snoop.stdout + snoop.stderr
            findings = json.loads((outputs / "snoop" / "findings.json").read_text())
            assert _snooped(findings) == [], findings
            timings["snoop"] = time.monotonic() - t0

            listed = subprocess.run(
                ["flwr", "supernode", "ls", "ops", "--format", "json"], env=home.env, capture_output=True, text=True
            )
            assert len(json.loads(listed.stdout)["nodes"]) == 3  # the strangers are not among them
    finally:
        node_host(node_files, "down", "-v", "--remove-orphans", check=False)
        link_host(link_files, "down", "-v", "--remove-orphans", check=False)
        if refusals:
            TIMINGS.parent.mkdir(exist_ok=True)
            (TIMINGS.parent / "container-test-refusals.json").write_text(json.dumps(refusals, indent=2) + "\n")
    assert node_host.leftovers() == {} and link_host.leftovers() == {}
    timings["total"] = sum(v for k, v in timings.items() if k != "total" and not k.startswith("warm round"))
