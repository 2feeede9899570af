"""What is in the source folder, class by class, cheaply: the basis of incremental runs.

A class's listing digest covers the path, size and modification time of each of its image
files and the path and reason of each entry skipped there, so it changes when a file is
added, removed, replaced or touched, and costs one `stat` per file (no file is read).
The sensor, the schedule and `dedup run` all compare listings the same way
(`changed_classes`); content hashes are computed only for the files of changed classes.

What stat fields cannot see: a file rewritten in place with the same size and modification
time (a tool that restores the time, a copy with `cp -p`/`rsync -t` of a same-size file).
`--verify` (`verify_listings`) reads every file of each class whose listing is unchanged and
compares its bytes with the content hash its catalog recorded; one that differs changes the
class's digest, so the class is reprocessed (and its catalog re-reads every file it reuses).
A file the catalog could not read at all (a permission since fixed: chmod changes no size
or modification time) is tried again the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import polars as pl

from dedup_assets.core.data.artifacts import read_class_images, recorded_listings
from dedup_assets.core.data.image_folder import FolderScan, StrPath
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.splits import (
    IMPLICIT,
    detect_splits,
    key_label,
    key_split,
    scan_source,
)


@dataclass(frozen=True)
class ClassListing:
    """One class folder of one split: partition key, display and exact name (of the class
    folder, without its split's), file count, digest, and its split's name
    (`splits.IMPLICIT` for an unsplit source)."""

    key: str
    name: str
    raw_name: bytes
    files: int
    digest: str
    split: str = IMPLICIT


def class_listings(scan: FolderScan) -> dict[str, ClassListing]:
    """The listing of every class folder of a scan (empty folders included), by key; from
    the digest lines its lister kept where it did (`FolderScan.class_lines`: 24 ms a
    EuroSAT update formatted every file's line here)."""
    kept = scan.class_lines
    if kept is not None and set(kept) == set(scan.classes):
        hashes = {key: hashlib.sha1(kept[key][1]) for key in scan.classes}
        counts = {key: kept[key][0] for key in scan.classes}
    else:
        hashes = {key: hashlib.sha1() for key in scan.classes}
        counts = dict.fromkeys(scan.classes, 0)
        for f in scan.files:  # each file's line as `run_fingerprint.file_lines` has it
            hashes[f.class_key].update(b"f\0%s\0%d\0%d\n" % (f.raw_path, f.size, f.mtime_ns))
            counts[f.class_key] += 1
    for s in scan.skipped:
        if s.class_key is not None and s.class_key in hashes:
            hashes[s.class_key].update(b"s\0%s\0%s\n" % (s.raw_path, s.reason.encode("utf-8")))
    return {
        key: ClassListing(
            key,
            scan.classes[key],
            scan.raw_classes[key],
            counts[key],
            h.hexdigest()[:16],
            key_split(key)[0],
        )
        for key, h in hashes.items()
    }


def list_source(
    root: StrPath,
    *,
    include_hidden: bool = False,
    splits: str | None = None,
    scanned: FolderScan | None = None,
) -> tuple[FolderScan, dict[str, ClassListing]]:
    """Scan a source folder (one stat per file) and list its classes, one per (split,
    class) for a split source (`splits.detect_splits` by `splits`: None or "auto" to
    recognise split folders by name, "none", or the folder names; a layout it refuses
    raises `SplitLayoutError`); hidden entries are listed as skipped unless
    `include_hidden` (so the setting is part of each digest). `scanned`: the source's
    `scan_image_folder` with the same `include_hidden`, taken already (`dedup run`'s
    first look at the source), used as the scan when the source is not split."""
    layout = detect_splits(root, splits, include_hidden=include_hidden)
    if scanned is not None and layout.implicit:
        scan = FolderScan(
            scanned.files,
            scanned.skipped,
            scanned.classes,
            scanned.raw_classes,
            layout.notes,
            scanned.class_lines,
        )
    else:
        scan = scan_source(root, layout, include_hidden=include_hidden)
    return scan, class_listings(scan)


HASH_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC


def content_hash(path: StrPath, max_bytes: int) -> str:
    """The catalog's content hash of a file (sha1 of its bytes, 16 hex; see
    `image_folder.decode_image_bytes`), read in chunks of `HASH_CHUNK`; "" where the catalog
    records "" too: not a regular file, larger than `max_bytes`, unreadable."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return ""
        h, total = hashlib.sha1(), 0
        while chunk := os.read(fd, HASH_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                return ""
            h.update(chunk)
        return h.hexdigest()[:16]
    except OSError:
        return ""
    finally:
        os.close(fd)


def rewritten_files(
    root: StrPath, recorded: Iterable[tuple[bytes, str]], max_bytes: int
) -> dict[bytes, str]:
    """Of `(raw path, recorded content hash)` pairs, the files whose bytes now hash
    differently: raw path -> hash now (every file is read)."""
    root_b = os.fsencode(root)
    changed = {}
    for raw_path, recorded_hash in recorded:
        now = content_hash(os.path.join(root_b, raw_path), max_bytes)
        if now != (recorded_hash or ""):
            changed[raw_path] = now
    return changed


def catalogued_content(layout: OutputLayout, key: str) -> list[tuple[bytes, str]]:
    """`(raw path, content hash)` of every decoded image of a class's catalog, and of every
    file it could not read at all (content hash ""): one readable now (its permissions
    fixed) hashes differently, so `--verify` reads it again."""
    table = read_class_images(layout, key).filter(
        (pl.col("status") == "ok") | (pl.col("content_hash").fill_null("") == "")
    )
    return list(table.select("raw_path", pl.col("content_hash").fill_null("")).iter_rows())


def verify_listings(
    root: StrPath, listings: dict[str, ClassListing], layout: OutputLayout, max_bytes: int
) -> dict[str, ClassListing]:
    """`--verify`: the listings, with the digest of every class whose listing is the one its
    catalog was built from but whose files' bytes are not what the catalog read changed (to a
    digest of the listing and the new content hashes), so it shows as changed. A class whose
    listing already changed is not read here: it is reprocessed anyway."""
    recorded = recorded_listings(layout)
    checked = dict(listings)
    for key, listing in listings.items():
        if recorded.get(key) != listing.digest:
            continue
        changed = rewritten_files(root, catalogued_content(layout, key), max_bytes)
        if changed:
            h = hashlib.sha1(listing.digest.encode())
            for raw_path, now in sorted(changed.items()):
                h.update(b"c\0%s\0%s\n" % (raw_path, now.encode()))
            checked[key] = dataclasses.replace(listing, digest=h.hexdigest()[:16])
    return checked


NAMES_SHOWN = 10  # class names a change's description lists before it counts


@dataclass(frozen=True)
class SourceChanges:
    """Classes added, changed (any file added, removed, replaced or touched) and removed."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def to_update(self) -> tuple[str, ...]:
        return tuple(sorted(self.added + self.changed))

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def unseen(self, current: Mapping[str, str], seen: Mapping[str, str] | None) -> SourceChanges:
        """These changes less those an earlier look saw already: `seen` is the listing it
        recorded (None: none yet); a class counts again only when its listing moved on."""
        if seen is None:
            return self
        return SourceChanges(
            added=tuple(k for k in self.added if seen.get(k) != current[k]),
            changed=tuple(k for k in self.changed if seen.get(k) != current[k]),
            removed=tuple(k for k in self.removed if k in seen),
        )

    def describe(self, shown: int = NAMES_SHOWN) -> str:
        """One line: what is new, changed and removed, naming at most `shown` classes of
        each (a thousand class names are not a line a user reads), by the names of their
        folders (`splits.key_label`), not their partition keys."""
        if not self.any:
            return "nothing changed"
        parts = []
        for what, partition_keys in (
            ("new", self.added),
            ("changed", self.changed),
            ("removed", self.removed),
        ):
            keys = [key_label(k) for k in partition_keys]  # as the user names the classes
            if len(keys) > shown:
                head = ", ".join(keys[: shown - 1])
                parts.append(f"{what}: {len(keys):,} classes ({head}, ..., {keys[-1]})")
            elif keys:
                parts.append(f"{what}: {', '.join(keys)}")
        return "; ".join(parts)


def changed_classes(current: dict[str, str], recorded: dict[str, str]) -> SourceChanges:
    """Compare listing digests by class key: now against what was last processed."""
    return SourceChanges(
        added=tuple(sorted(set(current) - set(recorded))),
        changed=tuple(sorted(k for k in current if k in recorded and current[k] != recorded[k])),
        removed=tuple(sorted(set(recorded) - set(current))),
    )


def index_table(listings: dict[str, ClassListing]) -> pl.DataFrame:
    """The class index as a table (one row per class folder of each split)."""
    rows = list(listings.values())
    return pl.DataFrame(
        {
            "class_key": [r.key for r in rows],
            "split": [r.split for r in rows],
            "class": [r.name for r in rows],
            "raw_name": [r.raw_name for r in rows],
            "files": [r.files for r in rows],
            "listing_digest": [r.digest for r in rows],
        },
        schema={
            "class_key": pl.String,
            "split": pl.String,
            "class": pl.String,
            "raw_name": pl.Binary,
            "files": pl.Int64,
            "listing_digest": pl.String,
        },
    ).sort("class_key")
