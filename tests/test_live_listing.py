"""The watch's live listing (`core.data.live_listing`) equals a full listing of the source
after every change of random sequences of them, and lists again only what changed."""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

import pytest

from dedup_assets.core.data import dir_events
from dedup_assets.core.data.dir_events import DirEvents, filesystem_types
from dedup_assets.core.data.image_folder import FolderScan, scan_image_folder
from dedup_assets.core.data.live_listing import LiveListing
from dedup_assets.core.data.run_fingerprint import _listing, file_lines
from dedup_assets.core.data.source_index import class_listings


def state(scan: FolderScan) -> tuple:
    """Everything a listing says, stat fields included (ImageFile compares without them)."""
    files = [
        (f.raw_path, f.size, f.mtime_ns, f.class_key, f.class_name, f.rel_path) for f in scan.files
    ]
    skipped = [(s.raw_path, s.path, s.class_name, s.reason, s.class_key) for s in scan.skipped]
    return files, skipped, scan.classes, scan.raw_classes


def live_or_skip(listing: LiveListing) -> None:
    if not listing.live:
        pytest.skip("no change events on this machine (inotify): every look is a full listing")
    st = os.stat(listing.root)
    if not listing._events.trusted(st.st_dev):
        pytest.skip("the test folder's filesystem is not trusted to report changes")


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_source(root: Path) -> Path:
    for c in ("a", "b", "ünï code", "d-e"):
        for i in range(3):
            write(root / c / f"{i}.png", bytes([i]) * (i + 1))
    write(root / "a" / "nested" / "deep" / "x.jpg", b"x")
    write(root / "ground_truth.csv", b"path\n")
    return root


OPS = (
    "add",
    "rewrite",
    "rewrite same size",
    "remove",
    "rename",
    "move between classes",
    "add nested",
    "remove nested folder",
    "move nested folder out",
    "move a folder in",
    "add class",
    "remove class",
    "rename class",
    "replace class",
    "hidden file",
    "text file",
    "file in root",
    "link to a file outside",
    "change a linked file's target",
    "broken link then its target",
    "hard link to a file outside",
    "write through the other hard link",
    "class linked elsewhere",
    "point the class link elsewhere",
    "touch",
)


