"""Errors a user can fix, and the one way command-line tools report them.

Every such error's message names the culprit and the fix, so a command prints
it as one line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input, files or setup; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A run-config value is missing or outside what is allowed."""


def run_cli(main: Callable[[], int | None]) -> int:
    """Call a command's body; a :class:`UserError` becomes ``error: ...`` on stderr and exit 2."""
    try:
        return main() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
