"""One class's catalog (`core.data.class_catalog.update_class_catalog`): every file a row,
decoded or quarantined with its reason, the skipped entries and the files used with a note
in the quarantine rows, sorted by path; a catalog updated from the previous one (files
unchanged reused, new ones decoded) is the catalog made from scratch; 0, 1 and 2 files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from dedup_assets.core.data.class_catalog import (
    ROWS_DIGEST,
    pixels_digest,
    save_pixels,
    store_matches,
    update_class_catalog,
)
from dedup_assets.core.data.image_folder import pixel_hash, scan_class_folder

LIMIT = 2**28


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)


def _catalog(root: Path, previous=None, pixels=None, full: bool = False):
    scan = scan_class_folder(root, b"c")
    return update_class_catalog(root, scan, previous, pixels, max_file_bytes=LIMIT, full=full)


@pytest.mark.parametrize("good", [0, 1, 2])
def test_a_clean_class_has_no_quarantine_rows_and_rows_in_store_order(tmp_path, good):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(good):
        _png(folder / f"{i}.png", i)
    cat = _catalog(tmp_path)
    assert cat.table.height == good and cat.images == good
    assert cat.table["row"].to_list() == list(range(good))
    assert cat.pixels.shape == (good, 64, 64, 3)
    assert cat.quarantine.height == 0 and cat.quarantine.columns == [
        "path",
        "class",
        "action",
        "reason",
    ]


def test_every_entry_left_out_is_a_quarantine_row_sorted_by_path(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for name, seed in (("b.png", 1), ("d.png", 2)):
        _png(folder / name, seed)
    (folder / "a_broken.png").write_bytes(b"\x89PNG not really")
    (folder / "c_notes.txt").write_text("not an image")
    (folder / "e_empty.jpg").write_bytes(b"")
    cat = _catalog(tmp_path)
    q = cat.quarantine
    assert q["path"].to_list() == sorted(q["path"].to_list())
    assert set(q["path"]) >= {"c/a_broken.png", "c/c_notes.txt", "c/e_empty.jpg"}
    assert (q["reason"].str.len_chars() > 0).all()
    reasons = dict(zip(q["path"], q["reason"], strict=True))
    assert reasons["c/e_empty.jpg"] == "empty file (0 bytes)"
    assert reasons["c/a_broken.png"].startswith("not a readable image")
    assert cat.images == 2 and cat.table.filter(pl.col("status") == "ok")["row"].to_list() == [0, 1]


def test_an_updated_catalog_equals_one_made_from_scratch(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(3):
        _png(folder / f"{i}.png", i)
    (folder / "x_broken.png").write_bytes(b"nope")
    first = _catalog(tmp_path)
    _png(folder / "1a.png", 10)  # new, between the others in path order
    os.remove(folder / "2.png")
    updated = _catalog(tmp_path, first.table, first.pixels)
    scratch = _catalog(tmp_path, full=True)
    assert updated.reused == 2 and updated.decoded == 2  # 0.png, 1.png kept; 1a and the broken
    assert updated.table.equals(scratch.table)
    np.testing.assert_array_equal(updated.pixels, scratch.pixels)
    assert updated.quarantine.equals(scratch.quarantine)


@pytest.mark.parametrize("rows", [0, 1, 2])
def test_a_quarantine_file_is_what_polars_writes(tmp_path, rows):
    """The empty quarantine table is written as its header line without polars' writer: the
    same bytes, read back the same; tables with rows go through polars."""
    from dedup_assets.core.data.class_catalog import QUARANTINE_SCHEMA, write_quarantine

    table = pl.DataFrame(
        {
            "path": [f"a,b {i}.png" for i in range(rows)],
            "class": ["c"] * rows,
            "action": ["skipped"] * rows,
            "reason": ['bad "header"'] * rows,
        },
        schema=QUARANTINE_SCHEMA,
    )
    write_quarantine(table, tmp_path / "ours.csv")
    table.write_csv(tmp_path / "polars.csv")
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "polars.csv").read_bytes()
    back = pl.read_csv(tmp_path / "ours.csv", schema=QUARANTINE_SCHEMA)
    assert back.equals(table)


@pytest.mark.parametrize("with_rows", [(), (0,), (1, 3), (0, 1, 2, 3)])
def test_the_dataset_quarantine_list_is_every_part_s_rows(tmp_path, with_rows):
    """Parts without rows (header only) are skipped unread; the list is every other part's
    rows sorted by path, the same as reading them all; a missing part is no part."""
    from dedup_assets.core.data.class_catalog import (
        QUARANTINE_SCHEMA,
        assemble_quarantine,
        write_quarantine,
    )

    parts = [tmp_path / f"part{i}.csv" for i in range(4)]
    for i, p in enumerate(parts):
        rows = 2 if i in with_rows else 0
        write_quarantine(
            pl.DataFrame(
                {
                    "path": [f"c{i}/z{j}.png" if j else f"c{i}/a,{j}.png" for j in range(rows)],
                    "class": [f"c{i}"] * rows,
                    "action": ["skipped"] * rows,
                    "reason": ["corrupt"] * rows,
                },
                schema=QUARANTINE_SCHEMA,
            ),
            p,
        )
    missing = tmp_path / "gone.csv"
    got = assemble_quarantine(
        tmp_path / "all.csv", parts[0], [*parts[1:], missing], tmp_path / "lock"
    )
    expected = pl.concat([pl.read_csv(p, schema=QUARANTINE_SCHEMA) for p in parts]).sort("path")
    assert got.equals(expected) and got.height == 2 * len(with_rows)
    assert pl.read_csv(tmp_path / "all.csv", schema=QUARANTINE_SCHEMA).equals(expected)


@pytest.mark.parametrize("kind", ["none", "one", "two", "all broken", "mixed"])
def test_a_catalog_decoded_at_once_is_built_as_a_merged_one_is(tmp_path, kind):
    """A class decoded whole is built in one construction (`_decoded_table`); the builder
    of a catalog that reuses rows (`_merged_table`) makes the same table from the same rows:
    ids, rows (none for a quarantined file), split, names, paths, notes."""
    from dedup_assets.core.data.class_catalog import _DECODED_SCHEMA, _image_ids, _merged_table

    folder = tmp_path / "c"
    folder.mkdir()
    if kind in ("one", "two", "mixed"):
        for i in range(1 if kind == "one" else 2):
            _png(folder / f"{i} é,x.png", i)
    if kind in ("all broken", "mixed"):
        (folder / "a_broken.png").write_bytes(b"\x89PNG not really")
        (folder / "e_empty.jpg").write_bytes(b"")
    if kind == "mixed":
        frames = [Image.new("RGB", (20, 20), (40 * i, 0, 0)) for i in range(3)]
        frames[0].save(folder / "g.gif", save_all=True, append_images=frames[1:])  # a note
        _png(folder / "1.png", 0)  # a copy of 0's pixels
    scan = scan_class_folder(tmp_path, b"c")
    cat = update_class_catalog(tmp_path, scan, None, None, max_file_bytes=LIMIT)
    files = scan.files
    listing = pl.DataFrame(
        {"raw_path": [f.raw_path for f in files], "mtime": [f.mtime_ns for f in files]},
        schema={"raw_path": pl.Binary, "mtime": pl.Int64},
    )
    merged = cat.table.select([c for c in _DECODED_SCHEMA if c != "at"]).with_row_index("at")
    key, name = files[0].class_key if files else "c", files[0].class_name if files else "c"
    paths = [f.rel_path for f in files]
    ids = _image_ids(key, merged["content_hash"].to_list(), paths)
    again = _merged_table(key, name, paths, listing, merged, ids)
    assert cat.table.equals(again) and cat.table.schema == again.schema
    ok = cat.table["status"] == "ok"
    assert cat.table.filter(ok)["row"].to_list() == list(range(int(ok.sum())))
    assert cat.table.filter(~ok)["row"].null_count() == int((~ok).sum())
    if kind == "mixed":
        assert cat.table["note"].null_count() < cat.table.height


def test_the_content_digest_is_the_one_polars_sorting_made():
    """`class_content_digest` orders paths as polars does (code points: UTF-8 bytes), so
    every catalog written before keeps its digest (else every class would look changed)."""

    from dedup_assets.core.data.class_catalog import class_content_digest

    names = ["b.png", "B.png", "é.png", "e\u0301.png", "z/a.png", "ß", "\uffff", "😀.jpg", "a b"]
    rng = np.random.default_rng(0)
    for trial in range(20):
        order = rng.permutation(len(names))
        table = pl.DataFrame(
            {
                "image_id": [f"id{i}" for i in order],
                "pixel_hash": [f"px{i * 7 % 5}" for i in order],
                "path": [names[i] for i in order],
                "status": ["ok" if (i + trial) % 4 else "quarantined" for i in order],
            }
        )
        ok = table.filter(pl.col("status") == "ok").sort("path")
        h = hashlib.sha1()
        for image_id, px, path in ok.select("image_id", "pixel_hash", "path").iter_rows():
            h.update(f"{image_id}\0{px}\0{path}\n".encode())
        assert class_content_digest(table) == h.hexdigest()[:16]
    assert class_content_digest(table.clear()) == hashlib.sha1().hexdigest()[:16]


def _hashes(pixels: np.ndarray) -> list[str]:
    return [pixel_hash(row) for row in pixels]


@pytest.mark.parametrize("n", [0, 1, 2, 50])
def test_a_saved_store_s_digest_is_that_of_its_file(tmp_path, n):
    """`save_pixels` takes its digest from the rows' pixel hashes: the digest a reader
    computes from the file, row by row; another row, one row moved, one more or fewer,
    another type give another."""
    pixels = np.random.default_rng(n).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    store = tmp_path / "pixels.npy"
    digest = save_pixels(store, pixels, _hashes(pixels))
    assert digest.startswith(ROWS_DIGEST)
    assert pixels_digest(store, digest) == digest
    np.testing.assert_array_equal(np.load(store), pixels)
    others = [np.concatenate([pixels, pixels[:1]]) if n else pixels[:0].astype(np.uint16)]
    if n:
        changed = pixels.copy()
        changed[-1, 0, 0, 0] ^= 1
        others += [pixels[:-1], changed]
    if n > 1:
        others.append(pixels[::-1])
    for other in others:
        np.save(store, other)
        assert pixels_digest(store, digest) != digest
    # A store recorded before (the sha1 of its bytes) is checked as it was recorded.
    np.save(store, pixels)
    legacy = hashlib.sha1(store.read_bytes()).hexdigest()[:16]
    assert pixels_digest(store, legacy) == legacy
    assert store_matches(store, {"pixels_digest": legacy})


@pytest.mark.parametrize("broken", [(), (0,), (2,), (5,), (0, 1, 4), (0, 1, 2, 3, 4)])
@pytest.mark.parametrize("updated", [False, True])
def test_the_store_holds_the_readable_files_in_order_wherever_the_broken_ones_lie(
    tmp_path, broken, updated
):
    """The store is compacted to the readable files from the first that moves: its rows are
    those of a class holding the readable files alone, whichever positions the unreadable
    ones take (none, first, middle, last, most), decoded at once or reusing a catalog."""
    folder, alone = tmp_path / "c", tmp_path / "alone" / "c"
    folder.mkdir()
    alone.mkdir(parents=True)
    for i in range(6):
        if i in broken:
            (folder / f"{i}.png").write_bytes(b"\x89PNG not really")
        else:
            _png(folder / f"{i}.png", i)
            _png(alone / f"{i}.png", i)
    cat = _catalog(tmp_path)
    if updated:
        _png(folder / "6.png", 6)
        _png(alone / "6.png", 6)
        cat = _catalog(tmp_path, cat.table, cat.pixels)
    expected = _catalog(tmp_path / "alone")
    assert cat.images == expected.images == (6 + updated) - len(broken)
    np.testing.assert_array_equal(cat.pixels, expected.pixels)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 500])
@pytest.mark.parametrize("in_order", [True, False])
def test_store_pixel_hashes_are_the_stored_rows_hashes_in_store_order(n, in_order):
    """The hashes of the rows with a store row, ordered by it, as the frame query gives them
    (rows not stored and hashes missing among them), whatever the catalog's order."""
    from dedup_assets.core.data.class_catalog import store_pixel_hashes

    rng = np.random.default_rng(n + 7 * in_order)
    rows = np.arange(n) if in_order else rng.permutation(n)
    stored = rng.random(n) > 0.2
    table = pl.DataFrame(
        {
            "row": pl.Series(
                [int(r) if s else None for r, s in zip(rows, stored, strict=True)], dtype=pl.Int64
            ),
            "pixel_hash": pl.Series(
                [None if k % 5 == 3 else f"h{k}" for k in range(n)], dtype=pl.Utf8
            ),
        }
    )
    expected = table.filter(pl.col("row").is_not_null()).sort("row")["pixel_hash"].to_list()
    assert store_pixel_hashes(table) == expected
    assert len(expected) == int(stored.sum())


