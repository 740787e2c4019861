"""docker-compose.yml and its switches (deploy/tls.yml, deploy/gpu.yml, deploy/nodes.py): the
commands are valid for Flower 1.41 and describe a consistent federation, the file keeps its
promises (port on 127.0.0.1, state in a volume, run folders in ./outputs, prompt stop), and
(slow) the same command lines run the app for real on loopback, insecure and with TLS +
SuperNode authentication.

No Docker engine is needed: the slow tests run each service's own command line as a local
process, with the compose network's names, ports and mounts mapped to loopback ports and
temporary folders. tests/test_containers.py runs the real containers.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy import connection, harness, nodes, register
from launcher.flower_home import flower_home
from launcher.flwr_cli import flwr_run
from launcher.runtime import free_port, supernode_threads
from task.flower_compat import parse_args_run_superexec, parse_args_run_superlink, parse_args_run_supernode

ROOT = harness.ROOT
COMPOSE = harness.load(harness.COMPOSE_FILE)
TLS = harness.load(harness.TLS_FILE)
GPU = harness.load(harness.GPU_FILE)


def services(kind: str, path: Path = harness.COMPOSE_FILE) -> dict[str, list[str]]:
    return harness.commands(path, kind)


def node_config(argv: list[str]) -> dict[str, int]:
    text = parse_args_run_supernode().parse_args(argv[1:]).node_config
    return {k: int(v) for k, v in (pair.split("=") for pair in text.split())}


def mount_target(volume: str) -> str:
    """``SOURCE:TARGET[:ro]`` -> TARGET (SOURCE may hold ``${VAR:-default}``)."""
    parts = volume.rsplit(":", 2)
    return parts[1] if parts[-1] in ("ro", "rw") else volume.rsplit(":", 1)[1]


def superlink_args(path: Path = harness.COMPOSE_FILE):
    (argv,) = services("flower-superlink", path).values()
    return parse_args_run_superlink().parse_args(argv[1:])


@pytest.mark.parametrize("path", [harness.COMPOSE_FILE, harness.TLS_FILE], ids=["insecure", "tls"])
def test_every_command_is_accepted_by_flowers_own_parsers(path):
    args = superlink_args(path)
    assert args.host == "0.0.0.0" and args.database == "/state/state.db"
    assert args.runtime_dependency_install is False  # the image holds every dependency, offline
    nodes_ = services("flower-supernode", path)
    assert sorted(nodes_) == ["supernode-0", "supernode-1", "supernode-2"]
    for argv in nodes_.values():
        node = parse_args_run_supernode().parse_args(argv[1:])
        assert node.superlink == f"superlink:{args.port}"  # the service name and the port it serves
        assert node.host == "127.0.0.1"  # the ClientApp's API stays inside the container


def test_the_tls_switch_turns_on_tls_and_authentication_everywhere():
    plain, tls = superlink_args(), superlink_args(harness.TLS_FILE)
    assert plain.insecure and not plain.enable_supernode_auth
    assert not tls.insecure and tls.enable_supernode_auth
    assert (tls.ssl_ca_certfile, tls.ssl_certfile, tls.ssl_keyfile) == (
        "/certs/ca.crt",
        "/certs/superlink.crt",
        "/certs/superlink.key",
    )
    mounts = {mount_target(v): v for v in TLS["services"]["superlink"]["volumes"]}
    assert set(mounts) == {"/certs/ca.crt", "/certs/superlink.crt", "/certs/superlink.key"}
    assert all(v.endswith(":ro") for v in mounts.values())
    for name, argv in services("flower-supernode", harness.TLS_FILE).items():
        node = parse_args_run_supernode().parse_args(argv[1:])
        assert not node.insecure and node.root_certificates == "/certs/ca.crt"
        assert node.auth_supernode_private_key == f"/certs/{name}.key"  # each node its own key
        mounted = {mount_target(v) for v in TLS["services"][name]["volumes"]}
        assert mounted == {"/certs/ca.crt", f"/certs/{name}.key"}  # and no other node's key
        # the same partition as without TLS
        assert node_config(argv) == node_config(services("flower-supernode")[name])
    health = TLS["services"]["superlink"]["healthcheck"]["test"]
    assert "https://localhost:8000/health" in health and "/certs/ca.crt" in health


def test_the_supernodes_cover_every_partition_once():
    configs = [node_config(argv) for argv in services("flower-supernode").values()]
    n = configs[0]["num-partitions"]
    assert n == 3 and all(c["num-partitions"] == n for c in configs)
    assert sorted(c["partition-id"] for c in configs) == list(range(n))


def test_the_port_is_published_on_loopback_only():
    (port,) = COMPOSE["services"]["superlink"]["ports"]
    assert port == "127.0.0.1:${FEDMNIST_PORT:-8000}:8000"  # no setting opens it to the network
    assert all("ports" not in s for n, s in COMPOSE["services"].items() if n not in ("superlink", "mlflow"))


def test_state_lives_in_a_volume_and_run_folders_reach_the_host():
    superlink = COMPOSE["services"]["superlink"]
    assert "superlink-state:/state" in superlink["volumes"] and "superlink-state" in COMPOSE["volumes"]
    # The app's default output-dir is relative to the home of the process running the ServerApp:
    # in the image that home is /home/fedmnist, so the runs land in the ./outputs mount.
    output_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]["output-dir"]
    home = re.search(r"^ENV HOME=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    assert f"${{FEDMNIST_OUTPUTS:-./outputs}}:{home}/{output_dir}" in superlink["volumes"]
    assert superlink["environment"]["FEDMNIST_RUN_AS_OWNER_OF"].split(":")[0] == f"{home}/{output_dir}"


def test_every_service_stops_promptly_restarts_on_failure_and_has_a_health_check():
    for name, service in COMPOSE["services"].items():
        if name == "mlflow":  # not Flower: checked with the tracking service below
            continue
        assert service["init"] is True, name
        assert service["restart"] == "on-failure", name
        # a SuperNode is healthy only while connected to the SuperLink (deploy/supervise.py)
        checker = "fedmnist-supervise" if name.startswith("supernode") else "fedmnist-entrypoint"
        assert service["healthcheck"]["test"][:3] == ["CMD", checker, "--health"], name
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"], name
    for name in services("flower-supernode"):
        assert COMPOSE["services"][name]["depends_on"] == {"superlink": {"condition": "service_healthy"}}


def test_the_gpu_switch_reserves_one_nvidia_gpu_per_supernode():
    for name in services("flower-supernode"):
        (device,) = GPU["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert "superlink" not in GPU["services"]


def test_the_image_holds_every_package_of_the_project():
    """The Dockerfile installs the project from the whole build context, so pyproject.toml alone
    decides what goes in; .dockerignore must leave every package in the context, and keep
    secrets, environments and the wheelhouse out of it."""
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "packages"
    ]
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignored = [p for p in ignored if p and not p.startswith("#")]
    for package in packages + ["pyproject.toml", "README.md", "deploy/entrypoint.py", "deploy/pip-install.sh"]:
        assert not any(Path(package).match(p) or package.startswith(p.rstrip("/") + "/") for p in ignored), package
    for secret in [".git", ".venv", "deploy/certs", "deploy/wheelhouse", "outputs"]:
        assert secret in ignored
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--mount=type=bind,target=/src" in dockerfile and "pip-install.sh project" in dockerfile


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_the_node_generator_makes_n_consistent_nodes(n):
    for tls in (False, True):
        override = nodes.override(n, tls=tls, gpu=tls)["services"]
        base = COMPOSE["services"]
        merged = {name: {**base.get(name, {}), **svc} for name, svc in override.items()}
        active = {name: s for name, s in merged.items() if "profiles" not in s}
        assert sorted(active, key=lambda s: int(s.split("-")[1])) == [f"supernode-{i}" for i in range(n)]
        configs = {name: node_config(shlex.split(s["command"])) for name, s in active.items()}
        assert {c["num-partitions"] for c in configs.values()} == {n}
        assert sorted(c["partition-id"] for c in configs.values()) == list(range(n))
        for name, service in active.items():
            assert service["image"] == base["supernode-0"]["image"] and service["init"] is True
            if tls:
                assert f"/certs/{name}.key" in service["command"]
                assert any(v.endswith(f"/{name}.key:/certs/{name}.key:ro") for v in service["volumes"])
                assert "deploy" in service
        for name in set(merged) - set(active):
            assert int(name.split("-")[1]) >= n
    with pytest.raises(ValueError):
        nodes.override(0)


def test_the_node_generator_for_three_nodes_is_the_compose_file_itself():
    override = nodes.override(3)["services"]
    for name, _argv in services("flower-supernode").items():
        assert override[name]["command"].split() == COMPOSE["services"][name]["command"].split()
    tls = nodes.override(3, tls=True)["services"]
    for name in services("flower-supernode"):
        assert tls[name]["command"].split() == TLS["services"][name]["command"].split()


def test_the_compose_files_are_valid_for_docker_compose_v1():
    """Debian's docker-compose 1.29 checks the files against the Compose Specification; where
    it is installed, every combination must pass (compose v2 reads the same specification)."""
    import shutil

    v1 = shutil.which("docker-compose")
    if v1 is None:
        pytest.skip("docker-compose (v1) is not installed: apt-get install docker-compose, or run deploy/engine.sh")
    env = {"PATH": "/usr/bin:/bin", "FEDMNIST_OUTPUTS": "/tmp/outputs"}
    for files in (
        [harness.COMPOSE_FILE],
        [harness.COMPOSE_FILE, harness.TLS_FILE, harness.GPU_FILE],
        [harness.SUPERLINK_HOST_FILE],
        [harness.NODE_HOST_FILE],
    ):
        args = [v1, "--project-directory", str(files[0].parent if len(files) == 1 else ROOT)]
        args += [a for f in files for a in ("-f", str(f))] + ["config", "-q"]
        proc = subprocess.run(
            args, capture_output=True, text=True, env={**env, "SUPERLINK_ADDRESS": "example.org:8443"}
        )
        assert proc.returncode == 0, proc.stderr
    # The node host names the SuperLink host or refuses to start, saying which setting is missing.
    proc = subprocess.run(
        [v1, "-f", str(harness.NODE_HOST_FILE), "config", "-q"], capture_output=True, text=True, env=env
    )
    assert proc.returncode != 0 and "write SUPERLINK_ADDRESS=HOST:PORT" in proc.stderr
    assert "into deploy/node-host/.env" in proc.stderr  # where every later command reads it too


# --- the same command lines, run for real on loopback ---------------------------------------


def _start(home, tmp_path: Path, source: Path, certs: Path | None) -> tuple[str, str | None]:
    """Start the SuperLink and the SuperNodes of ``source`` as local processes; return the
    SuperLink's address and the CA its clients need."""
    (superlink,) = services("flower-superlink", source).values()
    port = free_port()
    argv = harness.replace_flags(
        superlink, {"--host": "127.0.0.1", "--port": str(port), "--database": str(tmp_path / "state.db")}
    )
    argv += ["--control-api-address", f"127.0.0.1:{free_port()}"]  # keep off the default port
    ca = None
    if certs is not None:
        argv = harness.map_paths(argv, "/certs", certs)
        ca = str(certs / "ca.crt")
    proc = home.spawn("superlink", argv)
    scheme = "https" if ca else "http"
    harness.wait_healthy(
        f"{scheme}://127.0.0.1:{port}/health",
        ca=ca,
        alive=lambda: proc.poll() is None,
        log=lambda: home.log_tail("superlink"),
    )
    return f"127.0.0.1:{port}", ca


