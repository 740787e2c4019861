"""Register SuperNode public keys with a SuperLink that runs with --enable-supernode-auth.

    .venv/bin/python deploy/register.py docker                  # every deploy/certs/supernode-N.key.pub
    .venv/bin/python deploy/register.py docker path/to/key.pub  # just these

It runs ``flwr supernode register KEY CONNECTION --name supernode-N`` for each key. A key the
SuperLink already knows counts as done, so running it again is safe. Only registered keys
can join: a SuperNode whose key is not registered is turned away when it connects (the
SuperLink logs "No SuperNode found with the given public key", the SuperNode exits with
Flower's exit code 305 and docker restarts it until its key is registered).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALREADY = "Public key already in use"


def certs_dir() -> Path:
    return Path(os.environ.get("FEDMNIST_CERTS") or ROOT / "deploy" / "certs")


def default_keys(folder: Path) -> list[Path]:
    keys = [p for p in folder.glob("supernode-*.key.pub") if re.fullmatch(r"supernode-\d+\.key\.pub", p.name)]
    return sorted(keys, key=lambda p: int(p.name.split("-")[1].split(".")[0]))


def flwr_command() -> str:
    beside = Path(sys.executable).parent / "flwr"  # the flwr of this Python's environment
    return str(beside) if beside.exists() else (shutil.which("flwr") or "flwr")


def register(connection: str, key: Path, env: dict[str, str] | None = None) -> tuple[bool, str]:
    """``(ok, what happened)`` for one key; ok is also true when it was registered before."""
    if not key.is_file():
        return False, f"{key}: no such public key file: make the key pairs with deploy/tls.sh"
    name = key.name.removesuffix(".key.pub").removesuffix(".pub")
    proc = subprocess.run(
        [flwr_command(), "supernode", "register", str(key), connection, "--name", name],
        capture_output=True,
        text=True,
        env=env,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode == 0 and (match := re.search(r"SuperNode (\d+) registered", out)):
        return True, f"{key.name}: registered as node {match.group(1)}"
    if ALREADY in out:
        return True, f"{key.name}: already registered"
    last = [line.strip(" │╭╮╰╯─") for line in out.splitlines() if line.strip(" │╭╮╰╯─")]
    return False, f"{key.name}: not registered: {' '.join(last[-3:]) or f'flwr exited with {proc.returncode}'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("connection", help="the flwr connection of the SuperLink (deploy/connection.py NAME --tls)")
    parser.add_argument("keys", nargs="*", type=Path, help="public keys (default: deploy/certs/supernode-N.key.pub)")
    args = parser.parse_args(argv)
    keys = args.keys or default_keys(certs_dir())
    if not keys:
        print(f"register.py: no supernode-N.key.pub in {certs_dir()}: run deploy/tls.sh first", file=sys.stderr)
        return 1
    failed = 0
    for key in keys:
        ok, message = register(args.connection, key)
        print(message, file=sys.stdout if ok else sys.stderr)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
