"""Atomic writes: an interrupted write leaves the old file or folder, never half of a new one."""

import os

import numpy as np
import polars as pl
import pytest

from dedup_assets.core.atomic_io import atomic_dir, atomic_path, save_npy, write_parquet


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"], "no temporary file left behind"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_dir_swaps_whole_trees(tmp_path):
    target = tmp_path / "tree"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in target.rglob("*")] == ["sub", "old.txt"]
    assert sorted(os.listdir(tmp_path)) == ["tree"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.rglob("*")] == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["tree"]


def test_writers_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.load(save_npy(arr, tmp_path / "x.npy")), arr)
    df = pl.DataFrame({"a": [1, 2], "b": ["x", None]})
    assert pl.read_parquet(write_parquet(df, tmp_path / "d" / "x.parquet")).equals(df)
