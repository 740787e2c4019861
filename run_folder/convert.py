"""``python -m run_folder.convert RUN_DIR``: rewrite an older version's checkpoint.pt in the current format.

Older versions wrote checkpoint.pt as a plain pickle, which can run code when read,
so ``resume-from`` refuses one. This command reads it once more, as a pickle, and
writes the same checkpoint back as tensors and plain values. Unpickling a file
from someone else can run their code: use it only on run folders you made
yourself or trust. As a second guard, the file may name only numpy's array
rebuilders; one that asks for anything else is refused before it is imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from run_folder import CHECKPOINT, RunFolder
from run_folder.checkpoint import Checkpoint, is_pickle
from run_folder.errors import REDO, RunFolderError
from task.errors import run_cli
from task.numpy_pickle import UnsafePickle, load_numpy_pickle

OLD_VERSION = 1
WARNING = (
    "warning: this unpickles {path}, and unpickling a file can run code: "
    "convert only run folders you made yourself or trust."
)


def read_pickled_checkpoint(path: Path) -> Checkpoint:
    """An older version's checkpoint (a pickle of numpy arrays and plain values)."""
    try:
        with path.open("rb") as fh:
            data = load_numpy_pickle(fh)
    except UnsafePickle as exc:
        raise RunFolderError(
            f"{path} would import {exc.name} when read, which no checkpoint of this app does: it was not "
            "converted and nothing in it ran; start the run afresh (without resume-from)."
        ) from None
    except Exception as exc:  # truncated, or not a pickle
        raise RunFolderError(f"{path} cannot be read as an older checkpoint ({type(exc).__name__}): {REDO}.") from None
    if not isinstance(data, dict) or data.get("version") != OLD_VERSION:
        raise RunFolderError(f"{path} is not a checkpoint of an older version of this app: {REDO}.")
    try:
        return Checkpoint(
            server_round=int(data["round"]),
            arrays=dict(data["arrays"]),
            rounds=list(data["rounds"]),
            num_nodes=int(data["num-nodes"]),
            strategy_state=dict(data["strategy"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"{path} lacks part of a checkpoint ({type(exc).__name__}: {exc}): {REDO}.") from None


def convert(run_dir: str | Path) -> Checkpoint | None:
    """Rewrite the run folder's pickled checkpoint in place, warning first that it unpickles;
    None when the checkpoint is already current."""
    folder = RunFolder.open(run_dir)
    path = folder.file(CHECKPOINT)
    if not path.is_file():
        raise RunFolderError(f"{path} is missing: this run has no checkpoint to convert.")
    if not is_pickle(path):
        folder.read_checkpoint()  # says what is wrong with it, if anything
        return None
    print(WARNING.format(path=path), file=sys.stderr)
    checkpoint = read_pickled_checkpoint(path)
    try:
        folder.write_checkpoint(checkpoint)
    except TypeError as exc:
        raise RunFolderError(f"{path} cannot be converted: {exc}.") from None
    folder.read_checkpoint()  # the new file reads back
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m run_folder.convert",
        description="Rewrite the checkpoint.pt of a run folder made by an older version (a plain pickle) "
        "in the current format, which cannot run code when read, so that resume-from accepts it. "
        "It unpickles the old file: use it only on run folders you made yourself or trust.",
    )
    parser.add_argument("run_dir", type=Path, help="the run folder holding the old checkpoint.pt")
    args = parser.parse_args(argv)

    def go() -> None:
        path = args.run_dir / CHECKPOINT
        checkpoint = convert(args.run_dir)
        if checkpoint is None:
            print(f"{path} is already in the current format: nothing to convert.")
            return
        print(
            f"{path}: converted (round {checkpoint.server_round}). Resume it with "
            f"--run-config \"resume-from='{args.run_dir.resolve()}'\"."
        )

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
