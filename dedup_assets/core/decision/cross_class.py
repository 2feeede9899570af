"""Near-identical images filed under different classes: likely label errors.

Within a class, similarity is measured in that class's own space (its principal axes and
spline fits), which does not compare across classes. Across classes one shared space is
used: the latents of every image, centred on the mean of all images and projected on their
leading principal axes (found by a randomized range finder on a sample, so memory stays
O(N x components)), then scaled to unit length. Exact copies (same decoded pixels) in two
classes are always reported, with similarity 1.0.

Each image is paired with its nearest image of another class (the blocked join of
`core.decision.similarity`, one block x N slab per thread at a time, or above the approximate join's
size the best among the images of its nearest cells, by matrix products), so the table
holds at most N pairs and memory grows with N. After images are added or deleted,
`update_nearest_other` brings an earlier answer up to date (the new images against all,
the others against the new ones) in the same space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dedup_assets.core.data.pools import run_on_idle_cores
from dedup_assets.core.decision.similarity import (
    DEFAULT_BLOCK,
    MAX_SLAB_BYTES,
    SlabOutputs,
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
        # The right singular vectors of centred @ q from its R factor: the same axes (up to
        # sign, which no cosine sees) without the SVD's (sample x k) left vectors, 0.05 s
        # against 0.12-0.18 s at 20,000 x 136 on one core.
        r = np.linalg.qr(centred @ q, mode="r")
        _, _, vt = np.linalg.svd(r, full_matrices=False)
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
    threads: int | None = None,
) -> NearestOther:
    """Each image's nearest image of another class. Exact: the blocked upper-triangle join,
    each block updating its rows' and its columns' best, its blocks on `threads` threads
    (`join_threads`: by default one per CPU; all but the caller's on idle cores only) with
    the answer of one (`_exact_slabs`); "ann": the most similar image of another class in the image's
    `nprobe` nearest cells (`_nearest_other_in_cells`; none if every image there shares its
    class)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    at = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return NearestOther(at, best)
    if join == "ann":
        return _nearest_other_in_cells(x, labels, nprobe=nprobe)
    # Exact: images sorted by class, each class's rows against the columns of every later
    # class only (no same-class mask), small classes together in one slab with their own
    # classes masked (`_slab_tasks`). A slab gives its rows their best (value and partner)
    # and its columns their best value; a column remembers the row block its best came
    # from, and its partner is found in that block at the end (numpy's argmax down a column
    # of a slab cost four times the product itself).
    order = np.argsort(labels, kind="stable")
    xs, ls = x[order], labels[order]
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
    ends = np.r_[starts[1:], n]
    # The slabs are the same whatever the threads (so is the answer); each thread holds one.
    step = block_rows(n, block)
    best_s, at_s, from_block = _exact_slabs(xs, starts, ends, step, join_threads(threads, n, step))
    pending = np.flatnonzero(from_block >= 0)
    if len(pending):
        rows_of = {r0: (r1, grouped) for r0, r1, _, grouped in _slab_tasks(starts, ends, step)}
        blocks, first = np.unique(from_block[pending], return_inverse=True)
        for k, r0 in enumerate(blocks):
            cols = pending[first == k]
            r1, grouped = rows_of[int(r0)]
            sims = xs[cols] @ xs[r0:r1].T
            if grouped:  # the block holds several classes: a column's own is no partner
                sims[ls[cols][:, None] == ls[r0:r1][None, :]] = -np.inf
            pick = sims.argmax(axis=1)
            # Value and partner from one product (the slab's may differ in the last bit).
            at_s[cols], best_s[cols] = r0 + pick, sims[np.arange(len(cols)), pick]
    best[order] = best_s
    at[order] = np.where(at_s >= 0, order[np.maximum(at_s, 0)], -1)
    return NearestOther(at, best)


def update_nearest_other(
    vectors: np.ndarray,
    labels: np.ndarray,
    previous_row: np.ndarray,
    previous: NearestOther,
    *,
    block: int = DEFAULT_BLOCK,
) -> NearestOther:
    """`nearest_other_class` of `vectors` from an earlier answer, computing only what changed.

    previous_row[i]: the row image i had in the join that gave `previous` (its vector and
    class then exactly as now), or -1 for an image new since. A kept image keeps its
    partner unless that partner is gone, and is compared with the new images only; a new
    image, and a kept one whose partner is gone, is compared with every image
    (`update_share` says how much of a full join that is). Equal values keep the earlier
    partner (a full join may name another among exact ties)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    at = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return NearestOther(at, best)
    plan = _UpdatePlan.of(previous_row, previous)
    best[plan.held] = previous.similarity[plan.previous_row[plan.held]]
    at[plan.held] = plan.partner
    step = block_rows(n, block)
    everything = np.concatenate([plan.fresh, plan.orphaned])
    for rows, cols in ((everything, np.arange(n)), (plan.held, plan.fresh)):
        if not len(rows) or not len(cols):
            continue
        # The columns by class, so a row's own class is one slice of them (a mask of every
        # pair's labels cost as much as the product itself).
        cols = cols[np.argsort(labels[cols], kind="stable")]
        columns = x[cols]
        col_labels = labels[cols]
        classes, lo = np.unique(col_labels, return_index=True)
        hi = np.r_[lo[1:], len(cols)]
        for a in range(0, len(rows), step):
            r = rows[a : a + step]
            sims = x[r] @ columns.T
            own = np.searchsorted(classes, labels[r])
            present = (own < len(classes)) & (
                classes[np.minimum(own, len(classes) - 1)] == labels[r]
            )
            for c in np.unique(own[present]):
                sims[np.flatnonzero(present & (own == c)), lo[c] : hi[c]] = -np.inf
            pick = sims.argmax(axis=1)
            value = sims[np.arange(len(r)), pick]
            better = value > best[r]
            best[r[better]] = value[better]
            at[r[better]] = cols[pick][better]
    return NearestOther(at, best)


def update_share(
    previous_row: np.ndarray, previous: NearestOther, join: str = "exact", nprobe: int = 16
) -> float:
    """The products `update_nearest_other` computes ((new + orphaned) x n + kept x new), as a
    share of those of a full `join`: n^2 / 2 exact; about n x nprobe x CELL_SIZE approximate
    (a million images: 1% new is more work to update exactly than to join approximately)."""
    plan = _UpdatePlan.of(previous_row, previous)
    n = len(plan.previous_row)
    work = (len(plan.fresh) + len(plan.orphaned)) * n + len(plan.held) * len(plan.fresh)
    full = n * n / 2 if join == "exact" else n * min(n, max(1, nprobe) * CELL_SIZE)
    return work / max(full, 1)


@dataclass(frozen=True)
class _UpdatePlan:
    """Rows of an update: new (`fresh`), kept with their partner (`held`, `partner` their
    partner now), kept with their partner gone (`orphaned`)."""

    previous_row: np.ndarray
    fresh: np.ndarray
    held: np.ndarray
    partner: np.ndarray
    orphaned: np.ndarray

    @classmethod
    def of(cls, previous_row: np.ndarray, previous: NearestOther) -> _UpdatePlan:
        previous_row = np.asarray(previous_row, dtype=np.int64)
        kept = np.flatnonzero(previous_row >= 0)
        now_of = np.full(len(previous.partner), -1, dtype=np.int64)  # previous row -> now
        now_of[previous_row[kept]] = kept
        was = previous.partner[previous_row[kept]]
        partner = np.where(was >= 0, now_of[np.maximum(was, 0)], -1)
        # No partner before (no image of another class then) holds too.
        holds = (partner >= 0) | (was < 0)
        return cls(
            previous_row,
            np.flatnonzero(previous_row < 0),
            kept[holds],
            partner[holds],
            kept[~holds],
        )


JOIN_SLAB_BYTES = 4 * MAX_SLAB_BYTES
"""The join's slabs held at once, all threads together: a thread each, fewer threads when
the slabs are big (135,000 images: 268 MB a slab, four threads at most)."""


def join_threads(threads: int | None, n: int, step: int) -> int:
    """How many threads the exact join of `n` rows in slabs of `step` rows uses: `threads`,
    by default the CPUs this process may run on, at most 8 and within JOIN_SLAB_BYTES."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        threads = threads or os.cpu_count() or 1
    return max(1, min(threads, 8, JOIN_SLAB_BYTES // max(4 * step * n, 1)))


def _slab(xs: np.ndarray, r0: int, r1: int, b: int, outputs: SlabOutputs) -> np.ndarray:
    """One slab of the join: rows r0:r1 against every row from b on (in the thread's buffer
    of `outputs`, valid until its next slab)."""
    return outputs.product(xs[r0:r1], xs[b:].T)


def _slab_tasks(
    starts: np.ndarray, ends: np.ndarray, step: int
) -> list[tuple[int, int, int, bool]]:
    """The join's slabs as (r0, r1, b, grouped), rows r0:r1 against the columns from b on.

    A class of more than `step` rows: blocks of `step` of its rows against every later
    class (b its end; the last class has none). Consecutive smaller classes share one slab
    of at most `step` rows (`grouped`: b = r0, each row against the group's other classes
    and every later one, its own class masked): a thousand classes of 20 rows were a
    thousand thin products, each reading every later row. A class alone in its group is
    the block it always was."""
    n = int(ends[-1]) if len(ends) else 0
    tasks: list[tuple[int, int, int, bool]] = []
    group: list[int] = []  # [first row, end row, classes] of the open group

    def close() -> None:
        if group:
            g0, g1, count = group
            if count > 1:
                tasks.append((g0, g1, g0, True))
            elif g1 < n:
                tasks.append((g0, g1, g1, False))
            group.clear()

    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if b - a > step:
            close()
            if b < n:
                tasks.extend((r0, min(r0 + step, b), b, False) for r0 in range(a, b, step))
        elif group and b - group[0] <= step:
            group[1], group[2] = b, group[2] + 1
        else:
            close()
            group.extend([a, b, 1])
    close()
    return tasks


def _exact_slabs(
    xs: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    step: int,
    threads: int,
    split: list[list[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best, partner, block) per row of `xs` (sorted by class; `starts`/`ends` its
    classes) over the rows of every other class: the partner when the best came from the
    row's own slab, else -1 and the first row of the earlier class's slab whose column it
    was (its partner is found there afterwards).

    Why threads: numpy's products release the GIL, and at 135,000 images the first
    threshold's join ran alone on one core for the last 32 s of its stage. The slabs run on
    `pools.run_on_idle_cores` (the caller's thread, the others on idle cores only, a
    helper's late result dropped); the answer is that of one slab at a time, in any order:
    a column keeps its highest value, from the earliest slab on ties; a row's own slab wins
    only when higher. `split` (tests): the slab indices each thread computes, in order,
    with no taking from the others."""
    n = len(xs)
    row_best = np.full(n, -np.inf, dtype=np.float32)
    row_at = np.full(n, -1, dtype=np.int64)
    tasks = _slab_tasks(starts, ends, step)
    k = len(split) if split is not None else max(1, min(threads, len(tasks)))
    col_best = np.full((k, n), -np.inf, dtype=np.float32)
    col_from = np.full((k, n), np.iinfo(np.int64).max, dtype=np.int64)
    outputs = SlabOutputs()  # each thread's slab written into the same memory every time

    def compute(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r0, r1, b, grouped = tasks[i]
        s = _slab(xs, r0, r1, b, outputs)
        if grouped:  # each row's own class (the group's first columns) is no partner
            _mask_own_classes(s, starts, ends, r0, r1)
        r_at = s.argmax(axis=1)
        return r_at, s[np.arange(r1 - r0), r_at], s.max(axis=0)

    def store(t: int, i: int, result: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        r0, r1, b, _ = tasks[i]
        r_at, r_val, c_val = result
        row_best[r0:r1], row_at[r0:r1] = r_val, b + r_at
        best, came = col_best[t, b:], col_from[t, b:]
        better = np.flatnonzero((c_val > best) | ((c_val == best) & (r0 < came)))
        best[better], came[better] = c_val[better], r0

    run_on_idle_cores(len(tasks), compute, store, k, split, name="join")
    # Each column's best over the threads, the earliest slab among equal values.
    top = col_best.max(axis=0)
    first = np.where(col_best == top, col_from, np.iinfo(np.int64).max).min(axis=0)
    col_first = np.where(np.isneginf(top), -1, first)
    own = row_best > top  # the row's own slab, only when higher
    best = np.where(own, row_best, top)
    at = np.where(own, row_at, -1)
    return best, at, np.where(own, -1, col_first)


def _mask_own_classes(
    s: np.ndarray, starts: np.ndarray, ends: np.ndarray, r0: int, r1: int
) -> None:
    """Set to -inf, in the slab `s` of rows r0:r1 against the columns from r0 on, each
    row's similarities to its own class: the diagonal blocks of the whole classes the group
    holds (a (rows x rows) mask of class labels was 0.4 s of a 1,000-class join)."""
    first, last = np.searchsorted(starts, [r0, r1], side="left")
    for a, b in zip(starts[first:last].tolist(), ends[first:last].tolist(), strict=True):
        s[a - r0 : b - r0, a - r0 : b - r0] = -np.inf


CELL_SIZE = 1024  # images per cell of the approximate join, on average
APPROXIMATE_JOIN = f"cells-{CELL_SIZE}"  # what a stored result of the approximate join was
CELL_TRAIN_SAMPLE = 100_000  # images the cells are fitted on, at most
CELL_ITERATIONS = 10
SLAB_VALUES = 1 << 24  # similarities computed at once by the approximate join (64 MiB)


def cell_centres(x: np.ndarray, cells: int, seed: int = 0) -> np.ndarray:
    """(cells, d) unit centres of a spherical k-means of (a seeded sample of) the unit rows
    of x, seeded with sample rows; an emptied cell takes a new random row."""
    rng = np.random.default_rng(seed)
    sample = x
    if len(x) > max(CELL_TRAIN_SAMPLE, 16 * cells):
        sample = x[np.sort(rng.choice(len(x), max(CELL_TRAIN_SAMPLE, 16 * cells), False))]
    centres = sample[rng.choice(len(sample), cells, replace=False)].copy()
    step = max(1, SLAB_VALUES // max(cells, 1))
    for _ in range(CELL_ITERATIONS):
        home = np.concatenate(
            [(sample[a : a + step] @ centres.T).argmax(axis=1) for a in range(0, len(sample), step)]
        )
        order = np.argsort(home, kind="stable")
        starts = np.searchsorted(home[order], np.arange(cells))
        sums = np.add.reduceat(sample[order], np.minimum(starts, len(sample) - 1), axis=0)
        counts = np.bincount(home, minlength=cells)
        sums[counts == 0] = sample[rng.choice(len(sample), int((counts == 0).sum()))]
        centres = l2_normalize(sums)
    return centres


def _nearest_other_in_cells(x: np.ndarray, labels: np.ndarray, nprobe: int) -> NearestOther:
    """The approximate nearest image of another class: the image space cut into cells of
    about CELL_SIZE images (spherical k-means), each image filed in its nearest cell and
    compared, by matrix products, with every image of another class in its `nprobe`
    nearest cells. Cells of fixed size make the work n x nprobe x CELL_SIZE products,
    linear in n, where an IVF index of sqrt(n) cells asked for 32 neighbours grew as
    n^1.73 (26 s at 200,000 images, 433 s at a million) and missed an other-class
    partner whenever 32 images of the query's own class came nearer."""
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    at = np.full(n, -1, dtype=np.int64)
    cells = int(max(1, min(n // CELL_SIZE, n)))
    centres = cell_centres(x, cells)
    probes = min(max(1, nprobe), cells)
    step = max(1, SLAB_VALUES // cells)
    near = np.empty((n, probes), dtype=np.int32)  # the cells each image is compared in
    home = np.empty(n, dtype=np.int32)  # the cell each image is filed in
    for a in range(0, n, step):
        s = x[a : a + step] @ centres.T
        home[a : a + step] = s.argmax(axis=1)
        if probes < cells:
            near[a : a + step] = np.argpartition(-s, probes - 1, axis=1)[:, :probes]
        else:
            near[a : a + step] = np.arange(cells)
    members = np.lexsort((labels, home))  # by cell, then by class
    member_start = np.searchsorted(home[members], np.arange(cells + 1))
    query_cell = near.ravel()
    query_row = np.repeat(np.arange(n), probes)
    queries = np.lexsort((labels[query_row], query_cell))
    query_start = np.searchsorted(query_cell[queries], np.arange(cells + 1))
    for cell in range(cells):
        m = members[member_start[cell] : member_start[cell + 1]]
        q_all = query_row[queries[query_start[cell] : query_start[cell + 1]]]
        if not len(m) or not len(q_all):
            continue
        m_labels = labels[m]
        xm = x[m]
        rows = max(1, SLAB_VALUES // len(m))
        for r0 in range(0, len(q_all), rows):
            q = q_all[r0 : r0 + rows]
            s = x[q] @ xm.T
            q_labels = labels[q]
            for label in np.intersect1d(q_labels, m_labels):  # same class: not a partner
                qa, qb = (
                    np.searchsorted(q_labels, label, "left"),
                    np.searchsorted(q_labels, label, "right"),
                )
                ma, mb = (
                    np.searchsorted(m_labels, label, "left"),
                    np.searchsorted(m_labels, label, "right"),
                )
                s[qa:qb, ma:mb] = -np.inf
            pick = s.argmax(axis=1)
            value = s[np.arange(len(q)), pick]
            better = value > best[q]
            best[q[better]], at[q[better]] = value[better], m[pick[better]]
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
