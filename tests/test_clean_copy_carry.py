"""A copy mode clean copy made again moves its unchanged folders into the new copy instead
of linking their files one by one, and patches a folder that changed in a few files; only a
folder whose files on disk are those its copy recorded is moved, and an interrupted or
crashed swap puts every moved folder back as it was."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from dedup_assets.assets import clean_dataset
from dedup_assets.assets.clean_dataset import FILES_NAME, FolderReuse, write_clean_copy
from dedup_assets.core.data.atomic_io import sweep_interrupted, sweep_interrupted_at, writing
from dedup_assets.core.data.layout import OutputLayout

T = "0.95"


def _source(root: Path) -> None:
    """Three class folders (one with a space and one not UTF-8 in its name), five files
    each, and a subfolder in the first."""
    for c, name in enumerate([b"class0", b"class 1", b"cl\xe9ss2"]):
        folder = os.path.join(os.fsencode(root), name)
        os.makedirs(folder)
        for i in range(5):
            with open(os.path.join(folder, b"img%d.png" % i), "wb") as fh:
                fh.write(bytes([c, i]) * (50 + 10 * i))
    os.makedirs(os.path.join(os.fsencode(root), b"class0", b"sub"))
    (root / "class0" / "sub" / "deep.png").write_bytes(b"deep" * 30)


def _kept(root: Path) -> pl.DataFrame:
    """Every file under root, with what the catalog records of it."""
    rows = []
    base = os.fsencode(root)
    for dirpath, _, names in os.walk(base):
        for name in names:
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            with open(full, "rb") as fh:
                content = hashlib.sha1(fh.read()).hexdigest()[:16]
            rows.append((os.path.relpath(full, base), content, st.st_size, st.st_mtime_ns))
    return pl.DataFrame(
        rows,
        schema={
            "raw_path": pl.Binary,
            "content_hash": pl.String,
            "size_bytes": pl.Int64,
            "mtime_ns": pl.Int64,
        },
        orient="row",
    ).sort("raw_path")


def _write(layout: OutputLayout, source: Path, run: str) -> int:
    return write_clean_copy(
        layout, T, [T], _kept(source), os.fsencode(source), "copy", f"keep-{run}", run
    )


def _inode(path: Path | bytes) -> int:
    return os.stat(path).st_ino


def _same_tree(clean: Path, source: Path) -> None:
    """clean holds exactly the source's files, byte for byte, none of them the source's."""
    meta = {FILES_NAME, ".latent-dedup-clean.json"}
    held = sorted(
        os.path.relpath(os.path.join(d, n), os.fsencode(clean))
        for d, _, names in os.walk(os.fsencode(clean))
        for n in names
        if os.fsdecode(n) not in meta
    )
    assert held == sorted(_kept(source)["raw_path"].to_list())
    for rel in held:
        a, b = os.path.join(os.fsencode(clean), rel), os.path.join(os.fsencode(source), rel)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()
        assert not os.path.islink(a) and _inode(a) != _inode(b)


def test_unchanged_folders_move_and_changed_ones_are_made_again(tmp_path):
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    clean = layout.clean_dir(T)
    assert _write(layout, source, "r1") == 0  # a first copy: every file copied
    files = pl.read_parquet(clean / FILES_NAME)
    assert files.columns == ["raw_path", "content_hash", "size_bytes", "mtime_ns"]
    c1 = os.path.join(os.fsencode(clean), b"class 1")
    c2 = os.path.join(os.fsencode(clean), b"cl\xe9ss2")
    inodes = {p: _inode(p) for p in (c1, c2, clean / "class0")}
    file_inode = _inode(os.path.join(c1, b"img0.png"))

    # A new image in class0: class 1 and cl\xe9ss2 move in whole (the same folders, the same
    # files); class0 is made again (it also holds a subfolder, which moves: unchanged).
    (source / "class0" / "new.png").write_bytes(b"new" * 40)
    assert _write(layout, source, "r2") == 16  # 15 moved + class0/sub's one file
    assert _inode(c1) == inodes[c1] and _inode(c2) == inodes[c2]
    assert _inode(os.path.join(c1, b"img0.png")) == file_inode
    assert _inode(clean / "class0") != inodes[clean / "class0"]
    _same_tree(clean, source)
    assert json.loads(layout.clean_manifest(T).read_text())["run_id"] == "r2"

    # A file of the copy edited (its time changes), a file added to the copy, a link put in
    # it: those folders are made again, as the source has them.
    edited = os.path.join(c1, b"img1.png")
    with open(edited, "r+b") as fh:
        fh.write(b"edited by a user")
    os.utime(edited, ns=(1, 1))
    (clean / "class0" / "sub" / "extra.png").write_bytes(b"not from the source")
    os.symlink(
        os.path.join(os.fsencode(source), b"class 1", b"img0.png"), os.path.join(c2, b"a link")
    )
    # Their files are hard-linked from the copy before, one by one, but the edited one:
    # copied from the source (17 files in all).
    assert _write(layout, source, "r3") == 16
    assert _inode(c1) != inodes[c1] and _inode(c2) != inodes[c2]
    _same_tree(clean, source)

    # A source file touched (a newer time, the same bytes): its folder is made again.
    before = _inode(clean / "class0")
    os.utime(source / "class0" / "img2.png", ns=(2, 2))
    _write(layout, source, "r4")
    assert _inode(clean / "class0") != before
    _same_tree(clean, source)


def test_a_copy_without_sizes_or_not_in_copy_mode_moves_nothing(tmp_path):
    """A copy made by an earlier version (no sizes recorded) or in a linking mode: nothing is
    moved from it; the copy mode copy made next holds files of its own."""
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    root = os.fsencode(source)
    write_clean_copy(layout, T, [T], _kept(source), root, "hardlink", "k1", "r1")
    manifest = layout.clean_manifest(T)  # a linking copy whose manifest says copy
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "mode": "copy"}))
    assert clean_dataset._reusable_folders(layout, T, _kept(source)) == FolderReuse()
    write_clean_copy(layout, T, [T], _kept(source), root, "copy", "k2", "r2")
    _same_tree(layout.clean_dir(T), source)
    clean = layout.clean_dir(T)
    pl.read_parquet(clean / FILES_NAME).select("raw_path", "content_hash").write_parquet(
        clean / FILES_NAME
    )
    assert clean_dataset._reusable_folders(layout, T, _kept(source)) == FolderReuse()
    assert (
        clean_dataset._reusable_folders(layout, T, _kept(source).drop("mtime_ns")) == FolderReuse()
    )


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("fail_at", [0, 1, 2])
def test_an_interrupt_while_folders_move_puts_them_back(tmp_path, monkeypatch, fail_at, after):
    """Ctrl-C just before or just after the first, second or third folder's move: the copy
    is the one before, whole, and nothing is left beside it."""
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r1")
    (source / "class0" / "new.png").write_bytes(b"new" * 40)
    real, calls = os.rename, []

    def rename(a, b):
        if os.fsencode(a).endswith(b".tmp") is False and b".tmp" in os.fsencode(b):
            calls.append(a)
            if len(calls) == fail_at + 1:
                if after:
                    real(a, b)
                raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _write(layout, source, "r2")
    monkeypatch.undo()
    (source / "class0" / "new.png").unlink()
    _same_tree(layout.clean_dir(T), source)
    assert json.loads(layout.clean_manifest(T).read_text())["run_id"] == "r1"
    assert sorted(p.name for p in layout.clean_dir(T).parent.iterdir()) == [T]


def _stranded(tmp_path: Path, journal: bytes) -> tuple[Path, OutputLayout, Path, Path]:
    """A copy whose swap crashed after `class 1` was moved into the new tree, the journal
    naming `journal`'s folders: (source, layout, the copy, the new tree)."""
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r1")
    clean = layout.clean_dir(T)
    tree = clean.parent / f".{T}.abcd1234.tmp"
    tree.mkdir()
    os.rename(
        os.path.join(os.fsencode(clean), b"class 1"), os.path.join(os.fsencode(tree), b"class 1")
    )
    (clean.parent / f".{T}.abcd1234.carry").write_bytes(journal)
    return source, layout, clean, tree


