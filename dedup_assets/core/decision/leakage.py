"""Train/test leakage: every evaluation image (val, test) with an exact or near copy in the
training split, in its own class or any other, at a calibrated false-flag budget.

**Exact copies** are images whose decoded pixels are identical (the catalog's
`pixel_hash`, as `class_decision` and `integrity` compare them): always flagged, kind
`exact`, similarity 1.0, at every budget.

**Near copies** are judged in one space shared by every class (an eval image's copy may sit
in any class of train): the latents projected on the leading axes of the *training*
images' latents (`cross_class.SharedSpace`, fitted on train only, so evaluation images
never shape it), unit length, joined with the low-frequency DCT descriptor of the pixels
(`similarity.joined` at LEAKAGE_WEIGHT: the latent codes see through crops, the DCT through
light and noise). An eval image is also seen in its nine `crop_views` (zoomed 90% views),
because a training copy may be a crop of it, which neither part sees through at 0.1%. An
eval image's score is its highest cosine, over its views, with any training image, less
HUB_PENALTY x that training image's density (how close its own nearest training images
come); it is flagged when that is above the threshold T, and every training image above T
is listed beside it (`similarity`: that score; 1.0 for exact copies). Decoys (below) are scored exactly so, views included, so the budget holds for
the statistic as used.

**The budget.** b means: of the evaluation images that have no copy in train, at most a
share b is flagged. The false flags at T are the clean eval images whose *nearest unrelated
training image* scores above T, so T is the k-th highest of n draws of that statistic,
k = floor(b (n + 1)) (`calibration.budget_thresholds`: an exchangeable new draw exceeds it
with probability at most k / (n + 1) <= b, whatever the distribution). The draws must be
what a clean eval image meets, against the whole training split (the maximum over N
training images grows with N, so a null against a subset would set T too low). The
candidates considered:

- *eval vs train, exact copies removed* reads the statistic on the very images being
  judged, so the leaks it should find (5% in the benchmark, any share in a real set) sit in
  its top tail and raise T exactly where it must stay low: circular.
- *train vs train* (each training image's nearest other training image, or one half
  against the other) is made of real images, but every near-duplicate pair inside train
  (EuroSAT has about 28 images in pHash-near pairs within its classes; a scraped set
  thousands) lands in the top tail; at b = 0.1% of 21,600 draws the threshold is the 21st
  highest value, so a few dozen internal duplicates set T at the level of a copy.
- *mirrored decoys against train* (chosen): the mirror of an image x (left-right; more
  decoys below) is a plausible image of x's kind with x's statistics that duplicates
  nothing in train, because training never shows the model a flip (`calibration` explains
  the same decoys within a class). Its draw is its highest cosine with train, leaving out
  x itself and x's exact copies, and, where x itself scores above a first threshold read
  that way, x's K_NEIGHBOURS nearest training images (`budget_threshold`): a copy c of x
  in train has cos(mirror x, c) ~ cos(mirror x, x), which for a nearly symmetric scene is
  high, and would lift the draws of exactly the images that leak (the rule
  `local_scaling` uses for the same reason; leaving them out for every x instead lowered
  every draw, 1.2% flagged at a 1% budget against 100 training images). Internal
  duplicates of train do not enter a decoy's draw; leaks in eval do not either. The decoys' sources are the evaluation images
  (their distribution is the one judged), then the training images when the eval split is
  too small to read b (k = floor(b (n + 1)) < MIN_DRAWS_K), then flipped top-bottom and
  turned half round (DECOYS), as many as the budget needs.

What mirrors get wrong, first: a mirrored copy. An eval image that is the flip of a
training image is not flagged (neither part sees through flips), and its decoy of that
flip *is* the training image, so its draw is a copy's similarity: above the threshold's
rank it moves nothing, but a threshold read from the few highest draws (fewer than
MIN_DRAWS_K: a small split) is lifted by one such image over every near copy. The record
says so (`budget_facts`: `steady`), the last screen too, with the budget that reads the
threshold steadily.

Then: a mirror is a little less similar to train than a real
unrelated image (measured within classes, `calibration`'s doc), so T can be a little low;
the benchmark reports the measured false rate beside the binomial bound
(benchmarks/bench_leakage.py; at b = 0.1%: 2 of 1,900 clean EuroSAT test images flagged,
0 of 1,900 at 32 px, 0 of 145 hymenoptera photos; 99% bounds 6, 6 and 1). The property test (tests/test_leakage.py) checks the rule on
exchangeable draws: the flagged share of clean eval images stays within the binomial bound
of b at every size.

**Blocked.** Every comparison is a product of one block of queries against the training
vectors (`similarity.block_rows`: a slab of at most MAX_SLAB_BYTES), so memory grows with
N, never N^2; above the approximate join's size (`ann_join.DEFAULT_ANN_MIN_CLASS_SIZE`
training images, `join="auto"`) each query is compared only with the training images in
its `nprobe` nearest cells of about CELL_SIZE images (`cross_class.cell_centres`): linear
in N; it may miss a copy, never flag an image for a similarity it does not have.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    catalog_images,
    digest,
    gather_pixels,
    join_setting,
    read_catalog,
    read_latent_ids,
    read_latents,
    require_current,
    threshold_verdict,
)
from dedup_assets.core.data.atomic_io import write_json
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.splits import TRAINING_SPLITS, key_split
from dedup_assets.core.decision.ann_join import (
    DEFAULT_ANN_MIN_CLASS_SIZE,
    DEFAULT_NPROBE,
    resolve_join,
)
from dedup_assets.core.decision.calibration import budget_thresholds, resolvable
from dedup_assets.core.decision.cross_class import (
    CELL_SIZE,
    SLAB_VALUES,
    SharedSpace,
    cell_centres,
)
from dedup_assets.core.decision.dct_descriptor import lowfreq_dct
from dedup_assets.core.decision.similarity import (
    DEFAULT_BLOCK,
    block_rows,
    joined,
)

DEFAULT_LEAKAGE_BUDGET = 0.001
LEAKAGE_WEIGHT = 0.5
"""The latent cosine's share of the joined space's here (the DCT's: the rest). Measured on
planted EuroSAT (bench_leakage, 2,000 test images, 100 leaks) with the crop views, before
the hub penalty: 0.5 found 0.95 at 0.1% calibrated, 0.7 found 0.91 (brightened copies 0.81
against 0.94); with the penalty 0.4 and 0.5 both found 0.97."""
HUB_PENALTY = 0.25
DENSITY_NEIGHBOURS = 10
"""A pair's score is its cosine less HUB_PENALTY x the training image's density: its mean
cosine with its DENSITY_NEIGHBOURS nearest training images. A training image in a crowd
of look-alikes (calm water, bare fields) is near many clean eval images and sets the
threshold; one that is a copy is near its original only. Measured on planted EuroSAT
(2,000 test images, 100 leaks, views on): recall at 0.1% calibrated 0.95 without, 0.97 at
0.25 (crops and brightened copies 0.94 -> 1.00), 0.92 at 0.5; no clean image flagged at
0.25. It enters the join exactly, as an extra coordinate (train [t, -penalty x density],
queries [q, 1]), so every join and the decoys' draws read the same score."""
VIEW_SCALE = 0.9
VIEW_OFFSETS = (0.0, 0.5, 1.0)
"""Crop views of each evaluation image and decoy: the central 90% of each side at the 3 x 3
offsets (corners, edges, centre), resized back (bicubic, as `dedup plant` crops). A training
copy that is a crop of the image (85-95% of each side) is close to one of them: on planted
EuroSAT crop recall rose from 0.38 to 0.94 at 0.1%, the threshold from 0.945 to 0.955
(before the hub penalty)."""
K_NEIGHBOURS = 2
"""A decoy's source's nearest training images left out of its draw (its copies: module doc)."""
MIN_DRAWS_K = 4
"""Decoys are added until the budget's threshold is the 4th highest draw or beyond (or the
decoys run out): a threshold read from the single highest draw swings with one image."""
DECOYS = ("hflip", "vflip", "rot180")
"""The decoy transforms, in the order they are added (module doc)."""
MAX_DECOY_SOURCES = 20_000
"""Images whose decoys are drawn, at most (a seeded sample above it: 20 draws above the
0.1% budget's threshold)."""


def decoy_pixels(pixels: np.ndarray, kind: str) -> np.ndarray:
    """uint8 NHWC images flipped: hflip left-right, vflip top-bottom, rot180 both."""
    if kind == "hflip":
        out = pixels[:, :, ::-1]
    elif kind == "vflip":
        out = pixels[:, ::-1]
    elif kind == "rot180":
        out = pixels[:, ::-1, ::-1]
    else:
        raise ValueError(f"unknown decoy {kind!r}; choose one of {DECOYS}")
    return np.ascontiguousarray(out)


def crop_views(pixels: np.ndarray, scale: float = VIEW_SCALE) -> list[np.ndarray]:
    """The crop views of uint8 NHWC images (VIEW_OFFSETS squared of them), each the same
    size as the images: a zoomed-in copy of the image is close to one of them."""
    from PIL import Image  # deferred: only the views need Pillow here

    pixels = np.asarray(pixels)
    n, h, w = pixels.shape[:3]
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    out = []
    for fy in VIEW_OFFSETS:
        for fx in VIEW_OFFSETS:
            top, left = round((h - ch) * fy), round((w - cw) * fx)
            box = (left, top, left + cw, top + ch)
            view = np.empty_like(pixels)
            for i in range(n):
                img = Image.fromarray(pixels[i])
                view[i] = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC, box=box))
            out.append(view)
    return out


