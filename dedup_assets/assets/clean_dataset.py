"""Asset: a cleaned copy of the dataset per threshold, ready to train on.

In copy mode (the default) a clean copy never shares a file with the source: files are
copied, or hard-linked from an earlier copy mode clean copy whose file is itself a copy
(never from a hardlink or symlink mode copy, and never a file with the source's inode, which
a copy made before the mode was recorded may hold). The copy mode is part of what a clean
copy is made from (`clean_copy_inputs`), so a run in another mode rebuilds it.
"""

import bisect
import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import dagster as dg
import polars as pl

from dedup_assets.core.data import folder_trust
from dedup_assets.core.data.artifacts import (
    catalog_images,
    clean_copy_inputs,
    digest,
    read_catalog,
    read_clean_manifest,
    read_keep_list,
    threshold_verdict,
)
from dedup_assets.core.data.atomic_io import (
    atomic_dir,
    patch_stage,
    sweep_interrupted_at,
    writing,
)
from dedup_assets.core.data.folder_trust import Expected, FolderTrust, holds_exactly
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.pools import cancelling
from dedup_assets.core.decision.leakage import clean_copy_leakage, read_left_out
from resources import DedupSettings, DedupStorage, ImageSource


def _copy_file(src: bytes, dest: bytes) -> None:
    """The bytes and modification time of src into a new file dest, mode 0644: the syscalls
    a clean copy needs, on raw descriptors (shutil.copy2 also copies permission bits and
    extended attributes, and took about 1.5x as long per 64x64 image; a Python file object
    asks each file whether it is a terminal and stats it again: 2 of every 11 syscalls of
    EuroSAT's first run, 27,000 copies, went to those terminal checks)."""
    fin = os.open(src, os.O_RDONLY)
    try:
        st = os.fstat(fin)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                left = st.st_size
                while left > 0 and (n := os.copy_file_range(fin, fd, left)):
                    left -= n
                if left:  # nothing more came (a file system that copies nothing)
                    raise OSError(f"copy_file_range stopped {left} bytes short")
            except (OSError, AttributeError):  # unsupported here (file systems, OS): plain copy
                os.lseek(fin, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                while chunk := os.read(fin, COPY_BUFFER):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o644)  # whatever the umask
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)
    finally:
        os.close(fin)


COPY_BUFFER = 1 << 20


def _hard_link(src: bytes, dest: bytes) -> None:
    """A hard link to the file src names: to a symlink's target, not the symlink (Linux's
    link(2), which os.link calls whatever its follow_symlinks, links the symlink itself,
    and a relative one then points nowhere from the clean copy)."""
    os.link(os.path.realpath(src), dest)


_COPIERS = {
    "copy": _copy_file,
    "hardlink": _hard_link,
    "symlink": os.symlink,
}
FILES_NAME = ".latent-dedup-clean.parquet"
COPY_THREADS = 1
"""Threads placing files. One: a link or a copy of a small file into the page cache is a few
syscalls of CPU, not a wait on the disk, and more threads only fought over the GIL between
them. 60,000 EuroSAT files hard-linked (2026-12-05, `_reusable` checked): 0.52 s of CPU on one
thread against 1.45-1.78 on two and 1.93-2.19 on eight (by class folder or not); copied:
1.75-3.4 s of CPU on one, 4.2-20.5 on two, 3.7-17.0 on eight. The clean copy step runs
beside the cross-class join, so its CPU is the run's. (A source on a network file system or
a cold disk would gain from threads overlapping the reads; not measured here.)"""
COPY_CHUNK = 512


def _donor_copies(layout: OutputLayout, thresholds: list[str]) -> list[tuple[str, str]]:
    """(folder, file list) of every existing copy mode clean copy, in the order given: a
    hardlink or symlink mode copy holds the source's own files, never a donor."""
    out = []
    for t in thresholds:
        folder = layout.clean_dir(t)
        made = read_clean_manifest(layout, t)
        if made is not None and made.get("mode") == "copy" and (folder / FILES_NAME).exists():
            out.append((str(folder), str(folder / FILES_NAME)))
    return out


