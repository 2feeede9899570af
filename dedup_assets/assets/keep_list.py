"""Asset: the keep list of one threshold over every class, with its blocking integrity check."""

import dagster as dg
import polars as pl

from dedup_assets.assets.autoencoder import autoencoder
from dedup_assets.assets.catalog import image_catalog
from dedup_assets.core.data.artifacts import (
    catalog_images,
    digest,
    gather_pixels,
    read_catalog,
    read_class_keep_lists,
    threshold_verdict,
    write_table,
)
from dedup_assets.core.data.atomic_io import write_bytes, write_csv, write_json, write_text
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.thresholds import budget_of, cosine_of
from dedup_assets.core.decision.calibration import (
    removals_against_budget,
    shown_class,
)
from dedup_assets.core.decision.class_keep_lists import with_duplicate_paths
from dedup_assets.core.decision.integrity import keep_list_problems
from dedup_assets.core.quality import plots
from dedup_assets.ui import image_metadata, md_table
from resources import DedupSettings, DedupStorage

PAIRS_SHOWN = 8
INTEGRITY = "keep_list_integrity"


def _per_class_markdown(per_class: pl.DataFrame, budget: float | None) -> str:
    """The keep list's per-class table for the UI; with a budget, the removals it allows to
    be false beside the near-duplicates removed, and where its null was read."""
    columns = ["class", "images", "kept", "exact_copies", "near_duplicates", "space"]
    headers = ["class", "images", "kept", "exact copies", "near-duplicates", "space"]
    if budget is not None:
        columns += ["allowed_false", "chance_bound_99", "beyond_chance", "calibrated_on"]
        headers += [f"allowed false ({budget:.2%} x images)", "chance 99%", "beyond chance", "null"]
    rows = [
        (shown_class(row), *(f"{v:.1f}" if isinstance(v, float) else v for v in values))
        for row, values in zip(
            per_class.to_dicts(), per_class.select(columns[1:]).rows(), strict=True
        )
    ]
    return md_table(headers, rows)


POLICY_NOTE = {
    "density": "which image stays: the keep policy 'density' visits the lowest spline "
    "log-density first, so the rarer-looking image of a pair is kept",
    "first": "which image stays: the keep policy 'first' visits images by id (a content "
    "hash), so the kept one is not chosen by name or by which file is the copy",
}


def _pairs_picture(
    layout: OutputLayout, threshold: str, keep: pl.DataFrame, catalog: pl.DataFrame, policy: str
) -> bytes | None:
    """The least and the most similar removed pairs: what a reviewer should look at. The
    picture stored for the threshold when it shows the same pairs (most updates remove
    nothing new: 0.03 s of an update's keep list, drawing and encoding it again)."""
    # A removal by override may name no kept image: it has no pair to show.
    removed = keep.filter(~pl.col("kept") & pl.col("duplicate_of").is_not_null()).sort("similarity")
    if removed.height == 0:
        return None
    half = PAIRS_SHOWN // 2
    picked = pl.concat([removed.head(half), removed.tail(half)]).unique(
        "image_id", maintain_order=True
    )
    # What the picture shows: the images (their ids name their content), their names, the
    # similarities as drawn, the note; and how it is drawn.
    stamp = digest(
        {
            "pairs": picked.select("image_id", "path", "duplicate_of", "duplicate_of_path").rows(),
            "similarity": [f"{s:.3f}" for s in picked["similarity"].to_list()],
            "note": POLICY_NOTE.get(policy, ""),
            "drawn": PAIRS_DRAWING,
        }
    )
    stored = layout.duplicate_pairs_image(threshold)
    if plots.pairs_stamp(stored) == stamp:
        return stored.read_bytes()
    rows = catalog.select("image_id", "class_key", "row", "path")
    kept_rows = picked.select(pl.col("duplicate_of").alias("image_id")).join(
        rows, on="image_id", how="left", maintain_order="left"
    )
    removed_rows = picked.select("image_id").join(
        rows, on="image_id", how="left", maintain_order="left"
    )
    return plots.duplicate_pairs(
        gather_pixels(layout, kept_rows),
        gather_pixels(layout, removed_rows),
        picked["similarity"].to_list(),
        kept_rows["path"].to_list(),
        removed_rows["path"].to_list(),
        POLICY_NOTE.get(policy, ""),
        stamp,
    )


PAIRS_DRAWING = 1  # a change of how `plots.duplicate_pairs` draws: every picture drawn again


def mark_clean_copy_stale(layout: OutputLayout, threshold: str, keep_digest: str) -> bool:
    """Say inside `clean/<T>` when it was made from another keep list than the current one."""
    if not layout.clean_dir(threshold).is_dir():
        return False
    if threshold_verdict(layout, threshold, keep_digest).clean_keep_list == keep_digest:
        return False
    write_text(
        "STALE: this copy was made from an earlier keep list than "
        f"keep_lists/{threshold}.parquet.\nIt is replaced when clean_dataset next succeeds "
        "for this threshold (a failed data-quality gate blocks it); do not train on it.\n",
        layout.clean_stale_note(threshold),
    )
    return True


