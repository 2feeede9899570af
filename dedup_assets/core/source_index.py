"""What is in the source folder, class by class, cheaply: the basis of incremental runs.

A class's listing digest covers the path, size and modification time of each of its image
files and the path and reason of each entry skipped there, so it changes when a file is
added, removed, replaced or touched, and costs one `stat` per file (no file is read).
The sensor, the schedule and `dedup run` all compare listings the same way
(`changed_classes`); content hashes are computed only for the files of changed classes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from dedup_assets.core.image_folder import FolderScan, scan_image_folder


@dataclass(frozen=True)
class ClassListing:
    """One class folder: partition key, display and exact name, file count, digest."""

    key: str
    name: str
    raw_name: bytes
    files: int
    digest: str


def class_listings(scan: FolderScan) -> dict[str, ClassListing]:
    """The listing of every class folder of a scan (empty folders included), by key."""
    hashes = {key: hashlib.sha1() for key in scan.classes}
    counts = dict.fromkeys(scan.classes, 0)
    for f in scan.files:
        hashes[f.class_key].update(b"f\0%s\0%d\0%d\n" % (f.raw_path, f.size, f.mtime_ns))
        counts[f.class_key] += 1
    key_of_name = {name: key for key, name in scan.classes.items()}
    for s in scan.skipped:
        if s.class_name is not None and s.class_name in key_of_name:
            hashes[key_of_name[s.class_name]].update(
                b"s\0%s\0%s\n" % (s.raw_path, s.reason.encode("utf-8"))
            )
    return {
        key: ClassListing(
            key, scan.classes[key], scan.raw_classes[key], counts[key], h.hexdigest()[:16]
        )
        for key, h in hashes.items()
    }


def list_source(
    root, *, include_hidden: bool = False
) -> tuple[FolderScan, dict[str, ClassListing]]:
    """Scan a source folder (one stat per file) and list its classes; hidden entries are
    listed as skipped unless `include_hidden` (so the setting is part of each digest)."""
    scan = scan_image_folder(root, include_hidden=include_hidden)
    return scan, class_listings(scan)


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

    def describe(self) -> str:
        if not self.any:
            return "nothing changed"
        parts = []
        for what, keys in (
            ("new", self.added),
            ("changed", self.changed),
            ("removed", self.removed),
        ):
            if keys:
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
    """The class index as a table (one row per class folder)."""
    rows = list(listings.values())
    return pl.DataFrame(
        {
            "class_key": [r.key for r in rows],
            "class": [r.name for r in rows],
            "raw_name": [r.raw_name for r in rows],
            "files": [r.files for r in rows],
            "listing_digest": [r.digest for r in rows],
        },
        schema={
            "class_key": pl.String,
            "class": pl.String,
            "raw_name": pl.Binary,
            "files": pl.Int64,
            "listing_digest": pl.String,
        },
    ).sort("class_key")
