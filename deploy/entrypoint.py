#!/opt/venv/bin/python
"""Entrypoint of the fedavg-mnist image: check a Flower command's inputs, then run it unprivileged.

    fedmnist-entrypoint flower-superlink ARGS...   (or flower-supernode, or any command)
    fedmnist-entrypoint --health URL [--ca CA_FILE]  (docker healthcheck: exit 0 when URL answers 200)

Before Flower starts, every file its flags name (certificates, keys) is checked: present,
a file (docker makes an empty directory in place of a bind-mounted host file that is
missing), readable, parseable, and a SuperLink's certificate must belong to its key and be
signed by its CA. A SuperNode's ``--node-config`` must hold a whole-number ``partition-id``
in ``0..num-partitions-1``. Each problem is one line that names the file or value and says
what to do; the container then exits with status 2.

Started as root (docker-compose.yml does, nothing else needs it), the entrypoint picks the
user to run as: the owner of the first path in ``$FEDMNIST_RUN_AS_OWNER_OF`` that is not
owned by root (for the SuperLink: the ``./outputs`` folder on the host, then the compose
file), else the image's ``fedmnist`` user. It hands that user the folders named in
``$FEDMNIST_WRITABLE`` (and an ``./outputs`` that docker created as root), copies the
certificates and keys into a private folder that user can read (host key files are often
mode 600 and owned by someone else), drops every privilege and runs the command. So run
folders on the host belong to whoever owns the checkout, and nothing runs as root. A SuperNode
runs under ``fedmnist-supervise`` (deploy/supervise.py), which starts it again when Flower has
given up its connection to the SuperLink. A SuperNode or SuperExec whose service sets
``FEDMNIST_WARM_CLIENTAPP=1`` runs under ``fedmnist-warm`` (launcher/warm.py): its ClientApp
processes are forked, as this same unprivileged user, from a server with Flower and PyTorch loaded.

Standard library only, plus ``cryptography`` (a Flower dependency) for the TLS checks and,
for a SuperNode only, this project's ``task.node_config`` (itself standard library only,
installed in the image's /opt/venv, which runs this file): the range check of
``partition-id`` and ``num-partitions`` is the ClientApp's own, written once there.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import stat
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_USER = "fedmnist"
SUPERVISOR = "fedmnist-supervise"  # deploy/supervise.py, installed beside this file in the image
WARM = "fedmnist-warm"  # launcher/warm.py, installed with the project
SECRETS_DIR = Path("/run/fedmnist-secrets")
# Flags whose value is a file that must exist before the Flower process starts.
FILE_FLAGS = {
    "--ssl-ca-certfile": "CA certificate",
    "--ssl-certfile": "certificate",
    "--ssl-keyfile": "private key",
    "--root-certificates": "CA certificate",
    "--auth-supernode-private-key": "SuperNode private key",
}
# Of those, the ones only their own user may read.
PRIVATE_FLAGS = ("--ssl-keyfile", "--auth-supernode-private-key")
HINT = "make the certificates and keys with deploy/tls.sh (see docs/deployment.md)"


class InputError(Exception):
    """One problem with a command's inputs, told in one line."""


@dataclass
class Command:
    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)  # flag -> path

    @classmethod
    def parse(cls, argv: list[str]) -> Command:
        files = {}
        for i, arg in enumerate(argv):
            flag, eq, value = arg.partition("=")
            if flag in FILE_FLAGS:
                if eq:
                    files[flag] = value
                elif i + 1 < len(argv):
                    files[flag] = argv[i + 1]
        return cls(list(argv), files)

    @property
    def program(self) -> str:
        return os.path.basename(self.argv[0]) if self.argv else ""

    def value(self, flag: str) -> str | None:
        for i, arg in enumerate(self.argv):
            if arg == flag and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return None

    def replace_file(self, flag: str, new: str) -> None:
        for i, arg in enumerate(self.argv):
            if arg == flag:
                self.argv[i + 1] = new
            elif arg.startswith(flag + "="):
                self.argv[i] = f"{flag}={new}"
        self.files[flag] = new


def parse_node_config(text: str) -> dict[str, str]:
    """``"partition-id=0 num-partitions=3"`` -> ``{"partition-id": "0", ...}`` (quotes stripped)."""
    out = {}
    for pair in text.split():
        key, eq, value = pair.partition("=")
        if not eq:
            raise InputError(f"--node-config {text!r}: {pair!r} is not key=value")
        out[key.strip()] = value.strip().strip("\"'")
    return out