@dataclass(frozen=True)
class DecoyPlan:
    """Which decoys a budget needs: (source, kind) pairs in order, source "eval" or
    "train", each with the rows of that split it mirrors."""

    parts: tuple[tuple[str, str, np.ndarray], ...]

    @property
    def draws(self) -> int:
        return int(sum(len(rows) for _, _, rows in self.parts))


def id_ranks(keys: Sequence[str]) -> np.ndarray:
    """A stable pseudo-random rank of each key (a hash of it): a sample taken by smallest
    rank keeps its members when keys are added."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") for k in keys],
        dtype=np.uint64,
    ).reshape(len(keys))


def plan_decoys(
    n_eval: int,
    n_train: int,
    budget: float = DEFAULT_LEAKAGE_BUDGET,
    *,
    max_sources: int = MAX_DECOY_SOURCES,
    eval_keys: Sequence[str] | None = None,
    train_keys: Sequence[str] | None = None,
) -> DecoyPlan:
    """The decoys of the module doc: eval images mirrored, then train images, then the other
    flips of both, until k = floor(b (draws + 1)) >= MIN_DRAWS_K (every eval image, but
    only as many training images as that needs); each split's sources at most
    `max_sources` (both splits' together at most that). A sample is the images with the
    smallest hash of their key (image ids; row numbers when none are given), so that a
    split that grows keeps its sample but for the new images that enter it
    (`core.decision.leakage_index`)."""
    need = int(np.ceil(MIN_DRAWS_K / budget)) - 1

    def ranked(n: int, keys: Sequence[str] | None) -> np.ndarray:
        keys = [str(i) for i in range(n)] if keys is None else [str(k) for k in keys]
        return np.argsort(id_ranks(keys), kind="stable")

    def sample(order: np.ndarray, cap: int) -> np.ndarray:
        return np.sort(order[: max(0, cap)])

    eval_order, train_order = ranked(n_eval, eval_keys), ranked(n_train, train_keys)
    eval_rows = sample(eval_order, max_sources)
    train_order = train_order[: max(0, max_sources - len(eval_rows))]
    parts: list[tuple[str, str, np.ndarray]] = []
    total = 0
    for kind in DECOYS:
        for source, rows in (("eval", eval_rows), ("train", np.sort(train_order))):
            if total >= need or len(rows) == 0:
                continue
            if source == "train" and total + len(rows) > need:  # as many as the budget needs
                rows = sample(train_order, need - total)
            parts.append((source, kind, rows))
            total += len(rows)
    return DecoyPlan(tuple(parts))


# ------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class LeakageSpace:
    """Where eval and train images are compared (module doc): the training latents' shared
    axes, joined with the DCT descriptor at `weight` (1.0: latents only)."""

    shared: SharedSpace
    weight: float = LEAKAGE_WEIGHT

    @classmethod
    def fit(cls, train_latents: np.ndarray, weight: float = LEAKAGE_WEIGHT) -> LeakageSpace:
        return cls(SharedSpace.fit(train_latents), weight)

    def vectors(self, latents: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        """Unit vectors of images: their latents, and pixels for the DCT part."""
        latent = self.shared.project(latents)
        if self.weight >= 1.0:
            return latent
        if pixels is None:
            raise ValueError("the joined space needs the images' pixels")
        return joined(latent, lowfreq_dct(pixels), self.weight)


# ------------------------------------------------------------------------- the join


def top_k(
    queries: np.ndarray,
    refs: np.ndarray,
    k: int,
    *,
    join: str = "exact",
    nprobe: int = DEFAULT_NPROBE,
    block: int = DEFAULT_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k most similar references: (similarities, indices), (n, k) each,
    descending; -inf / -1 where fewer exist. Exact: blocks of queries against every
    reference; "ann": against the references of the query's `nprobe` nearest cells."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    r = np.ascontiguousarray(refs, dtype=np.float32)
    n, m = len(q), len(r)
    k = int(max(1, k))
    vals = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    if n == 0 or m == 0:
        return vals, idx
    if join == "ann":
        return _top_k_in_cells(q, r, k, nprobe)
    kk = min(k, m)
    step = block_rows(m, block)
    for start in range(0, n, step):
        s = q[start : start + step] @ r.T
        part = (
            np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            if kk < m
            else np.tile(np.arange(m), (len(s), 1))
        )
        pv = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-pv, axis=1, kind="stable")
        vals[start : start + len(s), :kk] = np.take_along_axis(pv, order, axis=1)
        idx[start : start + len(s), :kk] = np.take_along_axis(part, order, axis=1)
    return vals, idx


def _merge_top(vals, idx, rows, new_vals, new_idx, k):
    """Merge candidates (len(rows), c) into the running top k of `rows`."""
    v = np.concatenate([vals[rows], new_vals], axis=1)
    i = np.concatenate([idx[rows], new_idx], axis=1)
    order = np.argsort(-v, axis=1, kind="stable")[:, :k]
    vals[rows] = np.take_along_axis(v, order, axis=1)
    idx[rows] = np.take_along_axis(i, order, axis=1)


def _top_k_in_cells(q: np.ndarray, r: np.ndarray, k: int, nprobe: int):
    """The approximate top k: references filed in cells of about CELL_SIZE (spherical
    k-means on them, `cross_class.cell_centres`), each query compared with the references
    of its `nprobe` nearest cells, by matrix products: work n x nprobe x CELL_SIZE."""
    n, m = len(q), len(r)
    vals = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    cells = int(max(1, m // CELL_SIZE))
    centres = cell_centres(r, cells)
    probes = min(max(1, nprobe), cells)
    step = max(1, SLAB_VALUES // cells)
    home = np.concatenate([(r[a : a + step] @ centres.T).argmax(axis=1) for a in range(0, m, step)])
    near = np.empty((n, probes), np.int64)
    for a in range(0, n, step):
        s = q[a : a + step] @ centres.T
        near[a : a + step] = (
            np.argpartition(-s, probes - 1, axis=1)[:, :probes]
            if probes < cells
            else np.arange(cells)
        )
    members = np.argsort(home, kind="stable")
    member_start = np.searchsorted(home[members], np.arange(cells + 1))
    query_cell = near.ravel()
    query_row = np.repeat(np.arange(n), probes)
    by_cell = np.argsort(query_cell, kind="stable")
    query_start = np.searchsorted(query_cell[by_cell], np.arange(cells + 1))
    for cell in range(cells):
        mem = members[member_start[cell] : member_start[cell + 1]]
        rows_all = query_row[by_cell[query_start[cell] : query_start[cell + 1]]]
        if not len(mem) or not len(rows_all):
            continue
        rm = r[mem]
        kk = min(k, len(mem))
        chunk = max(1, SLAB_VALUES // len(mem))
        for a in range(0, len(rows_all), chunk):
            rows = rows_all[a : a + chunk]
            s = q[rows] @ rm.T
            part = (
                np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                if kk < len(mem)
                else np.tile(np.arange(len(mem)), (len(rows), 1))
            )
            _merge_top(vals, idx, rows, np.take_along_axis(s, part, axis=1), mem[part], k)
    return vals, idx


def _first_allowed(
    vals: np.ndarray, idx: np.ndarray, banned: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the best (value, index) whose index is not in that row of `banned`
    ((n, j) indices, -1 for none); -inf / -1 when every candidate is banned."""
    ok = ~(idx[:, :, None] == banned[:, None, :]).any(axis=2) & (idx >= 0)
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
    rows = np.arange(len(vals))
    value = np.where(first >= 0, vals[rows, np.maximum(first, 0)], -np.inf).astype(np.float32)
    index = np.where(first >= 0, idx[rows, np.maximum(first, 0)], -1)
    return value, index


def views_top_k(
    views: np.ndarray | Sequence[np.ndarray],
    refs: np.ndarray,
    k: int,
    *,
    join: str = "exact",
    nprobe: int = DEFAULT_NPROBE,
    block: int = DEFAULT_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """`top_k` of images seen in several views ((n, d) arrays, one per view; a single array
    is one view): each reference's best similarity over the views, the k best references
    per image, descending (a reference found by several views counts once)."""
    if isinstance(views, np.ndarray):
        views = [views]
    parts = [top_k(v, refs, k, join=join, nprobe=nprobe, block=block) for v in views]
    if len(parts) == 1:
        return parts[0]
    vals = np.concatenate([p[0] for p in parts], axis=1)
    idx = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    vals, idx = np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)
    by_ref = np.argsort(idx, axis=1, kind="stable")  # equal references: best view first
    sorted_idx = np.take_along_axis(idx, by_ref, axis=1)
    repeat = np.zeros_like(idx, dtype=bool)
    repeat[:, 1:] = (sorted_idx[:, 1:] == sorted_idx[:, :-1]) & (sorted_idx[:, 1:] >= 0)
    dup = np.zeros_like(repeat)
    np.put_along_axis(dup, by_ref, repeat, axis=1)
    vals = np.where(dup, -np.inf, vals)
    idx = np.where(dup, -1, idx)
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)


