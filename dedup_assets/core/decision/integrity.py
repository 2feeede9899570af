"""Data-quality rules for latents and keep lists; each returns the list of problems found."""

from __future__ import annotations

import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import DECIDED_BY, KEEP_LIST_COLUMNS


def latent_problems(
    image_ids: list[str], latents: np.ndarray, expected_ids: list[str]
) -> list[str]:
    """Latents must be finite and cover each catalogued image of the class exactly once."""
    problems = []
    if latents.ndim != 2 or latents.shape[0] != len(image_ids):
        problems.append(f"latent matrix shape {latents.shape} does not match {len(image_ids)} ids")
    bad = ~np.isfinite(latents).all(axis=1) if latents.ndim == 2 else np.array([])
    if bad.any():
        problems.append(f"{int(bad.sum())} latent vectors contain NaN or infinite values")
    if len(set(image_ids)) != len(image_ids):
        problems.append(f"{len(image_ids) - len(set(image_ids))} duplicated image ids")
    missing = set(expected_ids) - set(image_ids)
    extra = set(image_ids) - set(expected_ids)
    if missing:
        problems.append(
            f"{len(missing)} catalogued images have no latent (e.g. {sorted(missing)[0]})"
        )
    if extra:
        problems.append(
            f"{len(extra)} latents belong to no catalogued image (e.g. {sorted(extra)[0]})"
        )
    return problems


def keep_list_problems(
    keep: pl.DataFrame, catalog_ok: pl.DataFrame, threshold: float | None = None
) -> list[str]:
    """A keep list must account for every image once, empty no class, and justify each removal.

    catalog_ok: the decoded images (columns image_id, class, optionally pixel_hash). Every
    removed image must name a kept image of the same class; a near-duplicate with
    similarity above its row's `cosine` (the threshold it was decided at: the cosine key,
    a budget's cosine for its class, or with local levels its pair's own cosine), an exact
    copy with the same pixels as the image it names and similarity 1.0 (exact copies go at
    every threshold). A removal an override forced (`match` `override`, `decided_by`
    `override`) needs no similarity, and may name no image; one it names must be kept, of
    its class. A class emptied only by such removals is the user's choice. With `threshold`
    (a cosine key), every row's cosine must also be that threshold.
    """
    problems: list[str] = []
    missing_cols = [c for c in KEEP_LIST_COLUMNS if c not in keep.columns]
    if missing_cols:
        return [f"keep list lacks columns {missing_cols}"]
    joins = set(keep["join"].drop_nulls().unique().to_list()) - {"exact", "ann"}
    if joins or keep["join"].null_count():
        problems.append(f"rows without a known join (exact or ann): {sorted(joins) or 'null'}")
    who = set(keep["decided_by"].drop_nulls().unique().to_list()) - set(DECIDED_BY)
    if who or keep["decided_by"].null_count():
        problems.append(f"rows without a known decided_by {DECIDED_BY}: {sorted(who) or 'null'}")
    forced = (pl.col("match") == "override").fill_null(False)
    unowned = keep.filter(forced & (pl.col("decided_by") != "override"))
    if unowned.height:
        problems.append(f"{unowned.height} removals by override are not decided_by override")
    n_rows, n_ids = keep.height, keep["image_id"].n_unique()
    if n_ids != n_rows:
        problems.append(f"{n_rows - n_ids} image ids appear more than once")
    # Anti-joins of the unique ids (Python sets of 27,000 strings each cost 10 ms a list).
    want = catalog_ok.select("image_id").unique()
    have = keep.select("image_id").unique()
    missing = want.join(have, on="image_id", how="anti").height
    if missing:
        problems.append(f"{missing} catalogued images are missing from the keep list")
    foreign = have.join(want, on="image_id", how="anti").height
    if foreign:
        problems.append(f"{foreign} keep-list images are not in the catalog")
    per_class = (
        catalog_ok.group_by("class")
        .len("catalogued")
        .join(
            keep.group_by("class").agg(
                pl.len().alias("listed"),
                pl.col("kept").sum().alias("kept"),
                forced.sum().alias("forced"),
            ),
            on="class",
            how="full",
            coalesce=True,
        )
        .fill_null(0)
    )
    emptied = per_class.filter(
        (pl.col("kept") == 0)
        & (pl.col("catalogued") > 0)
        & ~((pl.col("forced") == pl.col("listed")) & (pl.col("listed") > 0))
    )
    if emptied.height:
        problems.append(f"classes emptied by removal: {sorted(emptied['class'].to_list())}")
    off = per_class.filter(pl.col("listed") != pl.col("catalogued"))
    if off.height:
        problems.append(f"per-class counts do not add up for {sorted(off['class'].to_list())}")
    kept = keep.filter(pl.col("kept"))
    removed = keep.filter(~pl.col("kept"))
    if kept["duplicate_of"].is_not_null().any() or kept["similarity"].is_not_null().any():
        problems.append("kept images must have empty duplicate_of and similarity")
    target = removed.join(
        kept.select(
            pl.col("image_id").alias("duplicate_of"), pl.col("class").alias("target_class")
        ),
        on="duplicate_of",
        how="left",
    )
    no_target = target.filter(
        pl.col("target_class").is_null()
        & ~((pl.col("match") == "override") & pl.col("duplicate_of").is_null()).fill_null(False)
    )
    if no_target.height:
        problems.append(f"{no_target.height} removed images do not point to a kept image")
    cross = target.filter(
        pl.col("target_class").is_not_null() & (pl.col("target_class") != pl.col("class"))
    )
    if cross.height:
        problems.append(f"{cross.height} removed images point to a kept image of another class")
    if threshold is not None:
        other = keep.filter((pl.col("cosine") - threshold).abs() > 1e-9)
        if other.height:
            problems.append(f"{other.height} rows were decided at a cosine other than {threshold}")
    weak = removed.filter(~forced).filter(
        pl.col("similarity").is_null()
        | pl.col("cosine").is_null()
        | ((pl.col("match") != "exact") & (pl.col("similarity") <= pl.col("cosine")))
    )
    if weak.height:
        problems.append(
            f"{weak.height} removed images have similarity <= the cosine they were decided at"
        )
    if "pixel_hash" in catalog_ok.columns:
        hashes = catalog_ok.select("image_id", "pixel_hash")
        exact = (
            removed.filter(pl.col("match") == "exact")
            .join(hashes, on="image_id", how="left")
            .join(
                hashes.rename({"image_id": "duplicate_of", "pixel_hash": "kept_hash"}),
                on="duplicate_of",
                how="left",
            )
        )
        wrong = exact.filter(
            (pl.col("pixel_hash") != pl.col("kept_hash")) | (pl.col("similarity") != 1.0)
        )
        if wrong.height:
            problems.append(
                f"{wrong.height} images marked exact copies differ in pixels from the image "
                "they name or do not have similarity 1.0"
            )
    return problems