def _start_nodes(home, address: str, source: Path, certs: Path | None) -> None:
    for name, node in services("flower-supernode", source).items():
        local = {"--superlink": address, "--host": "127.0.0.1", "--port": str(free_port())}
        argv = harness.replace_flags(node, local)
        if certs is not None:
            argv = harness.map_paths(argv, "/certs", certs)
        env = {k: str(v) for k, v in COMPOSE["services"][name].get("environment", {}).items()}
        threads = {k: v for k, v in env.items() if k in supernode_threads()}
        assert threads == supernode_threads()  # the compose file caps the threads as the launcher does
        assert env.get("FEDMNIST_WARM_CLIENTAPP") == "${FEDMNIST_WARM_CLIENTAPP:-1}"  # warm unless switched off
        home.spawn(name, argv, env=threads)


def _run_one_round(home, conn: str, tmp_path: Path) -> dict:
    flwr_run(
        home,
        conn,
        # batches of 100 keep the round short; the point is the plumbing, not the accuracy
        {
            "num-server-rounds": 1,
            "fraction-train": 1.0,
            "local-epochs": 1,
            "batch-size": 100,
            "min-available-nodes": 3,
            "output-dir": str(tmp_path),
            "run-name": conn,
        },
        echo=False,
        timeout=900,
    )
    return json.loads((tmp_path / conn / "history.json").read_text())


