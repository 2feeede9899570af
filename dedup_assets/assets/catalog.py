"""Asset: the image catalog and its uint8 pixel store."""

import hashlib
import time

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.core.artifacts import open_pixels, read_catalog
from dedup_assets.core.atomic_io import save_npy, write_csv, write_parquet
from dedup_assets.core.image_folder import (
    DecodedImage,
    class_key,
    read_and_decode,
    scan_image_folder,
    unique_ids,
)
from dedup_assets.partitions import class_partitions
from dedup_assets.ui import md_table
from resources import DedupStorage, ImageSource


def _previous_decodes(storage: DedupStorage):
    """Lookup of images decoded by the last run (content hash -> decoded image), if any."""
    layout = storage.layout()
    if not (layout.catalog.exists() and layout.pixels.exists()):
        return None
    try:
        old = read_catalog(layout).filter(pl.col("status") == "ok")
        pixels = open_pixels(layout)
    except Exception:  # noqa: BLE001 - a damaged previous store just means decoding again
        return None
    by_hash = {
        (h, s): (r, w, hh, m)
        for h, s, r, w, hh, m in old.select(
            "content_hash", "size_bytes", "row", "width", "height", "mode"
        ).iter_rows()
    }

    def known(content_hash: str, size: int) -> DecodedImage | None:
        hit = by_hash.get((content_hash, size))
        if hit is None or hit[0] >= len(pixels):
            return None
        row, w, h, mode = hit
        return DecodedImage(content_hash, size, w, h, mode, np.array(pixels[row]), None)

    return known


@dg.asset(
    group_name="ingest",
    kinds={"python", "parquet"},
    description="Every image of the source decoded once to 64x64 RGB (uint8 store), with id, "
    "class, path, size and status; unreadable files quarantined with their reason.",
)
def image_catalog(
    context: dg.AssetExecutionContext, image_source: ImageSource, storage: DedupStorage
) -> dg.MaterializeResult:
    layout = storage.layout()
    root = image_source.resolve_root()
    start = time.perf_counter()
    files = scan_image_folder(root)
    if not files:
        raise ValueError(f"no images found under {root}: expected <root>/<class>/<image> files")
    context.log.info(f"scanning {root}: {len(files):,} image files")
    decoded = read_and_decode(root, files, known=_previous_decodes(storage))
    decode_seconds = time.perf_counter() - start

    ok = [d.pixels is not None for d in decoded]
    rows = np.cumsum(ok) - 1
    ids = unique_ids(
        [d.content_hash or f.rel_path for d, f in zip(decoded, files, strict=True)],
        [f.rel_path for f in files],
    )
    catalog = pl.DataFrame(
        {
            "image_id": ids,
            "class": [f.class_name for f in files],
            "class_key": [class_key(f.class_name) for f in files],
            "path": [f.rel_path for f in files],
            "width": [d.width for d in decoded],
            "height": [d.height for d in decoded],
            "mode": [d.mode for d in decoded],
            "size_bytes": [d.size_bytes for d in decoded],
            "content_hash": [d.content_hash for d in decoded],
            "status": ["ok" if good else "quarantined" for good in ok],
            "reason": [d.error for d in decoded],
            "row": [int(r) if good else None for r, good in zip(rows, ok, strict=True)],
        },
        schema_overrides={"row": pl.Int64, "reason": pl.String},
    )
    n_ok = int(sum(ok))
    pixels = (
        np.stack([d.pixels for d in decoded if d.pixels is not None])
        if n_ok
        else np.zeros((0, 64, 64, 3), np.uint8)
    )
    save_npy(pixels, layout.pixels)
    write_parquet(catalog, layout.catalog)
    quarantined = catalog.filter(pl.col("status") != "ok").select("class", "path", "reason")
    write_csv(quarantined, layout.quarantine)
    for row in quarantined.iter_rows(named=True):
        context.log.warning(f"quarantined {row['path']}: {row['reason']}")

    keys = sorted(catalog.filter(pl.col("status") == "ok")["class_key"].unique().to_list())
    existing = set(context.instance.get_dynamic_partitions(class_partitions.name))
    new_keys = [k for k in keys if k not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(class_partitions.name, new_keys)
    for stale in sorted(existing - set(keys)):
        context.log.info(f"class partition {stale} has no images any more: removing it")
        context.instance.delete_dynamic_partition(class_partitions.name, stale)

    per_class = (
        catalog.group_by("class", "class_key")
        .agg(
            (pl.col("status") == "ok").sum().alias("images"),
            (pl.col("status") != "ok").sum().alias("quarantined"),
            pl.col("content_hash").filter(pl.col("status") == "ok").sort().alias("hashes"),
        )
        .sort("class")
    )
    digests = {
        k: _digest(h)
        for k, h in zip(per_class["class_key"], per_class["hashes"].to_list(), strict=True)
    }
    context.log.info(
        f"catalogued {n_ok:,} images in {len(keys)} classes, {quarantined.height} quarantined, "
        f"{decode_seconds:.1f}s"
    )
    return dg.MaterializeResult(
        metadata={
            "source": dg.MetadataValue.path(str(root)),
            "images": n_ok,
            "quarantined": quarantined.height,
            "classes": len(keys),
            "decode_seconds": round(decode_seconds, 3),
            "images_per_second": round(len(files) / max(decode_seconds, 1e-9), 1),
            "per_class": dg.MetadataValue.md(
                md_table(
                    ["class", "partition key", "images", "quarantined"],
                    per_class.select("class", "class_key", "images", "quarantined").rows(),
                )
            ),
            "quarantine": dg.MetadataValue.md(
                md_table(["class", "path", "reason"], quarantined.head(50).rows())
                if quarantined.height
                else "no file quarantined"
            ),
            "class_digests": dg.MetadataValue.json(digests),
            "catalog_path": dg.MetadataValue.path(str(layout.catalog)),
        },
        data_version=dg.DataVersion(_digest(sorted(digests.values()))),
    )


def _digest(items: list[str]) -> str:
    """A short stable digest of a list of strings (content hashes, digests)."""
    return hashlib.sha1("\n".join(items).encode()).hexdigest()[:16]
