"""Thresholds as a false-removal budget: which threshold removes at most a share b of the
images that have no duplicate, class by class.

With local scaling (the default, `core.local_scaling`) the threshold is a margin over the
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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dedup_assets.core.local_scaling import LocalLevels, local_levels, null_margins
from dedup_assets.core.similarity import DEFAULT_BLOCK, block_rows

if TYPE_CHECKING:
    import torch

    from dedup_assets.core.autoencoder import ConvAutoencoder
    from dedup_assets.core.class_decision import ClassData

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
    """Decoy pixels: each uint8 NHWC image mirrored left-right (top-bottom if vertical)."""
    return np.ascontiguousarray(pixels[:, ::-1] if vertical else pixels[:, :, ::-1])


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
    from dedup_assets.core.autoencoder import LATENT_DIM, encode_images

    rows = np.arange(len(pixels)) if rows is None else np.asarray(rows)
    if len(rows) == 0:
        return np.zeros((0, LATENT_DIM), np.float32)
    return np.concatenate(
        [
            encode_images(
                model,
                mirrored(np.asarray(pixels[rows[at : at + CHUNK]]), vertical),
                device=device,
                amp_dtype=amp_dtype,
            )
            for at in range(0, len(rows), CHUNK)
        ]
    )


def mirror_null(
    vectors: np.ndarray,
    decoys: np.ndarray,
    rows: np.ndarray,
    block: int = DEFAULT_BLOCK,
) -> np.ndarray:
    """The nearest-unrelated similarities whose quantile is a budget's cosine (module doc):
    `decoys[k]` is the mirror of `vectors[rows[k]]`. With every image mirrored, each image
    against the other images' mirrors; with a sample of mirrors, each mirror against the
    images other than its source (at most MAX_QUERIES images or mirrors, a seeded sample)."""
    n = len(vectors)
    rows = np.asarray(rows)
    if len(rows) == n and np.array_equal(rows, np.arange(n)):
        queries = np.arange(n)
        if n > MAX_QUERIES:  # the quantile from a sample of images, against every mirror
            queries = np.sort(np.random.default_rng(0).choice(n, MAX_QUERIES, replace=False))
        return nearest_decoy_similarity(
            vectors[queries], decoys, block, own=False, query_index=queries
        )
    pick = np.arange(len(rows))
    if len(pick) > MAX_QUERIES:
        pick = np.sort(np.random.default_rng(0).choice(len(pick), MAX_QUERIES, replace=False))
    return nearest_decoy_similarity(decoys[pick], vectors, block, own=False, query_index=rows[pick])


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


def nearest_decoy_similarity(
    vectors: np.ndarray,
    decoys: np.ndarray,
    block: int = DEFAULT_BLOCK,
    *,
    own: bool = True,
    query_index: np.ndarray | None = None,
) -> np.ndarray:
    """For each unit row of vectors, its largest cosine with any unit row of decoys.

    own=False skips decoy i for row i (decoys made from the rows themselves): an image's
    own mirror is not an unrelated image when the scene is nearly symmetric. With
    `query_index`, row k of vectors is image query_index[k] (a sample of the images).
    """
    n = len(vectors)
    out = np.full(n, -1.0, dtype=np.float32)
    if n == 0 or len(decoys) == 0:
        return out
    index = np.arange(n) if query_index is None else np.asarray(query_index)
    rows = block_rows(len(decoys), block)
    for start in range(0, n, rows):
        s = vectors[start : start + rows] @ decoys.T
        if not own:
            r = np.arange(len(s))
            s[r, index[start + r]] = -np.inf
        out[start : start + len(s)] = s.max(axis=1)
    return out


def budget_thresholds(null: np.ndarray, budgets: Sequence[float]) -> list[float]:
    """The threshold of each budget: the k-th highest of the n nearest-decoy values with
    k = floor(b (n + 1)) (at least 1), never interpolated.

    An unrelated image drawn like the decoys exceeds the k-th highest of n such values with
    probability k / (n + 1) (order statistics, whatever the distribution), so this k keeps
    the expected false-removal share at most b. Reading the (1 - b) sample quantile instead
    (floor(b n) values above it) overshoots by one image in k: 7 / 601 = 1.16% for a class
    of 600 at 1%. A class too small for the budget (n + 1 < 1 / b) gets its highest value."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]  # an image with no other decoy (a class of one)
    for b in budgets:
        if not 0.0 < b < 1.0:
            raise ValueError(f"a false-removal budget must lie in (0, 1), got {b}")
    if len(null) == 0:
        return [1.0 for _ in budgets]
    ordered = np.sort(null)
    n = len(ordered)
    out = []
    for b in budgets:
        k = min(n, max(1, int(np.floor(b * (n + 1) + 1e-9))))  # k - 1 values lie above it
        out.append(float(min(1.0, ordered[n - k])))
    return out


