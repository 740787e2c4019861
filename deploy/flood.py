"""A bounded flood of slow TLS connections from one address, to see what a listener does under one.

    python deploy/flood.py HOST:PORT --connections 1100 --seconds 30 [--json]
    python deploy/flood.py HOST:PORT --big-bodies 5 [--megabytes 200] [--path /v1/fleet/push-object]

Each connection completes the TLS handshake (no certificate check: a stranger checks nothing),
sends the start of a request and never finishes it (with ``--no-handshake`` it never even starts
TLS: the slowest client there is, and one that costs the sender no CPU), and is opened again as
soon as the server closes it; so for ``--seconds`` seconds about
``--connections`` connections are held open at once, as slow clients and idle sockets would.
Then every connection is closed and the tool stops by itself. It prints what happened: how
many connections were opened, the most open at once, how many the server closed and how long
it let them live, and why openings failed.

``--big-bodies N`` sends N requests at once, each a body of ``--megabytes`` MB that a sender
with no key would push: half of them declare their length (Content-Length), half are chunked
(the server learns the size only by reading), and each keeps sending until the server answers
or closes. It prints each answer and how much of the body went out before it.

Point it only at a listener of your own (this project's tests aim it at their own proxy).
Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

MAX_CONNECTIONS = 5000
MAX_SECONDS = 600


@dataclass
class Tally:
    opened: int = 0
    open_now: int = 0
    most_open: int = 0
    closed_by_server: int = 0
    lifetimes: list[float] = field(default_factory=list)  # of connections the server closed
    failures: Counter = field(default_factory=Counter)

    def summary(self, seconds: float) -> dict:
        lives = sorted(self.lifetimes)
        return {
            "seconds": round(seconds, 1),
            "opened": self.opened,
            "most_open_at_once": self.most_open,
            "closed_by_server": self.closed_by_server,
            "median_life_s": round(lives[len(lives) // 2], 1) if lives else None,
            "failed_openings": dict(self.failures.most_common(5)),
        }


async def hold_one(host: str, port: int, context: ssl.SSLContext | None, deadline: float, tally: Tally) -> None:
    """Keep one slow connection open until ``deadline``, opening it again whenever it is closed
    (``context`` None: the TLS handshake is never started)."""
    tls = {"ssl": context, "server_hostname": "localhost"} if context else {}
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, **tls), timeout=10)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            tally.failures[type(exc).__name__] += 1
            await asyncio.sleep(0.5)
            continue
        tally.opened += 1
        tally.open_now += 1
        tally.most_open = max(tally.most_open, tally.open_now)
        born = time.monotonic()
        try:
            if context:
                writer.write(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: localhost\r\n")  # and no more
            left = deadline - time.monotonic()
            if left > 0 and await asyncio.wait_for(reader.read(1024), timeout=left) is not None:
                tally.closed_by_server += 1  # closed (b"") or ended with an error page
                tally.lifetimes.append(time.monotonic() - born)
        except TimeoutError:
            pass  # our deadline: not counted as closed by the server
        except (OSError, ssl.SSLError):
            tally.closed_by_server += 1
            tally.lifetimes.append(time.monotonic() - born)
        finally:
            tally.open_now -= 1
            writer.close()


async def flood(address: str, connections: int, seconds: float, handshake: bool = True) -> dict:
    host, _, port = address.rpartition(":")
    context = ssl._create_unverified_context() if handshake else None  # a stranger checks no certificate
    tally = Tally()
    start = time.monotonic()
    deadline = start + seconds
    tasks = []
    for _ in range(connections):  # opened over the first seconds, not all in one instant
        tasks.append(asyncio.create_task(hold_one(host.strip("[]"), int(port), context, deadline, tally)))
        await asyncio.sleep(min(2.0 / connections, 0.01))
    await asyncio.gather(*tasks, return_exceptions=True)
    return tally.summary(time.monotonic() - start)


def big_body(address: str, path: str, megabytes: int, chunked: bool) -> dict:
    """One POST of ``megabytes`` MB: the answer's status and how many MB went out before it."""
    import http.client

    host, _, port = address.rpartition(":")
    conn = http.client.HTTPSConnection(host, int(port), timeout=60, context=ssl._create_unverified_context())
    block, sent, started = b"\0" * (1 << 20), 0, time.monotonic()
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/protobuf")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(megabytes << 20))
        conn.endheaders()
        for _ in range(megabytes):
            conn.send(b"100000\r\n" + block + b"\r\n" if chunked else block)
            sent += 1
        if chunked:
            conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server stopped reading: its answer, if any, is waiting
    try:
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        status = f"no answer ({type(exc).__name__})"
    finally:
        conn.close()
    return {"chunked": chunked, "status": status, "sent_mb": sent, "seconds": round(time.monotonic() - started, 1)}


def big_bodies(address: str, path: str, count: int, megabytes: int) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        jobs = [pool.submit(big_body, address, path, megabytes, i % 2 == 1) for i in range(count)]
        return [job.result() for job in jobs]


def raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="HOST:PORT of a TLS listener of your own")
    parser.add_argument("--connections", type=int, default=1100, help=f"held open at once (at most {MAX_CONNECTIONS})")
    parser.add_argument("--seconds", type=float, default=30, help=f"how long (at most {MAX_SECONDS})")
    parser.add_argument(
        "--no-handshake",
        action="store_true",
        help="never start TLS: each connection holds a slot at no cost to this machine's CPU",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("--big-bodies", type=int, default=0, metavar="N", help="N big POSTs at once instead")
    parser.add_argument("--megabytes", type=int, default=200, help="the size of each big body")
    parser.add_argument("--path", default="/v1/fleet/push-object", help="where the big bodies go")
    args = parser.parse_args(argv)
    if args.big_bodies:
        if not 1 <= args.big_bodies <= 20 or not 1 <= args.megabytes <= 1024:
            print("flood.py: --big-bodies 1..20 of --megabytes 1..1024: a flood that ends", file=sys.stderr)
            return 2
        print(json.dumps(big_bodies(args.address, args.path, args.big_bodies, args.megabytes)))
        return 0
    if not 1 <= args.connections <= MAX_CONNECTIONS or not 0 < args.seconds <= MAX_SECONDS:
        print(
            f"flood.py: --connections 1..{MAX_CONNECTIONS} and --seconds up to {MAX_SECONDS}: a flood that ends",
            file=sys.stderr,
        )
        return 2
    raise_open_file_limit(args.connections + 64)
    result = asyncio.run(flood(args.address, args.connections, args.seconds, handshake=not args.no_handshake))
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