# ------------------------------------------------------------------------- the budget


@dataclass(frozen=True)
class DecoyDraws:
    """What the decoys of one set of sources meet in train: each decoy's `top` training
    images (similarities `vals`, rows `idx`, descending), the training rows it may never be
    compared with (`always`: its source itself and the source's exact copies, -1 for
    none) and its source's nearest training images (`near_idx`, `near_sim`), left out only
    where they are copies of the source at the cut (`null`)."""

    vals: np.ndarray
    idx: np.ndarray
    always: np.ndarray
    near_idx: np.ndarray
    near_sim: np.ndarray

    def null(self, cut: float = np.inf) -> np.ndarray:
        """Each decoy's draw: its highest similarity with a training image other than its
        `always` ones and its source's nearest images whose similarity to the source is
        above `cut` (a source flagged at `cut` has those as copies)."""
        copies = np.where(self.near_sim > cut, self.near_idx, -1)
        return _first_allowed(self.vals, self.idx, np.concatenate([self.always, copies], axis=1))[0]


def decoy_draws(
    decoys: np.ndarray | Sequence[np.ndarray],
    sources: np.ndarray,
    train: np.ndarray,
    *,
    self_rows: np.ndarray | None = None,
    source_hashes: np.ndarray | None = None,
    train_hashes: np.ndarray | None = None,
    k: int = K_NEIGHBOURS,
    max_copies: int = 4,
    join: str = "exact",
    nprobe: int = DEFAULT_NPROBE,
    block: int = DEFAULT_BLOCK,
) -> DecoyDraws:
    """The draws of `decoys` (unit rows, or a list of views of them as `views_top_k` takes;
    decoy i made from the image whose vector is sources[i], a training image `self_rows[i]`
    or an eval one) against `train`: blocked top-k joins, decoys and sources against train."""
    n = len(sources)
    always = [
        np.full((n, 1), -1, np.int64)
        if self_rows is None
        else np.asarray(self_rows, np.int64)[:, None]
    ]
    if source_hashes is not None and train_hashes is not None:
        copies = np.full((n, max_copies), -1, np.int64)
        rows, cols = exact_matches(np.asarray(source_hashes), np.asarray(train_hashes))
        for e, t in zip(rows.tolist(), cols.tolist(), strict=True):
            free = np.flatnonzero(copies[e] < 0)
            if len(free):
                copies[e, free[0]] = t
        always.append(copies)
    always_rows = np.concatenate(always, axis=1)
    near_sim, near_idx = top_k(sources, train, k + 1, join=join, nprobe=nprobe, block=block)
    if self_rows is not None:  # a training source's nearest is itself: already left out
        near_sim = np.where(near_idx == always_rows[:, :1], -np.inf, near_sim)
    width = always_rows.shape[1] + near_idx.shape[1] + 1
    vals, idx = views_top_k(decoys, train, width, join=join, nprobe=nprobe, block=block)
    return DecoyDraws(vals, idx, always_rows, near_idx, near_sim.astype(np.float32))