@pytest.mark.slow
def test_the_compose_commands_run_one_round_on_loopback(tmp_path):
    with flower_home() as home:
        address, _ = _start(home, tmp_path, harness.COMPOSE_FILE, None)
        connection.write_connection("compose", address, home=home.path)
        _start_nodes(home, address, harness.COMPOSE_FILE, None)
        history = _run_one_round(home, "compose", tmp_path)
    assert history["status"] == "completed"
    assert history["rounds"][1]["clients-train"]["nodes"] == len(services("flower-supernode"))
    assert history["rounds"][1]["server"]["accuracy"] > 0.8


@pytest.mark.slow
def test_the_tls_commands_run_one_round_on_loopback_and_refuse_strangers(tmp_path):
    certs = tmp_path / "certs"
    made = subprocess.run([str(ROOT / "deploy" / "tls.sh"), "--dir", str(certs)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    with flower_home() as home:
        address, ca = _start(home, tmp_path, harness.TLS_FILE, certs)
        connection.write_connection("compose-tls", address, root_certificates=ca, home=home.path)
        connection.write_connection("compose-plain", address, home=home.path)
        # Without TLS the CLI cannot talk to it, and the probe says why.
        ok, message = connection.probe("compose-plain", address, None)
        assert not ok and "speaks TLS" in message and "--tls" in message
        refused = subprocess.run(["flwr", "list", "compose-plain"], env=home.env, capture_output=True, text=True)
        assert refused.returncode != 0
        assert connection.probe("compose-tls", address, ca)[0]
        # A SuperNode whose key nobody registered is turned away at once.
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(tmp_path / "stranger")], check=True
        )
        stranger = home.spawn(
            "stranger",
            [
                "flower-supernode",
                "--superlink",
                address,
                "--root-certificates",
                ca,
                "--auth-supernode-private-key",
                str(tmp_path / "stranger"),
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                "partition-id=0 num-partitions=3",
            ],
        )
        assert stranger.wait(60) != 0
        assert "Failed to activate SuperNode" in home.log_tail("stranger")
        assert "No SuperNode found with the given public key" in home.log_tail("superlink", 400)
        # The three registered ones join and train.
        for key in register.default_keys(certs):
            ok, message = register.register("compose-tls", key, env=home.env)
            assert ok, message
        assert register.register("compose-tls", certs / "supernode-0.key.pub", env=home.env) == (
            True,
            "supernode-0.key.pub: already registered",
        )
        _start_nodes(home, address, harness.TLS_FILE, certs)
        history = _run_one_round(home, "compose-tls", tmp_path)
    assert history["status"] == "completed"
    assert history["rounds"][1]["clients-train"]["nodes"] == 3
    assert history["rounds"][1]["server"]["accuracy"] > 0.8


