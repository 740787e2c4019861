"""``flower-supernode`` that asks the SuperLink for its next message sooner after finding none.

Flower 1.41's SuperNode sleeps a fixed 3 s whenever a pull finds no message (``time.sleep(3)`` in
its connection loop; no flag or variable sets it), and it pulls right after sending each reply,
before the server has the next round's messages: in most rounds some node sleeps those 3 s while
the round's messages wait for it. Here that one sleep lasts ``--idle-s`` seconds instead; every
other wait of Flower's is untouched. The price: an idle node asks the SuperLink ``1 / idle-s``
times a second instead of once every 3 s (one HTTP request each).

    python -m launcher.prompt_supernode --idle-s 0.5 flower-supernode --insecure --superlink ...

The loop's module is reached through ``task/flower_compat.py`` (piece ``supernode_loop_time``);
a Flower without that sleep where it was is refused by name rather than silently left slow.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from launcher.forkserver import load_entry

FLOWER_IDLE_SLEEP_S = 3  # the sleep after an empty pull, as Flower 1.41 writes it
SUPERNODE = "flower-supernode"


class IdleSleep:
    """The ``time`` module as the SuperNode's loop sees it, with the sleep after an empty pull shorter."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle_s if seconds == FLOWER_IDLE_SLEEP_S else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def install(idle_s: float) -> None:
    """From now on, this process's SuperNode sleeps ``idle_s`` after a pull that finds nothing."""
    from task.flower_compat import owner

    module, name = owner("supernode_loop_time")
    setattr(module, name, IdleSleep(idle_s))


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-s", type=float, required=True, help="seconds to wait after a pull that found nothing")
    argv = list(sys.argv[1:] if argv is None else argv)
    if SUPERNODE not in argv:
        parser.error(f"give the {SUPERNODE} command to run after the options, with its own arguments")
    cut = argv.index(SUPERNODE)  # what follows is flower-supernode's, untouched
    args, rest = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    if not 0 < args.idle_s <= FLOWER_IDLE_SLEEP_S:
        parser.error(f"--idle-s must be above 0 and at most Flower's {FLOWER_IDLE_SLEEP_S} s, not {args.idle_s:g}")
    install(args.idle_s)
    sys.argv = [SUPERNODE, *rest]
    (entry,) = (e for e in _console_scripts() if e.name == SUPERNODE)
    return load_entry(entry.value)()


def _console_scripts() -> Any:
    from importlib.metadata import entry_points

    return entry_points(group="console_scripts")


if __name__ == "__main__":
    sys.exit(main())
