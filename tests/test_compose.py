"""docker-compose.yml: its commands are valid for Flower 1.41, describe a consistent
federation, and (slow) run the app for real when started on loopback.

No Docker engine is needed: the slow test runs each service's own command line as a
local process, with the compose network's names and ports mapped to free loopback ports.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from launcher.flower import _wait_healthy, flower_home, free_port, flwr_run, supernode_threads

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services(kind: str) -> dict[str, list[str]]:
    """Service name -> its command as argv, for the services running ``kind``."""
    commands = {name: shlex.split(svc["command"]) for name, svc in COMPOSE["services"].items()}
    return {name: argv for name, argv in commands.items() if argv[0] == kind}


def node_config(argv: list[str]) -> dict[str, int]:
    text = _parse_args_run_supernode().parse_args(argv[1:]).node_config
    return {k: int(v) for k, v in (pair.split("=") for pair in text.split())}


def test_every_command_is_accepted_by_flowers_own_parsers():
    (superlink,) = services("flower-superlink").values()
    args = _parse_args_run_superlink().parse_args(superlink[1:])
    assert args.insecure and args.host == "0.0.0.0"
    nodes = services("flower-supernode")
    assert len(nodes) >= 2
    for argv in nodes.values():
        node = _parse_args_run_supernode().parse_args(argv[1:])
        assert node.superlink == f"superlink:{args.port}"  # the service name and the port it serves


def test_the_supernodes_cover_every_partition_once():
    configs = [node_config(argv) for argv in services("flower-supernode").values()]
    n = configs[0]["num-partitions"]
    assert all(c["num-partitions"] == n for c in configs)
    assert sorted(c["partition-id"] for c in configs) == list(range(n))


def test_run_folders_reach_the_host_and_the_image_holds_every_package():
    assert "./outputs:/runs" in COMPOSE["services"]["superlink"]["volumes"]
    port = _parse_args_run_superlink().parse_args(services("flower-superlink")["superlink"][1:]).port
    assert f"{port}:{port}" in COMPOSE["services"]["superlink"]["ports"]
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"][
        "packages"
    ]
    copied = re.findall(r"^COPY (\S+) \1$", (ROOT / "Dockerfile").read_text(), re.M)
    assert sorted(copied) == sorted(packages)


@pytest.mark.slow
def test_the_compose_commands_run_one_round_on_loopback(tmp_path):
    with flower_home() as home:
        (superlink,) = services("flower-superlink").values()
        port = free_port()
        argv = _replace(superlink, {"--host": "127.0.0.1", "--port": str(port)})
        argv += ["--control-api-address", f"127.0.0.1:{free_port()}"]  # keep off the default port
        proc = home.spawn("superlink", argv)
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", home, "superlink")
        home.add_connection("compose", f"127.0.0.1:{port}")
        for name, node in services("flower-supernode").items():
            local = {"--superlink": f"127.0.0.1:{port}", "--host": "127.0.0.1", "--port": str(free_port())}
            env = {k: str(v) for k, v in COMPOSE["services"][name].get("environment", {}).items()}
            assert env == supernode_threads()  # the compose file caps the threads as the launcher does
            home.spawn(name, _replace(node, local), env=env)
        flwr_run(
            home,
            "compose",
            {"num-server-rounds": 1, "fraction-train": 1.0, "local-epochs": 1, "output-dir": str(tmp_path),
             "run-name": "compose"},
            echo=False,
        )
    history = json.loads((tmp_path / "compose" / "history.json").read_text())
    assert history["status"] == "completed"
    assert history["rounds"][1]["clients-train"]["nodes"] == len(services("flower-supernode"))
    assert history["rounds"][1]["server"]["accuracy"] > 0.9


def _replace(argv: list[str], values: dict[str, str]) -> list[str]:
    """The same command line with the value after each named flag replaced."""
    out = list(argv)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out
