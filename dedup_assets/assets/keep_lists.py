"""Assets: every class's keep decisions at every threshold, and the keep list per threshold."""

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.catalog import image_catalog
from dedup_assets.assets.reference_pool import reference_pool
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.core.data.artifacts import (
    BUDGET_NULL,
    KEEP_LIST_COLUMNS,
    CurrentInputs,
    catalog_images,
    class_names,
    digest,
    gather_pixels,
    join_setting,
    read_catalog,
    read_class_keep_lists,
    read_keep_list,
    read_provenance,
    threshold_verdict,
    write_table,
)
from dedup_assets.core.data.atomic_io import write_bytes, write_csv, write_json, write_text
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.thresholds import budget_of, cosine_of
from dedup_assets.core.decision.calibration import (
    BudgetThreshold,
    NullSource,
    encode_mirrors,
    mirror_latents,
    removals_against_budget,
)
from dedup_assets.core.decision.class_decision import PriorDecision
from dedup_assets.core.decision.class_keep import decide_thresholds, load_class_data
from dedup_assets.core.decision.integrity import keep_list_problems
from dedup_assets.core.decision.reference_pool import read_reference_pool
from dedup_assets.core.model.autoencoder import load_state
from dedup_assets.core.quality import plots
from dedup_assets.names import FULL_TAG, WORKER_METADATA, worker_name
from dedup_assets.partitions import class_partitions
from dedup_assets.ui import image_metadata, md_table
from resources import ComputeDevice, DedupSettings, DedupStorage

PAIRS_SHOWN = 8
INTEGRITY = "keep_list_integrity"


def prior_decisions(
    layout: OutputLayout,
    key: str,
    thresholds: Sequence[str],
    settings: DedupSettings,
    image_ids: np.ndarray,
) -> tuple[list[PriorDecision | None], dict[str, pl.DataFrame]]:
    """The class's earlier decisions at each threshold, mapped onto the current images.

    Only a keep list made with the same space, keep policy, threshold, join settings and (for
    a budget) budget scaling and rule counts; each earlier table is returned too, for the
    decision times and cosines it carries.
    """
    priors: list[PriorDecision | None] = []
    tables: dict[str, pl.DataFrame] = {}
    positions = pl.DataFrame(
        {"image_id": image_ids.tolist(), "at": np.arange(len(image_ids))},
        schema={"image_id": pl.String, "at": pl.Int64},
    )
    for t in thresholds:
        path = layout.class_keep_list(t, key)
        made = read_provenance(path) if path.exists() else None
        scaling = str(settings.budget_scaling) if budget_of(t) is not None else None
        same = made is not None and (
            made.get("space"),
            made.get("policy"),
            made.get("threshold"),
            made.get("scaling"),
            made.get("null"),
            made.get("join"),
        ) == (
            str(settings.similarity_space),
            str(settings.keep_policy),
            t,
            scaling,
            BUDGET_NULL if scaling is not None else None,
            join_setting(settings),
        )
        if not same:
            priors.append(None)
            continue
        old = read_keep_list(path)
        tables[t] = old
        prior = PriorDecision.none(len(image_ids))
        mapped = old.join(positions, on="image_id", how="inner").join(
            positions.rename({"image_id": "duplicate_of", "at": "named"}),
            on="duplicate_of",
            how="left",
        )
        at = mapped["at"].to_numpy()
        prior.state[at] = np.where(mapped["kept"].to_numpy(), 1, 0)
        prior.duplicate_of[at] = mapped["named"].fill_null(-1).to_numpy()
        prior.similarity[at] = mapped["similarity"].fill_null(np.nan).to_numpy()
        prior.exact[at] = (mapped["match"] == "exact").fill_null(False).to_numpy()
        prior.cosine[at] = mapped["cosine"].fill_null(np.nan).to_numpy()
        priors.append(prior)
    return priors, tables


