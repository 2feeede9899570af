"""Atomic writes: an interrupted write leaves the old file or folder, never half of a new one."""

import json
import os

import numpy as np
import polars as pl
import pytest

from dedup_assets.core.data.atomic_io import (
    atomic_dir,
    atomic_path,
    exchange_paths,
    save_npy,
    sweep_interrupted,
    write_many,
    write_parquet,
)


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"], "no temporary file left behind"
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_atomic_dir_swaps_whole_trees(tmp_path):
    target = tmp_path / "tree"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in target.rglob("*")] == ["sub", "old.txt"]
    assert sorted(os.listdir(tmp_path)) == ["tree"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.rglob("*")] == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["tree"]


def test_writers_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.load(save_npy(arr, tmp_path / "x.npy")), arr)
    df = pl.DataFrame({"a": [1, 2], "b": ["x", None]})
    assert pl.read_parquet(write_parquet(df, tmp_path / "d" / "x.parquet")).equals(df)


def test_folder_swap_is_one_atomic_exchange(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    assert exchange_paths(a, b)  # Linux has renameat2(RENAME_EXCHANGE)
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"
    target = tmp_path / "clean"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "clean"]


def test_sweep_restores_a_tree_stranded_between_two_renames(tmp_path):
    """Where the exchange is unavailable a swap takes two renames; a kill between them left
    `clean/<T>` missing. The next run's sweep puts the old tree back."""
    stranded = tmp_path / ".0.95.abcd1234.old" / "tree"
    stranded.mkdir(parents=True)
    (stranded / "img.png").write_bytes(b"kept image")
    (tmp_path / ".0.97.wxyz_678.tmp").mkdir()  # a half-built new tree
    (tmp_path / ".keep.parquet.0a1b2c3d.tmp").write_bytes(b"half a file")
    done = sweep_interrupted(tmp_path)
    assert (tmp_path / "0.95" / "img.png").read_bytes() == b"kept image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.95"]
    assert len(done) == 3 and any("restored" in line for line in done)
    assert sweep_interrupted(tmp_path) == []


def test_sweep_keeps_the_newer_tree_when_both_exist(tmp_path):
    (tmp_path / "0.95").mkdir()
    (tmp_path / "0.95" / "new").write_text("new")
    old = tmp_path / ".0.95.abcd1234.old" / "tree"
    old.mkdir(parents=True)
    sweep_interrupted(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.95"]
    assert (tmp_path / "0.95" / "new").read_text() == "new"


def test_a_class_being_written_elsewhere_is_not_a_catalogued_class(tmp_path):
    """Another worker's class in its temporary folder (`.<key>.<random>.tmp`) is not listed."""
    from dedup_assets.core.data.artifacts import catalogued_keys
    from dedup_assets.core.data.layout import OutputLayout

    layout = OutputLayout(tmp_path)
    for name in ("forest", ".urban.7wkdbuqw.tmp", ".urban.abcdefgh.old"):
        folder = layout.classes_dir / name
        folder.mkdir(parents=True)
        (folder / "images.parquet").write_bytes(b"")
    assert catalogued_keys(layout) == ["forest"]


def test_many_small_files_are_each_written_whole(tmp_path, monkeypatch):
    """`write_many` (the review page's thumbnails): every file in place with its bytes, in
    folders made as needed, rewritten whole; a write that fails midway leaves the file as it
    was and no temporary file; one a killed process left is one `sweep_interrupted` knows."""
    from dedup_assets.core.data import atomic_io

    files = [(f"{i % 3:02x}/f{i}.png", bytes([i]) * (i + 1)) for i in range(7)]
    assert write_many(files, tmp_path / "thumbs") == 7
    for name, data in files:
        assert (tmp_path / "thumbs" / name).read_bytes() == data
    assert write_many([], tmp_path / "thumbs") == 0
    assert write_many([("00/f0.png", b"new")], tmp_path / "thumbs") == 1
    assert (tmp_path / "thumbs" / "00" / "f0.png").read_bytes() == b"new"

    def broken(fd, data):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_io.os, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_many([("00/f0.png", b"half")], tmp_path / "thumbs")
    monkeypatch.undo()
    assert (tmp_path / "thumbs" / "00" / "f0.png").read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / "thumbs" / "00").iterdir()) == [
        "f0.png",
        "f3.png",
        "f6.png",
    ]
    killed = tmp_path / "thumbs" / "00" / f".f3.png.{os.getpid() % 10**8:08d}.tmp"
    killed.write_bytes(b"half")  # what a process killed between open and replace leaves
    swept = sweep_interrupted(tmp_path)
    assert len(swept) == 1 and not killed.exists()
    assert (tmp_path / "thumbs" / "00" / "f3.png").read_bytes() == bytes([3]) * 4


