"""Planted near-duplicates with ground truth.

Copies an ImageFolder dataset (``<root>/<class>/<image>``) and plants transformed copies of a
fraction of its images next to their originals, recording every (original, copy) pair in a
``ground_truth.csv``. The planted pairs are what the dedup pipeline is evaluated against, so
everything here is deterministic for a given seed (same files, same bytes) and the source
dataset is never modified.

Copies are named ``<stem>__dup_<transform>.<png|jpg>`` (``.jpg`` only for the ``jpeg``
transform, so the compression artefacts are what is stored). Each transform draws its
parameters from a :class:`numpy.random.Generator` within the ranges documented on it; the
ranges are chosen so that a copy is visibly the same scene but never pixel-identical.

What an image of a class is, and how it is decoded, is the pipeline's own
(`core.data.image_folder`): the source is listed by `scan_image_folder` (images in nested
folders of a class belong to it; hidden entries, non-images and files outside a class folder
are left out and reported), and a copy is made from the pixels `dedup run` decodes (EXIF
orientation applied, alpha composited over white, 16-bit mapped by its bit depth). A copy
made from Pillow's plain ``convert("RGB")`` of a phone photo stored sideways was found by
no threshold (recall 0.0; RGBA cut-outs 0.35, 16-bit greyscale 0.25). Originals are copied
byte for byte.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import posixpath
import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dedup_assets.core.data.atomic_io import atomic_dir
from dedup_assets.core.data.image_folder import (
    DEFAULT_MAX_FILE_BYTES,
    HIDDEN_FILE,
    HIDDEN_FOLDER,
    SourceFileError,
    _display,
    _to_rgb,
    _upright,
    decode_image_bytes,
    read_source_file,
    reason_kind,
    scan_image_folder,
)
from dedup_assets.core.data.image_folder import IMAGE_EXTENSIONS as _PIPELINE_EXTENSIONS
from dedup_assets.core.data.splits import SplitLayoutError, detect_splits

__all__ = [
    "DEFAULT_PROPORTIONS",
    "DUP_MARKER",
    "GROUND_TRUTH_FILENAME",
    "GROUND_TRUTH_HEADER",
    "IMAGE_EXTENSIONS",
    "NAME_MAX",
    "TRANSFORMS",
    "DestNotEmptyError",
    "GroundTruthPair",
    "PlantSettingError",
    "PlantingSummary",
    "SkippedFile",
    "apply_transform",
    "decode_upright_rgb",
    "describe_left_out",
    "duplicate_name",
    "list_class_images",
    "plant_copies",
    "plant_duplicates",
    "read_ground_truth",
    "transform_of",
    "write_ground_truth",
]

IMAGE_EXTENSIONS: frozenset[str] = _PIPELINE_EXTENSIONS
"""Image suffixes recognised in a dataset (compared case-insensitively): the pipeline's own,
so a planted copy of a dataset holds every image `dedup run` reads in it (a GIF was left out
of the copy without a word)."""

GROUND_TRUTH_FILENAME = "ground_truth.csv"
GROUND_TRUTH_HEADER: tuple[str, str, str] = ("class", "original", "copy")
DUP_MARKER = "__dup_"
"""Separator between the original's stem and the transform name in a copy's file name."""
NAME_MAX = 255
"""Longest file name (bytes) a copy gets: the limit of ext4, XFS, btrfs, APFS and NTFS. A
245-character original plus ``__dup_brightness`` aborted the whole copy with ENAMETOOLONG."""


class PlantSettingError(ValueError):
    """A setting of plant (fraction, proportions, per-class count, source or dest) that
    cannot work; raised before anything is written. Other errors are failures, not these."""


class DestNotEmptyError(FileExistsError):
    """The dest folder exists and is not empty: plant never writes into it."""


# Private key under which the jpeg transform keeps its encoded bytes in ``Image.info``, so the
# copy on disk is exactly that encoding rather than a second re-encode of the decoded pixels.
_JPEG_BYTES_KEY = "latent_dedup_jpeg_bytes"


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def _factor_away_from_one(rng: np.random.Generator) -> float:
    """Factor in [0.8, 0.9] or [1.1, 1.25] (equal odds): a visible but mild change."""
    if rng.random() < 0.5:
        return float(rng.uniform(0.8, 0.9))
    return float(rng.uniform(1.1, 1.25))


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 30-75 (inclusive); the copy is stored as that ``.jpg``."""
    quality = int(rng.integers(30, 76))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    out = Image.open(io.BytesIO(data))
    out.load()
    out.info[_JPEG_BYTES_KEY] = data
    return out


