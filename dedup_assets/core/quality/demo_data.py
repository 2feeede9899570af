"""The built-in demo dataset: synthetic aerial-like textures with planted near-duplicates.

Lets the pipeline run end to end without downloading anything. Six classes of 64x64 RGB PNGs
(``forest``, ``water``, ``farmland``, ``urban``, ``desert``, ``road``) are drawn with vectorised
numpy (smooth noise from upsampled random fields, sinusoids, masks). Every image is its own
scene (positions, angles, frequencies, colours and noise are random per image) so unplanted
images are not near-duplicates of each other, while each class keeps a consistent look.

On top of the originals the generator plants, reusing :mod:`dedup_assets.core.quality.planting`:

* transformed near-duplicates of ``duplicate_fraction`` of each class (``<stem>__dup_<t>.png``
  or ``.jpg``), listed in ``ground_truth.csv``;
* two byte-identical copies (``<stem>__dup_exact.png``), also listed in ``ground_truth.csv``;
* one corrupt file, ``urban/broken.png`` (a few random bytes), so the pipeline's quarantine of
  unreadable files is exercised. It is *not* in the ground truth.

Everything is deterministic in ``seed``. The tree is filled in a temporary sibling and renamed
into place only where nothing is yet (a rename never replaces a folder that holds files), and
described by ``.demo_manifest.json`` (parameters, counts and a content digest).

**The split variant** (``splits=True``, ``dedup demo --splits``): the same renders as
``train/<class>/`` (the first ``per_class - per_class // TEST_SHARE`` of each class, with
the near-duplicates, exact copies and corrupt file planted among them) and ``test/<class>/``
(the rest of each class, nothing planted among them), and a few planted LEAKS: training
copies of test images, listed in ``leaks.csv`` (columns ``split, class, image, train_class,
train_image, kind, transform``; the images' paths relative to the dataset root, as
``leakage.csv`` writes them): a test image's
exact copy in its own class of train, which itself has an exact copy there too (an image
that is both an exact duplicate within train and a leak), a near copy of the same test
image (a planting transform) in another class of train, and a near copy of another test
image in its own class. The within-train planted pairs are listed in the manifest
(``train_pairs``: class, original, copy; file names relative to ``train/<class>``) and in
``ground_truth.csv`` (class ``train/<class>``: the evaluation's pairs, split-aware).

Once made, the folder is the user's: they add images to it and watch the pipeline (or the
new-images sensor) pick them up. Nothing here ever rewrites or deletes anything in it: a later
call with the same parameters returns the manifest's summary, whatever was added, changed or
removed since (:func:`demo_state` says whether the tree still is as generated), one with other
parameters is refused, and :func:`ensure_demo_dataset` (the pipeline's resolver) uses any
non-empty folder as it is.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dedup_assets.core.quality.planting import (
    GROUND_TRUTH_FILENAME,
    TRANSFORMS,
    GroundTruthPair,
    apply_transform,
    duplicate_name,
    plant_copies,
    transform_of,
    write_ground_truth,
)

__all__ = [
    "CORRUPT_FILE",
    "DEMO_CLASSES",
    "LEAKS_FILENAME",
    "LEAKS_HEADER",
    "MANIFEST_FILENAME",
    "PlantedLeak",
    "DemoSummary",
    "demo_state",
    "ensure_demo_dataset",
    "generate_demo_dataset",
    "read_demo_dataset",
    "read_leaks",
]

SIZE = 64
MANIFEST_FILENAME = ".demo_manifest.json"
CORRUPT_FILE = "urban/broken.png"
"""Deliberately unreadable file (relative to the dataset root); never in the ground truth."""
N_EXACT = 2
"""Byte-identical ``__dup_exact`` copies planted, in distinct classes, of originals that have no
transformed copy (fewer if no such original is left)."""
LEAKS_FILENAME = "leaks.csv"
"""The split variant's ground truth of planted leaks (`image_folder.OWN_ROOT_FILES`)."""
LEAKS_HEADER = ("split", "class", "image", "train_class", "train_image", "kind", "transform")
TEST_SHARE = 5
"""The split variant puts per_class // TEST_SHARE renders of each class in test/ (20%)."""
LEAK_MARKER = "__leak_"
_GENERATOR_TAG = "latent-dedup demo dataset"
_FORMAT_VERSION = 1  # recorded in the manifest; a tree of an earlier version is used as it is