def _parquet_reads(monkeypatch) -> list:
    """The paths `artifacts` reads parquet from from now on, with nothing kept before."""
    from dedup_assets.core.data import artifacts

    artifacts.STORED_READS.clear()
    reads: list = []
    real = artifacts.pl.read_parquet
    monkeypatch.setattr(
        artifacts.pl, "read_parquet", lambda p, *a, **k: reads.append(p) or real(p, *a, **k)
    )
    return reads


def test_stored_tables_are_read_once_while_the_file_is_the_same(tmp_path, monkeypatch):
    """`read_latents` and `read_class_images` reuse a read while the file is the one read
    (inode, size, modification time); a file replaced whole, as every stored table is, is
    read again; a reused matrix cannot be written into; the kept reads stay under their cap."""
    from dedup_assets.core.data.artifacts import STORED_READS, read_latents, write_latents

    reads = _parquet_reads(monkeypatch)
    path = tmp_path / "latents" / "a.parquet"
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_latents(path, ["i0", "i1", "i2"], ["a/0.png", "a/1.png", "a/2.png"], x, {"m": 1})
    STORED_READS.clear()  # as in a process that did not write it
    first, again = read_latents(path), read_latents(path)
    assert len(reads) == 1 and again[1] is first[1] and np.array_equal(first[1], x)
    with pytest.raises(ValueError, match="read-only"):
        first[1][0, 0] = 7.0
    write_latents(path, ["i0"], ["a/0.png"], x[:1] + 1, {"m": 2})  # replaced whole
    STORED_READS.clear()
    table, y = read_latents(path)
    assert len(reads) == 2 and table["image_id"].to_list() == ["i0"] and y[0, 0] == 1.0
    monkeypatch.setattr(STORED_READS, "MAX_BYTES", 4 * y.nbytes + 4 * table.estimated_size())
    STORED_READS.clear()  # what was kept under the former cap
    for i in range(12):
        other = tmp_path / "latents" / f"b{i}.parquet"
        write_latents(other, ["i0"], ["a/0.png"], x[:1], {"m": i})
        read_latents(other)
    assert STORED_READS._bytes <= STORED_READS.MAX_BYTES
    STORED_READS.clear()


def test_stored_reads_keep_what_fits_when_the_classes_are_read_again_in_order(
    tmp_path, monkeypatch
):
    """Stages read every class in the same order, pass after pass: with room for k of n
    classes, the first k are kept and every later pass reads only the other n - k (a
    least-recently-used cache would read all n each pass); a file replaced whole lets its
    older read go, so the room is used again."""
    from dedup_assets.core.data.artifacts import STORED_READS, read_latents, write_latents

    reads = _parquet_reads(monkeypatch)
    x = np.arange(64, dtype=np.float32).reshape(4, 16)
    paths = [tmp_path / f"c{i}.parquet" for i in range(10)]
    for i, path in enumerate(paths):
        write_latents(path, [f"i{j}" for j in range(4)], [f"c{i}/{j}.png" for j in range(4)], x, {})
    STORED_READS.clear()  # read by a process that did not write them
    table, y = read_latents(paths[0])
    one = table.estimated_size() + y.nbytes
    STORED_READS.clear()
    reads.clear()
    monkeypatch.setattr(STORED_READS, "MAX_BYTES", 4 * one)  # room for 4 of 10
    for _ in range(3):
        for path in paths:
            read_latents(path)
    assert len(reads) == 10 + 2 * 6, len(reads)
    assert STORED_READS._bytes == 4 * one
    write_latents(paths[0], ["i0"], ["c0/0.png"], x[:1], {"v": 2})  # replaced whole
    table, y = read_latents(paths[0])
    assert table.height == 1 and STORED_READS._bytes == 3 * one + table.estimated_size() + y.nbytes
    read_latents(paths[0])
    assert len(reads) == 10 + 2 * 6  # written here: what it wrote, not read
    STORED_READS.clear()