def _reusable(held: bytes, src: bytes) -> bool:
    """True when `held` (a file of an earlier clean copy) may be hard-linked in place of a
    copy of `src`: a regular file, not a link (a symlink, or the source's own inode), with
    the source's size and modification time (made from these bytes and not edited since;
    `_copy_file` keeps mtime)."""
    a, b = os.lstat(held), os.stat(src)
    return (
        stat.S_ISREG(a.st_mode)
        and (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)
        and (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)
    )


def write_clean_copy(
    layout: OutputLayout,
    threshold: str,
    thresholds: list[str],
    kept: pl.DataFrame,
    root: bytes,
    mode: str,
    keep_digest: str,
    run_id: str,
    recorded: dict | None = None,
) -> int:
    """Replace `clean/<threshold>` with the `kept` files (`raw_path` relative to `root`,
    `content_hash`, and the catalog's `size_bytes` and `mtime_ns` where known) placed by
    `mode`, and its manifest (with `recorded` added: what else the copy was made with, e.g.
    the leakage table); the number of files reused from an existing copy instead of copied.

    In copy mode a folder of this threshold's copy that would come out the same is moved
    into the new copy whole, and one that keeps at least half of its files is moved in and
    patched (`_reusable_folders`); a file already held by a copy mode clean copy (this
    threshold's first, then those of `thresholds`) is hard-linked from the first whose file
    is `_reusable`; the rest is copied.
    """
    copy = _COPIERS[mode]
    # Copies that already hold a file with the same bytes: this threshold's previous
    # copy first, then the other thresholds' (all are copies of one source).
    donors = (
        _donor_copies(layout, [threshold, *(t for t in thresholds if t != threshold)])
        if mode == "copy"
        else []
    )
    if donors:
        held = (
            pl.concat(
                [
                    pl.read_parquet(
                        f, columns=["raw_path", "content_hash"], glob=False
                    ).with_columns(pl.lit(k, pl.Int64).alias("donors"))
                    for k, (_, f) in enumerate(donors)
                ]
            )
            .group_by("raw_path", "content_hash", maintain_order=True)
            .agg("donors")
        )
        kept = kept.join(held, on=["raw_path", "content_hash"], how="left", maintain_order="left")
    else:
        kept = kept.with_columns(pl.lit(None, pl.List(pl.Int64)).alias("donors"))
    donor_roots = [os.fsencode(d) for d, _ in donors]
    # A folder whose files are those of this threshold's last copy, unchanged there and in
    # the source, is moved into the new copy in one rename instead of linked file by file
    # (270 new EuroSAT images re-linked 27,000 files, 1.2 s; 135,000 at 135k, 6.2 s); one
    # that changed in a few files is moved in and patched: those files out, the new ones
    # (placed in the stage first) in (the two EuroSAT classes that gained 135 images each
    # re-linked 6,135 files, 0.09 s of an update's 0.27 s clean copy).
    folders = _folders(kept["raw_path"])  # each file's, once: 27,000 paths split in Python
    reuse = _reusable_folders(layout, threshold, kept, folders) if mode == "copy" else FolderReuse()
    moving = [*reuse.carry, *reuse.patch]
    staged = pl.Series("staged", [False] * kept.height, dtype=pl.Boolean)
    if moving:
        moved = pl.Series("folder", moving, dtype=pl.Binary)
        staged = kept["raw_path"].is_in(pl.Series(sorted(reuse.added), dtype=pl.Binary).implode())
        placing = ~folders.is_in(moved.implode()) | staged
        placed, placed_folders = kept.filter(placing), folders.filter(placing)
        staged = staged.filter(placing).alias("staged")
    else:
        placed, placed_folders = kept, folders
    with atomic_dir(layout.clean_dir(threshold), carry=reuse.carry, patch=reuse.patch) as tmp:
        roots = {False: os.fsencode(tmp), True: os.fsencode(patch_stage(tmp))}
        rows = placed.select("raw_path", "donors").with_columns(staged).rows()
        made = pl.DataFrame([placed_folders, staged]).unique().rows()
        for folder, in_stage in made:
            os.makedirs(os.path.join(roots[in_stage], folder), exist_ok=True)

        def place(row: tuple[bytes, list[int] | None, bool]) -> bool:
            rel, holders, in_stage = row
            dest, src = os.path.join(roots[in_stage], rel), os.path.join(root, rel)
            for donor in holders or ():
                held = os.path.join(donor_roots[donor], rel)
                try:
                    if _reusable(held, src):
                        os.link(held, dest)
                        return True
                except OSError:
                    pass  # gone (that copy is being replaced) or unreadable: the next, or copy
            copy(src, dest)
            return False

        def place_all(chunk: list[tuple[bytes, list[int] | None, bool]]) -> int:
            return sum(place(row) for row in chunk)

        # Files go to the thread (COPY_THREADS) in chunks of at most COPY_CHUNK files (a
        # task per file cost more in locks than the links themselves, 11 s of 16 at 4 x
        # 27,000): an interrupt cancels the queued chunks and waits only for the running
        # one (`core.data.pools`).
        step = max(1, min(COPY_CHUNK, -(-len(rows) // (4 * COPY_THREADS))))
        chunks = [rows[i : i + step] for i in range(0, len(rows), step)]
        with cancelling(ThreadPoolExecutor(max_workers=COPY_THREADS)) as pool:
            linked = sum(pool.map(place_all, chunks))
        # A copy mode copy records each file's size and modification time (the source's,
        # which its copy keeps): what tells an unchanged folder of it on the next run.
        listed = (
            [*FILES_COLUMNS]
            if mode == "copy" and set(FILES_COLUMNS) <= set(kept.columns)
            else ["raw_path", "content_hash"]
        )
        kept.select(listed).write_parquet(tmp / FILES_NAME)
        manifest = {
            **clean_copy_inputs(keep_digest, mode),
            "threshold": threshold,
            "images": kept.height,
            "run_id": run_id,
            **(recorded or {}),
        }
        (tmp / layout.clean_manifest(threshold).name).write_text(json.dumps(manifest, indent=2))
    return linked + kept.height - placed.height  # the moved folders' files too


FILES_COLUMNS = ("raw_path", "content_hash", "size_bytes", "mtime_ns")


def _folders(raw_paths: pl.Series) -> pl.Series:
    """Each path's folder (bytes, relative to the copy's root)."""
    folders = [path.rpartition(b"/")[0] for path in raw_paths.to_list()]
    return pl.Series("folder", folders, dtype=pl.Binary)


@dataclass
class FolderReuse:
    """What a new clean copy takes from the threshold's last one (`_reusable_folders`):
    folders moved in whole (`carry`), folders moved in and patched (`patch`: the names taken
    out of each), and the files the patched folders gain (`added`: raw paths, placed in the
    patch stage)."""

    carry: list[bytes] = field(default_factory=list)
    patch: dict[bytes, list[bytes]] = field(default_factory=dict)
    added: set[bytes] = field(default_factory=set)


def _reusable_folders(
    layout: OutputLayout, threshold: str, kept: pl.DataFrame, folders: pl.Series | None = None
) -> FolderReuse:
    """The folders of the threshold's copy that a new copy of `kept` (raw_path, content_hash,
    size_bytes, mtime_ns: the source's now; `folders`: its rows' `_folders`, when known) may
    take from it: made by copy mode with the files manifest that records sizes and times; no
    folder below them; on disk exactly the manifest's names, each a regular file (not a link)
    of the recorded size and time (an edit of a file in the copy changes its time); and
    either the same files there as in `kept` (moved in whole), or at least half of `kept`'s
    files of the folder there with the same content, size and time (moved in and patched:
    the other files out, `kept`'s new ones in)."""
    clean = layout.clean_dir(threshold)
    made = read_clean_manifest(layout, threshold)
    if not set(FILES_COLUMNS) <= set(kept.columns) or made is None or made.get("mode") != "copy":
        return FolderReuse()
    try:
        old = pl.read_parquet(clean / FILES_NAME, columns=[*FILES_COLUMNS], glob=False)
    except (OSError, pl.exceptions.PolarsError):
        return FolderReuse()
    new = kept.select(FILES_COLUMNS).with_columns(
        _folders(kept["raw_path"]) if folders is None else folders
    )
    old = old.with_columns(_folders(old["raw_path"]))
    same = new.join(old.drop("folder"), on=list(FILES_COLUMNS), how="semi")
    counts = (
        new.group_by("folder")
        .len("new")
        .join(old.group_by("folder").len("old"), on="folder", how="full", coalesce=True)
        .join(same.group_by("folder").len("same"), on="folder", how="left")
        .fill_null(0)
    )
    every = sorted(counts["folder"].to_list())
    candidates = pl.Series(
        counts.filter((pl.col("new") > 0) & (2 * pl.col("same") >= pl.col("new")))["folder"],
        dtype=pl.Binary,
    ).implode()
    in_candidates = pl.col("folder").is_in(candidates)
    root = os.fsencode(clean)
    real_root = os.fsencode(os.path.realpath(clean))
    # `dedup watch` keeps folders it verified known unchanged (`folder_trust`): those are not
    # stat'ed file by file again (27,000 stats, 0.1 s of a EuroSAT update).
    trust = folder_trust.active()
    movable = [
        f
        for f in candidates.explode().to_list()
        if f
        and not _has_subfolder(every, f)
        # Only a real folder of the copy: one reached through a symbolic link may be the
        # source's own, which a move would take out of the source.
        and os.path.realpath(os.path.join(root, f)) == os.path.join(real_root, f)
    ]
    folders_left = movable
    if trust is not None and movable and (mark := _manifest_mark(clean)) is not None:
        said = {f: trust.vouch(os.path.join(root, f), _trust_key(clean, mark, f)) for f in movable}
        # Changed since it was verified (an event there): made again, even where a stat of
        # its files would see nothing (other bytes of the same size, the time set back).
        movable = [f for f in movable if said[f] is not False]
        folders_left = [f for f in movable if said[f] is None]
    # Each folder still to check: its files on disk as the manifest has them, by name.
    expected = _expected_files(old, folders_left)
    gone = {  # file names, within their folder
        folder: [path.rpartition(b"/")[2] for path in paths]
        for folder, paths in _lacking(old.filter(in_candidates), new).items()
    }
    fresh = _lacking(new.filter(in_candidates), old)  # raw paths
    out = FolderReuse()
    checked = set(folders_left)
    for folder in sorted(movable):
        if (
            folder in checked
            and holds_exactly(os.path.join(root, folder), expected[folder]) is None
        ):
            continue
        if folder in gone or folder in fresh:
            out.patch[folder] = sorted(gone.get(folder, []))
            out.added.update(fresh.get(folder, []))
        else:
            out.carry.append(folder)
    out.carry.sort()
    return out


def _lacking(rows: pl.DataFrame, other: pl.DataFrame) -> dict[bytes, list[bytes]]:
    """The raw paths of `rows` that `other` does not hold with the same content, size and
    time, by folder."""
    out: dict[bytes, list[bytes]] = {}
    for folder, path in (
        rows.join(other.drop("folder"), on=list(FILES_COLUMNS), how="anti")
        .select("folder", "raw_path")
        .iter_rows()
    ):
        out.setdefault(folder, []).append(path)
    return out


def _has_subfolder(ordered: list[bytes], folder: bytes) -> bool:
    """Whether some folder of `ordered` (sorted) lies below `folder`."""
    prefix = folder + b"/"
    at = bisect.bisect_left(ordered, prefix)
    return at < len(ordered) and ordered[at].startswith(prefix)


def _expected_files(old: pl.DataFrame, folders: list[bytes]) -> dict[bytes, Expected]:
    """Each of `folders`' files as the manifest rows `old` (with their `folder`) have them:
    name -> (size, modification time)."""
    expected: dict[bytes, Expected] = {f: {} for f in folders}
    if not folders:
        return expected
    rows = old.filter(pl.col("folder").is_in(pl.Series(folders, dtype=pl.Binary).implode()))
    for folder, path, size, mtime in rows.select(
        "folder", "raw_path", "size_bytes", "mtime_ns"
    ).iter_rows():
        expected[folder][path.rpartition(b"/")[2]] = (size, mtime)
    return expected


def _manifest_mark(clean) -> tuple[int, ...] | None:
    """The identity of a clean copy's files manifest (device, inode, size, times): the rows
    a folder was verified against are those of the same file."""
    try:
        st = os.stat(os.path.join(clean, FILES_NAME))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _trust_key(clean, mark: tuple[int, ...], folder: bytes) -> tuple:
    return ("clean", os.fsencode(clean), mark, folder)


def trust_clean_copies(layout: OutputLayout, trust: FolderTrust) -> int:
    """Verify, for `dedup watch`'s next update, each folder of each copy mode clean copy that
    `trust` does not hold as verified against the copy's manifest now (or held too long);
    forget the rest. The number of folders verified now."""
    wanted: set = set()
    verified = 0
    try:
        names = sorted(e.name for e in os.scandir(layout.clean_root) if e.is_dir())
    except OSError:
        names = []
    for threshold in names:
        clean = layout.clean_dir(threshold)
        made = read_clean_manifest(layout, threshold)
        mark = _manifest_mark(clean)
        if made is None or made.get("mode") != "copy" or mark is None:
            continue
        try:
            old = pl.read_parquet(
                clean / FILES_NAME, columns=["raw_path", "size_bytes", "mtime_ns"], glob=False
            )
        except (OSError, pl.exceptions.PolarsError):
            continue
        old = old.with_columns(_folders(old["raw_path"]))
        every = sorted(old["folder"].unique().to_list())
        root, real_root = os.fsencode(clean), os.fsencode(os.path.realpath(clean))
        keys = {
            f: _trust_key(clean, mark, f)
            for f in every
            if f
            and not _has_subfolder(every, f)
            and os.path.realpath(os.path.join(root, f)) == os.path.join(real_root, f)
        }
        wanted.update(keys.values())
        due = [f for f, key in keys.items() if trust.due(key)]
        for folder, files in _expected_files(old, due).items():
            trust.verify(os.path.join(root, folder), keys[folder], files)
            verified += 1
    trust.keep_only(wanted)
    trust.link_check()
    trust.refresh_done()
    return verified


def clean_copies_damaged(layout: OutputLayout, thresholds: list[str]) -> list[str]:
    """The thresholds whose copy mode clean copy no longer holds exactly the files its
    manifest lists (one deleted, added or rewritten in it since it was made), one stat a
    file; for `--force` and `--verify`, since the default check reads the manifests alone
    and so a damaged copy was reported as current. A copy in a linking mode holds the
    source's own files: not looked at."""
    damaged = []
    for t in thresholds:
        clean = layout.clean_dir(t)
        made = read_clean_manifest(layout, t)
        if made is None or made.get("mode") != "copy":
            continue
        try:
            old = pl.read_parquet(
                clean / FILES_NAME, columns=["raw_path", "size_bytes", "mtime_ns"], glob=False
            )
        except (OSError, pl.exceptions.PolarsError):
            damaged.append(t)
            continue
        old = old.with_columns(_folders(old["raw_path"]))
        folders = sorted(f for f in old["folder"].unique().to_list() if f)
        root = os.fsencode(clean)
        expected = _expected_files(old, folders)
        below: dict[bytes, set[bytes]] = {}  # folder -> names of the folders just below it
        for f in folders:
            parts = f.split(b"/")
            for depth in range(1, len(parts)):
                below.setdefault(b"/".join(parts[:depth]), set()).add(parts[depth])
        if any(
            holds_exactly(os.path.join(root, f), expected[f], below.get(f, set())) is None
            for f in folders
        ):
            damaged.append(t)
    return damaged


LINK_WARNING = {
    "hardlink": "hard links to",
    "symlink": "symbolic links to",
}


def link_warning(mode: str) -> str | None:
    """The line a run in a linking mode prints: its clean copies are the source's files."""
    if mode not in LINK_WARNING:
        return None
    return (
        f"clean copies are {LINK_WARNING[mode]} the source (--clean-copy-mode {mode}): "
        "editing a file in clean/<T> edits the source"
    )


class GateBlocked(RuntimeError):
    """A data-quality gate of this threshold failed: no clean copy is made."""


def gate_verdict(layout: OutputLayout, threshold: str, keep_digest: str) -> None:
    """Refuse when this keep list's gates failed (its integrity, the kurtosis gate),
    whichever run evaluated them.

    Blocking checks stop downstream assets in the same run only; automation may run the
    clean copy in a run of its own, so the verdicts are read from what the keep list and
    the report stored (`threshold_verdict`).
    """
    reason = threshold_verdict(layout, threshold, keep_digest).blocked()
    if reason:
        raise GateBlocked(reason)


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
        deps=[keep_list, kurtosis_report, "leakage"],
        description="The kept images copied into `clean/<T>/<class>/...`, same layout as the "
        "source (which is never modified). Blocked when a gate on the keep list or the "
        "kurtosis report fails; an older copy is then marked `STALE.txt`. Files unchanged "
        "since the last copy, or already copied for another threshold, are hard-linked from "
        "that copy, not copied again (every clean copy holds the source's bytes). In hardlink "
        "or symlink mode the copy is the source's own files: editing one edits the source. "
        "With split folders, --leakage drop-train (default) leaves out the training copy of "
        "each image of leakage.csv, drop-test the evaluation image, report nothing.",
    )
    def clean_dataset(
        context: dg.AssetExecutionContext,
        image_source: ImageSource,
        storage: DedupStorage,
        settings: DedupSettings,
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        threshold = context.partition_key
        current = storage.current_inputs(settings)  # the overrides in each class provenance
        current.require_keep_list(layout, threshold)
        keep_digest = digest(current.keep_list(threshold))
        gate_verdict(layout, threshold, keep_digest)
        keep = read_keep_list(layout.keep_list(threshold))
        catalog = catalog_images(read_catalog(layout))
        kept = keep.filter(pl.col("kept")).join(
            catalog.select("image_id", "raw_path", "content_hash", "size_bytes", "mtime_ns"),
            on="image_id",
        )
        # Train/test leakage (--leakage): drop-train leaves the training copy of each
        # flagged pair out, drop-test the evaluation image, report nothing.
        policy = str(settings.leakage)
        leaks = read_left_out(layout, current, policy)
        before = kept.height
        if leaks:
            kept = kept.filter(~pl.col("image_id").is_in(leaks))
        left_out = before - kept.height
        made_with = clean_copy_leakage(current, policy)
        recorded = {"leakage": made_with, "left_out_for_leakage": left_out} if made_with else None
        mode = str(settings.clean_copy_mode)
        start = time.perf_counter()
        trust = folder_trust.active()  # `dedup watch`'s: folders it knows unchanged
        vouched = trust.answered if trust is not None else 0
        with writing(layout.writer_lock(f"clean-{threshold}")):  # one writer of this copy
            for line in sweep_interrupted_at(layout.clean_dir(threshold)):
                context.log.warning(f"recovered: {line}")
            linked = write_clean_copy(
                layout,
                threshold,
                thresholds_def.get_partition_keys(),
                kept,
                os.fsencode(image_source.resolve_root()),
                mode,
                keep_digest,
                context.run.run_id,
                recorded,
            )
        seconds = time.perf_counter() - start
        trusted = trust.answered - vouched if trust is not None else 0
        context.log.info(
            f"T={threshold}: {kept.height:,} images -> {layout.clean_dir(threshold)} "
            f"({linked:,} reused from an existing copy of the same bytes: hard-linked, or "
            "moved with their unchanged folder"
            + (
                f"; {trusted} folder(s) known unchanged from change events, not checked file "
                "by file"
                if trusted
                else ""
            )
            + ")"
            + (f"; {left_out:,} left out for leakage ({policy})" if made_with else "")
        )
        return dg.MaterializeResult(
            metadata={
                "images": kept.height,
                "unchanged_linked": linked,
                "folders_known_unchanged": trusted,
                "classes": kept["class"].n_unique(),
                "mode": mode,
                **(
                    {"leakage_policy": policy, "left_out_for_leakage": left_out}
                    if made_with
                    else {}
                ),
                "seconds": round(seconds, 2),
                "path": dg.MetadataValue.path(str(layout.clean_dir(threshold))),
            }
        )

    return clean_dataset
