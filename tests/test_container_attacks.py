"""The two-host deployment (deploy/superlink-host, deploy/node-host) in real containers, attacked
and disturbed from outside while a run goes on:

1. No side door. A LAN neighbour of this machine (a network namespace that routes Docker's
   subnets through it, deploy/neighbour.py) tries every listening port of every container at
   every container address: only the public listener answers; the operators' listener at the
   proxy's own address refuses every request (403); the SuperLink and the node's Runtime APIs
   do not answer at all.
2. A flood costs its length. From the neighbour, 1,100 slow connections at the public door for
   two rounds' time, 1,100 slow TLS connections for 30 s (deploy/flood.py), then five 200 MB
   bodies: the nodes keep completing rounds and stay connected, /health answers on both
   listeners throughout, the bodies get 413 and the SuperLink's memory stays put.
3. A proxy restart mid-run (with a `flwr log --stream` open) ends within Docker's 10 s; every
   node is connected again within a minute and the next round uses all of them.
4. A SuperNode's Flower process killed mid-run is started again by its supervisor, rejoins once
   the SuperLink lets its old session go, and is used by the running run again.
5. The SuperExec (the container that runs the ServerApps) killed mid-run: the operator following
   the run with launcher.follow gets exit 1 and one line saying it failed and how to resume, and
   history.json says 'failed'.

The figures are printed and written to build/container-attacks.json. Needs a Docker engine
and root (network namespaces); where either is missing it is skipped, and
FEDMNIST_REQUIRE_DOCKER=1 turns the skip into a failure (CI). Leaves no container, network,
volume or namespace behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy import connection, harness, register
from deploy.neighbour import Neighbour, listeners
from launcher.flower_home import FlowerHome, flower_home
from launcher.flwr_cli import write_toml
from launcher.runtime import free_port
from launcher.staging import staged_app
from tests.figures import report_figures
from tests.test_containers import (
    NODES,
    _unavailable,
    build_images,
    engine,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.slow

ROOT = harness.ROOT
FIGURES = ROOT / "build" / "container-attacks.json"
NEIGHBOUR = str(ROOT / "deploy" / "neighbour.py")
FLOOD = str(ROOT / "deploy" / "flood.py")
# Many short rounds: the disturbances happen while it runs; it is stopped at the end.
RUN_CONFIG = {
    "num-server-rounds": 60,
    "local-epochs": 1,
    "batch-size": 100,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "min-available-nodes": 3,
    "run-name": "disturbed",
}


@dataclass
class Deployment:
    link_host: harness.Compose
    node_host: harness.Compose
    home: FlowerHome
    certs: Path
    outputs: Path
    public: int
    control: int

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["flwr", *args], env=self.home.env, capture_output=True, text=True, timeout=timeout)

    def online(self) -> int:
        listed = self.flwr("supernode", "ls", "ops", "--format", "json")
        nodes = json.loads(listed.stdout or "{}").get("nodes", [])
        return sum(n["status"] == "online" for n in nodes)

    def connected(self) -> dict[str, bool]:
        """Each SuperNode's own account (its supervisor's state file)."""
        found = {}
        for node in NODES:
            state = self.node_host.exec(node, "cat", "/tmp/fedmnist-supernode.json").stdout
            found[node] = bool(state) and json.loads(state)["connected"]
        return found

    def rounds(self) -> list[dict]:
        try:
            return json.loads((self.outputs / RUN_CONFIG["run-name"] / "history.json").read_text())["rounds"]
        except (OSError, ValueError, KeyError):  # not there yet, or being written
            return []


@pytest.fixture(scope="module")
def figures(request) -> dict:
    found: dict = {}
    yield found
    if found:
        heading = f"container attacks ({FIGURES.relative_to(ROOT)}):"
        report_figures(request, FIGURES, found, [heading, *(f"  {k}: {json.dumps(v)}" for k, v in found.items())])


@pytest.fixture(scope="module")
def deployment(engine, tmp_path_factory) -> Deployment:  # noqa: F811 - engine is the imported fixture
    if os.geteuid() != 0:
        _unavailable("the LAN neighbour is a network namespace: run this test as root")
    docker, cli = engine
    image = build_images(docker)
    tmp = tmp_path_factory.mktemp("attacks")
    certs, outputs = tmp / "certs", tmp / "outputs"
    outputs.mkdir()
    public, control, tag = free_port(), free_port(), uuid.uuid4().hex[:8]
    common = {"FEDMNIST_CERTS": str(certs), "FEDMNIST_IMAGE": image}
    link_env = {"FEDMNIST_OUTPUTS": str(outputs), "FEDMNIST_PUBLIC_PORT": str(public)}
    link_host = harness.Compose(
        cli,
        docker,
        f"fedmnist-attacked-{tag}",
        {**common, **link_env, "FEDMNIST_CONTROL_PORT": str(control)},
        harness.SUPERLINK_HOST_FILE.parent,
    )
    node_env = {**common, "SUPERLINK_ADDRESS": f"host.docker.internal:{public}"}
    node_host = harness.Compose(cli, docker, f"fedmnist-nodes-{tag}", node_env, harness.NODE_HOST_FILE.parent)
    tls = [str(ROOT / "deploy" / "tls.sh"), "--dir", str(certs), "--san", "host.docker.internal"]
    assert subprocess.run(tls, capture_output=True).returncode == 0
    try:
        with flower_home() as home:
            link_host([harness.SUPERLINK_HOST_FILE], "up", "-d")
            link_host.wait_healthy(["superlink"], timeout=180)
            ca = certs / "ca.crt"
            harness.wait_healthy(f"https://127.0.0.1:{public}/health", 60, ca, log=lambda: link_host.logs("proxy"))
            connection.write_connection("ops", f"127.0.0.1:{control}", root_certificates=ca, home=home.path)
            for key in register.default_keys(certs):
                assert register.register("ops", key, env=home.env)[0]
            node_host([harness.NODE_HOST_FILE], "up", "-d")
            node_host.wait_healthy(NODES, timeout=240)  # healthy = connected to the SuperLink
            yield Deployment(link_host, node_host, home, certs, outputs, public, control)
    finally:
        node_host([harness.NODE_HOST_FILE], "down", "-v", "--remove-orphans", check=False)
        link_host([harness.SUPERLINK_HOST_FILE], "down", "-v", "--remove-orphans", check=False)
    assert node_host.leftovers() == {} and link_host.leftovers() == {}


@pytest.fixture(scope="module")
def running(deployment) -> str:
    """A long run in progress, with at least one round done; stopped at the end."""
    config = write_toml(deployment.home.path / "disturbed.toml", RUN_CONFIG)
    app = staged_app(deployment.home, ROOT)
    submitted = deployment.flwr("run", str(app), "ops", "--format", "json", "--run-config", str(config))
    run_id = str(json.loads(submitted.stdout)["run-id"])
    try:
        _wait_until(lambda: len(deployment.rounds()) >= 2, 900, "round 1 of the run")
        yield run_id
    finally:
        deployment.flwr("stop", run_id, "ops")


def _wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout`` naming ``what``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:g} s")
        time.sleep(0.5)
    return time.monotonic() - start


def _round_after(deployment: Deployment, done: int, timeout: float = 900) -> dict:
    """The first round completed after ``done`` rounds were (round 0 counts), once it is."""
    _wait_until(lambda: len(deployment.rounds()) > done, timeout, f"a round after round {done - 1}")
    return deployment.rounds()[done]


# --- 1. no side door ---------------------------------------------------------------------------


def test_a_lan_neighbour_finds_no_door_but_the_public_listener(deployment, figures):
    link, nodes = deployment.link_host, deployment.node_host
    edge = link.addresses("proxy")[link.network("edge")]
    targets = []
    for compose, services in ((link, ["proxy", "superlink", "superexec"]), (nodes, [*NODES, "clientapp-0"])):
        for service in services:
            addresses = list(compose.addresses(service).values())
            for listener in listeners(compose.pids(service)[0]):
                if listener.address.startswith("127."):  # the container's own loopback (Docker's DNS)
                    continue
                bound = addresses if listener.address in ("0.0.0.0", "::") else [listener.address]
                targets += [f"{address}:{listener.port}" for address in bound]
    assert f"{edge}:9443" in targets and any(t.endswith(":8000") for t in targets), targets
    with Neighbour() as lan:
        probed = lan.python(NEIGHBOUR, "probe", *targets)
        tcp = {row["address"]: row["tcp"] for row in map(json.loads, probed.stdout.splitlines())}
        answers = {}
        for address, method, path in [
            (f"{edge}:9443", "POST", "/v1/control/list-runs"),
            (f"{edge}:9443", "POST", "/v1/control/start-run"),
            (f"{edge}:9443", "GET", "/health"),
            (f"{edge}:8443", "GET", "/health"),  # the public door answers: the routing works
            (f"{lan.host_address}:{deployment.public}", "GET", "/health"),
        ]:
            asked = lan.python(NEIGHBOUR, "https", address, method, path)
            answers[f"{method} {address}{path}"] = json.loads(asked.stdout)["answer"]
    figures["side door: TCP from the neighbour"] = tcp
    figures["side door: HTTPS from the neighbour"] = answers
    assert {t for t, result in tcp.items() if result == "open"} == {f"{edge}:8443", f"{edge}:9443"}, tcp
    operators = [a for k, a in answers.items() if ":9443" in k]
    assert all(a.startswith("HTTP 403 refused: the operators' listener answers only") for a in operators), answers
    assert [a for k, a in answers.items() if k.endswith("/health") and ":9443" not in k] == ["HTTP 200"] * 2
    # and the operators on the SuperLink host itself are not locked out
    listed = deployment.flwr("ls", "ops", "--format", "json")
    assert json.loads(listed.stdout)["success"], listed.stdout + listed.stderr


# --- 2. a flood ----------------------------------------------------------------------------------


class _Watch:
    """/health on both listeners from this machine's loopback every second (answers, failures and
    the longest stretch without an answer), and the SuperLink's and the proxy's memory every two
    seconds, until stopped."""

    def __init__(self, deployment: Deployment) -> None:
        self.d, self.stop = deployment, threading.Event()
        self.health = {"answered": 0, "failed": 0, "longest_without_answer_s": 0.0}
        self.rss = {"superlink": deployment.link_host.rss_mb("superlink"), "proxy": 0.0}
        self.threads = [threading.Thread(target=self.poll_health), threading.Thread(target=self.sample_memory)]

    def __enter__(self) -> _Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def poll_health(self) -> None:
        import ssl

        context = ssl.create_default_context(cafile=self.d.certs / "ca.crt")
        last_answer = dict.fromkeys((self.d.public, self.d.control), time.monotonic())
        while not self.stop.wait(1):
            for port in last_answer:
                try:
                    with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=10, context=context) as r:
                        answered = r.status == 200
                except OSError:
                    answered = False
                self.health["answered" if answered else "failed"] += 1
                if answered:
                    last_answer[port] = time.monotonic()
                gap = time.monotonic() - last_answer[port]
                self.health["longest_without_answer_s"] = round(max(self.health["longest_without_answer_s"], gap), 1)

    def sample_memory(self) -> None:
        while not self.stop.wait(2):
            for service in self.rss:
                self.rss[service] = max(self.rss[service], self.d.link_host.rss_mb(service))


def _flood(lan: Neighbour, door: str, seconds: int, *extra: str) -> dict:
    flooded = lan.python(FLOOD, door, "--connections", "1100", "--seconds", str(seconds), "--json", *extra, timeout=600)
    assert flooded.returncode == 0, flooded.stdout + flooded.stderr
    return json.loads(flooded.stdout)


def test_a_flood_costs_its_length_not_the_federation(deployment, running, figures):
    """Three floods from the neighbour at the public door: 1,100 connections that never start
    TLS, for two rounds' time (they cost the sender nothing, so the nodes beside it on this
    machine keep their CPU: on a network the sender is another machine); 1,100 that complete TLS
    and never finish a request, for 30 s; five 200 MB bodies."""
    link = deployment.link_host
    seconds = round(min(180.0, max(30.0, 2 * deployment.rounds()[-1]["wall-time-s"])))
    rss_before = link.rss_mb("superlink")
    with Neighbour() as lan, _Watch(deployment) as watch:
        door = f"{lan.host_address}:{deployment.public}"
        done_before = len(deployment.rounds())
        silent = _flood(lan, door, seconds, "--no-handshake")
        rounds_during = len(deployment.rounds()) - done_before
        health_silent = dict(watch.health)
        tls = _flood(lan, door, 30)
        bodies = lan.python(FLOOD, door, "--big-bodies", "5", "--megabytes", "200", timeout=600)
    big = json.loads(bodies.stdout)
    time.sleep(5)
    rss_after = link.rss_mb("superlink")
    figures["flood"] = {
        "silent connections": {**silent, "rounds completed during it": rounds_during},
        "/health from loopback during it": health_silent,
        "TLS connections, 30 s": tls,
        "/health from loopback during both": watch.health,
        "SuperLink RSS MB before, peak, after": [round(m) for m in (rss_before, watch.rss["superlink"], rss_after)],
        "proxy RSS MB peak": round(watch.rss["proxy"]),
        "five 200 MB bodies": big,
    }
    for flood in (silent, tls):
        assert flood["most_open_at_once"] >= 1000, flood  # nginx had room for them (1024 before)
        assert flood["median_life_s"] <= 15, flood  # and closed each after its header timeout
    assert rounds_during >= 1, figures["flood"]
    # /health answers throughout: slowly at times on this shared machine, never a silent stretch
    assert watch.health["longest_without_answer_s"] < 30 and watch.health["answered"] >= seconds, watch.health
    assert [b["status"] for b in big] == [413] * 5, big
    assert watch.rss["superlink"] - rss_before < 100, figures["flood"]  # no body reached it
    assert "worker_connections are not enough" not in link.logs("proxy", 5000)
    _wait_until(lambda: all(deployment.connected().values()) and deployment.online() == 3, 60, "every node connected")


# --- 3. a proxy restart --------------------------------------------------------------------------


def test_a_proxy_restart_ends_within_dockers_timeout_and_every_node_is_back_within_a_minute(
    deployment, running, figures
):
    link = deployment.link_host
    done = len(deployment.rounds())
    stream = subprocess.Popen(  # a stream the proxy must cut to stop
        ["flwr", "log", running, "ops", "--stream"],
        env=deployment.home.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(3)
        start = time.monotonic()
        subprocess.run([link.docker, "restart", link.container("proxy")], check=True, capture_output=True)
        restart_s = time.monotonic() - start
        back_s = restart_s + _wait_until(
            lambda: all(deployment.connected().values()) and deployment.online() == 3, 120, "every node back"
        )
    finally:
        stream.send_signal(signal.SIGTERM)
        stream.wait(30)
    after = _round_after(deployment, done + 1)  # the round in progress may have lost a reply
    figures["proxy restart"] = {
        "docker restart (s)": round(restart_s, 1),
        "every node connected and online (s)": round(back_s, 1),
        f"round {after['round']} trained on": after["clients-train"]["nodes"],
    }
    assert restart_s < 10, figures["proxy restart"]
    assert back_s <= 60, figures["proxy restart"]
    assert after["clients-train"]["nodes"] == 3 == after["clients-evaluate"]["nodes"], after


# --- 4. a SuperNode killed -----------------------------------------------------------------------


def _flower_child(compose: harness.Compose, service: str) -> int:
    """The process the supervisor runs flower-supernode in."""
    for pid in compose.pids(service):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--child" in cmdline:
            return pid
    raise AssertionError(f"{service}: no flower-supernode child under the supervisor")


def test_a_killed_supernode_is_started_again_and_used_by_the_running_run(deployment, running, figures):
    nodes = deployment.node_host
    victim = "supernode-1"
    restarts = nodes.inspect(victim)["RestartCount"]
    done = len(deployment.rounds())
    os.kill(_flower_child(nodes, victim), signal.SIGKILL)
    start = time.monotonic()
    _wait_until(lambda: not deployment.connected()[victim], 30, f"{victim} seen as disconnected")
    _wait_until(lambda: deployment.connected()[victim] and deployment.online() == 3, 180, f"{victim} back")
    back_s = time.monotonic() - start
    rejoined_at = len(deployment.rounds())
    after = _round_after(deployment, rejoined_at + 1)  # a round that started after it was back
    log = nodes.logs(victim, 400)
    figures["SuperNode killed"] = {
        "back, connected and online (s)": round(back_s, 1),
        "rounds completed while it was away": rejoined_at - done,
        f"round {after['round']} trained on": after["clients-train"]["nodes"],
    }
    assert "flower-supernode was killed by signal 9" in log
    assert nodes.inspect(victim)["RestartCount"] == restarts  # its supervisor, not Docker, brought it back
    assert after["clients-train"]["nodes"] == 3 == after["clients-evaluate"]["nodes"], after


# --- 5. the SuperExec dies -----------------------------------------------------------------------


def test_a_dead_superexec_ends_the_run_failed_and_the_operators_command_says_so(deployment, running, figures):
    """The container that runs the ServerApps is killed mid-run. The operator follows the run with
    launcher.follow on the SuperLink host: it exits 1 with one line saying how the run ended and how
    to resume, and the run folder's history says 'failed' instead of 'running' for ever."""
    follow = subprocess.Popen(
        [sys.executable, "-m", "launcher.follow", "ops", "--run-id", running, "--outputs", str(deployment.outputs)],
        env=deployment.home.env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _round_after(deployment, len(deployment.rounds()))  # it follows a run that is going
        subprocess.run([deployment.link_host.docker, "kill", deployment.link_host.container("superexec")], check=True)
        killed = time.monotonic()
        out, err = follow.communicate(timeout=300)
    finally:
        if follow.poll() is None:
            follow.kill()
    ended_s = time.monotonic() - killed
    history = json.loads((deployment.outputs / RUN_CONFIG["run-name"] / "history.json").read_text())
    figures["SuperExec killed"] = {"operator's command exited after (s)": round(ended_s, 1), "exit": follow.returncode}
    assert follow.returncode == 1, out[-2000:] + err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "failed" in last and "resume-from=" in last, err[-2000:]
    assert history["status"] == "failed", history.get("status")
