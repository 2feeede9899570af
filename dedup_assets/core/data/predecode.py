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
settings (`settings_of`), so a class's catalog holds what decoding it then would have. A
class is decoded by the decoder at most once and never after a worker has started it: each
claims a class before decoding it (a file created exclusively); a worker that finds a
class claimed but not written decodes it itself rather than wait for a process that runs
at the lowest priority. The command removes the cache once its classes are decoded
(`finish`).
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

import numpy as np

from dedup_assets.core.data.layout import PREDECODE
from dedup_assets.core.data.pools import process_alive

ENV_DIR = "DEDUP_PREDECODE_DIR"
ENV_OFF = "DEDUP_NO_PREDECODE"  # "1": `dedup run` starts no decoder
MIN_CLASS_IMAGES = 256
"""The smallest class the decoder takes: a class's files taken from the cache cost about 6
ms of reading and merging whatever its size, 20 decoded 64 px images about 2 ms (measured
on 20-image classes: 9.5 ms a class through the cache against 3.4 ms decoded, 2 cores)."""
MAX_IMAGES = 60_000
MAX_CLASS_IMAGES = 20_000
"""Images the decoder takes at most, and the largest class it takes (a class's store is in
its memory while it decodes it: 240 MB at 64x64): it is there for the seconds of the
imports (about 2 s, some 20,000 EuroSAT images on one core), and beside the workers, at
the lowest priority, it gets next to nothing; the workers decode the rest as they would
have. A million images in classes of 100,000 are not decoded by it at all."""

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
    except (OSError, ValueError):  # removed meanwhile, or damaged: decode as usual
        return None
    return table, pixels


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
    """Drop a class's cache once its catalog is written (its pixels are in the catalog)."""
    folder = os.environ.get(ENV_DIR)
    if folder:
        shutil.rmtree(Path(folder) / _entry(key), ignore_errors=True)


def decoding_order(
    keys: list[str], sizes: list[int], parts: int, smallest: int = MIN_CLASS_IMAGES
) -> list[str]:
    """The classes as the decoder takes them: the last of each worker's range (`parts`
    ranges of the classes in order, as `partitions.class_ranges` cuts them), then the one
    before it, and so on, so that each worker finds its range's end already decoded and
    meets the decoder in the middle. Classes under `smallest` images or above
    MAX_CLASS_IMAGES, and those past MAX_IMAGES in all, are left out."""
    size = max(1, -(-len(keys) // max(parts, 1)))
    ranges = [list(range(a, min(a + size, len(keys)))) for a in range(0, len(keys), size)]
    order, taken = [], 0
    for depth in range(size):
        for r in ranges:
            if depth < len(r):
                i = r[-1 - depth]
                fits = smallest <= sizes[i] <= MAX_CLASS_IMAGES
                if fits and taken + sizes[i] <= MAX_IMAGES:
                    order.append(keys[i])
                    taken += sizes[i]
    return order


def _decode_into(
    folder: Path, source: Path, settings: dict, parts: int, smallest: int = MIN_CLASS_IMAGES
) -> None:
    from dedup_assets.core.data.atomic_io import atomic_dir
    from dedup_assets.core.data.class_catalog import (
        save_pixels,
        store_pixel_hashes,
        update_class_catalog,
    )
    from dedup_assets.core.data.pools import set_process_cores
    from dedup_assets.core.data.splits import detect_splits, scan_class, scan_source

    set_process_cores(1)  # one core: the command's imports have the other
    layout = detect_splits(source, settings["splits"], include_hidden=settings["include_hidden"])
    scan = scan_source(source, layout, include_hidden=settings["include_hidden"])
    counts: dict[str, int] = {}
    for f in scan.files:
        counts[f.class_key] = counts.get(f.class_key, 0) + 1
    keys = [k for k in scan.classes if counts.get(k)]
    del scan
    for key in decoding_order(keys, [counts[k] for k in keys], parts, smallest):
        claimed = _claim(folder, key)
        if claimed is None:
            return  # the command has removed the cache: nothing more is wanted
        if not claimed:
            continue
        one = scan_class(source, layout, key, include_hidden=settings["include_hidden"])
        if one is None:
            continue
        catalog = update_class_catalog(
            source, one, None, None, max_file_bytes=settings["max_file_bytes"]
        )
        with atomic_dir(folder / _entry(key)) as tmp:
            hashes = store_pixel_hashes(catalog.table)
            (tmp / STORE_DIGEST).write_text(save_pixels(tmp / "pixels.npy", catalog.pixels, hashes))
            catalog.table.write_parquet(tmp / "table.parquet")
            (tmp / "settings.json").write_text(json.dumps({"key": key, **settings}))


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