def test_yaml_anchors_resolve_to_the_same_settings_for_every_supernode():
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    keys = {name: sorted(s) for name, s in raw["services"].items() if name.startswith("supernode-")}
    assert len({tuple(v) for v in keys.values()}) == 1


# --- the SuperLink host and the node host (deploy/superlink-host, deploy/node-host) ---------------

LINK_HOST = harness.load(harness.SUPERLINK_HOST_FILE)
NODE_HOST = harness.load(harness.NODE_HOST_FILE)


def _mounted_files(service: dict) -> list[str]:
    return [v.rsplit(":", 2)[0] if v.endswith((":ro", ":rw")) else v.rsplit(":", 1)[0] for v in service["volumes"]]


def test_on_the_superlink_host_only_the_proxy_is_published_and_operators_only_on_loopback():
    published = {name: s["ports"] for name, s in LINK_HOST["services"].items() if "ports" in s}
    assert list(published) == ["proxy", "mlflow"]  # the tracking UI: on loopback, see its own test
    public, control = published["proxy"]
    assert public.endswith(":8443") and control == "127.0.0.1:${FEDMNIST_CONTROL_PORT:-9443}:9443"
    # The SuperLink and the SuperExec sit on the internal network alone: no way in but the proxy.
    assert LINK_HOST["networks"]["inside"] == {"internal": True}
    for name in ("superlink", "superexec"):
        assert LINK_HOST["services"][name]["networks"] == ["inside"], name
    assert sorted(LINK_HOST["services"]["proxy"]["networks"]) == ["edge", "inside"]


