"""Near-identical images filed under different classes: likely label errors.

Within a class, similarity is measured in that class's own space (its principal axes and
spline fits), which does not compare across classes. Across classes one shared space is
used: the latents of every image, centred on the mean of all images and projected on their
leading principal axes (found by a randomized range finder on a sample, so memory stays
O(N x components)), then scaled to unit length. Exact copies (same decoded pixels) in two
classes are always reported, with similarity 1.0.

The join is the blocked one of `core.similarity` over all N images: one block x N slab at
a time, only pairs of different classes kept, so memory grows with N and the pairs found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dedup_assets.core.ann_join import ann_pairs_above
from dedup_assets.core.similarity import DEFAULT_BLOCK, iter_similarity_blocks, l2_normalize

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


def cross_class_pairs(
    vectors: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float],
    *,
    pixel_hashes: np.ndarray | None = None,
    block: int = DEFAULT_BLOCK,
    join: str = "exact",
    nprobe: int = 16,
) -> list[CrossClassPairs]:
    """For each threshold, every pair of images in different classes with cosine > T.

    vectors: unit rows (N, d); labels: class index per row. Pairs with equal
    pixel_hashes are reported at every threshold with similarity 1.0. join "ann": range
    search on an IVF index (`core.ann_join`) instead of the exact blocked join.
    """
    labels = np.asarray(labels)
    n = len(vectors)
    lowest = float(min(thresholds)) if len(thresholds) else 1.0
    ii, jj, ss = [], [], []
    if n > 1 and len(thresholds) and join == "ann":
        i, j, s = ann_pairs_above(vectors, lowest, nprobe=nprobe)
        other = labels[i] != labels[j]
        ii, jj, ss = [i[other]], [j[other]], [s[other]]
    elif n > 1 and len(thresholds):
        for row0, col0, s in iter_similarity_blocks(np.asarray(vectors, np.float32), block):
            flat = np.flatnonzero(s > lowest)
            r, c = np.divmod(flat, s.shape[1])
            i, j = row0 + r, col0 + c
            keep = (j > i) & (labels[i] != labels[j])
            ii.append(i[keep])
            jj.append(j[keep])
            ss.append(s.reshape(-1)[flat[keep]])
    i = np.concatenate(ii) if ii else np.empty(0, np.int64)
    j = np.concatenate(jj) if jj else np.empty(0, np.int64)
    s = np.concatenate(ss).astype(np.float32) if ss else np.empty(0, np.float32)
    exact = np.zeros(len(i), dtype=bool)
    if pixel_hashes is not None and n > 1:
        ei, ej = _exact_cross_pairs(np.asarray(pixel_hashes), labels)
        if len(ei):
            # An exact pair the join found already (cosine ~1) is replaced, not repeated.
            found = {(a, b): k for k, (a, b) in enumerate(zip(i.tolist(), j.tolist(), strict=True))}
            drop = [found[p] for p in zip(ei.tolist(), ej.tolist(), strict=True) if p in found]
            mask = np.ones(len(i), dtype=bool)
            mask[drop] = False
            i, j, s = np.concatenate([i[mask], ei]), np.concatenate([j[mask], ej]), s[mask]
            s = np.concatenate([s, np.ones(len(ei), np.float32)])
            exact = np.concatenate([exact[mask], np.ones(len(ei), dtype=bool)])
    order = np.lexsort((j, i))
    i, j, s, exact = i[order], j[order], s[order], exact[order]
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
