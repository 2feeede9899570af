"""Asset checks: the data-quality gates. Blocking ones stop downstream assets on ERROR.

The checks are partitioned like their assets, so the UI shows a verdict per class or per
threshold. Partitioned checks are a preview feature of Dagster 1.13 (hence the pin to
<1.14 in pyproject.toml); its warning is silenced here, once.
"""

import warnings

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.keep_lists import keep_list
from dedup_assets.assets.latents import class_latents
from dedup_assets.core.artifacts import (
    catalog_class_keys,
    catalog_images,
    read_catalog,
    read_keep_list,
    read_latents,
    read_scores,
)
from dedup_assets.core.integrity import keep_list_problems, latent_problems
from dedup_assets.core.kurtosis_report import (
    gate_arrays,
    kurtosis_by_class,
    random_removal_baseline,
)
from dedup_assets.core.statistics import kurtosis_gate
from dedup_assets.partitions import class_partitions, threshold_partitions
from dedup_assets.ui import md_table
from resources import DedupSettings, DedupStorage

warnings.filterwarnings(
    "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning
)


@dg.asset_check(
    asset=class_latents,
    blocking=True,
    partitions_def=class_partitions,
    description="Latents are finite (no NaN/inf) and there is one row per catalogued image.",
)
def latents_valid(
    context: dg.AssetCheckExecutionContext, storage: DedupStorage
) -> dg.AssetCheckResult:
    layout = storage.layout()
    key = context.partition_key
    table, latents = read_latents(layout.latents(key))
    expected = catalog_images(read_catalog(layout), key)["image_id"].to_list()
    problems = latent_problems(table["image_id"].to_list(), latents, expected)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "rows": len(table),
            "catalogued": len(expected),
            "problems": "; ".join(problems) or "none",
        },
    )


@dg.asset_check(
    asset=keep_list,
    blocking=True,
    partitions_def=threshold_partitions,
    description="No class emptied; every removed image points to a kept image of the same "
    "class with similarity > T; counts add up to the catalog.",
)
def keep_list_integrity(
    context: dg.AssetCheckExecutionContext, storage: DedupStorage
) -> dg.AssetCheckResult:
    layout = storage.layout()
    threshold = context.partition_key
    keep = read_keep_list(layout.keep_list(threshold))
    catalog = catalog_images(read_catalog(layout))
    problems = keep_list_problems(keep, catalog, float(threshold))
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "images": keep.height,
            "kept": int(keep["kept"].sum()),
            "problems": "; ".join(problems) or "none",
        },
    )


@dg.asset_check(
    asset=keep_list,
    blocking=True,
    partitions_def=threshold_partitions,
    description="Removal must not make the classes' distributions more peaked: the Theil-Sen "
    "line of kurtosis-after on kurtosis-before, at the median before-kurtosis, may not lie "
    "above that median by more than the tolerance (ERROR); WARN when merely not reduced.",
)
def kurtosis_reduction(
    context: dg.AssetCheckExecutionContext, storage: DedupStorage, settings: DedupSettings
) -> dg.AssetCheckResult:
    layout = storage.layout()
    threshold = context.partition_key
    keep = read_keep_list(layout.keep_list(threshold))
    class_keys = catalog_class_keys(layout)
    scores = read_scores(layout, class_keys)
    table = kurtosis_by_class(scores, keep)
    gate = kurtosis_gate(*gate_arrays(table), tolerance=settings.kurtosis_tolerance)
    chance = random_removal_baseline(scores, keep)
    return kurtosis_check_result(gate, table, settings.kurtosis_tolerance, chance)


def kurtosis_check_result(
    gate, table: pl.DataFrame, tolerance: float, chance: np.ndarray
) -> dg.AssetCheckResult:
    """The check result of a kurtosis gate outcome, with slopes, per-class changes and the
    excess that removing the same numbers of images at random reaches (95%), for context."""
    metadata: dict = {"tolerance": tolerance, "outcome": "; ".join(gate.reasons)}
    for r in gate.regressions:
        metadata[f"pc{r.component}_slope"] = r.slope
        metadata[f"pc{r.component}_intercept"] = r.intercept
        metadata[f"pc{r.component}_excess_at_median"] = r.excess_at_median
        metadata[f"pc{r.component}_classes_reduced"] = r.fraction_reduced
        metadata[f"pc{r.component}_random_removal_excess_95"] = float(chance[r.component - 1])
    metadata["per_class"] = dg.MetadataValue.md(
        md_table(
            ["class", "kept / images", "PC1 change", "PC2 change", "PC3 change"],
            [
                (
                    row["class"],
                    f"{row['n_after']} / {row['n_before']}",
                    *(row[f"k{c}_after"] - row[f"k{c}_before"] for c in (1, 2, 3)),
                )
                for row in table.iter_rows(named=True)
            ],
        )
    )
    severity = (
        dg.AssetCheckSeverity.ERROR if gate.severity == "error" else dg.AssetCheckSeverity.WARN
    )
    return dg.AssetCheckResult(passed=gate.passed, severity=severity, metadata=metadata)
