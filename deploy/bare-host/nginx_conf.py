"""The SuperLink host's nginx configuration for a machine without Docker, made from the
container's own (deploy/superlink-host/nginx.conf), so both keep the same doors and limits.

    python3 deploy/bare-host/nginx_conf.py --certs /var/lib/fedmnist/superlink > /var/lib/fedmnist/nginx/nginx.conf
    nginx -c /var/lib/fedmnist/nginx/nginx.conf -g 'daemon off;'      (docs/deployment.md, "Without Docker")

In the container the operators' listener binds every interface of the container, and Docker
publishes it on the host's loopback. On a bare host nothing stands between nginx and the
network, so this binds it to 127.0.0.1 (and lets only loopback sources in), points the
upstream at the SuperLink on loopback and the file paths at this host's folders. Every
line it changes must be found in the container's file, or it stops and names the line:
a configuration that silently kept a listener on every interface is what it exists to prevent.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONTAINER_CONF = Path(__file__).resolve().parent.parent / "superlink-host" / "nginx.conf"


class ConfError(Exception):
    """The container's file no longer has a line this rewrite relies on."""


def _sub(text: str, pattern: str, new: str, count: int | None = 1) -> str:
    """``re.sub`` that must match ``count`` times (None: at least once), or names what it missed."""
    text, found = re.subn(pattern, new, text, flags=re.MULTILINE)
    if found == 0 or (count is not None and found != count):
        raise ConfError(
            f"{CONTAINER_CONF}: {found} lines match '{pattern}', expected {count or 'some'}: "
            "update deploy/bare-host/nginx_conf.py to match it"
        )
    return text


def bare_host_conf(
    text: str, certs: str, run_dir: str, superlink: str, public: str, control_port: int, worker_user: str
) -> str:
    """``text`` (the container's nginx.conf) rewritten for a host without Docker."""
    # The geo block's list of loopback gateways (written at the container's start) becomes loopback itself.
    text = _sub(text, r"include\s+/tmp/fedmnist-operators\.conf;", "127.0.0.0/8 1;")
    # Listeners keep their parameters (ssl, backlog=...); only the address changes.
    text = _sub(text, r"^(\s*)listen 9443 ssl\b", rf"\g<1>listen 127.0.0.1:{control_port} ssl")
    text = _sub(text, r"^(\s*)listen 8443 ssl\b", rf"\g<1>listen {public} ssl")
    # The SuperLink's address, named once in the upstream block the locations pass to.
    text = _sub(text, r"^(\s*)server superlink:8000;", rf"\g<1>server {superlink};", count=1)
    # Both folders in one pass, so that a path already rewritten is never rewritten again.
    folders = {"/certs/": f"{certs.rstrip('/')}/", "/tmp/": f"{run_dir.rstrip('/')}/"}
    for old in folders:
        _sub(text, f" {old}", "", count=None)  # each must be there
    text = re.sub(r" (/certs/|/tmp/)", lambda m: " " + folders[m.group(1)], text)
    text = _sub(text, r"^user www-data;", f"user {worker_user};")
    # A listener added to the container's file later must not end up on every interface here.
    for listen in re.findall(r"^\s*listen\s+(\S+)", text, flags=re.MULTILINE):
        if listen not in (public, f"127.0.0.1:{control_port}"):
            raise ConfError(f"{CONTAINER_CONF}: a listener this rewrite does not know ('listen {listen}'): add it here")
    header = (
        "# Made by deploy/bare-host/nginx_conf.py from deploy/superlink-host/nginx.conf, for a host\n"
        f"# without Docker: operators' listener on 127.0.0.1:{control_port} only, public listener on\n"
        f"# {public}, SuperLink at {superlink}. Make it again after changing either file.\n\n"
    )
    return header + text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", required=True, help="folder with ca.crt, superlink.crt and superlink.key")
    parser.add_argument("--run-dir", default="/var/lib/fedmnist/nginx", help="pid file and request buffers")
    parser.add_argument("--superlink", default="127.0.0.1:8000", help="the SuperLink's --host:--port")
    parser.add_argument("--public", default="8443", help="the nodes' listener: PORT or ADDRESS:PORT")
    parser.add_argument("--control-port", type=int, default=9443, help="the operators' port on 127.0.0.1")
    parser.add_argument("--worker-user", default="www-data", help="nginx's worker user (Debian: www-data)")
    parser.add_argument("--source", type=Path, default=CONTAINER_CONF, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in (("--certs", args.certs), ("--run-dir", args.run_dir)):
        if not Path(value).is_absolute():
            parser.error(f"{name} {value!r}: give an absolute path (nginx reads it from its own folder)")
    try:
        sys.stdout.write(
            bare_host_conf(
                args.source.read_text(encoding="utf-8"),
                args.certs,
                args.run_dir,
                args.superlink,
                args.public,
                args.control_port,
                args.worker_user,
            )
        )
    except ConfError as exc:
        print(f"nginx_conf.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
