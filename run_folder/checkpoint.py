"""checkpoint.pt: what a stopped run needs to continue, in a file that cannot run code when read.

Written with ``torch.save`` and read with ``torch.load(weights_only=True)``, whose
unpickler builds only tensors and plain values and refuses anything else before
importing it. Each numpy array (the global weights, FedAvgM's server momentum, the
moments of FedAdam, FedYogi and FedAdagrad) is stored as a tensor of the same dtype
and shape and comes back as the same array, bit for bit. Every other value must be
None, bool, int, float, str, or a list, tuple or dict of them (the history's rounds,
the privacy accountant's state); anything else is refused when the checkpoint is
written, so a checkpoint never holds what it cannot give back exactly.

Older versions wrote a plain pickle, which can run code when read: such a file is
refused, with the command that converts it (``python -m run_folder.convert``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from run_folder.errors import REDO, RunFolderError
from task.files import atomic_write
from task.numpy_pickle import ALLOWED_GLOBALS, pickle_imports

if TYPE_CHECKING:  # torch and numpy are imported where they are used: the launcher reads history.json without them
    import numpy as np

FORMAT = "fedavg-mnist checkpoint"
VERSION = 2  # 1 was a plain pickle
CONVERT = "python -m run_folder.convert"
_ZIP = b"PK\x03\x04"  # how every file torch.save writes begins
_PICKLE = b"\x80"  # how a pickle (protocol 2 or later) begins
_PLAIN = (bool, int, float, str)
_AFRESH = "resume only from run folders you made yourself, or start the run afresh (without resume-from)"


@dataclass
class Checkpoint:
    """Everything a run needs to continue after ``server_round``."""

    server_round: int
    arrays: dict[str, np.ndarray]  # the global model after that round, by array name
    rounds: list[dict[str, Any]]  # history.json's rounds so far
    num_nodes: int
    strategy_state: dict[str, Any]


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically (temporary file, fsync, rename): a crash at any instant leaves the last whole checkpoint."""
    import torch

    data = {
        "format": FORMAT,
        "version": VERSION,
        "round": int(checkpoint.server_round),
        "num-nodes": int(checkpoint.num_nodes),
        "arrays": _to_file(checkpoint.arrays, "arrays"),
        "rounds": _to_file(checkpoint.rounds, "rounds"),
        "strategy": _to_file(checkpoint.strategy_state, "strategy"),
    }
    atomic_write(path, lambda fh: torch.save(data, fh))


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path``; a file that is not one, or would run code, is refused unread."""
    import numpy as np

    if not path.is_file():
        raise RunFolderError(
            f"{path} is missing: this run has no completed round to resume from; start it again instead."
        )
    with path.open("rb") as fh:
        head = fh.read(len(_ZIP))
    if not head.startswith(_ZIP):
        if head.startswith(_PICKLE):
            raise RunFolderError(_refuse_pickle(path))
        raise RunFolderError(f"{path} is not a checkpoint (not a file torch.save wrote): {REDO}.")
    data = read_torch_file(path, REDO)
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError("no format and version of this app's checkpoints")
        checkpoint = Checkpoint(
            server_round=_of(int, data["round"], "round"),
            arrays=_of(dict, _from_file(data["arrays"], "arrays"), "arrays"),
            rounds=_of(list, _from_file(data["rounds"], "rounds"), "rounds"),
            num_nodes=_of(int, data["num-nodes"], "num-nodes"),
            strategy_state=_of(dict, _from_file(data["strategy"], "strategy"), "strategy"),
        )
        for name, array in checkpoint.arrays.items():
            _of(np.ndarray, array, f"arrays.{name}")
        return checkpoint
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"{path} is not a checkpoint this app wrote ({exc}): {REDO}.") from None


def is_pickle(path: Path) -> bool:
    """Whether ``path`` is a plain pickle (what older versions wrote), by its first byte."""
    with path.open("rb") as fh:
        return fh.read(1) == _PICKLE


def read_torch_file(path: Path, fix: str) -> Any:
    """What ``torch.save`` wrote to ``path``, if it is only tensors and plain values; a file that
    would import anything else is refused before it runs (the message ends with ``fix``)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # too damaged to list
            unsafe = []
        if unsafe:
            raise RunFolderError(_crafted(path, unsafe, fix)) from None
        raise RunFolderError(f"{path} cannot be loaded (not a file this app wrote); {fix}.") from None
    except Exception as exc:  # truncated by hand, or a zip of something else
        raise RunFolderError(f"{path} cannot be loaded ({type(exc).__name__}); {fix}.") from None


def _refuse_pickle(path: Path) -> str:
    """Why a plain pickle is not read: an older checkpoint names only numpy's array rebuilders."""
    unsafe = [name for name in pickle_imports(path.read_bytes()) if name not in ALLOWED_GLOBALS]
    if unsafe:
        return _crafted(path, unsafe)
    return (
        f"{path} is a checkpoint of an older version of this app: a plain pickle, which can run code when "
        f"read, so it is not read. If the run folder is your own, convert it once with "
        f"`{CONVERT} {path.parent}` (it unpickles the file: only for folders you trust), then resume again; "
        f"otherwise start the run afresh."
    )


def _crafted(path: Path, names: list[str], fix: str = _AFRESH) -> str:
    shown = ", ".join(sorted(set(names)))
    return (
        f"{path} would import {shown} when read, which no file of this app does: it was refused "
        f"and nothing in it ran; {fix}."
    )


def _to_file(value: Any, where: str) -> Any:
    """``value`` as tensors and plain values: each numpy array becomes a tensor with the same bytes."""
    import numpy as np

    if value is None or type(value) in _PLAIN:
        return value
    if isinstance(value, float):  # numpy.float64 is a float: the same value, which is all the history keeps
        return float(value)
    if isinstance(value, np.ndarray):
        return _tensor(value, where)
    if type(value) in (list, tuple):
        return type(value)(_to_file(v, f"{where}[{i}]") for i, v in enumerate(value))
    if type(value) is dict and all(type(k) in _PLAIN for k in value):
        return {k: _to_file(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"a checkpoint holds numpy arrays and plain values (None, bool, int, float, str, and lists, tuples "
        f"and dicts of them), not {where}: {type(value).__name__}; convert it to one of those first"
    )


def _tensor(array: np.ndarray, where: str) -> Any:
    import numpy as np
    import torch

    if array.dtype.hasobject or not array.dtype.isnative:
        raise TypeError(
            f"a checkpoint holds arrays of numbers in this machine's byte order, not {where}: {array.dtype}"
        )
    try:
        return torch.from_numpy(np.array(array, order="C", copy=True))
    except TypeError:
        raise TypeError(f"a checkpoint holds arrays that have a tensor type, not {where}: {array.dtype}") from None


def _from_file(value: Any, where: str) -> Any:
    """What :func:`_to_file` made, back: each tensor as the numpy array it was."""
    import torch

    if type(value) is torch.Tensor:
        return value.numpy()
    if value is None or type(value) in _PLAIN:
        return value
    if type(value) in (list, tuple):
        return type(value)(_from_file(v, f"{where}[{i}]") for i, v in enumerate(value))
    if type(value) is dict and all(type(k) in _PLAIN for k in value):
        return {k: _from_file(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where} holds a {type(value).__name__}")


def _of(kind: type, value: Any, where: str) -> Any:
    if type(value) is not kind:
        raise TypeError(f"{where} is a {type(value).__name__}, not a {kind.__name__}")
    return value
