"""The review page: every removed image beside the kept image it duplicates, to look at and
correct, opened from `file://` with no server and no network.

`write_review_page(layout, thresholds)` writes, under `review/` in the output folder:

- `index.html`: the whole app (inline CSS and script, no external font, script or image),
  the counts per threshold, the legend, and the page list with the first page's rows as JSON
  in a `<script type="application/json">` block;
- `pages/<build>/<t>/<view>/<n>.js`: the rows of every other page, one small script each
  (a `file://` page may load scripts, not `fetch` files). Views: `all` (every class, borderline
  first), `c<k>` (one class) and `x` (cross-class pairs) per threshold, and `L/<n>.js`: the
  train/test leakage pairs of `leakage.csv` (one list for every threshold: each evaluation
  image beside its copy in train, with a "not a duplicate" mark whose `other` is the
  training image). `<build>` is a digest of the rows,
  and `index.html` is replaced last, so an open page never mixes two builds;
- `thumbs/<hh>/<pixel hash>.png`: the catalogued 64x64 pixels of each shown image (shown at
  128 px), named by the pixel hash (identical pixels share one file; never a file name), made
  once and reused by every later run, and removed once no page shows them. At most
  `MAX_THUMBNAILS`, those of the first pages of every list (`shown_thumbnails`); an image
  beyond them is shown from its source file (`file://`, as the "open" link). An image
  whose source file already holds the pixels the decision saw (`shown_as_source`: 64x64,
  RGB or grey, JPEG, PNG or WebP, as every EuroSAT image is) is shown from that file and
  needs no thumbnail: on EuroSAT's first run the 6,072 thumbnails, one file each, were
  the page's 0.95 s of a 14.4 s run, 0.07 s without them
  (`write_review_page(sources_as_thumbnails=False)` makes them anyway).

Names reach the page as text only. The server side escapes what it writes into HTML with
`html.escape` and writes data as JSON with `<`, `>` and `&` (and U+2028/9) escaped as
`\\u003c`..., so no name can close a script element; the script builds every element with
DOM calls (`textContent`, properties), never from HTML strings; and a Content-Security-Policy
allows only this page's own script (by its hash) and script files below it, so even an
injected handler would not run.

Margins. A removed row's `cosine` in the keep list is the cosine it was decided at (T for a
cosine key; for a budget, the pair's own threshold: the class's margin plus both images'
offsets, at most the class's ceiling), so its margin is `similarity - cosine`, exactly the quantity the decision
compared. The cross-class table stores no cosine: for a cosine key it is T; for a budget the
page shows no margin and orders those pairs by similarity.

Corrections are made in the browser: marks (keep, remove, not a duplicate) are kept in
`localStorage` under a key of the output folder while the user pages, and downloaded as
`overrides.csv` (`path,decision,other`, paths relative to the source) built client-side.
The corrections the run honoured are in the page's data and join the browser's marks once per
version of the file, so the download is the whole file again even from a browser that never
saw the earlier marks (replacing `overrides.csv` with it does not undo earlier corrections).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import (
    catalog_images,
    gather_pixels,
    read_catalog,
    read_keep_list,
)
from dedup_assets.core.data.atomic_io import atomic_dir, write_many, write_text
from dedup_assets.core.data.image_folder import IMAGE_SIZE
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.pools import cancelling, process_cores
from dedup_assets.core.data.thresholds import budget_of, cosine_of
from dedup_assets.core.decision.overrides import Overrides

PAGE_SIZE = 200  # pairs per page: 400 thumbnails, about 60 KB of rows
BORDERLINE = 0.02  # margins below this are highlighted on the page
THUMB_CHUNK = 2048  # thumbnails decoded from the pixel stores at a time (25 MB)
PNG_CHUNK = 256  # thumbnails a thread compresses at a time
# Thumbnails made at most, for the first pages of every list (`shown_thumbnails`): a set
# whose removals run into the hundred thousands (EuroSAT tiled 5x: 127,000 images to show)
# spent 51 s making them, for pages nobody reaches in order. 20,000 is 50 pages of every
# class list of a 10-class set, about 4 s to make on 2 cores.
MAX_THUMBNAILS = 20_000
_HEX = r"^[0-9a-f]{16,64}$"  # what a pixel hash must look like to name a file
# A row's thumbnail column when the image is shown from its source file as it is
# (`shown_as_source`): no thumbnail file is made for it.
AS_SOURCE = "="
# Source files a browser shows with the pixels the decision saw, when IMAGE_SIZE square in
# one of these modes: decoded as is (no resize), and no alpha or CMYK a browser would show
# otherwise than the RGB conversion did.
AS_SOURCE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
AS_SOURCE_MODES = ("RGB", "L")
# Order of the kinds of removal in a view: the model's near-duplicates (by margin), then
# those the user's overrides removed, then exact copies (identical pixels, never in doubt).
KIND_ORDER = {"near": 0, "override": 1, "exact": 2}

# Columns of one row of a page, in order (the script reads them by position).
PAIR_COLUMNS = (
    "cls",
    "path",
    "kept_path",
    "thumb",
    "kept_thumb",
    "similarity",
    "margin",
    "kind",
    "size",
    "kept_size",
)
"""`size`: the file's pixels as stored and its bytes (`file_size_words`), so a reviewer
sees which of a pair is the original and which the smaller or recompressed copy."""
CROSS_COLUMNS = (
    "cls_a",
    "path_a",
    "cls_b",
    "path_b",
    "thumb_a",
    "thumb_b",
    "similarity",
    "margin",
    "kind",
)
# Columns of one train/test leakage row (`leakage.csv`): the evaluation image, its copy in
# train, and the pair's score less the split's threshold as the margin.
LEAK_COLUMNS = (
    "split",
    "cls",
    "path",
    "train_cls",
    "train_path",
    "thumb",
    "train_thumb",
    "similarity",
    "margin",
    "kind",
)
LEAK_VIEW = "L"  # the leakage pages' key: one list for every threshold


@dataclass(frozen=True)
class ReviewPage:
    """What `write_review_page` wrote."""

    index: Path
    pairs: dict[str, int]  # removed images listed, per threshold
    cross_pairs: dict[str, int]  # cross-class pairs listed, per threshold
    missing: list[str]  # thresholds without a keep list (shown as missing)
    page_files: int  # data files of pages after the first
    thumbnails_written: int
    thumbnails_reused: int
    thumbnails_removed: int
    thumbnails_left_out: int  # images beyond `max_thumbnails`: shown from the source file
    index_bytes: int
    seconds: float
    build: str = ""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    leak_pairs: int | None = None  # train/test leakage pairs listed (None: no leakage.csv)
    shown_as_source: int = 0  # images whose source file is their thumbnail (`AS_SOURCE`)


# ---------------------------------------------------------------------------- the rows


def script_json(value: object) -> str:
    """JSON that is safe inside a `<script>` element and a script file: `<`, `>` and `&`
    (which JSON only has inside strings) and the two line separators JavaScript once
    rejected are written as `\\u` escapes, so no name can end the element."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def shown_as_source() -> pl.Expr:
    """Catalog rows whose source file a browser shows with the very pixels the decision saw:
    IMAGE_SIZE on each side (decoded without a resize), RGB or grey, a JPEG, PNG or WebP
    file by its name, and a name the page can address: its shown path is its path (a name
    that is not UTF-8 is shown with `\\xNN` escapes, which address no file: a thumbnail)."""
    return (
        (pl.col("path").cast(pl.Binary) == pl.col("raw_path"))
        & (pl.col("width") == IMAGE_SIZE)
        & (pl.col("height") == IMAGE_SIZE)
        & pl.col("mode").is_in(AS_SOURCE_MODES)
        & pl.any_horizontal(
            pl.col("path").str.to_lowercase().str.ends_with(suffix) for suffix in AS_SOURCE_SUFFIXES
        )
    ).fill_null(False)