def apply(op: str, root: Path, outside: Path, rng: random.Random, n: int) -> None:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        write(root / f"c{n}" / "0.png", b"0")
        return
    c = rng.choice(classes)
    images = sorted(p for p in c.rglob("*") if p.is_file() and not p.is_symlink())
    img = rng.choice(images) if images else None
    if op == "add":
        write(c / f"new {n}.png", os.urandom(rng.randint(1, 50)))
    elif op == "rewrite" and img:
        img.write_bytes(img.read_bytes() + b"!")
    elif op == "rewrite same size" and img:
        data = img.read_bytes()
        with open(img, "r+b") as fh:  # in place: same name, same size, new bytes
            fh.write(bytes([(data[0] + 1) % 256]) if data else b"")
    elif op == "remove" and img:
        img.unlink()
    elif op == "rename" and img:
        img.rename(img.with_name(f"renamed {n}.png"))
    elif op == "move between classes" and img:
        img.rename(rng.choice(classes) / f"moved {n}.png")
    elif op == "add nested":
        write(c / f"sub{n}" / "deeper" / "y.png", b"y")
    elif op == "remove nested folder":
        subs = [p for p in c.iterdir() if p.is_dir() and not p.is_symlink()]
        if subs:
            shutil.rmtree(rng.choice(subs))
    elif op == "move nested folder out":
        subs = [p for p in c.iterdir() if p.is_dir() and not p.is_symlink()]
        if subs:
            rng.choice(subs).rename(outside / f"moved out {n}")
    elif op == "move a folder in":
        write(outside / f"prepared {n}" / "inner" / "p.png", b"p" * n)
        (outside / f"prepared {n}").rename(c / f"moved in {n}")
    elif op == "add class":
        write(root / f"class {n}" / "z.png", b"z")
    elif op == "remove class":
        (c.unlink() if c.is_symlink() else shutil.rmtree(c))
    elif op == "rename class":
        c.rename(root / f"renamed class {n}")
    elif op == "replace class" and len(classes) > 1:
        other = rng.choice([x for x in classes if x != c])
        (c.unlink() if c.is_symlink() else shutil.rmtree(c))
        other.rename(c)  # the name stays, the folder behind it is another
    elif op == "hidden file":
        write(c / f".hidden{n}.png", b"h")
    elif op == "text file":
        write(c / f"notes {n}.txt", b"t")
    elif op == "file in root":
        write(root / f"stray {n}.png", b"s")
    elif op == "link to a file outside":
        write(outside / f"target{n}.png", b"t" * n)
        (c / f"link {n}.png").symlink_to(outside / f"target{n}.png")
    elif op == "change a linked file's target":
        targets = sorted(outside.glob("target*.png"))
        if targets:
            rng.choice(targets).write_bytes(os.urandom(rng.randint(1, 80)))
    elif op == "hard link to a file outside":
        write(outside / f"linked{n}.png", b"h" * n)
        os.link(outside / f"linked{n}.png", c / f"hard {n}.png")
    elif op == "write through the other hard link":
        others = sorted(outside.glob("linked*.png"))
        if others:  # in place: the class folder's name for it sees no event
            with open(rng.choice(others), "r+b") as fh:
                fh.write(os.urandom(rng.randint(1, 90)))
    elif op == "broken link then its target":
        (c / f"broken {n}.png").symlink_to(outside / f"later{n}.png")
        write(outside / f"later{n}.png", b"later")
    elif op == "class linked elsewhere":
        write(outside / f"folder{n}" / "f.png", b"f")
        (root / f"linked {n}").symlink_to(outside / f"folder{n}")
    elif op == "point the class link elsewhere":
        links = [p for p in classes if p.is_symlink()]
        if links:
            link = rng.choice(links)
            write(outside / f"other{n}" / "g.png", b"g" * n)
            link.unlink()
            link.symlink_to(outside / f"other{n}")
    elif op == "touch" and img:
        st = img.stat()
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_equals_a_full_listing_after_every_change(tmp_path, seed, hidden):
    root = make_source(tmp_path / "src")
    outside = tmp_path / "outside"
    outside.mkdir()
    rng = random.Random(seed)
    with LiveListing(root, include_hidden=hidden) as listing:
        assert state(listing.scan()) == state(scan_image_folder(root, include_hidden=hidden))
        for n in range(60):
            ops = [rng.choice(OPS) for _ in range(rng.randint(0, 2))]
            for op in ops:
                apply(op, root, outside, rng, n)
            live = listing.scan()
            full = scan_image_folder(root, include_hidden=hidden)
            assert state(live) == state(full), (seed, n, ops)
            # The digest lines it keeps per class folder are those of the files it returns,
            # and the listing digest from them that of a full listing.
            assert listing.lines == file_lines(live.files), (seed, n, ops)
            assert _listing(root, hidden, live, listing.lines) == _listing(root, hidden), ops
            # ... and each class's listing digest from its kept lines a full listing's.
            assert live.class_lines is not None
            assert class_listings(live) == class_listings(full), (seed, n, ops)


def test_lists_again_only_the_class_folders_that_changed(tmp_path):
    root = make_source(tmp_path / "src")
    with LiveListing(root) as listing:
        live_or_skip(listing)
        listing.scan()
        assert sorted(listing.listed) == sorted(
            os.fsencode(c) for c in ("a", "b", "ünï code", "d-e")
        )
        listing.scan()
        assert listing.listed == [] and not listing.pending()
        write(root / "b" / "new.png", b"n")
        assert listing.pending()
        listing.scan()
        # A file's events name it: it alone is looked at again, not its folder.
        assert listing.listed == [] and listing.inspected == [b"b/new.png"]
        write(root / "a" / "nested" / "deep" / "x.jpg", b"rewritten in a nested folder")
        listing.scan()
        assert listing.listed == [] and listing.inspected == [b"a/nested/deep/x.jpg"]
        (root / "a" / "nested" / "more").mkdir()  # a folder: its class folder listed again
        listing.scan()
        assert listing.listed == [b"a"]
        listing.scan(full=True)
        assert len(listing.listed) == 4


def test_a_class_folder_holding_a_link_is_listed_every_time(tmp_path):
    root = make_source(tmp_path / "src")
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"1")
    (root / "b" / "linked.png").symlink_to(target)
    with LiveListing(root) as listing:
        live_or_skip(listing)
        listing.scan()
        listing.scan()
        assert listing.listed == [b"b"]  # its target may change where nothing watches it
        target.write_bytes(b"longer now")
        files = {f.raw_path: f.size for f in listing.scan().files}
        assert files[b"b/linked.png"] == len(b"longer now")


