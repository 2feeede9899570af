"""`dedup plant` reads a source as `dedup run` reads it: the same decoding (EXIF orientation,
alpha over white, 16-bit by its bit depth), the same images of a class (nested folders too;
whatever is left out said on the last screen), any folder name the file system allows, and
copies whose names fit the file system's 255 bytes. Tiny images made here, through the real
command where a user meets it; the source is byte-identical afterwards."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_dedup
from PIL import Image

from dedup_assets import cli
from dedup_assets.core.data.image_folder import decode_image_bytes, scan_image_folder
from dedup_assets.core.quality import planting
from dedup_assets.core.quality.planting import (
    DUP_MARKER,
    NAME_MAX,
    duplicate_name,
    plant_duplicates,
    transform_of,
)

# Largest mean absolute difference (0-255) between the pipeline's 64x64 decode of an original
# and of its jpeg copy (quality 30-75 of a blocky texture measures 1-4); a copy made from
# other pixels than the pipeline reads measured 40-120 on these images.
CLOSE_MAD = 10.0


def _texture(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Blocks of colour and a gradient: the orientation and every region matter."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(20, 235, (6, 8, 3))
    img = np.kron(coarse, np.ones((height // 6, width // 8, 1)))
    img += np.linspace(-30, 30, width)[None, :, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _tree(root: Path) -> dict[bytes, bytes]:
    """Every file below root (raw path bytes, hidden ones too) -> its bytes."""
    found = {}
    for folder, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, os.fsencode(root))] = Path(os.fsdecode(path)).read_bytes()
    return found


def _ground_truth(dest: Path) -> list[dict[str, str]]:
    with (dest / "ground_truth.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _assert_run_reads_every_pair(dest: Path, rows: list[dict[str, str]]) -> None:
    """Every ground-truth file is an image `dedup run` lists in the planted copy, in the
    row's class, by the path its catalog and keep lists give it."""
    scan = scan_image_folder(dest)
    listed = {f.rel_path: f.class_name for f in scan.files}
    for row in rows:
        for name in (row["original"], row["copy"]):
            assert listed.get(f"{row['class']}/{name}") == row["class"], (row, sorted(listed))


# ------------------------------------------------------------------------------ D4: decoding


def _exif_rotated(path: Path, seed: int) -> None:
    """A photo stored sideways, upright by its EXIF orientation 6 (as phones write them)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = Image.fromarray(_texture(seed))
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())


def _rgba_cutout(path: Path, seed: int) -> None:
    """A cut-out: the left half transparent, its hidden colour black."""
    rgba = np.dstack([_texture(seed), np.full((48, 64), 255, np.uint8)])
    rgba[:, :32] = 0
    Image.fromarray(rgba, mode="RGBA").save(path)


def _grey16(path: Path, seed: int) -> None:
    """16-bit greyscale over the full 0..65535 range."""
    grey = _texture(seed).mean(axis=2).astype(np.uint16) * 257
    Image.fromarray(grey).save(path)  # mode I;16


MAKERS = {
    "exif_rotated": (_exif_rotated, "jpg"),
    "rgba": (_rgba_cutout, "png"),
    "grey16": (_grey16, "png"),
}


def _naive_pixels(data: bytes) -> np.ndarray:
    """What planting decoded before: Pillow's own convert("RGB"), at the pipeline's size."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    return np.asarray(rgb.resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_planted_copy_is_what_the_pipeline_reads_in_its_original(tmp_path, kind):
    """An EXIF-rotated photo's copy was made from its sideways pixels (recall 0.0 with
    `dedup run`), an RGBA cut-out's from its hidden colour (0.35), a 16-bit image's from
    values clipped to white (0.25): now from the pixels the pipeline decodes."""
    make, ext = MAKERS[kind]
    source = tmp_path / "src"
    (source / "cls").mkdir(parents=True)
    for i in range(4):
        make(source / "cls" / f"im{i}.{ext}", seed=i)
    before = _tree(source)

    summary = plant_duplicates(source, tmp_path / "out", fraction=1.0, proportions={"jpeg": 1})

    assert _tree(source) == before
    assert summary.n_copies == 4 and not summary.skipped
    for pair in summary.pairs:
        original = (summary.dest / "cls" / pair.original).read_bytes()
        assert original == before[os.fsencode(f"cls/{pair.original}")]  # copied byte for byte
        read = decode_image_bytes(original)
        copy = decode_image_bytes((summary.dest / "cls" / pair.copy).read_bytes())
        assert read.error is None and copy.error is None
        assert _mad(read.pixels, copy.pixels) < CLOSE_MAD, pair
        # The images show the bug: Pillow's plain decode is far from the pipeline's.
        assert _mad(read.pixels, _naive_pixels(original)) > 4 * CLOSE_MAD