def budget_threshold(
    draws: Sequence[DecoyDraws], budget: float = DEFAULT_LEAKAGE_BUDGET
) -> tuple[float, np.ndarray]:
    """The budget's cosine from every decoy's draw, in two passes: first with only the
    sources' own pixels left out (T0), then also leaving out the nearest training images of
    the sources flagged at T0 (their copies). Leaving out a source's nearest images
    unconditionally would lower every draw a little (a maximum over fewer images: 1.2%
    flagged at a 1% budget against trains of 100, measured); this way only the sources
    that look copied lose their copies. Returns (threshold, the draws it was read from)."""
    first = np.concatenate([d.null() for d in draws]) if draws else np.zeros(0, np.float32)
    t0 = leakage_threshold(first, budget)
    null = np.concatenate([d.null(t0) for d in draws]) if draws else first
    return leakage_threshold(null, budget), null


def leakage_threshold(null: np.ndarray, budget: float = DEFAULT_LEAKAGE_BUDGET) -> float:
    """The budget's cosine: the k-th highest draw, k = floor(b (n + 1)); 1.0 (exact copies
    only) when the draws cannot resolve b."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not resolvable(len(null), budget):
        return 1.0
    return float(budget_thresholds(null, [budget])[0])


BUDGET_LADDER = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""The budgets `budget_facts` may suggest when a split's draws cannot read the one asked."""


