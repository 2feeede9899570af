"""Asset: ground-truth evaluation of every similarity space against the pHash and PDQ
baselines."""

import shutil
import time

import dagster as dg
import polars as pl

from dedup_assets.assets.catalog import image_catalog
from dedup_assets.assets.latents import class_latents
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.core.data.artifacts import is_current, read_keep_list
from dedup_assets.core.data.atomic_io import atomic_dir
from dedup_assets.core.quality import plots
from dedup_assets.core.quality.evaluation import evaluate_against_ground_truth, score_keep_lists
from dedup_assets.core.quality.planting import read_ground_truth
from dedup_assets.core.quality.summary_inputs import record_summary_inputs
from dedup_assets.ui import image_metadata, md_table
from resources import DedupSettings, DedupStorage, ImageSource


def build_evaluation_asset(
    thresholds_def: dg.StaticPartitionsDefinition,
) -> dg.AssetsDefinition:
    """dedup_evaluation, scored at the configured thresholds."""
    thresholds = list(thresholds_def.get_partition_keys())

    @dg.asset(
        group_name="evaluation",
        kinds={"numpy", "svg"},
        deps=[
            image_catalog,
            dg.AssetDep(class_latents, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(spline_fits, partition_mapping=dg.AllPartitionMapping()),
            # the keep lists as decided, overrides applied, are scored too
            dg.AssetDep("keep_list", partition_mapping=dg.AllPartitionMapping()),
        ],
        description="With a ground-truth CSV (class,original,copy): average precision over all "
        "within-class pairs, and per threshold recall (overall and per planted transform), "
        "precision, images removed and the false-removal rate among unplanted images, for the "
        "raw, whitened, spline_copula and spline_copula_dct spaces, the DCT descriptor and "
        "the weight-free baselines pHash (64 bits) and PDQ (256 bits), each deciding on its "
        "own (`evaluation.csv`); the keep lists as finally decided, overrides applied "
        "(`keep_lists.csv`: images removed, false removals, known pairs left with one image); "
        "precision-recall and recall-per-transform plots.",
    )
    def dedup_evaluation(
        context: dg.AssetExecutionContext,
        image_source: ImageSource,
        storage: DedupStorage,
        settings: DedupSettings,
    ) -> dg.MaterializeResult:
        return _evaluate(context, image_source, storage, settings, thresholds)

    return dedup_evaluation


def _evaluate(
    context: dg.AssetExecutionContext,
    image_source: ImageSource,
    storage: DedupStorage,
    settings: DedupSettings,
    thresholds: list[str],
) -> dg.MaterializeResult:
    layout = storage.layout()
    gt = image_source.ground_truth_path()
    current = storage.current_inputs(settings)  # with the overrides the keep lists honour
    made_from = storage.summary_inputs(current, thresholds, gt)
    if gt is None:
        context.log.info("no ground truth configured or found: nothing to evaluate")
        if layout.evaluation_dir.exists():  # scores of a ground truth no longer given
            with atomic_dir(layout.evaluation_dir):
                pass  # swapped whole for an empty folder, then that removed: never half of it
            shutil.rmtree(layout.evaluation_dir, ignore_errors=True)
            context.log.info("the evaluation against an earlier ground truth was removed")
        record_summary_inputs(layout, "dedup_evaluation", made_from)
        return dg.MaterializeResult(
            metadata={
                "status": "no ground truth: set ImageSource.ground_truth or add ground_truth.csv"
            }
        )
    start = time.perf_counter()
    results, info = evaluate_against_ground_truth(
        layout,
        gt,
        thresholds,
        keep_policy=settings.keep_policy,
        budget_scaling=settings.budget_scaling,
        block=settings.block_size,
        current=current,
        log=context.log.info,
    )
    # The keep lists as decided (overrides applied); a threshold whose keep list is not
    # current (its run failed) is left out rather than scored from an older one.
    decided = [t for t in thresholds if is_current(layout.keep_list(t), current.keep_list(t))]
    as_decided = score_keep_lists(
        {t: read_keep_list(layout.keep_list(t)) for t in decided}, read_ground_truth(gt)
    )
    if len(decided) < len(thresholds):
        context.log.info(
            "keep lists not current, not scored as decided: T="
            + ", ".join(t for t in thresholds if t not in decided)
        )
    seconds = time.perf_counter() - start
    rows = [
        {
            "method": r.name,
            "average_precision": r.average_precision,
            "average_precision_local": r.average_precision_local,
        }
        | p
        for r in results
        for p in r.per_threshold
    ]
    table = pl.DataFrame(rows)
    curves = {r.name: (r.recall_curve, r.precision_curve, r.average_precision) for r in results}
    for r in results:  # margins over local levels, where budgets are scaled locally
        if len(r.recall_curve_local):
            curves[f"{r.name} (local)"] = (
                r.recall_curve_local,
                r.precision_curve_local,
                r.average_precision_local,
            )
    figure = plots.precision_recall(curves)
    counts = results[0].transforms if results else {}
    per_transform_figures = {
        t: plots.recall_per_transform(
            {
                r["method"]: {n: r[f"recall_{n}"] for n in counts}
                for r in rows
                if r["threshold"] == t
            },
            t,
            counts,
        )
        for t in thresholds
        if counts
    }
    with atomic_dir(layout.evaluation_dir) as tmp:
        table.write_csv(tmp / "evaluation.csv")
        as_decided.write_csv(tmp / "keep_lists.csv")
        (tmp / "precision_recall.svg").write_bytes(figure)
        for t, svg in per_transform_figures.items():
            (tmp / f"recall_per_transform_{t}.svg").write_bytes(svg)
    record_summary_inputs(layout, "dedup_evaluation", made_from)
    ap_table = md_table(
        ["method", "average precision (cosine)", "average precision (margin, local levels)"],
        [(r.name, r.average_precision, r.average_precision_local) for r in results],
    )
    threshold_table = md_table(
        [
            "method",
            "T",
            "recall",
            "precision",
            "pairs flagged",
            "images removed",
            "false removals (unplanted)",
        ]
        + [f"recall {n}" for n in counts],
        [
            (
                r["method"],
                r["threshold"],
                r["recall"],
                r["precision"],
                r["pairs_flagged"],
                r["images_removed"],
                r["false_removal_rate"],
                *(r[f"recall_{n}"] for n in counts),
            )
            for r in rows
        ],
    )
    context.log.info(
        "average precision (cosine / margin): "
        + ", ".join(
            f"{r.name} {r.average_precision:.3f} / {r.average_precision_local:.3f}" for r in results
        )
    )
    return dg.MaterializeResult(
        metadata={
            "ground_truth": dg.MetadataValue.path(str(gt)),
            **info,
            "seconds": round(seconds, 2),
            "average_precision": dg.MetadataValue.md(ap_table),
            "per_threshold": dg.MetadataValue.md(threshold_table),
            "keep_lists_as_decided": dg.MetadataValue.md(_as_decided_table(as_decided)),
            "precision_recall": image_metadata(figure, "precision-recall"),
            **{
                f"recall_per_transform_{t}": image_metadata(svg, f"recall per transform, T={t}")
                for t, svg in per_transform_figures.items()
            },
            **{f"ap_{r.name}": r.average_precision for r in results},
            **{
                f"ap_local_{r.name}": r.average_precision_local
                for r in results
                if r.average_precision_local == r.average_precision_local  # not NaN
            },
            "path": dg.MetadataValue.path(str(layout.evaluation_dir / "evaluation.csv")),
        }
    )


def _as_decided_table(scores: pl.DataFrame) -> str:
    """The keep lists as decided, overrides applied, against the ground truth."""
    columns = [
        ("threshold", "T"),
        ("images_removed", "images removed"),
        ("removed_in_ground_truth", "of them in a known group"),
        ("false_removal_rate", "false removals (unplanted)"),
        ("recall", "known pairs left with one image"),
        ("decided_by_override", "rows decided by overrides"),
    ]
    present = [(c, h) for c, h in columns if c in scores.columns]
    return md_table([h for _, h in present], scores.select([c for c, _ in present]).rows())