def decide_class_keep_lists(
    layout: OutputLayout,
    key: str,
    thresholds: Sequence[str],
    settings: DedupSettings,
    current: CurrentInputs,
    *,
    run_id: str,
    stable: bool = True,
    log: Callable[[str], None] | None = None,
    compute: ComputeDevice | None = None,
) -> dict[str, pl.DataFrame]:
    """One class's keep list at every threshold, from its current latents and fit.

    With `stable` (the default), earlier decisions are kept and only new images are decided
    (see `class_decision.keep_decisions`); each row says when and in which run it was made.
    """
    budgets = [budget_of(t) for t in thresholds]
    table, data = load_class_data(
        layout,
        key,
        current,
        space=settings.similarity_space,
        with_pixels=any(b is not None for b in budgets),
    )
    model = pool = rows = mirrors = None
    if any(b is not None for b in budgets):
        # The mirrors' latents are stored for the cross-class calibration; they are encoded
        # on `compute`'s device and precision, those of the latents (CPU fp32 without).
        model = load_state(layout.model)
        pool = read_reference_pool(layout, current)
        rows, mirrors = mirror_latents(
            layout,
            key,
            current.latents(key),
            len(data.image_ids),
            lambda rows: encode_mirrors(
                model,
                data.pixels,
                rows,
                device=compute.torch_device() if compute else "cpu",
                amp_dtype=compute.amp_dtype() if compute else None,
            ),
        )
    priors, earlier = (
        prior_decisions(layout, key, thresholds, settings, data.image_ids)
        if stable
        else ([None] * len(thresholds), {})
    )
    start = time.perf_counter()
    decided = decide_thresholds(
        data,
        thresholds,
        space=settings.similarity_space,
        policy=settings.keep_policy,
        model=model,
        pool=pool,
        class_key=key,
        scaling=settings.budget_scaling,
        block=settings.block_size,
        join=settings.join,
        ann_min_class_size=settings.ann_min_class_size,
        nprobe=settings.ann_nprobe,
        prior=priors,
        decoy_latents=mirrors,
        decoy_rows=rows,
    )
    resolved = [d.resolved for d in decided]
    decisions = [d.decision for d in decided]
    seconds = time.perf_counter() - start
    name = class_names(layout)[key]
    ids = data.image_ids
    now = datetime.now(UTC).isoformat(timespec="seconds")
    out = {}
    for t, d, r in zip(thresholds, decisions, resolved, strict=True):
        dup = np.where(d.duplicate_of >= 0, ids[np.maximum(d.duplicate_of, 0)], None)
        match = np.where(d.kept, None, np.where(d.exact, "exact", "near"))
        carried = d.carried if d.carried is not None else np.zeros(len(ids), bool)
        made = pl.DataFrame({"image_id": ids.tolist(), "carried": carried.tolist()})
        if t in earlier:
            before = earlier[t]
            if "join" not in before.columns:  # written before the join was recorded
                before = before.with_columns(pl.lit("exact").alias("join"))
            made = made.join(
                before.select("image_id", "decided_at", "decided_in", "join"),
                on="image_id",
                how="left",
                maintain_order="left",
            )
        else:
            made = made.with_columns(
                pl.lit(None, pl.String).alias("decided_at"),
                pl.lit(None, pl.String).alias("decided_in"),
                pl.lit(None, pl.String).alias("join"),
            )
        made = made.with_columns(
            pl.when(pl.col("carried") & pl.col("decided_at").is_not_null())
            .then(pl.col("decided_at"))
            .otherwise(pl.lit(now))
            .alias("decided_at"),
            pl.when(pl.col("carried") & pl.col("decided_in").is_not_null())
            .then(pl.col("decided_in"))
            .otherwise(pl.lit(run_id))
            .alias("decided_in"),
            # Which join made each decision: this run's for those made now.
            pl.when(pl.col("carried") & pl.col("join").is_not_null())
            .then(pl.col("join"))
            .otherwise(pl.lit(d.join))
            .alias("join"),
        )
        out[t] = pl.DataFrame(
            {
                "image_id": pl.Series(ids.tolist(), dtype=pl.String),
                "class": pl.Series([name] * len(ids), dtype=pl.String),
                "path": table["path"],
                "kept": pl.Series(d.kept.tolist(), dtype=pl.Boolean),
                "duplicate_of": pl.Series(dup.tolist(), dtype=pl.String),
                "similarity": pl.Series(d.similarity.astype(np.float64)).fill_nan(None),
                "match": pl.Series(match.tolist(), dtype=pl.String),
                "space": pl.repeat(d.space, len(ids), dtype=pl.String, eager=True),
                "join": made["join"],
                "cosine": pl.Series(d.cosines(), dtype=pl.Float64),
                "calibrated_on": pl.repeat(
                    None if r is None else r.null, len(ids), dtype=pl.String, eager=True
                ),
                "decided_at": made["decided_at"],
                "decided_in": made["decided_in"],
            }
        ).select(KEEP_LIST_COLUMNS)
        if log is not None:
            carried = int(d.carried.sum()) if d.carried is not None else 0
            at = t if r is None else f"{t} ({_resolution_words(r)} {d.threshold:.4f})"
            log(
                f"{key} @ T={at}: kept {d.n_kept:,} of {len(ids):,} in space {d.space} "
                f"({int(d.exact.sum())} exact copies removed; {carried:,} earlier decisions "
                f"kept, {len(ids) - carried:,} decided now)"
            )
    if log is not None:
        log(f"{key}: {len(thresholds)} thresholds decided in {seconds:.2f}s")
    return out


def _per_class_markdown(per_class: pl.DataFrame, budget: float | None) -> str:
    """The keep list's per-class table for the UI; with a budget, the removals it allows to
    be false beside the near-duplicates removed, and where its null was read."""
    columns = ["class", "images", "kept", "exact_copies", "near_duplicates", "space"]
    headers = ["class", "images", "kept", "exact copies", "near-duplicates", "space"]
    if budget is not None:
        columns += ["allowed_false", "chance_bound_99", "beyond_chance", "calibrated_on"]
        headers += [f"allowed false ({budget:.2%} x images)", "chance 99%", "beyond chance", "null"]
    rows = [
        tuple(f"{v:.1f}" if isinstance(v, float) else v for v in row)
        for row in per_class.select(columns).rows()
    ]
    return md_table(headers, rows)


