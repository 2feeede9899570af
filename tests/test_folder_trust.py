"""`folder_trust`: a folder verified once is vouched for only while the kernel reports
nothing in it; and `dedup watch`'s clean copy uses it to move unchanged folders without
stat'ing their files, never to keep a folder that changed."""

import itertools
import os
import random
import shutil
import sys
from pathlib import Path

import pytest
from test_clean_copy_carry import _kept, _same_tree, _source, _write

from dedup_assets.assets import clean_dataset
from dedup_assets.core.data import folder_trust
from dedup_assets.core.data.folder_trust import REVERIFY_EVERY, FolderTrust, holds_exactly
from dedup_assets.core.data.layout import OutputLayout

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="change events: Linux inotify only"
)


def _expected(folder: Path) -> dict[bytes, tuple[int, int]]:
    out = {}
    for entry in os.scandir(os.fsencode(folder)):
        st = entry.stat(follow_symlinks=False)
        out[entry.name] = (st.st_size, st.st_mtime_ns)
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trust():
    made = FolderTrust.open()
    if made is None:
        pytest.skip("no inotify here")
    yield made
    made.close()


def _folder(root: Path, name: str = "f", files: int = 3) -> Path:
    folder = root / name
    folder.mkdir()
    for i in range(files):
        (folder / f"img{i}.png").write_bytes(bytes([i]) * (10 + i))
    return folder


def _trusted(trust: FolderTrust, folder: Path, key="k") -> bool:
    assert trust.verify(os.fsencode(folder), key, _expected(folder))
    trust.link_check()
    return trust.unchanged(os.fsencode(folder), key)