def test_a_class_summary_is_read_once_while_its_catalog_is_the_same(tmp_path, monkeypatch):
    """`class_summary` reads a catalog's footer once while the file is the same, hands every
    caller a dict of its own, reads a catalog replaced whole again, and says None for a
    class never catalogued."""
    import json

    import polars as pl

    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import CLASS_SUMMARY_KEY, STORED_READS, class_summary
    from dedup_assets.core.data.atomic_io import atomic_path
    from dedup_assets.core.data.layout import OutputLayout

    STORED_READS.clear()
    layout = OutputLayout(tmp_path)
    reads = []
    real = artifacts.pl.read_parquet_metadata
    monkeypatch.setattr(artifacts.pl, "read_parquet_metadata", lambda p: reads.append(p) or real(p))

    def catalog(images: int) -> None:
        path = layout.class_images("cats")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            pl.DataFrame({"image_id": ["a"]}).write_parquet(
                tmp, metadata={CLASS_SUMMARY_KEY: json.dumps({"images": images})}
            )

    assert class_summary(layout, "cats") is None
    catalog(3)
    first = class_summary(layout, "cats")
    first["images"] = 99  # a caller's own dict
    assert class_summary(layout, "cats") == {"images": 3} and len(reads) == 1
    catalog(4)  # replaced whole
    assert class_summary(layout, "cats") == {"images": 4} and len(reads) == 2
    STORED_READS.clear()


def test_a_provenance_is_read_once_while_its_file_is_the_same(tmp_path, monkeypatch):
    """`read_provenance` of a parquet table and of an npz file: read once while the file is
    the same, again once it is replaced whole; every caller gets a dict of its own; a
    missing file is still an error."""
    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import STORED_READS, read_provenance, write_table
    from dedup_assets.core.data.atomic_io import save_npz

    STORED_READS.clear()
    reads = []
    real_meta, real_load = artifacts.pl.read_parquet_metadata, artifacts.np.load
    monkeypatch.setattr(
        artifacts.pl, "read_parquet_metadata", lambda p: reads.append(p) or real_meta(p)
    )
    monkeypatch.setattr(artifacts.np, "load", lambda p, **k: reads.append(p) or real_load(p, **k))
    table, fit = tmp_path / "t.parquet", tmp_path / "f.npz"
    write_table(pl.DataFrame({"a": [1]}), table, {"model": "m1"})
    save_npz(fit, x=np.zeros(2), **{artifacts.PROVENANCE_KEY: np.array('{"fit": 1}')})
    for _ in range(3):
        assert read_provenance(table) == {"model": "m1"} and read_provenance(fit) == {"fit": 1}
    read_provenance(table)["model"] = "changed"  # the caller's own dict
    # The table's record came from its writer in this process: only the npz was read.
    assert read_provenance(table) == {"model": "m1"} and reads == [fit]
    write_table(pl.DataFrame({"a": [2]}), table, {"model": "m2"})
    assert read_provenance(table) == {"model": "m2"} and reads == [fit]
    # Replaced by another writer (another process): read again.
    other = tmp_path / "other.parquet"
    meta = {artifacts.PROVENANCE_KEY: json.dumps({"model": "m3"})}
    pl.DataFrame({"a": [3]}).write_parquet(other, metadata=meta)
    os.replace(other, table)
    assert read_provenance(table) == {"model": "m3"} and reads == [fit, table]
    STORED_READS.clear()
    assert read_provenance(table) == {"model": "m3"} and len(reads) == 3
    with pytest.raises(FileNotFoundError):
        read_provenance(tmp_path / "gone.npz")
    STORED_READS.clear()