def _resolution_words(r: BudgetThreshold) -> str:
    """How a budget was read for a class, for the log."""
    if r.null == NullSource.NONE:
        return f"not calibrated: {r.draws} null values cannot show the top {r.budget:.2%}; cosine"
    where = "the class's mirrors" if r.null == NullSource.CLASS else "the run's reference pool"
    kind = "margin over the local levels" if r.offsets is not None else f"cosine in {r.space}"
    return f"{r.draws:,} null values from {where}; {kind}"


POLICY_NOTE = {
    "density": "which image stays: the keep policy 'density' visits the lowest spline "
    "log-density first, so the rarer-looking image of a pair is kept",
    "first": "which image stays: the keep policy 'first' visits images by id (a content "
    "hash), so the kept one is not chosen by name or by which file is the copy",
}


def _pairs_picture(
    layout: OutputLayout, keep: pl.DataFrame, catalog: pl.DataFrame, policy: str
) -> bytes | None:
    """The least and the most similar removed pairs: what a reviewer should look at."""
    removed = keep.filter(~pl.col("kept")).sort("similarity")
    if removed.height == 0:
        return None
    half = PAIRS_SHOWN // 2
    picked = pl.concat([removed.head(half), removed.tail(half)]).unique(
        "image_id", maintain_order=True
    )
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
    )


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


def build_keep_list_assets(
    thresholds_def: dg.StaticPartitionsDefinition,
) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition]:
    """class_keep_lists (per class, every threshold) and keep_list (per threshold, which
    carries its blocking integrity check), for the configured thresholds."""
    thresholds = thresholds_def.get_partition_keys()

    @dg.asset(
        group_name="deduplication",
        kinds={"numpy", "parquet"},
        partitions_def=class_partitions,
        deps=[spline_fits, reference_pool],
        automation_condition=dg.AutomationCondition.eager(),
        description="Per class, at every threshold T: pixel-identical copies removed first "
        "(similarity 1.0), then an image is removed when it is more similar than T to an "
        "image already kept (cosine in the configured space, blocked join).",
    )
    def class_keep_lists(
        context: dg.AssetExecutionContext,
        storage: DedupStorage,
        settings: DedupSettings,
        compute: ComputeDevice,
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        key = context.partition_key
        current = CurrentInputs.of(layout, settings)
        if key not in current.class_digests:
            context.log.info(f"{key}: no readable image, nothing to decide")
            return dg.MaterializeResult(metadata={"images": 0, "note": "no readable image"})
        tables = decide_class_keep_lists(
            layout,
            key,
            thresholds,
            settings,
            current,
            run_id=context.run.run_id,
            stable=context.run.tags.get(FULL_TAG) != "1",
            log=context.log.info,
            compute=compute,
        )
        for t, keep in tables.items():
            write_table(keep, layout.class_keep_list(t, key), current.keep(key, t))
        first = next(iter(tables.values()))
        decided_now = {
            t: int((k["decided_in"] == context.run.run_id).sum()) for t, k in tables.items()
        }
        return dg.MaterializeResult(
            metadata={
                "images": first.height,
                WORKER_METADATA: worker_name(),
                "decided_now": dg.MetadataValue.json(decided_now),
                "similarity_space": str(settings.similarity_space),
                "space_used": first["space"][0] if first.height else str(settings.similarity_space),
                "keep_policy": str(settings.keep_policy),
                "kept_per_threshold": dg.MetadataValue.md(
                    md_table(
                        ["T", "kept", "removed", "exact copies"],
                        [
                            (
                                t,
                                int(k["kept"].sum()),
                                int((~k["kept"]).sum()),
                                int((k["match"] == "exact").sum()),
                            )
                            for t, k in tables.items()
                        ],
                    )
                ),
            }
        )

    @dg.asset(
        group_name="deduplication",
        kinds={"parquet", "csv"},
        partitions_def=thresholds_def,
        deps=[
            image_catalog,
            dg.AssetDep(class_keep_lists, partition_mapping=dg.AllPartitionMapping()),
        ],
        automation_condition=dg.AutomationCondition.eager(),
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
        "(`keep_lists/<T>.parquet`): image_id, class, path, kept, duplicate_of, "
        "similarity, match (exact or near).",
    )
    def keep_list(
        context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        threshold = context.partition_key
        current = CurrentInputs.of(layout, settings)
        class_keys = sorted(current.class_digests)
        current.require_every_class(
            lambda k: layout.class_keep_list(threshold, k),
            lambda k: current.keep(k, threshold),
            f"keep decisions at T={threshold}",
            "class_keep_lists",
        )
        keep = read_class_keep_lists(layout, threshold, class_keys).sort("class", "path")
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
        picture = _pairs_picture(layout, keep, catalog, str(settings.keep_policy))
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

    return class_keep_lists, keep_list
