"""One class's catalog: every image file of the class decoded once to 64x64 RGB.

Incremental by construction: a file whose path, size and modification time match the
previous catalog keeps its row and its stored pixels, without being read, provided the
store is the one written with that table (`store_matches`: its stat as written, else its
digest), so a pixel store out of step with its table is never trusted. Only new or changed files are read, hashed and decoded, and
16-bit and float images always (rare, and earlier versions stretched them per image).

Image ids are unique within the whole dataset and stable: a digest of the class key and
the file's content hash (byte-identical files of a class get -2, -3... in path order), so
an image keeps its id when renamed or re-scanned, and the same picture filed under two
classes gets two ids (two labelled examples), as does one in two splits (the key holds the
split: `splits.split_class_key`). Each row carries its split (`split`; `splits.IMPLICIT`
for an unsplit source) and its class folder's name (`class`, without the split).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from dedup_assets.core.data.atomic_io import write_csv
from dedup_assets.core.data.image_folder import (
    SIXTEEN_BIT_MODES,
    DecodedImage,
    FolderScan,
    ImageFile,
    pixel_hash,
    read_and_decode,
    reason_kind,
    unique_ids,
)
from dedup_assets.core.data.mapped import take_rows
from dedup_assets.core.data.splits import key_split

CATALOG_SCHEMA = {
    "image_id": pl.String,
    "split": pl.String,
    "class": pl.String,
    "class_key": pl.String,
    "path": pl.String,
    "raw_path": pl.Binary,
    "size_bytes": pl.Int64,
    "mtime_ns": pl.Int64,
    "width": pl.Int64,
    "height": pl.Int64,
    "mode": pl.String,
    "content_hash": pl.String,
    "pixel_hash": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "note": pl.String,
    "row": pl.Int64,
}
QUARANTINE_SCHEMA = {
    "path": pl.String,
    "class": pl.String,
    "action": pl.String,
    "reason": pl.String,
}


@dataclass(frozen=True)
class ClassCatalog:
    """A class's table (every file, decoded or not), pixel store and quarantine rows."""

    table: pl.DataFrame
    pixels: np.ndarray
    quarantine: pl.DataFrame
    reused: int
    decoded: int

    @property
    def images(self) -> int:
        """Decoded images (status ok): counted in numpy, a Series comparison is a query."""
        return int((self.table.get_column("status").to_numpy() == "ok").sum())

    def digest(self) -> str:
        """Content digest of the class: which images, with which pixels, under which paths."""
        return class_content_digest(self.table)


DECODE_CHUNK = 8192


def class_content_digest(table: pl.DataFrame) -> str:
    """The digest of the class's decoded images (id, pixel hash, path) in path order. In
    Python, not polars: for a class of 20 a filter and a sort were 0.3 ms of polars' calls
    (a path sorts the same as polars sorts it: by code point, UTF-8's byte order)."""
    rows = sorted(
        (path, image_id, px)
        for image_id, px, path, status in zip(
            table["image_id"].to_list(),
            table["pixel_hash"].to_list(),
            table["path"].to_list(),
            table["status"].to_list(),
            strict=True,
        )
        if status == "ok"
    )
    h = hashlib.sha1()
    for path, image_id, px in rows:
        h.update(f"{image_id}\0{px}\0{path}\n".encode())
    return h.hexdigest()[:16]


