"""The tools the container test attacks its own deployment with: deploy/flood.py (a bounded flood
of slow TLS connections) and deploy/neighbour.py (a LAN neighbour played by a network namespace,
and the listening ports of a process's network namespace). Each is tried against a listener of
this test's own."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploy import flood, neighbour

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    made = subprocess.run(
        [str(ROOT / "deploy" / "tls.sh"), "--dir", str(folder), "--nodes", "1"], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    return folder / "superlink.crt", folder / "superlink.key"


def _impatient_tls_server(cert: Path, key: Path, patience: float) -> tuple[int, threading.Event]:
    """A TLS listener on loopback that closes every connection ``patience`` s after its handshake,
    as nginx's client_header_timeout does with a request that never ends."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    ready, stop = threading.Event(), threading.Event()
    port_box: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(patience)
        writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context, backlog=512)
        port_box.append(server.sockets[0].getsockname()[1])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        server.close()

    threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
    ready.wait(10)
    return port_box[0], stop


def test_the_flood_holds_its_connections_reopens_what_the_server_closes_and_ends(tls_files):
    port, stop = _impatient_tls_server(*tls_files, patience=1.0)
    try:
        result = asyncio.run(flood.flood(f"127.0.0.1:{port}", connections=20, seconds=4))
    finally:
        stop.set()
    assert result["most_open_at_once"] == 20
    assert result["closed_by_server"] >= 20 and result["opened"] >= 40  # each closed one was opened again
    assert 0.8 <= result["median_life_s"] <= 2.5
    assert 4 <= result["seconds"] < 15  # it stopped by itself


def test_a_flood_that_never_starts_tls_holds_its_connections_too():
    async def hang_up_after_a_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1.0)
        writer.close()

    async def run() -> dict:
        server = await asyncio.start_server(hang_up_after_a_second, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await flood.flood(f"127.0.0.1:{port}", connections=20, seconds=3, handshake=False)

    result = asyncio.run(run())
    assert result["most_open_at_once"] == 20 and result["closed_by_server"] >= 20 and result["opened"] >= 40


def test_a_flood_without_an_end_is_refused():
    for args in (["--connections", "6000"], ["--seconds", "3600"], ["--seconds", "0"]):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "flood.py"), "127.0.0.1:9", *args], capture_output=True, text=True
        )
        assert proc.returncode == 2 and "a flood that ends" in proc.stderr, args


def test_the_listeners_of_a_process_are_read_from_its_network_namespace():
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        a.listen()
        b.bind(("0.0.0.0", 0))
        b.listen()
        found = neighbour.listeners(os.getpid())
        assert neighbour.Listener("127.0.0.1", a.getsockname()[1]) in found
        assert neighbour.Listener("0.0.0.0", b.getsockname()[1]) in found


def test_a_probe_tells_an_open_port_from_a_closed_one():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert neighbour.probe(f"127.0.0.1:{listening.getsockname()[1]}") == "open"
        port = listening.getsockname()[1]
    assert neighbour.probe(f"127.0.0.1:{port}") == "refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_neighbour_reaches_this_machine_through_its_link_and_leaves_nothing_behind():
    with socket.socket() as listening:
        listening.bind(("0.0.0.0", 0))
        listening.listen()
        port = listening.getsockname()[1]
        with neighbour.Neighbour() as lan:
            name, link = lan.name, lan.host_link
            assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
            seen = lan.python(str(ROOT / "deploy" / "neighbour.py"), "probe", f"{lan.host_address}:{port}")
            assert '"tcp": "open"' in seen.stdout, seen.stdout + seen.stderr
            # the namespace has its own loopback: this machine's is not the neighbour's
            alone = lan.python(str(ROOT / "deploy" / "neighbour.py"), "probe", f"127.0.0.1:{port}")
            assert '"tcp": "refused"' in alone.stdout, alone.stdout + alone.stderr
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", link], capture_output=True).returncode != 0