def thumbnail_table(catalog: pl.DataFrame, sources: bool = False) -> pl.DataFrame:
    """Decoded catalog rows with `thumb`: the pixel hash that names the image's thumbnail
    (null where it is not a plain hex digest, so no other text can become a file name);
    with `sources`, `AS_SOURCE` for an image its source file shows as it is
    (`shown_as_source`)."""
    thumb = (
        pl.when(pl.col("pixel_hash").str.contains(_HEX)).then(pl.col("pixel_hash")).otherwise(None)
    )
    if sources:
        thumb = pl.when(shown_as_source()).then(pl.lit(AS_SOURCE)).otherwise(thumb)
    return catalog_images(catalog).select(
        "image_id", "class", "class_key", "path", "row", thumb.alias("thumb"), file_size_words()
    )


def file_size_words() -> pl.Expr:
    """`size`: "1024×768 · 182 KB" (the catalog's width, height and bytes of a file)."""
    kb = (pl.col("size_bytes") / 1024).round(0).cast(pl.Int64)
    mb = (pl.col("size_bytes") / 1_048_576).round(1)
    amount = (
        pl.when(pl.col("size_bytes") < 1_048_576)
        .then(pl.format("{} KB", kb))
        .otherwise(pl.format("{} MB", mb))
    )
    return pl.format("{}×{} · {}", pl.col("width"), pl.col("height"), amount).alias("size")


def _kind_rank() -> pl.Expr:
    return pl.col("kind").replace_strict(KIND_ORDER, default=0, return_dtype=pl.Int8)


def _rounded(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Float64).fill_nan(None).round(4)


def removed_pairs(
    keep: pl.DataFrame, thumbs: pl.DataFrame, class_index: dict[str, int]
) -> pl.DataFrame:
    """Every removed image of a keep list beside the kept image it duplicates
    (`PAIR_COLUMNS`), borderline first: near-duplicates by margin (`similarity - cosine`,
    the cosine the row was decided at), then removals by override (`match` "override"; the
    kept image they name, if any), then exact copies; ties by path."""
    ids = thumbs.select(
        "image_id",
        "thumb",
        pl.col("size") if "size" in thumbs.columns else pl.lit(None, pl.String).alias("size"),
    )
    partner = keep.select(
        pl.col("image_id").alias("duplicate_of"), pl.col("path").alias("kept_path")
    )
    return (
        keep.filter(~pl.col("kept"))
        .join(partner, on="duplicate_of", how="left")
        .join(ids, on="image_id", how="left")
        .join(
            ids.rename({"image_id": "duplicate_of", "thumb": "kept_thumb", "size": "kept_size"}),
            on="duplicate_of",
            how="left",
        )
        .with_columns(
            pl.col("class").replace_strict(class_index, return_dtype=pl.Int32).alias("cls"),
            (pl.col("similarity") - pl.col("cosine")).alias("margin"),
            pl.col("match").fill_null("near").alias("kind"),
        )
        .with_columns(_rounded("similarity"), _rounded("margin"))
        .sort(
            [_kind_rank(), pl.col("margin"), pl.col("path")],
            nulls_last=True,
        )
        .select(PAIR_COLUMNS)
    )


def cross_pairs(
    cross: pl.DataFrame, thumbs: pl.DataFrame, class_index: dict[str, int], cosine: float | None
) -> pl.DataFrame:
    """The cross-class pairs of a threshold (`CROSS_COLUMNS`), borderline first: near
    pairs by similarity (margin over `cosine` where it is known), then exact copies."""
    side = thumbs.select("class", "path", "thumb")
    margin = pl.col("similarity") - cosine if cosine is not None else pl.lit(None, pl.Float64)
    return (
        cross.join(
            side.rename({"class": "class_a", "path": "path_a", "thumb": "thumb_a"}),
            on=["class_a", "path_a"],
            how="left",
        )
        .join(
            side.rename({"class": "class_b", "path": "path_b", "thumb": "thumb_b"}),
            on=["class_b", "path_b"],
            how="left",
        )
        .with_columns(
            pl.col("class_a").replace_strict(class_index, return_dtype=pl.Int32).alias("cls_a"),
            pl.col("class_b").replace_strict(class_index, return_dtype=pl.Int32).alias("cls_b"),
            margin.alias("margin"),
            pl.col("match").fill_null("near").alias("kind"),
        )
        .with_columns(_rounded("similarity"), _rounded("margin"))
        .sort(
            [_kind_rank(), pl.col("similarity"), pl.col("path_a")],
            nulls_last=True,
        )
        .select(CROSS_COLUMNS)
    )


def leak_pairs(
    leaks: pl.DataFrame, thumbs: pl.DataFrame, class_index: dict[str, int]
) -> pl.DataFrame:
    """The train/test leakage pairs of `leakage.csv` (`LEAK_COLUMNS`), the evaluation image
    beside its training copy, borderline first: near copies by margin (score less the
    split's threshold), then exact copies; ties by split and path."""
    side = thumbs.select("path", "thumb")
    return (
        leaks.join(side, left_on="image", right_on="path", how="left")
        .join(
            side.rename({"path": "train_image", "thumb": "train_thumb"}),
            on="train_image",
            how="left",
        )
        .with_columns(
            pl.col("class").replace_strict(class_index, return_dtype=pl.Int32).alias("cls"),
            pl.col("train_class")
            .replace_strict(class_index, return_dtype=pl.Int32)
            .alias("train_cls"),
            (pl.col("similarity") - pl.col("threshold")).alias("margin"),
            pl.col("image").alias("path"),
            pl.col("train_image").alias("train_path"),
        )
        .with_columns(_rounded("similarity"), _rounded("margin"))
        .sort([_kind_rank(), pl.col("margin"), pl.col("split"), pl.col("path")], nulls_last=True)
        .select(LEAK_COLUMNS)
    )


def read_leakage(layout: OutputLayout) -> pl.DataFrame | None:
    """`leakage.csv` as written by the leakage asset, or None where there is none."""
    if not layout.leakage.is_file():
        return None
    return pl.read_csv(
        layout.leakage,
        glob=False,
        schema_overrides={
            "similarity": pl.Float64,
            "threshold": pl.Float64,
            **dict.fromkeys(
                ("split", "class", "image", "train_class", "train_image", "kind"), pl.String
            ),
        },
    )


def class_counts(keep: pl.DataFrame, classes: Sequence[str]) -> list[list[int]]:
    """[images, kept, exact copies, near-duplicates, removed by override] of each class,
    in `classes` order."""
    counts = keep.group_by("class").agg(
        pl.len().alias("images"),
        pl.col("kept").sum().alias("kept"),
        *((pl.col("match") == kind).sum().alias(kind) for kind in ("exact", "near", "override")),
    )
    by_class = {r[0]: [int(v) for v in r[1:]] for r in counts.rows()}
    return [by_class.get(c, [0, 0, 0, 0, 0]) for c in classes]


def _pages(
    rows: pl.DataFrame, view: str, page_size: int, group: str | None = None
) -> Iterator[tuple[str, int, list]]:
    """(view, page number, rows) of every page of `rows`; with `group`, one view per value
    of that column (`c<k>`)."""
    if group is None:
        for n in range(math.ceil(rows.height / page_size)):
            yield view, n, rows.slice(n * page_size, page_size).rows()
        return
    for (value,), part in rows.partition_by(group, as_dict=True, maintain_order=True).items():
        for n in range(math.ceil(part.height / page_size)):
            yield f"{view}{value}", n, part.slice(n * page_size, page_size).rows()


# ---------------------------------------------------------------------------- thumbnails

_THUMB_COLUMNS = ("thumb", "kept_thumb", "thumb_a", "thumb_b", "train_thumb")


