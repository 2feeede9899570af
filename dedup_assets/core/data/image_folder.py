"""Reading a labelled ImageFolder (`<root>/<class>/<image>`) into one uint8 pixel store.

Every image is decoded once to 64x64 RGB; files that cannot be read are quarantined
with their reason instead of stopping the run, and every other entry under the source is
reported as skipped with its reason, never dropped silently: hidden entries (names starting
with `.`, read only with `include_hidden`), files that are not images, entries outside a
class folder, the dataset's own files (`ground_truth.csv`, the demo's manifest). Paths are
kept as the exact bytes the file system returned, so any name it allows can be read back;
the strings for display are always valid UTF-8. Image ids are content hashes, so the same
picture keeps its id when files are renamed, listed in another order or re-scanned.

16-bit greyscale is mapped by its bit depth (value / 257, as libvips, ImageMagick and
scikit-image do), never stretched per image: a dark and a bright copy of one picture stay
different, as they are; but values that all fit a narrower conventional range are read by
it (`_value_range`: 8-bit values in a 16-bit file, float images in 0..255), with a note, so
different such images do not all decode black (or white) into one exact-copy group.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import multiprocessing
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np
from PIL import ExifTags, Image, ImageOps

from dedup_assets.core.data.pools import cancelling, process_cores

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
    | {".ppm", ".pgm", ".pbm", ".pnm"}  # Netpbm, as scientific and vision tools write it
)
_IMAGE_EXTENSIONS_B = frozenset(os.fsencode(e) for e in IMAGE_EXTENSIONS)
# Files in the root that belong to the dataset but are not images: listed with this reason.
# (planting.GROUND_TRUTH_FILENAME, demo_data.MANIFEST_FILENAME and demo_data.LEAKS_FILENAME;
# a test keeps them equal.)
OWN_ROOT_FILES = {
    "ground_truth.csv": "the dataset's ground truth of known duplicates (read by the "
    "evaluation unless --ground-truth names another file), not an image: skipped",
    "leaks.csv": "the dataset's ground truth of known leaks (evaluation images with a copy in "
    "train; the demo's split variant writes one), not an image: skipped",
    ".demo_manifest.json": "latent-dedup's own file (the demo dataset's manifest), not an image: "
    "skipped",
}
_OWN_ROOT_FILES_B = {os.fsencode(n): r for n, r in OWN_ROOT_FILES.items()}
HIDDEN_FILE = "hidden (its name starts with '.'): skipped; --include-hidden reads it"
HIDDEN_FOLDER = (
    "hidden folder (its name starts with '.'): skipped with everything in it; "
    "--include-hidden reads it"
)
# Files larger than this are quarantined unread: no real image is this big, a mistake could be.
DEFAULT_MAX_FILE_BYTES = 256 * 2**20
IMAGE_SIZE = 64
# Resampling used when an image is not already 64x64: the whole frame is kept (no crop).
RESAMPLE = Image.Resampling.BICUBIC

StrPath = str | bytes | os.PathLike

_PLAIN_KEY = re.compile(rb"[A-Za-z0-9_-]{1,64}")
_MAX_KEY = 64
_HASHED_KEY_PREFIX = 40


def _display(raw: bytes) -> str:
    """Valid UTF-8 text for a raw file name or path; undecodable bytes become `\\xNN`."""
    return raw.decode("utf-8", "backslashreplace")


def class_key(raw_name: bytes | str) -> str:
    """A Dagster partition key and file-name stem for a class folder name.

    Names of at most 64 characters from [A-Za-z0-9_-] are kept as they are. Others are the
    percent-encoded bytes (`.` and `~` included), reversible with `unquote_to_bytes`; when
    that is longer than 64 characters, its first (at most) 40 characters, `~` and 16 hex of
    the name's sha1. Keys thus use only [A-Za-z0-9_%~-], are at most 64 characters and
    differ for different names.
    """
    raw = os.fsencode(raw_name)
    if not raw:
        raise ValueError("a class name cannot be empty")
    if _PLAIN_KEY.fullmatch(raw):
        return raw.decode("ascii")
    encoded = quote(raw, safe="").replace(".", "%2E").replace("~", "%7E")
    if len(encoded) <= _MAX_KEY:
        return encoded
    prefix = encoded[:_HASHED_KEY_PREFIX]
    cut = prefix.rfind("%", len(prefix) - 2)  # a %XX triple cut short at the end
    if cut >= 0:
        prefix = prefix[:cut]
    return f"{prefix}~{hashlib.sha1(raw).hexdigest()[:16]}"


@dataclass(frozen=True)
class ImageFile:
    """One image file of a class: display strings, partition key and the exact path bytes."""

    class_name: str  # class folder name, valid UTF-8 (undecodable bytes as \xNN)
    class_key: str  # see class_key()
    rel_path: str  # '/'-separated path below the root, valid UTF-8 (undecodable bytes as \xNN)
    raw_path: bytes  # the exact path bytes below the root: the only thing used to open the file
    size: int = field(default=-1, compare=False)  # bytes, from the scan's stat (-1: unknown)
    mtime_ns: int = field(default=-1, compare=False)  # modification time, from the same stat
    link: bool = field(default=False, compare=False)  # a symbolic link to the file

    def source_path(self, root: StrPath) -> str:
        """The path to open, exact also for names that are not valid UTF-8."""
        return os.fsdecode(os.path.join(os.fsencode(root), self.raw_path))


@dataclass(frozen=True)
class SkippedPath:
    """An entry below the root that is not read as an image, and why."""

    path: str  # display path below the root, valid UTF-8
    raw_path: bytes
    class_name: str | None  # None for entries directly in the root (or a split's folder)
    reason: str
    # The class partition it lies in (None: outside a class); the path says it already.
    class_key: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class FolderScan:
    """The image files of a folder and the entries skipped, each sorted by raw path;
    `classes` maps the key of every class folder (empty ones too) to its display name."""

    files: list[ImageFile]
    skipped: list[SkippedPath]
    classes: dict[str, str] = field(default_factory=dict)
    raw_classes: dict[str, bytes] = field(default_factory=dict)  # key -> folder name bytes
    notes: tuple[str, ...] = ()  # what was accepted but is worth saying (`splits.SplitLayout`)
    # Per class key, its image files' count and digest lines (`run_fingerprint.file_lines`,
    # in `files` order), where the lister kept them (`live_listing`): the class listings'
    # digests are taken from them without formatting every file again.
    class_lines: dict[str, tuple[int, bytes]] | None = field(default=None, compare=False)


_TYPE_NAMES = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISLNK, "symbolic link"),
)


def _type_name(mode: int) -> str:
    return next((name for test, name in _TYPE_NAMES if test(mode)), "special file")


def _list_dir(path: bytes) -> list[os.DirEntry[bytes]]:
    """The entries of a folder (any order); OSError when it cannot be read."""
    with os.scandir(path) as it:
        return list(it)


def _folder_skip(
    raw_rel: bytes, class_name: str | None, exc: OSError, key: str | None = None
) -> SkippedPath:
    """A folder whose listing failed, reported instead of silently missing its images."""
    return SkippedPath(
        _display(raw_rel),
        raw_rel,
        class_name,
        f"folder could not be read: {exc.strerror or exc}",
        key,
    )


def _classify(entry: os.DirEntry[bytes]) -> tuple[str, str | None]:
    """("file" | "dir" | "linkdir" | "skip", reason): regular files, folders, links to them."""
    try:
        if entry.is_symlink():
            try:
                mode = os.stat(entry.path).st_mode
            except FileNotFoundError:
                return "skip", "broken symbolic link (its target does not exist): skipped"
            except OSError as exc:
                return (
                    "skip",
                    f"symbolic link could not be followed ({exc.strerror or exc}): skipped",
                )
            if stat.S_ISREG(mode):
                return "file", None
            if stat.S_ISDIR(mode):
                return "linkdir", None
            return "skip", f"symbolic link to a {_type_name(mode)}, not a regular file: skipped"
        # d_type answers these without a system call for ordinary entries.
        if entry.is_dir(follow_symlinks=False):
            return "dir", None
        if entry.is_file(follow_symlinks=False):
            return "file", None
        mode = entry.stat(follow_symlinks=False).st_mode
        return "skip", f"not a regular file ({_type_name(mode)}): skipped"
    except OSError as exc:
        return "skip", f"could not be inspected ({exc.strerror or exc}): skipped"


def _image_extension_problem(name: bytes) -> str | None:
    """None for an image file name, else why it is not read as one."""
    ext = os.path.splitext(name)[1].lower()
    if ext in _IMAGE_EXTENSIONS_B:
        return None
    if not ext:
        return "no file extension, so not an image: skipped"
    return f"file extension '{_display(ext)}' is not an image extension: skipped"


# The kind of each reason this module gives, by how the reason starts (first match wins);
# any other reason (a decoder's error, a read that failed) means the file is unreadable.
_REASON_KINDS = (
    ("hidden", "hidden"),
    ("the dataset's ground truth", "ground truth or manifest"),
    ("latent-dedup's own file", "ground truth or manifest"),
    ("image directly in the source root", "outside a class folder"),
    ("file directly in the source root", "outside a class folder"),
    ("image directly in split folder", "outside a class folder"),
    ("file directly in split folder", "outside a class folder"),
    ("no file extension", "not an image"),
    ("file extension '", "not an image"),
    ("larger than the limit", "too large"),
    ("image too large to decode safely", "too large"),  # Pillow's bomb guard: not corrupt
    ("not a regular file", "not a regular file"),
    ("symbolic link", "not a regular file"),
    ("broken symbolic link", "not a regular file"),
)


def reason_kind(reason: str) -> str:
    """A short kind of a skip reason, for counts: hidden, not an image, too large, ..."""
    return next((kind for start, kind in _REASON_KINDS if reason.startswith(start)), "unreadable")


def _hidden_skip(
    raw_rel: bytes, class_name: str | None, kind: str, key: str | None = None
) -> SkippedPath:
    """A hidden entry, listed once (a hidden folder with everything in it)."""
    folder = kind in ("dir", "linkdir")
    return SkippedPath(
        _display(raw_rel), raw_rel, class_name, HIDDEN_FOLDER if folder else HIDDEN_FILE, key
    )


def _open_root(root: StrPath) -> bytes:
    """The source folder's path bytes, after checking it is a readable folder."""
    root_b = os.fsencode(root)
    shown = _display(root_b)
    try:
        mode = os.stat(root_b).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"image source {shown} does not exist") from None
    except OSError as exc:
        raise type(exc)(f"image source {shown} could not be read: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(mode):
        raise NotADirectoryError(f"image source {shown} is not a directory")
    return root_b


def _top_entries(
    root_b: bytes, within: bytes, include_hidden: bool, holds: str
) -> tuple[list[bytes], list[SkippedPath]]:
    """The folders directly in `root/within` (names), and every other entry there as
    skipped with its reason; `holds`: what its folders are ("class" or "split"). The
    dataset's own files (OWN_ROOT_FILES) are recognised in the source root only."""
    here = os.path.join(root_b, within) if within else root_b
    try:
        entries = _list_dir(here)
    except OSError as exc:
        if not within:
            shown = _display(root_b)
            raise type(exc)(
                f"image source {shown} could not be read: {exc.strerror or exc}"
            ) from exc
        return [], [_folder_skip(within, None, exc)]
    where = f"split folder {_display(within)}" if within else "the source root"
    folders: list[bytes] = []
    skipped: list[SkippedPath] = []
    for entry in entries:
        name = entry.name
        rel = within + b"/" + name if within else name
        kind, reason = _classify(entry)
        if kind == "file" and not within and name in _OWN_ROOT_FILES_B:
            skipped.append(SkippedPath(_display(name), name, None, _OWN_ROOT_FILES_B[name]))
            continue
        if name.startswith(b".") and not include_hidden:
            skipped.append(_hidden_skip(rel, None, kind))
            continue
        if kind in ("dir", "linkdir"):
            folders.append(name)
            continue
        if kind == "file":
            what = "image" if _image_extension_problem(name) is None else "file"
            reason = f"{what} directly in {where}, not in a {holds} folder: skipped"
        skipped.append(SkippedPath(_display(rel), rel, None, str(reason)))
    return folders, skipped


def scan_image_folder(
    root: StrPath,
    *,
    include_hidden: bool = False,
    within: bytes = b"",
    key_of: Callable[[str], str] | None = None,
) -> FolderScan:
    """Every image file under `<root>/<class>/`, and every other entry with why it is skipped.

    Images in nested folders below a class folder belong to that class. Hidden entries
    (names starting with `.`) are skipped and listed, a hidden folder as one entry, unless
    `include_hidden`: then they are read like any other (a hidden folder in the root is a
    class). OWN_ROOT_FILES in the root are listed with their own reason. A class folder may
    be a symbolic link to a folder; links to folders below it are not followed (no loops).
    Only regular files, or links to them, are listed as images.

    within: a folder below root whose folders are the classes (a split's, `core.data.splits`);
    every path stays relative to root. key_of: a class key -> its partition key (a split's
    `split_class_key`; default: the class key itself).
    """
    root_b = _open_root(root)
    folders, skipped = _top_entries(root_b, within, include_hidden, "class")
    files: list[ImageFile] = []
    classes: dict[str, bytes] = {}
    for name in folders:
        key = class_key(name) if key_of is None else key_of(class_key(name))
        classes[key] = name
        rel = within + b"/" + name if within else name
        _scan_class(root_b, rel, files, skipped, include_hidden, name=_display(name), key=key)
    files.sort(key=lambda f: f.raw_path)
    skipped.sort(key=lambda s: s.raw_path)
    ordered = dict(sorted(classes.items()))
    return FolderScan(files, skipped, {k: _display(raw) for k, raw in ordered.items()}, ordered)


def root_entries(root: StrPath, *, include_hidden: bool = False) -> list[SkippedPath]:
    """The entries of a split source's root other than its (split) folders, as skipped:
    the dataset's own files, hidden entries, files outside a split folder."""
    return _top_entries(_open_root(root), b"", include_hidden, "split")[1]


_CLASS_FOLDERS: dict[tuple[bytes, bool], dict[str, bytes]] = {}
"""Per listed folder (and hidden setting): class key -> folder name, from its last listing."""


def find_class_folder(
    root: StrPath, key: str, *, include_hidden: bool = False, within: bytes = b""
) -> bytes | None:
    """The exact name of the class folder (in `root/within`) whose class key is `key`, or
    None (a hidden folder is a class only with `include_hidden`).

    The folder's listing is kept and the name it gave is checked to be a folder still:
    each class of a run asks once, and listing a source of 5,000 classes for every one of
    them was quadratic (measured: 4.5 ms a class there, against 5 us). Keys differ for
    different names (`class_key`), so a kept name is the only one a key can have; a key
    not in the kept listing, or whose folder is gone, lists the folder again."""
    root_b = os.fsencode(root)
    parent = os.path.join(root_b, within) if within else root_b
    kept = _CLASS_FOLDERS.get((parent, include_hidden))
    name = kept.get(key) if kept is not None else None
    if name is not None:
        try:
            if stat.S_ISDIR(os.stat(os.path.join(parent, name)).st_mode):
                return name
        except OSError:
            pass
    folders: dict[str, bytes] = {}
    for entry in _list_dir(parent):
        hidden = entry.name.startswith(b".") and not include_hidden
        if hidden or _classify(entry)[0] not in ("dir", "linkdir"):
            continue
        folders.setdefault(class_key(entry.name), entry.name)
    _CLASS_FOLDERS[(parent, include_hidden)] = folders
    return folders.get(key)


def scan_class_folder(
    root: StrPath,
    class_raw: bytes,
    *,
    include_hidden: bool = False,
    within: bytes = b"",
    key: str | None = None,
) -> FolderScan:
    """The images below one class folder (any depth) and the entries skipped there; the
    folder `class_raw` lies in `root/within`, its partition key is `key` (default: its
    class key), paths are relative to root."""
    root_b = os.fsencode(root)
    files: list[ImageFile] = []
    skipped: list[SkippedPath] = []
    key = class_key(class_raw) if key is None else key
    rel = within + b"/" + class_raw if within else class_raw
    if os.path.isdir(os.path.join(root_b, rel)):
        _scan_class(root_b, rel, files, skipped, include_hidden, name=_display(class_raw), key=key)
    files.sort(key=lambda f: f.raw_path)
    skipped.sort(key=lambda s: s.raw_path)
    return FolderScan(files, skipped, {key: _display(class_raw)}, {key: class_raw})


def _scan_class(
    root_b: bytes,
    class_rel: bytes,
    files: list[ImageFile],
    skipped: list[SkippedPath],
    include_hidden: bool,
    *,
    name: str,
    key: str,
    on_folder: Callable[[bytes, bytes], None] | None = None,
    on_link: Callable[[bytes], None] | None = None,
) -> None:
    """Add the images below one class folder (`class_rel`, relative to the root; any depth)
    and the entries skipped there, as class `name` with partition key `key`. `on_folder`
    is given each folder's path (and that path below the root) before it is listed,
    `on_link` each symbolic link's path and each image's with another hard link
    (`live_listing` watches the one, and cannot trust a watch for the other)."""
    class_name = name
    pending = [class_rel]
    while pending:
        rel_dir = pending.pop()
        here = os.path.join(root_b, rel_dir)
        if on_folder is not None:
            on_folder(here, rel_dir)
        try:
            entries = _list_dir(here)
        except OSError as exc:
            skipped.append(_folder_skip(rel_dir, class_name, exc, key))
            continue
        for entry in entries:
            name = entry.name
            rel = rel_dir + b"/" + name
            if on_link is not None and entry.is_symlink():
                on_link(entry.path)
            kind, reason = _classify(entry)
            if name.startswith(b".") and not include_hidden:
                skipped.append(_hidden_skip(rel, class_name, kind, key))
                continue
            if kind == "dir":
                pending.append(rel)
                continue
            if kind == "linkdir":
                reason = "symbolic link to a folder inside a class folder: not followed"
            elif kind == "file":
                reason = _image_extension_problem(name)
                if reason is None:
                    try:
                        st = entry.stat()  # follows a link to its regular file
                        size, mtime = st.st_size, st.st_mtime_ns
                        if on_link is not None and st.st_nlink > 1:
                            on_link(entry.path)
                    except OSError:
                        size, mtime = -1, -1
                    link = entry.is_symlink()
                    files.append(ImageFile(class_name, key, _display(rel), rel, size, mtime, link))
                    continue
            skipped.append(SkippedPath(_display(rel), rel, class_name, str(reason), key))


class SourceFileError(Exception):
    """A source file that is not a readable regular file within the size limit."""


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC
_READ_MORE = 1 << 16


def read_source_file(path: StrPath, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; SourceFileError(reason) otherwise.

    Opened non-blocking and checked with fstat before reading, so a FIFO, a device or a
    folder named like an image fails at once instead of hanging or reading forever.
    Symbolic links to regular files are followed.
    """
    too_large = f"larger than the limit of {max_bytes} bytes (max_file_bytes)"
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise SourceFileError("file not found (removed, or a broken symbolic link)") from None
    except OSError as exc:
        raise SourceFileError(f"file could not be opened: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceFileError(f"not a regular file ({_type_name(st.st_mode)})")
        if st.st_size > max_bytes:
            raise SourceFileError(too_large)
        limit = max_bytes + 1  # one byte more shows a file that grew past the limit
        chunks: list[bytes] = []
        total = 0
        want = st.st_size + 1  # the whole file in one read, then the empty read at its end
        while total < limit:
            chunk = os.read(fd, min(want, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = _READ_MORE
        if total > max_bytes:
            raise SourceFileError(too_large)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as exc:
        raise SourceFileError(f"file could not be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


# Pillow's modes for 16-bit greyscale (PNG, TIFF; "I" is also its 32-bit integer mode), and
# its 32-bit float mode "F": values are mapped to 0..255 by the range they are written in.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# The conventional ranges a wide image's values are written in, narrowest first: float
# images come as 0..1 (or 0..255), 16-bit ones as 0..65535 (or 8-bit values in a 16-bit
# file, as `cv2.imwrite(a.astype(uint16))` writes them), 32-bit integer ones as either.
_RANGES = {"F": (1.0, 255.0, 65535.0), "int": (255.0, 65535.0, 2.0**32 - 1)}


def _value_range(mode: str, arr: np.ndarray) -> float:
    """The full-scale value of a wide image: the narrowest conventional range its largest
    value fits (a fixed scale, not the image's own maximum, so an image and a darker copy
    stay different pixels)."""
    ranges = _RANGES["F" if mode == "F" else "int"]
    top = float(arr.max()) if arr.size else 0.0
    return next((r for r in ranges if top <= r), ranges[-1])


def wide_range_note(img: Image.Image) -> str | None:
    """A note for a wide image read by a range other than its mode's usual one (16-bit
    values all below 256, float values above 1): how it was read."""
    if img.mode not in SIXTEEN_BIT_MODES and img.mode != "F":
        return None
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
    usual = 1.0 if img.mode == "F" else (2.0**32 - 1 if img.mode == "I" else 65535.0)
    used = _value_range(img.mode, arr)
    if img.mode == "I" and used == 65535.0:
        return None  # a 16-bit file Pillow opened as "I" (PNG, some TIFFs): the usual case
    if used == usual:
        return None
    kind = "float" if img.mode == "F" else f"{img.mode} integer"
    return f"{kind} values all within 0..{used:g}: read as that range"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha is composited over white; 16-bit, 32-bit and
    float greyscale are mapped from the narrowest conventional range their values fit
    (`_value_range`: float 0..1 or 0..255, integers 0..255, 0..65535 or 32-bit)."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        full = _value_range(img.mode, arr)
        arr = np.clip(arr, 0.0, full) * (255.0 / full)
        img = Image.fromarray(arr.round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")  # convert copies even RGB


_TURNED = frozenset(range(2, 9))  # EXIF orientations that turn or flip the image


def _upright(img: Image.Image) -> Image.Image:
    """The image as its EXIF orientation shows it (`ImageOps.exif_transpose`), or the image
    itself when it is upright already: exif_transpose copies every image it does not turn,
    a tenth of decoding a 64 px JPEG."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED:
        return ImageOps.exif_transpose(img)
    return img


@dataclass(frozen=True)
class DecodedImage:
    """Result of reading and decoding one file: pixels or the reason it failed."""

    content_hash: str  # sha1 of the file bytes, 16 hex ("" when the file could not be read)
    size_bytes: int
    width: int
    height: int
    mode: str
    pixels: np.ndarray | None  # (64, 64, 3) uint8
    error: str | None
    pixel_hash: str | None  # blake2b of the pixels, 16 hex: equal means identical after decoding
    note: str | None = None  # e.g. that only the first frame of an animation was used


def pixel_hash(pixels: np.ndarray) -> str:
    """16 hex of blake2b over the decoded uint8 pixels."""
    return hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=8).hexdigest()


_ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})


# Pillow warns (on stderr, naming no file) about images of more than MAX_IMAGE_PIXELS and
# refuses those of more than twice that. The warning becomes the image's note instead, and
# the refusal its quarantine reason (`_large_note`, `decode_image_bytes`).
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _large_note(width: int, height: int) -> str | None:
    """A note for an image above Pillow's decompression-bomb warning size (decoded whole)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or width * height <= limit:
        return None
    return f"very large image ({width * height / 1e6:,.0f} megapixels): decoded whole"


def _frames_note(img: Image.Image) -> str | None:
    """A note for a multi-frame file (its first frame is decoded), None for a still image."""
    try:
        if not getattr(img, "is_animated", False):
            return None
        frames = f" ({int(img.n_frames)} frames)"
    except Exception:  # noqa: BLE001 - a broken later frame does not spoil the first
        frames = ""
    kind = "animated" if img.format in _ANIMATED_FORMATS else "multi-frame"
    return f"{kind} image{frames}: the first frame was used"


def _error(reason: str, content_hash: str = "", size_bytes: int = 0) -> DecodedImage:
    return DecodedImage(content_hash, size_bytes, 0, 0, "", None, reason, None)


def decode_image_bytes(data: bytes) -> DecodedImage:
    """Decode one file's bytes to 64x64x3 uint8 (first frame); errors are returned, not raised."""
    digest = hashlib.sha1(data).hexdigest()[:16]
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            mode, (width, height) = opened.mode, opened.size
            rgb = _to_rgb(_upright(opened))
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE)
            pixels = np.asarray(rgb, dtype=np.uint8).copy()
            # After the pixels are taken: counting frames seeks through the file.
            notes = [wide_range_note(opened), _large_note(width, height), _frames_note(opened)]
            note = "; ".join(n for n in notes if n) or None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        reason = f"image too large to decode safely: more than {limit:,.0f} megapixels"
        return _error(f"{reason} (Pillow's guard against decompression bombs)", digest, len(data))
    except Image.UnidentifiedImageError:
        if not data:
            return _error("empty file (0 bytes)", digest, 0)
        return _error("not a readable image (unknown format or corrupt data)", digest, len(data))
    except Exception as exc:  # noqa: BLE001 - any decoder failure quarantines the file
        reason = f"{type(exc).__name__}: {exc}".strip()
        return _error(reason or "unreadable", digest, len(data))
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        return DecodedImage(digest, len(data), width, height, mode, None, "bad shape", None, note)
    return DecodedImage(
        digest, len(data), width, height, mode, pixels, None, pixel_hash(pixels), note
    )


