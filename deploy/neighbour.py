"""A neighbour on the LAN, played by a network namespace: what another machine that routes
Docker's networks through this one can reach.

    sudo python deploy/neighbour.py --route 172.16.0.0/12 -- COMMAND ...   run COMMAND as the neighbour
    python deploy/neighbour.py probe HOST:PORT ...                          try a TCP connection to each
    python deploy/neighbour.py https HOST:PORT METHOD PATH                  one HTTPS request, any certificate

A published port is what a deployment means to show the network, but Docker lets any machine
that sends packets for a container's own address to this host reach the container's ports
(Docker 20.10 accepts forwarded packets for every published port, even one published on
127.0.0.1 only). The neighbour here is a namespace with one veth pair to this machine and a
route for the given subnets through it, as a machine on the same LAN would have. Every
namespace and link it makes is removed on the way out. Needs root (``ip netns``), and only
ever talks to this machine and the containers on it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Docker's default address pools: 172.17-31.x and 192.168.x networks.
DOCKER_SUBNETS = ("172.16.0.0/12", "192.168.0.0/16")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _free_link_subnet() -> ipaddress.IPv4Network:
    """A /30 for the veth pair that no interface of this machine uses yet."""
    words = _ip("-o", "-4", "addr", "show").stdout.split()
    used = [ipaddress.ip_interface(word).network for word in words if "/" in word]
    for k in range(256):
        candidate = ipaddress.ip_network(f"10.254.{k}.0/30")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("neighbour: no free /30 in 10.254.0.0/16 for the veth pair")


class Neighbour:
    """``with Neighbour() as n: n.run([...])``: a namespace routed to this machine, removed on exit.
    ``n.host_address`` is this machine as the neighbour sees it (its LAN address, so to speak)."""

    def __init__(self, routes: Sequence[str] = DOCKER_SUBNETS, name: str | None = None) -> None:
        self.routes = list(routes)
        self.name = name or f"fedmnist-lan-{os.getpid()}"
        tag = f"{os.getpid() % 100000}"
        self.host_link, self.inner_link = f"fmn{tag}h", f"fmn{tag}n"  # at most 15 characters
        subnet = _free_link_subnet()
        host, inner = list(subnet.hosts())
        self.host_address, self.address, self.prefix = str(host), str(inner), subnet.prefixlen

    def __enter__(self) -> Neighbour:
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
            _ip("link", "set", self.inner_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_address}/{self.prefix}", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            inside = ("netns", "exec", self.name, "ip")
            _ip(*inside, "addr", "add", f"{self.address}/{self.prefix}", "dev", self.inner_link)
            _ip(*inside, "link", "set", self.inner_link, "up")
            _ip(*inside, "link", "set", "lo", "up")
            for route in self.routes:
                _ip(*inside, "route", "add", route, "via", self.host_address)
        except subprocess.CalledProcessError as exc:
            self.close()
            raise RuntimeError(f"neighbour: `{' '.join(exc.cmd)}` failed: {exc.stderr.strip()}") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        _ip("netns", "del", self.name, check=False)  # takes its end of the veth pair, and so both
        _ip("link", "del", self.host_link, check=False)

    def run(self, argv: Sequence[str], timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout
        )

    def python(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """This file (or another script) with this Python, as the neighbour."""
        return self.run([sys.executable, *args], timeout=timeout)


def probe(address: str, timeout: float = 3) -> str:
    """``open``, ``refused``, ``timed out`` (dropped) or the error, for one TCP connection."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return exc.strerror or str(exc)


def https(address: str, method: str, path: str, timeout: float = 10) -> str:
    """One HTTPS request that accepts any certificate (a stranger need not trust the CA):
    ``HTTP <status> <first line of the body>``, or why no answer came."""
    import http.client

    host, _, port = address.rpartition(":")
    context = ssl._create_unverified_context()  # an attacker checks no certificate
    conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    try:
        body = b"{}" if method == "POST" else None
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        first = resp.read(300).decode(errors="replace").strip().splitlines()
        return f"HTTP {resp.status} {first[0] if first else ''}".strip()
    except OSError as exc:
        return f"no answer: {exc.strerror or exc}"
    finally:
        conn.close()


@dataclass(frozen=True)
class Listener:
    address: str  # as bound: 0.0.0.0 means every address of the container
    port: int


def listeners(pid: int) -> list[Listener]:
    """TCP ports listening in the network namespace of process ``pid`` (a container's), read
    from /proc as the host sees it: no tool needed inside the container."""
    found = []
    for name, size in (("tcp", 4), ("tcp6", 16)):
        path = Path(f"/proc/{pid}/net/{name}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # /proc prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            found.append(Listener(str(ipaddress.ip_address(packed)), int(hex_port, 16)))
    return sorted(set(found), key=lambda x: (x.port, x.address))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["probe"]:
        for address in args[1:]:
            print(json.dumps({"address": address, "tcp": probe(address)}))
        return 0
    if args[:1] == ["https"] and len(args) == 4:
        print(json.dumps({"address": args[1], "request": f"{args[2]} {args[3]}", "answer": https(*args[1:])}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", action="append", help="a subnet routed through this machine (default: Docker's)")
    parser.add_argument("command", nargs="+", help="what the neighbour runs (after --)")
    opts = parser.parse_args(args)
    if os.geteuid() != 0:
        print("neighbour.py: network namespaces need root: run it with sudo", file=sys.stderr)
        return 2
    with Neighbour(opts.route or DOCKER_SUBNETS) as neighbour:
        where = f"{neighbour.address} in namespace {neighbour.name}; this machine is {neighbour.host_address}"
        print(f"neighbour.py: {where}", file=sys.stderr)
        return subprocess.run(["ip", "netns", "exec", neighbour.name, *opts.command]).returncode


if __name__ == "__main__":
    sys.exit(main())
