"""Cosine similarity within a class, computed in blocks so memory grows with N, not N^2.

Four similarity spaces are offered (PAPER.md section 7 and benchmarks/README.md measure
them):
- `raw`: the paper as written, cosine of the 1024 post-ReLU latents;
- `whitened`: cosine of the leading principal components divided by their std;
- `spline_copula`: each leading component mapped through its spline CDF to a normal
  score, then cosine;
- `spline_copula_dct` (the default): the spline-copula vector joined with the image's
  low-frequency DCT descriptor (`core.decision.dct_descriptor`), so the cosine is
  LATENT_WEIGHT x the spline-copula cosine + (1 - LATENT_WEIGHT) x the DCT one. The
  invariant codes see through crops and shifts, the DCT descriptor exactly through
  brightness and contrast and nearly through noise; on planted EuroSAT the two together
  ranked copies better than either (AP of margins 0.98 against 0.97 and 0.97).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the join itself needs only numpy
    from dedup_assets.core.density.class_density import ClassDensityModel


class SimilaritySpace(StrEnum):
    """Where cosine similarity is measured (member names equal values: Dagster shows names)."""

    raw = "raw"
    whitened = "whitened"
    spline_copula = "spline_copula"
    spline_copula_dct = "spline_copula_dct"


SIMILARITY_SPACES: tuple[str, ...] = tuple(s.value for s in SimilaritySpace)
LATENT_SPACES: tuple[str, ...] = ("raw", "whitened", "spline_copula")  # what `embed` makes
LATENT_WEIGHT = 0.7
"""The spline-copula cosine's share of the joined space's (measured on two planted EuroSAT
sets and planted hymenoptera: 0.7 found 96-97% of EuroSAT's copies at the 1% budget, 0.8
94.7-96.3%, 0.5 97% with more false removals on the photos)."""
DEFAULT_BLOCK = 2048
MAX_SLAB_BYTES = 256 * 2**20  # one block of similarities: 256 MiB at most


class SlabOutputs(threading.local):
    """A reusable output for the products of a loop, one per thread.

    A product's fresh result above glibc's mmap threshold is mapped anew and faulted in page
    by page each time: a quarter of each 497 x 120,000 slab of the 135,000-image cross-class
    join (0.18 s against 0.135 s written into a kept buffer). Each thread keeps one buffer,
    as large as its largest product so far; a result is valid until that thread's next
    product, so read it (or copy what is kept) before asking for another. `capacity`: the
    values of the largest product expected, allocated on first use (products that grow, as
    a kept set does, would otherwise each outgrow the last)."""

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = int(capacity)

    def product(self, a: np.ndarray, b_t: np.ndarray) -> np.ndarray:
        """`a @ b_t` (float32; the same bits as the operator) in this thread's buffer."""
        size = a.shape[0] * b_t.shape[1]
        buffer = getattr(self, "buffer", None)
        if buffer is None or buffer.size < size:
            buffer = self.buffer = np.empty(max(size, self.capacity), dtype=np.float32)
        return np.matmul(a, b_t, out=buffer[:size].reshape(a.shape[0], b_t.shape[1]))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; an all-zero row stays zero (similarity 0)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


TOP_BY_PASSES = 8
"""Up to this many columns a row, `top_columns` takes one argmax pass per column."""


def top_columns(s: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) column indices of each row's k largest values of `s` (k <= its columns),
    highest first, equal values by lowest column; `s` is overwritten (a caller's
    temporary). For the few neighbours the levels leave out (k = 2) one argmax pass a
    column: numpy's argpartition of a negated copy read a class's 15,000 x 4,096 products
    about ten times slower, and was a quarter of a large class's keep decision."""
    rows = len(s)
    k = int(k)
    if k <= 0:
        return np.zeros((rows, 0), dtype=np.int64)
    if k > s.shape[1]:
        raise ValueError(f"k = {k} columns asked of a matrix of {s.shape[1]}")
    if k > TOP_BY_PASSES:
        return np.argsort(-s, axis=1, kind="stable")[:, :k].astype(np.int64)
    out = np.empty((rows, k), dtype=np.int64)
    r = np.arange(rows)
    for j in range(k):
        at = s.argmax(axis=1)
        out[:, j] = at
        if j + 1 < k:
            s[r, at] = -np.inf
    return out


def with_origin_axis(unit: np.ndarray) -> np.ndarray:
    """Give zero rows a direction of their own, so they are identical to each other.

    A zero embedding (an image exactly at the class mean of a centred space) has no
    cosine with anything; left as is it would hide every copy of that image. An extra
    axis, 1 for zero rows and 0 otherwise, makes zero rows similar (1.0) to each other
    and to nothing else, and leaves every other similarity unchanged.
    """
    zero = ~np.any(unit != 0, axis=1)
    if not zero.any():
        return unit
    return np.hstack([unit, zero[:, None].astype(unit.dtype)])