# Below this many files decoding stays in-process; above, worker processes share it (Pillow's
# per-image Python work holds the GIL, so threads do not scale: measured slower than one).
PROCESS_POOL_MIN_FILES = 2000
CHUNK_FILES = 500


def _read_decode(path: bytes, max_bytes: int) -> DecodedImage:
    try:
        data = read_source_file(path, max_bytes)
    except SourceFileError as exc:
        return _error(str(exc))
    return decode_image_bytes(data)


def _read_decode_chunk(paths: list[bytes], max_bytes: int) -> list[DecodedImage]:
    """Worker: read and decode a chunk of files (a module-level function, so it pickles)."""
    return [_read_decode(p, max_bytes) for p in paths]


def read_and_decode(
    root: StrPath,
    files: Iterable[ImageFile],
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    known: Callable[[str, int], DecodedImage | None] | None = None,
    workers: int | None = None,
) -> list[DecodedImage]:
    """Read and decode files, in input order; failures come back as errors, never raised.

    Files are opened by their raw path with `read_source_file` (regular files of at most
    `max_file_bytes`). `known(content_hash, size_bytes)` may return the image as an
    earlier run decoded it, returned as is, so unchanged images are not decoded again.
    Large jobs are spread over `workers` processes (default: this process's share of the
    cores, `pools.process_cores`), each reading
    and decoding chunks of files.
    """
    root_b = os.fsencode(root)
    files = list(files)
    paths = [os.path.join(root_b, f.raw_path) for f in files]
    results: list[DecodedImage | None] = [None] * len(files)
    todo: list[int] = []
    for i, path in enumerate(paths):
        if known is None:
            todo.append(i)
            continue
        try:
            data = read_source_file(path, max_file_bytes)
        except SourceFileError as exc:
            results[i] = _error(str(exc))
            continue
        cached = known(hashlib.sha1(data).hexdigest()[:16], len(data))
        if cached is not None:
            results[i] = cached
        else:
            todo.append(i)
    workers = workers or process_cores()
    # Forked workers only decode with Pillow and numpy (no OpenMP, no torch), which is safe
    # in a child of a threaded process; spawn would re-import the caller's __main__.
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    if can_fork and workers > 1 and len(todo) >= PROCESS_POOL_MIN_FILES:
        chunks = [todo[k : k + CHUNK_FILES] for k in range(0, len(todo), CHUNK_FILES)]
        chunk_paths = [[paths[i] for i in chunk] for chunk in chunks]
        context = multiprocessing.get_context("fork")
        with cancelling(ProcessPoolExecutor(max_workers=workers, mp_context=context)) as pool:
            decoded = pool.map(_read_decode_chunk, chunk_paths, itertools.repeat(max_file_bytes))
            for chunk, part in zip(chunks, decoded, strict=True):
                for i, d in zip(chunk, part, strict=True):
                    results[i] = d
    else:
        for i in todo:
            results[i] = _read_decode(paths[i], max_file_bytes)
    return results  # type: ignore[return-value]


def unique_ids(
    content_hashes: list[str], rel_paths: list[str], links: list[bool] | None = None
) -> list[str]:
    """Image ids: the content hash, suffixed -2, -3... for byte-identical files, in path
    order with symbolic links after the files themselves (`links`): the bare id is visited
    first, so an exact-copy group keeps a real file rather than a link to a removed one,
    which a user deleting the removed files would break."""
    link = links if links is not None else [False] * len(content_hashes)
    order = sorted(
        range(len(content_hashes)), key=lambda i: (content_hashes[i], link[i], rel_paths[i])
    )
    ids = [""] * len(content_hashes)
    seen: dict[str, int] = {}
    for i in order:
        h = content_hashes[i]
        seen[h] = seen.get(h, 0) + 1
        ids[i] = h if seen[h] == 1 else f"{h}-{seen[h]}"
    return ids
