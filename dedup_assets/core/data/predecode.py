"""A first run's classes decoded while the command is still importing its pipeline.

`dedup run` spends its first two seconds importing Dagster, torch and the pipeline, in
itself and in its workers' server, with no image decoded; EuroSAT's decoding then took two
more on 2 cores. When the output holds no catalog yet, the command starts this module at
once (`start`) in a process that imports only numpy, Pillow and polars (0.15 s) and runs
at the lowest priority (so it takes only what the imports leave of the cores): it decodes
classes with `class_catalog.update_class_catalog`, the catalog's own function, into a
cache folder of the output, a class at a time, from the end of each worker's range.

`class_images` takes a class's files from the cache as from an earlier catalog of the
class (`cached_class`): a file is reused only where its path, size and modification time
are those that were decoded, and only when the cache was made with the run's own reading
settings (`settings_of`), so a class's catalog holds what decoding it then would have.
Classes under MIN_CLASS_IMAGES are decoded together, neighbours in a worker's range, into
one group cache (`grouped_files`): a worker reads a group once and takes each class's
decoded files from it (a class's own cache cost more to read than its 20 images to decode,
so 1,000 classes of 20 had no decoder at all). A class is decoded by the decoder at most
once and never after a worker has started it: each claims a class before decoding it (a
file created exclusively); a worker that finds a class claimed but not written decodes it
itself rather than wait for a process that runs at the lowest priority. The command
removes the cache once its classes are decoded (`finish`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dedup_assets.core.data.layout import PREDECODE
from dedup_assets.core.data.pools import process_alive

if TYPE_CHECKING:
    from dedup_assets.core.data.class_catalog import DecodedAhead

ENV_DIR = "DEDUP_PREDECODE_DIR"
ENV_OFF = "DEDUP_NO_PREDECODE"  # "1": `dedup run` starts no decoder
MIN_CLASS_IMAGES = 256
"""The smallest class the decoder caches on its own, and the least a group of smaller
classes holds: a class's own cache costs about 6 ms of reading and merging whatever its
size, 20 decoded 64 px images about 3 ms (measured on 20-image classes: 9.5 ms a class
through the cache against 3.4 ms decoded, 2 cores); a group is read once for all of its
classes."""
MAX_IMAGES = 60_000
MAX_CLASS_IMAGES = 20_000
"""Images the decoder takes at most, and the largest class it takes (a class's store is in
its memory while it decodes it: 240 MB at 64x64): it is there for the seconds of the
imports (about 2 s, some 20,000 EuroSAT images on one core), and beside the workers, at
the lowest priority, it gets next to nothing; the workers decode the rest as they would
have. A million images in classes of 100,000 are not decoded by it at all."""

GROUP = "group-"  # a group cache's folder: GROUP + its first class's entry
_started: subprocess.Popen | None = None  # the decoder, in the command's process
_folder: Path | None = None
_made_output: list[Path] = []  # folders the cache's made, the output's first


def settings_of(max_file_bytes: int, include_hidden: bool, splits: str) -> dict:
    """What decides a class's files and their decoding, beside the files themselves."""
    return {
        "max_file_bytes": int(max_file_bytes),
        "include_hidden": bool(include_hidden),
        "splits": str(splits),
    }


