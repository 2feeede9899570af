"""Atomic writes: every output appears whole or not at all.

Files are written to a temporary sibling and moved into place with `os.replace`, which is
atomic on POSIX file systems; folders are built beside their destination and swapped in.
An interrupted run therefore never leaves a half-written asset behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it takes the place of `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_parquet(df: pl.DataFrame, path: Path | str) -> Path:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


def write_csv(df: pl.DataFrame, path: Path | str) -> Path:
    with atomic_path(path) as tmp:
        df.write_csv(tmp)
    return Path(path)


def write_json(obj: Any, path: Path | str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    return Path(path)


def write_bytes(data: bytes, path: Path | str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(text: str, path: Path | str) -> Path:
    return write_bytes(text.encode("utf-8"), path)


def save_npy(array: np.ndarray, path: Path | str) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
    return Path(path)


def save_npz(path: Path | str, **arrays: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)
