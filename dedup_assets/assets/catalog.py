"""Assets: the index of the source (class folders, listings, root entries) and each class's
catalog of decoded images (table, uint8 pixel store, quarantine list)."""

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from dagster._core.definitions.data_version import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
)

from dedup_assets.assets.class_batch import ClassOutcome, class_asset, materialize_classes
from dedup_assets.core.data import predecode
from dedup_assets.core.data.artifacts import (
    CLASS_SUMMARY_KEY,
    catalogued_keys,
    class_summary,
    digest,
    read_class_images,
    recorded_listings,
    written_catalog,
)
from dedup_assets.core.data.atomic_io import atomic_dir, write_csv, write_parquet
from dedup_assets.core.data.class_catalog import (
    assemble_quarantine,
    save_pixels,
    skipped_table,
    store_matches,
    store_pixel_hashes,
    store_stat,
    update_class_catalog,
    write_quarantine,
)
from dedup_assets.core.data.image_folder import DEFAULT_MAX_FILE_BYTES, FolderScan
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.source_index import (
    changed_classes,
    class_listings,
    index_table,
    rewritten_files,
)
from dedup_assets.core.data.splits import SplitLayout, scan_class
from dedup_assets.names import FULL_TAG
from dedup_assets.partitions import class_partitions
from dedup_assets.ui import md_table
from resources import DedupStorage, ImageSource


def refresh_quarantine(layout: OutputLayout) -> pl.DataFrame:
    """Rewrite catalog/quarantine.csv from the root entries and every class's list."""
    keys = catalogued_keys(layout)
    return assemble_quarantine(
        layout.quarantine,
        layout.root_skipped,
        [layout.class_quarantine(k) for k in keys],
        layout.catalog_dir / ".quarantine.lock",
    )


def remove_class_outputs(layout: OutputLayout, key: str) -> None:
    """Delete everything the pipeline derived from a class folder that no longer exists."""
    for path in (layout.class_dir(key), layout.latents(key)):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    layout.spline_fit(key).unlink(missing_ok=True)
    layout.mirror_latents(key).unlink(missing_ok=True)
    layout.new_image_errors(key).unlink(missing_ok=True)
    layout.class_dct(key).unlink(missing_ok=True)
    layout.spline_scores(key).unlink(missing_ok=True)
    by_class = layout.root / "keep_lists" / "by_class"
    if by_class.is_dir():
        for threshold_dir in by_class.iterdir():
            (threshold_dir / f"{key}.parquet").unlink(missing_ok=True)


