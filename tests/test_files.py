"""Atomic writes: a reader never sees half a file, a failure leaves the old files."""

import pytest

from task.files import atomic_write, write_files


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    atomic_write(path, lambda fh: fh.write(b"new"))
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def half(fh):
        fh.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_write_files_writes_all_or_none(tmp_path):
    a, b = tmp_path / "a", tmp_path / "missing-dir" / "b"
    a.write_text("old")
    with pytest.raises(OSError):
        write_files({a: b"new", b: b"x"})  # b's folder does not exist: nothing may change
    assert a.read_text() == "old"
    write_files({a: b"new", tmp_path / "c": b"c"})
    assert a.read_text() == "new" and (tmp_path / "c").read_text() == "c"