def test_a_fit_written_by_this_process_is_read_from_what_it_wrote(tmp_path, monkeypatch):
    """`write_class_density` hands its fit, provenance and component count to this
    process's later reads of the file (no read of the npz), each equal to what reading the
    file gives; a file replaced since (by anyone) is read again, as is one read by a process
    that did not write it (the stored reads cleared)."""
    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import STORED_READS, fit_components, read_provenance
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.density.class_density import (
        fit_class_density,
        read_class_density,
        write_class_density,
    )

    STORED_READS.clear()
    layout = OutputLayout(tmp_path)
    path = layout.spline_fit("c")
    x = np.random.default_rng(0).standard_normal((60, 32)).astype(np.float32)
    model = fit_class_density(x, 8)
    assert write_class_density(model, path, {"fit": "f1"}) == path and path.is_file()
    loads = []
    real_load = artifacts.np.load  # numpy's: the fit's own loader reads through it too
    monkeypatch.setattr(artifacts.np, "load", lambda p, **k: loads.append(p) or real_load(p, **k))
    assert read_class_density(path) is model
    assert read_provenance(path) == {"fit": "f1"}
    assert fit_components(layout, "c") == model.n_components == 8
    assert loads == []
    # What was handed over is what the file holds.
    STORED_READS.clear()
    again = read_class_density(path)
    assert again is not model and loads == [path]
    np.testing.assert_array_equal(again.pca.components, model.pca.components)
    np.testing.assert_array_equal(again.log_density(x), model.log_density(x))
    assert read_provenance(path) == {"fit": "f1"} and fit_components(layout, "c") == 8
    # Written here, then replaced by another writer: read again.
    write_class_density(model, path, {"fit": "f1"})
    other = fit_class_density(x[:40], 4)
    other.save(path, {"fit": "f2"})
    assert read_class_density(path) is not model
    assert read_class_density(path).n_components == 4 and fit_components(layout, "c") == 4
    assert read_provenance(path) == {"fit": "f2"}
    STORED_READS.clear()


@pytest.mark.parametrize("rows", [0, 1, 2, 20])
def test_latents_written_by_this_process_are_read_from_what_it_wrote(tmp_path, monkeypatch, rows):
    """`write_latents` hands its table and matrix to this process's later reads of the file
    (no read): equal to what reading the file gives (values, dtypes, columns), read-only,
    and the writer's own array stays its own; a file replaced since by another writer is
    read again, for 0, 1, 2 and 20 rows and odd ids and paths."""
    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import (
        STORED_READS,
        read_latent_ids,
        read_latents,
        write_latents,
    )

    reads = _parquet_reads(monkeypatch)
    path = tmp_path / "latents" / "a b [1].parquet"
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 1024))  # float64: stored as float32
    ids = [f"id é {i}" for i in range(rows)]
    paths = [f"cls/ä [{i}].png" for i in range(rows)]
    write_latents(path, ids, paths, x, {"model": "m1"})
    table, matrix = read_latents(path)
    assert reads == [] and read_latent_ids(path).equals(table)
    assert not matrix.flags.writeable and matrix.dtype == np.float32
    x[:] = 7.0  # the writer's array is its own
    fresh_table, fresh = artifacts._latents(path)
    assert len(reads) == 1
    assert table.equals(fresh_table) and table.schema == fresh_table.schema
    np.testing.assert_array_equal(matrix, fresh)
    assert matrix.shape == (rows, 1024) and table["image_id"].to_list() == ids
    # Replaced by another writer (another process): read again.
    other = tmp_path / "other.parquet"
    pl.DataFrame(
        {"image_id": ["z"], "path": ["z.png"], "latent": [[1.0] * 1024]},
        schema={"image_id": pl.String, "path": pl.String, "latent": pl.Array(pl.Float32, 1024)},
    ).write_parquet(other)
    os.replace(other, path)
    table, matrix = read_latents(path)
    assert table["image_id"].to_list() == ["z"] and matrix.shape == (1, 1024)
    assert len(reads) == 2
    STORED_READS.clear()