def test_image_ids_stay_with_the_files_that_had_them():
    """With the earlier catalog: unchanged files keep their ids whatever sorts first now,
    a new byte-identical copy takes a suffix no earlier file had (not a deleted file's,
    whose decision would follow), a rewritten file gets the id of its new bytes."""
    from dedup_assets.core.data.class_catalog import _image_ids

    paths = ["c/b.png", "c/c.png", "c/d.png"]
    raw = [p.encode() for p in paths]
    first = _image_ids("c", ["h1", "h1", "h2"], paths)
    earlier = pl.DataFrame(
        {"raw_path": raw, "content_hash": ["h1", "h1", "h2"], "image_id": first},
        schema={"raw_path": pl.Binary, "content_hash": pl.String, "image_id": pl.String},
    )
    # c/a.png: a new copy of h1 sorting first; c/c.png deleted; c/d.png rewritten to h3.
    now_paths = ["c/a.png", "c/b.png", "c/d.png"]
    now = _image_ids("c", ["h1", "h1", "h3"], now_paths, [p.encode() for p in now_paths], earlier)
    assert now[1] == first[0]  # b keeps the bare id it had
    assert now[0] not in first and now[0].startswith(first[0] + "-")  # not c's "-2"
    assert now[2] == _image_ids("c", ["h3"], ["c/d.png"])[0]
    assert len(set(now)) == 3
    assert _image_ids("c", ["h1", "h1", "h2"], paths, raw, earlier) == first


