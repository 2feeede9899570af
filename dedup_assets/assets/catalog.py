"""Asset: the image catalog, its class table, quarantine list and uint8 pixel store."""

import time

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.core.artifacts import digest, open_pixels, read_catalog
from dedup_assets.core.atomic_io import atomic_dir
from dedup_assets.core.image_folder import (
    DecodedImage,
    FolderScan,
    pixel_hash,
    read_and_decode,
    scan_image_folder,
    unique_ids,
)
from dedup_assets.core.layout import OutputLayout
from dedup_assets.partitions import class_partitions
from dedup_assets.ui import md_table
from resources import DedupStorage, ImageSource


def _previous_decodes(layout: OutputLayout):
    """Lookup of images the last catalog decoded (content hash, size -> decoded image).

    Keyed by content: a cached row is used only when its stored pixels still hash to the
    pixel hash recorded for it, so a pixel store out of step with its catalog is never
    trusted (the image is decoded again instead).
    """
    if not (layout.catalog.exists() and layout.pixels.exists()):
        return None
    try:
        old = read_catalog(layout).filter(pl.col("status") == "ok")
        pixels = open_pixels(layout)
        columns = ("content_hash", "size_bytes", "row", "width", "height", "mode", "pixel_hash")
        rows = old.select(columns).iter_rows()
    except Exception:  # noqa: BLE001 - a damaged or older store just means decoding again
        return None
    by_hash = {(h, s): (r, w, hh, m, p) for h, s, r, w, hh, m, p in rows}

    def known(content_hash: str, size: int) -> DecodedImage | None:
        hit = by_hash.get((content_hash, size))
        if hit is None or hit[0] >= len(pixels):
            return None
        row, w, h, mode, recorded = hit
        px = np.array(pixels[row])
        if pixel_hash(px) != recorded:
            return None
        return DecodedImage(content_hash, size, w, h, mode, px, None, recorded)

    return known


def build_catalog(scan: FolderScan, decoded: list[DecodedImage]) -> dict[str, pl.DataFrame]:
    """The catalog, class table and quarantine list of a scan and its decoded files."""
    files = scan.files
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
            "class_key": [f.class_key for f in files],
            "path": [f.rel_path for f in files],
            "raw_path": [f.raw_path for f in files],
            "width": [d.width for d in decoded],
            "height": [d.height for d in decoded],
            "mode": [d.mode for d in decoded],
            "size_bytes": [d.size_bytes for d in decoded],
            "content_hash": [d.content_hash for d in decoded],
            "pixel_hash": [d.pixel_hash for d in decoded],
            "status": ["ok" if good else "quarantined" for good in ok],
            "reason": [d.error for d in decoded],
            "note": [d.note for d in decoded],
            "row": [int(r) if good else None for r, good in zip(rows, ok, strict=True)],
        },
        schema_overrides={
            "row": pl.Int64,
            "reason": pl.String,
            "note": pl.String,
            "pixel_hash": pl.String,
            "raw_path": pl.Binary,
            "class": pl.String,
            "class_key": pl.String,
            "path": pl.String,
            "image_id": pl.String,
            "mode": pl.String,
            "content_hash": pl.String,
        },
    )
    quarantine = pl.concat(
        [
            catalog.filter(pl.col("status") != "ok").select(
                "path", "class", pl.lit("skipped").alias("action"), "reason"
            ),
            catalog.filter(pl.col("note").is_not_null()).select(
                "path", "class", pl.lit("used").alias("action"), pl.col("note").alias("reason")
            ),
            pl.DataFrame(
                {
                    "path": [s.path for s in scan.skipped],
                    "class": [s.class_name for s in scan.skipped],
                    "action": ["skipped"] * len(scan.skipped),
                    "reason": [s.reason for s in scan.skipped],
                },
                schema={
                    "path": pl.String,
                    "class": pl.String,
                    "action": pl.String,
                    "reason": pl.String,
                },
            ),
        ]
    ).sort("path")
    good = catalog.filter(pl.col("status") == "ok")
    per_class = good.group_by("class_key").agg(
        pl.len().alias("images"),
        pl.struct("image_id", "pixel_hash", "path").sort_by("path").alias("members"),
    )
    digests = {
        key: digest([list(m.values()) for m in members])
        for key, members in zip(per_class["class_key"], per_class["members"].to_list(), strict=True)
    }
    classes = (
        pl.DataFrame(
            {"class_key": list(scan.classes), "class": list(scan.classes.values())},
            schema={"class_key": pl.String, "class": pl.String},
        )
        .join(per_class.select("class_key", "images"), on="class_key", how="left")
        .join(
            catalog.filter(pl.col("status") != "ok").group_by("class_key").len("quarantined"),
            on="class_key",
            how="left",
        )
        .with_columns(
            pl.col("images").fill_null(0).cast(pl.Int64),
            pl.col("quarantined").fill_null(0).cast(pl.Int64),
            pl.col("class_key").replace_strict(digests, default=None).alias("digest"),
        )
        .sort("class_key")
    )
    return {"catalog": catalog, "classes": classes, "quarantine": quarantine}


