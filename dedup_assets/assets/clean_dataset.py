"""Asset: a cleaned copy of the dataset per threshold, ready to train on."""

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import polars as pl

from dedup_assets.core.artifacts import (
    CurrentInputs,
    catalog_images,
    digest,
    read_catalog,
    read_keep_list,
)
from dedup_assets.core.atomic_io import atomic_dir
from dedup_assets.core.integrity import keep_list_problems
from dedup_assets.core.layout import OutputLayout
from dedup_assets.core.thresholds import cosine_of
from resources import DedupSettings, DedupStorage, ImageSource

_COPIERS = {
    "copy": shutil.copy2,
    "hardlink": os.link,
    "symlink": os.symlink,
}
FILES_NAME = ".latent-dedup-clean.parquet"
COPY_THREADS = 8


class GateBlocked(RuntimeError):
    """A data-quality gate of this threshold failed: no clean copy is made."""


def gate_verdict(layout: OutputLayout, threshold: str, keep_digest: str) -> None:
    """Refuse when this keep list's gates failed, whichever run evaluated them.

    Blocking checks stop downstream assets in the same run only; automation may run the
    clean copy in a run of its own, so the verdicts are read from what the report stored.
    """
    path = layout.report_summary(threshold)
    if not path.exists():
        raise GateBlocked(f"no kurtosis report for T={threshold}: materialize kurtosis_report")
    summary = json.loads(path.read_text())
    if summary.get("keep_list") != keep_digest:
        raise GateBlocked(
            f"the kurtosis report for T={threshold} is older than its keep list: "
            "materialize kurtosis_report first"
        )
    if summary["gate"]["severity"] == "error":
        raise GateBlocked(
            f"the kurtosis gate failed for T={threshold}: " + "; ".join(summary["gate"]["reasons"])
        )


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
        automation_condition=dg.AutomationCondition.eager()
        & dg.AutomationCondition.all_deps_blocking_checks_passed(),
        description="The kept images copied into `clean/<T>/<class>/...`, same layout as the "
        "source (which is never modified). Blocked when a gate on the keep list or the "
        "kurtosis report fails; an older copy is then marked `STALE.txt`. Files unchanged "
        "since the last copy are hard-linked from it, not copied again.",
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
        keep_digest = digest(current.keep_list(threshold))
        gate_verdict(layout, threshold, keep_digest)
        keep = read_keep_list(layout.keep_list(threshold))
        catalog = catalog_images(read_catalog(layout))
        problems = keep_list_problems(keep, catalog, cosine_of(threshold))
        if problems:
            raise GateBlocked(f"the keep list T={threshold} fails its integrity check: {problems}")
        kept = keep.filter(pl.col("kept")).join(
            catalog.select("image_id", "raw_path", "content_hash"), on="image_id"
        )
        mode = str(settings.clean_copy_mode)
        copy = _COPIERS[mode]
        root = os.fsencode(image_source.resolve_root())
        old_dir = layout.clean_dir(threshold)
        previous: dict[bytes, str] = {}
        old_files = old_dir / FILES_NAME
        if mode == "copy" and old_files.exists():
            old = pl.read_parquet(old_files)
            previous = dict(
                zip(old["raw_path"].to_list(), old["content_hash"].to_list(), strict=True)
            )
        start = time.perf_counter()
        with atomic_dir(old_dir) as tmp:
            dest_root, old_root = os.fsencode(tmp), os.fsencode(old_dir)
            rows = kept.select("raw_path", "content_hash").rows()
            for parent in {os.path.dirname(os.path.join(dest_root, rel)) for rel, _ in rows}:
                os.makedirs(parent, exist_ok=True)

            def place(row: tuple[bytes, str]) -> bool:
                rel, content = row
                dest = os.path.join(dest_root, rel)
                if previous.get(rel) == content:
                    os.link(os.path.join(old_root, rel), dest)  # unchanged: no bytes copied
                    return True
                copy(os.path.join(root, rel), dest)
                if mode == "copy":
                    os.chmod(dest, 0o644)
                return False

            # File copies wait on the disk, not the CPU: a few threads keep it busy.
            with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:
                linked = sum(pool.map(place, rows, chunksize=256))
            kept.select("raw_path", "content_hash").write_parquet(tmp / FILES_NAME)
            (tmp / layout.clean_manifest(threshold).name).write_text(
                json.dumps(
                    {
                        "keep_list": keep_digest,
                        "threshold": threshold,
                        "images": kept.height,
                        "mode": mode,
                        "run_id": context.run.run_id,
                    },
                    indent=2,
                )
            )
        seconds = time.perf_counter() - start
        context.log.info(
            f"T={threshold}: {kept.height:,} images -> {layout.clean_dir(threshold)} "
            f"({linked:,} unchanged, linked from the previous copy)"
        )
        return dg.MaterializeResult(
            metadata={
                "images": kept.height,
                "unchanged_linked": linked,
                "classes": kept["class"].n_unique(),
                "mode": mode,
                "seconds": round(seconds, 2),
                "path": dg.MetadataValue.path(str(layout.clean_dir(threshold))),
            }
        )

    return clean_dataset
