"""Near-identical images filed under different classes: likely label errors.

Within a class, similarity is measured in that class's own space (its principal axes and
spline fits), which does not compare across classes. Across classes one shared space is
used: the latents of every image, centred on the mean of all images and projected on their
leading principal axes (found by a randomized range finder on a sample, so memory stays
O(N x components)), then scaled to unit length. Exact copies (same decoded pixels) in two
classes are always reported, with similarity 1.0.

Each image is paired with its nearest image of another class (the blocked join of
`core.decision.similarity`, one block x N slab at a time, or an IVF index above the approximate
join's size), so the table holds at most N pairs and memory grows with N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dedup_assets.core.decision.ann_join import ivf_index
from dedup_assets.core.decision.similarity import (
    DEFAULT_BLOCK,
    block_rows,
    l2_normalize,
)

SAMPLE_FOR_AXES = 20_000
DEFAULT_COMPONENTS = 128


@dataclass(frozen=True)
class SharedSpace:
    """Centre and leading axes of every image's latents: one space for all classes."""

    mean: np.ndarray
    axes: np.ndarray | None  # (d, k); None: too few images for axes (centring only)

    @classmethod
    def fit(
        cls, latents: np.ndarray, n_components: int = DEFAULT_COMPONENTS, seed: int = 0
    ) -> SharedSpace:
        x = np.asarray(latents, dtype=np.float32)
        if len(x) == 0:
            return cls(np.zeros(x.shape[1] if x.ndim == 2 else 1, np.float32), None)
        rng = np.random.default_rng(seed)
        sample = x if len(x) <= SAMPLE_FOR_AXES else x[rng.choice(len(x), SAMPLE_FOR_AXES, False)]
        mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        centred = sample - mean
        k = int(min(n_components, *centred.shape))
        if k < 1:
            return cls(mean, None)
        # Randomized range finder with two power iterations: the sample's leading k axes.
        q = centred.T @ rng.standard_normal((len(centred), k + 8)).astype(np.float32)
        for _ in range(2):
            q, _ = np.linalg.qr(q)
            q = centred.T @ (centred @ q)
        q, _ = np.linalg.qr(q)
        _, _, vt = np.linalg.svd(centred @ q, full_matrices=False)
        return cls(mean, (q @ vt.T)[:, :k])

    def project(self, latents: np.ndarray) -> np.ndarray:
        """Unit vectors of `latents` in this space (chunked: no N x 1024 temporary)."""
        x = np.asarray(latents, dtype=np.float32)
        if self.axes is None:
            return l2_normalize(x - self.mean) if len(x) else np.zeros((0, 1), np.float32)
        out = np.empty((len(x), self.axes.shape[1]), dtype=np.float32)
        for start in range(0, len(x), 65_536):
            out[start : start + 65_536] = (x[start : start + 65_536] - self.mean) @ self.axes
        return l2_normalize(out)


def stratified_sample(sizes: Sequence[int], total: int = SAMPLE_FOR_AXES, seed: int = 0):
    """Row indices per group, about `total` in all, in proportion to each group's size
    (every row when the groups hold no more than `total`): a sample for the shared axes
    that never needs every latent in memory at once."""
    n = int(sum(sizes))
    rng = np.random.default_rng(seed)
    out = []
    for size in sizes:
        if n <= total:
            out.append(np.arange(size))
            continue
        take = int(min(size, max(1, round(total * size / n))))
        out.append(np.sort(rng.choice(size, take, replace=False)))
    return out


def shared_space(
    latents: np.ndarray, n_components: int = DEFAULT_COMPONENTS, seed: int = 0
) -> np.ndarray:
    """Unit vectors of every image in one space shared by all classes (see module doc)."""
    if len(latents) == 0:
        return np.zeros((0, 1), dtype=np.float32)
    return SharedSpace.fit(latents, n_components, seed).project(latents)


@dataclass(frozen=True)
class CrossClassPairs:
    """Pairs (i, j) of images of different classes above a threshold (i < j)."""

    i: np.ndarray
    j: np.ndarray
    similarity: np.ndarray
    exact: np.ndarray


@dataclass(frozen=True)
class NearestOther:
    """Per image: its most similar image in another class and that cosine (-1: none)."""

    partner: np.ndarray
    similarity: np.ndarray


