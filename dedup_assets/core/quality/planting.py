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
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dedup_assets.core.data.atomic_io import atomic_dir
from dedup_assets.core.data.image_folder import IMAGE_EXTENSIONS as _PIPELINE_EXTENSIONS
from dedup_assets.core.data.splits import SplitLayoutError, detect_splits

__all__ = [
    "DEFAULT_PROPORTIONS",
    "DUP_MARKER",
    "GROUND_TRUTH_FILENAME",
    "GROUND_TRUTH_HEADER",
    "IMAGE_EXTENSIONS",
    "TRANSFORMS",
    "GroundTruthPair",
    "PlantingSummary",
    "SkippedFile",
    "apply_transform",
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


def duplicate_name(original: str, transform: str) -> str:
    """File name of a planted copy: ``<stem>__dup_<transform>.<png|jpg>``.

    ``.jpg`` for the ``jpeg`` transform (so its artefacts are what is stored), ``.png``
    (lossless) otherwise. Other names (e.g. ``exact``) keep the original's suffix.
    """
    p = Path(original)
    if transform == "jpeg":
        suffix = ".jpg"
    elif transform in TRANSFORMS:
        suffix = ".png"
    else:
        suffix = p.suffix
    return f"{p.stem}{DUP_MARKER}{transform}{suffix}"


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
    """A source file that could not be read as an image; ``path`` is relative to the root."""

    path: str
    reason: str


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not exts:
        raise ValueError("extensions must not be empty")
    return exts


def list_class_images(
    root: Path, extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> dict[str, list[str]]:
    """Map each class folder of ``root`` to its sorted image file names.

    Only non-hidden subfolders count as classes and only non-hidden files with a supported
    suffix (case-insensitive) as images; top-level files (e.g. ``ground_truth.csv``) are ignored.
    """
    exts = _normalise_extensions(extensions)
    root = Path(root)
    classes: dict[str, list[str]] = {}
    for class_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if class_dir.name.startswith(".") or not class_dir.is_dir():
            continue
        classes[class_dir.name] = sorted(
            f.name
            for f in class_dir.iterdir()
            if not f.name.startswith(".") and f.suffix.lower() in exts and f.is_file()
        )
    return classes


def _class_rng(seed: int, class_name: str, stream: int) -> np.random.Generator:
    """Independent generator per (seed, class, purpose): classes don't shift each other."""
    key = zlib.crc32(class_name.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([seed, key, stream]))


def _load_rgb(path: Path) -> Image.Image:
    """Fully decode an image (so truncated files fail here) and return it as RGB."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def _validate_proportions(proportions: Mapping[str, float] | None) -> tuple[list[str], np.ndarray]:
    props = dict(DEFAULT_PROPORTIONS if proportions is None else proportions)
    unknown = sorted(set(props) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown transform(s) {unknown}; known: {sorted(TRANSFORMS)}")
    names = [n for n in TRANSFORMS if props.get(n, 0.0) > 0]
    if any(not math.isfinite(v) or v < 0 for v in props.values()) or not names:
        raise ValueError(f"proportions must be finite, >= 0 and not all zero, got {props}")
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

    ``originals`` maps class -> readable image names already in ``root/<class>``. Per class,
    round-half-up(fraction * n) originals (at least 1 if fraction > 0) are sampled with a
    generator seeded by (seed, class), each gets one transform drawn by ``proportions``, and the
    copy is written next to it. A name clash gets a ``-2``, ``-3``... suffix before the extension.
    Returns the pairs by class, in the order of ``originals``. Works in place (used by the demo generator
    on its own temporary tree).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    names, probs = _validate_proportions(proportions)
    pairs: list[GroundTruthPair] = []
    for class_name in sorted(originals):
        files = list(originals[class_name])
        k = _n_to_plant(fraction, len(files))
        if k == 0:
            continue
        class_dir = Path(root) / class_name
        taken = {p.name for p in class_dir.iterdir()}
        rng = _class_rng(seed, class_name, stream=1)
        chosen = sorted(rng.choice(len(files), size=k, replace=False).tolist())
        for idx in chosen:
            original = files[idx]
            transform = names[int(rng.choice(len(names), p=probs))]
            copy_name = duplicate_name(original, transform)
            stem, suffix = copy_name.rsplit(".", 1)
            n = 2
            while copy_name in taken:
                copy_name = f"{stem}-{n}.{suffix}"
                n += 1
            taken.add(copy_name)
            out = apply_transform(transform, _load_rgb(class_dir / original), rng)
            _save_copy(out, class_dir / copy_name)
            pairs.append(GroundTruthPair(class_name, original, copy_name))
    return pairs


def _check_source_dest(source: Path, dest: Path) -> tuple[Path, Path]:
    src = Path(source).resolve()
    dst = Path(dest).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"source dataset folder not found: {src}")
    if dst == src or dst.is_relative_to(src):
        raise ValueError(f"dest {dst} must not be the source folder or inside it ({src})")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"dest {dst} already exists and is not an empty folder; refusing")
    return src, dst


# --------------------------------------------------------------------------------------------
# plant_duplicates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantingSummary:
    """What :func:`plant_duplicates` wrote.

    ``originals_per_class`` counts copied originals, ``copies_per_class`` and
    ``copies_per_transform`` the planted copies (every class / transform present, zeros
    included); ``skipped`` lists unreadable source files (not copied) with the reason.
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

    @property
    def n_originals(self) -> int:
        """Total number of originals copied to ``dest``."""
        return sum(self.originals_per_class.values())

    @property
    def n_copies(self) -> int:
        """Total number of planted copies."""
        return sum(self.copies_per_class.values())


def plant_duplicates(
    source: Path,
    dest: Path,
    *,
    fraction: float = 0.05,
    per_class: int | None = None,
    proportions: Mapping[str, float] | None = None,
    seed: int = 0,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
) -> PlantingSummary:
    """Copy the ImageFolder ``source`` to ``dest`` and plant near-duplicates with ground truth.

    With ``per_class`` set, only that many images per class are copied, sampled (seeded per
    class) from the sorted file list. Unreadable files are skipped and reported. Then
    :func:`plant_copies` plants copies of ``fraction`` of each class's originals and
    ``dest/ground_truth.csv`` is written. The tree is built in a temporary sibling and renamed
    into place, so ``dest`` appears complete or not at all. ``source`` is only read.

    Raises ``ValueError`` if ``dest`` is ``source`` or inside it, ``FileExistsError`` if
    ``dest`` exists and is not an empty folder.
    """
    src, dst = _check_source_dest(source, dest)
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1 or None, got {per_class}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    _validate_proportions(proportions)

    classes = list_class_images(src, extensions)
    if not any(classes.values()):
        try:
            layout = detect_splits(src)
        except SplitLayoutError as exc:
            raise ValueError(f"no images in the class folders of {src}: {exc}") from None
        hint = (
            f": it has split folders ({', '.join(s.folder for s in layout.splits)}); plant "
            f"into one split, e.g. --source {src / layout.splits[0].folder}"
            if not layout.implicit
            else ""
        )
        raise ValueError(
            f"no images in the class folders of {src} (dedup plant takes "
            f"<source>/<class>/<image>){hint}"
        )
    skipped: list[SkippedFile] = []
    copied: dict[str, list[str]] = {}
    with atomic_dir(dst) as tmp:
        for class_name, files in classes.items():
            if per_class is not None and len(files) > per_class:
                rng = _class_rng(seed, class_name, stream=0)
                keep = sorted(rng.choice(len(files), size=per_class, replace=False).tolist())
                files = [files[i] for i in keep]
            out_dir = tmp / class_name
            out_dir.mkdir()
            ok: list[str] = []
            for name in files:
                try:
                    _load_rgb(src / class_name / name)
                except Exception as exc:  # any failure to open or decode means "skip"
                    skipped.append(
                        SkippedFile(f"{class_name}/{name}", f"{type(exc).__name__}: {exc}")
                    )
                    continue
                shutil.copy2(src / class_name / name, out_dir / name)
                ok.append(name)
            copied[class_name] = ok
        pairs = plant_copies(tmp, copied, fraction=fraction, proportions=proportions, seed=seed)
        write_ground_truth(tmp / GROUND_TRUTH_FILENAME, pairs)

    copies_per_class = dict.fromkeys(classes, 0)
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
        originals_per_class={c: len(v) for c, v in copied.items()},
        copies_per_class=copies_per_class,
        copies_per_transform=copies_per_transform,
        pairs=tuple(pairs),
        skipped=tuple(skipped),
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
