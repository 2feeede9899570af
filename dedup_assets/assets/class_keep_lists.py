"""Asset: every class's keep decisions at every threshold (`core.decision.class_keep_lists`)."""

from collections.abc import Sequence

import dagster as dg

from dedup_assets.assets.reference_pool import reference_pool
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.core.data.artifacts import CurrentInputs, write_table
from dedup_assets.core.decision.class_keep_lists import class_keep_lists as decide_class
from dedup_assets.names import FULL_TAG, WORKER_METADATA, worker_name
from dedup_assets.partitions import class_partitions
from dedup_assets.ui import md_table
from resources import ComputeDevice, DedupSettings, DedupStorage


def build_class_keep_lists_asset(thresholds: Sequence[str]) -> dg.AssetsDefinition:
    """class_keep_lists: per class, the keep list at every configured threshold."""
    thresholds = list(thresholds)

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
        tables = decide_class(
            layout,
            key,
            thresholds,
            settings,
            current,
            run_id=context.run.run_id,
            stable=context.run.tags.get(FULL_TAG) != "1",
            log=context.log.info,
            device=compute.torch_device(),
            amp_dtype=compute.amp_dtype(),
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

    return class_keep_lists
