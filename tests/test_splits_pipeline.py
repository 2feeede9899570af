"""Splits through the whole pipeline (issue 25): `<source>/<split>/<class>/<image>` through
`dedup run` as a user runs it. One class partition per (split, class), keyed
`<split>.<class>`, paths relative to the source with the split folder; the split in the
catalog and the keep lists; the model trained on the training split alone; a new test image
recomputes only its own partition; `--splits none` and `--splits train,holdout`; a layout
mixing split and class folders refused with exit 2 before anything is written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import run_dedup
from PIL import Image, ImageEnhance

from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.splits import IMPLICIT
from dedup_assets.core.quality.demo_data import generate_demo_dataset, read_leaks

T = "0.95"
ARGS = ("--epochs", "1", "--thresholds", T, "--device", "cpu", "--components", "8")


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> Path:
    """Demo renders to build layouts from: forest, water, farmland, 14 images each (with
    their planted near and exact duplicates), no corrupt file."""
    gen = tmp_path_factory.mktemp("renders") / "demo"
    generate_demo_dataset(gen, seed=3, per_class=14, duplicate_fraction=0.2)
    return gen


def _originals(renders: Path, name: str) -> list[Path]:
    return sorted(p for p in (renders / name).glob("*.png") if "__" not in p.name)


def _copy(files: list[Path], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, folder / f.name)
    return [f.name for f in files]


def _run(source: Path, output: Path, *extra: str) -> str:
    done = run_dedup("run", "--source", str(source), "--output", str(output), *ARGS, *extra)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _files(root: Path) -> list[str]:
    """The image files under root, by path relative to it."""
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".png", ".jpg")
    )


@pytest.fixture(scope="module")
def split_run(renders, tmp_path_factory):
    """train/{forest,water} (originals and their planted copies), test/{forest,farmland}
    (other originals: farmland only in test, water only in train), an empty val/."""
    base = tmp_path_factory.mktemp("splits")
    source = base / "src"
    for name in ("forest", "water"):  # originals 0-9 and the copies planted of them
        train = sorted((renders / name).glob(f"{name}_00*"))
        _copy(train, source / "train" / name)
    _copy(_originals(renders, "forest")[10:], source / "test" / "forest")
    _copy(_originals(renders, "farmland")[:6], source / "test" / "farmland")
    (source / "val").mkdir()
    out = base / "out"
    stdout = _run(source, out)
    return {"source": source, "out": out, "layout": OutputLayout(out), "stdout": stdout}


def test_each_split_class_is_its_own_partition_with_paths_from_the_source(split_run):
    source, layout = split_run["source"], split_run["layout"]
    index = pl.read_parquet(layout.index).sort("class_key")
    assert index.select("class_key", "split", "class").rows() == [
        ("test.farmland", "test", "farmland"),
        ("test.forest", "test", "forest"),
        ("train.forest", "train", "forest"),
        ("train.water", "train", "water"),
    ]
    on_disk = _files(source)
    for key, split, name, files in index.select("class_key", "split", "class", "files").rows():
        assert files == sum(p.startswith(f"{split}/{name}/") for p in on_disk)
        catalog = pl.read_parquet(layout.class_images(key))
        assert set(catalog["split"]) == {split} and set(catalog["class"]) == {name}
        assert all(p.startswith(f"{split}/{name}/") for p in catalog["path"])
        assert all((source / p).is_file() for p in catalog["path"])

    keep = pl.read_parquet(layout.keep_list(T))
    assert keep.height == len(on_disk)
    assert sorted(keep["path"]) == sorted(on_disk)
    assert keep.columns[:4] == ["image_id", "split", "class", "path"]
    for split, name, path in keep.select("split", "class", "path").rows():
        assert path.startswith(f"{split}/{name}/")
    # Removals point within their own split and class; the planted copies in train go.
    removed = keep.filter(~pl.col("kept"))
    assert removed.height > 0 and set(removed["split"]) == {"train"}
    for path, other in removed.select("path", "duplicate_of_path").rows():
        assert other.rsplit("/", 1)[0] == path.rsplit("/", 1)[0]
    # The clean copy keeps the split folders: clean/<T>/<split>/<class>/<image>.
    clean = _files(layout.clean_dir(T))
    assert sorted(clean) == sorted(keep.filter(pl.col("kept"))["path"])


def test_the_model_is_trained_on_the_training_split_only(split_run):
    layout = split_run["layout"]
    trained = pl.read_parquet(layout.trained_images)
    train_images = sum(p.startswith("train/") for p in _files(split_run["source"]))
    assert trained.height == train_images
    assert set(trained["class_key"]) == {"train.forest", "train.water"}
    assert all(bytes(p).startswith(b"train/") for p in trained["raw_path"])


def test_a_new_test_image_recomputes_only_its_partition(split_run):
    source, out, layout = split_run["source"], split_run["out"], split_run["layout"]
    keys = ["test.farmland", "test.forest", "train.forest", "train.water"]
    before = {k: layout.class_keep_list(T, k).read_bytes() for k in keys}
    catalogs = {k: layout.class_images(k).stat().st_mtime_ns for k in keys}
    model = layout.model.read_bytes()
    new = source / "test" / "farmland" / "new_00.png"
    with Image.open(next(iter(sorted((source / "test" / "farmland").glob("*.png"))))) as img:
        ImageEnhance.Brightness(img.convert("RGB")).enhance(1.4).save(new)
    stdout = _run(source, out)
    assert "source: changed: test/farmland" in stdout
    for k in keys:
        if k == "test.farmland":
            assert layout.class_images(k).stat().st_mtime_ns != catalogs[k]
            assert layout.class_keep_list(T, k).read_bytes() != before[k]
        else:  # untouched partitions: not decoded again, decisions byte-identical
            assert layout.class_images(k).stat().st_mtime_ns == catalogs[k], k
            assert layout.class_keep_list(T, k).read_bytes() == before[k], k
    assert layout.model.read_bytes() == model  # a test image never retrains the model
    keep = pl.read_parquet(layout.keep_list(T))
    row = keep.filter(pl.col("path") == "test/farmland/new_00.png")
    assert row.select("split", "class").rows() == [("test", "farmland")]


def test_splits_none_reads_split_named_folders_as_classes(renders, tmp_path):
    """`--splits none`: train/ and test/ are two classes of an unsplit source, with the
    plain keys and the implicit split's name, and the model sees both."""
    source = tmp_path / "src"
    _copy(_originals(renders, "forest")[:8], source / "train")
    _copy(_originals(renders, "water")[:8], source / "test")
    layout = OutputLayout(tmp_path / "out")
    _run(source, tmp_path / "out", "--splits", "none")
    index = pl.read_parquet(layout.index).sort("class_key")
    assert index.select("class_key", "split", "class").rows() == [
        ("test", IMPLICIT, "test"),
        ("train", IMPLICIT, "train"),
    ]
    keep = pl.read_parquet(layout.keep_list(T))
    assert set(keep["split"]) == {IMPLICIT} and keep.height == 16
    assert pl.read_parquet(layout.trained_images).height == 16