def test_a_class_folder_holding_an_image_with_another_hard_link_is_listed_every_time(tmp_path):
    root = make_source(tmp_path / "src")
    other = tmp_path / "other name.png"
    other.write_bytes(b"1")
    os.link(other, root / "d-e" / "hard.png")
    with LiveListing(root) as listing:
        live_or_skip(listing)
        listing.scan()
        listing.scan()
        assert listing.listed == [b"d-e"]  # written through its other name: no event here
        with open(other, "r+b") as fh:
            fh.write(b"rewritten in place, longer")
        files = {f.raw_path: f.size for f in listing.scan().files}
        assert files[b"d-e/hard.png"] == len(b"rewritten in place, longer")


def test_without_change_events_every_look_is_a_full_listing(tmp_path):
    root = make_source(tmp_path / "src")
    with LiveListing(root, events=False) as listing:
        assert not listing.live and not listing.pending()
        for _ in range(2):
            assert state(listing.scan()) == state(scan_image_folder(root))
            assert len(listing.listed) == 4


def test_a_filesystem_not_trusted_to_report_changes_is_listed_every_time(tmp_path, monkeypatch):
    monkeypatch.setattr(DirEvents, "trusted", lambda self, device: False)
    root = make_source(tmp_path / "src")
    with LiveListing(root) as listing:
        listing.scan()
        listing.scan()
        assert len(listing.listed) == 4


def test_an_overflowed_event_queue_lists_everything(tmp_path, monkeypatch):
    root = make_source(tmp_path / "src")
    with LiveListing(root) as listing:
        live_or_skip(listing)
        listing.scan()
        monkeypatch.setattr(DirEvents, "read", lambda self: None)
        assert listing.pending()
        listing.scan()
        assert len(listing.listed) == 4
    events = DirEvents.open()
    assert events is not None
    overflow = struct.pack("=iIII", -1, dir_events.IN_Q_OVERFLOW, 0, 0)
    assert events.parse(overflow) is None
    events.close()


def test_a_scan_cut_short_lists_everything_the_next_time(tmp_path, monkeypatch):
    from dedup_assets.core.data import live_listing

    root = make_source(tmp_path / "src")
    with LiveListing(root) as listing:
        live_or_skip(listing)
        listing.scan()
        real = live_listing._top_entries
        monkeypatch.setattr(live_listing, "_top_entries", lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            listing.scan()
        monkeypatch.setattr(live_listing, "_top_entries", real)
        listing.scan()
        assert len(listing.listed) == 4


def test_edges_empty_one_two_and_identical(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    with LiveListing(root) as listing:
        assert state(listing.scan()) == state(scan_image_folder(root))  # no class folder
        write(root / "only" / "1.png", b"same")
        assert state(listing.scan()) == state(scan_image_folder(root))
        write(root / "only" / "2.png", b"same")
        write(root / "twin" / "1.png", b"same")
        assert state(listing.scan()) == state(scan_image_folder(root))
        assert len(listing.scan().files) == 3
        shutil.rmtree(root / "only")
        shutil.rmtree(root / "twin")
        assert listing.scan().files == []


def test_a_source_that_goes_away_says_so_and_the_listing_comes_back(tmp_path):
    root = make_source(tmp_path / "src")
    with LiveListing(root) as listing:
        listing.scan()
        root.rename(tmp_path / "moved")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            listing.scan()
        make_source(root)
        write(root / "b" / "back.png", b"back")
        assert state(listing.scan()) == state(scan_image_folder(root))


def test_filesystem_types_from_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw\n"
        "40 27 0:51 / /mnt/nfs rw,relatime shared:5 - nfs4 server:/x rw\n"
        "garbage line\n"
    )
    types = filesystem_types(str(info))
    assert types == {
        os.makedev(254, 0): "ext4",
        os.makedev(0, 27): "tmpfs",
        os.makedev(0, 51): "nfs4",
    }
    assert filesystem_types(str(tmp_path / "absent")) == {}
    assert "nfs4" not in dir_events.LOCAL_FILESYSTEMS and "ext4" in dir_events.LOCAL_FILESYSTEMS


def test_it_says_how_it_sees_changes(tmp_path, monkeypatch):
    root = make_source(tmp_path / "src")
    with LiveListing(root, events=False) as listing:
        listing.scan()
        assert listing.describe().startswith("change events: none here (no inotify)")
    with LiveListing(root) as listing:
        live_or_skip(listing)
        listing.scan()
        assert listing.describe() == "change events: 4 of 4 class folder(s) watched (inotify)"
        (root / "b" / "linked.png").symlink_to(root / "a" / "0.png")
        listing.scan()
        assert listing.describe().startswith(
            "change events: 3 of 4 class folder(s) watched (inotify); 1 listed in full at each look"
        )
