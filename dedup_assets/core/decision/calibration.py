"""Thresholds as a false-removal budget: which threshold removes at most a share b of the
images that have no duplicate, class by class.

With local scaling (the default, `core.decision.local_scaling`) the threshold is a margin over the
two images' local levels and the statistic below is read on margins (`null_margins`);
with uniform scaling it is one cosine per class, read as follows.

An image is removed when its most similar kept neighbour scores above T, so the false
removals at T are the images without a duplicate whose nearest unrelated neighbour scores
above T. That nearest-unrelated similarity cannot be read from the class itself (a real
duplicate would hide it), so it is read against decoys: the class's own images mirrored
left to right, encoded and embedded in the class's space like any image. A mirrored
image is a plausible image of the class (aerial scenes and photos alike) with the same
statistics, and it is a duplicate of nothing: the invariant training never shows the
model a flip unless `hflip` is turned on (then mirror top to bottom instead). So

    null_i = max_{j != i} cos(v_i, decoy_j)      over the class's other decoys,

is the similarity of image i to its nearest unrelated image among n - 1 (its own mirror is
left out: a nearly symmetric scene is close to its mirror), and the budget's
cosine is the k-th highest null of the class, k = floor(b (n + 1)): an image without a
duplicate has a neighbour above it with probability at most b (`budget_thresholds`). The
join is blocked like every other.

A class of more than MAX_MIRRORS images has only a seeded sample of its images mirrored
(encoding every mirror doubled the encoding work), and the statistic is read from the
mirrors' side of the same n x n comparison: each sampled mirror's nearest image of the
class, its own source left out,

    null_j = max_{i != j} cos(decoy_j, v_i)      over the class's other images,

again an unrelated image's nearest neighbour among n - 1 (the transpose of the full
pass's comparison: the same distribution where mirroring is symmetric in the space,
approximately so in the fitted ones, which are fitted on the real images only), its
read from MAX_MIRRORS draws (40 strictly above the 1% budget's cosine).

Mirrors are not always as close as real unrelated neighbours: on synthetic textures in a
fitted space the top 1% of real nearest-neighbour cosines reached 0.645 and of mirrors
0.607, and a class of 1,000 lost 1.3% at the 0.5% budget. So every class also reads the
statistic against real images of the run's other classes (`core.decision.reference_pool`), one
value per pool image (`pool_null`), and takes the higher threshold: safe if either null
is right (the pool is the easier one where classes differ, the mirrors where the space
treats them as strangers).

A class too small to read b at all (k = floor(b (n + 1)) = 0: under 99 images at 1%, 999
at 0.1%) never takes the highest of its n values, which an unrelated image exceeds with
probability 1 / (n + 1), a third at n = 2. It reads b from the pool alone, in the space
without a fit (`class_decision.unfitted_space`), where images of different classes are
comparable: each image's best among n - 1 pool images, in every disjoint draw the pool
allows (`pooled_null`), raised by how much closer the class's images come to each
other's mirrors than to the pool at the median (`_class_shift`: a class of alike images
is not judged against a pool of other kinds). With too few pool images as well (a run of
a few tiny classes) the threshold is 1.0: exact copies only. Measured on unrelated images
(tests/test_budget_property.py, benchmarks/bench_budget.py): within the binomial bound at
0.1-5% in classes of 2 to 1,000, where the highest-null rule removed 7-13% of classes of
5 and 10.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from scipy.special import bdtr

from dedup_assets.core.data.artifacts import (
    STORED_READS,
    digest,
    hand_over,
    pixels_of_rows,
    read_decoded_images,
    read_latent_ids,
)
from dedup_assets.core.data.atomic_io import atomic_path, savez
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.mapped import TAKE_CHUNK, take_rows
from dedup_assets.core.data.pools import process_cores, run_on_idle_cores
from dedup_assets.core.decision.class_decision import (
    ClassData,
    needs_pixels,
    space_for,
    unfitted_space,
    vectorise,
    vectorise_as,
)
from dedup_assets.core.decision.local_scaling import (
    ceiling_of,
    local_levels,
    null_margins,
    outsider_levels,
)
from dedup_assets.core.decision.reference_pool import ReferencePool
from dedup_assets.core.decision.similarity import (
    DEFAULT_BLOCK,
    MAX_SLAB_BYTES,
    SlabOutputs,
    block_rows,
)

if TYPE_CHECKING:  # torch is imported where mirrors are encoded (`encode_mirrors`)
    import torch

    from dedup_assets.core.model.autoencoder import ConvAutoencoder

CHUNK = 16_384  # images mirrored and encoded at a time
# Images (or mirrors) whose nearest unrelated image is measured, at most: a seeded sample
# above it (200 draws above a 1% budget's cosine). Reached by the cross-class calibration.
MAX_QUERIES = 20_000
MAX_MIRRORS = 4_096  # images mirrored per class, at most (a seeded sample above it)


def mirror_rows(n: int) -> np.ndarray:
    """The rows (in latents order) whose mirrors a class of n images uses: all of them up to
    MAX_MIRRORS, else a seeded sorted sample of MAX_MIRRORS (the same for the same n)."""
    if n <= MAX_MIRRORS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_MIRRORS, replace=False))


def mirrored(pixels: np.ndarray, vertical: bool = False) -> np.ndarray:
    """Decoy pixels: each uint8 NHWC image mirrored left-right (top-bottom if vertical).

    Left-right, each pixel's channels are moved as one item (a void of their bytes): numpy
    copied 3-byte runs in reverse at a third of the speed (0.37 against 0.17 ms a class of
    20 images)."""
    if vertical or pixels.ndim != 4:
        return np.ascontiguousarray(pixels[:, ::-1] if vertical else pixels[:, :, ::-1])
    whole = np.ascontiguousarray(pixels)
    pixel = np.dtype((np.void, whole.shape[-1] * whole.itemsize))
    flipped = np.ascontiguousarray(whole.view(pixel)[:, :, ::-1])
    return flipped.view(whole.dtype).reshape(whole.shape)


def encode_mirrors(
    model: ConvAutoencoder,
    pixels: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    vertical: bool = False,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """The latents of the mirrors of `pixels[rows]` (every image without rows), CHUNK images
    at a time: `pixels` may be a memory-mapped store, and memory stays flat whatever its
    size. Pass the device and precision the class's latents were encoded with, so decoys
    and images are encoded alike."""
    # deferred: torch loads only where mirrors are encoded, not with the module
    from dedup_assets.core.model.autoencoder import LATENT_DIM, encode_images

    rows = np.arange(len(pixels)) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        return np.zeros((0, LATENT_DIM), np.float32)
    return np.concatenate(
        [
            encode_images(
                model,
                mirrored(take_rows(pixels, rows[at : at + CHUNK]), vertical),
                device=device,
                amp_dtype=amp_dtype,
            )
            for at in range(0, len(rows), CHUNK)
        ]
    )


def mirror_latents(
    layout: OutputLayout,
    key: str,
    latents: dict,
    n: int,
    encode: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, mirror latents) of a class of n images: the rows of its
    latents table whose mirrors are used (`mirror_rows`) and their latents, read when stored
    for the same latents (`latents` is their provenance: class content and model), else
    `encode(rows)`d and stored. The class's own budget calibration and the cross-class one
    then encode the mirrors once between them. What this process stored is handed to its
    later reads of the file as written (`artifacts.STORED_READS`: the cross-class calibration
    of the classes a worker decided opened each class's file again, 1 ms a small class) up
    to `artifacts.hand_over`'s cap; the arrays returned are read-only."""
    path, stamp = layout.mirror_latents(key), digest(latents)
    rows = mirror_rows(n)
    stored = _stored_mirrors(path, stamp, rows)
    if stored is not None:
        return stored
    mirrors = np.array(encode(rows), dtype=np.float32, order="C")
    if len(mirrors) != len(rows):
        raise ValueError(f"{len(mirrors)} mirror latents for {len(rows)} mirrored images")
    rows, mirrors = _read_only(rows.copy()), _read_only(mirrors)
    with atomic_path(path) as tmp:  # its folder made if missing
        with open(tmp, "wb") as fh:
            savez(fh, latents=np.array(stamp), rows=rows, mirrors=mirrors)
        written = os.stat(tmp)
    value = (stamp, rows, mirrors)
    hand_over(path, written, "mirrors", value, _mirrors_bytes(value))
    return rows, mirrors