def check_node_config(command: Command) -> None:
    """A SuperNode must say which shard it holds: 0 <= partition-id < num-partitions."""
    text = command.value("--node-config")
    where = "flower-supernode"
    if text is None:
        raise InputError(
            f'{where}: no --node-config: give it "partition-id=N num-partitions=M" (N from 0 to M-1), '
            "or the ClientApp cannot tell which part of MNIST is its own"
        )
    from task.node_config import NUM_PARTITIONS, PARTITION_ID, partition_problem  # the project, in /opt/venv

    config = parse_node_config(text)
    values = {}
    for key in (PARTITION_ID, NUM_PARTITIONS):
        if key not in config:
            raise InputError(f'{where}: --node-config "{text}" has no {key}: give both partition-id and num-partitions')
        try:
            values[key] = int(config[key])
        except ValueError:
            raise InputError(f'{where}: --node-config "{text}": {key}={config[key]} is not a whole number') from None
    problem = partition_problem(values[PARTITION_ID], values[NUM_PARTITIONS])
    if problem is not None:
        raise InputError(f'{where}: --node-config "{text}": {problem}')


def check_files(command: Command) -> None:
    for flag, path in command.files.items():
        what = FILE_FLAGS[flag]
        p = Path(path)
        if p.is_dir():
            raise InputError(
                f"{flag} {path}: is a directory, not the {what}: the host file mounted there was missing when "
                f"the container was created (docker then makes an empty directory; delete it on the host): {HINT}"
            )
        if not p.exists():
            raise InputError(f"{flag} {path}: {what} not found: {HINT}")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise InputError(f"{flag} {path}: cannot read the {what} ({exc.strerror})") from None
        if not data.strip():
            raise InputError(f"{flag} {path}: the {what} is empty: {HINT}")
    check_tls(command)


def check_tls(command: Command) -> None:
    """Parse what can be parsed; a SuperLink's certificate must match its key and its CA."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:  # not in this Python: Flower will say what is wrong
        return

    def cert(flag: str) -> x509.Certificate:
        path = command.files[flag]
        try:
            return x509.load_pem_x509_certificate(Path(path).read_bytes())
        except ValueError:
            raise InputError(f"{flag} {path}: not a PEM certificate: {HINT}") from None

    for flag in ("--ssl-ca-certfile", "--root-certificates"):
        if flag in command.files:
            cert(flag)
    if "--auth-supernode-private-key" in command.files:
        path = command.files["--auth-supernode-private-key"]
        try:
            key = serialization.load_ssh_private_key(Path(path).read_bytes(), None)
        except (ValueError, TypeError):
            raise InputError(
                f"--auth-supernode-private-key {path}: not an unencrypted OpenSSH private key "
                f'(make one with: ssh-keygen -t ecdsa -b 384 -N "" -f KEY): {HINT}'
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError(f"--auth-supernode-private-key {path}: Flower needs an EC (ecdsa) key: {HINT}")
    if "--ssl-certfile" in command.files and "--ssl-keyfile" in command.files:
        certificate = cert("--ssl-certfile")
        key_path = command.files["--ssl-keyfile"]
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
        except (ValueError, TypeError):
            raise InputError(f"--ssl-keyfile {key_path}: not an unencrypted PEM private key: {HINT}") from None
        pem = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.PEM
        if key.public_key().public_bytes(enc, pem) != certificate.public_key().public_bytes(enc, pem):
            raise InputError(
                f"--ssl-keyfile {key_path}: this key does not belong to the certificate "
                f"{command.files['--ssl-certfile']}: make both again with deploy/tls.sh --force"
            )
        if "--ssl-ca-certfile" in command.files:
            ca = cert("--ssl-ca-certfile")
            try:
                certificate.verify_directly_issued_by(ca)
            except Exception:  # wrong issuer name (ValueError) or signature (InvalidSignature)
                raise InputError(
                    f"--ssl-certfile {command.files['--ssl-certfile']}: not signed by the CA in "
                    f"{command.files['--ssl-ca-certfile']}: make both again with deploy/tls.sh --force"
                ) from None


def check(command: Command) -> None:
    check_files(command)
    if command.program == "flower-supernode":
        check_node_config(command)


def announce(command: Command) -> str | None:
    """One line on what a SuperNode or SuperLink is about to do (Flower's own retry messages do
    not say where they try to connect)."""
    tls = "TLS" if "--insecure" not in command.argv else "no TLS"
    if command.program == "flower-supernode":
        auth = ", authenticated" if "--auth-supernode-private-key" in command.files else ""
        return (
            f'SuperNode with --node-config "{command.value("--node-config")}": connecting to the SuperLink at '
            f"{command.value('--superlink') or '127.0.0.1:8000'} ({tls}{auth}); it retries until the SuperLink answers"
        )
    if command.program == "flower-superlink":
        auth = ", SuperNode authentication" if "--enable-supernode-auth" in command.argv else ""
        isolation = ", ServerApps run by a separate SuperExec" if command.value("--isolation") == "process" else ""
        return f"SuperLink on port {command.value('--port') or '8000'} ({tls}{auth}{isolation})"
    if command.program == "flower-superexec":
        return f"SuperExec: runs the apps of the Runtime API at {command.value('--runtime-api-address')} ({tls})"
    return None


# --- running as root: pick the user, hand it what it needs, drop privileges -----------------


def target_user(owner_of: list[str]) -> tuple[int, int]:
    for path in owner_of:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_uid != 0:
            return st.st_uid, st.st_gid
    pw = pwd.getpwnam(IMAGE_USER)
    return pw.pw_uid, pw.pw_gid


def hand_over(paths: list[str], uid: int, gid: int) -> None:
    """Make the folders in ``paths`` the user's: each folder itself, and recursively what is
    in it except other mounts (so a bind-mounted ./outputs is never walked)."""
    for path in paths:
        top = Path(path)
        if not top.exists():
            top.mkdir(parents=True)
        os.chown(top, uid, gid)
        for root, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)


def claim_if_docker_made(path: str, uid: int, gid: int) -> None:
    """A bind-mount source that was missing on the host is created by docker, owned by root:
    give it to the user, or it cannot write there."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode) and st.st_uid == 0:
        os.chown(path, uid, gid)


