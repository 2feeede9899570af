"""Memory-mapped arrays read in a pass: letting go of the rows a pass has read.

A class's pixel store is memory-mapped (`artifacts.open_pixels`). Every page a pass touches
stays mapped into the process until the array is let go, so a pass over a class of
100,000 images (1.2 GB of pixels) ends holding all of them: page cache, reclaimable, but
counted in the process's resident and proportional set sizes, which are what a user's
monitor shows and what `benchmarks/bench_scale.py` measures. A pass that calls
`release_rows` after each chunk holds one chunk instead; a later read maps the pages again
from the page cache, and an array in memory is left alone.

Scattered rows are worse than a pass: Linux (6.18 here) caches a file written in one large
write in large folios, up to `hpage_pmd_size` (2 MiB), and a fault maps the whole folio, so
reading 409 scattered rows of a freshly written store of 100,000 mapped 592 MiB of it (one
row is 12 KiB). `take_rows` copies scattered rows out a chunk at a time and lets go of each
chunk's span, widened by that folio size on both sides.
"""

from __future__ import annotations

import mmap

import numpy as np

_PAGE = mmap.PAGESIZE
TAKE_CHUNK = 64  # scattered rows copied between two releases


def _largest_folio() -> int:
    """Bytes a single fault may map around a row: the kernel's PMD size (2 MiB on x86-64)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as fh:
            return max(_PAGE, int(fh.read().strip()))
    except (OSError, ValueError):
        return 2 << 20


_FOLIO = _largest_folio()


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    """The read-only file map under `array`: numpy's own (`np.load(mmap_mode="r")`), found
    through any views of it, `np.asarray` of it among them (a plain ndarray whose base is
    the map). None for anything else, a copy-on-write map above all (dropping its pages
    would drop what was written into them)."""
    seen = array
    for _ in range(64):  # a chain of views; never a cycle, but bounded all the same
        if isinstance(seen, np.memmap) and getattr(seen, "_mmap", None) is not None:
            return seen._mmap if seen.mode == "r" else None
        seen = getattr(seen, "base", None)
        if seen is None:
            return None
    return None


def _releasable(array: np.ndarray) -> bool:
    """A read-only, C-ordered view of a file map on a platform with madvise: dropping its
    pages loses nothing."""
    if not isinstance(array, np.ndarray) or array.ndim == 0 or array.flags.writeable:
        return False
    mapping = _mapping(array)
    return mapping is not None and array.flags.c_contiguous and hasattr(mapping, "madvise")


def release_rows(array: np.ndarray, start: int, stop: int) -> bool:
    """Drop rows [start, stop) of a read-only memory-mapped `array`, and the pages a fault in
    them may have mapped around them, from this process's mapping (`madvise(MADV_DONTNEED)`;
    the file and the page cache are untouched). True when something was released; False for
    an array that is not a read-only map, an empty range, or a platform without madvise."""
    if not _releasable(array):
        return False
    mapping = _mapping(array)
    start, stop = max(0, start), min(len(array), stop)
    if stop <= start:
        return False
    base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    row = array.strides[0]
    # Widened by a folio on each side: a fault in the range may have mapped the whole
    # large folio around it (see the module's docstring).
    first = max(0, array.ctypes.data - base + start * row - _FOLIO)
    last = array.ctypes.data - base + stop * row + _FOLIO
    lo = first - first % _PAGE
    hi = min(len(mapping), -(-last // _PAGE) * _PAGE)
    if hi <= lo:
        return False
    mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return True


def take_rows(
    array: np.ndarray,
    rows: np.ndarray,
    out: np.ndarray | None = None,
    at: np.ndarray | None = None,
) -> np.ndarray:
    """`array[rows]` as an array in memory: a new one, or written into `out` (at its rows
    `at`, in order, when given: `out[at] = array[rows]`), holding at most a chunk of a
    read-only memory-mapped `array`'s pages at a time (`release_rows` after each
    `TAKE_CHUNK` rows, taken in file order); any other array is indexed as it is."""
    rows = np.asarray(rows, dtype=np.int64)
    if out is None:
        out = np.empty((len(rows),) + array.shape[1:], dtype=array.dtype)
    at = np.arange(len(rows)) if at is None else np.asarray(at, dtype=np.int64)
    if len(at) != len(rows):
        raise ValueError(f"{len(rows)} rows to take but {len(at)} places to put them")
    if not _releasable(array):
        out[at] = array[rows]
        return out
    order = np.argsort(rows, kind="stable")
    for start in range(0, len(rows), TAKE_CHUNK):
        part = order[start : start + TAKE_CHUNK]
        out[at[part]] = array[rows[part]]
        release_rows(array, int(rows[part[0]]), int(rows[part[-1]]) + 1)
    return out
