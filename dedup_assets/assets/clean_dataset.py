"""Asset: a cleaned copy of the dataset per threshold, ready to train on."""

import json
import os
import shutil
import time

import dagster as dg
import polars as pl

from dedup_assets.core.artifacts import (
    CurrentInputs,
    digest,
    read_catalog,
    read_keep_list,
)
from dedup_assets.core.atomic_io import atomic_dir
from resources import DedupSettings, DedupStorage, ImageSource

_COPIERS = {
    "copy": shutil.copy2,
    "hardlink": os.link,
    "symlink": os.symlink,
}


def build_clean_dataset_asset(
    thresholds_def: dg.StaticPartitionsDefinition,
    keep_list: dg.AssetsDefinition,
    kurtosis_report: dg.AssetsDefinition,
) -> dg.AssetsDefinition:
    """clean_dataset for the configured thresholds; blocked by the gates of its inputs."""

    @dg.asset(
        group_name="deduplication",
        kinds={"python"},
        partitions_def=thresholds_def,
        deps=[keep_list, kurtosis_report],
        description="The kept images copied into clean/&lt;T&gt;/&lt;class&gt;/..., same layout "
        "as the source (which is never modified). Blocked when a gate on the keep list or the "
        "kurtosis report fails; an older copy is then marked STALE.txt.",
    )
    def clean_dataset(
        context: dg.AssetExecutionContext,
        image_source: ImageSource,
        storage: DedupStorage,
        settings: DedupSettings,
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        threshold = context.partition_key
        current = CurrentInputs.of(layout, settings)
        current.require_keep_list(layout, threshold)
        provenance = current.keep_list(threshold)
        root = os.fsencode(image_source.resolve_root())
        kept = read_keep_list(layout.keep_list(threshold)).filter(pl.col("kept"))
        raw = kept.join(read_catalog(layout).select("image_id", "raw_path"), on="image_id")
        copy = _COPIERS[str(settings.clean_copy_mode)]
        start = time.perf_counter()
        with atomic_dir(layout.clean_dir(threshold)) as tmp:
            dest_root = os.fsencode(tmp)
            made: set[bytes] = set()
            for rel in raw["raw_path"]:
                dest = os.path.join(dest_root, rel)
                parent = os.path.dirname(dest)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                copy(os.path.join(root, rel), dest)
                if settings.clean_copy_mode == "copy":
                    os.chmod(dest, 0o644)
            (tmp / layout.clean_manifest(threshold).name).write_text(
                json.dumps(
                    {
                        "keep_list": digest(provenance),
                        "threshold": threshold,
                        "images": raw.height,
                        "run_id": context.run.run_id,
                    },
                    indent=2,
                )
            )
        seconds = time.perf_counter() - start
        context.log.info(f"T={threshold}: {raw.height:,} images -> {layout.clean_dir(threshold)}")
        return dg.MaterializeResult(
            metadata={
                "images": raw.height,
                "classes": raw["class"].n_unique(),
                "mode": str(settings.clean_copy_mode),
                "seconds": round(seconds, 2),
                "path": dg.MetadataValue.path(str(layout.clean_dir(threshold))),
            }
        )

    return clean_dataset