def test_holds_exactly_its_edges(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert holds_exactly(os.fsencode(empty), {}) == ([], [])
    assert holds_exactly(os.fsencode(empty), {b"a.png": (1, 1)}) is None  # one missing
    folder = _folder(tmp_path, files=2)
    want = _expected(folder)
    files, links = holds_exactly(os.fsencode(folder), want)
    assert len(files) == 2 and links == [1, 1]
    (folder / "extra.png").write_bytes(b"x")
    assert holds_exactly(os.fsencode(folder), want) is None  # one too many
    os.unlink(folder / "extra.png")
    (folder / "sub").mkdir()
    assert holds_exactly(os.fsencode(folder), want | {b"sub": (0, 0)}) is None  # not a file
    os.rmdir(folder / "sub")
    name, (size, mtime) = next(iter(want.items()))
    assert holds_exactly(os.fsencode(folder), want | {name: (size + 1, mtime)}) is None
    assert holds_exactly(os.fsencode(folder), want | {name: (size, mtime + 1)}) is None
    os.unlink(folder / os.fsdecode(name))
    os.symlink(folder / "img1.png", folder / os.fsdecode(name))
    assert holds_exactly(os.fsencode(folder), want) is None  # a link in a file's place
    assert holds_exactly(os.fsencode(tmp_path / "gone"), {}) is None


def _write_into(folder: Path) -> None:
    with open(folder / "img0.png", "ab") as fh:
        fh.write(b"!")


def _same_size_same_time(folder: Path) -> None:
    """An edit a stat cannot see: other bytes, the same size, the time set back."""
    path = folder / "img1.png"
    st = path.stat()
    path.write_bytes(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace_folder(folder: Path) -> None:
    other = folder.with_name("other")
    other.mkdir()
    for entry in folder.iterdir():
        (other / entry.name).write_bytes(entry.read_bytes())
        os.utime(other / entry.name, ns=(entry.stat().st_atime_ns, entry.stat().st_mtime_ns))
    os.rename(folder, folder.with_name("old"))
    os.rename(other, folder)


CHANGES = {
    "a file written": _write_into,
    "the same size and time, other bytes": _same_size_same_time,
    "a file added": lambda f: (f / "new.png").write_bytes(b"new"),
    "a hidden file added": lambda f: (f / ".hidden").write_bytes(b"h"),
    "a file removed": lambda f: os.unlink(f / "img2.png"),
    "a file renamed": lambda f: os.rename(f / "img2.png", f / "img9.png"),
    "a file's mode changed": lambda f: os.chmod(f / "img0.png", 0o600),
    "a file's time changed": lambda f: os.utime(f / "img0.png", ns=(1, 1)),
    "a subfolder made": lambda f: (f / "sub").mkdir(),
    "the folder replaced by a copy": _replace_folder,
    "the folder removed": lambda f: [os.unlink(p) for p in f.iterdir()] and os.rmdir(f),
}


@pytest.mark.parametrize("change", CHANGES)
def test_any_change_in_a_verified_folder_ends_its_trust(tmp_path, trust, change):
    folder = _folder(tmp_path)
    assert _trusted(trust, folder)
    assert trust.unchanged(os.fsencode(folder), "k")  # asked again, still
    CHANGES[change](folder)
    assert not trust.unchanged(os.fsencode(folder), "k")
    assert trust.due("k")


def test_reading_its_files_keeps_it_trusted_and_moving_it_does_not(tmp_path, trust):
    folder = _folder(tmp_path)
    assert _trusted(trust, folder)
    for p in folder.iterdir():
        p.read_bytes()
    os.stat(folder)
    assert trust.unchanged(os.fsencode(folder), "k")
    # Moved whole (as a clean copy's folder into the next copy): an event all the same;
    # the watch verifies it again after the update that moved it.
    moved = tmp_path / "moved"
    os.rename(folder, moved)
    assert not trust.unchanged(os.fsencode(moved), "k")
    assert not trust.unchanged(os.fsencode(folder), "k")


def test_only_the_key_it_was_verified_with_and_only_after_the_link_check(tmp_path, trust):
    folder = _folder(tmp_path)
    assert trust.verify(os.fsencode(folder), "k", _expected(folder))
    assert not trust.unchanged(os.fsencode(folder), "k")  # links not counted yet
    trust.link_check()
    assert trust.unchanged(os.fsencode(folder), "k")
    assert not trust.unchanged(os.fsencode(folder), "another key")
    trust.keep_only({"another key"})
    assert not trust.unchanged(os.fsencode(folder), "k")
    assert len(trust) == 0


def test_a_folder_that_does_not_hold_what_is_expected_is_not_recorded(tmp_path, trust):
    folder = _folder(tmp_path)
    want = _expected(folder)
    (folder / "extra.png").write_bytes(b"x")
    assert not trust.verify(os.fsencode(folder), "k", want)
    trust.link_check()
    assert not trust.unchanged(os.fsencode(folder), "k")
    assert len(trust) == 0


def test_a_file_linked_from_outside_is_never_trusted(tmp_path, trust):
    folder = _folder(tmp_path)
    os.link(folder / "img0.png", tmp_path / "elsewhere.png")
    assert trust.verify(os.fsencode(folder), "k", _expected(folder))  # it holds them ...
    trust.link_check()
    assert not trust.unchanged(os.fsencode(folder), "k")  # ... but a write may come unseen


def test_folders_sharing_files_are_trusted_together_and_dropped_together(tmp_path, trust):
    a, b = _folder(tmp_path, "a"), tmp_path / "b"
    b.mkdir()
    for p in a.iterdir():
        os.link(p, b / p.name)
    c = _folder(tmp_path, "c")
    for key, folder in (("a", a), ("b", b), ("c", c)):
        assert trust.verify(os.fsencode(folder), key, _expected(folder))
    trust.link_check()
    assert all(trust.unchanged(os.fsencode(f), k) for k, f in (("a", a), ("b", b), ("c", c)))
    _write_into(a)  # the file b holds too: written through a's name, no event in b
    assert not trust.unchanged(os.fsencode(b), "b")
    assert not trust.unchanged(os.fsencode(a), "a")
    assert trust.unchanged(os.fsencode(c), "c")  # nothing shared with c


def test_an_overflowed_event_queue_ends_all_trust(tmp_path, trust, monkeypatch):
    folder = _folder(tmp_path)
    assert _trusted(trust, folder)
    monkeypatch.setattr(trust._events, "read", lambda: None)
    assert not trust.unchanged(os.fsencode(folder), "k")
    assert len(trust) == 0


def test_a_filesystem_that_may_not_report_changes_is_never_trusted(tmp_path, trust, monkeypatch):
    folder = _folder(tmp_path)
    monkeypatch.setattr(trust._events, "trusted", lambda device: False)
    assert trust.verify(os.fsencode(folder), "k", _expected(folder))  # it holds them
    trust.link_check()
    assert not trust.unchanged(os.fsencode(folder), "k")


def test_a_record_is_due_after_reverify_every_and_untrusted_after_twice_that(tmp_path):
    clock = Clock()
    trust = FolderTrust.open()
    if trust is None:
        pytest.skip("no inotify here")
    trust._clock = clock
    try:
        folder = _folder(tmp_path)
        assert _trusted(trust, folder)
        clock.now += REVERIFY_EVERY - 1
        assert not trust.due("k") and trust.unchanged(os.fsencode(folder), "k")
        clock.now += 1
        assert trust.due("k") and trust.unchanged(os.fsencode(folder), "k")
        clock.now += REVERIFY_EVERY
        assert not trust.unchanged(os.fsencode(folder), "k")
    finally:
        trust.close()


def test_a_forked_process_never_uses_its_parents_trust(tmp_path, trust):
    folder = _folder(tmp_path)
    assert _trusted(trust, folder)
    folder_trust.install(trust)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no trust of its own, and the parent's never vouches
            answer = folder_trust.active() is None and not trust.unchanged(os.fsencode(folder), "k")
            os.write(write, b"1" if answer else b"0")
            os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.waitpid(pid, 0)
        assert folder_trust.active() is trust
        assert trust.unchanged(os.fsencode(folder), "k")
    finally:
        folder_trust.install(None)


# The clean copy with the watch's trust installed.


@pytest.fixture
def installed(trust):
    folder_trust.install(trust)
    yield trust
    folder_trust.install(None)


def test_trusted_folders_move_without_a_stat_of_their_files(tmp_path, installed, monkeypatch):
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r1")
    # class0 holds a subfolder: never moved whole, never verified; its leaf folder is.
    assert clean_dataset.trust_clean_copies(layout, installed) == 3
    checked = []
    real = clean_dataset.holds_exactly
    monkeypatch.setattr(
        clean_dataset, "holds_exactly", lambda f, e: checked.append(f) or real(f, e)
    )
    reuse = clean_dataset._reusable_folders(layout, "0.95", _kept(source))
    assert sorted(reuse.carry) == sorted([b"cl\xe9ss2", b"class 1", b"class0/sub"])
    assert checked == []
    assert installed.answered == 3
    # Nothing left to verify until something changes, or the manifest is another file.
    assert clean_dataset.trust_clean_copies(layout, installed) == 0
    _write(layout, source, "r2")
    assert clean_dataset.trust_clean_copies(layout, installed) == 3


@pytest.mark.parametrize("seed", range(3))
def test_the_copy_made_again_holds_the_source_whatever_was_done_to_it(tmp_path, installed, seed):
    """Over random sequences of edits to a clean copy (none, one or two a step, in any of
    its folders), each step's folders verified by the watch or not before the edits, the
    copy made again equals the source byte for byte: trust never keeps a folder that
    changed after it was verified. (Other bytes of the same size with the time set back
    are not undone, with or without the watch: the copy knows its files by size and time,
    and links an unchanged-looking file from its last copy.)"""
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r0")
    clean = layout.clean_dir("0.95")
    edits = {
        "write": _write_into,
        "time set back": lambda f: os.utime(f / "img0.png", ns=(1, 1)),
        "add": lambda f: (f / "added.png").write_bytes(b"added"),
        "remove": lambda f: os.unlink(sorted(f.glob("img*.png"))[-1]),
        "replace the folder": _replace_and_drop,
    }
    folders = ["class 1", os.fsdecode(b"cl\xe9ss2"), "class0/sub"]
    rng = random.Random(seed)
    trusted_moves = 0
    for run in range(10):
        if rng.random() < 0.7:
            clean_dataset.trust_clean_copies(layout, installed)
        names = sorted(edits)
        for _ in range(rng.choice([0, 1, 2])):
            folder = clean / rng.choice(folders)
            if any(folder.glob("img*.png")) or folder.name == "sub":
                name = rng.choice(names)
                if folder.name != "sub" or name in ("add", "replace the folder"):
                    edits[name](folder)
        before = installed.answered
        _write(layout, source, f"r{run + 1}")
        trusted_moves += installed.answered - before
        _same_tree(clean, source)
    assert trusted_moves > 0  # the sequences did move folders on trust


def _replace_and_drop(folder: Path) -> None:
    _replace_folder(folder)
    for p in folder.with_name("old").iterdir():
        p.unlink()
    folder.with_name("old").rmdir()


def test_an_edit_after_the_verification_is_undone_by_the_next_copy(tmp_path, installed):
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    clean = layout.clean_dir("0.95")
    _write(layout, source, "r1")
    clean_dataset.trust_clean_copies(layout, installed)
    _write_into(clean / "class 1")
    mark = clean_dataset._manifest_mark(clean)
    said = {
        f: installed.vouch(
            os.path.join(os.fsencode(clean), f), clean_dataset._trust_key(clean, mark, f)
        )
        for f in (b"class 1", b"cl\xe9ss2")
    }
    assert said == {b"class 1": False, b"cl\xe9ss2": True}
    _write(layout, source, "r2")
    _same_tree(clean, source)


def test_an_edit_a_stat_cannot_see_is_still_an_event(tmp_path, trust):
    folder = _folder(tmp_path)
    assert _trusted(trust, folder)
    _same_size_same_time(folder)
    assert trust.vouch(os.fsencode(folder), "k") is False
    assert trust.vouch(os.fsencode(folder), "never verified") is None


def test_without_the_watch_every_folder_is_checked_as_before(tmp_path, monkeypatch):
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    _write(layout, source, "r1")
    assert folder_trust.active() is None
    checked = []
    real = clean_dataset.holds_exactly
    monkeypatch.setattr(
        clean_dataset, "holds_exactly", lambda f, e: checked.append(f) or real(f, e)
    )
    reuse = clean_dataset._reusable_folders(layout, "0.95", _kept(source))
    assert len(reuse.carry) == len(checked) == 3


def test_thresholds_sharing_files_are_trusted_and_an_edit_in_one_undoes_both(tmp_path, installed):
    """Copies of two thresholds hold the same files through hard links: both are trusted,
    and an edit through one threshold's name is undone in both."""
    source, layout = tmp_path / "src", OutputLayout(tmp_path / "out")
    _source(source)
    kept, root = _kept(source), os.fsencode(source)
    pair = ["0.95", "0.97"]
    for t, run in itertools.product(pair, ["r1"]):
        clean_dataset.write_clean_copy(layout, t, pair, kept, root, "copy", "k", run)
    shared = layout.clean_dir("0.97") / "class 1" / "img0.png"
    assert shared.stat().st_nlink == 2
    assert clean_dataset.trust_clean_copies(layout, installed) == 6
    assert installed.unchanged(
        os.path.join(os.fsencode(layout.clean_dir("0.95")), b"class 1"),
        clean_dataset._trust_key(
            layout.clean_dir("0.95"),
            clean_dataset._manifest_mark(layout.clean_dir("0.95")),
            b"class 1",
        ),
    )
    _write_into(layout.clean_dir("0.97") / "class 1")  # through 0.97's name
    for t in pair:
        clean_dataset.write_clean_copy(layout, t, pair, kept, root, "copy", "k2", "r2")
        _same_tree(layout.clean_dir(t), source)


def test_pending_only_after_an_event_dropped_a_record(tmp_path, trust):
    """The watch checks again when `pending`: after an event in a trusted folder, not after
    a folder that failed its check (its watch removed: the kernel's IN_IGNORED for it made
    the watch check that folder again at every slice of its wait, 0.1 s apart)."""
    good, bad = _folder(tmp_path, "good"), _folder(tmp_path, "bad")
    want = _expected(bad)
    (bad / "extra.png").write_bytes(b"x")
    assert trust.verify(os.fsencode(good), "good", _expected(good))
    assert not trust.verify(os.fsencode(bad), "bad", want)
    trust.link_check()
    trust.refresh_done()
    for _ in range(3):
        assert not trust.pending()
        assert not trust.verify(os.fsencode(bad), "bad", want)  # failing again and again
        trust.refresh_done()
    _write_into(good)
    assert trust.pending()
    trust.refresh_done()
    assert not trust.pending()


def test_a_run_takes_the_folders_the_watch_vouches_for_and_never_an_edited_one(
    tmp_path, installed, monkeypatch, capsys
):
    """The wiring `dedup watch` relies on, in one process: after the watch's check of the
    clean copy (`trust_clean_copies`), a run's clean copy takes every class folder on the
    trust's word (`folders_known_unchanged`); a folder edited after the check is not, and
    comes out as the source has it."""
    import dagster as dg

    from dedup_assets.cli import main
    from dedup_assets.core.quality.demo_data import generate_demo_dataset
    from dedup_assets.runner import instance_for

    source, out = tmp_path / "src", tmp_path / "out"
    generate_demo_dataset(source, seed=3, per_class=8, duplicate_fraction=0.25)
    for extra in ("desert", "road", "urban"):
        shutil.rmtree(source / extra)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    fast = ["--epochs", "1", "--device", "cpu", "--precision", "fp32", "--thresholds", "0.95"]
    run = ["run", "--source", str(source), "--output", str(out), *fast]
    run += ["--executor", "in_process", "--retrain-error-factor", "100"]

    def trusted() -> int:
        with instance_for(out) as instance:
            made = instance.fetch_materializations(dg.AssetKey("clean_dataset"), limit=1)
        return made.records[0].asset_materialization.metadata["folders_known_unchanged"].value

    assert main(run) == 0, capsys.readouterr().out
    layout = OutputLayout(out)
    assert clean_dataset.trust_clean_copies(layout, installed) == 3
    first = sorted((source / "forest").glob("*.png"))[0]
    (source / "forest" / "zz new.png").write_bytes(first.read_bytes())
    assert main(run) == 0, capsys.readouterr().out
    assert trusted() == 3
    clean = layout.clean_dir("0.95")
    assert clean_dataset.trust_clean_copies(layout, installed) == 3  # a new manifest
    edited = sorted((clean / "water").glob("*.png"))[0]
    with open(edited, "ab") as fh:
        fh.write(b"edited")
    (source / "forest" / "zz new.png").unlink()
    assert main(run) == 0, capsys.readouterr().out
    assert trusted() == 2  # forest and farmland; water made again
    assert edited.read_bytes() == (source / "water" / edited.name).read_bytes()
