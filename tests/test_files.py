"""Atomic writes: a failed write leaves the old file whole and no temporary file behind."""

import os

import pytest

from dcgan_tf.files import atomic_write


def test_atomic_write_replaces_on_success_and_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "sub" / "result.json")
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path / "sub") == ["result.json"]
    with atomic_write(path, "wb") as f:
        f.write(b"new")
    assert open(path).read() == "new"