def embed(
    latents: np.ndarray, space: SimilaritySpace, model: ClassDensityModel | None = None
) -> np.ndarray:
    """Unit vectors whose dot products are the cosine similarities of `space`.

    `whitened` and `spline_copula` need the class's density model (PCA + spline fits).
    Rows that would be zero (no direction) are handled by `with_origin_axis`. Rows without
    latents (width 0: a reference pool borrowed in a pixel descriptor space,
    `ReferencePool.as_class`) are refused, not embedded as zeros.
    """
    if np.ndim(latents) != 2 or (len(latents) and np.shape(latents)[1] == 0):
        raise ValueError(
            f"the {space} space needs the images' latents; these rows carry none "
            f"(shape {np.shape(latents)})"
        )
    if space == "raw":
        return with_origin_axis(l2_normalize(latents))
    if space not in SIMILARITY_SPACES:
        raise ValueError(f"unknown similarity space {space!r}; choose one of {SIMILARITY_SPACES}")
    if space == "spline_copula_dct":
        raise ValueError("spline_copula_dct needs the pixels too: use class_decision.vectorise")
    if model is None:
        raise ValueError(f"similarity space {space!r} needs the class's density model")
    if model.density is None:
        return with_origin_axis(np.zeros((len(latents), 1), dtype=np.float32))
    scores = model.scores(latents)
    if space == "whitened":
        std = np.sqrt(model.pca.variances).astype(np.float32)
        return with_origin_axis(l2_normalize(scores / np.where(std > 0, std, 1.0)))
    return with_origin_axis(l2_normalize(model.density.normal_scores(scores)))


def joined(
    latent_vectors: np.ndarray, pixel_vectors: np.ndarray, weight: float = LATENT_WEIGHT
) -> np.ndarray:
    """Unit rows whose dot products are weight x the latent cosine + (1 - weight) x the
    pixel descriptor's (both inputs unit or zero rows); a zero part counts as no vote."""
    a = np.asarray(latent_vectors, dtype=np.float32) * np.float32(np.sqrt(weight))
    b = np.asarray(pixel_vectors, dtype=np.float32) * np.float32(np.sqrt(1.0 - weight))
    return with_origin_axis(l2_normalize(np.hstack([a, b])))


def block_rows(n: int, block: int = DEFAULT_BLOCK) -> int:
    """Rows per block: at most `block`, fewer for huge classes so a slab stays in budget."""
    return int(max(1, min(block, max(64, MAX_SLAB_BYTES // (4 * max(n, 1))))))


def pair_offsets(rows: np.ndarray, cols: np.ndarray, cap: float | None = None) -> np.ndarray:
    """(len(rows), len(cols)): what each pair's score loses, rows[i] + cols[j], at most
    `cap` (a budget's ceiling less its margin, `core.decision.local_scaling`; None: no cap)."""
    out = np.add.outer(np.asarray(rows, np.float32), np.asarray(cols, np.float32))
    if cap is not None:
        np.minimum(out, np.float32(cap), out=out)
    return out


def iter_similarity_blocks(
    x: np.ndarray,
    block: int = DEFAULT_BLOCK,
    offsets: np.ndarray | None = None,
    offset_cap: float | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (row_start, col_start, S) where S = x[rows] @ x[col_start:].T, upper triangle only.

    With `offsets` (one per row of x), S[i, j] - offsets[i] - offsets[j] instead: the
    margins of `core.decision.local_scaling` (the two offsets at most `offset_cap`
    together, when given). Peak memory is one block x N slab (see MAX_SLAB_BYTES; twice
    that with a cap); pairs are never computed twice.
    """
    x = np.asarray(x, dtype=np.float32)  # scores are float32 everywhere (thresholds too)
    offsets = None if offsets is None else np.asarray(offsets, dtype=np.float32)
    n = len(x)
    rows = block_rows(n, block)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        s = x[start:stop] @ x[start:].T
        if offsets is not None and offset_cap is not None:
            s -= pair_offsets(offsets[start:stop], offsets[start:], offset_cap)
        elif offsets is not None:
            s -= offsets[start:stop, None]
            s -= offsets[None, start:]
        yield start, start, s


def pairs_above(
    x: np.ndarray, threshold: float, block: int = DEFAULT_BLOCK, offsets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with cosine(x_i, x_j) > threshold, for unit rows x (with `offsets`,
    margin > threshold; see `iter_similarity_blocks`).

    Returns (i, j, similarity or margin) arrays; memory is the output plus one block slab.
    """
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    for row0, col0, s in iter_similarity_blocks(x, block, offsets):
        flat = np.flatnonzero(s > threshold)  # much faster than a 2-D nonzero
        r, c = np.divmod(flat, s.shape[1])
        upper = c > r  # the block's first columns are its own rows: keep j > i only
        ii.append(row0 + r[upper])
        jj.append(col0 + c[upper])
        ss.append(s.reshape(-1)[flat[upper]])
    if not ii:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(ss).astype(np.float32)


def count_pairs_above(
    x: np.ndarray,
    thresholds: np.ndarray,
    block: int = DEFAULT_BLOCK,
    *,
    inclusive: bool = False,
    offsets: np.ndarray | None = None,
    offset_cap: float | None = None,
) -> np.ndarray:
    """How many pairs i < j have similarity (margin, with `offsets`, capped by `offset_cap`
    as `iter_similarity_blocks` says) > each threshold (>= when `inclusive`).

    Exact and blocked: no pair list is kept, only each block's sorted similarities.
    """
    thresholds = np.asarray(thresholds, dtype=np.float32)
    counts = np.zeros(len(thresholds), dtype=np.int64)
    for row0, col0, s in iter_similarity_blocks(x, block, offsets, offset_cap):
        rows = np.arange(row0, row0 + len(s))
        cols = np.arange(col0, col0 + s.shape[1])
        vals = np.sort(s[cols[None, :] > rows[:, None]])
        counts += len(vals) - np.searchsorted(
            vals, thresholds, side="left" if inclusive else "right"
        )
    return counts