def test_a_crash_while_folders_move_is_put_right_by_the_next_sweep(tmp_path):
    """The journal a crash leaves beside the new tree names the folders moved into it: the
    sweep moves them back into the copy, then removes the tree and the journal."""
    source, layout, clean, tree = _stranded(tmp_path, b"class 1\0cl\xe9ss2")
    (tree / "class0").mkdir()
    (tree / "class0" / "half.png").write_bytes(b"half")
    done = sweep_interrupted(layout.root)
    assert any("moved 1 folder(s) back" in line for line in done), done
    _same_tree(clean, source)
    assert sorted(p.name for p in clean.parent.iterdir()) == [T]


def test_the_clean_copy_step_repairs_its_own_interrupted_swap_only(tmp_path):
    """A run from the UI does not sweep the output, so the clean copy step sweeps its own
    copy first (`sweep_interrupted_at`, under the copy's writer lock): its own threshold's
    stranded folders go back, another threshold's leftovers (that one may be running) stay;
    the lock makes a second writer of the same copy wait its turn."""
    source, layout, clean, _ = _stranded(tmp_path, b"class 1")
    other = clean.parent / ".0.97.efgh5678.tmp"
    other.mkdir()
    done = sweep_interrupted_at(clean)
    assert len(done) == 2 and "moved 1 folder(s) back" in done[0], done
    _same_tree(clean, source)
    assert sorted(p.name for p in clean.parent.iterdir()) == [other.name, T]
    assert sweep_interrupted_at(clean) == []
    assert sweep_interrupted_at(tmp_path / "nowhere" / T) == []
    lock = layout.writer_lock(f"clean-{T}")
    with writing(lock):  # another process must wait for it
        probe = subprocess.run(
            [sys.executable, "-c", TRY_LOCK, str(lock)], capture_output=True, text=True
        )
        assert probe.stdout.strip() == "held", probe.stderr
    probe = subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(lock)], capture_output=True, text=True
    )
    assert probe.stdout.strip() == "taken", probe.stderr  # and may take it after
    assert lock.parent != clean.parent  # not among the copies a user lists