def _image_ids(
    class_key: str,
    content_hashes: list[str],
    paths: list[str],
    raw_paths: list[bytes] | None = None,
    earlier: pl.DataFrame | None = None,
    links: list[bool] | None = None,
) -> list[str]:
    """Each file's image id: its class-salted content hash, suffixed -2, -3... for
    byte-identical files (`image_folder.unique_ids`). With the class's `earlier` catalog, a
    file it held with the same bytes keeps the id it had, and a new one takes the first
    suffix no earlier file had: decisions are carried by id (`class_keep_lists`), so a new
    copy whose path sorts first must not take over the id, and the kept decision, of the
    unchanged file it copies (nor a deleted file's)."""
    salted = [
        hashlib.sha1(f"{class_key}/{h}".encode()).hexdigest()[:16] if h else p
        for h, p in zip(content_hashes, paths, strict=True)
    ]
    link = links if links is not None else [False] * len(paths)
    if earlier is None or earlier.height == 0 or raw_paths is None:
        return unique_ids(salted, paths, link)
    had = {
        (raw, h): i
        for raw, h, i in earlier.select("raw_path", "content_hash", "image_id").iter_rows()
        if h and i
    }
    ids: list[str | None] = [
        had.get((raw, h)) if h else None for raw, h in zip(raw_paths, content_hashes, strict=True)
    ]
    if all(i is not None for i in ids):
        return ids  # type: ignore[return-value]
    taken = set(earlier["image_id"].drop_nulls().to_list()) | {i for i in ids if i}
    for at in sorted(
        (k for k, i in enumerate(ids) if i is None), key=lambda k: (salted[k], link[k], paths[k])
    ):
        candidate, n = salted[at], 1
        while candidate in taken:
            n += 1
            candidate = f"{salted[at]}-{n}"
        ids[at] = candidate
        taken.add(candidate)
    return ids  # type: ignore[return-value]


def write_quarantine(quarantine: pl.DataFrame, path: Path) -> None:
    """A class's quarantine table as CSV; the usual empty one as its header line alone,
    the bytes polars writes (its writer cost 0.6 ms a class, most of a small class's)."""
    if quarantine.height:
        quarantine.write_csv(path)
    else:
        Path(path).write_text(",".join(quarantine.columns) + "\n", encoding="utf-8")


ROWS_DIGEST = "rows:"
"""The prefix of a pixel store's digest taken from its rows' pixel hashes (`rows_digest`);
a store recorded without it was digested as bytes (sha1 of the file)."""


def rows_digest(pixel_hashes: Iterable[str | None], shape: tuple[int, ...], dtype: str) -> str:
    """A pixel store's digest from each row's `image_folder.pixel_hash` (in store order),
    its shape and type: taken from the catalog's hashes when the store is written (the
    sha1 of 38 MB, and a copy of it for the hash, were a fifth of a EuroSAT class's
    update), and from the rows themselves when a store is checked (`pixels_digest`)."""
    h = hashlib.sha1(f"{tuple(shape)} {dtype}\n".encode())
    h.update("\n".join(x or "" for x in pixel_hashes).encode())
    return ROWS_DIGEST + h.hexdigest()[:16]


def pixels_digest(path: Path, like: str = "") -> str:
    """The digest of a stored pixel store, of the kind `like` (a recorded digest) is: its
    rows hashed one by one for a `rows_digest`, else the sha1 of its bytes (a store
    recorded before)."""
    if like.startswith(ROWS_DIGEST):
        store = np.load(path, mmap_mode="r", allow_pickle=False)
        if store.ndim == 0:
            return ""
        return rows_digest((pixel_hash(row) for row in store), store.shape, str(store.dtype))
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_pixels(path: Path, pixels: np.ndarray, pixel_hashes: Iterable[str | None]) -> str:
    """Write a pixel store (.npy) of rows whose pixel hashes are `pixel_hashes` (the
    catalog's, in store order); its `rows_digest`."""
    pixels = np.ascontiguousarray(pixels)
    with open(path, "wb") as fh:
        np.save(fh, pixels)
    return rows_digest(pixel_hashes, pixels.shape, str(pixels.dtype))


def store_pixel_hashes(table: pl.DataFrame) -> list[str | None]:
    """The pixel hashes of a class catalog's stored rows, in store order.

    On the columns as Series, not a frame's `filter` and `sort`: those go through polars's
    query engine, about 0.5 ms a call whatever the size, 8% of a 20-image class's images
    step (1,000 such classes a run)."""
    row = table.get_column("row")
    if row.null_count():  # rows without a store row (quarantined): `is_not_null` is a query
        stored = row.is_not_null()
        rows = row.filter(stored).to_numpy()
        hashes = table.get_column("pixel_hash").filter(stored).to_list()
    else:
        rows, hashes = row.to_numpy(), table.get_column("pixel_hash").to_list()
    if len(rows) < 2 or bool((rows[1:] > rows[:-1]).all()):  # in store order already
        return hashes
    return [hashes[i] for i in np.argsort(rows, kind="stable").tolist()]