def draws_needed(budget: float, k: int = 1) -> int:
    """The fewest draws from which `budget` reads its k-th highest (floor(b (n + 1)) >= k,
    as `calibration.resolvable` counts): 999 at 0.1% for k = 1, 3,999 for MIN_DRAWS_K."""
    n = int(np.ceil((k - 1e-9) / budget)) - 1
    while n > 0 and int(np.floor(budget * n + 1e-9)) >= k:  # n - 1 draws already do
        n -= 1
    return max(0, n)


def budget_facts(budget: float, draws: int, threshold: float) -> dict:
    """How one split's threshold was read, for the record and the last screen: the budget,
    the draws it was read from, whether they could read it (`resolvable`; else the
    threshold is 1.0 and only exact copies are flagged), the draws it needs (at least, and
    to read it steadily: MIN_DRAWS_K), and the smallest budget of BUDGET_LADDER these draws
    read steadily (or at all; None when none can)."""
    draws = int(draws)
    readable = resolvable(draws, budget)
    steady_now = draws >= draws_needed(budget, MIN_DRAWS_K)
    suggest = None
    if not steady_now:
        larger = [b for b in BUDGET_LADDER if b > budget]
        steady = [b for b in larger if draws >= draws_needed(b, MIN_DRAWS_K)]
        some = [] if readable else [b for b in larger if resolvable(draws, b)]
        suggest = (steady or some or [None])[0]
    return {
        "budget": float(budget),
        "draws": draws,
        "threshold": round(float(threshold), 4),
        "readable": bool(readable),
        "steady": bool(steady_now),
        "from_highest": int(np.floor(budget * (draws + 1) + 1e-9)) if readable else 0,
        "needed": draws_needed(budget),
        "needed_steady": draws_needed(budget, MIN_DRAWS_K),
        "suggested_budget": suggest,
    }


def budget_read_words(facts: dict | None) -> str:
    """The "budget read" cell of a split (`budget_facts`): yes, from too few of the highest
    draws to be steady, or not at all (exact copies only)."""
    if not facts or facts.get("readable", True) and facts.get("steady", True):
        return "yes"
    if facts.get("readable", True):
        return f"yes, from its {facts.get('from_highest', 1):,} highest draw(s): not steady"
    return "no: exact copies only"


def budget_note(split: str, facts: dict | None) -> str:
    """ "" when `split`'s budget was read steadily (from its MIN_DRAWS_K-th highest draw or
    beyond); else why only exact copies were flagged, or why the threshold read from its
    few highest draws may be too high, and the budget that reads it steadily
    (`budget_facts`)."""
    if not facts or facts.get("readable", True) and facts.get("steady", True):
        return ""
    b = float(facts["budget"])
    suggest = facts.get("suggested_budget")
    if facts.get("readable", True):
        top = int(facts.get("from_highest", 1))
        words = (
            f"the near-copy threshold of {split} ({float(facts['threshold']):.4f}) was read "
            f"from its {'highest decoy draw' if top == 1 else f'{top} highest decoy draws'} "
            f"of {facts['draws']:,} (about {facts['needed_steady']:,} read the {b:.1%} "
            "budget steadily): one decoy that copies a training image, such as the mirror of "
            "a mirrored copy, lifts it and can hide near copies"
        )
        if suggest is None:
            return words
        return words + f"; --leakage-budget {suggest:g} reads it steadily"
    words = (
        f"only exact copies were looked for in {split}: the {b:.1%} leakage budget needs at "
        f"least {facts['needed']:,} decoy draws to read a near-copy threshold (about "
        f"{facts['needed_steady']:,} to read it steadily); this split gives "
        f"{facts['draws']:,}, so the threshold fell back to 1.0"
    )
    if suggest is None:
        return words + "; no budget up to 50% can be read from so few images"
    return words + f"; --leakage-budget {suggest:g} reads near copies here"


# ------------------------------------------------------------------------- the leaks