def _brightness(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Scale brightness by a factor in [0.8, 0.9] or [1.1, 1.25]."""
    return ImageEnhance.Brightness(img.convert("RGB")).enhance(_factor_away_from_one(rng))


def _contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Scale contrast (around the mean grey level) by a factor in [0.8, 0.9] or [1.1, 1.25]."""
    return ImageEnhance.Contrast(img.convert("RGB")).enhance(_factor_away_from_one(rng))


def _noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Add i.i.d. Gaussian noise with sigma in [3, 8] (on the 0-255 scale), then clip."""
    sigma = float(rng.uniform(3.0, 8.0))
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    noisy = arr + rng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mode="RGB")


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 85-95% of each side (drawn per side) at a random offset; resize back (bicubic)."""
    rgb = img.convert("RGB")
    w, h = rgb.size
    cw = max(1, round(w * float(rng.uniform(0.85, 0.95))))
    ch = max(1, round(h * float(rng.uniform(0.85, 0.95))))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    return rgb.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))


def _blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur with radius in [0.6, 1.2] pixels."""
    radius = float(rng.uniform(0.6, 1.2))
    return img.convert("RGB").filter(ImageFilter.GaussianBlur(radius=radius))


TRANSFORMS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "jpeg": _jpeg,
    "brightness": _brightness,
    "contrast": _contrast,
    "noise": _noise,
    "crop": _crop,
    "blur": _blur,
}
"""Named near-duplicate transforms: ``(rgb_image, rng) -> rgb_image`` of the same size."""

DEFAULT_PROPORTIONS: dict[str, float] = dict.fromkeys(TRANSFORMS, 1.0)
"""Relative weight of each transform when choosing one for a planted copy (equal weights)."""


def apply_transform(name: str, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Apply the transform ``name`` to ``img`` (converted to RGB) with parameters from ``rng``."""
    try:
        fn = TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; known: {sorted(TRANSFORMS)}") from None
    return fn(img.convert("RGB"), rng)


def duplicate_name(original: str, transform: str, attempt: int = 1) -> str:
    """File name of a planted copy: ``<stem>__dup_<transform>.<png|jpg>``.

    ``.jpg`` for the ``jpeg`` transform (so its artefacts are what is stored), ``.png``
    (lossless) otherwise. Other names (e.g. ``exact``) keep the original's suffix. ``attempt``
    > 1 (a name already taken) adds ``-<attempt>`` before the suffix. A name longer than
    NAME_MAX bytes has its stem cut (at a character) and ``~`` and 12 hex of the stem's sha1
    appended to what is left, so the name fits, stays unique and still ends in
    ``__dup_<transform>`` (:func:`transform_of`).
    """
    p = Path(original)
    if transform == "jpeg":
        suffix = ".jpg"
    elif transform in TRANSFORMS:
        suffix = ".png"
    else:
        suffix = p.suffix
    clash = f"-{attempt}" if attempt > 1 else ""
    tail = f"{DUP_MARKER}{transform}{clash}{suffix}"
    stem = p.stem
    if len(os.fsencode(stem + tail)) <= NAME_MAX:
        return stem + tail
    tag = "~" + hashlib.sha1(os.fsencode(stem)).hexdigest()[:12]
    budget = NAME_MAX - len(os.fsencode(tag + tail))
    used = 0
    for i, char in enumerate(stem):  # surrogate escapes (undecodable bytes) are one byte
        used += len(os.fsencode(char))
        if used > budget:
            stem = stem[:i]
            break
    return stem + tag + tail