@dg.asset(
    group_name="ingest",
    kinds={"python", "parquet"},
    description="Every image of the source decoded once to 64x64 RGB (uint8 store), with id, "
    "class, path, size, pixel hash and status; everything skipped is listed with its reason "
    "in catalog/quarantine.csv; classes are registered as partitions.",
)
def image_catalog(
    context: dg.AssetExecutionContext, image_source: ImageSource, storage: DedupStorage
) -> dg.MaterializeResult:
    layout = storage.layout()
    layout.claim()
    root = image_source.resolve_root()
    start = time.perf_counter()
    scan = scan_image_folder(root)
    context.log.info(
        f"scanning {root}: {len(scan.files):,} image files in {len(scan.classes)} class folders, "
        f"{len(scan.skipped)} other paths skipped"
    )
    decoded = read_and_decode(
        root,
        scan.files,
        max_file_bytes=image_source.max_file_bytes,
        known=_previous_decodes(layout),
    )
    decode_seconds = time.perf_counter() - start
    tables = build_catalog(scan, decoded)
    catalog, classes, quarantine = tables["catalog"], tables["classes"], tables["quarantine"]
    n_ok = int((catalog["status"] == "ok").sum())
    if n_ok == 0:
        shown = "; ".join(
            f"{p}: {r}" for p, r in quarantine.select("path", "reason").head(3).rows()
        )
        raise ValueError(
            f"no readable image under {root}: expected <root>/<class>/<image> files"
            + (f" ({quarantine.height} paths skipped, e.g. {shown})" if quarantine.height else "")
        )
    pixels = np.stack([d.pixels for d in decoded if d.pixels is not None])
    # One folder, swapped in whole: the pixel store never disagrees with its catalog.
    with atomic_dir(layout.catalog_dir) as tmp:
        with open(tmp / layout.pixels.name, "wb") as fh:
            np.save(fh, pixels)
        catalog.write_parquet(tmp / layout.catalog.name)
        classes.write_parquet(tmp / layout.classes.name)
        quarantine.write_csv(tmp / layout.quarantine.name)
    for row in quarantine.iter_rows(named=True):
        context.log.warning(f"{row['action']} {row['path']}: {row['reason']}")

    keys = classes.filter(pl.col("images") > 0)["class_key"].to_list()
    existing = set(context.instance.get_dynamic_partitions(class_partitions.name))
    new_keys = [k for k in keys if k not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(class_partitions.name, new_keys)
    for stale in sorted(existing - set(keys)):
        context.log.info(f"class partition {stale} has no images any more: removing it")
        context.instance.delete_dynamic_partition(class_partitions.name, stale)

    context.log.info(
        f"catalogued {n_ok:,} images in {len(keys)} classes, {quarantine.height} paths "
        f"skipped or noted, {decode_seconds:.1f}s"
    )
    digests = dict(zip(classes["class_key"], classes["digest"], strict=True))
    return dg.MaterializeResult(
        metadata={
            "source": dg.MetadataValue.path(str(root)),
            "images": n_ok,
            "skipped": int((quarantine["action"] == "skipped").sum()),
            "classes": len(keys),
            "empty_classes": classes.filter(pl.col("images") == 0)["class"].to_list(),
            "decode_seconds": round(decode_seconds, 3),
            "images_per_second": round(len(scan.files) / max(decode_seconds, 1e-9), 1),
            "per_class": dg.MetadataValue.md(
                md_table(
                    ["class", "partition key", "images", "quarantined"],
                    classes.select("class", "class_key", "images", "quarantined").rows(),
                )
            ),
            "quarantine": dg.MetadataValue.md(
                md_table(["path", "class", "action", "reason"], quarantine.head(50).rows())
                if quarantine.height
                else "no file skipped"
            ),
            "class_digests": dg.MetadataValue.json(digests),
            "catalog_path": dg.MetadataValue.path(str(layout.catalog)),
        },
        data_version=dg.DataVersion(digest(sorted(str(v) for v in digests.values()))),
    )