def exact_matches(
    eval_hashes: np.ndarray, train_hashes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (eval row, train row) with identical pixel hashes, sorted; empty hashes never
    match. A sort and a merge: no pair of unequal images is visited."""
    e = np.asarray(eval_hashes).astype(str)
    t = np.asarray(train_hashes).astype(str)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    lo = np.searchsorted(ts, e, side="left")
    hi = np.searchsorted(ts, e, side="right")
    counts = np.where(e == "", 0, hi - lo)
    rows = np.repeat(np.arange(len(e)), counts)
    if not len(rows):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = order[np.repeat(lo, counts) + offsets]
    return rows.astype(np.int64), cols.astype(np.int64)


@dataclass(frozen=True)
class Leaks:
    """The flagged pairs and every eval image's nearest training image.

    Pairs (one per eval image and training copy): eval row, train row, similarity (the
    score the threshold reads: the cosine, less the hub penalty under `detect_leakage`;
    1.0 for an exact copy), kind ("exact" or "near"); `threshold` the score they were
    judged at. `nearest` and
    `nearest_similarity` (n_eval,): each eval image's most similar training image (1.0 for
    an exact copy), what a different threshold would read.
    """

    eval_row: np.ndarray
    train_row: np.ndarray
    similarity: np.ndarray
    kind: np.ndarray
    threshold: float
    nearest: np.ndarray
    nearest_similarity: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        """Eval rows with at least one copy in train (sorted, unique)."""
        return np.unique(self.eval_row)

    def __len__(self) -> int:
        return len(self.eval_row)


def find_leaks(
    eval_vectors: np.ndarray | Sequence[np.ndarray],
    train_vectors: np.ndarray,
    threshold: float,
    *,
    eval_hashes: np.ndarray | None = None,
    train_hashes: np.ndarray | None = None,
    join: str = "auto",
    ann_min_size: int = DEFAULT_ANN_MIN_CLASS_SIZE,
    nprobe: int = DEFAULT_NPROBE,
    max_copies: int = 16,
    block: int = DEFAULT_BLOCK,
) -> Leaks:
    """Every eval image with an exact copy in train (pixel hashes) or a training image whose
    cosine is > threshold (in any of its views, `views_top_k`); each flagged eval image lists
    its exact copies and the training images above the threshold (at most `max_copies` near
    ones, most similar first).
    Blocked (exact) or by cells above `ann_min_size` training images (`join="auto"`)."""
    method = resolve_join(join, len(train_vectors), ann_min_size)
    vals, idx = views_top_k(
        eval_vectors, train_vectors, max_copies, join=method, nprobe=nprobe, block=block
    )
    return leaks_from_lists(
        vals, idx, threshold, eval_hashes=eval_hashes, train_hashes=train_hashes
    )


def leaks_from_lists(
    vals: np.ndarray,
    idx: np.ndarray,
    threshold: float,
    *,
    eval_hashes: np.ndarray | None = None,
    train_hashes: np.ndarray | None = None,
) -> Leaks:
    """`find_leaks` from each eval image's top list against train (`vals` descending,
    `idx` training rows, -inf / -1 where empty): its exact copies (pixel hashes) and every
    listed training image above the threshold."""
    nearest, nearest_sim = idx[:, 0].copy(), vals[:, 0].copy()
    rows, cols, sims, kinds = [], [], [], []
    if eval_hashes is not None and train_hashes is not None:
        er, tr = exact_matches(eval_hashes, train_hashes)
        rows.append(er)
        cols.append(tr)
        sims.append(np.ones(len(er), np.float32))
        kinds.append(np.full(len(er), "exact", dtype=object))
        nearest[er], nearest_sim[er] = tr, 1.0
        exact_key = set(zip(er.tolist(), tr.tolist(), strict=True))
    else:
        exact_key = set()
    above = (vals > threshold) & (idx >= 0)
    r, c = np.nonzero(above)
    t = idx[r, c]
    if exact_key:
        keep = np.array(
            [(a, b) not in exact_key for a, b in zip(r.tolist(), t.tolist(), strict=True)], bool
        )
        r, c, t = r[keep], c[keep], t[keep]
    rows.append(r.astype(np.int64))
    cols.append(t.astype(np.int64))
    sims.append(vals[r, c].astype(np.float32))
    kinds.append(np.full(len(r), "near", dtype=object))
    er, tr = np.concatenate(rows), np.concatenate(cols)
    sim, kind = np.concatenate(sims), np.concatenate(kinds).astype(str)
    order = np.lexsort((-sim, er))
    return Leaks(
        er[order], tr[order], sim[order], kind[order], float(threshold), nearest, nearest_sim
    )


# ------------------------------------------------------------------------- end to end


@dataclass(frozen=True)
class LeakageResult:
    """What `detect_leakage` found and how its threshold was read."""

    leaks: Leaks
    threshold: float
    budget: float
    draws: int
    decoys: tuple[tuple[str, str, int], ...]  # (source split, decoy kind, images)
    join: str


def leakage_rows(
    result: Leaks,
    split: str,
    eval_classes: Sequence[str],
    eval_images: Sequence[str],
    train_classes: Sequence[str],
    train_images: Sequence[str],
) -> list[dict]:
    """The `leakage.csv` rows: split, class, image, train class, train image, similarity,
    kind (exact / near), threshold; one per flagged pair, eval image order."""
    return [
        {
            "split": split,
            "class": eval_classes[e],
            "image": eval_images[e],
            "train_class": train_classes[t],
            "train_image": train_images[t],
            "similarity": float(s),
            "kind": str(k),
            "threshold": result.threshold,
        }
        for e, t, s, k in zip(
            result.eval_row.tolist(),
            result.train_row.tolist(),
            result.similarity.tolist(),
            result.kind.tolist(),
            strict=True,
        )
    ]


# ------------------------------------------------------------------------- the pipeline's tables
# What the `leakage` asset, the clean copy, the runner and the automation share: which class
# partitions are training and evaluation classes, what a split's result is computed from
# (its cache's provenance), the stored record of the last table, and what the clean copy
# leaves out for it. Images are named by the latents' `path` (relative to the source).

LEAKAGE_SCHEMA = {
    "split": pl.String,
    "class": pl.String,
    "image": pl.String,
    "train_class": pl.String,
    "train_image": pl.String,
    "similarity": pl.Float64,
    "kind": pl.String,
    "threshold": pl.Float64,
}
"""`leakage.csv`'s columns (`OutputLayout.leakage`)."""
PAIR_SCHEMA = {**LEAKAGE_SCHEMA, "image_id": pl.String, "train_image_id": pl.String}
"""A split's cached pairs: the csv's columns and both images' ids (what the clean copy
leaves out by)."""
LEAKAGE_RULE = "hub penalty 0.25 over 10 neighbours, 9 crop views, decoys hflip/vflip/rot180"
"""How a split's threshold and pairs are read, recorded in its cache's provenance: a cache of
another rule is not reused."""
CACHE_DIR = ".leakage"
RECORD_FILE = "record.json"