def copy_secrets(command: Command, uid: int, gid: int) -> None:
    """Copy certificates and keys where the user can read them, and point the command there."""
    if not command.files:
        return
    shutil.rmtree(SECRETS_DIR, ignore_errors=True)  # a restarted container: copy afresh
    SECRETS_DIR.mkdir(mode=0o700)
    for flag, path in sorted(command.files.items()):
        private = flag in PRIVATE_FLAGS
        dest = SECRETS_DIR / f"{flag.lstrip('-')}-{Path(path).name}"
        shutil.copyfile(path, dest)
        os.chmod(dest, 0o600 if private else 0o644)
        os.chown(dest, uid, gid)
        command.replace_file(flag, str(dest))
    os.chown(SECRETS_DIR, uid, gid)


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # from root to another uid: the kernel clears every capability
    if os.getuid() == 0 or os.geteuid() == 0:
        raise RuntimeError("could not drop root privileges")


def health(url: str, ca: str | None) -> int:
    if os.getuid() == 0:  # docker runs health checks as the container's user: root here, so drop it
        try:
            pw = pwd.getpwnam(IMAGE_USER)
        except KeyError:  # not in the image (a test on the host)
            pass
        else:
            drop_privileges(pw.pw_uid, pw.pw_gid)
    context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return 0 if resp.status == 200 else 1
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--health"]:
        if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--ca"):
            print("usage: fedmnist-entrypoint --health URL [--ca CA_FILE]", file=sys.stderr)
            return 2
        return health(argv[1], argv[3] if len(argv) == 4 else None)
    if not argv:
        print("usage: fedmnist-entrypoint COMMAND [ARGS...] | --health URL [--ca CA_FILE]", file=sys.stderr)
        return 2
    command = Command.parse(argv)
    try:
        check(command)
    except InputError as exc:
        print(f"{socket.gethostname()}: {exc}", file=sys.stderr, flush=True)
        return 2
    if line := announce(command):
        print(f"{socket.gethostname()}: {line}", file=sys.stderr, flush=True)
    if os.getuid() == 0:
        owner_of = os.environ.get("FEDMNIST_RUN_AS_OWNER_OF", "").split(":")
        uid, gid = target_user([p for p in owner_of if p])
        for path in owner_of:
            if path and os.path.ismount(path):
                claim_if_docker_made(path, uid, gid)
        hand_over([p for p in os.environ.get("FEDMNIST_WRITABLE", "").split(":") if p], uid, gid)
        copy_secrets(command, uid, gid)
        drop_privileges(uid, gid)
    argv = command.argv
    if command.program == "flower-supernode" and (supervisor := shutil.which(SUPERVISOR)):
        argv = [supervisor, *argv]  # started again when it gives up on the SuperLink (deploy/supervise.py)
    warm = os.environ.get("FEDMNIST_WARM_CLIENTAPP") == "1" and shutil.which(WARM)
    if warm and command.program in ("flower-supernode", "flower-superexec"):
        argv = [warm, *argv]  # a fork server next to it starts its ClientApp processes warm
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"{socket.gethostname()}: cannot run {command.argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