def test_decode_upright_rgb_is_the_pipelines_decode_at_full_size(tmp_path):
    for kind, (make, ext) in MAKERS.items():
        path = tmp_path / f"{kind}.{ext}"
        make(path, seed=3)
        data = path.read_bytes()
        full = planting.decode_upright_rgb(data)
        assert full.mode == "RGB" and full.size == (64, 48), kind  # upright: 64 wide
        small = full.resize((64, 64), Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(small), decode_image_bytes(data).pixels), kind


# ----------------------------------------------------- D5: the images of a class, as run reads


def test_nested_images_are_copied_and_planted_and_the_rest_is_said(tmp_path):
    """`a/sub/x.jpg`, which `dedup run` counts in class `a`, was dropped without a word, as
    were non-image and hidden files; now copied at its subpath and planted from, and what is
    left out is listed with a count per reason on the last screen."""
    source = tmp_path / "src"
    for folder in ("a/sub/deeper", "b", ".hiddenclass"):
        (source / folder).mkdir(parents=True)
    images = ["a/top.png", "a/sub/mid.png", "a/sub/deeper/low.jpg", "b/one.png", "b/two.png"]
    for i, rel in enumerate(images):
        Image.fromarray(_texture(i)).save(source / rel)
    Image.fromarray(_texture(9)).save(source / ".hiddenclass" / "h.png")
    Image.fromarray(_texture(8)).save(source / "loose.png")
    (source / "a" / "notes.txt").write_text("not an image")
    (source / "a" / "sub" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (source / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    before = _tree(source)
    dest = tmp_path / "planted"

    done = run_dedup("plant", "--source", str(source), "--dest", str(dest), "--fraction", "1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert _tree(source) == before
    for rel in images:
        assert (dest / rel).read_bytes() == (source / rel).read_bytes()
    rows = _ground_truth(dest)
    assert sorted((r["class"], r["original"]) for r in rows) == [
        ("a", "sub/deeper/low.jpg"),
        ("a", "sub/mid.png"),
        ("a", "top.png"),
        ("b", "one.png"),
        ("b", "two.png"),
    ]
    nested = next(r for r in rows if r["original"] == "sub/deeper/low.jpg")
    assert nested["copy"].startswith(f"sub/deeper/low{DUP_MARKER}")
    _assert_run_reads_every_pair(dest, rows)
    assert "copied 5 originals and planted 5 near-duplicates" in done.stdout
    last = done.stdout[done.stdout.index("left out of the copy") :]
    assert "left out of the copy: 5 source entries" in last
    for says in (
        "2 hidden: .hiddenclass, a/sub/.DS_Store",  # a hidden folder is one entry
        "1 not an image: a/notes.txt",
        "1 outside a class folder: loose.png",
        "1 unreadable: b/broken.png (not a readable image",
    ):
        assert says in last, done.stdout
    assert not (dest / "a" / "notes.txt").exists() and not (dest / ".hiddenclass").exists()

    verbose = run_dedup(
        "plant", "--source", str(source), "--dest", str(tmp_path / "v"), "--verbose"
    )
    assert verbose.returncode == 0, verbose.stderr
    assert "a/notes.txt: file extension '.txt' is not an image extension" in verbose.stdout
    assert "--include-hidden" not in verbose.stdout  # plant has no such option


def test_list_class_images_agrees_with_the_pipelines_listing(tmp_path):
    (tmp_path / "a" / "x" / "y").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for rel in ("a/1.png", "a/x/2.GIF", "a/x/y/3.webp", "a/x/.4.png", "a/5.txt"):
        (tmp_path / rel).write_bytes(b"")
    listed = planting.list_class_images(tmp_path)
    assert listed == {"a": ["1.png", "x/2.GIF", "x/y/3.webp"], "empty": []}
    scan = scan_image_folder(tmp_path)
    assert sorted(f"{c}/{n}" for c, names in listed.items() for n in names) == sorted(
        f.rel_path for f in scan.files
    )


# --------------------------------------------------------- D6: names that are not valid UTF-8


def _mkdir_raw(path: bytes) -> None:
    try:
        os.makedirs(path)
    except OSError as exc:  # e.g. a file system that only takes UTF-8 names
        pytest.skip(f"this file system refuses a name that is not UTF-8: {exc}")


def test_a_class_folder_name_that_is_not_utf8_is_planted(tmp_path):
    """`caf\\xe9` (Latin-1) stopped plant with "dedup plant: error: 'utf-8' codec can't
    encode character '\\udce9'", exit 2 as if an option were wrong."""
    source = tmp_path / "src"
    cafe = os.path.join(os.fsencode(source), b"caf\xe9")
    _mkdir_raw(cafe)
    (source / "plain").mkdir()
    for i in range(3):
        Image.fromarray(_texture(i)).save(os.fsdecode(os.path.join(cafe, b"im%d.png" % i)))
        Image.fromarray(_texture(10 + i)).save(source / "plain" / f"im{i}.png")
    Image.fromarray(_texture(7)).save(os.fsdecode(os.path.join(cafe, b"na\xefve.png")))
    before = _tree(source)
    dest = tmp_path / "planted"

    done = run_dedup("plant", "--source", str(source), "--dest", str(dest), "--fraction", "0.5")

    assert done.returncode == 0, done.stdout + done.stderr
    assert _tree(source) == before
    planted = _tree(dest)
    for rel, data in before.items():
        assert planted[rel] == data  # the same bytes at the same raw path
    rows = _ground_truth(dest)
    assert sorted({r["class"] for r in rows}) == ["caf\\xe9", "plain"]  # as run shows it
    _assert_run_reads_every_pair(dest, rows)


def test_only_setting_errors_are_usage_errors(tmp_path, monkeypatch):
    """Any ValueError of plant became "dedup plant: error: ..." exit 2, so a bug read as a
    wrong option; now only a setting that cannot work is a usage error."""
    (tmp_path / "src" / "c").mkdir(parents=True)
    Image.fromarray(_texture(0)).save(tmp_path / "src" / "c" / "x.png")
    args = cli.build_parser().parse_args(
        ["plant", "--source", str(tmp_path / "src"), "--dest", str(tmp_path / "out")]
    )

    def broken(*_args, **_kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(planting, "plant_duplicates", broken)
    with pytest.raises(ValueError, match="a bug deep inside"):
        cli._plant(args)
    monkeypatch.undo()

    for option, says in (
        (("--fraction", "1.5"), "fraction must be in [0, 1]"),
        (("--per-class", "0"), "per_class must be >= 1"),
        (("--proportions", "rotate=1"), "unknown transform"),
    ):
        done = run_dedup(
            "plant", "--source", str(tmp_path / "src"), "--dest", str(tmp_path / "o"), *option
        )
        assert done.returncode == 2 and says in done.stderr, done.stderr
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------- D7: names longer than 255 bytes


def test_long_file_names_get_copies_whose_names_fit(tmp_path):
    """A 245-character name plus `__dup_<transform>` aborted the whole copy with
    "[Errno 36] File name too long"; now the copy's stem is cut and a hash of it added."""
    source = tmp_path / "src"
    (source / "cls").mkdir(parents=True)
    names = ["x" * 245 + ".jpg", "x" * 244 + "y.jpg", "é" * 120 + ".png", "short.png"]
    for i, name in enumerate(names):
        Image.fromarray(_texture(i)).save(source / "cls" / name)
    before = _tree(source)
    dest = tmp_path / "planted"

    done = run_dedup(
        "plant", "--source", str(source), "--dest", str(dest), "--fraction", "1",
        "--proportions", "brightness=1",
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert _tree(source) == before
    rows = _ground_truth(dest)
    assert sorted(r["original"] for r in rows) == sorted(names)
    copies = [r["copy"] for r in rows]
    assert len(set(copies)) == len(copies)
    for row in rows:
        assert len(row["copy"].encode("utf-8")) <= NAME_MAX, row
        assert f"{DUP_MARKER}brightness" in row["copy"]
        assert transform_of(row["copy"]) == "brightness"
        assert (dest / "cls" / row["copy"]).is_file()
    assert next(r for r in rows if r["original"] == "short.png")["copy"] == (
        "short__dup_brightness.png"
    )
    _assert_run_reads_every_pair(dest, rows)


def test_duplicate_name_fits_and_stays_apart():
    long = "a" * 251 + ".jpg"
    for transform in ("jpeg", "brightness", "exact"):
        for attempt in (1, 2, 137):
            name = duplicate_name(long, transform, attempt)
            assert len(os.fsencode(name)) <= NAME_MAX
            assert transform_of(name) == transform
            assert name == duplicate_name(long, transform, attempt)  # deterministic
    assert duplicate_name(long, "noise") != duplicate_name("a" * 250 + "b.jpg", "noise")
    assert duplicate_name(long, "noise", 2).endswith("__dup_noise-2.png")
    assert duplicate_name("x.png", "noise", 3) == "x__dup_noise-3.png"
    # Cut at a character, never inside one; undecodable bytes count as one byte each.
    wide = duplicate_name("€" * 84 + ".png", "contrast")
    assert len(wide.encode("utf-8")) <= NAME_MAX and wide.startswith("€")
    raw = duplicate_name(os.fsdecode(b"\xe9" * 250 + b".png"), "blur")
    assert len(os.fsencode(raw)) <= NAME_MAX
