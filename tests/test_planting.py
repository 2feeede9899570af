"""Tests for dedup_assets.core.quality.planting: transforms, ground truth and plant_duplicates."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.quality import planting
from dedup_assets.core.quality.planting import (
    DEFAULT_PROPORTIONS,
    GROUND_TRUTH_FILENAME,
    TRANSFORMS,
    GroundTruthPair,
    duplicate_name,
    plant_duplicates,
    read_ground_truth,
    write_ground_truth,
)

EUROSAT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "eurosat"

# Mean absolute difference (0-255 scale) a transformed copy may have from its original:
# clearly non-zero, clearly not a different image.
MAD_RANGE = {
    "jpeg": (0.5, 20.0),
    "brightness": (2.0, 45.0),
    "contrast": (0.5, 25.0),
    "noise": (2.0, 7.0),
    "crop": (0.5, 45.0),
    "blur": (0.3, 25.0),
}


def _texture(seed: int, size: int = 64) -> np.ndarray:
    """A smooth-but-detailed RGB test image (blocks + gradient + noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, (8, 8, 3))
    img = np.kron(coarse, np.ones((size // 8, size // 8, 1)))
    img += np.linspace(-20, 20, size)[None, :, None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _mad(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Small ImageFolder: 3 classes (12, 7, 3 images), mixed formats, plus distractors."""
    root = tmp_path / "src"
    counts = {"alpha": 12, "beta": 7, "gamma": 3}
    for ci, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img = Image.fromarray(_texture(100 * ci + i))
            if i % 3 == 0:
                img.save(root / cls / f"{cls}_{i}.jpg", quality=90)
            elif i % 3 == 1:
                img.save(root / cls / f"{cls}_{i}.PNG")
            else:
                img.save(root / cls / f"{cls}_{i}.png")
    (root / "beta" / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    (root / "alpha" / "notes.txt").write_text("not an image")
    (root / "alpha" / ".hidden.png").write_bytes((root / "alpha" / "alpha_1.PNG").read_bytes())
    (root / ".hiddenclass").mkdir()
    Image.fromarray(_texture(999)).save(root / ".hiddenclass" / "x.png")
    Image.fromarray(_texture(998)).save(root / "toplevel.png")
    return root


# ---------------------------------------------------------------------------------- transforms


def test_transform_registry_and_default_proportions() -> None:
    assert set(TRANSFORMS) == {"jpeg", "brightness", "contrast", "noise", "crop", "blur"}
    assert dict(DEFAULT_PROPORTIONS) == dict.fromkeys(TRANSFORMS, 1.0)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_same_size_different_but_close(name: str) -> None:
    lo, hi = MAD_RANGE[name]
    rng = np.random.default_rng(7)
    for seed in range(8):
        original = Image.fromarray(_texture(seed))
        out = TRANSFORMS[name](original, rng)
        assert out.size == original.size
        assert out.convert("RGB").mode == "RGB"
        assert lo < _mad(out.convert("RGB"), original) < hi, (name, seed)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_deterministic_given_rng(name: str) -> None:
    original = Image.fromarray(_texture(3))
    a = TRANSFORMS[name](original, np.random.default_rng(5))
    b = TRANSFORMS[name](original, np.random.default_rng(5))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_duplicate_name() -> None:
    assert duplicate_name("Forest_1.jpg", "jpeg") == "Forest_1__dup_jpeg.jpg"
    assert duplicate_name("Forest_1.jpg", "blur") == "Forest_1__dup_blur.png"
    assert duplicate_name("a.b.PNG", "noise") == "a.b__dup_noise.png"
    assert duplicate_name("x.png", "exact") == "x__dup_exact.png"


@pytest.mark.parametrize(
    ("copy", "transform"),
    [
        ("Forest_1__dup_jpeg.jpg", "jpeg"),
        ("a.b__dup_noise-2.png", "noise"),  # a clash suffix
        ("huge.jpg", planting.OTHER_TRANSFORM),  # a user's own copy: no transform named
        ("s3.jpg", planting.OTHER_TRANSFORM),
        ("x__dup_.png", planting.OTHER_TRANSFORM),
    ],
)
def test_transform_of_names_a_planted_copy_s_transform_and_groups_the_rest(copy, transform):
    """A ground truth of the user's own gave one recall column per copy's file name."""
    assert planting.transform_of(copy) == transform
    assert planting.transform_of(duplicate_name("a.png", "blur")) == "blur"


# -------------------------------------------------------------------------------- ground truth


def test_ground_truth_roundtrip(tmp_path: Path) -> None:
    rows = [
        GroundTruthPair("Forest", "Forest_1.jpg", "Forest_1__dup_jpeg.jpg"),
        ("Sea, Lake", "a b.png", "a b__dup_blur.png"),  # commas/spaces survive CSV quoting
    ]
    path = write_ground_truth(tmp_path / "gt.csv", rows)
    assert path.read_text().splitlines()[0] == "class,original,copy"
    assert read_ground_truth(path) == [GroundTruthPair(*r) for r in rows]


def test_read_ground_truth_rejects_wrong_header(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,a,b\nForest,x.png,y.png\n")
    with pytest.raises(ValueError, match="expected the columns class,original,copy"):
        read_ground_truth(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="missing class,original,copy"):
        read_ground_truth(empty)
    short = tmp_path / "short.csv"
    short.write_text("class,original,copy\nForest,x.png\n")
    with pytest.raises(ValueError, match=":2: class, original and copy must all be filled"):
        read_ground_truth(short)


def test_read_ground_truth_ignores_extra_columns_in_any_order(tmp_path: Path) -> None:
    wide = tmp_path / "wide.csv"
    wide.write_text(
        "copy,transform,class,original,note\n"
        "x__dup_jpeg.jpg,jpeg,Forest,x.png,q=40\n"
        "y__dup_crop.png,crop,River,y.png,\n"
    )
    assert read_ground_truth(wide) == [
        GroundTruthPair("Forest", "x.png", "x__dup_jpeg.jpg"),
        GroundTruthPair("River", "y.png", "y__dup_crop.png"),
    ]


# ---------------------------------------------------------------------------- plant_duplicates


def test_plant_duplicates_counts_ground_truth_and_skips(source: Path, tmp_path: Path) -> None:
    before = _tree(source)
    dest = tmp_path / "out"
    summary = plant_duplicates(source, dest, fraction=0.25, seed=3)
    assert _tree(source) == before, "source must be untouched"

    assert summary.dest == dest.resolve()
    assert summary.ground_truth == dest.resolve() / GROUND_TRUTH_FILENAME
    # Hidden files/dirs, top-level files and non-image suffixes are ignored; corrupt skipped.
    assert summary.originals_per_class == {"alpha": 12, "beta": 7, "gamma": 3}
    assert [s.path for s in summary.skipped] == ["beta/corrupt.png"]
    assert summary.skipped[0].reason
    assert not (dest / "beta" / "corrupt.png").exists()
    assert not (dest / ".hiddenclass").exists() and not (dest / "toplevel.png").exists()
    # round-half-up(0.25 * n), at least one per class.
    assert summary.copies_per_class == {"alpha": 3, "beta": 2, "gamma": 1}
    assert sum(summary.copies_per_transform.values()) == summary.n_copies == 6
    assert summary.n_originals == 22

    pairs = read_ground_truth(summary.ground_truth)
    assert pairs == list(summary.pairs)
    assert len({(p.class_name, p.original) for p in pairs}) == len(pairs)
    for p in pairs:
        orig, copy = dest / p.class_name / p.original, dest / p.class_name / p.copy
        assert orig.is_file() and copy.is_file()
        transform = copy.stem.split("__dup_")[1]
        assert transform in TRANSFORMS
        assert copy.name == duplicate_name(p.original, transform)
        assert copy.suffix == (".jpg" if transform == "jpeg" else ".png")
        with Image.open(orig) as a, Image.open(copy) as b:
            assert a.size == b.size
            lo, hi = MAD_RANGE[transform]
            assert lo < _mad(a.convert("RGB"), b.convert("RGB")) < hi
    # Originals are byte-identical copies; nothing else was written.
    out = _tree(dest)
    for rel, digest in out.items():
        if rel != GROUND_TRUTH_FILENAME and "__dup_" not in rel:
            assert before[rel] == digest
    expected = {f"{p.class_name}/{p.copy}" for p in pairs}
    assert {r for r in out if "__dup_" in r} == expected
    # No temporary siblings left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_plant_duplicates_deterministic(source: Path, tmp_path: Path) -> None:
    a = plant_duplicates(source, tmp_path / "a", fraction=0.5, seed=11)
    b = plant_duplicates(source, tmp_path / "b", fraction=0.5, seed=11)
    c = plant_duplicates(source, tmp_path / "c", fraction=0.5, seed=12)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert a.pairs == b.pairs
    assert _tree(tmp_path / "a") != _tree(tmp_path / "c")
    assert a.originals_per_class == c.originals_per_class


def test_per_class_sample_is_seeded_subset(source: Path, tmp_path: Path) -> None:
    s1 = plant_duplicates(source, tmp_path / "s1", per_class=4, fraction=0.0, seed=1)
    plant_duplicates(source, tmp_path / "s2", per_class=4, fraction=0.0, seed=1)
    assert s1.originals_per_class["alpha"] == 4 and s1.originals_per_class["gamma"] == 3
    assert s1.n_copies == 0 and read_ground_truth(s1.ground_truth) == []
    names = sorted(p.name for p in (tmp_path / "s1" / "alpha").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "s2" / "alpha").iterdir())
    assert set(names) <= {p.name for p in (source / "alpha").iterdir()}
    others = set()
    for seed in range(2, 8):
        s = plant_duplicates(source, tmp_path / f"x{seed}", per_class=4, fraction=0.0, seed=seed)
        others.add(tuple(sorted(p.name for p in (s.dest / "alpha").iterdir())))
    assert len(others) > 1, "the sample should depend on the seed"


def test_proportions_select_transforms(source: Path, tmp_path: Path) -> None:
    s = plant_duplicates(source, tmp_path / "o", fraction=1.0, proportions={"noise": 1.0})
    assert s.copies_per_transform["noise"] == s.n_copies == 22
    assert all(p.copy.endswith("__dup_noise.png") for p in s.pairs)
    with pytest.raises(ValueError, match="unknown transform"):
        plant_duplicates(source, tmp_path / "bad", proportions={"rotate": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        plant_duplicates(source, tmp_path / "bad", proportions={"noise": 0.0})
    assert not (tmp_path / "bad").exists()


def test_refuses_bad_dest(source: Path, tmp_path: Path) -> None:
    before = _tree(source)
    with pytest.raises(ValueError, match="inside"):
        plant_duplicates(source, source / "nested")
    with pytest.raises(ValueError, match="inside"):
        plant_duplicates(source, source)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        plant_duplicates(source, occupied)
    assert _tree(source) == before
    assert (occupied / "keep.txt").read_text() == "x"
    # An existing empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert plant_duplicates(source, tmp_path / "empty").n_originals == 22


def test_interrupted_run_leaves_no_dest(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(planting, "write_ground_truth", boom)
    with pytest.raises(KeyboardInterrupt):
        plant_duplicates(source, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_plant_from_eurosat_sample(tmp_path: Path) -> None:
    if not EUROSAT.is_dir():
        pytest.skip(f"EuroSAT not found at {EUROSAT}")

    def snapshot() -> list[tuple[str, int, int]]:
        return sorted(
            (str(p.relative_to(EUROSAT)), p.stat().st_size, p.stat().st_mtime_ns)
            for d in EUROSAT.iterdir()
            if d.is_dir()
            for p in d.iterdir()
        )

    before = snapshot()
    s = plant_duplicates(EUROSAT, tmp_path / "euro", per_class=5, fraction=0.2, seed=0)
    assert snapshot() == before
    classes = sorted(d.name for d in EUROSAT.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert sorted(s.originals_per_class) == classes
    assert all(n == 5 for n in s.originals_per_class.values())
    assert all(n == 1 for n in s.copies_per_class.values())
    for p in read_ground_truth(s.ground_truth):
        with (
            Image.open(s.dest / p.class_name / p.original) as a,
            Image.open(s.dest / p.class_name / p.copy) as b,
        ):
            assert a.size == b.size == (64, 64)
            assert _mad(a.convert("RGB"), b.convert("RGB")) < 60


def test_a_split_or_empty_source_is_refused_with_the_way_to_plant(tmp_path: Path) -> None:
    """A source of split folders (train/<class>/...) planted nothing and wrote an empty
    ground truth, exit 0; now refused, naming a split to plant into."""
    split = tmp_path / "split"
    for name in ("train", "val"):
        (split / name / "ants").mkdir(parents=True)
        Image.fromarray(_texture(7)).save(split / name / "ants" / "a.png")
    with pytest.raises(ValueError, match=r"split folders \(train, val\); plant into one split"):
        plant_duplicates(split, tmp_path / "out")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images in the class folders"):
        plant_duplicates(tmp_path / "empty", tmp_path / "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_every_image_the_pipeline_reads_is_copied(tmp_path: Path) -> None:
    """A GIF, which `dedup run` reads, was left out of the planted copy without a word."""
    root = tmp_path / "src" / "cls"
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_texture(i)).save(root / f"p{i}.png")
    Image.fromarray(_texture(9)).save(root / "anim.gif")
    s = plant_duplicates(tmp_path / "src", tmp_path / "out", fraction=0.0)
    assert s.originals_per_class == {"cls": 4} and (s.dest / "cls" / "anim.gif").is_file()