def _save_copy(img: Image.Image, path: Path) -> None:
    """Write a transformed image: the jpeg transform's exact bytes, else a lossless PNG."""
    data = img.info.get(_JPEG_BYTES_KEY)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            img.convert("RGB").save(path, format="JPEG", quality=95)
    else:
        img.convert("RGB").save(path, format="PNG")


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


class GroundTruthPair(NamedTuple):
    """One planted pair; file names are relative to the class folder."""

    class_name: str
    original: str
    copy: str


def write_ground_truth(path: Path, rows: Iterable[GroundTruthPair | Sequence[str]]) -> Path:
    """Write ``rows`` as CSV with header ``class,original,copy``; returns ``path``."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(GROUND_TRUTH_HEADER)
        for row in rows:
            pair = GroundTruthPair(*row)
            writer.writerow(pair)
    return path


def read_ground_truth(path: Path) -> list[GroundTruthPair]:
    """Read a ground-truth CSV: the columns ``class,original,copy``, in any order.

    Other columns (a ``transform``, a note) are ignored. Raises ``ValueError`` when one of
    the three is missing or a row leaves one empty, so a wrong file is not silently scored.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, None) or []]
        missing = [c for c in GROUND_TRUTH_HEADER if c not in header]
        if missing:
            raise ValueError(
                f"{path}: not a ground-truth file: expected the columns "
                f"{','.join(GROUND_TRUTH_HEADER)}, missing {','.join(missing)} "
                f"(header: {','.join(header)!r})"
            )
        at = [header.index(c) for c in GROUND_TRUTH_HEADER]
        pairs: list[GroundTruthPair] = []
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            values = [row[i] if i < len(row) else "" for i in at]
            if not all(values):
                raise ValueError(
                    f"{path}:{lineno}: class, original and copy must all be filled, got {row!r}"
                )
            pairs.append(GroundTruthPair(*values))
    return pairs


# --------------------------------------------------------------------------------------------
# Dataset helpers
# --------------------------------------------------------------------------------------------


class SkippedFile(NamedTuple):
    """A source entry not copied, and why; ``path`` is relative to the root (valid UTF-8,
    undecodable bytes as ``\\xNN``, as `dedup run` shows it)."""

    path: str
    reason: str


def _shown(name: str) -> str:
    """A file-system name (undecodable bytes as surrogate escapes) as `dedup run` shows it
    and names it in its catalog: valid UTF-8, undecodable bytes as ``\\xNN``."""
    return _display(os.fsencode(name))


_HIDDEN = (HIDDEN_FILE, HIDDEN_FOLDER)


def _list_source(root: Path) -> tuple[dict[str, list[str]], list[SkippedFile]]:
    """The source as `dedup run` lists it (`scan_image_folder`): class folder -> its image
    paths below it ('/'-separated, nested folders included, sorted by their bytes), both as
    file-system names; and every other entry with the pipeline's reason for leaving it out.
    """
    scan = scan_image_folder(root)
    classes = {key: os.fsdecode(raw) for key, raw in scan.raw_classes.items()}
    images: dict[str, list[str]] = {name: [] for name in classes.values()}
    for f in scan.files:
        prefix = os.fsencode(classes[f.class_key]) + b"/"
        images[classes[f.class_key]].append(os.fsdecode(f.raw_path.removeprefix(prefix)))
    # Plant has no --include-hidden: the pipeline's hint to it is left off its reason.
    left_out = [
        SkippedFile(s.path, s.reason.partition(";")[0] if s.reason in _HIDDEN else s.reason)
        for s in scan.skipped
    ]
    return dict(sorted(images.items(), key=lambda kv: os.fsencode(kv[0]))), left_out


def list_class_images(root: Path) -> dict[str, list[str]]:
    """Map each class folder of ``root`` to its image paths below it, as `dedup run` reads
    them: images in nested folders of a class count (``sub/x.jpg``), with any suffix of
    IMAGE_EXTENSIONS (case-insensitive); hidden entries and files directly in the root are
    not images of a class. Names are file-system strings (undecodable bytes as surrogate
    escapes), so they open the file."""
    return _list_source(Path(root))[0]


