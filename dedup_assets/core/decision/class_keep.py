"""Deciding one class at every threshold key: the class's stored data read back
(`load_class_data`), each budget ("1%") resolved to its threshold (`core.decision.calibration`),
then the keep decision (`core.decision.class_decision`).

The functions the keep-list asset, the evaluation, the calibration tests and the
benchmarks call, so what they measure is what a run does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    StaleArtifact,
    catalog_images,
    pixels_of_rows,
    read_decoded_images,
    read_latents,
    require_current,
)
from dedup_assets.core.data.image_folder import pixel_hash
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.thresholds import budget_of
from dedup_assets.core.decision.ann_join import DEFAULT_ANN_MIN_CLASS_SIZE, DEFAULT_NPROBE
from dedup_assets.core.decision.calibration import BudgetThreshold, class_budgets
from dedup_assets.core.decision.class_decision import (
    DCT_SPACES,
    ClassData,
    ClassDecision,
    Corrections,
    PriorDecision,
    decide_class,
    needs_pixels,
    space_for,
    vectorise,
)
from dedup_assets.core.decision.dct_store import class_descriptors
from dedup_assets.core.decision.reference_pool import ReferencePool, build_reference_pool
from dedup_assets.core.density.class_density import fit_class_density, read_class_density

if TYPE_CHECKING:  # torch is imported where images are encoded (`decide_in_memory`)
    from dedup_assets.core.model.autoencoder import ConvAutoencoder


def load_class_data(
    layout: OutputLayout,
    key: str,
    current: CurrentInputs | None = None,
    *,
    with_pixels: bool = False,
    space: str | None = None,
    catalog: pl.DataFrame | None = None,
    dct_store: Path | None = None,
) -> tuple[pl.DataFrame, ClassData]:
    """One class's (image_id, path) table and what deciding it needs (`class_decision`).

    With `current`, the latents and the fit must be current; otherwise they are read as is
    (benchmarks and analyses of an output folder). Pixels are loaded when asked for, or
    when deciding in `space` needs them (the spaces of pixels, also the fallback of small
    classes). With `dct_store` (`OutputLayout.class_dct`), a class of DCT_STORE_MIN_IMAGES
    images or more in a space whose only pixel part is the DCT descriptor takes the stored
    descriptors instead (`dct_store`: computed for new images only), and reads no pixels
    unless asked for.
    """
    if current is not None:
        require_current(
            layout.latents(key),
            current.latents(key),
            f"latents of class {key}",
            "materialize class_latents for this class first",
        )
        require_current(
            layout.spline_fit(key),
            current.fit(key),
            f"spline fit of class {key}",
            "materialize spline_fits for this class first",
        )
    table, latents = read_latents(layout.latents(key))
    images = read_decoded_images(layout, key) if catalog is None else catalog_images(catalog, key)
    ids = table["image_id"].to_numpy().astype(str)
    # Each latent row's catalog row, in numpy: a polars join per class was one of a small
    # class's costliest steps at 1,000 classes.
    at = _positions_of(ids, images["image_id"].to_numpy().astype(str))
    hash_column = images["pixel_hash"]  # `is_null` is a query (0.15 ms); most have none
    if (at < 0).any() or (hash_column.null_count() and hash_column.is_null().to_numpy()[at].any()):
        raise StaleArtifact(f"latents of class {key} name images the catalog does not hold")
    model = read_class_density(layout.spline_fit(key))
    rows = images["row"].to_numpy()[at]
    hashes = images["pixel_hash"].to_numpy().astype(str)[at]
    descriptors = None
    stored = dct_store is not None and len(hashes) >= DCT_STORE_MIN_IMAGES
    if stored and space is not None and space_for(model, space) in DCT_SPACES:
        descriptors = {
            "dct": class_descriptors(
                dct_store, hashes, lambda i: pixels_of_rows(layout, key, rows[i])
            )
        }
    pixels = None
    if with_pixels or (space is not None and needs_pixels(model, space) and not descriptors):
        pixels = pixels_of_rows(layout, key, rows)
    return table, ClassData(
        ids, hashes, latents, model, pixels, descriptors, image_quality(images, at)
    )


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;L"})
"""Pillow modes of greyscale images, as the catalog records a file's own mode."""


def image_quality(images: pl.DataFrame, at: np.ndarray) -> np.ndarray:
    """(n, 3) per catalog row `at`: colour (1 unless its mode is greyscale), pixels as
    stored (width x height) and file bytes: what the `quality` keep policy ranks by."""
    mode = images["mode"].fill_null("").to_numpy().astype(str)[at]
    width = images["width"].fill_null(0).to_numpy()[at].astype(np.float64)
    height = images["height"].fill_null(0).to_numpy()[at].astype(np.float64)
    size = images["size_bytes"].fill_null(0).to_numpy()[at].astype(np.float64)
    colour = (~np.isin(mode, list(GREY_MODES))).astype(np.float64)
    return np.column_stack([colour, width * height, size])


# Below this a class's descriptors are computed, not stored: a few milliseconds, against a
# file more a class (5,000 more files for 5,000 classes of 20).
DCT_STORE_MIN_IMAGES = 256