@dg.asset(
    group_name="ingest",
    kinds={"python", "parquet"},
    description="The index of the source: every class folder of every split (partition key "
    "<split>.<class> for <source>/<split>/<class>/, <class> without split folders; split, "
    "name, file count, listing digest of paths, sizes and modification times) and every entry "
    "of the root that is not a class (or split) folder; registers the class partitions. Reads "
    "no file. `dedup run` indexes an output it has indexed before without a run and reports "
    "the materialization (`index_source`).",
)
def image_catalog(
    context: dg.AssetExecutionContext, image_source: ImageSource, storage: DedupStorage
) -> dg.MaterializeResult:
    metadata, version = index_source(
        image_source, storage.layout(), context.instance, context.log.info
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


def index_source(
    image_source: ImageSource,
    layout: OutputLayout,
    instance: dg.DagsterInstance,
    log: Callable[[str], None],
) -> tuple[dict, str]:
    """What `image_catalog` does, in whatever process calls it: the index written, the
    outputs of class folders gone removed, the class partitions registered; returns the
    asset's metadata and its data version (the digest of every class's listing)."""
    layout.claim()
    root = image_source.resolve_root()
    start = time.perf_counter()
    scan, listings = image_source.list_source()
    if not listings:
        raise ValueError(
            f"no class folder under {root}: expected <root>/<class>/<image> or "
            "<root>/<split>/<class>/<image> files"
        )
    for note in scan.notes:  # an empty split, a class in some splits only
        log(f"splits: {note}")
    changes = changed_classes(
        {k: v.digest for k, v in listings.items()},
        recorded_listings(layout, image_source.max_file_bytes),
    )
    write_parquet(index_table(listings), layout.index)
    root_scan = FolderScan([], [s for s in scan.skipped if s.class_name is None])
    write_csv(skipped_table(root_scan), layout.root_skipped)
    for key in changes.removed:
        log(f"class folder {key} is gone: removing what was derived from it")
        remove_class_outputs(layout, key)
    existing = set(instance.get_dynamic_partitions(class_partitions.name))
    new_keys = sorted(set(listings) - existing)
    if new_keys:
        instance.add_dynamic_partitions(class_partitions.name, new_keys)
    for stale in sorted(existing - set(listings)):
        instance.delete_dynamic_partition(class_partitions.name, stale)
    quarantine = refresh_quarantine(layout)
    seconds = time.perf_counter() - start
    log(
        f"indexed {len(scan.files):,} image files in {len(listings)} class folders in "
        f"{seconds:.2f}s: {changes.describe()}"
    )
    metadata = {
        "source": dg.MetadataValue.path(str(root)),
        "classes": len(listings),
        "splits": sorted({v.split for v in listings.values()}),
        "split_notes": "; ".join(scan.notes) or "none",
        "image_files": len(scan.files),
        "root_entries_skipped": len(root_scan.skipped),
        "changes": changes.describe(),
        "classes_to_update": list(changes.to_update),
        "scan_seconds": round(seconds, 3),
        "per_class": dg.MetadataValue.md(
            md_table(
                ["split", "class", "partition key", "files", "listing digest"],
                [(v.split, v.name, v.key, v.files, v.digest) for v in listings.values()],
            )
        ),
        "quarantine": dg.MetadataValue.md(
            md_table(["path", "class", "action", "reason"], quarantine.head(50).rows())
            if quarantine.height
            else "no file skipped"
        ),
        "listing_digests": dg.MetadataValue.json({k: v.digest for k, v in listings.items()}),
    }
    return metadata, digest({k: v.digest for k, v in listings.items()})


def index_materialization(metadata: dict, version: str) -> dg.AssetMaterialization:
    """`image_catalog`'s materialization as `dedup run` reports it without a run: the
    asset's own metadata and data version (a run records it as provided by the asset)."""
    return dg.AssetMaterialization(
        asset_key="image_catalog",
        metadata=metadata,
        tags={DATA_VERSION_TAG: version, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"},
    )


@class_asset(
    "class_images",
    group_name="ingest",
    kinds={"python", "numpy"},
    deps=[image_catalog],
    description="One class's images decoded once to 64x64 RGB: a table (id, path and its "
    "exact bytes, size, content and pixel hashes, status and reason) and a uint8 pixel "
    "store. Only new or changed files are read; unreadable ones are quarantined.",
)
def class_images(
    context: dg.AssetExecutionContext, image_source: ImageSource, storage: DedupStorage
):
    layout = storage.layout()
    layout.claim()
    root = image_source.resolve_root()
    splits = image_source.split_layout()
    full = context.run.tags.get(FULL_TAG) == "1"

    def one(key: str, log: Callable[[str], None]) -> ClassOutcome:
        return _decode_class(context, log, layout, root, splits, key, image_source, full=full)

    try:
        yield from materialize_classes(context, "class_images", one)
    finally:  # once per run: every class's quarantine list into the catalog's
        refresh_quarantine(layout)


def _decode_class(
    context: dg.AssetExecutionContext,
    log: Callable[[str], None],
    layout: OutputLayout,
    root: Path,
    splits: SplitLayout,
    key: str,
    image_source: ImageSource,
    *,
    full: bool,
) -> ClassOutcome:
    """One class folder (of one split) listed again and its new or changed files decoded."""
    start = time.perf_counter()
    scan = scan_class(root, splits, key, include_hidden=image_source.include_hidden)
    if scan is None:
        raise FileNotFoundError(f"no class folder with key {key!r} under {root}")
    listing = class_listings(scan)[key]
    previous = previous_pixels = from_cache = ahead = None
    recorded = class_summary(layout, key) or {}
    if layout.class_pixels(key).exists() and recorded.get("pixels_digest"):
        try:
            # The stored pixels are reused only if they are the very store written with
            # this table (a crash or an edit cannot mix two states).
            if store_matches(layout.class_pixels(key), recorded):
                previous = read_class_images(layout, key)
                previous_pixels = np.load(layout.class_pixels(key), mmap_mode="r")
        except Exception:  # noqa: BLE001 - a damaged earlier catalog just means decoding again
            previous = previous_pixels = None
    if previous is None and not full:  # a first run: what its decoder has done already
        reading = predecode.settings_of(
            image_source.max_file_bytes, image_source.include_hidden, image_source.splits
        )
        cached = predecode.cached_class(key, reading)
        if cached is not None:
            previous, previous_pixels = cached
            from_cache = previous_pixels
        elif not image_source.verify:  # a small class: decoded in a group, if at all
            # (--verify reads every file again, which a group's files would skip)
            ahead = predecode.grouped_files(key, reading)
    read_with = int(recorded.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES))
    if previous is not None and read_with != image_source.max_file_bytes:
        # Another size limit: every file above the smaller of the two is judged again (read
        # now, or skipped as too large); those below both keep their rows.
        previous = previous.filter(
            pl.col("size_bytes") <= min(read_with, image_source.max_file_bytes)
        )
    if previous is not None and image_source.verify:  # --verify: no row whose bytes changed
        ok = previous.filter(pl.col("status") == "ok").select("raw_path", "content_hash")
        gone = rewritten_files(root, ok.iter_rows(), image_source.max_file_bytes)
        previous = previous.filter(
            ~pl.col("raw_path").is_in(pl.Series(list(gone), dtype=pl.Binary))
        )
    catalog = update_class_catalog(
        root,
        scan,
        previous,
        previous_pixels,
        max_file_bytes=image_source.max_file_bytes,
        full=full,
        ahead=ahead,
    )
    summary = {
        "class": listing.name,
        "split": listing.split,
        "images": catalog.images,
        "quarantined": int((catalog.table["status"] != "ok").sum()),
        "digest": catalog.digest(),
        "listing": listing.digest,
        "max_file_bytes": int(image_source.max_file_bytes),
    }
    # One folder, swapped in whole: the pixel store never disagrees with its table.
    with atomic_dir(layout.class_dir(key)) as tmp:
        stored = tmp / layout.class_pixels(key).name
        # A class taken whole from a first run's decoder: its store, linked, not written again.
        digest = predecode.link_store(from_cache, catalog.pixels, stored)
        if digest is None:
            digest = save_pixels(stored, catalog.pixels, store_pixel_hashes(catalog.table))
        else:  # the cache's own name unlinked now, not after: that changes the store's stat
            predecode.discard(key)
        summary["pixels_digest"], summary["pixels_stat"] = digest, store_stat(stored)
        table_path, summary_text = tmp / layout.class_images(key).name, json.dumps(summary)
        catalog.table.write_parquet(table_path, metadata={CLASS_SUMMARY_KEY: summary_text})
        written = os.stat(table_path)
        if catalog.quarantine.height:  # most classes have none: no file (no part, to its reader)
            write_quarantine(catalog.quarantine, tmp / layout.class_quarantine(key).name)
    written_catalog(layout, key, written, catalog.table, summary_text)
    predecode.discard(key)
    for row in catalog.quarantine.iter_rows(named=True):
        context.log.warning(f"{row['action']} {row['path']}: {row['reason']}")
    seconds = time.perf_counter() - start
    log(
        f"{key}: {catalog.images:,} images ({catalog.reused:,} unchanged, {catalog.decoded:,} "
        f"read and decoded), {catalog.quarantine.height} skipped or noted, {seconds:.2f}s"
    )
    return ClassOutcome(
        {
            **{k: v for k, v in summary.items() if k != "class"},
            "unchanged": catalog.reused,
            "read_and_decoded": catalog.decoded,
            "seconds": round(seconds, 3),
            "path": dg.MetadataValue.path(str(layout.class_images(key))),
        }
    )
