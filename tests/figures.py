"""How the slow tests hand over what they measured: printed under pytest's output (with or
without -s) and written as JSON to build/, with when it was measured."""

from __future__ import annotations

import json
import time
from pathlib import Path


def report_figures(request, path: Path, found: dict, lines: list[str]) -> None:
    """Write ``found`` to ``path`` and show ``lines`` in pytest's terminal report."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M:%S"), **found}, indent=2) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown with or without -s
            for line in lines:
                reporter.write_line(line)


def phase_line(title: str, found: dict[str, float]) -> str:
    """``title: phase N s, phase N s, ...``"""
    return f"{title}: " + ", ".join(f"{k} {v:.1f} s" if v < 10 else f"{k} {v:.0f} s" for k, v in found.items())
