"""Reading a labelled ImageFolder (`<root>/<class>/<image>`) into one uint8 pixel store.

Every image is decoded once to 64x64 RGB; files that cannot be read are quarantined
with their reason instead of stopping the run. Image ids are content hashes, so the same
picture keeps its id when files are renamed, listed in another order or re-scanned.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
IMAGE_SIZE = 64
# Resampling used when an image is not already 64x64: the whole frame is kept (no crop).
RESAMPLE = Image.Resampling.BICUBIC


def class_key(class_name: str) -> str:
    """A partition key and file name for a class: percent-encodes all but [A-Za-z0-9_-].

    Dagster forbids some substrings in partition keys ("...", control characters, and
    the multi-partition separators); file systems forbid others. The encoding is
    reversible with `class_name_from_key`.
    """
    return quote(class_name, safe="").replace(".", "%2E").replace("~", "%7E")


def class_name_from_key(key: str) -> str:
    """Inverse of `class_key`."""
    return unquote(key)


@dataclass(frozen=True)
class ImageFile:
    """One candidate image file: its class folder and path relative to the root."""

    class_name: str
    rel_path: str


def scan_image_folder(root: Path | str) -> list[ImageFile]:
    """Every image file under `<root>/<class>/`, sorted by path; hidden entries skipped.

    Images in nested folders below a class folder belong to that class.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image source {root} is not a directory")
    files: list[ImageFile] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                rel = Path(dirpath, name).relative_to(root).as_posix()
                files.append(ImageFile(class_dir.name, rel))
    files.sort(key=lambda f: f.rel_path)
    return files


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha is composited over white, 16-bit/float rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


@dataclass(frozen=True)
class DecodedImage:
    """Result of decoding one file: pixels or the reason it failed."""

    content_hash: str
    size_bytes: int
    width: int
    height: int
    mode: str
    pixels: np.ndarray | None
    error: str | None


def decode_image_bytes(data: bytes) -> DecodedImage:
    """Decode one file's bytes to 64x64x3 uint8; errors are returned, not raised."""
    digest = hashlib.sha1(data).hexdigest()[:16]
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode, (width, height) = img.mode, img.size
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE)
            pixels = np.asarray(rgb, dtype=np.uint8).copy()
    except Image.UnidentifiedImageError:
        return DecodedImage(
            digest,
            len(data),
            0,
            0,
            "",
            None,
            "not a readable image (unknown format or corrupt data)",
        )
    except Exception as exc:  # noqa: BLE001 - any decoder failure quarantines the file
        reason = f"{type(exc).__name__}: {exc}".strip()
        return DecodedImage(digest, len(data), 0, 0, "", None, reason or "unreadable")
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        return DecodedImage(digest, len(data), width, height, mode, None, "bad shape")
    return DecodedImage(digest, len(data), width, height, mode, pixels, None)


# Below this many files decoding stays in-process; above, worker processes share it (Pillow's
# per-image Python work holds the GIL, so threads do not scale: measured slower than one).
PROCESS_POOL_MIN_FILES = 2000
CHUNK_FILES = 500


def _read_decode_chunk(paths: list[str]) -> list[DecodedImage]:
    """Worker: read and decode a chunk of files (a module-level function, so it pickles)."""
    return [_read_decode(Path(p)) for p in paths]


def _read_decode(path: Path) -> DecodedImage:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return DecodedImage("", 0, 0, 0, "", None, f"unreadable file: {exc}")
    return decode_image_bytes(data)


def read_and_decode(
    root: Path | str,
    files: Iterable[ImageFile],
    *,
    known: Callable[[str, int], DecodedImage | None] | None = None,
    workers: int | None = None,
) -> list[DecodedImage]:
    """Read and decode files, in input order; failures come back as errors, never raised.

    `known(content_hash, size_bytes)` may return the image as an earlier run decoded it,
    so unchanged images are not decoded again. Large jobs are spread over `workers`
    processes (default: one per CPU), each reading and decoding chunks of files.
    """
    root = Path(root)
    files = list(files)
    results: list[DecodedImage | None] = [None] * len(files)
    todo: list[int] = []
    for i, f in enumerate(files):
        if known is None:
            todo.append(i)
            continue
        try:
            data = (root / f.rel_path).read_bytes()
        except OSError as exc:
            results[i] = DecodedImage("", 0, 0, 0, "", None, f"unreadable file: {exc}")
            continue
        cached = known(hashlib.sha1(data).hexdigest()[:16], len(data))
        if cached is not None:
            results[i] = cached
        else:
            todo.append(i)
    workers = workers or os.cpu_count() or 1
    # Forked workers only decode with Pillow and numpy (no OpenMP, no torch), which is safe
    # in a child of a threaded process; spawn would re-import the caller's __main__.
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if can_fork and workers > 1 and len(todo) >= PROCESS_POOL_MIN_FILES:
        chunks = [todo[k : k + CHUNK_FILES] for k in range(0, len(todo), CHUNK_FILES)]
        paths = [[str(root / files[i].rel_path) for i in chunk] for chunk in chunks]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for chunk, decoded in zip(chunks, pool.map(_read_decode_chunk, paths), strict=True):
                for i, d in zip(chunk, decoded, strict=True):
                    results[i] = d
    else:
        for i in todo:
            results[i] = _read_decode(root / files[i].rel_path)
    return results  # type: ignore[return-value]


def unique_ids(content_hashes: list[str], rel_paths: list[str]) -> list[str]:
    """Image ids: the content hash, suffixed -2, -3... for byte-identical files (path order)."""
    order = sorted(range(len(content_hashes)), key=lambda i: (content_hashes[i], rel_paths[i]))
    ids = [""] * len(content_hashes)
    seen: dict[str, int] = {}
    for i in order:
        h = content_hashes[i]
        seen[h] = seen.get(h, 0) + 1
        ids[i] = h if seen[h] == 1 else f"{h}-{seen[h]}"
    return ids