def test_a_catalog_written_by_this_process_is_read_from_what_it_wrote(tmp_path, monkeypatch):
    """A class's catalog written by the class_images asset (`written_catalog`) is handed to
    this process's later reads (`read_class_images`, `class_summary`, `read_decoded_images`)
    without a read, equal to what reading the file gives, for a class with an unreadable
    file and odd names, an empty class, and a class decoded again after a change."""
    from types import SimpleNamespace

    from PIL import Image

    from dedup_assets.assets.catalog import _decode_class
    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import (
        STORED_READS,
        class_summary,
        read_class_images,
        read_decoded_images,
    )
    from dedup_assets.core.data.layout import OutputLayout
    from resources import ImageSource

    source = tmp_path / "src [1]"
    for key, n in (("cats é", 3), ("empty", 0)):
        (source / key).mkdir(parents=True)
        for i in range(n):
            colour = (40 * i, 255 - 40 * i, 90)
            Image.new("RGB", (20, 12), colour).save(source / key / f"im {i} [x].png")
    (source / "cats é" / "broken.png").write_bytes(b"not a png")
    image_source = ImageSource(root=str(source))
    layout = OutputLayout(tmp_path / "out")
    context = SimpleNamespace(log=SimpleNamespace(warning=lambda _: None))
    reads = _parquet_reads(monkeypatch)
    metadata_reads: list = []
    real_meta = artifacts.pl.read_parquet_metadata
    monkeypatch.setattr(
        artifacts.pl,
        "read_parquet_metadata",
        lambda p, *a, **k: metadata_reads.append(p) or real_meta(p, *a, **k),
    )

    def decode(key: str) -> None:
        _decode_class(
            context,
            lambda _: None,
            layout,
            source,
            image_source.split_layout(),
            key,
            image_source,
            full=False,
        )

    _, listings = image_source.list_source()
    keys = {listing.name: key for key, listing in listings.items()}
    assert sorted(keys) == ["cats é", "empty"]
    for round_ in range(2):
        for key in (keys["cats é"], keys["empty"]):
            decode(key)  # a second round reads the class's earlier catalog to reuse it
            reads.clear()
            metadata_reads.clear()
            table, summary = read_class_images(layout, key), class_summary(layout, key)
            decoded = read_decoded_images(layout, key)
            assert reads == [] and metadata_reads == []
            STORED_READS.clear()  # what a process that did not write it reads
            assert read_class_images(layout, key).equals(table)
            assert read_class_images(layout, key).schema == table.schema
            assert class_summary(layout, key) == summary
            assert read_decoded_images(layout, key).equals(decoded)
            assert len(reads) == 1 and len(metadata_reads) == 1
            reads.clear()
            metadata_reads.clear()
        assert summary["images"] == 0 and table.height == 0
        # A catalog above the handover cap is read by the next reader (its summary kept).
        monkeypatch.setattr(artifacts, "HANDOVER_MAX_BYTES", 0)
        decode(keys["cats é"])
        reads.clear()
        metadata_reads.clear()
        read_class_images(layout, keys["cats é"])
        class_summary(layout, keys["cats é"])
        assert len(reads) == 1 and metadata_reads == []
        monkeypatch.setattr(artifacts, "HANDOVER_MAX_BYTES", 4 * 2**20)
        cats = read_class_images(layout, keys["cats é"])
        assert cats.height == 4 + round_ and (cats["status"] == "ok").sum() == 3 + round_
        reads.clear()
        metadata_reads.clear()
        STORED_READS.clear()
        Image.new("RGB", (9, 9), (1, 2, 3)).save(source / "cats é" / "new [y].png")
    STORED_READS.clear()


def test_latent_ids_come_from_the_latents_read_and_scores_are_read_once(tmp_path, monkeypatch):
    """`read_latent_ids` answers from the latents already read while their file is the same
    (no read at all), else reads the two columns once; `read_scores` reads each class's
    scores once while the file is the same and labels every row with its class, for 0, 1
    and 3 classes, an empty class among them."""
    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import (
        STORED_READS,
        read_latent_ids,
        read_latents,
        read_scores,
        write_latents,
        write_table,
    )
    from dedup_assets.core.data.layout import OutputLayout

    reads = _parquet_reads(monkeypatch)
    path = tmp_path / "latents" / "a.parquet"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    write_latents(path, ["i0", "i1"], ["a/0.png", "a/1.png"], x, {"m": 1})
    STORED_READS.clear()  # as in a process that did not write them
    ids = read_latent_ids(path)
    assert ids.columns == ["image_id", "path"] and ids["image_id"].to_list() == ["i0", "i1"]
    assert read_latent_ids(path).equals(ids) and len(reads) == 1  # the two columns, kept
    read_latents(path)
    assert len(reads) == 2 and read_latent_ids(path).equals(ids) and len(reads) == 2
    write_latents(path, ["i9"], ["a/9.png"], x[:1], {"m": 2})  # replaced whole, here
    assert read_latent_ids(path)["image_id"].to_list() == ["i9"] and len(reads) == 2
    STORED_READS.clear()
    assert read_latent_ids(path)["image_id"].to_list() == ["i9"] and len(reads) == 3

    layout = OutputLayout(tmp_path / "out")
    monkeypatch.setattr(artifacts, "class_labels", lambda _: {"k1": "one", "k2": "two", "k3": "3"})
    for key, n in (("k1", 2), ("k2", 0), ("k3", 3)):
        scores = pl.DataFrame(
            {"image_id": [f"{key}-{i}" for i in range(n)], "pc1": [float(i) for i in range(n)]},
            schema={"image_id": pl.String, "pc1": pl.Float64},
        )
        write_table(scores, layout.spline_scores(key), {"fit": key})
    reads.clear()
    assert read_scores(layout, []).height == 0
    for _ in range(2):
        got = read_scores(layout, ["k1", "k2", "k3"])
        assert got["class"].to_list() == ["one", "one", "3", "3", "3"]
        assert got["image_id"].to_list() == ["k1-0", "k1-1", "k3-0", "k3-1", "k3-2"]
        assert read_scores(layout, ["k2"]).schema["class"] == pl.String
    assert len(reads) == 3  # each class's file once over both passes
    STORED_READS.clear()


