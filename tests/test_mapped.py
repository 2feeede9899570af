"""`core.data.mapped.release_rows`: a pass over a memory-mapped pixel store lets go of the
rows it read, so the process holds a chunk of the file's pages, not all of them; what the
array reads is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from dedup_assets.core.data.mapped import release_rows, take_rows

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


# --------------------------------------------------------------------------- take_rows


@pytest.fixture
def written_store(tmp_path):
    """A store written in one large write, as a class's catalog writes it (`np.save`): Linux
    may cache it in large folios, which a fault maps whole."""
    path = tmp_path / "written.npy"
    pixels = np.random.default_rng(1).integers(0, 256, (8192, 64, 64, 3), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.save(fh, pixels)
    return path, pixels


@pytest.mark.parametrize("count", [0, 1, 2, 63, 64, 65, 409, 8192])
def test_take_rows_reads_what_indexing_reads_and_holds_no_file(written_store, count):
    path, pixels = written_store
    rows = np.random.default_rng(count).choice(len(pixels), count, replace=False)
    mapped = np.load(path, mmap_mode="r")
    before = _rss_file_kib()
    taken = take_rows(mapped, rows)
    held = _rss_file_kib() - before
    assert taken.shape == (count, 64, 64, 3) and taken.dtype == np.uint8
    assert np.array_equal(taken, pixels[rows])  # same rows in the order asked
    assert not isinstance(taken, np.memmap)
    # Released as it went: nothing of the 96 MiB file left mapped (plain indexing of 409
    # scattered rows of such a file mapped 592 MiB of a class of 100,000 on Linux 6.18).
    assert held < 4 * 1024, f"{held} KiB of the store still mapped after taking {count} rows"


def test_take_rows_repeats_unsorted_and_places(written_store):
    path, pixels = written_store
    mapped = np.load(path, mmap_mode="r")
    rows = np.array([5, 5, 8000, 0, 4096, 5, -1])  # repeats, any order, from the end
    assert np.array_equal(take_rows(mapped, rows), pixels[rows])
    out = np.zeros((10, 64, 64, 3), np.uint8)
    at = np.array([9, 0, 3, 1, 2, 8, 7])
    assert take_rows(mapped, rows, out=out, at=at) is out
    expected = np.zeros_like(out)
    expected[at] = pixels[rows]
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="7 rows to take but 2 places"):
        take_rows(mapped, rows, out=out, at=at[:2])


@pytest.mark.parametrize("kind", ["memory", "r+", "c"])
def test_take_rows_of_other_arrays_is_indexing(written_store, kind):
    path, pixels = written_store
    array = pixels if kind == "memory" else np.load(path, mmap_mode=kind)
    rows = np.array([3, 1, 4, 1, 5])
    assert np.array_equal(take_rows(array, rows), pixels[rows])


def test_reference_pool_draw_holds_no_store(tmp_path, written_store):
    """The pool draws scattered rows of every class's store: it keeps the rows it drew,
    not the stores' pages (at a million images a drawn pool held 5.1 GB of them)."""
    from dedup_assets.core.decision.reference_pool import build_reference_pool

    path, pixels = written_store
    stores = [np.load(path, mmap_mode="r") for _ in range(3)]
    before = _rss_file_kib()
    pool = build_reference_pool(
        ["a", "b", "c"],
        stores,
        [np.array([f"h{i}" for i in range(len(pixels))])] * 3,
        lambda p: np.zeros((len(p), 4), np.float32),
        total=600,
    )
    assert len(pool) == 600
    assert _rss_file_kib() - before < 4 * 1024


def test_mirror_decoys_of_a_mapped_store_hold_no_store(written_store):
    """A class's budget encodes the mirrors of scattered rows of its store (the decoys)."""
    import torch

    from dedup_assets.core.decision.calibration import encode_mirrors
    from dedup_assets.core.model.autoencoder import ConvAutoencoder

    torch.manual_seed(0)
    model = ConvAutoencoder().eval()
    path, pixels = written_store
    mapped = np.load(path, mmap_mode="r")
    rows = np.sort(np.random.default_rng(2).choice(len(pixels), 300, replace=False))
    expected = encode_mirrors(model, pixels, rows)  # from memory; torch's code paged in
    before = _rss_file_kib()
    decoys = encode_mirrors(model, mapped, rows)
    assert _rss_file_kib() - before < 4 * 1024
    assert np.array_equal(decoys, expected)


def test_asarray_of_a_map_is_released(store):
    """`np.asarray(store)` is a plain ndarray over the map (how a class's pixels reach the
    DCT pass): its rows are let go all the same."""
    plain = np.asarray(np.load(store, mmap_mode="r"))
    assert not isinstance(plain, np.memmap)
    np.asarray(plain).sum()
    before = _rss_file_kib()
    assert release_rows(plain, 0, ROWS)
    assert _rss_file_kib() < before - 0.9 * ROWS * 64 * 64 * 3 / 1024


def test_a_read_only_view_of_a_copy_on_write_map_is_left_alone(store):
    mapped = np.load(store, mmap_mode="c")
    mapped[0] = 7  # written into a private page: dropping it would lose the write
    view = mapped[:10]
    view.setflags(write=False)
    assert not release_rows(view, 0, 10)
    assert np.array_equal(take_rows(view, np.array([0])), np.full((1, 64, 64, 3), 7, np.uint8))


def test_the_dct_pass_over_a_class_holds_no_store(written_store):
    """A class's DCT descriptors are computed over `np.asarray` of its mapped store
    (`class_decision._descriptor`): the pass holds a chunk of it, not the file."""
    from dedup_assets.core.decision.dct_descriptor import lowfreq_dct

    path, pixels = written_store
    expected = lowfreq_dct(pixels)
    class_pixels = np.asarray(np.load(path, mmap_mode="r"))  # held, as a class's data is
    before = _rss_file_kib()
    got = lowfreq_dct(class_pixels)
    assert _rss_file_kib() - before < 4 * 1024
    assert np.array_equal(got, expected)
