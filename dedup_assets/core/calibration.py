"""Thresholds as a false-removal budget: which cosine removes at most a share b of the
images that have no duplicate, class by class.

An image is removed when its most similar kept neighbour scores above T, so the false
removals at T are the images without a duplicate whose nearest unrelated neighbour scores
above T. That nearest-unrelated similarity cannot be read from the class itself (a real
duplicate would hide it), so it is read against decoys: the class's own images mirrored
left to right, encoded and embedded in the class's space like any image. A mirrored
image is a plausible image of the class (aerial scenes and photos alike) with the same
statistics, and it is a duplicate of nothing: the invariant training never shows the
model a flip unless `hflip` is turned on (then mirror top to bottom instead). So

    null_i = max_j cos(v_i, decoy_j)        over all n decoys of the class,

is the similarity of image i to its nearest unrelated image among n, and the budget's
cosine is the (1 - b) quantile of null over the class: a share b of images without a
duplicate would have a neighbour above it. The join is blocked like every other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dedup_assets.core.similarity import DEFAULT_BLOCK, block_rows


def mirrored(pixels: np.ndarray, vertical: bool = False) -> np.ndarray:
    """Decoy pixels: each uint8 NHWC image mirrored left-right (top-bottom if vertical)."""
    return np.ascontiguousarray(pixels[:, ::-1] if vertical else pixels[:, :, ::-1])


def nearest_decoy_similarity(
    vectors: np.ndarray, decoys: np.ndarray, block: int = DEFAULT_BLOCK
) -> np.ndarray:
    """For each unit row of vectors, its largest cosine with any unit row of decoys."""
    n = len(vectors)
    out = np.full(n, -1.0, dtype=np.float32)
    if n == 0 or len(decoys) == 0:
        return out
    rows = block_rows(len(decoys), block)
    for start in range(0, n, rows):
        s = vectors[start : start + rows] @ decoys.T
        out[start : start + len(s)] = s.max(axis=1)
    return out


def budget_thresholds(null: np.ndarray, budgets: Sequence[float]) -> list[float]:
    """The cosine of each budget: the (1 - b) quantile of the nearest-decoy similarities
    (higher, never interpolated: at most a share b lies strictly above it)."""
    if len(null) == 0:
        return [1.0 for _ in budgets]
    ordered = np.sort(np.asarray(null, dtype=np.float64))
    out = []
    for b in budgets:
        if not 0.0 < b < 1.0:
            raise ValueError(f"a false-removal budget must lie in (0, 1), got {b}")
        allowed = int(np.floor(b * len(ordered)))  # images that may lie above the cosine
        out.append(float(min(1.0, ordered[len(ordered) - 1 - allowed])))
    return out