@dataclass(frozen=True)
class SplitClasses:
    """The class partitions of a source by role: the training split's (or the implicit
    split's) and each evaluation split's, sorted."""

    train: tuple[str, ...]
    evals: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, keys: Sequence[str]) -> SplitClasses:
        train, evals = [], {}
        for key in sorted(keys):
            split, _ = key_split(key)
            if split in TRAINING_SPLITS:
                train.append(key)
            else:
                evals.setdefault(split, []).append(key)
        return cls(tuple(train), {s: tuple(v) for s, v in sorted(evals.items())})


def cache_dir(layout: OutputLayout) -> Path:
    """Where each split's pairs and the table's record are kept, beside `leakage.csv`."""
    return layout.leakage.parent / CACHE_DIR


def split_cache(layout: OutputLayout, split: str) -> Path:
    return cache_dir(layout) / f"{split}.parquet"


def split_facts_path(layout: OutputLayout, split: str) -> Path:
    """How a split's cached pairs were judged (`budget_facts`), beside its cache."""
    return cache_dir(layout) / f"{split}.json"


def write_split_facts(
    layout: OutputLayout, split: str, made_from: dict, facts: dict | None
) -> None:
    """Store `facts` (None: nothing to compare) with the inputs they were read from."""
    write_json({"made_from": digest(made_from), "facts": facts}, split_facts_path(layout, split))


def read_split_facts(layout: OutputLayout, split: str, made_from: dict) -> tuple[bool, dict | None]:
    """(found, facts) of a split's cache made from `made_from`; found is False when the
    file is missing, unreadable or of other inputs (the split is then judged again)."""
    try:
        data = json.loads(split_facts_path(layout, split).read_text())
    except (OSError, ValueError):
        return False, None
    if not isinstance(data, dict) or data.get("made_from") != digest(made_from):
        return False, None
    facts = data.get("facts")
    return True, facts if isinstance(facts, dict) else None


def split_inputs(current: CurrentInputs, split: str, classes: SplitClasses) -> dict:
    """What one evaluation split's pairs are computed from: the latents of every training
    class and of the split's classes (each records the class's content and the model), the
    budget and the join settings; overrides are applied after, so they are not in it."""
    settings = current.settings
    return {
        "kind": "leakage",
        "split": split,
        "budget": float(getattr(settings, "leakage_budget", DEFAULT_LEAKAGE_BUDGET)),
        "join": join_setting(settings),
        "rule": LEAKAGE_RULE,
        "train": {k: digest(current.latents(k)) for k in classes.train},
        "eval": {k: digest(current.latents(k)) for k in classes.evals.get(split, ())},
    }


def leakage_made_from(current: CurrentInputs) -> dict:
    """What `leakage.csv` is made from: each evaluation split's inputs and the pairs the
    user marked not a duplicate (they are left out of the table)."""
    classes = SplitClasses.of(list(current.class_digests))
    return {
        "splits": {s: digest(split_inputs(current, s, classes)) for s in classes.evals},
        "not_duplicate": digest([list(p) for p in current.not_duplicate]),
    }


