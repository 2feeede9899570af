"""Asset: a cleaned copy of the dataset per threshold, ready to train on."""

import os
import shutil
import time

import dagster as dg
import polars as pl

from dedup_assets.assets.keep_lists import keep_list
from dedup_assets.core.artifacts import read_keep_list
from dedup_assets.core.atomic_io import atomic_dir
from dedup_assets.partitions import threshold_partitions
from resources import DedupSettings, DedupStorage, ImageSource

_COPIERS = {
    "copy": shutil.copy2,
    "hardlink": os.link,
    "symlink": lambda src, dst: os.symlink(src, dst),
}


@dg.asset(
    group_name="deduplication",
    kinds={"python"},
    partitions_def=threshold_partitions,
    deps=[keep_list],
    description="The kept images copied into clean/<T>/<class>/..., same layout as the "
    "source (which is never modified). Blocked when a keep-list gate fails.",
)
def clean_dataset(
    context: dg.AssetExecutionContext,
    image_source: ImageSource,
    storage: DedupStorage,
    settings: DedupSettings,
) -> dg.MaterializeResult:
    settings.validate()
    layout = storage.layout()
    threshold = context.partition_key
    root = image_source.resolve_root()
    kept = read_keep_list(layout.keep_list(threshold)).filter(pl.col("kept"))
    copy = _COPIERS[settings.clean_copy_mode]
    start = time.perf_counter()
    with atomic_dir(layout.clean_dir(threshold)) as tmp:
        for class_dir in {p.split("/", 1)[0] for p in kept["path"]}:
            (tmp / class_dir).mkdir(parents=True, exist_ok=True)
        for rel in kept["path"]:
            dest = tmp / rel
            if not dest.parent.exists():
                dest.parent.mkdir(parents=True)
            copy(root / rel, dest)
            if settings.clean_copy_mode == "copy":
                dest.chmod(0o644)
    seconds = time.perf_counter() - start
    context.log.info(f"T={threshold}: {kept.height:,} images -> {layout.clean_dir(threshold)}")
    return dg.MaterializeResult(
        metadata={
            "images": kept.height,
            "classes": kept["class"].n_unique(),
            "mode": settings.clean_copy_mode,
            "seconds": round(seconds, 2),
            "path": dg.MetadataValue.path(str(layout.clean_dir(threshold))),
        }
    )
