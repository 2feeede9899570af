"""Tests for dedup_assets.core.quality.demo_data.generate_demo_dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.quality.demo_data import (
    CORRUPT_FILE,
    DEMO_CLASSES,
    MANIFEST_FILENAME,
    DemoSummary,
    generate_demo_dataset,
)
from dedup_assets.core.quality.planting import TRANSFORMS, plant_duplicates, read_ground_truth


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32)


def _originals(root: Path, cls: str) -> list[Path]:
    return sorted(
        p for p in (root / cls).iterdir() if "__dup_" not in p.name and p.name != "broken.png"
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoSummary:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


def test_layout_and_counts(demo: DemoSummary) -> None:
    root = demo.root
    assert demo.regenerated
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(DEMO_CLASSES)
    assert len(DEMO_CLASSES) == 6
    assert demo.originals_per_class == dict.fromkeys(DEMO_CLASSES, 60)
    for cls in DEMO_CLASSES:
        assert len(_originals(root, cls)) == 60
        # 15% of 60 = 9 transformed copies per class, plus the exact copies in two classes.
        assert demo.copies_per_class[cls] in (9, 10)
    assert demo.copies_per_transform["exact"] == 2
    assert sum(demo.copies_per_class.values()) == 6 * 9 + 2
    assert set(demo.copies_per_transform) == {*TRANSFORMS, "exact"}
    n_files = sum(1 for p in root.rglob("*.*") if p.parent != root)
    assert n_files == demo.n_images == 360 + 56 + 1
    manifest = json.loads((root / MANIFEST_FILENAME).read_text())
    assert manifest["seed"] == 0 and manifest["digest"] == demo.digest


def test_ground_truth_matches_files(demo: DemoSummary) -> None:
    root = demo.root
    pairs = read_ground_truth(demo.ground_truth)
    assert len(pairs) == sum(demo.copies_per_class.values())
    dup_files = {f"{p.parent.name}/{p.name}" for p in root.rglob("*__dup_*")}
    assert {f"{p.class_name}/{p.copy}" for p in pairs} == dup_files
    assert all(
        CORRUPT_FILE not in (f"{p.class_name}/{p.original}", f"{p.class_name}/{p.copy}")
        for p in pairs
    )
    for p in pairs:
        orig, copy = root / p.class_name / p.original, root / p.class_name / p.copy
        assert orig.is_file() and copy.is_file()
        transform = copy.stem.split("__dup_")[1]
        if transform == "exact":
            assert orig.read_bytes() == copy.read_bytes()
            continue
        a, b = _load(orig), _load(copy)
        assert a.shape == b.shape == (64, 64, 3)
        assert 0.3 < np.abs(a - b).mean() < 50, p


def test_corrupt_file_is_unreadable(demo: DemoSummary) -> None:
    assert demo.corrupt_files == (CORRUPT_FILE,)
    broken = demo.root / CORRUPT_FILE
    assert 0 < broken.stat().st_size < 100
    with pytest.raises(OSError), Image.open(broken) as im:
        im.load()


def test_classes_distinguishable(demo: DemoSummary) -> None:
    per_image = {
        cls: np.stack([_load(p).mean(axis=(0, 1)) for p in _originals(demo.root, cls)])
        for cls in DEMO_CLASSES
    }
    centroids = np.stack([per_image[c].mean(axis=0) for c in DEMO_CLASSES])
    dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert dist[~np.eye(len(DEMO_CLASSES), dtype=bool)].min() > 30
    # Even the crudest feature (mean colour, nearest centroid) separates the classes well.
    feats = np.concatenate([per_image[c] for c in DEMO_CLASSES])
    labels = np.repeat(np.arange(len(DEMO_CLASSES)), [len(per_image[c]) for c in DEMO_CLASSES])
    predicted = np.linalg.norm(feats[:, None] - centroids[None], axis=-1).argmin(axis=1)
    accuracy = float((predicted == labels).mean())
    assert accuracy > 0.9, accuracy


def test_unplanted_images_are_not_near_duplicates(demo: DemoSummary) -> None:
    for cls in DEMO_CLASSES:
        imgs = np.stack([_load(p) for p in _originals(demo.root, cls)])
        flat = imgs.reshape(len(imgs), -1)
        mad = np.abs(flat[:, None, :] - flat[None, :, :]).mean(axis=-1)
        np.fill_diagonal(mad, np.inf)
        # Well above what a noise/jpeg planted copy differs by (~2-6).
        assert mad.min() > 6.0, cls


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", seed=4, per_class=8, duplicate_fraction=0.25)
    b = generate_demo_dataset(tmp_path / "b", seed=4, per_class=8, duplicate_fraction=0.25)
    c = generate_demo_dataset(tmp_path / "c", seed=5, per_class=8, duplicate_fraction=0.25)
    assert _tree(a.root) == _tree(b.root)
    assert a.digest == b.digest != c.digest
    ta, tc = _tree(a.root), _tree(c.root)
    assert ta["forest/forest_000.png"] != tc["forest/forest_000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp leftovers


def test_reused_and_never_rewritten(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    first = generate_demo_dataset(dest, per_class=6)
    mtime = (dest / MANIFEST_FILENAME).stat().st_mtime_ns
    again = generate_demo_dataset(dest, per_class=6)
    assert not again.regenerated
    assert again == dataclasses.replace(first, regenerated=False)
    assert (dest / MANIFEST_FILENAME).stat().st_mtime_ns == mtime
    # Changed or damaged tree -> the user's: used as it is, nothing put back.
    victim = next((dest / "water").glob("*.png"))
    victim.unlink()
    kept = generate_demo_dataset(dest, per_class=6)
    assert not kept.regenerated and not victim.exists() and kept.digest == first.digest
    # Different parameters -> refused, the tree untouched.
    before = _tree(dest)
    with pytest.raises(FileExistsError, match="never rewritten"):
        generate_demo_dataset(dest, per_class=7)
    assert _tree(dest) == before and len(_originals(dest, "road")) == 6


def test_refuses_foreign_nonempty_dest(tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "important.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        generate_demo_dataset(dest, per_class=4)
    assert (dest / "important.txt").read_text() == "keep"


def test_demo_as_planting_source(demo: DemoSummary, tmp_path: Path) -> None:
    s = plant_duplicates(demo.root, tmp_path / "replanted", per_class=5, fraction=0.2, seed=1)
    assert set(s.originals_per_class) == set(DEMO_CLASSES)
    assert all(
        (f"{c}/{p.name}" != CORRUPT_FILE) for c in DEMO_CLASSES for p in (s.dest / c).iterdir()
    )
    # broken.png is skipped (and reported) only if the seeded sample picked it.
    assert all(sk.path == CORRUPT_FILE for sk in s.skipped)
    full = plant_duplicates(demo.root, tmp_path / "full", fraction=0.0)
    assert [sk.path for sk in full.skipped] == [CORRUPT_FILE]