def test_an_exact_copy_group_keeps_the_file_not_a_link_to_it(tmp_path):
    """A symbolic link to an image of the class and the image itself are one exact-copy
    group. The link sorted first (`A_link.png`), took the bare id and was kept, the file
    was removed: a user deleting the removed files broke the link and lost the image. The
    file now takes the bare id (visited first, kept), whatever the names, and the link
    keeps its own id on later runs."""
    from dedup_assets.core.decision.class_decision import keep_decisions

    folder = tmp_path / "c"
    folder.mkdir()
    _png(folder / "Forest_1.png", 1)
    _png(folder / "other.png", 2)
    (folder / "A_link.png").symlink_to("Forest_1.png")
    cat = _catalog(tmp_path)
    table = cat.table.sort("path")
    ids = dict(zip(table["path"], table["image_id"], strict=True))
    assert ids["c/A_link.png"] == ids["c/Forest_1.png"] + "-2"
    ok = table.filter(pl.col("status") == "ok")
    order = np.argsort(ok["image_id"].to_numpy(), kind="stable")  # the `first` policy
    (d,) = keep_decisions(
        np.eye(len(ok), 4, dtype=np.float32), order, ok["pixel_hash"].to_numpy(), [0.95]
    )
    kept = dict(zip(ok["path"], d.kept, strict=True))
    assert kept["c/Forest_1.png"] and not kept["c/A_link.png"] and kept["c/other.png"]
    again = _catalog(tmp_path, cat.table, cat.pixels)  # ids stay with their files
    assert dict(zip(again.table["path"], again.table["image_id"], strict=True)) == ids