def describe_left_out(skipped: Sequence[SkippedFile], examples: int = 3) -> list[str]:
    """Lines saying what was not copied: a count per kind (`image_folder.reason_kind`) with
    up to ``examples`` paths each, the reason beside those whose kind does not say it."""
    by_kind: dict[str, list[SkippedFile]] = {}
    for entry in skipped:
        by_kind.setdefault(reason_kind(entry.reason), []).append(entry)
    lines = []
    for kind, entries in sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        said = kind not in ("unreadable", "too large", "not a regular file")
        shown = [e.path if said else f"{e.path} ({e.reason})" for e in entries[:examples]]
        more = f", and {len(entries) - examples:,} more" if len(entries) > examples else ""
        lines.append(f"{len(entries):,} {kind}: {', '.join(shown)}{more}")
    return lines


def _class_rng(seed: int, class_name: str, stream: int) -> np.random.Generator:
    """Independent generator per (seed, class, purpose): classes don't shift each other."""
    key = zlib.crc32(os.fsencode(class_name))  # any folder name, not only valid UTF-8
    return np.random.default_rng(np.random.SeedSequence([seed, key, stream]))


def decode_upright_rgb(data: bytes) -> Image.Image:
    """A file's first frame as `dedup run` decodes it (`image_folder.decode_image_bytes`),
    at full size: turned by its EXIF orientation, then the pipeline's RGB conversion (alpha
    over white, 16-bit and float by their range). Raises on a file it cannot decode."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return _to_rgb(_upright(opened))  # a new image: both copy what they do not change


def _load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` decoded as the pipeline decodes it (:func:`decode_upright_rgb`)."""
    return decode_upright_rgb(read_source_file(path, DEFAULT_MAX_FILE_BYTES))


def _validate_proportions(proportions: Mapping[str, float] | None) -> tuple[list[str], np.ndarray]:
    props = dict(DEFAULT_PROPORTIONS if proportions is None else proportions)
    unknown = sorted(set(props) - set(TRANSFORMS))
    if unknown:
        raise PlantSettingError(f"unknown transform(s) {unknown}; known: {sorted(TRANSFORMS)}")
    names = [n for n in TRANSFORMS if props.get(n, 0.0) > 0]
    if any(not math.isfinite(v) or v < 0 for v in props.values()) or not names:
        raise PlantSettingError(f"proportions must be finite, >= 0 and not all zero, got {props}")
    weights = np.array([props[n] for n in names], dtype=np.float64)
    return names, weights / weights.sum()