def build_keep_list_asset(
    thresholds_def: dg.StaticPartitionsDefinition, class_keep_lists: dg.AssetsDefinition
) -> dg.AssetsDefinition:
    """keep_list (per threshold, which carries its blocking integrity check), for the
    configured thresholds."""

    @dg.asset(
        group_name="deduplication",
        kinds={"parquet", "csv"},
        partitions_def=thresholds_def,
        deps=[
            image_catalog,
            # the model, whose digest every class's keep record names: a backfill planned
            # before the catalog had registered any class (a new output's "Materialize all")
            # ran this step before the model existed and failed on its file
            autoencoder,
            dg.AssetDep(class_keep_lists, partition_mapping=dg.AllPartitionMapping()),
        ],
        check_specs=[
            dg.AssetCheckSpec(
                INTEGRITY,
                asset="keep_list",
                blocking=True,
                partitions_def=thresholds_def,
                description="No class emptied; every removed image points to a kept image of "
                "the same class with similarity > T (exactly 1.0 for exact copies); counts add "
                "up to the catalog. Checked once, as the keep list is written, and recorded in "
                "its summary for the clean copy (`ThresholdVerdict`).",
            )
        ],
        description="The keep list for one threshold over all classes, as parquet and CSV "
        "(`keep_lists/<T>.parquet`): image_id, split (the implicit split's name, all, for a "
        "source without split folders), class, path, kept, duplicate_of, "
        "similarity, match (exact, near or override), space, join, cosine, calibrated_on, "
        "decided_at, decided_in, decided_by (exact, model or override), and "
        "duplicate_of_path: the path, relative to the source, of the kept image a removed "
        "one duplicates (duplicate_of names it by image id).",
    )
    def keep_list(
        context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        threshold = context.partition_key
        current = storage.current_inputs(settings)  # the overrides in each class provenance
        class_keys = sorted(current.class_digests)
        current.require_every_class(
            lambda k: layout.class_keep_list(threshold, k),
            lambda k: current.keep(k, threshold),
            f"keep decisions at T={threshold}",
            "class_keep_lists",
        )
        keep = with_duplicate_paths(
            read_class_keep_lists(layout, threshold, class_keys).sort("split", "class", "path")
        )
        provenance = current.keep_list(threshold)
        write_table(keep, layout.keep_list(threshold, "parquet"), provenance)
        write_csv(keep, layout.keep_list(threshold, "csv"))
        budget = budget_of(threshold)
        per_class = removals_against_budget(keep, budget)
        kept_total = int(keep["kept"].sum())
        catalog = catalog_images(read_catalog(layout))
        problems = keep_list_problems(keep, catalog, cosine_of(threshold))
        summary = {
            "threshold": threshold,
            "budget": budget,
            "images": keep.height,
            "kept": kept_total,
            "removed": keep.height - kept_total,
            "exact_copies_removed": int((keep["match"] == "exact").sum()),
            "near_duplicates_removed": int((keep["match"] == "near").sum()),
            "similarity_space": str(settings.similarity_space),
            "keep_policy": str(settings.keep_policy),
            "per_class": per_class.to_dicts(),
            "keep_list": digest(provenance),
            "problems": problems,  # read back by `threshold_verdict`
        }
        write_json(summary, layout.keep_list(threshold, "json"))
        stale = mark_clean_copy_stale(layout, threshold, digest(provenance))
        metadata = {
            "images": keep.height,
            "kept": kept_total,
            "removed": keep.height - kept_total,
            "exact_copies_removed": summary["exact_copies_removed"],
            "kept_fraction": kept_total / max(keep.height, 1),
            "similarity_space": str(settings.similarity_space),
            "keep_policy": str(settings.keep_policy),
            "clean_copy_stale": stale,
            "per_class": dg.MetadataValue.md(_per_class_markdown(per_class, budget)),
            "path": dg.MetadataValue.path(str(layout.keep_list(threshold))),
        }
        picture = _pairs_picture(layout, threshold, keep, catalog, str(settings.keep_policy))
        if picture is not None:
            write_bytes(picture, layout.duplicate_pairs_image(threshold))
            metadata["duplicate_pairs"] = image_metadata(picture, "removed pairs to review")
        elif layout.duplicate_pairs_image(threshold).exists():
            layout.duplicate_pairs_image(threshold).unlink()
        context.log.info(f"T={threshold}: kept {kept_total:,} of {keep.height:,} images")
        integrity = dg.AssetCheckResult(
            check_name=INTEGRITY,
            passed=not problems,
            metadata={
                "images": keep.height,
                "kept": kept_total,
                "problems": "; ".join(problems) or "none",
            },
        )
        return dg.MaterializeResult(metadata=metadata, check_results=[integrity])

    return keep_list