def test_named_splits_choose_custom_folders(renders, tmp_path):
    """`--splits train,holdout`: holdout/ is an evaluation split, never trained on."""
    source = tmp_path / "src"
    _copy(_originals(renders, "forest")[:8], source / "train" / "forest")
    _copy(_originals(renders, "forest")[8:12], source / "holdout" / "forest")
    layout = OutputLayout(tmp_path / "out")
    _run(source, tmp_path / "out", "--splits", "train,holdout")
    index = pl.read_parquet(layout.index).sort("class_key")
    assert index.select("class_key", "split", "files").rows() == [
        ("holdout.forest", "holdout", 4),
        ("train.forest", "train", 8),
    ]
    assert set(pl.read_parquet(layout.trained_images)["class_key"]) == {"train.forest"}
    keep = pl.read_parquet(layout.keep_list(T))
    assert sorted(keep.filter(pl.col("split") == "holdout")["path"]) == [
        f"holdout/forest/{p.name}" for p in _originals(renders, "forest")[8:12]
    ]


def test_a_mix_of_split_and_class_folders_is_refused_before_anything_is_written(renders, tmp_path):
    source = tmp_path / "src"
    for folder in ("train/forest", "test/forest", "forest"):
        _copy(_originals(renders, "forest")[:2], source / folder)
    out = tmp_path / "out"
    done = run_dedup("run", "--source", str(source), "--output", str(out), *ARGS)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "mixes split folders (test, train) with other folders (forest)" in done.stderr
    assert "--splits" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()
    # Named, the same top folders are refused too: forest is not among the splits.
    done = run_dedup("run", "--source", str(source), "--output", str(out), "--splits", "train,test")
    assert done.returncode == 2 and "forest" in done.stderr and not out.exists()


def test_the_demo_split_variant_plants_leaks_and_lists_them(tmp_path):
    """`dedup demo --splits`'s source: deterministic; train/ and test/ hold the same
    classes; leaks.csv lists every test image with a copy in train, and nothing else is one
    (byte-identical copies checked by bytes; the near copy lies in another class)."""
    one = generate_demo_dataset(tmp_path / "a", splits=True, per_class=10)
    two = generate_demo_dataset(tmp_path / "b", splits=True, per_class=10)
    assert one.digest == two.digest and one.splits and one.leaks == 4
    root = one.root
    assert sorted(p.name for p in root.iterdir()) == [
        ".demo_manifest.json",
        "ground_truth.csv",  # the within-train planted pairs, for the evaluation
        "leaks.csv",
        "test",
        "train",
    ]
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(
        p.name for p in (root / "test").iterdir()
    )
    leaks = read_leaks(one.leaks_file)
    assert {(x.kind, x.transform) for x in leaks} == {
        ("exact", "exact"),
        ("near", "brightness"),
        ("near", "noise"),
    }
    assert any(x.kind == "near" and x.train_class != x.class_name for x in leaks)
    digest = lambda p: hashlib.sha1(p.read_bytes()).hexdigest()  # noqa: E731
    for x in leaks:
        assert x.image.startswith(f"test/{x.class_name}/")
        assert x.train_image.startswith(f"train/{x.train_class}/")
        same = digest(root / x.image) == digest(root / x.train_image)
        assert same == (x.kind == "exact")
    exact = [x.train_image for x in leaks if x.kind == "exact"]
    assert len(exact) == 2  # the exact copy, and its own exact copy within train
    train = {digest(p) for p in (root / "train").rglob("*.png")}
    test_copies = [p for p in (root / "test").rglob("*.png") if digest(p) in train]
    assert {p.relative_to(root).as_posix() for p in test_copies} == {
        x.image for x in leaks if x.kind == "exact"
    }
