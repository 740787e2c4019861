"""Writing files that others read: never half a file, never half a set of files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write to a temporary name next to ``path``, flush it to disk, rename it over
    ``path`` and flush the folder: a crash at any instant leaves the old file or the
    new one, whole."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_files(contents: dict[Path, bytes]) -> None:
    """Every file to its temporary name first, then all renamed: a failure while
    writing leaves the old files untouched."""
    tmps: dict[Path, Path] = {}
    try:
        for path, data in contents.items():
            tmp = tmps[path] = _tmp_name(path)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
        for folder in {path.parent for path in tmps}:
            _fsync_dir(folder)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the folder's entry is flushed too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")