def _positions_of(wanted: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Where each of `wanted` is in `ids` (unique), -1 where it is not."""
    if len(ids) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    found = np.minimum(np.searchsorted(ordered, wanted), len(ids) - 1)
    return np.where(ordered[found] == wanted, order[found], -1)


@dataclass(frozen=True)
class ThresholdDecision:
    """One threshold key's decision for a class: how it resolved (None for a cosine key)
    and the decision itself."""

    key: str
    resolved: BudgetThreshold | None
    decision: ClassDecision


def decide_thresholds(
    data: ClassData,
    thresholds: Sequence[str],
    *,
    space: str,
    policy: str,
    model: ConvAutoencoder | None = None,
    pool: ReferencePool | None = None,
    class_key: str = "",
    scaling: str = "local",
    block: int = 2048,
    join: str = "auto",
    ann_min_class_size: int = DEFAULT_ANN_MIN_CLASS_SIZE,
    nprobe: int = DEFAULT_NPROBE,
    prior: Sequence[PriorDecision | None] | None = None,
    decoy_latents: np.ndarray | None = None,
    decoy_rows: np.ndarray | None = None,
    corrections: Corrections | None = None,
) -> list[ThresholdDecision]:
    """Every threshold key's decision for one class, in the keys' order.

    A cosine key is applied as written; the budgets are resolved together by
    `calibration.class_budgets` (the class's mirrors, encoded with `model` unless
    `decoy_latents` of `decoy_rows` are given, or the run's reference `pool` for a class too
    small for a budget) and decided in the space and with the offsets they resolved to.
    `data.pixels` must be loaded when there is a budget. `corrections`: the user's, applied
    at every key (`class_decision`); budgets are resolved without them (the null
    distribution is the class's, whatever a user says about a few of its pairs)."""
    budgets = [budget_of(t) for t in thresholds]
    wanted = [b for b in budgets if b is not None]
    vectors = vectorise(data, space) if len(data.image_ids) else None
    by_budget: dict[float, BudgetThreshold] = {}
    if wanted:
        if model is None and decoy_latents is None:
            raise ValueError("a budget threshold needs the model (or the mirrors' latents)")
        resolved = class_budgets(
            data,
            model,  # type: ignore[arg-type]
            space,
            wanted,
            scaling=scaling,
            block=block,
            decoy_latents=decoy_latents,
            decoy_rows=decoy_rows,
            vectors=vectors,
            pool=pool,
            class_key=class_key,
        )
        by_budget = {r.budget: r for r in resolved}
    per_key = [None if b is None else by_budget[b] for b in budgets]
    decisions = decide_class(
        data,
        [float(t) if r is None else r.threshold for t, r in zip(thresholds, per_key, strict=True)],
        space=space,
        policy=policy,
        block=block,
        prior=prior,
        join=join,
        ann_min_class_size=ann_min_class_size,
        nprobe=nprobe,
        offsets=[None if r is None else r.offsets for r in per_key],
        offset_caps=[None if r is None else r.offset_cap for r in per_key],
        vectors=vectors,
        spaces=[None if r is None else r.space for r in per_key],
        corrections=corrections,
    )
    return [
        ThresholdDecision(str(t), r, d)
        for t, r, d in zip(thresholds, per_key, decisions, strict=True)
    ]


def decide_in_memory(
    classes: Mapping[str, np.ndarray],
    thresholds: Sequence[str],
    model: ConvAutoencoder,
    *,
    space: str = "spline_copula_dct",
    policy: str = "density",
    n_components: int = 128,
    scaling: str = "local",
    pixel_hashes: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, ThresholdDecision]]:
    """Classes of uint8 pixels (N, 64, 64, 3) decided as a run decides them, in memory:
    latents by `model`, each class's fit, the reference pool drawn from these classes, and
    `decide_thresholds` per class. {threshold key: {class: decision}}; for measuring the
    method (the budget's calibration tests and benchmarks), not a replacement for a run
    (no catalog, no provenance, nothing written)."""
    from dedup_assets.core.model.autoencoder import encode_images  # deferred: torch

    keys = sorted(classes)
    hashes = {
        k: np.asarray(
            [pixel_hash(p) for p in classes[k]] if pixel_hashes is None else pixel_hashes[k],
            dtype=str,
        )
        for k in keys
    }
    pool = build_reference_pool(
        keys,
        [classes[k] for k in keys],
        [hashes[k] for k in keys],
        lambda pixels: encode_images(model, pixels),
    )
    out: dict[str, dict[str, ThresholdDecision]] = {str(t): {} for t in thresholds}
    for k in keys:
        pixels = np.asarray(classes[k])
        latents = encode_images(model, pixels)
        ids = np.array([f"{k}/{i}" for i in range(len(pixels))])
        # in memory there are no files: colour from the pixels, sizes all equal
        grey = (pixels[..., :1] == pixels).all(axis=(1, 2, 3)) if len(pixels) else np.zeros(0)
        quality = np.column_stack([~grey, np.zeros((len(pixels), 2))]).astype(np.float64)
        data = ClassData(
            ids, hashes[k], latents, fit_class_density(latents, n_components), pixels, None, quality
        )
        for d in decide_thresholds(
            data,
            thresholds,
            space=space,
            policy=policy,
            model=model,
            pool=pool,
            class_key=k,
            scaling=scaling,
        ):
            out[d.key][k] = d
    return out
