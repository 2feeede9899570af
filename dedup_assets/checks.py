"""Asset checks on the class stage. The threshold gates are carried by their assets,
each computed once and stored for the clean copy (`core.data.artifacts.ThresholdVerdict`):
`keep_list_integrity` by `keep_list` (`assets/keep_list.py`), the kurtosis gate by
`kurtosis_report` (in the report).

The checks are partitioned like their assets, so the UI shows a verdict per class or per
threshold (a preview feature of Dagster 1.13, see `partitions`).
"""

import dagster as dg

from dedup_assets.assets.latents import class_latents
from dedup_assets.core.data.artifacts import catalog_images, read_class_images, read_latents
from dedup_assets.core.decision.integrity import latent_problems
from dedup_assets.partitions import class_partitions
from resources import DedupStorage


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
    expected = catalog_images(read_class_images(layout, key))["image_id"].to_list()
    problems = latent_problems(table["image_id"].to_list(), latents, expected)
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "rows": len(table),
            "catalogued": len(expected),
            "problems": "; ".join(problems) or "none",
        },
    )
