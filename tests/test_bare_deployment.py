"""The deployment without Docker (docs/deployment.md, "Without Docker"): the documented commands,
run on this machine's loopback as separate Unix users, and each separation they promise tried
from the other side.

- The apps' user (which runs every ServerApp and ClientApp) reads neither the SuperLink's state
  nor its key, nor a node's key.
- The operators' listener, the SuperLink's own port and the nodes' Runtime APIs answer on no
  other address of this machine (tried from a network namespace on a veth pair), while the
  public listener does, and refuses the Control API there.
- Under the documented nftables rule the apps' user reaches loopback only (a listener in the
  namespace is refused to it, open to the nodes' user).
- One round submitted on the operators' listener completes, with the nodes registered before
  they start, and every ServerApp and ClientApp process runs as the apps' user.

Needs root (users, a namespace, an nftables table), nginx, nft and ip (CI installs them with
deploy/bare-host/host-packages.sh). Users it creates, and all else it makes, are removed
afterwards; users that were there already are used and kept. The users must be able to run
the checkout's .venv: where its Python is out of their reach (a pyenv interpreter under /root),
a thin environment on the system's python3.11 reads the .venv's packages instead.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from deploy.harness import ROOT, wait_healthy
from deploy.neighbour import Neighbour
from launcher.flower_home import FlowerHome, flower_home
from launcher.flwr_cli import flwr_run
from launcher.processes import descendants, stop
from launcher.runtime import free_port
from tests.figures import phase_line, report_figures

LINK, APPS, NODE = "fedmnist-link", "fedmnist-apps", "fedmnist-node"
HOMES = {LINK: "superlink", APPS: "apps", NODE: "node"}  # each user's folder under {state}
PARTITIONS = 2
NEIGHBOUR_PY = ROOT / "deploy" / "neighbour.py"
CONF_TOOL = ROOT / "deploy" / "bare-host" / "nginx_conf.py"
TIMINGS = ROOT / "build" / "bare-host-test.json"
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}  # offline here

# The commands as docs/deployment.md shows them (with DOC_VALUES); the test runs them with its own values.
DOC_VALUES = {
    **{"link": LINK, "apps": APPS, "node": NODE},
    **{"env": "/opt/fedmnist", "state": "/var/lib/fedmnist", "certs": "deploy/certs", "table": "fedmnist"},
    **{"python": "python3", "operator": ".venv/bin", "superlink_host": "superlink.example.org"},
    **{"superlink_port": 8000, "public_port": 8443, "control_port": 9443},
    **{"partition": 0, "node_port": 9094, "partitions": 3},
}
USERADD = "useradd --system --user-group --home-dir {state}/{home} --shell /usr/sbin/nologin {user}"
SUPERLINK_HOST = [
    "install -d -m 755 {state} {state}/nginx",
    "install -d -m 700 -o {link} -g {link} {state}/superlink",
    "install -d -m 700 -o {apps} -g {apps} {state}/apps",
    "install -m 644 {certs}/ca.crt {state}/ca.crt",
    "install -m 600 -o {link} -g {link} {certs}/ca.crt {certs}/superlink.crt {certs}/superlink.key {state}/superlink/",
    "{python} deploy/bare-host/nginx_conf.py --certs {state}/superlink --run-dir {state}/nginx"
    " --superlink 127.0.0.1:{superlink_port} --public {public_port} --control-port {control_port}"
    " > {state}/nginx/nginx.conf",
]
NODE_HOST = [
    "install -d -m 755 {state}",
    "install -d -m 700 -o {node} -g {node} {state}/node",
    "install -d -m 700 -o {apps} -g {apps} {state}/apps",
    "install -m 644 {certs}/ca.crt {state}/ca.crt",
    "install -m 600 -o {node} -g {node} {certs}/supernode-{partition}.key {state}/node/",
    "install -m 644 deploy/supervise.py {state}/supervise.py",
]
FIREWALL = [
    "nft add table inet {table}",
    "nft add chain inet {table} egress '{{ type filter hook output priority 0; policy accept; }}'",
    'nft add rule inet {table} egress meta skuid {apps} oifname != "lo" reject',
]
OPERATOR = [
    "{operator}/python deploy/connection.py lab --address 127.0.0.1:{control_port} --root-certificates {certs}/ca.crt",
    "{operator}/python deploy/register.py lab",
]
SERVICES = {
    "superlink": "runuser -u {link} -- env PATH={env}/bin:/usr/bin:/bin flower-superlink --host 127.0.0.1"
    " --port {superlink_port} --database {state}/superlink/state.db --disable-runtime-dependency-installation"
    " --ssl-ca-certfile {state}/superlink/ca.crt --ssl-certfile {state}/superlink/superlink.crt"
    " --ssl-keyfile {state}/superlink/superlink.key --enable-supernode-auth --isolation process",
    "serverapps": "runuser -u {apps} -- env PATH={env}/bin:/usr/bin:/bin FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.25"
    " flower-superexec --runtime-api-address 127.0.0.1:{superlink_port} --root-certificates {state}/ca.crt",
    "nginx": "nginx -c {state}/nginx/nginx.conf -g 'daemon off;'",
    "supernode": "runuser -u {node} -- env PATH={env}/bin:/usr/bin:/bin"
    " FEDMNIST_SUPERNODE_STATE={state}/node/supernode-{partition}.json python {state}/supervise.py"
    " flower-supernode --superlink {superlink_host}:{public_port} --root-certificates {state}/ca.crt"
    " --auth-supernode-private-key {state}/node/supernode-{partition}.key --isolation process"
    ' --host 127.0.0.1 --port {node_port} --node-config "partition-id={partition} num-partitions={partitions}"',
    "clientapps": "runuser -u {apps} -- env PATH={env}/bin:/usr/bin:/bin FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.25"
    " OMP_NUM_THREADS=1 flower-superexec --runtime-api-address 127.0.0.1:{node_port} --insecure",
}
RUN_CONFIG = {
    "num-server-rounds": 1,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "local-epochs": 1,
    "partitioning": "iid-balanced",  # the point is the plumbing: 1,000 images a node, a short round
    "samples-per-class": 100,
    "min-available-nodes": PARTITIONS,
    "run-name": "bare-host",
}
LISTEN = (
    "import socket, sys\ns = socket.create_server(('0.0.0.0', int(sys.argv[1])))\nwhile True: s.accept()[0].close()"
)


def _normalised(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def _every_command() -> list[str]:
    users = [USERADD.replace("{home}", home).replace("{user}", user) for user, home in HOMES.items()]
    return [*users, *SUPERLINK_HOST, *NODE_HOST, *FIREWALL, *OPERATOR, *SERVICES.values()]


def test_the_docs_show_the_commands_this_test_runs():
    page = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    section = _normalised(page.split("\n## Without Docker\n", 1)[1].split("\n## ", 1)[0])
    missing = [c.format(**DOC_VALUES) for c in _every_command() if _normalised(c.format(**DOC_VALUES)) not in section]
    assert not missing, "not in docs/deployment.md's 'Without Docker' section:\n" + "\n".join(missing)


def test_the_bare_host_nginx_conf_keeps_the_operators_on_loopback(tmp_path):
    args = ["--certs", "/tmp/x/certs", "--run-dir", "/tmp/x/nginx", "--control-port", "9444"]
    made = subprocess.run([sys.executable, CONF_TOOL, *args], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    conf = made.stdout
    listens = [line.split()[1] for line in conf.splitlines() if line.strip().startswith("listen ")]
    assert listens == ["8443", "127.0.0.1:9444"]
    assert "127.0.0.0/8 1;" in conf  # and only loopback sources, should it ever bind more
    assert "ssl_certificate_key /tmp/x/certs/superlink.key;" in conf and "pid /tmp/x/nginx/nginx.pid;" in conf
    assert "superlink:8000" not in conf and "server 127.0.0.1:8000;" in conf  # the upstream the locations use
    words = conf.split()  # every container path moved, none twice
    assert not [w for w in words if w.startswith("/certs/")]
    assert all(w.startswith(("/tmp/x/certs/", "/tmp/x/nginx/")) for w in words if w.startswith("/tmp/"))
    # A container file without a line the rewrite relies on stops it, naming the line.
    source = tmp_path / "nginx.conf"
    container = (ROOT / "deploy/superlink-host/nginx.conf").read_text()
    source.write_text(container.replace("listen 9443 ssl", "listen 9443"))
    args = ["--certs", "/etc/x", "--source", str(source)]
    refused = subprocess.run([sys.executable, CONF_TOOL, *args], capture_output=True, text=True)
    assert refused.returncode == 1 and "listen 9443 ssl" in refused.stderr and not refused.stdout
    # So does a listener it does not know: it would bind every interface here.
    source.write_text(container.replace("    server {", "    server {\n        listen 7443 ssl;", 1))
    refused = subprocess.run([sys.executable, CONF_TOOL, *args], capture_output=True, text=True)
    assert refused.returncode == 1 and "'listen 7443'" in refused.stderr and not refused.stdout


# --- the deployment itself ---------------------------------------------------------------------


@dataclass
class Host:
    base: Path
    values: dict[str, object]
    home: FlowerHome
    created: list[str] = field(default_factory=list)

    def folder(self, user: str) -> Path:
        return self.base / HOMES[user]

    def shell(self, line: str, env: dict[str, str] | None = None, **extra: object) -> None:
        rendered = line.format(**{**self.values, **extra})
        proc = subprocess.run(["bash", "-c", rendered], env=env or BASE_ENV, cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"{rendered}\n{proc.stdout}{proc.stderr}"

    def spawn(self, name: str, service: str, **extra: object) -> subprocess.Popen:
        argv = shlex.split(SERVICES[service].format(**{**self.values, **extra}))
        if argv[0] == "runuser" and pwd.getpwnam(argv[2]).pw_dir != str(self.folder(argv[2])):
            argv.insert(argv.index("env") + 1, f"HOME={self.folder(argv[2])}")  # a user that was there already
        log = open(self.home.path / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env={**BASE_ENV, **QUIET}, cwd=self.base, stdout=log, stderr=log)
        self.home.processes.append(proc)
        return proc


def _as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], env=BASE_ENV, capture_output=True, text=True)


def _require_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: it creates users, a network namespace and an nftables table (CI runs it as root)")
    missing = [
        tool
        for tool in ("nginx", "nft", "ip", "runuser", "useradd")
        if shutil.which(tool, path=BASE_ENV["PATH"]) is None
    ]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run deploy/bare-host/host-packages.sh as root")


def _can_run(python: Path) -> bool:
    return _as_user(APPS, str(python), "-c", "import flwr, torch, task").returncode == 0


def _environment(base: Path) -> Path:
    """A Python environment with this project that the users can run: the .venv, or a thin one."""
    venv = Path(sys.prefix)
    if _can_run(venv / "bin" / "python"):
        return venv
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/local/bin:/usr/bin")
    if system is None:
        pytest.fail(f"{venv} is out of the other users' reach and there is no system python3.11 to share it with")
    thin = base / "env"
    subprocess.run([system, "-m", "venv", "--without-pip", str(thin)], check=True)
    site_packages = thin / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    purelib = sysconfig.get_paths()["purelib"]
    (site_packages / "fedmnist-shared.pth").write_text(f"import site; site.addsitedir({purelib!r})\n")
    shebang = f"#!{venv}/bin/python"
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink() and script.read_bytes().startswith(shebang.encode() + b"\n"):
            (thin / "bin" / script.name).write_text(f"#!{thin}/bin/python\n" + script.read_text().split("\n", 1)[1])
            (thin / "bin" / script.name).chmod(0o755)
    if not _can_run(thin / "bin" / "python"):
        pytest.fail(f"{APPS} cannot import flwr, torch and this project from {thin} (reading {purelib})")
    return thin


def _ensure_user(host: Host, user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        host.shell(USERADD, home=HOMES[user], user=user)
        host.created.append(user)


def _set_up(host: Host) -> None:
    for user in HOMES:
        _ensure_user(host, user)
    host.values["env"] = str(_environment(host.base))
    certs = host.base / "certs"  # the operator's deploy/certs: no user of the deployment may read it
    made = subprocess.run([ROOT / "deploy" / "tls.sh", "--dir", certs, "--nodes", str(PARTITIONS)], capture_output=True)
    assert made.returncode == 0, made.stderr
    certs.chmod(0o700)
    for line in SUPERLINK_HOST:
        host.shell(line)
    for partition in range(PARTITIONS):
        for line in NODE_HOST:
            host.shell(line, partition=partition)
    for line in FIREWALL:
        host.shell(line)


@contextmanager
def _phase(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - t0, 1)


@pytest.fixture
def timings(request) -> Iterator[dict[str, float]]:
    found: dict[str, float] = {}
    yield found
    if found:
        report_figures(request, TIMINGS, found, [phase_line("bare-host test", found)])


def _remove(host: Host) -> None:
    """Everything the set-up made that outlives its processes: the rule, the users, the folder."""
    subprocess.run(["nft", "delete", "table", "inet", str(host.values["table"])], capture_output=True)
    kept = {user: subprocess.run(["userdel", user], capture_output=True, text=True) for user in host.created}
    shutil.rmtree(host.base, ignore_errors=True)
    kept = {user: done.stderr.strip() for user, done in kept.items() if done.returncode != 0}
    assert not kept, f"users this test made are still there: {kept}"


@pytest.fixture
def bare_host(timings) -> Iterator[Host]:
    """Users, folders, certificates, nginx's configuration and the egress rule, as documented;
    on the way out every process stopped, then the rule, the users it created and the folder gone."""
    _require_tools()
    ports = {k: free_port() for k in ("superlink_port", "public_port", "control_port")}
    with flower_home() as home:
        base = Path(tempfile.mkdtemp(prefix="fedmnist-bare-", dir="/tmp"))
        base.chmod(0o755)  # like /var/lib: the users' own folders inside are 700
        values = {**DOC_VALUES, **ports, "state": str(base), "certs": str(base / "certs"), "python": sys.executable}
        values |= {"operator": str(Path(sys.executable).parent), "superlink_host": "127.0.0.1"}
        values |= {"partitions": PARTITIONS, "table": f"fedmnist_test_{os.getpid()}"}
        host = Host(base, values, home)
        try:
            with _phase(timings, "setup"):
                _set_up(host)
            yield host
        finally:
            t0 = time.monotonic()
            with ThreadPoolExecutor(len(home.processes) or 1) as pool:  # runuser waits 2 s after passing a SIGTERM on
                list(pool.map(stop, home.processes))
            home.processes.clear()
            _remove(host)
            timings["teardown"] = round(time.monotonic() - t0, 1)


@contextmanager
def _apps_processes(superexecs: list[subprocess.Popen]) -> Iterator[set[tuple[str, str]]]:
    """(command, user) of every ServerApp and ClientApp process the SuperExecs start meanwhile."""
    seen: set[tuple[str, str]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in descendants(*(p.pid for p in superexecs)):
                try:
                    proc = psutil.Process(pid)
                    names, user = {Path(part).name for part in proc.cmdline()[:2]}, proc.username()
                except psutil.Error:
                    continue
                seen.update((name, user) for name in names & {"flwr-serverapp", "flwr-clientapp"})
            done.wait(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def _users_under(proc: subprocess.Popen) -> set[str]:
    """Who the processes that ``runuser`` started run as."""
    return {psutil.Process(pid).username() for pid in descendants(proc.pid)}


def _start_superlink_host(host: Host) -> tuple[subprocess.Popen, subprocess.Popen]:
    v, ca = host.values, host.base / "ca.crt"
    link = host.spawn("superlink", "superlink")
    url = f"https://127.0.0.1:{v['superlink_port']}/health"
    wait_healthy(url, ca=ca, alive=lambda: link.poll() is None, log=lambda: host.home.log_tail("superlink"))
    serverapps = host.spawn("serverapps", "serverapps")
    proxy = host.spawn("nginx", "nginx")
    for port in (v["public_port"], v["control_port"]):
        url = f"https://127.0.0.1:{port}/health"
        wait_healthy(url, ca=ca, alive=lambda: proxy.poll() is None, log=lambda: host.home.log_tail("nginx"))
    return link, serverapps


def _files_kept_from_others(host: Host) -> None:
    state = host.folder(LINK)
    assert _as_user(LINK, "head", "-c", "15", str(state / "state.db")).stdout == "SQLite format 3"
    for user, path in [
        (APPS, state / "state.db"),
        (APPS, state / "superlink.key"),
        (APPS, host.folder(NODE) / "supernode-0.key"),
        (NODE, state / "superlink.key"),
    ]:
        tried = _as_user(user, "head", "-c", "15", str(path))
        assert tried.returncode != 0 and "Permission denied" in tried.stderr, f"{user} read {path}: {tried.stdout!r}"
    assert (state.stat().st_mode & 0o777, state.owner()) == (0o700, LINK)  # as the documented steps made it


def _probe(user: str | None, python: str, address: str, lan: Neighbour | None = None) -> str:
    argv = [python, str(NEIGHBOUR_PY), "probe", address]
    done = lan.run(argv) if lan else _as_user(user, *argv)
    return json.loads(done.stdout)["tcp"] if done.returncode == 0 else f"error: {done.stderr.strip()}"


def _network_kept_from_others(host: Host, node_ports: list[int]) -> None:
    v, python = host.values, str(Path(str(host.values["env"])) / "bin" / "python")
    ports = {"public": v["public_port"], "operators": v["control_port"], "superlink": v["superlink_port"]}
    ports |= {f"node-{i} runtime": port for i, port in enumerate(node_ports)}
    with Neighbour(routes=()) as lan:
        # Another machine on the LAN: only the nodes' listener answers, and it refuses the Control API.
        found = {name: _probe(None, sys.executable, f"{lan.host_address}:{port}", lan) for name, port in ports.items()}
        assert found == {**dict.fromkeys(ports, "refused"), "public": "open"}, found
        asked = lan.python(
            str(NEIGHBOUR_PY), "https", f"{lan.host_address}:{v['public_port']}", "POST", "/v1/control/list-runs"
        )
        assert json.loads(asked.stdout)["answer"].startswith("HTTP 403"), asked.stdout
        # The egress rule: the nodes' user reaches the LAN, the apps' user is refused.
        listener = subprocess.Popen(["ip", "netns", "exec", lan.name, sys.executable, "-c", LISTEN, "9999"])
        try:
            target = f"{lan.address}:9999"
            deadline = time.monotonic() + 20
            while _probe(NODE, python, target) != "open" and time.monotonic() < deadline:
                time.sleep(0.3)
            assert _probe(NODE, python, target) == "open"
            assert _probe(APPS, python, target) == "refused"
        finally:
            stop(listener)


def _logs(host: Host) -> str:
    names = sorted(p.stem for p in host.home.path.glob("*.log"))
    return "\n".join(f"--- {name}\n{host.home.log_tail(name, 15)}" for name in names)


@pytest.mark.slow
def test_the_documented_bare_host_deployment_keeps_each_user_to_its_part(bare_host, timings):
    host, v = bare_host, bare_host.values
    with _phase(timings, "superlink host"):
        link, serverapps = _start_superlink_host(host)
    with _phase(timings, "register"):  # before any node starts: an unregistered node exits for good (305)
        for line in OPERATOR:
            host.shell(line, env={**host.home.env, "FEDMNIST_CERTS": str(v["certs"])})
    with _phase(timings, "nodes"):
        node_ports = [free_port() for _ in range(PARTITIONS)]
        nodes = [
            host.spawn(f"supernode-{p}", "supernode", partition=p, node_port=node_ports[p]) for p in range(PARTITIONS)
        ]
        superexecs = [serverapps]
        superexecs += [host.spawn(f"clientapps-{p}", "clientapps", node_port=node_ports[p]) for p in range(PARTITIONS)]
    with _phase(timings, "round"), _apps_processes(superexecs) as seen:
        try:
            flwr_run(host.home, "lab", RUN_CONFIG, echo=False, timeout=600)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{_logs(host)}") from None
    run_folder = host.folder(APPS) / "fedmnist-runs" / str(RUN_CONFIG["run-name"])
    history = json.loads((run_folder / "history.json").read_text())
    assert history["status"] == "completed"
    assert history["rounds"][1]["clients-train"]["nodes"] == PARTITIONS
    assert history["rounds"][1]["server"]["accuracy"] > 0.5  # 1,000 images a node, one epoch: it learned
    assert run_folder.owner() == APPS
    assert seen == {("flwr-serverapp", APPS), ("flwr-clientapp", APPS)}
    assert all(node.poll() is None for node in nodes), _logs(host)  # registered first: none gave up
    runs_as = [(link, LINK), *((node, NODE) for node in nodes), *((s, APPS) for s in superexecs)]
    assert all(_users_under(proc) == {user} for proc, user in runs_as)
    with _phase(timings, "separations"):
        _files_kept_from_others(host)
        _network_kept_from_others(host, node_ports)