def store_stat(path: Path) -> list[int]:
    """What a store's stat says of it: size, modification and change times, inode and
    device (a write changes the change time, which no one can set back)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def store_matches(path: Path, recorded: dict) -> bool:
    """Whether the store at `path` is the one `recorded` (a class summary) was written with:
    the same stat as when written (the file was written once, atomically; an edit in place
    changes its change time), else the same digest (a copied output folder: other inodes)."""
    if not recorded.get("pixels_digest"):
        return False
    if recorded.get("pixels_stat") == store_stat(path):
        return True
    return pixels_digest(path, recorded["pixels_digest"]) == recorded["pixels_digest"]


DecodedAhead = Mapping[bytes, tuple[int, int, DecodedImage]]
"""Files decoded earlier in this run, by raw path: (size, modification time in ns, as
the decoder's scan saw them) and what decoding gave."""


def decoded_files(
    root: str | Path, files: list[ImageFile], ahead: DecodedAhead | None, max_file_bytes: int
) -> list[DecodedImage]:
    """`read_and_decode` of `files`, where a file of `ahead` with the scan's size and
    modification time is taken as it was decoded (the same function on the same bytes, so
    the same result) and only the rest read now."""
    if not ahead:
        return read_and_decode(root, files, max_file_bytes=max_file_bytes)
    out: list[DecodedImage | None] = [None] * len(files)
    rest: list[int] = []
    for i, f in enumerate(files):
        got = ahead.get(f.raw_path)
        if got is not None and got[0] == f.size and got[1] == f.mtime_ns and f.mtime_ns >= 0:
            out[i] = got[2]
        else:
            rest.append(i)
    if rest:
        read = read_and_decode(root, [files[i] for i in rest], max_file_bytes=max_file_bytes)
        for i, d in zip(rest, read, strict=True):
            out[i] = d
    return out  # type: ignore[return-value] - every slot filled


_DECODED_SCHEMA = {
    "at": pl.Int64,
    "content_hash": pl.String,
    "size_bytes": pl.Int64,
    "width": pl.Int64,
    "height": pl.Int64,
    "mode": pl.String,
    "pixel_hash": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "note": pl.String,
}


def update_class_catalog(
    root: str | Path,
    scan: FolderScan,
    previous: pl.DataFrame | None,
    previous_pixels: np.ndarray | None,
    *,
    max_file_bytes: int,
    full: bool = False,
    ahead: DecodedAhead | None = None,
) -> ClassCatalog:
    """Catalog one class from its scan, reusing the previous catalog where files are
    unchanged (unless `full`). The caller vouches that `previous_pixels` is the store
    written with `previous` (see `pixels_digest`). `ahead` holds files this run decoded
    already (a first run's decoder, `predecode`): each is taken as decoded now where its
    path, size and modification time are the scan's (`decoded_files`)."""
    files = scan.files
    listing = None
    reused = pl.DataFrame(schema=_DECODED_SCHEMA | {"row": pl.Int64})
    if previous is not None and previous_pixels is not None and not full:
        listing = pl.DataFrame(
            {
                "at": np.arange(len(files), dtype=np.int64),
                "raw_path": [f.raw_path for f in files],
                "size": [f.size for f in files],
                "mtime": [f.mtime_ns for f in files],
            },
            schema={"at": pl.Int64, "raw_path": pl.Binary, "size": pl.Int64, "mtime": pl.Int64},
        )
        reused = (
            listing.join(previous.filter(pl.col("status") == "ok"), on="raw_path")
            .filter(
                (pl.col("size") == pl.col("size_bytes"))
                & (pl.col("mtime") == pl.col("mtime_ns"))
                & (pl.col("mtime") >= 0)
                & (pl.col("row") < len(previous_pixels))
                & ~pl.col("mode").is_in([*SIXTEEN_BIT_MODES, "F"])
            )
            .select(*_DECODED_SCHEMA, "row")
        )
    todo = np.setdiff1d(np.arange(len(files)), reused["at"].to_numpy())
    # Decoded DECODE_CHUNK files at a time straight into one store (a slot per file):
    # memory is the store plus one chunk, not a list of every decoded image beside it.
    store = np.empty((len(files), 64, 64, 3), dtype=np.uint8)
    meta: dict[str, list] = {name: [] for name in _DECODED_SCHEMA if name != "at"}
    for start in range(0, len(todo), DECODE_CHUNK):
        part = todo[start : start + DECODE_CHUNK]
        decoded = decoded_files(root, [files[i] for i in part], ahead, max_file_bytes)
        for i, d in zip(part, decoded, strict=True):
            if d.pixels is not None:
                store[i] = d.pixels
        meta["content_hash"] += [d.content_hash for d in decoded]
        meta["size_bytes"] += [d.size_bytes for d in decoded]
        meta["width"] += [d.width for d in decoded]
        meta["height"] += [d.height for d in decoded]
        meta["mode"] += [d.mode for d in decoded]
        meta["pixel_hash"] += [d.pixel_hash for d in decoded]
        meta["status"] += ["ok" if d.pixels is not None else "quarantined" for d in decoded]
        meta["reason"] += [d.error for d in decoded]
        meta["note"] += [d.note for d in decoded]
        del decoded
    if reused.height:
        fresh = pl.DataFrame({"at": todo, **meta}, schema=_DECODED_SCHEMA)
        merged = pl.concat([reused.drop("row"), fresh], how="vertical_relaxed").sort("at")
        ok = (merged["status"] == "ok").to_numpy()
        take_rows(previous_pixels, reused["row"].to_numpy(), out=store, at=reused["at"].to_numpy())
        sources = merged["at"].to_numpy()[ok]
    else:  # every file decoded now: `todo` is every file, in file order
        merged = None
        ok = np.array([status == "ok" for status in meta["status"]], dtype=bool)
        sources = np.flatnonzero(ok)
    # Compact in place to the ok files, in file order (each slot moves down or stays), from
    # the first slot that moves: with every file readable, none (a copy of the whole store
    # onto itself, 75 ms of a 3,000-image class's update, before).
    moved = np.flatnonzero(sources != np.arange(len(sources)))
    for start in range(int(moved[0]) if len(moved) else len(sources), len(sources), DECODE_CHUNK):
        chunk = sources[start : start + DECODE_CHUNK]
        store[start : start + len(chunk)] = store[chunk]
    pixels = store[: len(sources)]
    key = next(iter(scan.classes), files[0].class_key if files else "")
    name = scan.classes.get(key, files[0].class_name if files else "")
    paths = [f.rel_path for f in files]
    hashes = meta["content_hash"] if merged is None else merged["content_hash"].to_list()
    raw = [f.raw_path for f in files]
    ids = _image_ids(key, hashes, paths, raw, previous, [f.link for f in files])
    if merged is None:
        table = _decoded_table(key, name, files, paths, meta, ok, ids)
    else:
        assert listing is not None  # rows were reused: there was a previous catalog
        table = _merged_table(key, name, paths, listing, merged, ids)
    parts = [skipped_table(scan)]
    if not bool(ok.all()):
        parts.append(
            table.filter(pl.col("status") != "ok").select(
                "path", "class", pl.lit("skipped").alias("action"), "reason"
            )
        )
    if table["note"].null_count() < table.height:
        parts.append(
            table.filter(pl.col("note").is_not_null()).select(
                "path", "class", pl.lit("used").alias("action"), pl.col("note").alias("reason")
            )
        )
    # Most classes have nothing to say: their empty table of skipped entries as it is.
    quarantine = (
        parts[0] if len(parts) == 1 and parts[0].height < 2 else pl.concat(parts).sort("path")
    )
    return ClassCatalog(table, pixels, quarantine, reused.height, len(todo))


def _merged_table(
    key: str,
    name: str,
    paths: list[str],
    listing: pl.DataFrame,
    merged: pl.DataFrame,
    ids: list[str],
) -> pl.DataFrame:
    """The class's table from the decoded rows `merged` (reused and new, in file order)."""
    return (
        merged.with_columns(
            pl.Series("image_id", ids, dtype=pl.String),
            pl.lit(key_split(key)[0], pl.String).alias("split"),
            pl.lit(name, pl.String).alias("class"),
            pl.lit(key, pl.String).alias("class_key"),
            pl.Series("path", paths, dtype=pl.String),
            listing["raw_path"],
            listing["mtime"].alias("mtime_ns"),
            pl.when(pl.col("status") == "ok")
            .then((pl.col("status") == "ok").cast(pl.Int64).cum_sum() - 1)
            .alias("row"),
        )
        .select(list(CATALOG_SCHEMA))
        .cast(CATALOG_SCHEMA)
    )


def _decoded_table(
    key: str,
    name: str,
    files: list,
    paths: list[str],
    meta: dict[str, list],
    ok: np.ndarray,
    ids: list[str],
) -> pl.DataFrame:
    """`_merged_table` when every file was decoded now, built in one construction (its
    three polars passes were 1.2 ms of a 20-image class in a worker, most of the class's
    catalog outside decoding)."""
    n = len(files)
    row: list = np.where(ok, np.cumsum(ok) - 1, -1).tolist()
    if not ok.all():  # quarantined files have no row in the pixel store
        row = [r if r >= 0 else None for r in row]
    return pl.DataFrame(
        {
            "image_id": ids,
            "split": [key_split(key)[0]] * n,
            "class": [name] * n,
            "class_key": [key] * n,
            "path": paths,
            "raw_path": [f.raw_path for f in files],
            "size_bytes": meta["size_bytes"],
            "mtime_ns": [f.mtime_ns for f in files],
            "width": meta["width"],
            "height": meta["height"],
            "mode": meta["mode"],
            "content_hash": meta["content_hash"],
            "pixel_hash": meta["pixel_hash"],
            "status": meta["status"],
            "reason": meta["reason"],
            "note": meta["note"],
            "row": row,
        },
        schema=CATALOG_SCHEMA,
    )


def skipped_table(scan: FolderScan) -> pl.DataFrame:
    """The entries a scan skipped, as quarantine rows."""
    return pl.DataFrame(
        {
            "path": [s.path for s in scan.skipped],
            "class": [s.class_name for s in scan.skipped],
            "action": ["skipped"] * len(scan.skipped),
            "reason": [s.reason for s in scan.skipped],
        },
        schema=QUARANTINE_SCHEMA,
    )


def quarantine_counts(table: pl.DataFrame) -> dict[str, int]:
    """Rows of a quarantine table by kind (hidden, not an image, unreadable, ...; "used
    with a note" for files catalogued with a note), most frequent first."""
    counts: dict[str, int] = {}
    for action, reason in table.select("action", "reason").iter_rows():
        kind = "used with a note" if action == "used" else reason_kind(reason or "")
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


_QUARANTINE_HEADER = (",".join(QUARANTINE_SCHEMA) + "\n").encode()


def _header_only(path: Path) -> bool:
    """A quarantine file without rows (most classes'): nothing to read through polars (a
    read each cost 0.3 ms of a 1,000-class run's critical path)."""
    try:
        return path.stat().st_size == len(_QUARANTINE_HEADER) and (
            path.read_bytes() == _QUARANTINE_HEADER
        )
    except OSError:
        return False


def assemble_quarantine(
    target: Path, root_rows: Path, class_files: list[Path], lock: Path
) -> pl.DataFrame:
    """Write the dataset's quarantine list from its parts (root entries and every class).

    Class runs may finish concurrently; a file lock makes each rewrite see every part.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            parts = [
                pl.read_csv(p, schema=QUARANTINE_SCHEMA, glob=False)
                for p in [root_rows, *class_files]
                if p.exists() and not _header_only(p)
            ]
            table = (
                pl.concat(parts).sort("path") if parts else pl.DataFrame(schema=QUARANTINE_SCHEMA)
            )
            write_csv(table, target)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return table
