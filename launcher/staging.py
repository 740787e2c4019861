"""The copy of the app that ``flwr run`` bundles: the same files, without walking what
``.gitignore`` leaves out."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from launcher.flower_home import FlowerHome


def staged_app(home: FlowerHome, app_dir: Path) -> Path:
    """A copy of ``app_dir`` without what its ``.gitignore`` leaves out, made once per Flower home and app.

    ``flwr run`` reads every file under the folder it is given, and only then drops what
    ``.gitignore`` excludes: here that is the virtual environment, run outputs and the
    wheelhouse, over 40,000 files and several seconds of each run's start. The copy holds
    the same files that would go into the app bundle, and nothing else."""
    import pathspec

    staged = home.path / f"app-{hashlib.sha256(str(app_dir.resolve()).encode()).hexdigest()[:12]}"
    if staged.is_dir():
        return staged
    ignore_file = app_dir / ".gitignore"
    lines = ignore_file.read_text().splitlines() if ignore_file.is_file() else []
    ignored = pathspec.GitIgnoreSpec.from_lines([*lines, ".git/"])
    for folder, dirs, files in os.walk(app_dir):
        rel = Path(folder).relative_to(app_dir)
        dirs[:] = [
            d
            for d in dirs
            if not ignored.match_file(f"{(rel / d).as_posix()}/") and not (Path(folder) / d).is_symlink()
        ]
        for name in files:
            source = Path(folder) / name
            if source.is_symlink() or ignored.match_file((rel / name).as_posix()):
                continue
            (staged / rel).mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staged / rel / name)
    return staged
