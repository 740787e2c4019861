import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from task.data import CACHE_FILE, SHA256, TEST_LABEL_COUNTS, TRAIN_LABEL_COUNTS, DataError, load_mnist

ROOT = Path(__file__).resolve().parent.parent


def test_canonical_mnist_shapes_and_label_counts(mnist):
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == np.uint8
    assert tuple(np.bincount(mnist.train_labels)) == TRAIN_LABEL_COUNTS
    assert tuple(np.bincount(mnist.test_labels)) == TEST_LABEL_COUNTS
    assert mnist.train_images.max() == 255 and mnist.train_images.min() == 0


def test_cache_is_built_in_an_empty_folder_and_reused(tmp_path, mnist):
    fresh = load_mnist(tmp_path)
    assert (tmp_path / CACHE_FILE).exists()
    assert np.array_equal(fresh.test_images, mnist.test_images)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically


def test_corrupt_cache_names_the_file_and_the_fix(tmp_path):
    (tmp_path / CACHE_FILE).write_bytes(b"not a zip file")
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path)
    assert str(tmp_path / CACHE_FILE) in str(err.value)
    assert "Delete" in str(err.value)


def test_tampered_cache_fails_the_integrity_check(tmp_path, mnist):
    arrays = {
        "train_images": mnist.train_images.copy(),
        "train_labels": mnist.train_labels,
        "test_images": mnist.test_images,
        "test_labels": mnist.test_labels,
    }
    arrays["train_images"][0, 0, 0] ^= 1
    np.savez(tmp_path / CACHE_FILE, **arrays)
    with pytest.raises(DataError, match="train_images .* SHA-256"):
        load_mnist(tmp_path)


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


def test_a_torchvision_mnist_folder_is_read_as_is(tmp_path, mnist):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", mnist.train_images)
    _write_idx(raw / "train-labels-idx1-ubyte", mnist.train_labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", mnist.test_images)
    _write_idx(raw / "t10k-labels-idx1-ubyte", mnist.test_labels)
    loaded = load_mnist(tmp_path)
    assert np.array_equal(loaded.train_images, mnist.train_images)
    assert not (tmp_path / CACHE_FILE).exists()


def test_a_truncated_torchvision_file_is_reported(tmp_path, mnist):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", mnist.train_images[:10])
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:-5])
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)


_RESIDENT = """
import json, sys
import numpy as np
from task.data import load_mnist
from task.shards import NodeData


def file_kb():  # the pages of the cache file this process holds resident, from its map's entry in smaps
    kb, ours = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and ":" not in head[0]:  # a mapping's first line: address range, ..., path
            ours = line.rstrip().endswith("mnist-uint8.npz")
        elif ours and head[0] == "Rss:":
            kb += int(head[1])
    return kb


mnist = load_mnist(sys.argv[1])
loaded = file_kb()
total = int(mnist.train_images.sum(dtype=np.int64))  # reads every page of the 47 MB of training images
read = file_kb()
cut = NodeData.cut(mnist, np.arange(0, 60000, 7), np.arange(0, 10000, 7))
print(json.dumps([loaded, read, file_kb(), total, len(cut.train), mnist.train_images.flags.writeable]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_cache_is_read_through_a_map_whose_pages_leave_the_process_once_checked_and_cut(tmp_path, mnist):
    np.savez(tmp_path / CACHE_FILE, **{k: getattr(mnist, k) for k in SHA256})
    done = subprocess.run(
        [sys.executable, "-c", _RESIDENT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded, read, after_cut, total, cut, writeable = json.loads(done.stdout)
    assert total == int(mnist.train_images.sum(dtype=np.int64)) and cut == 8572 and writeable is False
    assert loaded < 1_000  # checked, and let go
    assert read > 40_000  # reading the images made about 47 MB of the file resident here...
    assert after_cut < 1_000  # ...and cutting a shard let them go again


def test_a_compressed_cache_is_read_into_memory_with_the_same_arrays(tmp_path, mnist):
    np.savez_compressed(tmp_path / CACHE_FILE, **{k: getattr(mnist, k) for k in SHA256})
    loaded = load_mnist(tmp_path)
    assert loaded.pages is None
    for key in SHA256:
        assert np.array_equal(getattr(loaded, key), getattr(mnist, key))


def test_a_cache_whose_array_runs_past_the_end_of_the_file_is_refused(tmp_path, mnist):
    np.savez(tmp_path / CACHE_FILE, **{k: getattr(mnist, k) for k in SHA256})
    whole = (tmp_path / CACHE_FILE).read_bytes()
    (tmp_path / CACHE_FILE).write_bytes(whole[: len(whole) // 2] + whole[-2000:])  # keeps the zip directory
    with pytest.raises(DataError, match="unreadable.*Delete"):
        load_mnist(tmp_path)