# In another process: try the copy's writer lock without waiting.
TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("taken")
except BlockingIOError:
    print("held")
"""


@pytest.mark.parametrize("linked", ["class 1", "split"])
def test_a_folder_reached_through_a_link_is_never_moved(tmp_path, linked):
    """A folder of the copy that a user replaced by a symbolic link to the source's (or whose
    parent is one) is not moved into the new copy: the source keeps every file, and the new
    copy holds copies, none of them the source's files or links to them."""
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    (source / "split" / "a").mkdir(parents=True)
    for i in range(3):
        (source / "split" / "a" / f"x{i}.png").write_bytes(bytes([i]) * 80)
    _write(layout, source, "r1")
    clean = layout.clean_dir(T)
    shutil.rmtree(clean / linked)
    (clean / linked).symlink_to(source / linked, target_is_directory=True)
    before = _kept(source)
    movable = [b"class 1", b"class0/sub", b"cl\xe9ss2", b"split/a"]
    assert clean_dataset._reusable_folders(layout, T, before).carry == [
        f for f in movable if not f.startswith(linked.encode())
    ]
    _write(layout, source, "r2")
    assert _kept(source).equals(before)
    _same_tree(layout.clean_dir(T), source)
    assert not any(os.path.islink(p) for p, _, _ in os.walk(layout.clean_dir(T)))


def _change_class_1(source: Path) -> None:
    """class 1 gains a file, loses one and has one rewritten: 3 of its 5 files stay."""
    c1 = os.path.join(os.fsencode(source), b"class 1")
    with open(os.path.join(c1, b"new.png"), "wb") as fh:
        fh.write(b"new" * 40)
    os.unlink(os.path.join(c1, b"img4.png"))
    with open(os.path.join(c1, b"img3.png"), "wb") as fh:
        fh.write(b"rewritten" * 9)


def test_a_folder_that_changed_in_a_few_files_is_patched_in_place(tmp_path):
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r1")
    clean = layout.clean_dir(T)
    c1 = os.path.join(os.fsencode(clean), b"class 1")
    folder, kept_file = _inode(c1), _inode(os.path.join(c1, b"img0.png"))
    rewritten = _inode(os.path.join(c1, b"img3.png"))
    _change_class_1(source)
    reuse = clean_dataset._reusable_folders(layout, T, _kept(source))
    assert reuse.carry == [b"class0/sub", b"cl\xe9ss2"]
    assert reuse.patch == {b"class 1": [b"img3.png", b"img4.png"]}
    assert reuse.added == {b"class 1/img3.png", b"class 1/new.png"}
    # 5 moved in cl\xe9ss2, 1 in class0/sub, 3 kept in class 1, class0's 5 linked back.
    assert _write(layout, source, "r2") == 14
    assert _inode(c1) == folder and _inode(os.path.join(c1, b"img0.png")) == kept_file
    assert _inode(os.path.join(c1, b"img3.png")) != rewritten
    _same_tree(clean, source)
    assert sorted(p.name for p in clean.parent.iterdir()) == [T]  # no stage left beside it
    # More than half of a folder changed: made again, not patched.
    for i in range(3):
        (source / "class 1" / f"img{i}.png").write_bytes(bytes([9, i]) * 70)
    reuse = clean_dataset._reusable_folders(layout, T, _kept(source))
    assert b"class 1" not in reuse.patch and b"class 1" not in reuse.carry
    _write(layout, source, "r3")
    assert _inode(c1) != folder
    _same_tree(clean, source)