def test_the_class_table_is_read_again_only_when_a_catalog_changes(tmp_path, monkeypatch):
    """`read_classes` reuses its table while every class catalog is the file it read: a
    catalog replaced whole, a class added or removed, each gives the new table; a folder
    being written (`.<key>...tmp`) or without a catalog is no class; 0, 1 and 2 classes."""
    import json
    import shutil

    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import CLASS_SUMMARY_KEY, fit_components, read_classes
    from dedup_assets.core.data.layout import OutputLayout

    layout = OutputLayout(tmp_path / "out")
    assert read_classes(layout).height == 0  # no catalog folder yet
    layout.classes_dir.mkdir(parents=True)
    assert read_classes(layout).height == 0

    def catalog(key: str, images: int) -> None:
        layout.class_dir(key).mkdir(exist_ok=True)
        summary = {"class": f"name {key}", "images": images, "digest": f"d{images}"}
        tmp = layout.class_dir(key) / ".images.tmp"
        pl.DataFrame({"a": [1]}).write_parquet(
            tmp, metadata={CLASS_SUMMARY_KEY: json.dumps(summary)}
        )
        os.replace(tmp, layout.class_images(key))  # whole, as the pipeline writes it

    summaries = []
    real = artifacts.class_summary
    monkeypatch.setattr(
        artifacts, "class_summary", lambda lay, key: summaries.append(key) or real(lay, key)
    )
    catalog("k1", 3)
    (layout.classes_dir / ".k9.x1.tmp").mkdir()  # a class being written elsewhere
    (layout.classes_dir / "empty").mkdir()  # no catalog in it
    first = read_classes(layout)
    assert first["class_key"].to_list() == ["k1"] and first["images"].to_list() == [3]
    assert read_classes(layout) is first and summaries == ["k1"]
    catalog("k0", 5)
    assert read_classes(layout)["class_key"].to_list() == ["k0", "k1"]
    catalog("k1", 4)  # replaced whole: a new file
    assert read_classes(layout)["images"].to_list() == [5, 4]
    assert artifacts.class_digests(layout) == {"k0": "d5", "k1": "d4"}
    shutil.rmtree(layout.class_dir("k0"))
    assert read_classes(layout)["class_key"].to_list() == ["k1"]

    fit = layout.spline_fit("k1")
    fit.parent.mkdir(parents=True, exist_ok=True)
    np.savez(fit, pca_variances=np.ones(3))
    assert fit_components(layout, "k1") == 3
    np.savez(fit.with_suffix(".tmp.npz"), pca_variances=np.ones(2))
    os.replace(fit.with_suffix(".tmp.npz"), fit)
    assert fit_components(layout, "k1") == 2
    with pytest.raises(FileNotFoundError):
        fit_components(layout, "k0")


