"""Tools for the tests that run docker-compose.yml: its commands as local processes
(tests/test_compose.py) and the real containers (tests/test_containers.py).

Standard library, PyYAML and the launcher's health wait; nothing here starts anything by itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from launcher.runtime import wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
TLS_FILE = ROOT / "deploy" / "tls.yml"
GPU_FILE = ROOT / "deploy" / "gpu.yml"
SUPERLINK_HOST_FILE = ROOT / "deploy" / "superlink-host" / "docker-compose.yml"
NODE_HOST_FILE = ROOT / "deploy" / "node-host" / "docker-compose.yml"


class HarnessError(RuntimeError):
    """Something the deployment under test did not do in time, with what it logged."""


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def commands(path: Path, kind: str | None = None) -> dict[str, list[str]]:
    """Service name -> its ``command`` as argv, for services running ``kind`` (all if None)."""
    out = {}
    for name, service in load(path)["services"].items():
        if "command" not in service:
            continue
        argv = shlex.split(service["command"]) if isinstance(service["command"], str) else list(service["command"])
        if kind is None or argv[0] == kind:
            out[name] = argv
    return out


def replace_flags(argv: Sequence[str], values: dict[str, str]) -> list[str]:
    """The same command line with the value after each named flag replaced (the flag must be there)."""
    out = list(argv)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out


def map_paths(argv: Sequence[str], prefix: str, folder: Path) -> list[str]:
    """Every argument under ``prefix`` (a mount point such as /certs) moved into ``folder``."""
    return [str(folder / a[len(prefix) :].lstrip("/")) if a.startswith(prefix + "/") else a for a in argv]


def wait_healthy(
    url: str,
    timeout: float = 60,
    ca: str | os.PathLike | None = None,
    alive: Callable[[], bool] | None = None,
    log: Callable[[], str] | None = None,
) -> None:
    """Poll ``url`` (a SuperLink's /health) until it answers 200, with the launcher's
    :func:`~launcher.runtime.wait_until_healthy`. ``alive`` says whether the process behind it
    still runs; ``log`` gives its output for the error."""

    def check() -> None:
        if alive is not None and not alive():
            raise HarnessError(f"{url}: the process exited before it answered:\n{log() if log else ''}")

    if not wait_until_healthy(url, timeout, ca=ca, check=check, request_timeout=2):
        raise HarnessError(f"{url} did not answer within {timeout:g} s:\n{log() if log else ''}")


# --- docker --------------------------------------------------------------------------------


def docker_cli() -> str | None:
    """A docker client that reaches an engine, or None."""
    for cli in filter(None, [os.environ.get("DOCKER"), shutil.which("docker"), "/usr/bin/docker"]):
        if Path(cli).exists() or shutil.which(cli):
            try:
                if subprocess.run([cli, "info"], capture_output=True, timeout=20).returncode == 0:
                    return cli
            except (OSError, subprocess.TimeoutExpired):
                continue
    return None


def compose_cli(docker: str) -> list[str] | None:
    """``docker compose`` (v2) if the plugin is there, else ``docker-compose`` (v1), else None.
    ``$FEDMNIST_COMPOSE`` (e.g. "docker-compose") picks one."""
    if chosen := os.environ.get("FEDMNIST_COMPOSE"):
        return shlex.split(chosen)
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if v1 := shutil.which("docker-compose"):
        return [v1]
    return None


class Compose:
    """One compose project (its own name, so it shares nothing with anything else). Relative
    paths in its files are read from ``directory``: the checkout for docker-compose.yml, the
    file's own folder for the host files under deploy/."""

    def __init__(self, cli: list[str], docker: str, project: str, env: dict[str, str], directory: Path = ROOT) -> None:
        self.cli, self.docker, self.project, self.directory = cli, docker, project, directory
        self.env = {**os.environ, **env}

    def run(self, files: Sequence[Path], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [*self.cli, "--project-name", self.project, "--project-directory", str(self.directory)]
        for f in files:
            argv += ["-f", str(f)]
        return subprocess.run(
            [*argv, *args], env=self.env, cwd=self.directory, capture_output=True, text=True, timeout=timeout
        )

    def __call__(self, files: Sequence[Path], *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = self.run(files, *args, timeout=timeout)
        if check and proc.returncode != 0:
            raise HarnessError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    def network(self, name: str = "default") -> str:
        """The engine's name of one of the project's networks (both compose versions)."""
        return f"{self.project}_{name}"

    def container(self, service: str) -> str | None:
        out = subprocess.run(
            [
                self.docker,
                "ps",
                "-aq",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={service}",
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
        return out[0] if out else None

    def logs(self, service: str, tail: int = 60) -> str:
        cid = self.container(service)
        if cid is None:
            return f"({service}: no container)"
        proc = subprocess.run([self.docker, "logs", "--tail", str(tail), cid], capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def health(self, service: str) -> str:
        cid = self.container(service)
        if cid is None:
            return "missing"
        out = subprocess.run(
            [self.docker, "inspect", "--format", "{{json .State}}", cid], capture_output=True, text=True
        ).stdout
        state = json.loads(out or "{}")
        return (state.get("Health") or {}).get("Status") or state.get("Status", "unknown")

    def wait_healthy(self, services: Sequence[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return
            time.sleep(1)
        raise HarnessError(
            f"not healthy within {timeout:g} s: {states}\n" + "\n".join(self.logs(s, 20) for s in services)
        )

    def inspect(self, service: str) -> dict:
        cid = self.container(service)
        if cid is None:
            raise HarnessError(f"{service}: no container")
        out = subprocess.run([self.docker, "inspect", cid], capture_output=True, text=True, check=True).stdout
        return json.loads(out)[0]

    def addresses(self, service: str) -> dict[str, str]:
        """The container's address on each of its networks, by network name."""
        networks = self.inspect(service)["NetworkSettings"]["Networks"]
        return {name: net["IPAddress"] for name, net in networks.items() if net.get("IPAddress")}

    def pids(self, service: str) -> list[int]:
        """Its processes' ids as this machine sees them."""
        cid = self.container(service)
        out = subprocess.run([self.docker, "top", cid, "-eo", "pid"], capture_output=True, text=True).stdout
        return [int(word) for word in out.split()[1:] if word.isdigit()]

    def rss_mb(self, service: str) -> float:
        """Resident memory of all its processes, in MB (read from /proc on this machine)."""
        total_kb = 0
        for pid in self.pids(service):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:  # gone meanwhile
                continue
            total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return total_kb / 1024

    def exec(self, service: str, *argv: str, user: str | None = None) -> subprocess.CompletedProcess:
        cmd = [self.docker, "exec", *(["--user", user] if user else []), self.container(service) or service, *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, argv in {
            "containers": ["ps", "-aq", "--filter", label],
            "networks": ["network", "ls", "-q", "--filter", label],
            "volumes": ["volume", "ls", "-q", "--filter", label],
        }.items():
            found[kind] = subprocess.run([self.docker, *argv], capture_output=True, text=True).stdout.split()
        return {k: v for k, v in found.items() if v}