def test_a_folder_edited_in_the_copy_is_made_again_not_patched(tmp_path):
    """A file of the copy's folder edited by a user (or one added to it): the folder is not
    trusted for a patch either, and the new copy holds the source's bytes."""
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r1")
    clean = layout.clean_dir(T)
    c1 = os.path.join(os.fsencode(clean), b"class 1")
    edited = os.path.join(c1, b"img1.png")
    with open(edited, "r+b") as fh:
        fh.write(b"edited by a user")
    (clean / "cl\xe9ss2".encode("latin-1").decode("utf-8", "surrogateescape")).joinpath(
        "extra.png"
    ).write_bytes(b"not from the source")
    _change_class_1(source)
    (
        source / "cl\xe9ss2".encode("latin-1").decode("utf-8", "surrogateescape") / "more.png"
    ).write_bytes(b"more" * 20)
    reuse = clean_dataset._reusable_folders(layout, T, _kept(source))
    assert reuse.patch == {} and reuse.carry == [b"class0/sub"]
    _write(layout, source, "r2")
    _same_tree(clean, source)


def _snapshot(source: Path, to: Path) -> None:
    shutil.copytree(source, to, symlinks=True)


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("fail_at", range(7))
def test_an_interrupt_while_a_folder_is_patched_puts_it_back_as_it_was(
    tmp_path, monkeypatch, fail_at, after
):
    """Ctrl-C before or after any step of the swap: the moves of the folders, a file taken
    out of the patched folder, a file linked into it. The copy is the one before, whole,
    and nothing is left beside it."""
    from dedup_assets.core.data import atomic_io

    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r1")
    _snapshot(source, tmp_path / "r1")
    _change_class_1(source)
    real_rename, real_link, calls = os.rename, os.link, []

    def commit_step(real, a: bytes, b: bytes) -> bool:
        """A move of a folder out of the copy, or a step of its patch."""
        a, b = os.fsencode(a), os.fsencode(b)
        if real is real_link:
            return b".stage/add/" in a
        return (b"/clean/" + T.encode() + b"/" in a and b".tmp" in b) or b".stage/del/" in b

    def step(real):
        def wrapped(a, b):
            if commit_step(real, a, b):
                calls.append((a, b))
                if len(calls) == fail_at + 1:
                    if after:
                        real(a, b)
                    raise KeyboardInterrupt
            return real(a, b)

        return wrapped

    monkeypatch.setattr(atomic_io.os, "rename", step(real_rename))
    monkeypatch.setattr(atomic_io.os, "link", step(real_link))
    with pytest.raises(KeyboardInterrupt):
        _write(layout, source, "r2")
    monkeypatch.undo()
    assert len(calls) == fail_at + 1
    _same_tree(layout.clean_dir(T), tmp_path / "r1")
    assert json.loads(layout.clean_manifest(T).read_text())["run_id"] == "r1"
    assert sorted(p.name for p in layout.clean_dir(T).parent.iterdir()) == [T]
    _write(layout, source, "r2")  # and the next copy is made right
    _same_tree(layout.clean_dir(T), source)


def test_a_crash_in_a_patch_is_undone_by_the_next_sweep(tmp_path):
    """A crash after class 1 was moved into the new tree, one of its files taken out into the
    stage and a staged file linked in: the sweep undoes the patch, moves the folder back,
    and removes the tree, the stage and the journal."""
    source, layout, clean, tree = _stranded(tmp_path, b"class 1")
    stage = clean.parent / f".{T}.abcd1234.stage"
    c1 = os.path.join(os.fsencode(tree), b"class 1")
    taken = os.path.join(os.fsencode(stage), b"del", b"class 1")
    added = os.path.join(os.fsencode(stage), b"add", b"class 1")
    os.makedirs(taken)
    os.makedirs(added)
    os.rename(os.path.join(c1, b"img4.png"), os.path.join(taken, b"img4.png"))
    with open(os.path.join(added, b"new.png"), "wb") as fh:
        fh.write(b"new" * 40)
    os.link(os.path.join(added, b"new.png"), os.path.join(c1, b"new.png"))
    done = sweep_interrupted(layout.root)
    assert any("moved 1 folder(s) back" in line for line in done), done
    _same_tree(clean, source)
    assert sorted(p.name for p in clean.parent.iterdir()) == [T]
