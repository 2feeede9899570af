"""Local scaling: a pair's threshold follows how close unrelated images come where it lies.

A cosine means different things in different parts of a class: in a dense region (calm
water, bare fields) unrelated images score 0.85 with their nearest neighbour, in a sparse
one 0.4, so one threshold for the class either removes unrelated images in the dense
region or misses copies in the sparse one. On a planted EuroSAT set 99% of the planted
pairs were each other's nearest neighbours while a single cosine per class found only 91%
of them at 1% false removals: the ranking is right, the threshold is not.

Each image gets a *local level*: its highest similarity to a mirrored image of its class
(`core.decision.calibration` explains the mirrors: plausible images of the class that duplicate
nothing), leaving out its own mirror and the mirrors of its K_NEIGHBOURS nearest images of
the class (an image's copy has a mirror close to the image's own mirror, which for a
nearly symmetric scene is close to the image itself, and would lift the level of exactly
the images that have copies). A pair is judged by its *margin* above the levels,

    margin(i, j) = cos(i, j) - (level_i + level_j) / 2,

the pair's similarity less the average of how close unrelated images come to either side
(the cross-domain similarity local scaling of Conneau et al. 2018, with decoys as the
neighbourhood). A false-removal budget becomes one margin per class (`null_margins`), so the
cosine a pair must exceed is its own: margin threshold + (level_i + level_j) / 2, the
dynamic threshold the paper names as future work. Because the offsets are per image, every
join stays a blocked product (`similarity.iter_similarity_blocks` with `offsets`).

Where both levels are high (a dense region of a dense class: calm water), the margin
threshold plus both levels can pass 1, and no pair could reach it: a re-encoded copy at
0.9999 would stay. So a budget also has a *ceiling* (`ceiling_of`): a cosine above every
similarity any decoy reached in the class, halfway from the highest to 1. A pair above it
is removed whatever its levels: a pair's two offsets count at most `ceiling - margin
threshold` together (`similarity.pair_offsets`). No null value reached the ceiling, so it
adds no false removal to those the budget was read from.

Measured (benchmarks/README.md): on the planted EuroSAT set the same codes reach AP 0.97
instead of 0.92 and recall 0.94 instead of 0.89 at the 1% budget, with fewer false removals.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from dedup_assets.core.decision.similarity import (
    DEFAULT_BLOCK,
    SlabOutputs,
    block_rows,
    top_columns,
)


class BudgetScaling(StrEnum):
    """What a false-removal budget ("1%") resolves to in each class (member names equal
    values: Dagster shows names).

    local: one margin per class, each pair judged above its own images' levels (default);
    uniform: one cosine per class, the same for every pair (the earlier behaviour).
    """

    local = "local"
    uniform = "uniform"


K_NEIGHBOURS = 2
"""Mirrors of an image's nearest images left out of its level: 2 keeps an image that has
two copies (a group of three) from having its level lifted by their mirrors (measured on
photos with planted groups of three: recall 0.61 with 1, 1.00 with 2)."""


@dataclass(frozen=True)
class LocalLevels:
    """Each image's level, the next best decoy's similarity, and whose mirror gave the level.

    level: (n,) highest similarity to an allowed mirrored image (0 where none is allowed:
    a class of at most K_NEIGHBOURS + 1 images); second: the highest over allowed mirrors of
    other images than `source` (equal to `level` where there is none); source: the image
    whose mirror gave `level` (-1 where none); excluded: (n, k + 1) the decoy columns each
    image may not use (its own mirror's and its nearest images', -1 for none), kept so the
    null reads the same ones.
    """

    level: np.ndarray
    second: np.ndarray
    source: np.ndarray
    excluded: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.level)

    @property
    def offsets(self) -> np.ndarray:
        """What each image subtracts from a pair's cosine: half its level."""
        return (self.level.astype(np.float32) * np.float32(0.5)).astype(np.float32)

    def without(self, rows: np.ndarray, other: np.ndarray) -> np.ndarray:
        """The level of image rows[k] when other[k]'s mirror is left out (broadcasting)."""
        return np.where(self.source[rows] == other, self.second[rows], self.level[rows])

    def take(self, rows: np.ndarray) -> LocalLevels:
        """The levels of a subset of the images (their sources keep the old indices)."""
        rows = np.asarray(rows, dtype=np.int64)
        return LocalLevels(self.level[rows], self.second[rows], self.source[rows])