def shown_thumbnails(
    frames: Sequence[pl.DataFrame], page_size: int, limit: int
) -> tuple[set[str], int]:
    """The thumbnails to make for these lists (removed pairs, cross-class and leakage
    pairs, each in page order) and how many are left out: every one if they are at most
    `limit`, else those of the earliest pages. An image's page is the earliest on which any
    list shows it (a removed pair's, in its class's list: never later than in "all"), so
    page k of every list has its thumbnails before page k + 1 of any has one."""
    parts = []
    for frame in frames:
        by_class = "cls" in frame.columns and "kept_thumb" in frame.columns
        rank = pl.int_range(pl.len()).over("cls") if by_class else pl.int_range(pl.len())
        ranked = frame.with_columns((rank // page_size).alias("_page"))
        for column in _THUMB_COLUMNS:
            if column in frame.columns:
                parts.append(ranked.select(pl.col(column).cast(pl.String).alias("thumb"), "_page"))
    if not parts:
        return set(), 0
    first = (
        pl.concat(parts)
        .drop_nulls("thumb")
        .filter(pl.col("thumb") != AS_SOURCE)  # its source file: nothing to make
        .group_by("thumb")
        .agg(pl.col("_page").min())
        .sort("_page", "thumb")
    )
    return set(first["thumb"].head(max(0, limit)).to_list()), max(0, first.height - limit)


def _only(frame: pl.DataFrame, shown: set[str]) -> pl.DataFrame:
    """`frame` with the thumbnails not in `shown` set to null (the page then shows the
    source file); `AS_SOURCE` stays."""
    keep = [*sorted(shown), AS_SOURCE]
    return frame.with_columns(
        pl.when(pl.col(c).is_in(keep)).then(pl.col(c)).otherwise(None).alias(c)
        for c in _THUMB_COLUMNS
        if c in frame.columns
    )


def _count_as_source(frames: Sequence[pl.DataFrame]) -> int:
    """How many distinct images of these lists are shown from their source file."""
    paths: set[str] = set()
    for frame in frames:
        for thumb, path in (
            ("thumb", "path"),
            ("kept_thumb", "kept_path"),
            ("thumb_a", "path_a"),
            ("thumb_b", "path_b"),
            ("train_thumb", "train_path"),
        ):
            if thumb in frame.columns and path in frame.columns:
                paths.update(frame.filter(pl.col(thumb) == AS_SOURCE)[path].to_list())
    return len(paths)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_files(pixels: np.ndarray, threads: int | None = None) -> list[bytes]:
    """Lossless RGB PNGs of a stack of images (n, h, w, 3) uint8: the pixels the decision
    saw. Every row is stored with PNG's "up" filter (the difference to the row above,
    computed for the whole stack at once) and zlib level 1: 0.17 ms an image against PIL's
    0.45 ms, 5% larger (64x64 images, 2026-12-03), and 27,000 thumbnails are made at once
    on a first run. zlib lets go of the GIL while it compresses: the images are compressed
    on `threads` threads (default: this process's cores, `pools.process_cores`), the same
    bytes in the same order (20,000 thumbnails at 135,000 images were 3.4 s of one core
    while the other sat idle)."""
    n, h, w, c = pixels.shape
    rows = pixels.reshape(n, h, w * c)
    raw = np.empty((n, h, w * c + 1), dtype=np.uint8)
    raw[:, :, 0] = 2  # filter type "up"
    raw[:, 0, 1:] = rows[:, 0]
    np.subtract(rows[:, 1:], rows[:, :-1], out=raw[:, 1:, 1:])  # wraps modulo 256, as PNG does
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    tail = _chunk(b"IEND", b"")

    def many(stack: np.ndarray) -> list[bytes]:
        return [head + _chunk(b"IDAT", zlib.compress(image.tobytes(), 1)) + tail for image in stack]

    threads = max(1, min(threads or process_cores(), -(-n // PNG_CHUNK)))
    if threads == 1:
        return many(raw)
    chunks = [raw[i : i + PNG_CHUNK] for i in range(0, n, PNG_CHUNK)]
    with cancelling(ThreadPoolExecutor(max_workers=threads)) as pool:
        return [png for part in pool.map(many, chunks) for png in part]


def _thumbnail_files(layout: OutputLayout) -> dict[str, Path]:
    folder = layout.review_thumbs
    return {p.stem: p for p in folder.glob("??/*.png")} if folder.is_dir() else {}


def write_thumbnails(layout: OutputLayout, thumbs: pl.DataFrame, needed: set[str]) -> int:
    """Make the thumbnails in `needed` that `review/thumbs/` does not hold yet, from the
    catalog's pixel stores (never the source); returns how many were made."""
    missing = sorted(needed - _thumbnail_files(layout).keys())
    rows = (
        thumbs.filter(pl.col("thumb").is_in(missing))
        .unique("thumb", keep="first", maintain_order=True)
        .sort("class_key", "row")
    )
    for start in range(0, rows.height, THUMB_CHUNK):
        chunk = rows.slice(start, THUMB_CHUNK)
        files = png_files(gather_pixels(layout, chunk))
        names = [f"{t[:2]}/{t}.png" for t in chunk["thumb"].to_list()]
        write_many(zip(names, files, strict=True), layout.review_thumbs)
    return rows.height


def prune_thumbnails(layout: OutputLayout, needed: set[str]) -> int:
    """Remove the thumbnails no page shows any more (after the new page is in place)."""
    stale = {t: p for t, p in _thumbnail_files(layout).items() if t not in needed}
    for path in stale.values():
        path.unlink(missing_ok=True)
    return len(stale)


# ---------------------------------------------------------------------------- the page


def _threshold_entry(key: str, keep: pl.DataFrame | None) -> dict:
    kind = "budget" if budget_of(key) is not None else "cosine"
    if keep is None:
        return {"key": key, "kind": kind, "missing": True}
    removed = int((~keep["kept"]).sum())
    return {
        "key": key,
        "kind": kind,
        "missing": False,
        "images": keep.height,
        "kept": keep.height - removed,
        "removed": removed,
        "exact": int((keep["match"] == "exact").sum()),
        "near": int((keep["match"] == "near").sum()),
        "override": int((keep["match"] == "override").sum()),
    }


def write_review_page(
    layout: OutputLayout,
    thresholds: Sequence[str],
    *,
    source_root: Path | None = None,
    page_size: int = PAGE_SIZE,
    overrides: Overrides | None = None,
    max_thumbnails: int = MAX_THUMBNAILS,
    sources_as_thumbnails: bool = True,
) -> ReviewPage:
    """Write `review/index.html` for the keep lists and cross-class pairs of `thresholds`
    (a threshold whose keep list is missing is listed as missing); see the module doc.

    source_root: the source folder, for an "open original" link beside each image.
    overrides: the corrections the run honoured; the page starts its marks from them, so a
    download from another browser (or after its storage was cleared) still carries them.
    max_thumbnails: at most this many thumbnails, those of the first pages of every list
    (`shown_thumbnails`); an image beyond them is shown from its source file.
    sources_as_thumbnails: with a `source_root`, an image whose source file holds the
    decision's pixels (`shown_as_source`) is shown from it, no thumbnail made; False makes
    thumbnails for every shown image (up to `max_thumbnails`).
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    start = time.perf_counter()
    thumbs = thumbnail_table(
        read_catalog(layout), sources=sources_as_thumbnails and source_root is not None
    )
    # A keep list is read whole once, below, and let go once its pairs, counts and totals
    # are taken: the four of a million images held at once took 0.8 GB of the page's peak.
    present = {t for t in thresholds if layout.keep_list(t).exists()}
    crosses = {
        t: pl.read_parquet(layout.cross_class(t), glob=False)
        if layout.cross_class(t).exists()
        else None
        for t in thresholds
    }
    names = set(thumbs["class"].unique().to_list())
    for t in present:
        names.update(
            pl.read_parquet(layout.keep_list(t), columns=["class"], glob=False)["class"]
            .unique()
            .to_list()
        )
    for cross in crosses.values():
        if cross is not None:
            names.update(cross["class_a"].unique().to_list() + cross["class_b"].unique().to_list())
    leaks = read_leakage(layout)
    if leaks is not None:
        names.update(leaks["class"].unique().to_list() + leaks["train_class"].unique().to_list())
    classes = sorted(names)
    class_index = {c: k for k, c in enumerate(classes)}

    entries: list[dict] = []
    pairs_listed, cross_listed = {}, {}
    views: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {}
    entry_of: dict[str, dict] = {}
    counts_of: dict[str, list[list[int]]] = {}
    for t in thresholds:
        keep = read_keep_list(layout.keep_list(t)) if t in present else None
        entry_of[t] = _threshold_entry(t, keep)
        if keep is None:
            continue
        counts_of[t] = class_counts(keep, classes)
        if "cosine" not in keep.columns:  # written before rows recorded their cosine
            keep = keep.with_columns(pl.lit(cosine_of(t), pl.Float64).alias("cosine"))
        cross = crosses[t]
        views[t] = (
            removed_pairs(keep, thumbs, class_index),
            cross_pairs(cross, thumbs, class_index, cosine_of(t))
            if cross is not None
            else pl.DataFrame(schema=dict.fromkeys(CROSS_COLUMNS, pl.String)),
        )
        del keep
    leak_listed = leak_pairs(leaks, thumbs, class_index) if leaks is not None else None
    needed, capped = shown_thumbnails(
        [frame for pair in views.values() for frame in pair]
        + ([leak_listed] if leak_listed is not None else []),
        page_size,
        max_thumbnails,
    )
    views = {
        t: (_only(pairs, needed), _only(listed, needed)) for t, (pairs, listed) in views.items()
    }
    for t in thresholds:
        entry = entry_of[t]
        entries.append(entry)
        if t not in views:
            continue
        pairs, listed = views[t]
        pairs_listed[t], cross_listed[t] = pairs.height, listed.height
        entry["cross"] = listed.height if crosses[t] is not None else None
        entry["classCounts"] = counts_of[t]
        class_pages = [0] * len(classes)
        counted = pairs.group_by("cls").len().rows()
        for cls, n in counted:
            class_pages[cls] = math.ceil(n / page_size)
        entry["classPages"] = class_pages
        entry["pages"] = {
            "all": math.ceil(pairs.height / page_size),
            "x": math.ceil(listed.height / page_size),
        }

    def pages() -> Iterator[tuple[str, list]]:
        """Every page's key and rows, in the page's order, made one at a time: a million
        images' pages held at once took 5 GB."""
        for ti, t in enumerate(thresholds):
            if t not in views:
                continue
            pairs, listed = views[t]
            for view, n, rows in _pages(pairs, "all", page_size):
                yield f"{ti}/{view}/{n}", rows
            for view, n, rows in _pages(pairs, "c", page_size, group="cls"):
                yield f"{ti}/{view}/{n}", rows
            for view, n, rows in _pages(listed, "x", page_size):
                yield f"{ti}/{view}/{n}", rows
        if leaks is not None and leak_listed is not None:
            for _, n, rows in _pages(_only(leak_listed, needed), LEAK_VIEW, page_size):
                yield f"{LEAK_VIEW}/{n}", rows

    leakage = None
    if leaks is not None and leak_listed is not None:
        listed = _only(leak_listed, needed)
        leakage = {
            "pairs": listed.height,
            "pages": math.ceil(listed.height / page_size),
            "flagged": {
                s: int(n)
                for s, n in leaks.group_by("split")
                .agg(pl.col("image").n_unique())
                .sort("split")
                .rows()
            },
        }

    written = write_thumbnails(layout, thumbs, needed)
    as_source = _count_as_source(
        [f for pair in views.values() for f in pair]
        + ([leak_listed] if leak_listed is not None else [])
    )

    # Each page is written as it is made, into a folder named, once all are written, by
    # the digest of their contents (a page changed is a new folder: no cached old page).
    h = hashlib.sha1(script_json([classes, entries, page_size]).encode())
    first_key = "0/all/0"
    first_rows: list = []
    page_count = 0
    layout.review_pages.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pages.", suffix=".tmp", dir=layout.review_pages))
    staging.chmod(0o755)
    try:
        for key, rows in pages():
            text = f"__reviewData({script_json(key)},{script_json(rows)});\n"
            h.update(key.encode() + b"\0" + text.encode())
            page_count += 1
            if key == first_key:
                first_rows = rows  # embedded in index.html
                continue
            (staging / key).parent.mkdir(parents=True, exist_ok=True)
            (staging / f"{key}.js").write_text(text, encoding="utf-8")
        build = h.hexdigest()[:16]
        with atomic_dir(layout.review_pages / build) as tmp:
            os.rmdir(tmp)
            os.replace(staging, tmp)  # atomic_dir puts it in place of the build's folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    data = {
        "version": 1,
        "store": hashlib.sha1(str(layout.root.resolve()).encode()).hexdigest()[:16],
        "pages": f"pages/{build}",
        "thumbs": "thumbs",
        "source": Path(source_root).resolve().as_uri() if source_root is not None else None,
        "pageSize": page_size,
        "thumbnailsLeftOut": capped,
        "borderline": BORDERLINE,
        "classes": classes,
        "thresholds": entries,
        "first": {"key": first_key, "rows": first_rows},
        "overrides": honoured_overrides(overrides),
        "leakage": leakage,
    }
    text = render_index(data, layout.root, source_root, entries)
    write_text(text, layout.review_index)
    for old in layout.review_pages.iterdir():  # earlier builds, after the swap to this one
        if old.name != build and not old.name.startswith(".") and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    removed = prune_thumbnails(layout, needed)
    counts = {
        e["key"]: {k: v for k, v in e.items() if isinstance(v, int) and not isinstance(v, bool)}
        for e in entries
    }
    return ReviewPage(
        index=layout.review_index,
        pairs=pairs_listed,
        cross_pairs=cross_listed,
        missing=[e["key"] for e in entries if e["missing"]],
        page_files=page_count - (1 if first_rows else 0),
        thumbnails_written=written,
        thumbnails_reused=len(needed) - written,
        thumbnails_removed=removed,
        thumbnails_left_out=capped,
        shown_as_source=as_source,
        index_bytes=len(text.encode("utf-8")),
        seconds=time.perf_counter() - start,
        build=build,
        counts=counts,
        leak_pairs=leakage["pairs"] if leakage is not None else None,
    )


def honoured_overrides(overrides: Overrides | None) -> dict | None:
    """The page's record of the corrections a run honoured: the file, its rows
    (`[path, decision, other]`, in file order) and their digest (the page merges a digest's
    rows into the browser's marks once, so a mark the user takes back stays taken back)."""
    if overrides is None or not len(overrides):
        return None
    rows = [[r.path, r.decision, r.other] for r in overrides.rows]
    return {
        "file": str(overrides.file),
        "rows": rows,
        "digest": hashlib.sha1(json.dumps(rows).encode()).hexdigest()[:16],
    }


def _csp() -> str:
    """Only this page's own script (by hash) and script files beside it run; images from
    files beside it; nothing is fetched from a network."""
    digest = base64.b64encode(hashlib.sha256(APP_JS.encode("utf-8")).digest()).decode()
    return (
        "default-src 'none'; "
        f"script-src 'self' file: 'sha256-{digest}'; "
        "img-src 'self' file: data:; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'"
    )


def _counts_table(entries: list[dict]) -> str:
    e = html.escape
    head = (
        "<tr><th>threshold</th><th>kind</th><th>images</th><th>kept</th><th>removed</th>"
        "<th>exact copies</th><th>near-duplicates</th><th>by override</th>"
        "<th>cross-class pairs</th></tr>"
    )
    rows = []
    for t in entries:
        if t["missing"]:
            rows.append(
                f"<tr><td>{e(t['key'])}</td><td>{e(t['kind'])}</td>"
                '<td colspan="7">no keep list: this threshold did not finish</td></tr>'
            )
            continue
        cross = "not computed" if t.get("cross") is None else f"{t['cross']:,}"
        cells = [
            e(t["key"]),
            e(t["kind"]),
            f"{t['images']:,}",
            f"{t['kept']:,}",
            f"{t['removed']:,}",
            f"{t['exact']:,}",
            f"{t['near']:,}",
            f"{t['override']:,}",
            e(cross),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="counts">{head}{"".join(rows)}</table>'


def render_index(data: dict, output: Path, source_root: Path | None, entries: list[dict]) -> str:
    """The page's HTML: server-side text escaped with `html.escape`, the data as escaped
    JSON, the app as one inline script allowed by its hash."""
    e = html.escape
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = f" · source <code>{e(str(source_root))}</code>" if source_root is not None else ""
    honoured = data.get("overrides")
    if honoured:
        n = len(honoured["rows"])
        source += (
            f" · {n:,} correction{'s' if n != 1 else ''} honoured from "
            f"<code>{e(honoured['file'])}</code>"
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{e(_csp())}">
<meta name="referrer" content="no-referrer">
<title>latent-dedup review</title>
<style>{APP_CSS}</style>
</head>
<body>
<header>
<h1>Review what latent-dedup removed</h1>
<p class="muted">output <code>{e(str(output))}</code>{source} · written {e(written)}</p>
{_counts_table(entries)}
<details class="legend" open>
<summary>How to read and correct this page</summary>
<ul>
<li>Each row is one removed image (right) beside the kept image it duplicates (left), with
their <b>similarity</b> (the cosine in the class's similarity space; 1.0 for an exact copy)
and the <b>kind</b>: <i>exact</i> (identical decoded pixels: always removed), <i>near</i>, or
<i>override</i> (removed because an overrides.csv said so).</li>
<li><b>margin</b> = similarity &minus; the cosine the pair was decided at (the keep list's
<code>cosine</code> column): the threshold T itself for a cosine such as 0.95; for a budget
such as 1%, the pair's own threshold (the class's margin plus half of each image's local
level, at most the class's ceiling).
The smaller the margin, the closer the call: each view lists the smallest margins first,
then removals by override, exact copies last. Margins under {BORDERLINE} are shown in orange.</li>
<li><b>Cross-class pairs</b> (their own view) are near-identical images filed under two
classes: likely label errors. Their margin is over T; a budget's cross-class cosine is not
stored with the pairs, so there they are ordered by similarity without a margin. Marking one
<i>not a duplicate</i> takes it out of the cross-class table of the next run (cross-class
pairs never remove an image).</li>
<li><b>Train/test leakage</b> (its own view, the same at every threshold; only for a
source with split folders) lists each evaluation image (val, test) beside its copy in the
training split, with the pair's score and its margin over the split's calibrated threshold
(1.0 for an exact copy). Marking one <i>not a duplicate</i> says it is no leak: the next run
leaves it out of <code>leakage.csv</code> and of the no_leak gate.</li>
<li><b>Corrections</b>: <i>keep this</i> / <i>remove this</i> set an image's decision (at
every threshold); <i>not a duplicate</i> says the pair's two images are different pictures.
Your marks stay in this browser for this output folder while you page and filter (click a
pressed button again to undo). <b>Download overrides.csv</b> (columns
<code>path,decision,other</code>, paths relative to the source folder) and put it in the
output folder as <code>overrides.csv</code>, or pass <code>--overrides FILE</code>: the next
run honours it. The corrections the last run honoured are among your marks from the start,
so the download replaces the file without losing them. <b>Load overrides.csv</b> shows another
file's marks here.</li>
<li>Keys: &larr; and &rarr; page back and forward. Thumbnails are the 64&times;64 pixels the
decision saw, drawn at 128 px; under a removed image and its kept one, each file's own size
and bytes (which one is the original, which the smaller or recompressed copy: <code>--policy
quality</code> keeps the larger); <i>open</i> shows the original file.</li>
</ul>
</details>
</header>
<div class="toolbar" role="toolbar">
<label>threshold <select id="threshold"></select></label>
<label>view <select id="view"></select></label>
<span class="pager"><button id="first" type="button" title="first page">&laquo;</button><button id="prev" type="button" title="previous page (&larr;)">&lsaquo; prev</button>
<span id="pageinfo"></span>
<button id="next" type="button" title="next page (&rarr;)">next &rsaquo;</button><button id="last" type="button" title="last page">&raquo;</button></span>
<span class="marks"><span id="counter" class="counter">0 marks</span>
<button id="download" type="button">download overrides.csv</button>
<label class="filebutton">load overrides.csv <input id="load" type="file" accept=".csv,text/csv"></label>
<button id="clear" type="button">clear marks</button></span>
</div>
<div id="status" class="status" role="status"></div>
<div id="viewinfo" class="viewinfo"></div>
<main id="pairs"></main>
<div class="toolbar bottom"><span id="pageinfo2"></span></div>
<pre id="selftest" hidden></pre>
<noscript><p class="status">This page needs JavaScript to show the pairs; the keep lists are
in <code>keep_lists/</code> of the output folder.</p></noscript>
<script type="application/json" id="review-data">{script_json(data)}</script>
<script>{APP_JS}</script>
</body>
</html>
"""


APP_CSS = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1d1f23;--muted:#5f6670;--line:#dfe2e6;
--card:#f6f7f9;--accent:#0b62c4;--warn:#b35400;--mark:#fff3c4;--kept:#1b7f3b;--gone:#b3261e}
@media (prefers-color-scheme:dark){:root{--bg:#15171b;--fg:#e6e8eb;--muted:#9aa3ad;
--line:#30343a;--card:#1d2025;--accent:#6aa9ff;--warn:#f0a040;--mark:#3b3520;
--kept:#5cc27f;--gone:#ff7b72}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{padding:14px 20px 4px}
h1{font-size:20px;margin:0 0 4px}
code,.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.muted{color:var(--muted)}
table.counts{border-collapse:collapse;margin:10px 0}
table.counts th,table.counts td{border-bottom:1px solid var(--line);padding:3px 10px;
text-align:right;white-space:nowrap}
table.counts th:first-child,table.counts td:first-child,table.counts td:nth-child(2),
table.counts th:nth-child(2){text-align:left}
.legend{max-width:1100px;margin:6px 0 10px}.legend ul{margin:6px 0;padding-left:20px}
.toolbar{position:sticky;top:0;z-index:2;background:var(--bg);border-bottom:1px solid var(--line);
padding:8px 20px;display:flex;flex-wrap:wrap;gap:8px 12px;align-items:center}
.toolbar.bottom{position:static;border-bottom:0;border-top:1px solid var(--line)}
.toolbar select{max-width:18em}
.marks{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-left:auto}
.counter{font-weight:600}
button,.filebutton{font:inherit;padding:3px 10px;border:1px solid var(--line);border-radius:6px;
background:var(--card);color:var(--fg);cursor:pointer}
button:disabled{opacity:.45;cursor:default}
button[aria-pressed="true"]{background:var(--accent);border-color:var(--accent);color:#fff}
.filebutton input{display:none}
.status{padding:6px 20px;color:var(--muted)}.status:empty{display:none}
.viewinfo{padding:4px 20px;color:var(--muted)}
.pair{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr) 250px;gap:14px;
padding:10px 20px;border-bottom:1px solid var(--line)}
.pair.marked{background:var(--mark)}
.side{display:flex;gap:10px;min-width:0}
.thumb{width:128px;height:128px;flex:none;image-rendering:pixelated;background:var(--card);
border:1px solid var(--line)}
.thumb.original{object-fit:contain;image-rendering:auto}
.thumb.missing{display:flex;align-items:center;justify-content:center;text-align:center;
font-size:11px;color:var(--muted)}
.text{min-width:0;display:flex;flex-direction:column;gap:4px}
.path{overflow-wrap:anywhere;word-break:break-word}
.dims{font-size:11px;color:var(--muted)}
.role{font-size:11px;font-weight:700;letter-spacing:.05em;text-transform:uppercase}
.role.kept{color:var(--kept)}.role.removed{color:var(--gone)}
.role .yours{color:var(--accent);text-transform:none;letter-spacing:0;margin-left:6px}
.cls{color:var(--muted);overflow-wrap:anywhere}
.buttons{display:flex;flex-wrap:wrap;gap:6px}
.info{display:flex;flex-direction:column;gap:4px}
.num{font-variant-numeric:tabular-nums}
.borderline{color:var(--warn);font-weight:700}
.kind{display:inline-block;padding:0 7px;border:1px solid var(--line);border-radius:9px;
font-size:12px;width:max-content}
.kind.exact{border-color:var(--gone)}.kind.override{border-color:var(--accent)}
.side.none{align-items:center;justify-content:center;color:var(--muted);border:1px dashed var(--line);
min-height:128px}
.empty{padding:24px 20px;color:var(--muted)}
a{color:var(--accent)}
@media (max-width:900px){.pair{grid-template-columns:minmax(0,1fr)}}
"""


# The app. Every element is made with DOM calls; names are only ever set as textContent,
# title, alt or a URL property, never parsed as HTML.
APP_JS = r"""
(() => {
"use strict";
const DATA = JSON.parse(document.getElementById("review-data").textContent);
const STORE = "latent-dedup-review:" + DATA.store;
const $ = (id) => document.getElementById(id);
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("aria-") || k.startsWith("data-")) e.setAttribute(k, String(v));
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

// ------------------------------------------------------------------ page data
const cache = new Map();
const waiting = new Map();
window.__reviewData = (key, rows) => {
  cache.set(key, rows);
  const w = waiting.get(key);
  if (w) { waiting.delete(key); w.resolve(rows); }
};
if (DATA.first) cache.set(DATA.first.key, DATA.first.rows);
function loadPage(key) {
  if (cache.has(key)) return Promise.resolve(cache.get(key));
  if (waiting.has(key)) return waiting.get(key).promise;
  const w = {};
  w.promise = new Promise((resolve, reject) => { w.resolve = resolve; w.reject = reject; });
  waiting.set(key, w);
  const s = document.createElement("script");
  s.src = DATA.pages + "/" + key + ".js";
  s.onerror = () => { waiting.delete(key); w.reject(new Error("page data missing: " + s.src)); };
  document.head.append(s);
  return w.promise;
}

// ------------------------------------------------------------------ marks and overrides
function emptyMarks() { return { decisions: new Map(), pairs: new Map() }; }
const marks = emptyMarks();
const pairKey = (a, b) => a + "\u0000" + b;
function hasPair(m, a, b) { return m.pairs.has(pairKey(a, b)) || m.pairs.has(pairKey(b, a)); }
function markCount(m) { return m.decisions.size + m.pairs.size; }
let honoured = "";  // digest of the honoured overrides already merged into the marks
function loadMarks() {
  let saved = null;
  try {
    saved = JSON.parse(localStorage.getItem(STORE) || "null");
  } catch (err) { /* nothing saved, or storage unavailable */ }
  if (saved) {
    for (const [p, d] of saved.decisions || []) if (d === "keep" || d === "remove") marks.decisions.set(String(p), d);
    for (const [a, b] of saved.pairs || []) marks.pairs.set(pairKey(String(a), String(b)), [String(a), String(b)]);
    honoured = String(saved.honoured || "");
  }
  const file = DATA.overrides;
  if (!file || file.digest === honoured) return;
  // The corrections the last run honoured, merged once per version of the file: a download
  // from a fresh browser carries them, and a mark taken back here stays taken back. A path
  // the user already marked here keeps the mark made here.
  const added = mergeRows(file.rows, marks);
  honoured = file.digest;
  saveMarks();
  if (added) {
    setStatus("added " + added + " of the " + file.rows.length + " corrections in " + file.file +
      " (honoured by the last run) to your marks: a download carries them");
  }
}
function mergeRows(rows, m) {
  let added = 0;
  for (const [path, decision, other] of rows) {
    if ((decision === "keep" || decision === "remove") && !m.decisions.has(path)) {
      m.decisions.set(path, decision); added++;
    } else if (decision === "not_duplicate" && other && !hasPair(m, path, other)) {
      m.pairs.set(pairKey(path, other), [path, other]); added++;
    }
  }
  return added;
}
function saveMarks() {
  try {
    localStorage.setItem(STORE, JSON.stringify({
      decisions: Array.from(marks.decisions), pairs: Array.from(marks.pairs.values()), honoured,
    }));
  } catch (err) {
    setStatus("this browser does not keep marks for files: download overrides.csv before closing the page");
  }
}
function csvField(value) {
  const s = String(value);
  return /[",\r\n]|^\s|\s$/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function buildCsv(m) {
  const lines = ["path,decision,other"];
  const decisions = Array.from(m.decisions).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  for (const [p, d] of decisions) lines.push(csvField(p) + "," + d + ",");
  const pairs = Array.from(m.pairs.values()).sort((a, b) => (pairKey(a[0], a[1]) < pairKey(b[0], b[1]) ? -1 : 1));
  for (const [a, b] of pairs) lines.push(csvField(a) + ",not_duplicate," + csvField(b));
  return lines.join("\r\n") + "\r\n";
}
function parseCsv(text) {  // RFC 4180: quoted fields may hold commas, quotes and line breaks
  const rows = [];
  let row = [], field = "", i = 0, quoted = false;
  if (text.charCodeAt(0) === 0xfeff) i = 1;
  for (; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') { field += '"'; i++; } else quoted = false;
      } else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\r" || c === "\n") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); rows.push(row); row = []; field = "";
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows;
}
function importRows(rows, m) {
  const errors = [];
  let added = 0;
  const head = (rows[0] || []).map((h) => h.trim().toLowerCase());
  if (head[0] !== "path" || head[1] !== "decision") {
    return { added, errors: ["the first line must be the header path,decision,other"] };
  }
  rows.slice(1).forEach((r, k) => {
    const at = "row " + (k + 2);
    if (r.every((v) => v.trim() === "")) return;
    const path = r[0] || "", decision = (r[1] || "").trim(), other = r[2] || "";
    if (!path) errors.push(at + ": no path");
    else if (decision === "keep" || decision === "remove") { m.decisions.set(path, decision); added++; }
    else if (decision === "not_duplicate") {
      if (!other) errors.push(at + ": not_duplicate needs the other image in column other");
      else { if (!hasPair(m, path, other)) m.pairs.set(pairKey(path, other), [path, other]); added++; }
    } else errors.push(at + ": unknown decision " + JSON.stringify(decision));
  });
  return { added, errors };
}
function download() {
  const blob = new Blob([buildCsv(marks)], { type: "text/csv;charset=utf-8" });
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: "overrides.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}
function setDecision(path, decision) {
  if (marks.decisions.get(path) === decision) marks.decisions.delete(path);
  else marks.decisions.set(path, decision);
  changed();
}
function toggleNotDuplicate(path, other) {
  if (hasPair(marks, path, other)) { marks.pairs.delete(pairKey(path, other)); marks.pairs.delete(pairKey(other, path)); }
  else marks.pairs.set(pairKey(path, other), [path, other]);
  changed();
}
let cards = [];
function changed() { saveMarks(); updateCounter(); for (const c of cards) c(); }
function updateCounter() {
  let keep = 0, remove = 0;
  for (const d of marks.decisions.values()) { if (d === "keep") keep++; else remove++; }
  const n = markCount(marks);
  $("counter").textContent = n === 1 ? "1 mark" : n + " marks";
  $("counter").title = keep + " keep, " + remove + " remove, " + marks.pairs.size + " not a duplicate";
  $("download").disabled = n === 0;
  $("clear").disabled = n === 0;
}
function setStatus(text) { $("status").textContent = text; }

// ------------------------------------------------------------------ state in the URL
const state = { t: 0, v: "all", p: 0 };
function threshold() { return DATA.thresholds[state.t]; }
function pagesOf(T, v) {
  if (v === "l") return DATA.leakage ? DATA.leakage.pages : 0;
  if (!T || T.missing) return 0;
  if (v === "all") return T.pages.all;
  if (v === "x") return T.pages.x;
  return T.classPages[Number(v.slice(1))] || 0;
}
function readHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  const t = parseInt(q.get("t") || "0", 10);
  state.t = Number.isInteger(t) && t >= 0 && t < DATA.thresholds.length ? t : 0;
  const v = q.get("v") || "all";
  const k = /^c(\d+)$/.exec(v);
  state.v = v === "all" || v === "x" || (v === "l" && DATA.leakage) || (k && Number(k[1]) < DATA.classes.length) ? v : "all";
  const p = parseInt(q.get("p") || "0", 10);
  state.p = Number.isInteger(p) && p >= 0 ? p : 0;
}
function go(t, v, p) {
  const hash = "#t=" + t + "&v=" + v + "&p=" + p;
  if (location.hash === hash) render(); else location.hash = hash;
}

// ------------------------------------------------------------------ drawing
function fmt(x, sign) {
  if (x === null || x === undefined) return "n/a";
  return (sign && x >= 0 ? "+" : "") + x.toFixed(4);
}
function fromSource(path, className, title) {
  // An image drawn from the source folder; where that folder is not (the output opened on
  // another machine, the source moved), a box that says so instead of a broken image.
  const img = el("img", {
    class: className, width: 128, height: 128, loading: "lazy", decoding: "async",
    alt: path, title: title,
    src: DATA.source + "/" + path.split("/").map(encodeURIComponent).join("/"),
  });
  img.addEventListener("error", () => img.replaceWith(el("div", {
    class: "thumb missing", title: "not found: " + DATA.source + "/" + path,
    text: "source file not found",
  })), { once: true });
  return img;
}
function thumb(hash, path) {
  if (hash === "=" && DATA.source && path) {  // the source file holds the decision's pixels
    return fromSource(path, "thumb", "the source file: its own pixels are those the decision saw");
  }
  if (hash === "=") hash = null;
  if (!hash && DATA.source && path) {  // beyond the thumbnails made: the source file itself
    return fromSource(
      path, "thumb original", "the source file (thumbnails are made for the first pages only)"
    );
  }
  if (!hash) return el("div", { class: "thumb", title: "no thumbnail" });
  const img = el("img", {
    class: "thumb", width: 128, height: 128, loading: "lazy", decoding: "async",
    alt: path, src: DATA.thumbs + "/" + hash.slice(0, 2) + "/" + hash + ".png",
  });
  return img;
}
function originalLink(path) {
  if (!DATA.source || !path) return null;
  return el("a", {
    href: DATA.source + "/" + path.split("/").map(encodeURIComponent).join("/"),
    target: "_blank", rel: "noopener noreferrer", text: "open",
  });
}
function side(role, path, hash, className, size) {
  const roleLine = el("div", { class: "role " + role, text: role });
  const yours = el("span", { class: "yours" });
  roleLine.append(yours);
  const keep = el("button", { type: "button", text: "keep this", "aria-pressed": "false" });
  const remove = el("button", { type: "button", text: "remove this", "aria-pressed": "false" });
  keep.addEventListener("click", () => setDecision(path, "keep"));
  remove.addEventListener("click", () => setDecision(path, "remove"));
  const text = el("div", { class: "text" }, roleLine,
    el("div", { class: "path", title: path, text: path }),
    size ? el("div", { class: "dims", text: size }) : null,
    className === null ? null : el("div", { class: "cls", title: className, text: "class " + className }),
    el("div", { class: "buttons" }, keep, remove, originalLink(path)));
  const box = el("div", { class: "side" }, thumb(hash, path), text);
  const update = () => {
    const d = marks.decisions.get(path);
    keep.setAttribute("aria-pressed", String(d === "keep"));
    remove.setAttribute("aria-pressed", String(d === "remove"));
    yours.textContent = d ? "your mark: " + d : "";
    return Boolean(d);
  };
  return { box, update };
}
const KINDS = { exact: "exact copy", near: "near-duplicate", override: "removed by override" };
function info(similarity, margin, kind) {
  const m = el("div", { class: "num", text: "margin " + fmt(margin, true) });
  if (margin !== null && margin < DATA.borderline) m.classList.add("borderline");
  return el("div", { class: "info" },
    el("div", { class: "num", text: "similarity " + fmt(similarity, false) }), m,
    el("span", { class: "kind " + kind, text: KINDS[kind] || kind }));
}
function pairCard(row) {
  const [cls, path, keptPath, thumbRemoved, thumbKept, similarity, margin, kind, size, keptSize] = row;
  const kept = keptPath
    ? side("kept", keptPath, thumbKept, null, keptSize)
    : { box: el("div", { class: "side none", text: "no kept image named" }), update: () => false };
  const removed = side("removed", path, thumbRemoved, null, size);
  const notDup = el("button", { type: "button", text: "not a duplicate", "aria-pressed": "false" });
  notDup.addEventListener("click", () => toggleNotDuplicate(path, keptPath));
  notDup.disabled = !keptPath;
  const meta = info(similarity, margin, kind);
  meta.append(el("div", { class: "cls", title: DATA.classes[cls], text: "class " + DATA.classes[cls] }), notDup);
  const card = el("article", { class: "pair" }, kept.box, removed.box, meta);
  const update = () => {
    const a = kept.update(), b = removed.update(), c = Boolean(keptPath) && hasPair(marks, path, keptPath);
    notDup.setAttribute("aria-pressed", String(c));
    card.classList.toggle("marked", a || b || c);
  };
  update();
  cards.push(update);
  return card;
}
function crossCard(row) {
  const [clsA, pathA, clsB, pathB, thumbA, thumbB, similarity, margin, kind] = row;
  const a = side("class a", pathA, thumbA, DATA.classes[clsA]);
  const b = side("class b", pathB, thumbB, DATA.classes[clsB]);
  const notDup = el("button", { type: "button", text: "not a duplicate", "aria-pressed": "false" });
  notDup.addEventListener("click", () => toggleNotDuplicate(pathA, pathB));
  const meta = info(similarity, margin, kind);
  meta.append(notDup);
  const card = el("article", { class: "pair" }, a.box, b.box, meta);
  const update = () => {
    const x = a.update(), y = b.update(), z = hasPair(marks, pathA, pathB);
    notDup.setAttribute("aria-pressed", String(z));
    card.classList.toggle("marked", x || y || z);
  };
  update();
  cards.push(update);
  return card;
}
function leakCard(row) {
  const [split, cls, path, trainCls, trainPath, thumbEval, thumbTrain, similarity, margin, kind] = row;
  const a = side(split + " image", path, thumbEval, DATA.classes[cls]);
  const b = side("copy in train", trainPath, thumbTrain, DATA.classes[trainCls]);
  const notDup = el("button", { type: "button", text: "not a duplicate", "aria-pressed": "false" });
  notDup.addEventListener("click", () => toggleNotDuplicate(path, trainPath));
  const meta = info(similarity, margin, kind);
  meta.append(notDup);
  const card = el("article", { class: "pair" }, a.box, b.box, meta);
  const update = () => {
    const x = a.update(), y = b.update(), z = hasPair(marks, path, trainPath);
    notDup.setAttribute("aria-pressed", String(z));
    card.classList.toggle("marked", x || y || z);
  };
  update();
  cards.push(update);
  return card;
}
function fillSelects() {
  const tSel = $("threshold");
  tSel.replaceChildren(...DATA.thresholds.map((T, i) => el("option", {
    value: String(i), selected: i === state.t,
    text: "T=" + T.key + (T.missing ? " (missing)" : " · " + T.removed.toLocaleString() + " removed"),
  })));
  const T = threshold();
  const options = [el("option", {
    value: "all", text: "all classes" + (T && !T.missing ? " (" + T.removed.toLocaleString() + ")" : ""),
  })];
  DATA.classes.forEach((name, k) => {
    const c = T && !T.missing ? T.classCounts[k] : null;
    const removed = c ? c[0] - c[1] : 0;
    options.push(el("option", { value: "c" + k, text: name + (c ? " (" + removed.toLocaleString() + ")" : "") }));
  });
  const cross = T && !T.missing && T.cross !== null ? " (" + T.cross.toLocaleString() + ")" : "";
  options.push(el("option", { value: "x", text: "cross-class pairs" + cross }));
  if (DATA.leakage) {
    options.push(el("option", { value: "l", text: "train/test leakage (" + DATA.leakage.pairs.toLocaleString() + ")" }));
  }
  $("view").replaceChildren(...options);
  $("view").value = state.v;
}
function describeView(T) {
  if (state.v === "l") {
    const L = DATA.leakage;
    const per = Object.entries(L.flagged).map(([s, n]) => n.toLocaleString() + " " + s).join(", ");
    return L.pairs
      ? "Evaluation images with a copy in train: " + per + " (" + L.pairs.toLocaleString() +
        " pairs), each beside its training copy, smallest margin first; the same at every threshold."
      : "No evaluation image has a copy in train.";
  }
  if (!T || T.missing) return "No keep list for this threshold: its run did not finish.";
  if (state.v === "x") {
    return T.cross === null
      ? "Cross-class pairs were not computed for this threshold."
      : T.cross.toLocaleString() + " pairs of near-identical images in different classes (likely label errors), at T=" + T.key + ".";
  }
  const rows = state.v === "all" ? null : T.classCounts[Number(state.v.slice(1))];
  if (!rows) {
    return T.removed.toLocaleString() + " of " + T.images.toLocaleString() + " images removed at T=" + T.key +
      " (" + T.exact.toLocaleString() + " exact copies, " + T.near.toLocaleString() + " near-duplicates" +
      (T.override ? ", " + T.override.toLocaleString() + " by override" : "") + "), smallest margin first.";
  }
  const [images, kept, exact, near, override] = rows;
  return "class " + DATA.classes[Number(state.v.slice(1))] + ": " + (images - kept).toLocaleString() + " of " +
    images.toLocaleString() + " images removed at T=" + T.key + " (" + exact.toLocaleString() +
    " exact copies, " + near.toLocaleString() + " near-duplicates" +
    (override ? ", " + override.toLocaleString() + " by override" : "") + "), smallest margin first.";
}
let drawing = 0;
function render() {
  readHash();
  fillSelects();
  const T = threshold();
  const pages = pagesOf(T, state.v);
  if (pages && state.p >= pages) state.p = pages - 1;
  const label = pages ? "page " + (state.p + 1) + " of " + pages : "no pages";
  $("pageinfo").textContent = label;
  $("pageinfo2").textContent = label;
  $("first").disabled = $("prev").disabled = state.p <= 0;
  $("next").disabled = $("last").disabled = state.p >= pages - 1;
  $("viewinfo").textContent = describeView(T);
  const list = $("pairs");
  const token = ++drawing;
  if (!pages) {
    cards = [];
    const empty = state.v === "x" ? "No cross-class pairs." : state.v === "l" ? "No evaluation image has a copy in train." : "Nothing removed here.";
    list.replaceChildren(el("div", { class: "empty", text: empty }));
    return;
  }
  const key = state.v === "l" ? "L/" + state.p : state.t + "/" + state.v + "/" + state.p;
  if (!cache.has(key)) list.replaceChildren(el("div", { class: "empty", text: "loading…" }));
  loadPage(key).then((rows) => {
    if (token !== drawing) return;
    cards = [];
    const make = state.v === "x" ? crossCard : state.v === "l" ? leakCard : pairCard;
    const frag = document.createDocumentFragment();
    for (const row of rows) frag.append(make(row));
    list.replaceChildren(frag);
  }).catch((err) => {
    if (token !== drawing) return;
    list.replaceChildren(el("div", { class: "empty", text: String(err.message || err) }));
  });
}

// ------------------------------------------------------------------ self-test (#selftest)
function selftest() {
  const names = ['cls/a, b.png', 'cls/"q".png', "cls/new\nline.png", 'cls/"\x3e\x3cscript\x3ealert(1)\x3c/script\x3e.png', "cls/k.png", " cls/space .png"];
  const m = emptyMarks();
  m.decisions.set(names[0], "keep");
  m.decisions.set(names[1], "remove");
  m.decisions.set(names[2], "remove");
  m.decisions.set(names[5], "keep");
  m.pairs.set(pairKey(names[3], names[4]), [names[3], names[4]]);
  const csv = buildCsv(m);
  const rows = parseCsv(csv);
  const again = emptyMarks();
  const result = importRows(rows, again);
  const bad = importRows(parseCsv("path,decision,other\r\nx.png,maybe,\r\n,keep,\r\ny.png,not_duplicate,\r\n"), emptyMarks());
  const out = $("selftest");
  out.textContent = JSON.stringify({
    csv, rows, roundtrip: buildCsv(again) === csv, added: result.added, errors: result.errors,
    badErrors: bad.errors, thresholds: DATA.thresholds.map((T) => T.key), firstRows: DATA.first.rows.length,
  });
  out.hidden = false;
}

// ------------------------------------------------------------------ wiring
$("threshold").addEventListener("change", (ev) => go(Number(ev.target.value), state.v, 0));
$("view").addEventListener("change", (ev) => go(state.t, ev.target.value, 0));
$("first").addEventListener("click", () => go(state.t, state.v, 0));
$("prev").addEventListener("click", () => go(state.t, state.v, Math.max(0, state.p - 1)));
$("next").addEventListener("click", () => go(state.t, state.v, state.p + 1));
$("last").addEventListener("click", () => go(state.t, state.v, Math.max(0, pagesOf(threshold(), state.v) - 1)));
$("download").addEventListener("click", download);
$("clear").addEventListener("click", () => {
  if (!confirm("Clear all " + markCount(marks) + " marks? Download overrides.csv first to keep them.")) return;
  marks.decisions.clear();
  marks.pairs.clear();
  changed();
  setStatus("marks cleared");
});
$("load").addEventListener("change", (ev) => {
  const file = ev.target.files && ev.target.files[0];
  if (!file) return;
  file.text().then((text) => {
    const result = importRows(parseCsv(text), marks);
    changed();
    setStatus("loaded " + result.added + " marks from " + file.name +
      (result.errors.length ? "; skipped: " + result.errors.slice(0, 5).join("; ") + (result.errors.length > 5 ? "; …" : "") : ""));
    ev.target.value = "";
  });
});
document.addEventListener("keydown", (ev) => {
  const tag = (ev.target && ev.target.tagName) || "";
  if (ev.altKey || ev.ctrlKey || ev.metaKey || tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
  if (ev.key === "ArrowRight" && !$("next").disabled) go(state.t, state.v, state.p + 1);
  if (ev.key === "ArrowLeft" && !$("prev").disabled) go(state.t, state.v, state.p - 1);
});
window.addEventListener("hashchange", render);
loadMarks();
updateCounter();
if (location.hash === "#selftest") selftest();
else render();
})();
"""

if "</script" in APP_JS.lower() or "<!--" in APP_JS:  # would end the inline element early
    raise AssertionError("APP_JS must not contain '</script' or '<!--'")