def _stored_mirrors(
    path: Path, stamp: str, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, mirror latents) stored at `path` for latents `stamp` and these rows, else None
    (absent, stale, of an older layout or unreadable: to encode anew)."""
    try:
        stored = STORED_READS.get(path, "mirrors", _read_mirrors, _mirrors_bytes)
    except (OSError, KeyError, ValueError):
        return None
    if stored[0] == stamp and np.array_equal(stored[1], rows):
        return stored[1], stored[2]
    return None


def latents_rows_pixels(layout: OutputLayout, key: str, at: np.ndarray) -> np.ndarray:
    """The uint8 pixels of rows `at` of class `key`'s latents table (the order mirrors are
    counted in), from the class's pixel store."""
    ids = read_latent_ids(layout.latents(key))["image_id"]
    decoded = read_decoded_images(layout, key)
    if ids.equals(decoded["image_id"]):  # as the latents are written: the catalog's order
        rows = decoded["row"].to_numpy()
    else:  # a join (0.4 ms a class of 20, 0.4 s of 1,000 classes' mirrors)
        rows = (
            ids.to_frame()
            .join(
                decoded.select("image_id", "row"), on="image_id", how="left", maintain_order="left"
            )["row"]
            .to_numpy()
        )
    return pixels_of_rows(layout, key, rows[np.asarray(at, dtype=np.int64)])