# Coordinate grids shared by all generators (pixel centres, 0..63).
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


# --------------------------------------------------------------------------------------------
# Texture primitives
# --------------------------------------------------------------------------------------------


def _smooth(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth random field in ~[-1, 1]: a ``cells``x``cells`` grid upsampled bicubically.

    A random sub-box of a slightly larger grid is used, so features don't sit on a fixed lattice.
    """
    grid = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    ox, oy = rng.uniform(0.0, 1.0, size=2)
    box = (ox, oy, ox + cells + 1, oy + cells + 1)
    field = Image.fromarray(grid, mode="F").resize((SIZE, SIZE), Image.Resampling.BICUBIC, box=box)
    return np.asarray(field, dtype=np.float32) / 1.5


def _fractal(rng: np.random.Generator, base_cells: int, octaves: int = 3) -> np.ndarray:
    """Sum of smooth fields at doubling frequency and halving amplitude (normalised to ~[-1, 1])."""
    total = np.zeros((SIZE, SIZE), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += amp * _smooth(rng, min(SIZE, base_cells * 2**o))
        norm += amp
        amp *= 0.5
    return total / norm


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], spread: float) -> np.ndarray:
    """Colour with per-channel Gaussian jitter, shape (3,)."""
    return np.asarray(rgb, np.float32) + rng.normal(0.0, spread, 3).astype(np.float32)


def _proj(theta: float, x0: float = 0.0, y0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotated coordinates: (along, across) a direction at angle ``theta`` through (x0, y0)."""
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = _XX - x0, _YY - y0
    return dx * c + dy * s, -dx * s + dy * c


def _finish(rng: np.random.Generator, img: np.ndarray, sigma: float = 2.5) -> np.ndarray:
    """Add sensor noise and quantise to uint8."""
    img = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _mix(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Blend images/colours ``a`` (mask=1) and ``b`` (mask=0); mask is (H, W)."""
    m = mask[..., None]
    return m * a + (1.0 - m) * b


# --------------------------------------------------------------------------------------------
# Class generators: (rng) -> float32 (64, 64, 3) in roughly 0..255
# --------------------------------------------------------------------------------------------


def _forest(rng: np.random.Generator) -> np.ndarray:
    """Dark green mottled canopy: many Gaussian tree crowns over shadowed ground."""
    n = int(rng.integers(45, 90))
    cx, cy = rng.uniform(-4, SIZE + 4, n), rng.uniform(-4, SIZE + 4, n)
    r = rng.uniform(2.0, 4.5, n)
    d2 = (_XX[..., None] - cx) ** 2 + (_YY[..., None] - cy) ** 2
    crowns = np.exp(-d2 / (2 * r**2)).max(axis=-1)
    tone = _fractal(rng, 3, 2)
    base = _jitter(rng, (34, 62, 30), 5)
    light = base * rng.uniform(1.5, 1.9) + _jitter(rng, (0, 8, 0), 3)
    img = _mix(np.clip(crowns * (0.8 + 0.25 * tone), 0, 1), light, base * 0.55)
    img *= (1.0 + 0.12 * _fractal(rng, 6, 2))[..., None]
    return img


def _water(rng: np.random.Generator) -> np.ndarray:
    """Smooth blue water: large-scale depth gradient, faint waves and a few glints."""
    deep = _jitter(rng, (22, 52, 98), 10)
    shallow = deep + _jitter(rng, (18, 40, 40), 8)
    gx, gy = rng.normal(0, 1, 2)
    depth = 0.5 + 0.6 * _smooth(rng, 2) + 0.012 * (gx * (_XX - 32) + gy * (_YY - 32))
    depth = np.clip(depth, 0, 1)
    img = _mix(depth, shallow, deep)
    along, _ = _proj(rng.uniform(0, np.pi))
    waves = np.sin(along * rng.uniform(0.5, 1.3) + 2.5 * _smooth(rng, 4) + rng.uniform(0, 6.3))
    img += (rng.uniform(2.5, 5.0) * waves)[..., None]
    glint = np.clip((_smooth(rng, 32) - rng.uniform(1.1, 1.4)) * 4.0, 0, 1)
    img += (glint * rng.uniform(40, 70))[..., None]
    return img


def _farmland(rng: np.random.Generator) -> np.ndarray:
    """Field parcels (Voronoi cells), each with crop stripes of two tones at its own angle."""
    palette = np.array(
        [(112, 138, 58), (150, 120, 72), (196, 176, 108), (88, 116, 50), (170, 150, 90)],
        np.float32,
    )
    k = int(rng.integers(2, 5))
    sx, sy = rng.uniform(0, SIZE, k), rng.uniform(0, SIZE, k)
    d2 = (_XX[..., None] - sx) ** 2 + (_YY[..., None] - sy) ** 2
    parcel = d2.argmin(axis=-1)
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    for p in range(k):  # a handful of parcels, each fully vectorised
        along, across = _proj(rng.uniform(0, np.pi))
        period = rng.uniform(3.0, 7.0)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * across / period + rng.uniform(0, 6.3))
        a, b = rng.choice(len(palette), 2, replace=False)
        tone_a = palette[a] + rng.normal(0, 8, 3)
        tone_b = palette[b] + rng.normal(0, 8, 3)
        field_img = _mix(stripes ** rng.uniform(0.6, 1.6), tone_a, tone_b)
        img = np.where((parcel == p)[..., None], field_img, img)
    # Dark boundaries between parcels (where the nearest and second-nearest seeds tie).
    ds = np.sort(np.sqrt(d2), axis=-1)
    edge = np.clip(1.0 - (ds[..., 1] - ds[..., 0]) / 1.5, 0, 1) if k > 1 else 0 * _XX
    img *= (1.0 - 0.35 * edge)[..., None]
    img *= (1.0 + 0.08 * _fractal(rng, 4, 2))[..., None]
    return img


def _urban(rng: np.random.Generator) -> np.ndarray:
    """Grey/beige building blocks on a (slightly rotated) street grid."""
    theta = rng.uniform(-0.5, 0.5) + rng.choice([0.0, np.pi / 2])
    u, v = _proj(theta, rng.uniform(0, SIZE), rng.uniform(0, SIZE))
    su, sv = rng.uniform(8, 15, 2)
    street = rng.uniform(1.8, 3.2)
    iu, iv = np.floor(u / su).astype(np.int64), np.floor(v / sv).astype(np.int64)
    on_street = ((u % su) < street) | ((v % sv) < street)
    # One roof colour per block, from a lookup table indexed by the block coordinates.
    n = 24
    table = rng.uniform(0, 1, (n, n)).astype(np.float32)
    roof_t = table[iu % n, iv % n]
    grey = _jitter(rng, (150, 148, 145), 8)
    beige = _jitter(rng, (186, 170, 140), 8)
    roofs = _mix(roof_t, grey, beige) * (0.8 + 0.35 * table[(iv + 7) % n, (iu + 3) % n])[..., None]
    roofs *= (1.0 + 0.07 * _smooth(rng, 16))[..., None]
    asphalt = _jitter(rng, (82, 82, 86), 5)
    return np.where(on_street[..., None], asphalt, roofs)


def _desert(rng: np.random.Generator) -> np.ndarray:
    """Sand-coloured dunes: warped, asymmetric sinusoidal ridges with shading."""
    sand = _jitter(rng, (214, 184, 132), 8)
    along, across = _proj(rng.uniform(0, np.pi))
    period = rng.uniform(9.0, 20.0)
    phase = 2 * np.pi * across / period + 3.0 * _smooth(rng, 3) + rng.uniform(0, 6.3)
    ridge = np.sin(phase + 0.6 * np.sin(phase))  # asymmetric: steep lee face, long stoss slope
    shade = 1.0 + rng.uniform(0.08, 0.16) * ridge + 0.05 * _fractal(rng, 4, 3)
    return sand * shade[..., None]


def _road(rng: np.random.Generator) -> np.ndarray:
    """A grey road band across mottled grass at a random angle, sometimes with a junction."""
    grass = _jitter(rng, (92, 138, 62), 8)
    img = grass * (1.0 + 0.14 * _fractal(rng, 4, 3))[..., None]
    asphalt = np.float32(rng.uniform(100, 135)) + _jitter(rng, (0, 0, 2), 2)
    x0, y0 = rng.uniform(16, 48, 2)
    theta = rng.uniform(0, np.pi)
    roads = [(theta, rng.uniform(5.0, 10.0), -np.inf)]
    if rng.random() < 0.4:  # a side road from the junction (T) or through it (crossing)
        start = 0.0 if rng.random() < 0.5 else -np.inf
        roads.append((theta + rng.uniform(0.5, np.pi - 0.5), rng.uniform(4.0, 8.0), start))
    bands, shoulders = [], []
    for angle, width, start in roads:
        along, across = _proj(angle, x0, y0)
        extent = along > start
        bands.append((np.abs(across) < width / 2) & extent)
        shoulders.append((np.abs(np.abs(across) - width / 2) < 0.8) & extent)
    img = np.where(np.logical_or.reduce(shoulders)[..., None], img * 0.8 + 30, img)
    img = np.where(np.logical_or.reduce(bands)[..., None], asphalt, img)
    along, across = _proj(theta, x0, y0)
    dash = (np.abs(across) < 0.5) & ((along % 8.0) < 4.0)  # main road's centre line
    if len(bands) > 1:
        dash &= ~bands[1]
    return np.where(dash[..., None], np.float32(225), img)


_GENERATORS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "forest": _forest,
    "water": _water,
    "farmland": _farmland,
    "urban": _urban,
    "desert": _desert,
    "road": _road,
}
DEMO_CLASSES: tuple[str, ...] = tuple(_GENERATORS)
"""Class names of the demo dataset."""


def _render(class_name: str, seed: int, index: int) -> np.ndarray:
    """Image ``index`` of a class: its own generator, seeded by (seed, class, index)."""
    key = zlib.crc32(class_name.encode("utf-8"))
    rng = np.random.default_rng(np.random.SeedSequence([seed, key, index]))
    return _finish(rng, _GENERATORS[class_name](rng).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo_dataset` produced (or found already in place).

    ``originals_per_class`` counts generated originals (``broken.png`` excluded);
    ``copies_per_class`` / ``copies_per_transform`` count planted copies including the
    ``exact`` ones; ``corrupt_files`` are paths relative to ``root``; ``regenerated`` is False
    when an intact tree with the same parameters was reused. For the split variant
    ``ground_truth`` is its ``leaks.csv``, and ``originals_per_class`` counts train and test.
    """

    root: Path
    ground_truth: Path
    seed: int
    per_class: int
    duplicate_fraction: float
    originals_per_class: dict[str, int]
    copies_per_class: dict[str, int]
    copies_per_transform: dict[str, int]
    corrupt_files: tuple[str, ...]
    digest: str
    regenerated: bool
    splits: bool = False  # the split variant: train/ and test/, with leaks.csv
    leaks: int = 0  # planted leaks (rows of leaks.csv)

    @property
    def leaks_file(self) -> Path | None:
        """The split variant's ground truth of planted leaks (None for the plain demo)."""
        return self.root / LEAKS_FILENAME if self.splits else None

    @property
    def n_images(self) -> int:
        """All image files written, corrupt ones and leaks' training copies included."""
        return (
            sum(self.originals_per_class.values())
            + sum(self.copies_per_class.values())
            + len(self.corrupt_files)
            + self.leaks
        )


def _tree_digest(root: Path) -> str:
    """SHA-256 over (relative path, content hash) of every file except the manifest."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_FILENAME:
            continue
        h.update(rel.encode("utf-8") + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _params(
    seed: int, per_class: int, duplicate_fraction: float, splits: bool = False
) -> dict[str, object]:
    params: dict[str, object] = {
        "generator": _GENERATOR_TAG,
        "version": _FORMAT_VERSION,
        "seed": seed,
        "per_class": per_class,
        "duplicate_fraction": duplicate_fraction,
    }
    if splits:  # the plain demo's manifest stays as it was
        params["splits"] = True
    return params


def _read_manifest(dest: Path) -> dict[str, object] | None:
    try:
        data = json.loads((dest / MANIFEST_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == _GENERATOR_TAG else None


def _summary_from_manifest(dest: Path, manifest: dict, regenerated: bool) -> DemoSummary:
    splits = bool(manifest.get("splits", False))
    return DemoSummary(
        root=dest,
        ground_truth=dest / (LEAKS_FILENAME if splits else GROUND_TRUTH_FILENAME),
        seed=manifest["seed"],
        per_class=manifest["per_class"],
        duplicate_fraction=manifest["duplicate_fraction"],
        originals_per_class=dict(manifest["originals_per_class"]),
        copies_per_class=dict(manifest["copies_per_class"]),
        copies_per_transform=dict(manifest["copies_per_transform"]),
        corrupt_files=tuple(manifest["corrupt_files"]),
        digest=manifest["digest"],
        regenerated=regenerated,
        splits=splits,
        leaks=int(manifest.get("leaks", 0)),
    )


def read_demo_dataset(dest: Path) -> DemoSummary | None:
    """The demo dataset at ``dest`` as its manifest describes it, or None when ``dest`` has no
    readable demo manifest. Reads no image."""
    dest = Path(dest).resolve()
    manifest = _read_manifest(dest)
    try:
        return None if manifest is None else _summary_from_manifest(dest, manifest, False)
    except (KeyError, TypeError, ValueError):
        return None


def demo_state(dest: Path) -> str:
    """One line on the demo folder at ``dest``: as generated, or how it differs (reads every
    file, to compare with the manifest's digest). Whatever it says, the folder is used as it is."""
    summary = read_demo_dataset(dest)
    if summary is None:
        return f"no readable {MANIFEST_FILENAME}: used as it is, never regenerated"
    if _tree_digest(summary.root) == summary.digest:
        return "as generated"
    return "differs from the generated set: images added, changed or removed; used as it is"


def ensure_demo_dataset(dest: Path, *, seed: int = 0, splits: bool = False) -> Path:
    """The demo source at ``dest`` (its split variant with ``splits``): generated on first
    use (default parameters), afterwards used as it is. A folder there that holds anything
    is never rewritten, whatever it holds (the user may have added images to watch the
    pipeline pick them up)."""
    dest = Path(dest).expanduser().resolve()
    if not dest.is_dir() or not any(dest.iterdir()):
        generate_demo_dataset(dest, seed=seed, splits=splits)
    return dest


def generate_demo_dataset(
    dest: Path,
    *,
    seed: int = 0,
    per_class: int = 60,
    duplicate_fraction: float = 0.15,
    splits: bool = False,
) -> DemoSummary:
    """Write the demo ImageFolder dataset to ``dest`` (deterministic in the arguments).

    Layout: ``dest/<class>/<class>_<NNN>.png`` originals, planted copies next to them,
    ``dest/urban/broken.png`` (corrupt), ``dest/ground_truth.csv`` and
    ``dest/.demo_manifest.json``; with ``splits``, the split variant (module doc) under
    ``dest/train/`` and ``dest/test/``, with ``leaks.csv``. An existing demo dataset is never
    rewritten: with the same parameters its summary is returned (``regenerated=False``)
    whatever changed in it since; with other parameters, or when ``dest`` holds anything
    else, ``FileExistsError``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if not 0.0 <= duplicate_fraction <= 1.0:
        raise ValueError(f"duplicate_fraction must be in [0, 1], got {duplicate_fraction}")
    if splits and per_class < TEST_SHARE:
        raise ValueError(f"the split variant needs per_class >= {TEST_SHARE}, got {per_class}")
    dest = Path(dest).resolve()
    params = _params(seed, per_class, duplicate_fraction, splits)

    if dest.exists():
        existing = read_demo_dataset(dest)
        if existing is not None:
            made = (existing.seed, existing.per_class, existing.duplicate_fraction)
            if made != (seed, per_class, duplicate_fraction) or existing.splits != splits:
                variant = "split " if existing.splits else ""
                raise FileExistsError(
                    f"{dest} holds a {variant}demo dataset made with seed {made[0]}, per_class "
                    f"{made[1]} and duplicate_fraction {made[2]}; a demo dataset is never "
                    "rewritten: use it as it is, or delete it or choose another folder for "
                    "these parameters"
                )
            return existing
        if not dest.is_dir() or any(dest.iterdir()):
            raise FileExistsError(
                f"{dest} exists, is not empty and is not a demo dataset "
                f"(no readable {MANIFEST_FILENAME}); refusing to overwrite"
            )

    dest.parent.mkdir(parents=True, exist_ok=True)
    # Named as atomic_io names its temporary trees, so a killed run's leftover is swept.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        manifest = _write_split_tree(tmp, params) if splits else _write_tree(tmp, params)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, dest)  # onto nothing or an empty folder; never over files
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # Made by someone else meanwhile: theirs stands (and is checked as above).
            return generate_demo_dataset(
                dest,
                seed=seed,
                per_class=per_class,
                duplicate_fraction=duplicate_fraction,
                splits=splits,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary_from_manifest(dest, manifest, regenerated=True)


def _write_tree(tmp: Path, params: dict) -> dict:
    """Render, plant and describe the dataset into the empty folder ``tmp``; the manifest."""
    seed, per_class = int(params["seed"]), int(params["per_class"])
    width = max(3, len(str(per_class - 1)))
    originals: dict[str, list[str]] = {}
    for class_name in DEMO_CLASSES:
        (tmp / class_name).mkdir()
        names = [f"{class_name}_{i:0{width}d}.png" for i in range(per_class)]
        for i, name in enumerate(names):
            Image.fromarray(_render(class_name, seed, i), mode="RGB").save(tmp / class_name / name)
        originals[class_name] = names

    pairs = plant_copies(tmp, originals, fraction=float(params["duplicate_fraction"]), seed=seed)
    pairs += _plant_exact(tmp, originals, pairs, seed)
    pairs.sort()
    write_ground_truth(tmp / GROUND_TRUTH_FILENAME, pairs)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB40CE2]))
    (tmp / CORRUPT_FILE).write_bytes(rng.integers(0, 256, 37, dtype=np.uint8).tobytes())

    copies_per_class = dict.fromkeys(DEMO_CLASSES, 0)
    copies_per_transform = dict.fromkeys([*TRANSFORMS, "exact"], 0)
    for pair in pairs:
        copies_per_class[pair.class_name] += 1
        copies_per_transform[transform_of(pair.copy)] += 1
    manifest = {
        **params,
        "originals_per_class": {c: len(v) for c, v in originals.items()},
        "copies_per_class": copies_per_class,
        "copies_per_transform": copies_per_transform,
        "corrupt_files": [CORRUPT_FILE],
        "digest": _tree_digest(tmp),
    }
    (tmp / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    return manifest


def _plant_exact(
    root: Path, originals: dict[str, list[str]], planted: list[GroundTruthPair], seed: int
) -> list[GroundTruthPair]:
    """Byte-identical copies of ``N_EXACT`` not-yet-planted originals in distinct classes."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE7AC7]))
    used = {(p.class_name, p.original) for p in planted}
    classes = sorted(originals)
    pairs: list[GroundTruthPair] = []
    for ci in rng.choice(len(classes), size=min(N_EXACT, len(classes)), replace=False):
        class_name = classes[int(ci)]
        free = [n for n in originals[class_name] if (class_name, n) not in used]
        if not free:
            continue
        original = free[int(rng.integers(len(free)))]
        copy = duplicate_name(original, "exact")
        shutil.copyfile(root / class_name / original, root / class_name / copy)
        pairs.append(GroundTruthPair(class_name, original, copy))
    return pairs


# --------------------------------------------------------------------------------------------
# The split variant
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedLeak:
    """One planted leak: a test image (its ``split``, ``class_name`` and path ``image``) and
    its copy in train (``train_class``, path ``train_image``), exact or near (``transform``);
    paths relative to the dataset root."""

    split: str
    class_name: str
    image: str
    train_class: str
    train_image: str
    kind: str  # exact | near
    transform: str  # exact, or the planting transform of a near copy


def read_leaks(path: Path) -> list[PlantedLeak]:
    """The planted leaks of a ``leaks.csv`` (columns LEAKS_HEADER)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in LEAKS_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a leaks file: missing the columns {missing}")
        return [PlantedLeak(*(row[c] for c in LEAKS_HEADER)) for row in reader]


def _leak_name(image: str, transform: str) -> str:
    """A training copy's file name: ``<stem>__leak_<transform>.png``."""
    return f"{Path(image).stem}{LEAK_MARKER}{transform}.png"


# (test class, near copy's transform, class of train its near copy goes in; None: its own)
# The first also gets an exact copy in its own class, itself copied exactly within train.
_LEAKS = (("forest", "brightness", "water"), ("road", "noise", None))


def _write_split_tree(tmp: Path, params: dict) -> dict:
    """The split variant (module doc) into the empty folder ``tmp``; the manifest."""
    seed, per_class = int(params["seed"]), int(params["per_class"])
    n_test = per_class // TEST_SHARE
    width = max(3, len(str(per_class - 1)))
    train_dir, test_dir = tmp / "train", tmp / "test"
    originals: dict[str, list[str]] = {}
    tests: dict[str, list[str]] = {}
    for class_name in DEMO_CLASSES:
        (train_dir / class_name).mkdir(parents=True)
        (test_dir / class_name).mkdir(parents=True)
        names = [f"{class_name}_{i:0{width}d}.png" for i in range(per_class)]
        for i, name in enumerate(names):
            folder = train_dir if i < per_class - n_test else test_dir
            Image.fromarray(_render(class_name, seed, i), mode="RGB").save(
                folder / class_name / name
            )
        originals[class_name] = names[: per_class - n_test]
        tests[class_name] = names[per_class - n_test :]

    pairs = plant_copies(
        train_dir, originals, fraction=float(params["duplicate_fraction"]), seed=seed
    )
    pairs += _plant_exact(train_dir, originals, pairs, seed)
    pairs.sort()
    leaks, within = _plant_leaks(tmp, tests, seed)  # their copies are counted as leaks
    # The within-train planted pairs as the evaluation reads them: the class column is the
    # class folder relative to the root (`train/<class>`), as the catalog names images.
    write_ground_truth(
        tmp / GROUND_TRUTH_FILENAME,
        sorted(
            GroundTruthPair(f"train/{p.class_name}", p.original, p.copy) for p in pairs + within
        ),
    )
    with (tmp / LEAKS_FILENAME).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LEAKS_HEADER)
        for leak in leaks:
            writer.writerow([getattr(leak, f) for f in PlantedLeak.__dataclass_fields__])

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB40CE2]))
    corrupt = f"train/{CORRUPT_FILE}"
    (tmp / corrupt).write_bytes(rng.integers(0, 256, 37, dtype=np.uint8).tobytes())

    copies_per_class = dict.fromkeys(DEMO_CLASSES, 0)
    copies_per_transform = dict.fromkeys([*TRANSFORMS, "exact"], 0)
    for pair in pairs:
        copies_per_class[pair.class_name] += 1
        copies_per_transform[transform_of(pair.copy)] += 1
    manifest = {
        **params,
        "originals_per_class": {c: len(v) + len(tests[c]) for c, v in originals.items()},
        "test_per_class": {c: len(v) for c, v in tests.items()},
        "copies_per_class": copies_per_class,
        "copies_per_transform": copies_per_transform,
        "leaks": len(leaks),
        "train_pairs": [list(p) for p in sorted(pairs + within)],
        "corrupt_files": [corrupt],
        "digest": _tree_digest(tmp),
    }
    (tmp / MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    return manifest


def _plant_leaks(
    root: Path, tests: dict[str, list[str]], seed: int
) -> tuple[list[PlantedLeak], list[GroundTruthPair]]:
    """Copies of test images into train (module doc), one test image per `_LEAKS` entry
    drawn by ``seed``: the leaks (each training copy once), and the within-train pair of
    the exact copy and its own exact copy."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1EA4]))
    leaks: list[PlantedLeak] = []
    within: list[GroundTruthPair] = []
    for at, (class_name, transform, other) in enumerate(_LEAKS):
        image = tests[class_name][int(rng.integers(len(tests[class_name])))]
        source = root / "test" / class_name / image
        if at == 0:  # an exact copy in its own class, and that copy's exact copy in train
            first = _leak_name(image, "exact")
            second = duplicate_name(first, "exact")
            for name in (first, second):
                shutil.copyfile(source, root / "train" / class_name / name)
                leaks.append(
                    PlantedLeak(
                        "test",
                        class_name,
                        f"test/{class_name}/{image}",
                        class_name,
                        f"train/{class_name}/{name}",
                        "exact",
                        "exact",
                    )
                )
            within.append(GroundTruthPair(class_name, first, second))
        near_class = other or class_name
        with Image.open(source) as img:
            copy = apply_transform(transform, img, rng)
        name = _leak_name(image, transform)
        copy.save(root / "train" / near_class / name, format="PNG")
        leaks.append(
            PlantedLeak(
                "test",
                class_name,
                f"test/{class_name}/{image}",
                near_class,
                f"train/{near_class}/{name}",
                "near",
                transform,
            )
        )
    return leaks, within
