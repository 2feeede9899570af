"""Assets: keep lists per class x threshold, and the combined keep list per threshold."""

import time

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.catalog import image_catalog
from dedup_assets.assets.latents import class_latents
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.core import plots
from dedup_assets.core.artifacts import (
    KEEP_LIST_COLUMNS,
    catalog_images,
    open_pixels,
    read_catalog,
    read_class_keep_lists,
    read_latents,
)
from dedup_assets.core.atomic_io import write_bytes, write_csv, write_json, write_parquet
from dedup_assets.core.class_density import ClassDensityModel
from dedup_assets.core.image_folder import class_name_from_key
from dedup_assets.core.keep_policy import greedy_keep, visit_order
from dedup_assets.core.similarity import embed
from dedup_assets.partitions import (
    CLASS_DIM,
    THRESHOLD_DIM,
    by_class,
    by_threshold,
    class_threshold_partitions,
    threshold_partitions,
)
from dedup_assets.ui import image_metadata, md_table
from resources import DedupSettings, DedupStorage

PAIRS_SHOWN = 8


def build_class_keep_list(
    layout, class_key: str, threshold: str, settings: DedupSettings, log=None
) -> tuple[pl.DataFrame, dict]:
    """Decide which images of one class survive at one threshold (plain function)."""
    table, latents = read_latents(layout.latents(class_key))
    model = ClassDensityModel.load(layout.spline_fit(class_key))
    ids = table["image_id"].to_numpy().astype(str)
    start = time.perf_counter()
    x = embed(latents, settings.similarity_space, model)
    log_density = model.log_density(latents) if settings.keep_policy == "density" else None
    order = visit_order(ids, settings.keep_policy, log_density)
    decision = greedy_keep(x, order, float(threshold), block=min(settings.block_size, 4096))
    seconds = time.perf_counter() - start
    dup_ids = np.where(decision.duplicate_of >= 0, ids[np.maximum(decision.duplicate_of, 0)], None)
    keep = pl.DataFrame(
        {
            "image_id": ids,
            "class": class_name_from_key(class_key),
            "path": table["path"],
            "kept": decision.kept,
            "duplicate_of": pl.Series(dup_ids.tolist(), dtype=pl.String),
            "similarity": pl.Series(
                [None if np.isnan(s) else float(s) for s in decision.similarity], dtype=pl.Float64
            ),
        }
    ).select(KEEP_LIST_COLUMNS)
    stats = {
        "images": len(ids),
        "kept": decision.n_kept,
        "removed": len(ids) - decision.n_kept,
        "join_seconds": round(seconds, 4),
        "resolution_rounds": decision.rounds,
        "similarity_space": settings.similarity_space,
        "keep_policy": settings.keep_policy,
    }
    if log is not None:
        log(
            f"{class_key} @ T={threshold}: kept {stats['kept']:,} of {stats['images']:,} "
            f"({settings.similarity_space}, {settings.keep_policy}) in {seconds:.2f}s"
        )
    return keep, stats


@dg.asset(
    group_name="deduplication",
    kinds={"numpy", "parquet"},
    partitions_def=class_threshold_partitions,
    deps=[
        dg.AssetDep(class_latents, partition_mapping=by_class),
        dg.AssetDep(spline_fits, partition_mapping=by_class),
    ],
    description="Per class and threshold T: cosine similarity over all pairs in blocks; an "
    "image is removed when it is more similar than T to an image already kept.",
)
def class_keep_list(
    context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings
) -> dg.MaterializeResult:
    settings.validate()
    layout = storage.layout()
    keys = context.partition_key.keys_by_dimension
    class_key, threshold = keys[CLASS_DIM], keys[THRESHOLD_DIM]
    keep, stats = build_class_keep_list(layout, class_key, threshold, settings, context.log.info)
    path = write_parquet(keep, layout.class_keep_list(threshold, class_key))
    return dg.MaterializeResult(metadata={**stats, "path": dg.MetadataValue.path(str(path))})


def _pairs_picture(layout, keep: pl.DataFrame, catalog: pl.DataFrame) -> bytes | None:
    """The least and the most similar removed pairs: what a reviewer should look at."""
    removed = keep.filter(~pl.col("kept")).sort("similarity")
    if removed.height == 0:
        return None
    half = PAIRS_SHOWN // 2
    picked = pl.concat([removed.head(half), removed.tail(half)]).unique(
        "image_id", maintain_order=True
    )
    rows = dict(zip(catalog["image_id"].to_list(), catalog["row"].to_list(), strict=True))
    pixels = open_pixels(layout)
    kept_px = np.stack([pixels[rows[i]] for i in picked["duplicate_of"]])
    removed_px = np.stack([pixels[rows[i]] for i in picked["image_id"]])
    captions = [
        f"{c[:12]}\n{p.rsplit('/', 1)[-1][:14]}"
        for c, p in zip(picked["class"], picked["path"], strict=True)
    ]
    return plots.duplicate_pairs(kept_px, removed_px, picked["similarity"].to_list(), captions)


@dg.asset(
    group_name="deduplication",
    kinds={"parquet", "csv"},
    partitions_def=threshold_partitions,
    deps=[image_catalog, dg.AssetDep(class_keep_list, partition_mapping=by_threshold)],
    description="The keep list for one threshold over all classes, as parquet and CSV "
    "(keep_lists/<T>.parquet): image_id, class, path, kept, duplicate_of, similarity.",
)
def keep_list(
    context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings
) -> dg.MaterializeResult:
    layout = storage.layout()
    threshold = context.partition_key
    catalog = catalog_images(read_catalog(layout))
    class_keys = sorted(catalog["class_key"].unique().to_list())
    keep = read_class_keep_lists(layout, threshold, class_keys).sort("class", "path")
    write_parquet(keep, layout.keep_list(threshold, "parquet"))
    write_csv(keep, layout.keep_list(threshold, "csv"))
    per_class = (
        keep.group_by("class")
        .agg(pl.len().alias("images"), pl.col("kept").sum().alias("kept"))
        .with_columns((pl.col("images") - pl.col("kept")).alias("removed"))
        .sort("class")
    )
    kept_total = int(keep["kept"].sum())
    summary = {
        "threshold": threshold,
        "images": keep.height,
        "kept": kept_total,
        "removed": keep.height - kept_total,
        "similarity_space": settings.similarity_space,
        "keep_policy": settings.keep_policy,
        "per_class": per_class.to_dicts(),
    }
    write_json(summary, layout.keep_list(threshold, "json"))
    metadata = {
        "images": keep.height,
        "kept": kept_total,
        "removed": keep.height - kept_total,
        "kept_fraction": kept_total / max(keep.height, 1),
        "similarity_space": settings.similarity_space,
        "keep_policy": settings.keep_policy,
        "per_class": dg.MetadataValue.md(
            md_table(
                ["class", "images", "kept", "removed"],
                per_class.select("class", "images", "kept", "removed").rows(),
            )
        ),
        "path": dg.MetadataValue.path(str(layout.keep_list(threshold))),
    }
    picture = _pairs_picture(layout, keep, catalog)
    if picture is not None:
        write_bytes(picture, layout.duplicate_pairs_image(threshold))
        metadata["duplicate_pairs"] = image_metadata(picture, "removed pairs to review")
    context.log.info(f"T={threshold}: kept {kept_total:,} of {keep.height:,} images")
    return dg.MaterializeResult(metadata=metadata)
