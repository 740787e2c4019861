"""A bounded flood of slow TLS connections from one address, to see what a listener does under one.

    python deploy/flood.py HOST:PORT --connections 1100 --seconds 30 [--json]

Each connection completes the TLS handshake (no certificate check: a stranger checks nothing),
sends the first line of a request and then one more header line every 2 s, never finishing the
request, and is opened again as soon as the server closes it; so for ``--seconds`` seconds about
``--connections`` connections are held open at once, as slow clients and idle sockets would.
Then every connection is closed and the tool stops by itself. It prints what happened: how
many connections were opened, the most open at once, how many the server closed and how long
it let them live, and why openings failed.

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
TRICKLE = 2.0  # seconds between two header lines


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


async def hold_one(host: str, port: int, context: ssl.SSLContext, deadline: float, tally: Tally) -> None:
    """Keep one slow connection open until ``deadline``, opening it again whenever it is closed."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname="localhost"), timeout=10
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            tally.failures[type(exc).__name__] += 1
            await asyncio.sleep(0.5)
            continue
        tally.opened += 1
        tally.open_now += 1
        tally.most_open = max(tally.most_open, tally.open_now)
        born = time.monotonic()
        try:
            writer.write(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: localhost\r\n")
            while time.monotonic() < deadline:
                try:
                    if await asyncio.wait_for(reader.read(1024), timeout=TRICKLE) == b"":
                        break  # the server closed it
                    break  # it answered (an error page): the server ended the request
                except TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
            else:
                continue  # our deadline: not counted as closed by the server
            tally.closed_by_server += 1
            tally.lifetimes.append(time.monotonic() - born)
        except (OSError, ssl.SSLError):
            tally.closed_by_server += 1
            tally.lifetimes.append(time.monotonic() - born)
        finally:
            tally.open_now -= 1
            writer.close()


async def flood(address: str, connections: int, seconds: float) -> dict:
    host, _, port = address.rpartition(":")
    context = ssl._create_unverified_context()  # a stranger checks no certificate
    tally = Tally()
    start = time.monotonic()
    deadline = start + seconds
    tasks = []
    for _ in range(connections):  # opened over the first seconds, not all in one instant
        tasks.append(asyncio.create_task(hold_one(host.strip("[]"), int(port), context, deadline, tally)))
        await asyncio.sleep(min(2.0 / connections, 0.01))
    await asyncio.gather(*tasks, return_exceptions=True)
    return tally.summary(time.monotonic() - start)


def raise_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed), hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="HOST:PORT of a TLS listener of your own")
    parser.add_argument("--connections", type=int, default=1100, help=f"held open at once (at most {MAX_CONNECTIONS})")
    parser.add_argument("--seconds", type=float, default=30, help=f"how long (at most {MAX_SECONDS})")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= MAX_CONNECTIONS or not 0 < args.seconds <= MAX_SECONDS:
        print(
            f"flood.py: --connections 1..{MAX_CONNECTIONS} and --seconds up to {MAX_SECONDS}: a flood that ends",
            file=sys.stderr,
        )
        return 2
    raise_open_file_limit(args.connections + 64)
    result = asyncio.run(flood(args.address, args.connections, args.seconds))
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