def ceiling_of(highest_null: float) -> float:
    """A budget's ceiling (module doc): halfway from the highest similarity a decoy reached
    in the class (its null's raw cosines) to 1; 1.0 where the null reached 1."""
    top = float(highest_null)
    if not np.isfinite(top):
        return 1.0
    return float(min(1.0, (1.0 + min(top, 1.0)) / 2.0))


def best_with_cap(
    raw: np.ndarray,
    row_offsets: np.ndarray,
    col_offsets: np.ndarray,
    cap: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best score and its column in `raw` (cosines, rows x cols) once each pair
    loses its offsets, at most `cap` together: max(margin, cosine - cap) per pair, so the
    best is the higher of the best margin and the best cosine less `cap`. Modifies `raw`
    (it ends as the margins). Rows without columns: -inf and column -1."""
    n_rows = raw.shape[0]
    if raw.shape[1] == 0:
        return np.full(n_rows, -np.inf, np.float32), np.full(n_rows, -1, np.int64)
    at = np.arange(n_rows)
    raw_at = raw.argmax(axis=1) if cap is not None else None
    raw_best = raw[at, raw_at] - np.float32(cap) if cap is not None else None
    raw -= np.asarray(row_offsets, np.float32)[:, None]
    raw -= np.asarray(col_offsets, np.float32)[None, :]
    best_at = raw.argmax(axis=1)
    best = raw[at, best_at]
    if cap is not None:
        higher = raw_best > best
        best = np.where(higher, raw_best, best).astype(np.float32)
        best_at = np.where(higher, raw_at, best_at)
    return best, best_at


def _excluded_columns(
    vectors: np.ndarray,
    rows: np.ndarray,
    sources: np.ndarray,
    column_of: np.ndarray,
    k: int,
    outputs: SlabOutputs | None = None,
) -> np.ndarray:
    """(len(rows), k + 1) decoy columns rows may not use (-1: none): their own mirror's and
    the mirrors of their k most similar images among the decoys' sources. `outputs`: where
    the block's products go (a new array without)."""
    b = len(rows)
    # (b, m): each row against the decoys' sources
    near = (outputs or SlabOutputs()).product(vectors[rows], vectors[sources].T)
    own = column_of[rows]
    has_own = own >= 0
    near[np.flatnonzero(has_own), own[has_own]] = -np.inf
    out = np.full((b, k + 1), -1, dtype=np.int64)
    out[:, 0] = own
    kk = int(min(k, max(near.shape[1] - 1, 0)))
    if kk > 0:
        out[:, 1 : kk + 1] = top_columns(near, kk)
    return out


def _allowed_similarities(
    vectors: np.ndarray,
    decoys: np.ndarray,
    excluded: np.ndarray,
    start: int,
    stop: int,
    outputs: SlabOutputs | None = None,
) -> np.ndarray:
    """Images start:stop against every decoy, with their excluded decoys at -inf (in the
    buffer of `outputs`, valid until its next product, when given)."""
    s = (outputs or SlabOutputs()).product(vectors[start:stop], decoys.T)
    banned = excluded[start:stop]
    r, c = np.nonzero(banned >= 0)
    s[r, banned[r, c]] = -np.inf
    return s


def local_levels(
    vectors: np.ndarray,
    decoys: np.ndarray,
    decoy_rows: np.ndarray,
    *,
    k: int = K_NEIGHBOURS,
    block: int = DEFAULT_BLOCK,
) -> LocalLevels:
    """Every image's level against the decoys (unit rows; decoys[c] is the mirror of image
    decoy_rows[c]), in blocks of images: memory is one block x decoys slab."""
    vectors = np.asarray(vectors, dtype=np.float32)
    decoys = np.asarray(decoys, dtype=np.float32)
    sources = np.asarray(decoy_rows, dtype=np.int64)
    n, m = len(vectors), len(decoys)
    level = np.zeros(n, np.float32)
    second = np.zeros(n, np.float32)
    source = np.full(n, -1, np.int64)
    excluded = np.full((n, k + 1), -1, np.int64)
    if n == 0 or m == 0:
        return LocalLevels(level, second, source, excluded)
    column_of = np.full(n, -1, np.int64)
    column_of[sources] = np.arange(m)
    step = block_rows(m, block)
    outputs = SlabOutputs()  # one buffer for the blocks' products (each read before the next)
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = np.arange(start, stop)
        excluded[start:stop] = _excluded_columns(vectors, rows, sources, column_of, k, outputs)
        s = _allowed_similarities(vectors, decoys, excluded, start, stop, outputs)
        at = np.arange(stop - start)
        best = s.argmax(axis=1)
        top = s[at, best]
        s[at, best] = -np.inf
        nxt = s.max(axis=1)
        found = np.isfinite(top)
        level[start:stop] = np.where(found, top, 0.0)
        second[start:stop] = np.where(np.isfinite(nxt), nxt, level[start:stop])
        source[start:stop] = np.where(found, sources[best], -1)
    return LocalLevels(level, second, source, excluded)


def null_margins(
    vectors: np.ndarray,
    decoys: np.ndarray,
    decoy_rows: np.ndarray,
    levels: LocalLevels,
    *,
    k: int = K_NEIGHBOURS,
    block: int = DEFAULT_BLOCK,
) -> np.ndarray:
    """The margins whose quantile is a budget's margin threshold: what an unrelated image's
    best pair scores. Image i against decoy c (the mirror of image s) is the pair

        cos(i, mirror s) - (level of i without s's mirror + level of s without i's) / 2,

    judged exactly as a pair of real images is (the decoy takes its source's level, the
    level of the mirrored image in the mirrored class). With every image mirrored, each
    image's best pair over the decoys it may use; with a sample of mirrors, each mirror's
    best pair over the images that may use it (the same comparison read from the mirrors'
    side, as `calibration.mirror_null` does). The decoys each image may not use are the
    ones its levels left out (`levels.excluded`, else found again with `k`)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    decoys = np.asarray(decoys, dtype=np.float32)
    sources = np.asarray(decoy_rows, dtype=np.int64)
    n, m = len(vectors), len(decoys)
    full = m == n and np.array_equal(sources, np.arange(n))
    out = np.full(n if full else m, -np.inf, np.float32)
    if n == 0 or m == 0:
        return out
    step = block_rows(m, block)
    excluded = levels.excluded
    if excluded is None or len(excluded) != n:
        column_of = np.full(n, -1, np.int64)
        column_of[sources] = np.arange(m)
        excluded = np.concatenate(
            [
                _excluded_columns(vectors, np.arange(a, min(a + step, n)), sources, column_of, k)
                for a in range(0, n, step)
            ]
        )
    half = np.float32(0.5)
    outputs = SlabOutputs()
    for start in range(0, n, step):
        stop = min(start + step, n)
        rows = np.arange(start, stop)
        s = _allowed_similarities(vectors, decoys, excluded, start, stop, outputs)
        mine = levels.without(rows[:, None], sources[None, :])
        theirs = levels.without(sources[None, :], rows[:, None])
        s -= half * (mine + theirs)
        if full:
            out[start:stop] = s.max(axis=1)
        else:
            np.maximum(out, s.max(axis=0), out=out)
    return out


def outsider_levels(
    outsiders: np.ndarray,
    vectors: np.ndarray,
    decoys: np.ndarray,
    decoy_rows: np.ndarray,
    *,
    k: int = K_NEIGHBOURS,
    block: int = DEFAULT_BLOCK,
) -> np.ndarray:
    """The level images from outside the class (the reference pool, `core.decision.reference_pool`)
    would have in it: the highest similarity to one of the class's mirrors, leaving out the
    mirrors of their k nearest images of the class, as an image of the class leaves them
    out (they have no mirror of their own among the decoys). Blocked like `local_levels`."""
    outsiders = np.asarray(outsiders, dtype=np.float32)
    vectors = np.asarray(vectors, dtype=np.float32)
    decoys = np.asarray(decoys, dtype=np.float32)
    sources = np.asarray(decoy_rows, dtype=np.int64)
    level = np.zeros(len(outsiders), np.float32)
    m = len(decoys)
    if len(outsiders) == 0 or m == 0:
        return level
    column_of = np.full(len(vectors), -1, np.int64)
    column_of[sources] = np.arange(m)
    step = block_rows(max(m, len(vectors)), block)
    kk = int(min(k, len(vectors)))
    outputs, nearest = SlabOutputs(), SlabOutputs()  # two products held at once
    for start in range(0, len(outsiders), step):
        part = outsiders[start : start + step]
        s = outputs.product(part, decoys.T)
        if kk > 0:
            near = top_columns(nearest.product(part, vectors.T), kk)
            banned = column_of[near]
            r, c = np.nonzero(banned >= 0)
            s[r, banned[r, c]] = -np.inf
        top = s.max(axis=1)
        level[start : start + len(part)] = np.where(np.isfinite(top), top, 0.0)
    return level
