"""Reading a pickle that may hold only numpy arrays, without letting it run code.

A pickle names the functions that rebuild its objects, and ``pickle.load`` imports
and calls whatever it names: a crafted file runs its author's code. The unpickler
here lets a file name only the numpy functions that rebuild arrays, dtypes and
scalars (and the one that rebuilds bytes), and refuses anything else before it is imported. :func:`pickle_imports`
lists what a pickle names without unpickling it, so a refusal can say what it asked for.
"""

from __future__ import annotations

import pickle
import pickletools
from typing import IO, Any

# What numpy pickles of arrays, dtypes and scalars name (numpy 2 moved numpy.core to numpy._core),
# and how protocol 2 writes bytes (_codecs.encode of a str; torch's weights_only reader allows it too).
ALLOWED_GLOBALS = frozenset(
    {"numpy.ndarray", "numpy.dtype", "_codecs.encode"}
    | {f"{core}.multiarray.{fn}" for core in ("numpy.core", "numpy._core") for fn in ("_reconstruct", "scalar")}
    | {f"{core}.numeric._frombuffer" for core in ("numpy.core", "numpy._core")}
)
_STRING_OPS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING"}


class UnsafePickle(pickle.UnpicklingError):
    """The pickle names something outside :data:`ALLOWED_GLOBALS`; nothing of it was run."""

    def __init__(self, name: str) -> None:
        super().__init__(f"it would import {name}")
        self.name = name


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" not in ALLOWED_GLOBALS:
            raise UnsafePickle(f"{module}.{name}")
        return super().find_class(module, name)


def load_numpy_pickle(fh: IO[bytes], encoding: str = "ASCII") -> Any:
    """``pickle.load`` for files of numpy arrays and plain values; :class:`UnsafePickle` for anything else."""
    return _NumpyOnlyUnpickler(fh, encoding=encoding).load()


def pickle_imports(data: bytes) -> list[str]:
    """The ``module.name`` of every global a pickle would import, read from its opcodes
    without running them ("?" where a crafted file hides one from this simple reading)."""
    found: list[str] = []
    strings: list[str] = []  # the strings pushed so far: STACK_GLOBAL takes the last two
    memo: dict[int, Any] = {}
    last: Any = None  # what the previous opcode pushed, for the memo
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name, pushed = opcode.name, None
            if name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
            elif name in _STRING_OPS:
                pushed = str(arg)
            elif name == "MEMOIZE":
                memo[len(memo)], pushed = last, last
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg], pushed = last, last
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed = memo.get(arg)
            if isinstance(pushed, str) and name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                strings.append(pushed)
            last = pushed
    except ValueError:  # truncated, or not a pickle past this point
        found.append("?")
    return found