def test_a_class_s_decoded_images_are_filtered_once_while_its_catalog_is_the_same(tmp_path):
    """`read_decoded_images`: the decoded rows of one class's catalog in pixel-store order
    (as `catalog_images` gives them), the same table while the file is the same, the new
    rows once it is replaced whole; a class without a catalog is an error that names it."""
    from dedup_assets.core.data.artifacts import (
        STORED_READS,
        catalog_images,
        read_class_images,
        read_decoded_images,
        write_table,
    )
    from dedup_assets.core.data.class_catalog import CATALOG_SCHEMA
    from dedup_assets.core.data.layout import OutputLayout

    STORED_READS.clear()
    layout = OutputLayout(tmp_path)

    def catalog(statuses: list[str], store_rows: list[int | None]) -> None:
        n = len(statuses)
        rows = {name: [None] * n for name in CATALOG_SCHEMA}
        rows |= {
            "image_id": [f"i{j}" for j in range(n)],
            "class_key": ["k"] * n,
            "status": statuses,
            "row": store_rows,
        }
        write_table(pl.DataFrame(rows, schema=CATALOG_SCHEMA), layout.class_images("k"))

    catalog(["ok", "quarantined", "ok", "ok"], [2, None, 1, 0])
    decoded = read_decoded_images(layout, "k")
    assert decoded.equals(catalog_images(read_class_images(layout, "k"), "k"))
    assert decoded["row"].to_list() == [0, 1, 2] and decoded["status"].unique().to_list() == ["ok"]
    assert decoded["image_id"].to_list() == ["i3", "i2", "i0"]
    assert read_decoded_images(layout, "k") is decoded
    catalog(["ok", "ok"], [1, 0])
    assert read_decoded_images(layout, "k")["image_id"].to_list() == ["i1", "i0"]
    with pytest.raises(FileNotFoundError, match="catalog of class gone"):
        read_decoded_images(layout, "gone")
    STORED_READS.clear()


def test_a_folder_swapped_whole_is_swept_beside_not_walked(tmp_path):
    """`swapped_whole` (the clean copies): the leftovers of their own swaps beside them are
    swept, nothing inside a copy is looked at (a name there that looks like a leftover is a
    user's file of the copy), and every other folder is walked as before."""
    copies = tmp_path / "clean"
    (copies / "0.95" / "forest").mkdir(parents=True)
    inside = copies / "0.95" / "forest" / ".img.png.abcd1234.tmp"  # an odd image name
    inside.write_bytes(b"an image")
    (copies / ".0.97.wxyz_678.tmp").mkdir()  # a half-built copy
    (copies / "0.95" / ".STALE.txt.5e6f7a8b.tmp").write_text("half a note")  # at its top
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / ".report.md.0a1b2c3d.tmp").write_bytes(b"half a file")
    done = sweep_interrupted(tmp_path, swapped_whole=("clean",))
    assert len(done) == 3, done
    assert inside.read_bytes() == b"an image"
    assert sorted(p.name for p in copies.iterdir()) == ["0.95"]
    assert sorted(p.name for p in (copies / "0.95").iterdir()) == ["forest"]
    assert list((tmp_path / "reports").iterdir()) == []
    assert len(sweep_interrupted(tmp_path)) == 1  # walked: the name inside taken for one


@pytest.mark.parametrize("big", [False, True])
def test_savez_writes_what_np_savez_writes(tmp_path, big):
    """An archive np.load reads back array for array (names, dtypes, shapes, values; 0-d,
    strings, bytes, empty): a small one built in memory and handed to the file in one write
    with no seek (zipfile's seeks flushed the file's buffer at every member), a large one
    (over NPZ_IN_MEMORY) written by np.savez as it goes."""
    import io

    from dedup_assets.core.data.atomic_io import NPZ_IN_MEMORY, savez

    arrays = {
        "scalar": np.array(3.5),
        "text": np.array("ünï code"),
        "ids": np.array([b"a" * 16, b"b" * 16]),
        "empty": np.zeros((0, 4), np.float32),
        "matrix": np.arange(12, dtype=np.int64).reshape(3, 4),
    }
    if big:
        arrays["large"] = np.ones(NPZ_IN_MEMORY // 8 + 1, np.float64)

    class Counting(io.BytesIO):
        writes = seeks = 0

        def write(self, b):
            Counting.writes += 1
            return super().write(b)

        def seek(self, *a):
            Counting.seeks += 1
            return super().seek(*a)

    out = Counting()
    savez(out, **arrays)
    if not big:
        assert (Counting.writes, Counting.seeks) == (1, 0)
    else:
        assert Counting.writes > 1
    path = tmp_path / "a.npz"
    path.write_bytes(out.getvalue())
    reference = io.BytesIO()
    np.savez(reference, **arrays)
    with np.load(path) as got, np.load(io.BytesIO(reference.getvalue())) as expected:
        assert got.files == expected.files == list(arrays)
        for name in arrays:
            assert got[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(got[name], expected[name])