def test_the_superlink_host_runs_tls_authentication_and_serverapps_in_a_container_without_keys():
    (argv,) = harness.commands(harness.SUPERLINK_HOST_FILE, "flower-superlink").values()
    link = parse_args_run_superlink().parse_args(argv[1:])
    assert not link.insecure and link.enable_supernode_auth and link.ssl_keyfile == "/certs/superlink.key"
    assert link.isolation == "process" and link.runtime_dependency_install is False
    (argv,) = harness.commands(harness.SUPERLINK_HOST_FILE, "flower-superexec").values()
    superexec = parse_args_run_superexec().parse_args(argv[1:])
    assert superexec.runtime_api_address == f"superlink:{link.port}" and not superexec.insecure
    mounts = _mounted_files(LINK_HOST["services"]["superexec"])
    assert not [m for m in mounts if m.endswith(".key") or "state" in m], mounts


def test_node_host_supernodes_join_through_the_proxy_and_clientapps_run_beside_them_without_keys():
    required = re.compile(r"\$\{SUPERLINK_ADDRESS:\?[^}]*\}")  # compose fills it in before splitting
    nodes_ = {
        name: shlex.split(required.sub("superlink.example.org:8443", s["command"]))
        for name, s in NODE_HOST["services"].items()
        if s["command"].startswith("flower-supernode")
    }
    assert sorted(nodes_) == ["supernode-0", "supernode-1", "supernode-2"]
    partitions = []
    for name, argv in nodes_.items():
        i = name.split("-")[1]
        node = parse_args_run_supernode().parse_args(argv[1:])
        assert node.superlink == "superlink.example.org:8443" and not node.insecure
        assert node.isolation == "process" and node.auth_supernode_private_key == "/certs/supernode.key"
        # Its Runtime API listens only on its address in the internal network it shares with its
        # ClientApp container: nothing on the node host's LAN side reaches it.
        assert node.host == "supernode-runtime"
        assert NODE_HOST["services"][name]["networks"] == {"default": {}, f"node-{i}": {"aliases": [node.host]}}
        assert f"${{FEDMNIST_PARTITION_{i}:-{i}}}" in node.node_config
        partitions.append(node.node_config)
        clientapp = NODE_HOST["services"][f"clientapp-{i}"]
        (app_argv,) = [shlex.split(clientapp["command"])]
        assert parse_args_run_superexec().parse_args(app_argv[1:]).runtime_api_address == f"{name}:9094"
        # The ClientApp's container: no key, no volume at all, and a network shared with its node only.
        assert "volumes" not in clientapp and clientapp["networks"] == [f"node-{i}"]
        assert NODE_HOST["networks"][f"node-{i}"] == {"internal": True}
        assert clientapp["depends_on"] == [name]  # its SuperExec retries until the node answers
        health = NODE_HOST["services"][name]["healthcheck"]["test"]
        assert health == ["CMD", "fedmnist-supervise", "--health", f"http://{node.host}:{node.port}/health"]
    assert len(set(partitions)) == 3


