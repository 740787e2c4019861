"""What a stranger can do at a SuperLink address: try each thing, say what happened.

    python deploy/stranger.py HOST:PORT --ca ca.crt [--closed HOST:PORT ...] [--json]

A stranger here is anyone who can reach the address and holds the deployment's public CA
certificate and a key of their own, but is no operator. At a SuperLink host's public
listener (deploy/superlink-host) every action below must be refused; at a bare Flower 1.41
SuperLink every one of them succeeds, because nothing in open-source Flower authenticates a
Control API caller. The flwr CLI actions use the real ``flwr`` command with a connection of
their own (a temporary FLWR_HOME); the others are plain HTTPS requests.

    list runs          flwr ls
    list nodes         flwr supernode ls
    register a key     flwr supernode register (a fresh EC key)
    submit an app      flwr run (a one-file app)
    read logs          flwr log
    acquire a task     POST /v1/runtime/acquire-task (how a SuperExec takes a run's token)
    API docs           GET /docs, GET /openapi.json
    path tricks        /v1/fleet/../control/list-runs, percent-encoded

``--closed HOST:PORT`` (repeatable) names addresses that must not answer at all from where
this runs (the operators' listener, the SuperLink itself): a TCP connection must fail.

Exit status: 0 when every action was refused and every --closed address was closed, 1 when
anything got through, 2 for bad arguments. ``--json`` prints one object per action.
Runs with the Python that has ``flwr`` and ``cryptography`` (the project's .venv, or the image).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

CONNECTION = "stranger"
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "stranger-app"
version = "1.0.0"
dependencies = ["flwr"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "stranger"

[tool.flwr.app.components]
serverapp = "app:server"
clientapp = "app:client"

[tool.flwr.app.config]
"""
APP_CODE = """\
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

server = ServerApp()
client = ClientApp()
"""


@dataclass
class Attempt:
    action: str
    refused: bool
    detail: str


def flwr_command() -> str:
    beside = Path(sys.executable).parent / "flwr"
    return str(beside) if beside.exists() else (shutil.which("flwr") or "flwr")


def _flwr(home: Path, *args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    try:
        proc = subprocess.run([flwr_command(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "no answer within 120 s"
    return proc.stdout + proc.stderr


def _cli_attempt(action: str, output: str) -> Attempt:
    """Refused means the door said no (HTTP 403) or there was no door (no connection). Any
    other answer, an error from the Control API included ("Run ID not found"), came from
    behind the door. Flower's CLI exits 0 on many errors, so its words are read, not its status."""
    text = " ".join(output.split())
    if "403 Forbidden" in text:
        return Attempt(action, True, "HTTP 403 Forbidden")
    if "Connection to the SuperLink is unavailable" in text or "no answer within" in text:
        return Attempt(action, True, "no connection")
    return Attempt(action, False, text[-200:])


def _http(base: str, ca: str, method: str, path: str) -> Attempt:
    action = f"{method} {path}"
    context = ssl.create_default_context(cafile=ca)
    request = urllib.request.Request(
        base + path,
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as resp:
            return Attempt(action, False, f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        # 403 is the proxy's refusal; anything else came from the API behind it.
        return Attempt(action, exc.code == 403, f"HTTP {exc.code} {exc.read(120).decode(errors='replace').strip()}")
    except OSError as exc:
        return Attempt(action, True, f"no connection ({exc})")


def _closed(address: str) -> Attempt:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return Attempt(f"connect {address}", False, "a TCP connection was accepted")
    except OSError as exc:
        return Attempt(f"connect {address}", True, f"no connection ({exc.strerror or exc})")


def fresh_public_key() -> bytes:
    """The OpenSSH public half of a new EC P-384 key, as `ssh-keygen -t ecdsa -b 384` makes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" stranger\n"


def attempts(address: str, ca: str, closed: list[str]) -> list[Attempt]:
    found: list[Attempt] = []
    with tempfile.TemporaryDirectory(prefix="stranger-") as tmp:
        home = Path(tmp) / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{address}"\nroot-certificates = "{Path(ca).resolve()}"\n'
        )
        key = Path(tmp) / "stranger.key.pub"
        key.write_bytes(fresh_public_key())
        app = Path(tmp) / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        (app / "app.py").write_text(APP_CODE)

        found.append(_cli_attempt("list runs (flwr ls)", _flwr(home, "ls", CONNECTION, "--format", "json")))
        found.append(
            _cli_attempt(
                "list nodes (flwr supernode ls)", _flwr(home, "supernode", "ls", CONNECTION, "--format", "json")
            )
        )
        found.append(
            _cli_attempt(
                "register a key (flwr supernode register)", _flwr(home, "supernode", "register", str(key), CONNECTION)
            )
        )
        found.append(_cli_attempt("submit an app (flwr run)", _flwr(home, "run", str(app), CONNECTION, cwd=app)))
        found.append(_cli_attempt("read logs (flwr log)", _flwr(home, "log", "1", CONNECTION)))

    base = f"https://{address}"
    for method, path in [
        ("POST", "/v1/runtime/acquire-task"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/control/list-runs"),
        ("POST", "/v1/fleet/../control/list-runs"),
        ("POST", "/v1/fleet/%2e%2e/control/list-runs"),
        ("POST", "/v1/fleet/..%2fcontrol/list-runs"),
    ]:
        found.append(_http(base, ca, method, path))
    found.extend(_closed(a) for a in closed)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="HOST:PORT of the listener a stranger can reach")
    parser.add_argument("--ca", required=True, help="the deployment's CA certificate (public)")
    parser.add_argument(
        "--closed",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="an address that must not accept a connection from here (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per action")
    args = parser.parse_args(argv)
    if not Path(args.ca).is_file():
        print(
            f"stranger.py: --ca {args.ca}: no such file (the deployment's ca.crt, from deploy/tls.sh)", file=sys.stderr
        )
        return 2
    found = attempts(args.address, args.ca, args.closed)
    for attempt in found:
        if args.json:
            print(json.dumps(asdict(attempt)))
        else:
            print(f"{'refused' if attempt.refused else 'GOT THROUGH':12} {attempt.action}: {attempt.detail}")
    through = [a.action for a in found if not a.refused]
    if through:
        print(f"stranger.py: {len(through)} of {len(found)} got through at {args.address}", file=sys.stderr)
        return 1
    print(f"stranger.py: all {len(found)} refused at {args.address}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