def store_small_mirrors(
    layout: OutputLayout,
    classes: Sequence[tuple[str, dict, int]],
    encode: Callable[[np.ndarray], np.ndarray],
    *,
    small: int = 64,
    group: int = 1_024,
) -> int:
    """Store the mirrors' latents of the classes of fewer than `small` images that have none
    stored for their latents, encoded together, up to `group` images a call of `encode`
    (mirrored uint8 pixels -> latents, the run's model, device and precision): a class of 20
    alone is a small convolution on one thread (1,000 such classes: 3.3 s of mirrors). Each
    class's file is the one `mirror_latents` writes, and later finds. classes: (key, latents
    provenance, images) in the run's order. A class whose pixels cannot be read is left
    to its own turn, which reports it. Returns how many classes were stored."""
    pending: list[tuple[str, dict, int, np.ndarray]] = []
    stored = 0

    def flush() -> None:
        if not pending:
            return
        encoded = encode(np.concatenate([p for *_, p in pending]))
        at = 0
        for key, latents, n, pixels in pending:
            mine = encoded[at : at + len(pixels)]
            at += len(pixels)
            mirror_latents(layout, key, latents, n, lambda _rows, mine=mine: mine)
        pending.clear()

    total = 0
    for key, latents, n in classes:
        rows = mirror_rows(n)
        if (
            not 0 < n < small
            or _stored_mirrors(layout.mirror_latents(key), digest(latents), rows) is not None
        ):
            continue
        try:
            pixels = mirrored(latents_rows_pixels(layout, key, rows))
        except Exception:  # noqa: BLE001 - the class's own turn reports what is wrong
            continue
        if total + n > group:
            flush()
            total = 0
        pending.append((key, latents, n, pixels))
        total += n
        stored += 1
    flush()
    return stored


