"""Split layouts (`core.data.splits`): `<root>/<split>/<class>/<image>` recognised by its
top folders' names or named explicitly, a plain ImageFolder as one implicit split, and the
ambiguous layouts refused with a message that says what to do."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.data.splits import (
    IMPLICIT,
    SplitLayoutError,
    SplitRole,
    detect_splits,
    parse_split_names,
    scan_splits,
    split_class_key,
)


def _image(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _tree(root: Path, files: list[str]) -> Path:
    for k, rel in enumerate(files):
        _image(root / rel, k)
    return root


def test_a_folder_without_splits_is_one_implicit_training_split(tmp_path):
    root = _tree(tmp_path / "src", ["cats/a.png", "cats/b.png", "dogs/c.png"])
    layout = detect_splits(root)
    assert layout.implicit
    assert [s.name for s in layout.splits] == [IMPLICIT]
    assert layout.train.role == SplitRole.train and layout.eval_splits == ()
    assert layout.classes == {"cats": "cats", "dogs": "dogs"}
    assert layout.split_root(IMPLICIT) == os.fsencode(root)
    scans = scan_splits(layout)
    assert [f.rel_path for f in scans[IMPLICIT].files] == ["cats/a.png", "cats/b.png", "dogs/c.png"]
    assert split_class_key(IMPLICIT, "cats") == "cats"  # unsplit sources keep their keys


def test_split_folders_are_recognised_without_case_and_with_aliases(tmp_path):
    root = _tree(
        tmp_path / "src",
        ["Train/cats/a.png", "Train/dogs/b.png", "VALIDATION/cats/c.png", "test/dogs/d.png"],
    )
    layout = detect_splits(root)
    assert not layout.implicit
    assert [(s.name, s.folder, s.role) for s in layout.splits] == [
        ("train", "Train", SplitRole.train),
        ("val", "VALIDATION", SplitRole.eval),
        ("test", "test", SplitRole.eval),
    ]
    assert layout.split("val").classes == {"cats": "cats"}
    scans = scan_splits(layout)
    assert [f.rel_path for f in scans["train"].files] == ["cats/a.png", "dogs/b.png"]
    assert [(f.class_key, f.rel_path) for f in scans["test"].files] == [("dogs", "dogs/d.png")]
    # classes in some splits only are reported, not refused
    assert layout.classes_only_in() == {"cats": ("train", "val"), "dogs": ("train", "test")}
    assert any("cats is only in train, val" in n for n in layout.notes)
    assert split_class_key("test", "dogs") == "test.dogs"


def test_named_splits_choose_the_folders_and_the_training_split(tmp_path):
    root = _tree(tmp_path / "src", ["fit/a/x.png", "holdout/a/y.png"])
    # not split names: detected as a plain ImageFolder with classes fit and holdout
    assert detect_splits(root).implicit
    layout = detect_splits(root, "fit,holdout")
    assert [(s.name, s.role) for s in layout.splits] == [
        ("train", SplitRole.train),
        ("holdout", SplitRole.eval),
    ]
    assert layout.split("train").folder == "fit"
    # a train alias wins over the order given
    root2 = _tree(tmp_path / "src2", ["test/a/x.png", "train/a/y.png"])
    layout2 = detect_splits(root2, ["test", "train"])
    assert layout2.train.folder == "train"


def test_splits_none_reads_split_named_folders_as_classes(tmp_path):
    root = _tree(tmp_path / "src", ["train/x.png", "test/y.png"])
    layout = detect_splits(root, "none")
    assert layout.implicit and set(layout.classes) == {"train", "test"}
    assert parse_split_names(" train , val ,test") == ("train", "val", "test")
    assert parse_split_names(None) is None and parse_split_names("None") == ()


def test_an_empty_split_is_accepted_and_noted(tmp_path):
    root = _tree(tmp_path / "src", ["train/cats/a.png"])
    (root / "test").mkdir()
    layout = detect_splits(root)
    assert layout.split("test").classes == {}
    assert "split test (test) holds no class folder" in layout.notes
    assert scan_splits(layout)["test"].files == []


def test_a_mix_of_split_and_class_folders_is_refused(tmp_path):
    root = _tree(tmp_path / "src", ["train/cats/a.png", "test/cats/b.png", "dogs/c.png"])
    with pytest.raises(
        SplitLayoutError, match=r"mixes split folders \(test, train\) with other folders \(dogs\)"
    ):
        detect_splits(root)
    # naming the splits does not make dogs/ one of them
    with pytest.raises(SplitLayoutError, match="dogs at its top are not among the splits"):
        detect_splits(root, "train,test")
    # hidden folders are not classes, so they do not make a mix
    (root / "dogs" / "c.png").unlink()
    (root / "dogs").rmdir()
    (root / ".cache").mkdir()
    assert [s.name for s in detect_splits(root).splits] == ["train", "test"]


def test_incomplete_or_doubled_splits_are_refused(tmp_path):
    root = _tree(tmp_path / "a", ["val/cats/a.png", "test/cats/b.png"])
    with pytest.raises(SplitLayoutError, match="no training split"):
        detect_splits(root)
    root = _tree(tmp_path / "b", ["train/c/a.png", "val/c/b.png", "validation/c/d.png"])
    with pytest.raises(SplitLayoutError, match="val and validation are both the val split"):
        detect_splits(root)
    root = _tree(tmp_path / "c", ["train/c/a.png"])
    with pytest.raises(SplitLayoutError, match="--splits names test, not a folder"):
        detect_splits(root, "train,test")
    with pytest.raises(SplitLayoutError, match="more than once"):
        parse_split_names("train,Train")


def test_each_class_is_found_by_its_key_as_the_source_changes(tmp_path):
    """`scan_class` finds each class partition's folder as the whole source's listing keys
    it, for plain, percent-encoded, hashed, hidden and linked folder names and split keys,
    while folders are added, renamed, removed and replaced by files between calls (the
    folder listing is kept between calls and must never answer for a folder gone)."""
    from dedup_assets.core.data.image_folder import class_key
    from dedup_assets.core.data.splits import scan_class, scan_source

    def agrees(root: Path, include_hidden: bool = False) -> list[str]:
        layout = detect_splits(root, include_hidden=include_hidden)
        listed = {
            f.class_key for f in scan_source(root, layout, include_hidden=include_hidden).files
        }
        for key in listed:
            scan = scan_class(root, layout, key, include_hidden=include_hidden)
            assert scan is not None and {f.class_key for f in scan.files} == {key}
        for gone in ("nothing", "x" * 70, "%2E", "a.b"):
            assert scan_class(root, layout, gone, include_hidden=include_hidden) is None
        return sorted(listed)

    long_name = "é" * 40  # percent-encoded beyond 64 characters: a hashed key
    root = _tree(
        tmp_path / "src",
        ["cats/a.png", "my dogs/b.png", f"{long_name}/c.png", ".hidden/d.png", "odd~name/e.png"],
    )
    (root / "linked").symlink_to(root / "cats", target_is_directory=True)
    keys = agrees(root)
    assert keys == sorted(
        class_key(n) for n in ["cats", "my dogs", long_name, "odd~name", "linked"]
    )
    assert class_key(".hidden") in agrees(root, include_hidden=True)
    (root / "cats").rename(root / "kittens")  # the kept listing names a folder gone
    assert "cats" not in agrees(root) and "kittens" in agrees(root)
    layout = detect_splits(root)
    assert scan_class(root, layout, "cats") is None
    (root / "kittens" / "a.png").unlink()
    (root / "kittens").rmdir()
    (root / "kittens").write_bytes(b"now a file")
    assert "kittens" not in agrees(root)
    _image(root / "new" / "f.png")  # added after the listing was kept
    assert "new" in agrees(root)
    for folder in ("my dogs", long_name, "odd~name", "new"):  # "linked" lost its target
        assert scan_class(root, layout, class_key(folder)) is not None

    split_root = _tree(
        tmp_path / "splits", ["train/cats/a.png", "test/cats/b.png", "test/d o/c.png"]
    )
    keys = agrees(split_root)
    assert keys == sorted(
        [
            split_class_key("train", "cats"),
            split_class_key("test", "cats"),
            split_class_key("test", "d%20o"),
        ]
    )
    layout = detect_splits(split_root)
    assert scan_class(split_root, layout, split_class_key("train", "d%20o")) is None
    assert scan_class(split_root, layout, "%74rain.cats") is None  # not the split's own key