def read_record(layout: OutputLayout) -> dict | None:
    """The stored record of the last `leakage.csv` (made_from, images and flagged images
    per split), or None."""
    try:
        data = json.loads((cache_dir(layout) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(layout: OutputLayout, record: dict) -> None:
    write_json(record, cache_dir(layout) / RECORD_FILE)


def has_eval_splits(current: CurrentInputs) -> bool:
    return bool(SplitClasses.of(list(current.class_digests)).evals)


def leakage_is_current(layout: OutputLayout, current: CurrentInputs) -> bool:
    """`leakage.csv` was made from the current classes, model, settings and overrides; a
    source without evaluation splits and without a table needs none."""
    if not has_eval_splits(current) and not layout.leakage.exists():
        return True
    record = read_record(layout)
    return (
        record is not None
        and layout.leakage.exists()
        and record.get("made_from") == digest(leakage_made_from(current))
    )


def gate_failures(record: dict | None, tolerance: int) -> dict[str, int]:
    """{evaluation split: images with a copy in train} where more than `tolerance` are, as
    the record of the last table says."""
    flagged = (record or {}).get("flagged") or {}
    return {s: int(n) for s, n in sorted(flagged.items()) if int(n) > tolerance}


def left_out(pairs: pl.DataFrame, policy: str) -> list[str]:
    """The image ids the clean copy leaves out under `policy` (pairs: PAIR_SCHEMA rows):
    drop-train the training copy of every flagged pair, drop-test the evaluation image,
    report none. Sorted, unique."""
    if pairs.is_empty() or policy == "report":
        return []
    column = {"drop-train": "train_image_id", "drop-test": "image_id"}.get(str(policy))
    if column is None:
        raise ValueError(f"unknown leakage policy {policy!r}: drop-train, drop-test or report")
    return sorted(set(pairs[column].to_list()))


def pairs_path(layout: OutputLayout) -> Path:
    """Every split's pairs together with the images' ids, overrides applied: what the
    clean copy reads (`leakage.csv` is the same rows without the ids)."""
    return cache_dir(layout) / "pairs.parquet"


def clean_copy_leakage(current: CurrentInputs, policy: str) -> dict | None:
    """What a clean copy records of the leakage table it was made with (its manifest's
    `leakage`): the policy and, unless it only reports, the table's inputs; None for a
    source without evaluation splits (a clean copy made before splits existed stays
    current)."""
    if not has_eval_splits(current):
        return None
    made = {"policy": str(policy)}
    if str(policy) != "report":
        made["made_from"] = digest(leakage_made_from(current))
    return made


def read_left_out(layout: OutputLayout, current: CurrentInputs, policy: str) -> list[str]:
    """The image ids the clean copy leaves out for leakage now: refused (StaleArtifact)
    when the table is older than the classes, model, settings or overrides."""
    if clean_copy_leakage(current, policy) is None or str(policy) == "report":
        return []
    path = require_current(
        pairs_path(layout),
        leakage_made_from(current),
        "the leakage table",
        "materialize leakage first",
    )
    return left_out(pl.read_parquet(path, glob=False), policy)


@dataclass(frozen=True)
class SplitImages:
    """The images of some class partitions, in class order: display class, id, path
    (relative to the source), latents, pixels (uint8 NHWC) and pixel hash of each."""

    classes: np.ndarray
    ids: np.ndarray
    paths: np.ndarray
    latents: np.ndarray
    pixels: np.ndarray
    hashes: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def split_table(layout: OutputLayout, keys: Sequence[str], names: dict[str, str]) -> pl.DataFrame:
    """The images of class partitions `keys`, in class order: class_key, class (display
    name), image_id, path (relative to the source), row (in the class's pixel store) and
    pixel_hash. Read from the latents' ids and the catalogs: no latents, no pixels."""
    frames = [
        read_latent_ids(layout.latents(key)).with_columns(
            pl.lit(key).alias("class_key"), pl.lit(names.get(key, key)).alias("class")
        )
        for key in keys
    ]
    if not frames:
        return pl.DataFrame(schema=SPLIT_TABLE_SCHEMA)
    catalog = catalog_images(read_catalog(layout, list(keys))).select(
        "image_id", "row", "pixel_hash"
    )
    return (
        pl.concat(frames)
        .join(catalog, on="image_id", how="left", maintain_order="left")
        .with_columns(pl.col("pixel_hash").fill_null(""))
        .select(list(SPLIT_TABLE_SCHEMA))
        .cast(SPLIT_TABLE_SCHEMA)
    )


SPLIT_TABLE_SCHEMA = {
    "class_key": pl.String,
    "class": pl.String,
    "image_id": pl.String,
    "path": pl.String,
    "row": pl.Int64,
    "pixel_hash": pl.String,
}


def in_order(table: pl.DataFrame, ids: Sequence[str]) -> pl.DataFrame:
    """The rows of `table` (a `split_table`) of the image ids `ids`, in that order."""
    wanted = pl.DataFrame({"image_id": pl.Series(list(ids), dtype=pl.String)})
    return wanted.join(table, on="image_id", how="left", maintain_order="left")


def load_images(layout: OutputLayout, table: pl.DataFrame) -> SplitImages:
    """The images of rows of a `split_table`: their stored latents and pixels."""
    if table.height == 0:
        empty = np.zeros(0, dtype=str)
        return SplitImages(
            empty,
            empty,
            empty,
            np.zeros((0, 1), np.float32),
            np.zeros((0, 64, 64, 3), np.uint8),
            empty,
        )
    position = pl.Series("_at", np.arange(table.height))
    latents = None
    for (key,), group in table.with_columns(position).group_by("class_key", maintain_order=True):
        ids, x = read_latents(layout.latents(key))
        found = (
            ids.select("image_id")
            .with_row_index("_r")
            .join(group.select("image_id", "_at"), on="image_id", how="inner")
        )
        if latents is None:
            latents = np.empty((table.height, x.shape[1]), np.float32)
        latents[found["_at"].to_numpy()] = x[found["_r"].to_numpy()]
    return SplitImages(
        table["class"].to_numpy().astype(str),
        table["image_id"].to_numpy().astype(str),
        table["path"].to_numpy().astype(str),
        latents,
        gather_pixels(layout, table.select("class_key", "row")),
        table["pixel_hash"].to_numpy().astype(str),
    )


def clean_copies_behind(
    layout: OutputLayout, current: CurrentInputs, thresholds: Sequence[str]
) -> list[str]:
    """Thresholds whose clean copy is current for its keep list but was made with another
    leakage table or policy (`clean_copy_leakage`): the runner and the automation make them
    again (the keep list's own staleness is `artifacts.stale_thresholds`)."""
    policy = str(getattr(current.settings, "leakage", "drop-train"))
    wanted = clean_copy_leakage(current, policy)
    mode = str(current.settings.clean_copy_mode)
    behind = []
    for t in thresholds:
        verdict = threshold_verdict(layout, t, digest(current.keep_list(t)))
        if verdict.clean_copy_current(mode) and verdict.clean_manifest.get("leakage") != wanted:
            behind.append(t)
    return behind