def _same_width(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad the narrower of two embeddings (an origin axis may exist in one only)."""
    width = max(a.shape[1], b.shape[1])
    pad = [np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in (a, b)]
    return pad[0], pad[1]


@dataclasses.dataclass(frozen=True)
class BudgetResolution:
    """What a class's budgets resolve to: one threshold per budget, a cosine with uniform
    scaling, a margin with local scaling (then `levels` holds each image's level, and a
    pair's own cosine is the margin plus both images' offsets; `core.local_scaling`)."""

    thresholds: list[float]
    levels: LocalLevels | None = None

    @property
    def offsets(self) -> np.ndarray | None:
        return None if self.levels is None else self.levels.offsets


def class_budgets(
    data: ClassData,
    model: ConvAutoencoder,
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
) -> BudgetResolution:
    """Each budget's threshold for one class in `space` (or the space it falls back to):
    the mirrors of its images (of `mirror_rows` of them) are encoded with `model` and
    embedded with the class's own fit, and the budget's quantile of what an unrelated
    image's best pair scores is read (module doc): its cosine (`scaling="uniform"`) or its
    margin above the two images' local levels (`"local"`, `core.local_scaling`).
    `data.pixels` must be loaded; `decoy_latents` (the mirrors' latents of `decoy_rows`,
    default every image in input order) saves encoding them again when several spaces are
    calibrated; `vectors` (the class's own, `class_decision.vectorise`) saves embedding
    them again."""
    from dedup_assets.core.class_decision import needs_pixels, vectorise

    if scaling not in ("local", "uniform"):
        raise ValueError(f"unknown budget scaling {scaling!r}: local or uniform")
    if data.pixels is None:
        raise ValueError("budget thresholds need the class's pixels")
    n = len(data.image_ids)
    if n < 2:
        return BudgetResolution(
            budget_thresholds(np.zeros(0), budgets),
            None if scaling == "uniform" else local_levels(np.zeros((n, 1)), np.zeros((0, 1)), []),
        )
    if decoy_latents is None:
        decoy_rows = mirror_rows(n)
        decoy_latents = encode_mirrors(
            model, data.pixels, decoy_rows, vertical=vertical, device=device
        )
    rows = np.arange(n) if decoy_rows is None else np.asarray(decoy_rows)
    if len(rows) != len(decoy_latents):
        raise ValueError("decoy_rows and decoy_latents differ in length")
    on_pixels = needs_pixels(data.model, space)  # a pixel space, or a class too small for a fit
    decoy_pixels = mirrored(np.asarray(data.pixels[rows]), vertical) if on_pixels else None
    # The decoys pass through the class's vectoriser as a class of their own (its fit, not
    # refitted): ids and hashes are placeholders of the right length.
    decoy = dataclasses.replace(
        data,
        image_ids=data.image_ids[rows],
        pixel_hashes=data.pixel_hashes[rows],
        latents=decoy_latents,
        pixels=decoy_pixels,
    )
    own = vectorise(data, space) if vectors is None else vectors
    v, d = _same_width(own, vectorise(decoy, space))
    if scaling == "uniform":
        return BudgetResolution(budget_thresholds(mirror_null(v, d, rows, block), budgets))
    levels = local_levels(v, d, rows, block=block)
    null = null_margins(v, d, rows, levels, block=block)
    return BudgetResolution(budget_thresholds(null, budgets), levels)