def nearest_other_class(
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    block: int = DEFAULT_BLOCK,
    join: str = "exact",
    nprobe: int = 16,
    neighbours: int = 32,
) -> NearestOther:
    """Each image's nearest image of another class. Exact: the blocked upper-triangle join,
    each block updating its rows' and its columns' best; "ann": the `neighbours` nearest
    of an IVF index, the best of another class among them (none if all share its class)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    at = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return NearestOther(at, best)
    if join == "ann":
        index = ivf_index(x, nprobe)
        index.add(x)
        for start in range(0, n, 16_384):
            sims, ids = index.search(x[start : start + 16_384], min(neighbours, n))
            rows = np.arange(start, start + len(ids))
            other = (ids >= 0) & (labels[np.maximum(ids, 0)] != labels[rows][:, None])
            sims = np.where(other, sims, -np.inf)
            pick = sims.argmax(axis=1)
            best[rows] = sims[np.arange(len(rows)), pick]
            at[rows] = np.where(np.isfinite(best[rows]), ids[np.arange(len(rows)), pick], -1)
        return NearestOther(at, best)
    # Exact: images sorted by class, each class's rows against the columns of every later
    # class only (a product per pair of classes, no same-class mask). A slab updates its
    # rows' best (value and partner) and its columns' best value; a column remembers the
    # row block its best came from, and its partner is found in that block at the end
    # (numpy's argmax down a column of a slab cost four times the product itself).
    order = np.argsort(labels, kind="stable")
    xs, ls = x[order], labels[order]
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
    ends = np.r_[starts[1:], n]
    best_s = np.full(n, -np.inf, dtype=np.float32)
    at_s = np.full(n, -1, dtype=np.int64)
    from_block = np.full(n, -1, dtype=np.int64)  # row block of a best found as a column
    step = block_rows(n, block)
    for a, b in zip(starts, ends, strict=True):
        if b == n:
            break  # the last class met every other as columns
        for r0 in range(a, b, step):
            r1 = min(r0 + step, b)
            s = xs[r0:r1] @ xs[b:].T
            r_at = s.argmax(axis=1)
            r_val = s[np.arange(r1 - r0), r_at]
            better = r_val > best_s[r0:r1]
            best_s[r0:r1][better], at_s[r0:r1][better] = r_val[better], b + r_at[better]
            from_block[r0:r1][better] = -1
            c_val = s.max(axis=0)
            better = np.flatnonzero(c_val > best_s[b:])
            best_s[b + better], from_block[b + better] = c_val[better], r0
    pending = np.flatnonzero(from_block >= 0)
    if len(pending):
        blocks, first = np.unique(from_block[pending], return_inverse=True)
        for k, r0 in enumerate(blocks):
            cols = pending[first == k]
            r1 = min(r0 + step, ends[np.searchsorted(starts, r0, side="right") - 1])
            sims = xs[cols] @ xs[r0:r1].T
            pick = sims.argmax(axis=1)
            # Value and partner from one product (the slab's may differ in the last bit).
            at_s[cols], best_s[cols] = r0 + pick, sims[np.arange(len(cols)), pick]
    best[order] = best_s
    at[order] = np.where(at_s >= 0, order[np.maximum(at_s, 0)], -1)
    return NearestOther(at, best)


def cross_class_pairs(
    vectors: np.ndarray | None,
    labels: np.ndarray,
    thresholds: Sequence[float],
    *,
    pixel_hashes: np.ndarray | None = None,
    block: int = DEFAULT_BLOCK,
    join: str = "exact",
    nprobe: int = 16,
    nearest: NearestOther | None = None,
) -> list[CrossClassPairs]:
    """For each threshold, each image paired with its nearest image of another class when
    their cosine is > T (a pair listed once): at most N pairs, however many images look
    alike across classes (2.2 million pairs above 0.93 among EuroSAT's 27,000 in the shared
    space, mostly dark Forest and SeaLake tiles). Pixel-identical images in different
    classes are always listed, with similarity 1.0. `nearest` (from `nearest_other_class`
    on the same vectors) saves the join when several thresholds are asked in turn; then
    `vectors` may be None.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if nearest is None:
        nearest = nearest_other_class(vectors, labels, block=block, join=join, nprobe=nprobe)
    has = np.flatnonzero(nearest.partner >= 0)
    a, b = has, nearest.partner[has]
    i, j = np.minimum(a, b), np.maximum(a, b)
    s = nearest.similarity[has]
    if len(i):  # a mutual pair appears twice: keep one
        key = i * max(n, 1) + j
        _, first = np.unique(key, return_index=True)
        i, j, s = i[first], j[first], s[first]
    exact = np.zeros(len(i), dtype=bool)
    if pixel_hashes is not None and n > 1:
        ei, ej = _exact_cross_pairs(np.asarray(pixel_hashes), labels)
        if len(ei):
            # An exact pair the join found already (cosine ~1) is replaced, not repeated.
            both = np.isin(i * n + j, ei * n + ej)
            i, j, s = np.concatenate([i[~both], ei]), np.concatenate([j[~both], ej]), s[~both]
            s = np.concatenate([s, np.ones(len(ei), np.float32)])
            exact = np.concatenate([exact[~both], np.ones(len(ei), dtype=bool)])
    order = np.lexsort((j, i))
    i, j, s, exact = i[order], j[order], s[order].astype(np.float32), exact[order]
    return [
        CrossClassPairs(i[m], j[m], s[m], exact[m])
        for m in ((s > t) | exact for t in (float(t) for t in thresholds))
    ]


def _exact_cross_pairs(hashes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j with equal hashes and different labels (groups are small)."""
    order = np.argsort(hashes, kind="stable")
    sorted_h = hashes[order]
    starts = np.flatnonzero(np.r_[True, sorted_h[1:] != sorted_h[:-1]])
    sizes = np.diff(np.r_[starts, len(hashes)])
    ii, jj = [], []
    many = sizes > 1
    for start, size in zip(starts[many], sizes[many], strict=True):  # groups of copies only
        members = np.sort(order[start : start + size])
        a, b = np.triu_indices(len(members), k=1)
        keep = labels[members[a]] != labels[members[b]]
        ii.append(members[a][keep])
        jj.append(members[b][keep])
    if not ii:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(ii), np.concatenate(jj)