def test_the_proxy_serves_each_api_on_its_own_listener_only():
    conf = (harness.SUPERLINK_HOST_FILE.parent / "nginx.conf").read_text()
    servers = re.split(r"\n    server \{", conf)[1:]
    assert len(servers) == 2
    public, operators = servers
    assert "listen 8443 ssl;" in public and "listen 9443 ssl;" in operators
    expected = {
        "fleet": ["/v1/fleet/", "= /v1/fleet/push-object", "= /health", "/", "@too_large"],
        "control": ["/v1/control/", "= /health", "/"],
    }
    for server, api in ((public, "fleet"), (operators, "control")):
        locations = re.findall(r"location (=? ?\S+) \{", server)
        assert locations == expected[api], locations
        # a URI in proxy_pass: the normalised path goes on, never the raw one
        assert f"proxy_pass https://superlink/v1/{api}/;" in server
        assert re.search(r"location / \{\s*default_type text/plain;\s*return 403", server)
    assert "proxy_ssl_verify on;" in conf and "proxy_ssl_trusted_certificate /certs/ca.crt;" in conf
    assert re.search(r"upstream superlink \{\s*server superlink:8000;", conf)


def test_superexecs_look_for_work_as_often_in_the_image_as_under_the_launcher():
    """Flower's SuperExec waits 1 s between looks by default, paid by every deployed message; the
    image and the launcher set the same shorter interval, one Flower accepts."""
    from launcher.flower_home import SUPEREXEC_POLL_S, flower_env

    image = re.search(r"FLWR_SUPEREXEC_TASK_POLL_INTERVAL=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert image == SUPEREXEC_POLL_S == flower_env(Path("/tmp"))["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]
    assert 0.01 <= float(image) < 1.0


def _directives(block: str) -> dict[str, list[str]]:
    """``name value...;`` lines of an nginx block (nested blocks included), by name."""
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^\s*([a-z_]+)\s+([^;{]*);", block, re.M):
        found.setdefault(name, []).append(value.strip())
    return found


def test_the_proxy_answers_operators_only_from_the_hosts_loopback():
    conf = (harness.SUPERLINK_HOST_FILE.parent / "nginx.conf").read_text()
    operators = re.split(r"\n    server \{", conf)[2]
    # The gateway the loopback connections arrive from, written by the start script at every start.
    assert re.search(r"geo \$from_host_loopback \{\s*default 0;\s*include /tmp/fedmnist-operators.conf;", conf)
    assert re.search(r"if \(\$from_host_loopback = 0\) \{\s*return 403", operators)
    start = (harness.SUPERLINK_HOST_FILE.parent / "proxy-start.sh").read_text()
    assert "/tmp/fedmnist-operators.conf" in start and "/proc/net/route" in start
    dockerfile = (harness.SUPERLINK_HOST_FILE.parent / "proxy.Dockerfile").read_text()
    assert 'ENTRYPOINT ["fedmnist-proxy-start"]' in dockerfile


def test_the_public_listener_limits_what_one_address_and_one_slow_client_can_take():
    conf = (harness.SUPERLINK_HOST_FILE.parent / "nginx.conf").read_text()
    top = _directives(conf.split("\n    server {")[0])
    public = _directives(re.split(r"\n    server \{", conf)[1])
    # slow clients are closed; over a limit the answer is 503, the refusal Flower's nodes retry
    assert top["client_header_timeout"] == ["10s"] and top["client_body_timeout"] == ["10s"]
    assert top["limit_conn_status"] == ["503"] and top["limit_req_status"] == ["503"]
    assert "per_address 32" in public["limit_conn"] and "uploads 8" in public["limit_conn"]
    assert public["client_max_body_size"] == ["6m"] and public["keepalive_timeout"] == ["30s"]
    assert all(v == "on" for v in public["proxy_request_buffering"])
    # room for a flood beside the nodes, within the container's open-file limit
    connections = int(re.search(r"worker_connections (\d+);", conf).group(1))
    files = int(top["worker_rlimit_nofile"][0])
    assert connections >= 4096 and files >= 2 * connections
    assert LINK_HOST["services"]["proxy"]["ulimits"]["nofile"] == {"soft": files, "hard": files}
    # gone well within docker stop's 10 s
    assert top["worker_shutdown_timeout"] == ["3s"]
