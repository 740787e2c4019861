import numpy as np
import pytest

from task.data import CACHE_FILE, TEST_LABEL_COUNTS, TRAIN_LABEL_COUNTS, DataError, load_mnist


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