def _n_to_plant(fraction: float, n: int) -> int:
    """round-half-up(fraction * n), at least 1 when fraction > 0 and n > 0, at most n."""
    if fraction <= 0 or n == 0:
        return 0
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def plant_copies(
    root: Path,
    originals: Mapping[str, Sequence[str]],
    *,
    fraction: float,
    proportions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> list[GroundTruthPair]:
    """Plant transformed copies of ``fraction`` of each class's ``originals`` inside ``root``.

    ``originals`` maps class -> readable images already below ``root/<class>`` (file-system
    names; a path ``sub/x.jpg`` in a nested folder). Per class, round-half-up(fraction * n)
    originals (at least 1 if fraction > 0) are sampled with a generator seeded by (seed,
    class), each gets one transform drawn by ``proportions``, and the copy is written next to
    it, made from the original's pixels as the pipeline decodes them. A name clash gets a
    ``-2``, ``-3``... suffix before the extension (:func:`duplicate_name`). Returns the pairs by
    class, in the order of ``originals``, with names as `dedup run` shows them (valid UTF-8).
    Works in place (used by the demo generator on its own temporary tree).
    """
    if not 0.0 <= fraction <= 1.0:
        raise PlantSettingError(f"fraction must be in [0, 1], got {fraction}")
    names, probs = _validate_proportions(proportions)
    pairs: list[GroundTruthPair] = []
    for class_name in sorted(originals):
        files = list(originals[class_name])
        k = _n_to_plant(fraction, len(files))
        if k == 0:
            continue
        class_dir = Path(root) / class_name
        taken: dict[str, set[str]] = {}  # folder below the class -> the names in it
        rng = _class_rng(seed, class_name, stream=1)
        chosen = sorted(rng.choice(len(files), size=k, replace=False).tolist())
        for idx in chosen:
            original = files[idx]
            folder, name = posixpath.split(original)
            if folder not in taken:
                taken[folder] = {p.name for p in (class_dir / folder).iterdir()}
            transform = names[int(rng.choice(len(names), p=probs))]
            attempt = 1
            while (copy_name := duplicate_name(name, transform, attempt)) in taken[folder]:
                attempt += 1
            taken[folder].add(copy_name)
            copy = posixpath.join(folder, copy_name)
            out = apply_transform(transform, _load_rgb(class_dir / original), rng)
            _save_copy(out, class_dir / copy)
            pairs.append(GroundTruthPair(_shown(class_name), _shown(original), _shown(copy)))
    return pairs


def _check_source_dest(source: Path, dest: Path) -> tuple[Path, Path]:
    src = Path(source).resolve()
    dst = Path(dest).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"source dataset folder not found: {src}")
    if dst == src or dst.is_relative_to(src):
        raise PlantSettingError(f"dest {dst} must not be the source folder or inside it ({src})")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DestNotEmptyError(f"dest {dst} already exists and is not an empty folder; refusing")
    return src, dst


def _refuse_split_source(src: Path, found_images: bool) -> None:
    """A source of split folders (``train/<class>/...``) is refused, naming a split to plant
    into: its splits would be planted as classes, their class folders as nested folders. A
    layout the split detection cannot read is refused only when no images were found."""
    try:
        layout = detect_splits(src)
    except SplitLayoutError as exc:
        if found_images:
            return
        raise PlantSettingError(f"no images in the class folders of {src}: {exc}") from None
    if not layout.implicit:
        raise PlantSettingError(
            f"{src} has split folders ({', '.join(s.folder for s in layout.splits)}); plant "
            f"into one split, e.g. --source {src / layout.splits[0].folder}"
        )
    if not found_images:
        raise PlantSettingError(
            f"no images in the class folders of {src} (dedup plant takes <source>/<class>/<image>)"
        )


