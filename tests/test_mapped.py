"""`core.data.mapped.release_rows`: a pass over a memory-mapped pixel store lets go of the
rows it read, so the process holds a chunk of the file's pages, not all of them; what the
array reads is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from dedup_assets.core.data.mapped import release_rows

ROWS = 600  # 600 images of 64x64x3: 7 MB


def _rss_file_kib() -> int:
    """File pages mapped into this process (Linux's RssFile)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "pixels.npy"
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(ROWS, 64, 64, 3))
    pixels[:] = np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8)
    pixels.flush()
    del pixels
    return path


def test_a_pass_that_releases_holds_a_chunk_not_the_file(store):
    mapped = np.load(store, mmap_mode="r")
    expected = np.load(store)  # in memory: the reference
    before = _rss_file_kib()
    total = 0
    for at in range(0, ROWS, 64):
        total += int(np.asarray(mapped[at : at + 64]).sum(dtype=np.int64))
        assert release_rows(mapped, at, at + 64)
    held = _rss_file_kib() - before
    assert held < 2 * 64 * 64 * 64 * 3 / 1024 + 64  # at most about a chunk, not 7 MB
    assert total == int(expected.sum(dtype=np.int64))
    # Without releasing, the same pass ends holding the whole file.
    again = np.load(store, mmap_mode="r")
    before = _rss_file_kib()
    for at in range(0, ROWS, 64):
        np.asarray(again[at : at + 64]).sum()
    assert _rss_file_kib() - before > 0.9 * ROWS * 64 * 64 * 3 / 1024
    # Released rows read the same afterwards (mapped again from the page cache).
    assert release_rows(again, 0, ROWS)
    assert np.array_equal(np.asarray(again[::7]), expected[::7])


def test_views_and_ranges(store):
    mapped = np.load(store, mmap_mode="r")
    view = mapped[100:300]
    np.asarray(view).sum()
    assert release_rows(view, 0, len(view))  # a view of the map releases its own rows
    assert np.array_equal(np.asarray(view[-1]), np.load(store)[299])
    assert not release_rows(mapped, 5, 5)  # empty
    assert not release_rows(mapped, 700, 800)  # beyond the rows: clipped to nothing
    assert release_rows(mapped, -5, 1)  # clipped to row 0
    assert release_rows(mapped, 0, 10**9)  # clipped to the rows


@pytest.mark.parametrize("mode", ["r+", "c"])
def test_a_writable_map_is_left_alone(store, mode):
    """Dropping a private copy-on-write page would lose what was written into it."""
    mapped = np.load(store, mmap_mode=mode)
    assert not release_rows(mapped, 0, ROWS)


@pytest.mark.parametrize(
    "array", [np.zeros((4, 3), np.uint8), np.zeros(0, np.uint8), np.zeros((2, 64, 64, 3))]
)
def test_an_array_in_memory_is_left_alone(array):
    assert not release_rows(array, 0, len(array))