def _entry(key: str) -> str:
    """A class key's file name in the cache (keys hold any character, '/' included)."""
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _claim(folder: Path, key: str) -> bool | None:
    """Claim `key` for this process: True, or False if another process has; None when the
    cache folder is gone (the command has finished with it)."""
    try:
        fd = os.open(folder / f"{_entry(key)}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    except OSError:
        return None
    os.close(fd)
    return True


def cached_class(key: str, settings: dict):
    """A class's catalog table and pixel store as the decoder wrote them, to be passed to
    `update_class_catalog` as the previous ones; None when there is no cache for it (no
    decoder, another reading setting, or this process claims it now and decodes it)."""
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return None
    folder = Path(folder)
    done = folder / _entry(key)
    if not done.is_dir():
        # Ours now, or the decoder's still: decoded here either way, never waited for (the
        # decoder runs at the lowest priority, beside the workers it has next to nothing).
        _claim(folder, key)
        return None
    try:
        import polars as pl

        recorded = json.loads((done / "settings.json").read_text())
        if recorded != {"key": key, **settings}:
            return None
        table = pl.read_parquet(done / "table.parquet", glob=False)
        pixels = np.load(done / "pixels.npy", mmap_mode="r")
    except Exception:  # noqa: BLE001 - removed meanwhile, or damaged: a hint, decode as usual
        return None
    return table, pixels


_group: tuple[Path, list[str], dict[str, dict], dict] | None = None
"""The group cache this worker read last: its folder, its classes, each class's files
(`grouped_files`) and the reading settings it was read for; one at a time, since a worker
takes its classes in order."""


def grouped_files(key: str, settings: dict) -> DecodedAhead | None:
    """A small class's files as the decoder decoded them in a group, by raw path (for
    `update_class_catalog`'s `ahead`); None when no group holds the class (no decoder, not
    decoded yet, or another reading setting)."""
    global _group
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return None
    try:
        name = os.readlink(Path(folder) / f"{_entry(key)}.group")
    except OSError:
        if _group is not None and not _group[0].parent.is_dir():
            _group = None  # the command removed the cache: a long-lived worker lets it go
        return None
    path = Path(folder) / name
    if _group is None or _group[0] != path or _group[3] != settings:
        _group = None
        loaded = _read_group(path, settings)
        if loaded is None:
            return None
        _group = (path, *loaded, settings)
    return _group[2].get(key)


def _read_group(path: Path, settings: dict) -> tuple[list[str], dict[str, dict]] | None:
    from dedup_assets.core.data.image_folder import DecodedImage

    try:
        import polars as pl

        recorded = json.loads((path / "settings.json").read_text())
        keys = recorded.pop("keys")
        if recorded != settings:
            return None
        table = pl.read_parquet(path / "files.parquet", glob=False)
        pixels = np.load(path / "pixels.npy", mmap_mode="r")
    except Exception:  # noqa: BLE001 - removed meanwhile, or damaged: a hint, decode as usual
        return None
    if len(pixels) != table.height:
        return None
    files: dict[str, dict] = {}
    columns = [table.get_column(c).to_list() for c in _GROUP_COLUMNS]
    for row, (key, raw, size, mtime, content, width, height, mode, px, note) in enumerate(
        zip(*columns, strict=True)
    ):
        files.setdefault(key, {})[raw] = (
            size,
            mtime,
            DecodedImage(content, size, width, height, mode, pixels[row], None, px, note),
        )
    return keys, files


_GROUP_COLUMNS = (
    "class_key",
    "raw_path",
    "size_bytes",
    "mtime_ns",
    "content_hash",
    "width",
    "height",
    "mode",
    "pixel_hash",
    "note",
)


def start(
    source: Path,
    output: Path,
    *,
    max_file_bytes: int,
    include_hidden: bool,
    splits: str,
    parts: int,
    smallest: int = MIN_CLASS_IMAGES,
) -> bool:
    """Start the decoder for a first run into `output` (no catalog there yet, and an
    output `layout.claim` would accept); its folder and process id go into this process's
    environment, which the workers inherit. True if it started."""
    global _started, _folder, _made_output
    _sweep(output)
    folder = output / f"{PREDECODE}{os.getpid()}"
    made = [p for p in (output, *output.parents) if not p.exists()]  # folders it makes
    try:
        folder.mkdir(parents=True)
    except OSError:
        return False
    _made_output = made
    command = [
        sys.executable,
        "-m",
        __name__,
        str(source),
        str(folder),
        json.dumps(settings_of(max_file_bytes, include_hidden, splits)),
        str(max(1, parts)),
        str(smallest),
    ]
    try:
        _started = subprocess.Popen(  # noqa: S603 - our own module, our own interpreter
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_lowest_priority,  # noqa: PLW1509 - no threads yet in the command
        )
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return False
    _folder = folder
    os.environ[ENV_DIR] = str(folder)
    return True


def _sweep(output: Path) -> None:
    """Remove the caches of commands that ended without removing theirs (killed)."""
    with contextlib.suppress(OSError):
        for entry in output.iterdir():
            pid = entry.name[len(PREDECODE) :]
            if entry.name.startswith(PREDECODE) and (
                not pid.isdigit() or not process_alive(int(pid))
            ):
                shutil.rmtree(entry, ignore_errors=True)


def _lowest_priority() -> None:
    with contextlib.suppress(OSError):
        os.nice(19)


def finish() -> None:
    """Stop the decoder (if it still runs) and remove its cache; the workers are told by
    the cache's absence. Safe to call more than once."""
    global _started, _folder, _made_output
    if _started is not None:
        if _started.poll() is None:
            _started.terminate()
            try:
                _started.wait(2)
            except subprocess.TimeoutExpired:
                _started.kill()
                _started.wait()
        _started = None
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        _folder = None
    for made in _made_output:  # a refused command leaves no output folder behind
        try:
            made.rmdir()  # only while nothing else was written into it
        except OSError:
            break
    _made_output = []
    os.environ.pop(ENV_DIR, None)


STORE_DIGEST = "pixels.digest"  # the cached store's `class_catalog.pixels_digest`


def link_store(cached: np.ndarray | None, pixels: np.ndarray, target: Path) -> str | None:
    """The decoder's pixel store of a class hard-linked as `target` when `pixels` (the
    class's catalog, read through the cache: `cached_class`) are that store exactly, so
    that the file `np.save` would write is the cached one byte for byte; its digest (the
    decoder's), or None when it was not linked and the caller writes the store. A first
    run wrote every cached class's pixels twice (37 MB a EuroSAT class), then deleted the
    first copy."""
    path = getattr(cached, "filename", None)
    if cached is None or path is None:
        return None
    if cached.shape != pixels.shape or cached.dtype != pixels.dtype:
        return None
    if not np.array_equal(cached, pixels):
        return None
    try:
        digest = (Path(path).parent / STORE_DIGEST).read_text().strip()
        if not digest:
            return None
        os.link(path, target)
    except OSError:  # no digest (an older cache), removed meanwhile, or no links here
        return None
    return digest


def discard(key: str) -> None:
    """Drop a class's cache once its catalog is written (its pixels are in the catalog);
    a group's once none of its classes is left to take from it."""
    global _group
    folder = os.environ.get(ENV_DIR)
    if not folder:
        return
    shutil.rmtree(Path(folder) / _entry(key), ignore_errors=True)
    with contextlib.suppress(OSError):
        (Path(folder) / f"{_entry(key)}.group").unlink()
    if _group is not None and key in _group[1]:  # its classes, with readable files or not
        path, keys = _group[:2]
        if not any(os.path.lexists(Path(folder) / f"{_entry(k)}.group") for k in keys):
            _group = None
            shutil.rmtree(path, ignore_errors=True)


def decoding_order(
    keys: list[str], sizes: list[int], parts: int, smallest: int = MIN_CLASS_IMAGES
) -> list[list[str]]:
    """The classes as the decoder takes them, a unit at a time: the last of each worker's
    range (`parts` ranges of the classes in order, as `partitions.class_ranges` cuts
    them), then the one before it, and so on, so that each worker finds its range's end
    already decoded and meets the decoder in the middle. A class of `smallest` images or
    more is a unit of its own; smaller neighbours in a range are a unit together (a group)
    until it holds `smallest` images. Empty classes and those above MAX_CLASS_IMAGES are
    left out, and units past MAX_IMAGES in all."""
    size = max(1, -(-len(keys) // max(parts, 1)))
    per_range: list[list[list[int]]] = []
    for start_at in range(0, len(keys), size):
        units: list[list[int]] = []
        group: list[int] = []
        for i in reversed(range(start_at, min(start_at + size, len(keys)))):
            if not 0 < sizes[i] <= MAX_CLASS_IMAGES:
                continue
            if sizes[i] >= smallest:
                units.append([i])
                continue
            group.append(i)
            if sum(sizes[j] for j in group) >= smallest:
                units.append(group)
                group = []
        if group:
            units.append(group)
        per_range.append(units)
    order, taken = [], 0
    for depth in range(max((len(u) for u in per_range), default=0)):
        for units in per_range:
            if depth < len(units):
                n = sum(sizes[i] for i in units[depth])
                if taken + n <= MAX_IMAGES:
                    order.append([keys[i] for i in units[depth]])
                    taken += n
    return order


def _decode_into(
    folder: Path, source: Path, settings: dict, parts: int, smallest: int = MIN_CLASS_IMAGES
) -> None:
    from dedup_assets.core.data.pools import set_process_cores
    from dedup_assets.core.data.splits import detect_splits, scan_source

    set_process_cores(1)  # one core: the command's imports have the other
    layout = detect_splits(source, settings["splits"], include_hidden=settings["include_hidden"])
    scan = scan_source(source, layout, include_hidden=settings["include_hidden"])
    counts: dict[str, int] = {}
    for f in scan.files:
        counts[f.class_key] = counts.get(f.class_key, 0) + 1
    keys = [k for k in scan.classes if counts.get(k)]
    del scan
    for unit in decoding_order(keys, [counts[k] for k in keys], parts, smallest):
        claimed = []
        for key in unit:
            taken = _claim(folder, key)
            if taken is None:
                return  # the command has removed the cache: nothing more is wanted
            if taken:
                claimed.append(key)
        if len(unit) == 1 and counts[unit[0]] >= smallest:
            if claimed:
                _decode_class(folder, source, layout, settings, claimed[0])
        elif claimed:
            _decode_group(folder, source, layout, settings, claimed)


def _decode_class(folder: Path, source: Path, layout, settings: dict, key: str) -> None:
    """One class into its own cache: its catalog as `update_class_catalog` makes it."""
    from dedup_assets.core.data.atomic_io import atomic_dir
    from dedup_assets.core.data.class_catalog import (
        save_pixels,
        store_pixel_hashes,
        update_class_catalog,
    )
    from dedup_assets.core.data.splits import scan_class

    one = scan_class(source, layout, key, include_hidden=settings["include_hidden"])
    if one is None:
        return
    catalog = update_class_catalog(
        source, one, None, None, max_file_bytes=settings["max_file_bytes"]
    )
    with atomic_dir(folder / _entry(key)) as tmp:
        hashes = store_pixel_hashes(catalog.table)
        (tmp / STORE_DIGEST).write_text(save_pixels(tmp / "pixels.npy", catalog.pixels, hashes))
        catalog.table.write_parquet(tmp / "table.parquet")
        (tmp / "settings.json").write_text(json.dumps({"key": key, **settings}))


def _decode_group(folder: Path, source: Path, layout, settings: dict, keys: list[str]) -> None:
    """Small classes decoded together into one group cache: each readable file with its
    scan's size and time and what decoding gave; then each class's link to the group, which
    is what a worker looks for (`grouped_files`)."""
    import polars as pl

    from dedup_assets.core.data.atomic_io import atomic_dir
    from dedup_assets.core.data.image_folder import read_and_decode
    from dedup_assets.core.data.splits import scan_class

    files = []
    for key in keys:
        one = scan_class(source, layout, key, include_hidden=settings["include_hidden"])
        files += [(key, f) for f in (one.files if one is not None else [])]
    decoded = read_and_decode(
        source, [f for _, f in files], max_file_bytes=settings["max_file_bytes"]
    )
    # Only what a worker would keep: readable, and read at the size its scan saw.
    kept = [
        (key, f, d)
        for (key, f), d in zip(files, decoded, strict=True)
        if d.pixels is not None and d.size_bytes == f.size
    ]
    columns = {
        "class_key": [key for key, _, _ in kept],
        "raw_path": [f.raw_path for _, f, _ in kept],
        "size_bytes": [f.size for _, f, _ in kept],
        "mtime_ns": [f.mtime_ns for _, f, _ in kept],
        **{
            name: [getattr(d, name) for _, _, d in kept]
            for name in ("content_hash", "width", "height", "mode", "pixel_hash", "note")
        },
    }
    schema = {"raw_path": pl.Binary, "note": pl.String} | {
        c: pl.Int64 for c in ("size_bytes", "mtime_ns", "width", "height")
    }
    pixels = (
        np.stack([d.pixels for _, _, d in kept]) if kept else np.empty((0, 64, 64, 3), np.uint8)
    )
    name = f"{GROUP}{_entry(keys[0])}"
    with atomic_dir(folder / name) as tmp:
        np.save(tmp / "pixels.npy", pixels)
        pl.DataFrame(columns, schema_overrides=schema).write_parquet(tmp / "files.parquet")
        (tmp / "settings.json").write_text(json.dumps({"keys": keys, **settings}))
        # Every class's link before the group is swapped in (they dangle until then, and a
        # worker that meets one decodes the class itself): a worker done with the group's
        # first class finds the others' links, so it does not remove the group under them.
        for key in keys:
            with contextlib.suppress(OSError):  # the cache removed meanwhile: no one reads it
                os.symlink(name, folder / f"{_entry(key)}.group")


def main(argv: list[str]) -> int:
    """The decoder's process: `python -m dedup_assets.core.data.predecode SOURCE FOLDER
    SETTINGS PARTS [SMALLEST]`. Ends quietly on SIGTERM or SIGINT (the command's Ctrl-C reaches it
    too), leaving only whole classes; any error just ends it (the workers decode)."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    source, folder, settings, parts = Path(argv[0]), Path(argv[1]), json.loads(argv[2]), argv[3]
    smallest = int(argv[4]) if len(argv) > 4 else MIN_CLASS_IMAGES
    try:
        _decode_into(folder, source, settings, int(parts), smallest)
    except Exception:  # noqa: BLE001 - a hint, never a result: the workers decode instead
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