# --------------------------------------------------------------------------------------------
# plant_duplicates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantingSummary:
    """What :func:`plant_duplicates` wrote.

    ``originals_per_class`` counts copied originals, ``copies_per_class`` and
    ``copies_per_transform`` the planted copies (every class / transform present, zeros
    included); ``skipped`` lists image files that could not be read (not copied) with the
    reason, ``left_out`` every other source entry not copied because `dedup run` does not
    read it as an image of a class (hidden, not an image, outside a class folder...), with the
    pipeline's reason. Class names are as `dedup run` shows them (valid UTF-8).
    """

    source: Path
    dest: Path
    ground_truth: Path
    seed: int
    fraction: float
    originals_per_class: dict[str, int]
    copies_per_class: dict[str, int]
    copies_per_transform: dict[str, int]
    pairs: tuple[GroundTruthPair, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    left_out: tuple[SkippedFile, ...] = ()

    @property
    def n_originals(self) -> int:
        """Total number of originals copied to ``dest``."""
        return sum(self.originals_per_class.values())

    @property
    def n_copies(self) -> int:
        """Total number of planted copies."""
        return sum(self.copies_per_class.values())


def _copy_readable(src: Path, dst: Path, skipped: list[SkippedFile], shown: str) -> bool:
    """Copy ``src`` to ``dst`` byte for byte (times kept) if the pipeline can decode it,
    else add it to ``skipped`` with the pipeline's reason; whether it was copied."""
    try:
        data = read_source_file(src, DEFAULT_MAX_FILE_BYTES)
    except SourceFileError as exc:
        skipped.append(SkippedFile(shown, str(exc)))
        return False
    decoded = decode_image_bytes(data)
    if decoded.error is not None:
        skipped.append(SkippedFile(shown, decoded.error))
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    shutil.copystat(src, dst)
    return True


def plant_duplicates(
    source: Path,
    dest: Path,
    *,
    fraction: float = 0.05,
    per_class: int | None = None,
    proportions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> PlantingSummary:
    """Copy the ImageFolder ``source`` to ``dest`` and plant near-duplicates with ground truth.

    The source is listed as `dedup run` lists it (:func:`list_class_images`; what is not an
    image of a class is reported in ``left_out``). With ``per_class`` set, only that many
    images per class are copied, sampled (seeded per class) from the sorted list. Files the
    pipeline cannot decode are skipped and reported. Then :func:`plant_copies` plants copies
    of ``fraction`` of each class's originals and ``dest/ground_truth.csv`` is written. The
    tree is built in a temporary sibling and renamed into place, so ``dest`` appears complete
    or not at all. ``source`` is only read.

    Raises PlantSettingError (a ValueError) for a setting that cannot work, among them a
    ``dest`` that is ``source`` or inside it, and a source with no images or of split folders;
    DestNotEmptyError (a FileExistsError) if ``dest`` exists and is not an empty folder.
    """
    src, dst = _check_source_dest(source, dest)
    if per_class is not None and per_class < 1:
        raise PlantSettingError(f"per_class must be >= 1 or None, got {per_class}")
    if not 0.0 <= fraction <= 1.0:
        raise PlantSettingError(f"fraction must be in [0, 1], got {fraction}")
    _validate_proportions(proportions)

    classes, left_out = _list_source(src)
    _refuse_split_source(src, any(classes.values()))
    skipped: list[SkippedFile] = []
    copied: dict[str, list[str]] = {}
    with atomic_dir(dst) as tmp:
        for class_name, files in classes.items():
            if per_class is not None and len(files) > per_class:
                rng = _class_rng(seed, class_name, stream=0)
                keep = sorted(rng.choice(len(files), size=per_class, replace=False).tolist())
                files = [files[i] for i in keep]
            (tmp / class_name).mkdir()
            copied[class_name] = [
                name
                for name in files
                if _copy_readable(
                    src / class_name / name,
                    tmp / class_name / name,
                    skipped,
                    _shown(f"{class_name}/{name}"),
                )
            ]
        pairs = plant_copies(tmp, copied, fraction=fraction, proportions=proportions, seed=seed)
        write_ground_truth(tmp / GROUND_TRUTH_FILENAME, pairs)

    copies_per_class = {_shown(c): 0 for c in classes}
    copies_per_transform = dict.fromkeys(TRANSFORMS, 0)
    for pair in pairs:
        copies_per_class[pair.class_name] += 1
        copies_per_transform[transform_of(pair.copy)] += 1
    return PlantingSummary(
        source=src,
        dest=dst,
        ground_truth=dst / GROUND_TRUTH_FILENAME,
        seed=seed,
        fraction=fraction,
        originals_per_class={_shown(c): len(v) for c, v in copied.items()},
        copies_per_class=copies_per_class,
        copies_per_transform=copies_per_transform,
        pairs=tuple(pairs),
        skipped=tuple(skipped),
        left_out=tuple(left_out),
    )


OTHER_TRANSFORM = "other"
"""The transform of a copy whose name does not say one (a ground truth of the user's own):
one group for all, where the copy's whole name made a recall column of its own each."""


def transform_of(copy_name: str) -> str:
    """Transform name encoded in a copy's file name (inverse of :func:`duplicate_name`,
    ignoring any ``-N`` clash suffix); e.g. ``"a__dup_blur.png" -> "blur"``; OTHER_TRANSFORM
    for a name without the marker."""
    stem = Path(copy_name).stem
    if DUP_MARKER not in stem:
        return OTHER_TRANSFORM
    return stem.rsplit(DUP_MARKER, 1)[-1].split("-", 1)[0] or OTHER_TRANSFORM