def _read_mirrors(path: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """A class's stored mirrors: (the latents' stamp, rows, mirror latents), read-only."""
    with np.load(path) as stored:
        return (
            str(stored["latents"]),
            _read_only(stored["rows"]),
            _read_only(np.ascontiguousarray(stored["mirrors"], dtype=np.float32)),
        )


def _mirrors_bytes(value: tuple[str, np.ndarray, np.ndarray]) -> int:
    return len(value[0]) + value[1].nbytes + value[2].nbytes + 64


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def mirror_null(
    vectors: np.ndarray,
    decoys: np.ndarray,
    rows: np.ndarray,
    block: int = DEFAULT_BLOCK,
    threads: int = 1,
) -> np.ndarray:
    """The nearest-unrelated similarities whose quantile is a budget's cosine (module doc):
    `decoys[k]` is the mirror of `vectors[rows[k]]`. With every image mirrored, each image
    against the other images' mirrors; with a sample of mirrors, each mirror against the
    images other than its source (at most MAX_QUERIES images or mirrors, a seeded sample).
    `threads`: as `nearest_decoy_similarity`'s."""
    n = len(vectors)
    rows = np.asarray(rows)
    if len(rows) == n and np.array_equal(rows, np.arange(n)):
        queries = np.arange(n)
        if n > MAX_QUERIES:  # the quantile from a sample of images, against every mirror
            queries = np.sort(np.random.default_rng(0).choice(n, MAX_QUERIES, replace=False))
        return nearest_decoy_similarity(
            vectors[queries], decoys, block, own=False, query_index=queries, threads=threads
        )
    pick = np.arange(len(rows))
    if len(pick) > MAX_QUERIES:
        pick = np.sort(np.random.default_rng(0).choice(len(pick), MAX_QUERIES, replace=False))
    return nearest_decoy_similarity(
        decoys[pick], vectors, block, own=False, query_index=rows[pick], threads=threads
    )


def proportional_mirrors(sizes: Sequence[int], mirrored: Sequence[int]) -> list[np.ndarray]:
    """Which of each group's mirrors to measure so that every group weighs in proportion to
    its size (indices into each group's mirrors, seeded): the same share f of every group,
    f at most MAX_QUERIES / total and at most each group's mirrored share. A set mixing
    sampled and fully mirrored classes (the cross-class calibration) then reads its
    quantile over images, not over classes."""
    total = int(sum(sizes))
    if total == 0:
        return [np.arange(0) for _ in sizes]
    share = min(
        1.0,
        MAX_QUERIES / total,
        *(m / n for n, m in zip(sizes, mirrored, strict=True) if n > 0),
    )
    rng = np.random.default_rng(0)
    out = []
    for n, m in zip(sizes, mirrored, strict=True):
        take = int(min(m, round(share * n)))
        out.append(np.sort(rng.choice(m, take, replace=False)) if take < m else np.arange(m))
    return out


NULL_SLAB_BYTES = MAX_SLAB_BYTES // 2
"""Similarities one block of the null holds at most (two threads: one join slab's)."""


def null_block_rows(decoys: int, block: int = DEFAULT_BLOCK) -> int:
    """Rows of a block of the null against `decoys` columns: at most `block`, fewer for
    many decoys so the block stays within NULL_SLAB_BYTES (one row at least). The same
    whatever the threads, so the values are too."""
    return int(max(1, min(block, NULL_SLAB_BYTES // (4 * max(decoys, 1)))))


def nearest_decoy_similarity(
    vectors: np.ndarray,
    decoys: np.ndarray,
    block: int = DEFAULT_BLOCK,
    *,
    own: bool = True,
    query_index: np.ndarray | None = None,
    threads: int = 1,
) -> np.ndarray:
    """For each unit row of vectors, its largest cosine with any unit row of decoys.

    own=False skips decoy i for row i (decoys made from the rows themselves): an image's
    own mirror is not an unrelated image when the scene is nearly symmetric. With
    `query_index`, row k of vectors is image query_index[k] (a sample of the images).
    `threads` above 1: blocks of rows also on that many threads less one, on idle cores
    only (`pools.run_on_idle_cores`; the same values whatever the threads). A block holds
    at most NULL_SLAB_BYTES of similarities (`null_block_rows`), so two threads hold what
    one block of the join's size did (a million images' null: 256 MiB).
    """
    n = len(vectors)
    out = np.full(n, -1.0, dtype=np.float32)
    if n == 0 or len(decoys) == 0:
        return out
    index = np.arange(n) if query_index is None else np.asarray(query_index)
    rows = null_block_rows(len(decoys), block)
    outputs = SlabOutputs()  # each thread's blocks in one buffer

    def compute(i: int) -> np.ndarray:
        start = i * rows
        s = outputs.product(vectors[start : start + rows], decoys.T)
        if not own:
            r = np.arange(len(s))
            s[r, index[start + r]] = -np.inf
        return s.max(axis=1)

    def store(_thread: int, i: int, best: np.ndarray) -> None:
        out[i * rows : i * rows + len(best)] = best

    run_on_idle_cores(-(-n // rows), compute, store, threads, name="null")
    return out


def resolvable(draws: int, budget: float) -> bool:
    """Whether `draws` null values can show a budget's threshold: k = floor(b (n + 1)) >= 1."""
    return int(np.floor(budget * (draws + 1) + 1e-9)) >= 1


def budget_thresholds(null: np.ndarray, budgets: Sequence[float]) -> list[float]:
    """The threshold of each budget: the k-th highest of the n nearest-decoy values with
    k = floor(b (n + 1)), never interpolated.

    An unrelated image drawn like the decoys exceeds the k-th highest of n such values with
    probability k / (n + 1) (order statistics, whatever the distribution), so this k keeps
    the expected false-removal share at most b. Reading the (1 - b) sample quantile instead
    (floor(b n) values above it) overshoots by one image in k: 7 / 601 = 1.16% for a class
    of 600 at 1%. Too few values for the budget (n + 1 < 1 / b: k = 0) give 1.0, which no
    near-duplicate exceeds: the highest of a handful of values would be exceeded with
    probability 1 / (n + 1), a third for n = 2 (`class_budgets` borrows the run's pool
    before it comes to that)."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]  # an image with no other decoy (a class of one)
    for b in budgets:
        if not 0.0 < b < 1.0:
            raise ValueError(f"a false-removal budget must lie in (0, 1), got {b}")
    ordered = np.sort(null)
    n = len(ordered)
    out = []
    for b in budgets:
        k = min(n, int(np.floor(b * (n + 1) + 1e-9)))  # k - 1 values lie above it
        out.append(float(min(1.0, ordered[n - k])) if k >= 1 else 1.0)
    return out


@functools.lru_cache(maxsize=64)
def _permutation(n: int, seed: int) -> np.ndarray:
    """`default_rng(seed).permutation(n)`, drawn once a process: every small class shuffles a
    pool of about the same size (read-only)."""
    order = np.random.default_rng(seed).permutation(n)
    order.setflags(write=False)
    return order


def pooled_null(
    vectors: np.ndarray,
    decoys: np.ndarray,
    n_others: int,
    block: int = DEFAULT_BLOCK,
    seed: int = 0,
) -> np.ndarray:
    """What an unrelated image's best pair scores in a class of n_others + 1 images, read
    against borrowed decoys (`core.decision.reference_pool`): each image's highest similarity within
    each of the floor(P / n_others) disjoint draws of n_others decoys (a seeded shuffle of
    the P decoys), so a class of n images gets about n P / (n - 1) null values instead of n.
    Blocked: memory is one block of images x P similarities."""
    vectors = np.asarray(vectors, dtype=np.float32)
    decoys = np.asarray(decoys, dtype=np.float32)
    r = max(1, int(n_others))
    draws = len(decoys) // r
    if len(vectors) == 0 or draws == 0:
        return np.zeros(0, np.float32)
    v, d = _same_width(vectors, decoys)
    picked = d[_permutation(len(d), seed)[: draws * r]]
    out = np.empty((len(v), draws), np.float32)
    rows = block_rows(len(picked), block)
    outputs = SlabOutputs()
    for start in range(0, len(v), rows):
        s = outputs.product(v[start : start + rows], picked.T)
        out[start : start + len(s)] = s.reshape(len(s), draws, r).max(axis=2)
    return out.ravel()


def pool_null(
    vectors: np.ndarray,
    pool: np.ndarray,
    block: int = DEFAULT_BLOCK,
    offsets: np.ndarray | None = None,
    pool_offsets: np.ndarray | None = None,
    highest: list[float] | None = None,
) -> np.ndarray:
    """What an unrelated image's best pair scores in the class, read against real images of
    the run's other classes (`core.decision.reference_pool`): each pool image's highest similarity
    to the class's images (with offsets, its highest margin: cosine less both offsets).
    One value per pool image, so a class of any size gets as many as the pool holds.
    `highest`, when given, gets the highest cosine any pool image reached (a budget's
    ceiling, `local_scaling.ceiling_of`, must lie above it). Blocked: memory is one block of
    pool images x the class."""
    vectors = np.asarray(vectors, dtype=np.float32)
    pool = np.asarray(pool, dtype=np.float32)
    if len(vectors) == 0 or len(pool) == 0:
        return np.zeros(0, np.float32)
    v, p = _same_width(vectors, pool)
    out = np.empty(len(p), np.float32)
    rows = block_rows(len(v), block)
    outputs = SlabOutputs()
    top = -np.inf
    for start in range(0, len(p), rows):
        s = outputs.product(p[start : start + rows], v.T)
        if highest is not None:
            top = max(top, float(s.max()))
        if offsets is not None:
            s -= np.asarray(offsets, np.float32)[None, :]
            s -= np.asarray(pool_offsets, np.float32)[start : start + rows, None]
        out[start : start + len(s)] = s.max(axis=1)
    if highest is not None:
        highest.append(top)
    return out


def _same_width(*parts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Zero-pad the narrower embeddings to the widest (an origin axis, for flat images or
    zero rows, may exist in some only; `similarity.with_origin_axis`)."""
    width = max(x.shape[1] for x in parts)
    return tuple(
        x if x.shape[1] == width else np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in parts
    )


class NullSource:
    """Which null set a budget's threshold (the keep list's `calibrated_on`)."""

    CLASS = "class"  # the class's own images against their mirrors
    POOL = "pool"  # the class's images against the run's other classes (reference pool)
    NONE = "none"  # too few images in the class and the pool: exact copies only


@dataclasses.dataclass(frozen=True)
class BudgetThreshold:
    """What one budget resolves to for one class.

    threshold: a cosine, or with `offsets` a margin over the images' local levels (a pair's
    own cosine is the margin plus both images' offsets, `core.decision.local_scaling`); 1.0 when
    nothing can be calibrated (then only exact copies go). space: the space the class is
    decided in at this budget; null: the `NullSource` whose threshold was the higher (the
    one that set it); draws: the null values it was read from. ceiling: with `offsets`,
    the cosine above which a pair is removed whatever its images' levels
    (`local_scaling.ceiling_of`: above every cosine its null reached), so no pair's own
    threshold passes it; None for a cosine threshold.
    """

    budget: float
    threshold: float
    space: str
    null: str
    draws: int
    offsets: np.ndarray | None = None
    ceiling: float | None = None

    @property
    def offset_cap(self) -> float | None:
        """The most a pair's two offsets take from its cosine together: the ceiling less
        the margin threshold (None without a ceiling)."""
        if self.offsets is None or self.ceiling is None:
            return None
        return float(self.ceiling - self.threshold)


def class_budgets(
    data: ClassData,
    model: ConvAutoencoder | None,
    space: str,
    budgets: Sequence[float],
    *,
    scaling: str = "local",
    vertical: bool = False,
    device: str = "cpu",
    block: int = DEFAULT_BLOCK,
    decoy_latents: np.ndarray | None = None,
    decoy_rows: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
    pool: ReferencePool | None = None,
    class_key: str = "",
) -> list[BudgetThreshold]:
    """Each budget's threshold for one class (module doc).

    Two null sets, each read by the k-th-highest rule: the class's images against their
    mirrors (of `mirror_rows` of them, encoded with `model` unless `decoy_latents` of
    `decoy_rows` are given), and the run's reference `pool` (real images of the classes
    other than `class_key`) against the class's images (`pool_null`). A class that can read
    a budget on its own (decided in its fitted space, and n + 1 >= 1/b) takes the higher of
    the two thresholds in its own space: mirrors can be easier decoys than real neighbours
    (in a fitted space they are out of its sample), the pool's images can be easier where
    classes differ, and the higher is safe if either is right. A cosine (`scaling=
    "uniform"`) or a margin above the two images' local levels (`"local"`; a pool image
    takes the level it would have in the class). Any other class is decided at that budget
    by the pool's cosine in `class_decision.unfitted_space`, where classes are comparable;
    with too few pool images for b, its threshold is 1.0. `data.pixels` must be loaded;
    `vectors` (the class's own, `class_decision.vectorise`) saves embedding them again."""
    if scaling not in ("local", "uniform"):
        raise ValueError(f"unknown budget scaling {scaling!r}: local or uniform")
    if data.pixels is None:
        raise ValueError("budget thresholds need the class's pixels")
    budgets = [float(b) for b in budgets]
    for b in budgets:
        if not 0.0 < b < 1.0:
            raise ValueError(f"a false-removal budget must lie in (0, 1), got {b}")
    n = len(data.image_ids)
    used = space_for(data.model, space)
    unfitted = unfitted_space(space)
    out: dict[float, BudgetThreshold] = {}
    if n < 2:  # nothing to remove but exact copies, nothing to read
        return [BudgetThreshold(b, 1.0, used, NullSource.NONE, 0) for b in budgets]
    borrowed_rows = (
        pool.others(class_key, data.pixel_hashes) if pool is not None and len(pool) else None
    )
    has_pool = borrowed_rows is not None and bool(borrowed_rows.any())
    own = [b for b in budgets if used == space and resolvable(n, b)]
    borrowed = [b for b in budgets if b not in own]
    if borrowed:
        null, shift = np.zeros(0, np.float32), 0.0
        if has_pool:
            # The class's own vectors when its space is the unfitted one (the same function
            # of the same images: a small class's DCT computed twice, 0.4 ms a class).
            mine = (
                vectors
                if vectors is not None and used == unfitted
                else vectorise_as(data, unfitted)
            )
            null = pooled_null(
                mine,
                vectorise_as(pool.as_class(data.model, borrowed_rows, unfitted), unfitted),
                n - 1,
                block,
            )
            shift = _class_shift(data, unfitted, mine, null, decoy_latents, decoy_rows, block)
        for b, t in zip(borrowed, budget_thresholds(null, borrowed), strict=True):
            if resolvable(len(null), b):
                t = min(1.0, t + shift)
                out[b] = BudgetThreshold(b, t, unfitted, NullSource.POOL, len(null))
            else:
                out[b] = BudgetThreshold(b, 1.0, unfitted, NullSource.NONE, len(null))
    if own:
        if decoy_latents is None:
            if model is None:
                raise ValueError("the class's mirrors need the model (or their latents)")
            decoy_rows = mirror_rows(n)
            decoy_latents = encode_mirrors(
                model, data.pixels, decoy_rows, vertical=vertical, device=device
            )
        rows = np.arange(n) if decoy_rows is None else np.asarray(decoy_rows)
        if len(rows) != len(decoy_latents):
            raise ValueError("decoy_rows and decoy_latents differ in length")
        on_pixels = needs_pixels(data.model, space)  # a pixel space
        decoy_pixels = mirrored(take_rows(data.pixels, rows), vertical) if on_pixels else None
        # The decoys pass through the class's vectoriser as a class of their own (its fit,
        # not refitted): ids and hashes are placeholders of the right length.
        decoy = dataclasses.replace(
            data,
            image_ids=data.image_ids[rows],
            pixel_hashes=data.pixel_hashes[rows],
            latents=decoy_latents,
            pixels=decoy_pixels,
            descriptors=None,  # the mirrors' own, from their pixels, not the class's
        )
        mine = vectorise(data, space) if vectors is None else vectors
        theirs = (
            vectorise(pool.as_class(data.model, borrowed_rows), space)
            if has_pool
            else np.zeros((0, mine.shape[1]), np.float32)
        )
        v, d, borrowed_vectors = _same_width(mine, vectorise(decoy, space), theirs)
        if scaling == "uniform":
            null = mirror_null(v, d, rows, block, threads=process_cores())
            offsets, ceiling = None, None
            from_pool = pool_null(v, borrowed_vectors, block)
        else:
            levels = local_levels(v, d, rows, block=block)
            null = null_margins(v, d, rows, levels, block=block)
            offsets = levels.offsets
            outside = outsider_levels(borrowed_vectors, v, d, rows, block=block)
            half = np.float32(0.5)
            highest = [float(levels.level.max())]  # a level: the best decoy's cosine
            from_pool = pool_null(v, borrowed_vectors, block, offsets, outside * half, highest)
            ceiling = ceiling_of(max(highest))
        draws = int(np.isfinite(null).sum())
        mirror_t = budget_thresholds(null, own)
        pool_t = budget_thresholds(from_pool, own)
        for b, tm, tp in zip(own, mirror_t, pool_t, strict=True):
            if resolvable(len(from_pool), b) and tp > tm:
                out[b] = BudgetThreshold(
                    b, tp, used, NullSource.POOL, len(from_pool), offsets, ceiling
                )
            else:
                out[b] = BudgetThreshold(b, tm, used, NullSource.CLASS, draws, offsets, ceiling)
    return [out[b] for b in budgets]


def _class_shift(
    data: ClassData,
    space: str,
    vectors: np.ndarray,
    pooled: np.ndarray,
    decoy_latents: np.ndarray | None,
    decoy_rows: np.ndarray | None,
    block: int,
) -> float:
    """How much closer the class's images come to each other's mirrors than to the pool's
    images, at the median: what a pooled threshold is raised by (never lowered), so a class
    of alike images (calm water, one texture) is not judged against a pool of other kinds.
    Mirrors are decoys of the class's own kind and never duplicates (a copy's mirror is not
    its copy); the median is what a class of n images can read."""
    n = len(data.image_ids)
    rows = mirror_rows(n) if decoy_rows is None else np.asarray(decoy_rows)
    if decoy_latents is None:
        latents = np.zeros((len(rows), data.latents.shape[1]), np.float32)
        if space == "raw":
            return 0.0  # mirrors' latents not at hand: no shift (the pool alone)
    else:
        latents = decoy_latents
    # A small class's every row, in order, mirrored straight from its store (the copy the
    # chunked `take_rows` makes is for stores too big to map whole).
    whole = len(rows) == n and n <= TAKE_CHUNK and np.array_equal(rows, np.arange(n))
    decoy = dataclasses.replace(
        data,
        image_ids=data.image_ids[rows],
        pixel_hashes=data.pixel_hashes[rows],
        latents=latents,
        pixels=mirrored(data.pixels if whole else take_rows(data.pixels, rows)),
        descriptors=None,
    )
    own = mirror_null(
        *_same_width(vectors, vectorise_as(decoy, space)), rows, block, threads=process_cores()
    )
    own = own[np.isfinite(own)]
    if len(own) == 0 or len(pooled) == 0:
        return 0.0
    return max(0.0, float(np.median(own)) - float(np.median(pooled)))


def binomial_quantile(q: float, n: np.ndarray, p: float) -> np.ndarray:
    """The smallest k with P(Binomial(n, p) <= k) >= q, for each n (as
    `scipy.stats.binom.ppf`), by bisection on the exact binomial distribution function."""
    n = np.asarray(n, dtype=np.int64)
    lo = np.zeros_like(n)  # P(X <= lo - 1) < q is known for lo = 0
    hi = n.copy()  # P(X <= n) = 1 >= q
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        reached = bdtr(mid, n, p) >= q
        hi = np.where(reached, mid, hi)
        lo = np.where(reached, lo, mid + 1)
    return hi


def removals_against_budget(keep: pl.DataFrame, budget: float | None) -> pl.DataFrame:
    """Per class of a keep list: images, removals (exact copies and near-duplicates apart),
    and for a budget threshold the removals it allows to be false (b x the class's images),
    the binomial 99% bound on them, and whether the near-duplicate removals exceed what
    chance explains (then most of them are real duplicates: review them). With split
    folders, a class of each split is a row of its own (`split` beside `class`): each is
    decided on its own, and a row of both counted the evaluation images as the training
    images' and gave the training class's space and null to both."""
    keys = ["split", "class"] if "split" in keep.columns else ["class"]
    per_class = (
        keep.group_by(keys)
        .agg(
            pl.len().alias("images"),
            pl.col("kept").sum().alias("kept"),
            (pl.col("match") == "exact").sum().alias("exact_copies"),
            (pl.col("match") == "near").sum().alias("near_duplicates"),
            pl.col("space").first().alias("space"),
            pl.col("calibrated_on").drop_nulls().first().alias("calibrated_on"),
        )
        .with_columns((pl.col("images") - pl.col("kept")).alias("removed"))
        .sort(keys)
    )
    if budget is None:
        return per_class
    images = per_class["images"].to_numpy()
    bound = binomial_quantile(0.99, images, budget)
    return per_class.with_columns(
        pl.Series("allowed_false", images * budget, dtype=pl.Float64),
        pl.Series("chance_bound_99", bound, dtype=pl.Int64),
    ).with_columns((pl.col("near_duplicates") > pl.col("chance_bound_99")).alias("beyond_chance"))


def shown_class(row: Mapping[str, Any]) -> str:
    """A per-class row's class as a user reads it: `<split>/<class>` with split folders."""
    split = row.get("split")
    return row["class"] if split in (None, "", "all") else f"{split}/{row['class']}"


def budget_summary_markdown(keep_summaries: Sequence[dict], shown: int = 20) -> str:
    """For the run's summary: per budget threshold, the near-duplicate removals beside the
    removals the budget allows to be false, over all classes and for the classes whose
    removals exceed what chance explains (`removals_against_budget`; keep-list JSONs)."""
    budgets = [s for s in keep_summaries if s.get("budget") is not None]
    if not budgets:
        return ""
    out = [
        "## Removals against the false-removal budget",
        "",
        "A budget b allows, in a class of n images without duplicates, about b x n false "
        "removals; more near-duplicate removals than the binomial 99% bound of that are more "
        "than chance explains: most of them are real duplicates (review them). `null`: where "
        "the class's threshold was read (`class`: its own mirrored images; `pool`: the run's "
        "reference images of other classes, for a class under 1/b images; `none`: too few "
        "images for b, only exact copies removed).",
        "",
        "| T | images | exact copies | near-duplicates | allowed false | classes beyond "
        "chance | null: class / pool / none |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in budgets:
        rows = s["per_class"]
        nulls = [sum(r.get("calibrated_on") == k for r in rows) for k in ("class", "pool", "none")]
        out.append(
            f"| {s['threshold']} | {s['images']:,} | {s['exact_copies_removed']:,} | "
            f"{s.get('near_duplicates_removed', 0):,} | "
            f"{sum(r['allowed_false'] for r in rows):,.1f} | "
            f"{sum(bool(r['beyond_chance']) for r in rows):,} | "
            + " / ".join(f"{v:,}" for v in nulls)
            + " |"
        )
    for s in budgets:
        beyond = sorted(
            (r for r in s["per_class"] if r["beyond_chance"]),
            key=lambda r: r["near_duplicates"] - r["allowed_false"],
            reverse=True,
        )
        if not beyond:
            continue
        out += [
            "",
            f"Classes beyond chance at {s['threshold']}"
            + (f" ({shown} of {len(beyond)} shown)" if len(beyond) > shown else "")
            + ":",
            "",
            "| class | images | near-duplicates | allowed false | chance 99% | null |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {shown_class(r)} | {r['images']:,} | {r['near_duplicates']:,} | "
            f"{r['allowed_false']:.1f} | {r['chance_bound_99']} | {r['calibrated_on']} |"
            for r in beyond[:shown]
        ]
    return "\n".join(out) + "\n"
