"""Memory-mapped arrays read in a pass: letting go of the rows a pass has read.

A class's pixel store is memory-mapped (`artifacts.open_pixels`). Every page a pass touches
stays mapped into the process until the array is let go, so a pass over a class of
100,000 images (1.2 GB of pixels) ends holding all of them: page cache, reclaimable, but
counted in the process's resident and proportional set sizes, which are what a user's
monitor shows and what `benchmarks/bench_scale.py` measures. A pass that calls
`release_rows` after each chunk holds one chunk instead; a later read maps the pages again
from the page cache, and an array in memory is left alone.
"""

from __future__ import annotations

import mmap

import numpy as np

_PAGE = mmap.PAGESIZE


def release_rows(array: np.ndarray, start: int, stop: int) -> bool:
    """Drop rows [start, stop) of a read-only memory-mapped `array` from this process's
    mapping (`madvise(MADV_DONTNEED)`; the file and the page cache are untouched). True when
    something was released; False for an array that is not a read-only map, an empty range,
    or a platform without madvise."""
    mapping = getattr(array, "_mmap", None)  # numpy's own map of the file, views included
    if (
        not isinstance(array, np.memmap)
        or mapping is None
        or array.flags.writeable
        or not array.flags.c_contiguous
        or not hasattr(mapping, "madvise")
        or array.ndim == 0
    ):
        return False
    start, stop = max(0, start), min(len(array), stop)
    if stop <= start:
        return False
    base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    row = array.strides[0]
    first = array.ctypes.data - base + start * row
    last = array.ctypes.data - base + stop * row
    lo = first - first % _PAGE
    hi = min(len(mapping), -(-last // _PAGE) * _PAGE)
    if hi <= lo:
        return False
    mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return True
