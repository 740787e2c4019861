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
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from deploy import connection, harness, nodes, register
from launcher.flower import flower_home, free_port, flwr_run, supernode_threads

ROOT = harness.ROOT
COMPOSE = harness.load(harness.COMPOSE_FILE)
TLS = harness.load(harness.TLS_FILE)
GPU = harness.load(harness.GPU_FILE)


def services(kind: str, path: Path = harness.COMPOSE_FILE) -> dict[str, list[str]]:
    return harness.commands(path, kind)


def node_config(argv: list[str]) -> dict[str, int]:
    text = _parse_args_run_supernode().parse_args(argv[1:]).node_config
    return {k: int(v) for k, v in (pair.split("=") for pair in text.split())}


def mount_target(volume: str) -> str:
    """``SOURCE:TARGET[:ro]`` -> TARGET (SOURCE may hold ``${VAR:-default}``)."""
    parts = volume.rsplit(":", 2)
    return parts[1] if parts[-1] in ("ro", "rw") else volume.rsplit(":", 1)[1]


def superlink_args(path: Path = harness.COMPOSE_FILE):
    (argv,) = services("flower-superlink", path).values()
    return _parse_args_run_superlink().parse_args(argv[1:])


@pytest.mark.parametrize("path", [harness.COMPOSE_FILE, harness.TLS_FILE], ids=["insecure", "tls"])
def test_every_command_is_accepted_by_flowers_own_parsers(path):
    args = superlink_args(path)
    assert args.host == "0.0.0.0" and args.database == "/state/state.db"
    assert args.runtime_dependency_install is False  # the image holds every dependency, offline
    nodes_ = services("flower-supernode", path)
    assert sorted(nodes_) == ["supernode-0", "supernode-1", "supernode-2"]
    for argv in nodes_.values():
        node = _parse_args_run_supernode().parse_args(argv[1:])
        assert node.superlink == f"superlink:{args.port}"  # the service name and the port it serves
        assert node.host == "127.0.0.1"  # the ClientApp's API stays inside the container


def test_the_tls_switch_turns_on_tls_and_authentication_everywhere():
    plain, tls = superlink_args(), superlink_args(harness.TLS_FILE)
    assert plain.insecure and not plain.enable_supernode_auth
    assert not tls.insecure and tls.enable_supernode_auth
    assert (tls.ssl_ca_certfile, tls.ssl_certfile, tls.ssl_keyfile) == (
        "/certs/ca.crt", "/certs/superlink.crt", "/certs/superlink.key"
    )
    mounts = {mount_target(v): v for v in TLS["services"]["superlink"]["volumes"]}
    assert set(mounts) == {"/certs/ca.crt", "/certs/superlink.crt", "/certs/superlink.key"}
    assert all(v.endswith(":ro") for v in mounts.values())
    for name, argv in services("flower-supernode", harness.TLS_FILE).items():
        node = _parse_args_run_supernode().parse_args(argv[1:])
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


def test_the_port_is_published_on_loopback_only_by_default():
    (port,) = COMPOSE["services"]["superlink"]["ports"]
    assert port == "${FEDMNIST_BIND:-127.0.0.1}:${FEDMNIST_PORT:-8000}:8000"
    assert all("ports" not in s for n, s in COMPOSE["services"].items() if n != "superlink")


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
        assert service["init"] is True, name
        assert service["restart"] == "on-failure", name
        assert service["healthcheck"]["test"][:3] == ["CMD", "fedmnist-entrypoint", "--health"], name
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
        configs = {name: node_config(shlex.split(s["command"]))
                   for name, s in active.items()}
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
    for name, argv in services("flower-supernode").items():
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
    for files in ([harness.COMPOSE_FILE], [harness.COMPOSE_FILE, harness.TLS_FILE, harness.GPU_FILE]):
        args = [v1, "--project-directory", str(ROOT)] + [a for f in files for a in ("-f", str(f))] + ["config", "-q"]
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr


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
        f"{scheme}://127.0.0.1:{port}/health", ca=ca, alive=lambda: proc.poll() is None,
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
        assert env == supernode_threads()  # the compose file caps the threads as the launcher does
        home.spawn(name, argv, env=env)


def _run_one_round(home, conn: str, tmp_path: Path) -> dict:
    flwr_run(
        home,
        conn,
        # batches of 100 keep the round short; the point is the plumbing, not the accuracy
        {"num-server-rounds": 1, "fraction-train": 1.0, "local-epochs": 1, "batch-size": 100,
         "min-available-nodes": 3, "output-dir": str(tmp_path), "run-name": conn},
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
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(tmp_path / "stranger")],
                       check=True)
        stranger = home.spawn("stranger", [
            "flower-supernode", "--superlink", address, "--root-certificates", ca,
            "--auth-supernode-private-key", str(tmp_path / "stranger"), "--host", "127.0.0.1",
            "--port", str(free_port()), "--node-config", "partition-id=0 num-partitions=3",
        ])
        assert stranger.wait(60) != 0
        assert "Failed to activate SuperNode" in home.log_tail("stranger")
        assert "No SuperNode found with the given public key" in home.log_tail("superlink", 400)
        # The three registered ones join and train.
        for key in register.default_keys(certs):
            ok, message = register.register("compose-tls", key, env=home.env)
            assert ok, message
        assert register.register("compose-tls", certs / "supernode-0.key.pub", env=home.env) == (
            True, "supernode-0.key.pub: already registered"
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
