"""Write (or update) one SuperLink connection in the Flower CLI's config.toml, safely.

    python deploy/connection.py docker                       # 127.0.0.1:8000, insecure
    python deploy/connection.py docker --tls                 # root-certificates = deploy/certs/ca.crt
    python deploy/connection.py lab --address host:8000 --root-certificates /abs/ca.crt
    python deploy/connection.py docker --check               # only check it against the SuperLink

The file is ``$FLWR_HOME/config.toml`` (default ``~/.flwr/config.toml``). A missing folder or
file is created with Flower's own defaults first. Only the ``[superlink.NAME]`` table is
replaced (where it stands; a new one goes at the end); everything else, comments included,
stays as it was. Running it twice gives the same file. The new file is checked by parsing it
before it atomically replaces the old one. Run it with the project's Python (``.venv``): it
needs ``tomlkit`` (a dependency of the project) and, for a new file, ``flwr``'s defaults.

After writing, it knocks on the SuperLink: a connection whose TLS setting does not match the
SuperLink's (``insecure = true`` against a TLS SuperLink, for which ``flwr`` itself only says
"Connection to the SuperLink is unavailable"), or a CA that did not sign its certificate, is
told in one line, with the command that fixes it.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import sys
import tempfile
import tomllib
from pathlib import Path

import tomlkit

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"^[A-Za-z0-9_-]+$")
FALLBACK_DEFAULT = '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'


class ConnectionConfigError(Exception):
    """Bad input or an unreadable config file, told in one line."""


def flwr_home() -> Path:
    env = os.environ.get("FLWR_HOME")
    return Path(env).expanduser() if env else Path.home() / ".flwr"


def flower_default_config() -> str:
    try:
        from task.flower_compat import DEFAULT_FLOWER_CONFIG_TOML
    except ImportError:
        return FALLBACK_DEFAULT
    return DEFAULT_FLOWER_CONFIG_TOML


def table(name: str, address: str, root_certificates: str | None) -> dict[str, object]:
    if root_certificates:
        return {"address": address, "root-certificates": root_certificates}
    return {"address": address, "insecure": True}


def updated(text: str, name: str, values: dict[str, object]) -> str:
    """``text`` with ``[superlink.NAME]`` holding exactly ``values``, edited with tomlkit so that
    every other line stays as written, comments included: a table already there is replaced
    where it stands (in whatever form it was written: a table, dotted keys, an inline table),
    a new one goes at the end. The result is parsed back and must read as ``text`` with only
    that table changed."""
    document = tomlkit.parse(text)
    superlink = document.get("superlink")
    if superlink is not None and not isinstance(superlink, dict):
        raise ConnectionConfigError(
            "'superlink' in config.toml is not a table: fix or move the file, then run this again"
        )
    if superlink is not None and name in superlink:
        inline = isinstance(superlink, tomlkit.items.InlineTable)  # superlink = {NAME = {...}}
        replacement = tomlkit.inline_table() if inline else tomlkit.table()
        replacement.update(values)
        superlink[name] = replacement
        new = tomlkit.dumps(document)
    else:
        rest = text.rstrip("\n")
        new = (rest + "\n\n" if rest else "") + tomlkit.dumps({"superlink": {name: values}})
    expected = tomllib.loads(text)
    expected.setdefault("superlink", {})[name] = values
    try:
        ok = tomllib.loads(new) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise ConnectionConfigError(
            f"[superlink.{name}] could not be written without changing the rest of config.toml: edit that table by hand"
        )
    return new


def write_connection(
    name: str, address: str, root_certificates: str | os.PathLike | None = None, home: Path | None = None
) -> Path:
    """Create or replace ``[superlink.NAME]``; return the config file's path."""
    if not NAME.match(name):
        raise ConnectionConfigError(f"connection name {name!r}: use letters, digits, '-' and '_' only")
    if not re.match(r"^[^\s:/]+:\d{1,5}$", address) and not re.match(r"^\[[0-9a-fA-F:]+\]:\d{1,5}$", address):
        raise ConnectionConfigError(f"address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
    ca = None
    if root_certificates is not None:
        ca_path = Path(root_certificates).expanduser().resolve()
        if not ca_path.is_file():
            raise ConnectionConfigError(f"root certificates {ca_path}: no such file: make it with deploy/tls.sh")
        ca = str(ca_path)
    home = home or flwr_home()
    path = home / "config.toml"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConnectionConfigError(
                f"{path} is not valid TOML ({exc}): fix or move it, then run this again"
            ) from None
    else:
        text = flower_default_config()
    new = updated(text, name, table(name, address, ca))
    if path.exists() and new == text:
        return path
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".config.toml.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_connection(name: str, home: Path | None = None) -> dict[str, object]:
    path = (home or flwr_home()) / "config.toml"
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConnectionConfigError(f"{path} does not exist: write the connection first (without --check)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConnectionConfigError(f"{path} is not valid TOML ({exc})") from None
    conn = config.get("superlink", {}).get(name)
    if not isinstance(conn, dict) or "address" not in conn:
        raise ConnectionConfigError(
            f"{path} has no [superlink.{name}] with an address: write it first (without --check)"
        )
    return conn


def probe(name: str, address: str, root_certificates: str | None, timeout: float = 5) -> tuple[bool, str]:
    """Does the SuperLink at ``address`` speak what connection ``name`` expects? ``(ok, one line)``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    fix_tls = f"python deploy/connection.py {name} --address {address} --tls"
    fix_plain = f"python deploy/connection.py {name} --address {address}"
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError as exc:
        return False, f"nothing answers at {address} ({exc.strerror or exc}): is the SuperLink up (docker compose ps)?"
    with raw:
        anything = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anything.check_hostname = False
        anything.verify_mode = ssl.CERT_NONE
        try:
            with anything.wrap_socket(raw, server_hostname=host):
                speaks_tls = True
        except (ssl.SSLError, OSError):
            speaks_tls = False
    if not root_certificates:
        if speaks_tls:
            return False, (
                f"the SuperLink at {address} speaks TLS, but connection '{name}' has insecure = true, "
                f"so flwr cannot talk to it: {fix_tls}"
            )
        return True, f"the SuperLink at {address} answers without TLS, as connection '{name}' expects"
    if not speaks_tls:
        return False, (
            f"the SuperLink at {address} does not speak TLS (started without its certificate?), but connection "
            f"'{name}' expects it: start it with deploy/tls.yml, or write the connection without TLS: {fix_plain}"
        )
    try:
        verified = ssl.create_default_context(cafile=str(root_certificates))
        with socket.create_connection((host, int(port)), timeout=timeout) as raw2:
            with verified.wrap_socket(raw2, server_hostname=host):
                pass
    except ssl.SSLCertVerificationError as exc:
        return False, (
            f"the SuperLink at {address} has a certificate that {root_certificates} does not vouch for "
            f"({exc.verify_message}): use the ca.crt that signed it, or make both again with deploy/tls.sh --force"
        )
    except (ssl.SSLError, OSError) as exc:
        return False, f"TLS with the SuperLink at {address} failed: {exc}"
    return True, f"the SuperLink at {address} speaks TLS with a certificate signed by {root_certificates}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="connection name, as in `flwr run . NAME`")
    parser.add_argument("--address", default="127.0.0.1:8000", help="SuperLink HOST:PORT (default 127.0.0.1:8000)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls", action="store_true", help="verify the SuperLink with deploy/certs/ca.crt ($FEDMNIST_CERTS)"
    )
    tls.add_argument("--root-certificates", metavar="CA_FILE", help="verify the SuperLink with this CA certificate")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; check the connection against the SuperLink"
    )
    args = parser.parse_args(argv)
    if args.check:
        try:
            conn = read_connection(args.name)
        except ConnectionConfigError as exc:
            print(f"connection.py: {exc}", file=sys.stderr)
            return 1
        ok, message = probe(args.name, str(conn["address"]), conn.get("root-certificates"))  # type: ignore[arg-type]
        print(f"connection.py: {message}", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    ca = args.root_certificates
    if args.tls:
        ca = Path(os.environ.get("FEDMNIST_CERTS") or ROOT / "deploy" / "certs") / "ca.crt"
    try:
        path = write_connection(args.name, args.address, ca)
    except ConnectionConfigError as exc:
        print(f"connection.py: {exc}", file=sys.stderr)
        return 1
    mode = f"TLS, CA {Path(ca).resolve()}" if ca else "insecure"
    print(f"{path}: [superlink.{args.name}] -> {args.address} ({mode})")
    ok, message = probe(args.name, args.address, str(Path(ca).resolve()) if ca else None)
    if ok or message.startswith("nothing answers"):  # not up yet is fine: it is written
        print(f"connection.py: {message}")
        return 0
    print(f"connection.py: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
