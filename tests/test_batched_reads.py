"""A stage's read of every class's table in one polars read (`artifacts.read_tables`): the
same frame as the reads one by one, at 0 to many classes, in output folders and class keys
with odd names, and with files of an earlier version (other columns) upgraded as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import catalog_frame

from dedup_assets.core.data import artifacts
from dedup_assets.core.data.artifacts import (
    BATCHED_READ_MIN,
    STORED_READS,
    read_catalog,
    read_class_keep_lists,
    read_keep_list,
    read_scores,
    read_tables,
)
from dedup_assets.core.data.class_catalog import CATALOG_SCHEMA
from dedup_assets.core.data.layout import OutputLayout

# Keys as `image_folder.class_key` makes them ([A-Za-z0-9_%~-]) and a split's prefix.
KEYS = ["a", "B-2", "c_3", "%C3%A9t%C3%A9", "long~0123456789abcdef", "x%20y", "z%2E", "n9", "q"]
ROOTS = ["out", "out [1]", "o%41 #;'é", "*?"]


def _catalog(key: str, n: int, *, with_split: bool = True) -> pl.DataFrame:
    frame = catalog_frame(key, ["ok" if i % 3 else "quarantined" for i in range(n)], list(range(n)))
    return frame if with_split else frame.drop("split")


def _keep(key: str, n: int, *, old: bool = False) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "image_id": [f"{key}-{i:04d}" for i in range(n)],
            "split": ["all"] * n,
            "class": [key] * n,
            "path": [f"{key}/{i}.png" for i in range(n)],
            "kept": [i % 2 == 0 for i in range(n)],
            "duplicate_of": [None if i % 2 == 0 else f"{key}-{i - 1:04d}" for i in range(n)],
            "similarity": [1.0 if i % 4 == 1 else 0.97 for i in range(n)],
            "match": [
                None if i % 2 == 0 else ("exact" if i % 4 == 1 else "near") for i in range(n)
            ],
            "space": ["latent"] * n,
            "join": ["exact"] * n,
            "cosine": [0.95] * n,
            "calibrated_on": [None] * n,
            "decided_at": ["2026-12-05T00:00:00"] * n,
            "decided_in": ["run"] * n,
            "decided_by": [None if i % 2 == 0 else "model" for i in range(n)],
        },
        schema_overrides={
            "duplicate_of": pl.String,
            "match": pl.String,
            "calibrated_on": pl.String,
            "decided_by": pl.String,
        },
    )
    return frame.drop("calibrated_on", "decided_by") if old else frame


def _layout(tmp_path: Path, root: str) -> OutputLayout:
    STORED_READS.clear()
    return OutputLayout(tmp_path / root)


def _write(frame: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


@pytest.mark.parametrize("count", [0, 1, 2, BATCHED_READ_MIN - 1, BATCHED_READ_MIN, 9])
def test_read_tables_batches_from_its_minimum_and_keeps_order(tmp_path, count):
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"t{i}.parquet")
        _write(
            pl.DataFrame(
                {"a": list(range(i)), "b": [str(i)] * i}, schema={"a": pl.Int64, "b": pl.String}
            ),
            paths[-1],
        )
    together = read_tables(paths)
    if count < BATCHED_READ_MIN:
        assert together is None
        return
    one_by_one = pl.concat([pl.read_parquet(p) for p in paths], how="vertical_relaxed")
    assert together.equals(one_by_one)
    assert together["a"].to_list() == [a for i in range(count) for a in range(i)]


def test_read_tables_declines_files_whose_columns_differ(tmp_path):
    paths = [tmp_path / f"t{i}.parquet" for i in range(BATCHED_READ_MIN)]
    for i, p in enumerate(paths):
        _write(pl.DataFrame({"a": [i], "b": ["x"]}) if i else pl.DataFrame({"a": [i]}), p)
    assert read_tables(paths) is None
    _write(pl.DataFrame({"a": [0.5], "b": ["x"]}), paths[0])  # another type
    assert read_tables(paths) is None


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("classes", [0, 1, 2, len(KEYS)])
def test_catalog_read_together_equals_one_by_one(tmp_path, root, classes):
    layout = _layout(tmp_path, root)
    keys = sorted(KEYS[:classes])
    for i, key in enumerate(keys):
        _write(_catalog(key, i), layout.class_images(key))
    together = read_catalog(layout)
    one_by_one = pl.concat(
        [artifacts._class_images(layout.class_images(k), k) for k in keys]
        or [pl.DataFrame(schema=CATALOG_SCHEMA)],
        how="vertical_relaxed",
    )
    assert together.equals(one_by_one)
    assert together.schema == one_by_one.schema
    assert together.height == sum(range(classes))


@pytest.mark.parametrize("change", ["rewritten", "swapped", "added", "removed", "other keys"])
def test_a_catalog_read_is_kept_only_while_its_files_are_the_ones_read(tmp_path, change):
    """`read_catalog` keeps its last read of many classes for the next one, and reads again
    when any file is not the one read: rewritten in place (same size), its folder swapped,
    a class added or removed, or other classes asked for."""
    import os

    layout = _layout(tmp_path, "o%41 #;'é")
    keys = sorted(KEYS)
    for i, key in enumerate(keys):
        _write(_catalog(key, i + 1), layout.class_images(key))
    first = read_catalog(layout)
    assert read_catalog(layout) is first  # kept: the same files
    key = keys[3]
    if change == "rewritten":
        path = layout.class_images(key)
        _write(_catalog(key, 4).with_columns(pl.lit("moved").alias("note")), path)
        os.utime(path, ns=(1, 1))  # a time of its own, whatever the clock's grain
        wanted = keys
    elif change == "swapped":
        new = layout.class_images(key).parent.with_name(".tmp")
        _write(_catalog(key, 2), new / "images.parquet")
        os.replace(layout.class_images(key).parent, tmp_path / "old")
        os.replace(new, layout.class_images(key).parent)
        wanted = keys
    elif change == "added":
        _write(_catalog("zz", 2), layout.class_images("zz"))
        wanted = [*keys, "zz"]
    elif change == "removed":
        os.remove(layout.class_images(key))
        wanted = [k for k in keys if k != key]
    else:
        wanted = keys[1:]
    again = read_catalog(layout) if change != "other keys" else read_catalog(layout, wanted)
    assert again is not first
    one_by_one = pl.concat(
        [artifacts._class_images(layout.class_images(k), k) for k in wanted], how="vertical_relaxed"
    )
    assert again.equals(one_by_one)


def test_catalog_of_an_earlier_version_is_upgraded_whether_mixed_or_not(tmp_path):
    layout = _layout(tmp_path, "out [x]")
    keys = sorted(KEYS)
    for i, key in enumerate(keys):  # every other catalog without its split column
        _write(_catalog(key, 3, with_split=bool(i % 2)), layout.class_images(key))
    mixed = read_catalog(layout)
    assert mixed["split"].to_list() == ["all"] * 3 * len(keys)
    assert mixed.columns == list(CATALOG_SCHEMA)
    for key in keys:  # now none has one
        _write(_catalog(key, 3, with_split=False), layout.class_images(key))
    old = read_catalog(layout)
    assert old.equals(mixed)


def test_catalog_uses_this_process_reads_when_it_holds_them_all(tmp_path, monkeypatch):
    layout = _layout(tmp_path, "out")
    for key in KEYS:
        _write(_catalog(key, 4), layout.class_images(key))
    first = read_catalog(layout)
    for key in KEYS:
        artifacts.read_class_images(layout, key)  # every class read and kept
    calls = []
    monkeypatch.setattr(artifacts, "read_tables", lambda *a, **k: calls.append(a))
    assert read_catalog(layout).equals(first)
    assert calls == []


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("classes", [1, 2, BATCHED_READ_MIN, len(KEYS)])
def test_scores_read_together_carry_each_class_label(tmp_path, root, classes):
    layout = _layout(tmp_path, root)
    keys = sorted(KEYS[:classes])
    rng = np.random.default_rng(classes)
    for i, key in enumerate(keys):
        n = (i * 7) % 5  # classes of 0 to 4 rows
        _write(_catalog(key, n), layout.class_images(key))
        _write(
            pl.DataFrame(
                {
                    "image_id": [f"{key}-{j}" for j in range(n)],
                    "path": [f"{key}/{j}.png" for j in range(n)],
                    "log_density": rng.normal(size=n),
                    "pc1": rng.normal(size=n),
                    "pc2": rng.normal(size=n),
                    "pc3": rng.normal(size=n),
                },
                schema_overrides={"image_id": pl.String, "path": pl.String},
            ),
            layout.spline_scores(key),
        )
    scores = read_scores(layout, keys)
    assert scores.columns == ["image_id", "path", "log_density", "pc1", "pc2", "pc3", "class"]
    # No catalog: a class's label is its key; every row labelled with its own file's class.
    assert scores["class"].to_list() == [k for i, k in enumerate(keys) for _ in range((i * 7) % 5)]
    STORED_READS.clear()
    by_one = [read_scores(layout, [k]) for k in keys]
    assert scores.equals(pl.concat(by_one, how="vertical_relaxed"))


@pytest.mark.parametrize("old", ["none", "some", "all"])
def test_class_keep_lists_read_together_are_upgraded_as_one_by_one(tmp_path, old):
    layout = _layout(tmp_path, "o%41 #;'é")
    keys = sorted(KEYS)
    for i, key in enumerate(keys):
        is_old = old == "all" or (old == "some" and i % 3 == 0)
        _write(_keep(key, 5, old=is_old), layout.class_keep_list("1%", key))
    together = read_class_keep_lists(layout, "1%", keys)
    one_by_one = pl.concat(
        [read_keep_list(layout.class_keep_list("1%", k)) for k in keys], how="vertical_relaxed"
    )
    assert together.equals(one_by_one)
    assert together.columns == one_by_one.columns
    if old != "none":  # an old removal is decided by the model, or an exact copy's by exact
        assert set(together.filter(~pl.col("kept"))["decided_by"]) == {"exact", "model"}
    assert read_class_keep_lists(layout, "1%", []).height == 0


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("classes", [0, 1, 2, BATCHED_READ_MIN, len(KEYS)])
def test_latent_ids_read_together_with_each_class_size(tmp_path, root, classes):
    layout = _layout(tmp_path, root)
    keys = sorted(KEYS[:classes])
    rng = np.random.default_rng(classes)
    sizes = [(i * 5) % 4 for i in range(classes)]  # 0 to 3 rows, an empty class among them
    for key, n in zip(keys, sizes, strict=True):
        artifacts.write_latents(
            layout.latents(key),
            [f"{key}-{j}" for j in range(n)],
            [f"{key}/{j}.png" for j in range(n)],
            rng.normal(size=(n, 8)).astype(np.float32),
            {"class": key},
        )
    STORED_READS.clear()  # another process's files: none of them held
    ids, counts = artifacts.read_class_latent_ids(layout, keys)
    assert counts == sizes
    assert ids.columns == ["image_id", "path"]
    assert ids["image_id"].to_list() == [
        f"{k}-{j}" for k, n in zip(keys, sizes, strict=True) for j in range(n)
    ]
    for key in keys:  # this process's reads, held: the same answer without a read of all
        artifacts.read_latents(layout.latents(key))
    held, held_counts = artifacts.read_class_latent_ids(layout, keys)
    assert held.equals(ids) and held_counts == counts


@pytest.mark.parametrize("max_rows", [1, 3, 5, 100])
@pytest.mark.parametrize("classes", [0, 1, 2, len(KEYS)])
def test_latent_groups_are_each_class_matrix_in_order_within_the_row_cap(
    tmp_path, max_rows, classes
):
    layout = _layout(tmp_path, "out [1]")
    keys = sorted(KEYS[:classes])
    sizes = [(i * 5) % 4 + (i == 1) * 4 for i in range(classes)]  # 0 to 7 rows
    rng = np.random.default_rng(max_rows)
    made = {}
    for key, n in zip(keys, sizes, strict=True):
        made[key] = rng.normal(size=(n, 6)).astype(np.float32)
        artifacts.write_latents(
            layout.latents(key),
            [f"{key}-{j}" for j in range(n)],
            [f"{key}/{j}.png" for j in range(n)],
            made[key],
            {"class": key},
        )
    STORED_READS.clear()
    groups = list(artifacts.class_latent_groups(layout, keys, sizes, max_rows=max_rows))
    flat = [m for g in groups for m in g]
    assert len(flat) == len(keys)
    for key, m in zip(keys, flat, strict=True):
        assert m.dtype == np.float32 and np.array_equal(m, made[key])
        assert not m.flags.writeable
    for group in groups:  # within the cap, or one class bigger than it alone
        rows = sum(len(m) for m in group)
        assert rows <= max_rows or len(group) == 1
    if classes and max_rows >= sum(sizes):
        assert len(groups) == 1
    if not classes:
        assert groups == []


def test_every_polars_read_of_the_package_takes_its_path_literally():
    """polars globs a path by default: an output folder named `out [1]` matched nothing and
    the run failed at training. Every read and scan of a file in the package says
    glob=False (a call spanning lines is read to its closing parenthesis)."""
    import re

    package = Path(__file__).resolve().parents[1] / "dedup_assets"
    call = re.compile(r"pl\.(read_parquet|scan_parquet|read_csv|scan_csv|read_parquet_schema)\(")
    missing = []
    for source in sorted(package.rglob("*.py")):
        text = source.read_text()
        for match in call.finditer(text):
            depth, at = 1, match.end()
            while depth and at < len(text):
                depth += {"(": 1, ")": -1}.get(text[at], 0)
                at += 1
            if "glob=False" not in text[match.start() : at]:
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{source.relative_to(package.parent)}:{line}")
    assert not missing, "polars reads that glob their path: " + ", ".join(missing)


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("classes", [0, 1, BATCHED_READ_MIN - 1, BATCHED_READ_MIN, len(KEYS)])
def test_holding_a_ranges_catalogs_gives_what_reading_each_gives(tmp_path, root, classes):
    """`hold_class_images`: one read of the range's small catalogs, then each class's
    catalog and decoded images are what a read of its own file gives (quarantined rows,
    a class with none decoded, another class's stray row all as they would be)."""
    import json

    from dedup_assets.core.data.artifacts import (
        CLASS_SUMMARY_KEY,
        HELD_CLASS_IMAGES,
        catalog_images,
        hold_class_images,
        read_class_images,
        read_decoded_images,
    )

    layout = _layout(tmp_path, root)
    keys = sorted(KEYS[:classes])
    sizes = {k: i + 1 for i, k in enumerate(keys)}
    if keys:
        sizes[keys[-1]] = HELD_CLASS_IMAGES  # a big class: left to its own read
    for key in keys:
        frame = _catalog(key, min(sizes[key], 5))
        if key == keys[0]:  # a stray row of another class, as `catalog_images` filters it
            frame = pl.concat(
                [frame, _catalog("stray", 2).with_columns(pl.lit(3, pl.Int64).alias("row"))]
            )
        path = layout.class_images(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = json.dumps({"images": sizes[key]})
        frame.write_parquet(path, metadata={CLASS_SUMMARY_KEY: summary})
    expected = {
        k: (
            artifacts._class_images(layout.class_images(k), k),
            catalog_images(artifacts._class_images(layout.class_images(k), k), k),
        )
        for k in keys
    }
    STORED_READS.clear()
    small = [k for k in keys if sizes[k] < HELD_CLASS_IMAGES]
    held = hold_class_images(layout, [*keys, "not catalogued"])
    assert held == (len(small) if len(small) >= BATCHED_READ_MIN else 0)
    if held:  # nothing is read again
        for key in small:
            assert STORED_READS.peek(layout.class_images(key), f"decoded {key}") is not None
        assert STORED_READS.peek(layout.class_images(keys[-1]), f"decoded {keys[-1]}") is None
    for key in keys:
        table, decoded = read_class_images(layout, key), read_decoded_images(layout, key)
        assert table.equals(expected[key][0]) and table.schema == expected[key][0].schema
        assert decoded.equals(expected[key][1]) and decoded.schema == expected[key][1].schema
    # A catalog rewritten after the hold is read again.
    if held:
        key = small[0]
        fresh = _catalog(key, 2)
        fresh.write_parquet(layout.class_images(key))
        assert read_class_images(layout, key).equals(fresh)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 500])
@pytest.mark.parametrize("classes", [1, 2, 7, 60])
def test_column_by_class_equals_a_filter_per_class(n, classes):
    """Each class's values from one pass over a table sorted by class (`catalog_images`'s
    order), as a filter per class gives them, in the keys' order: classes with no row
    (empty), keys with odd names, classes of one row; a table out of class order refused."""
    from dedup_assets.core.data.artifacts import column_by_class

    rng = np.random.default_rng(n * 100 + classes)
    names = (KEYS * (classes // len(KEYS) + 1))[:classes]
    names = [f"{k}{i}" for i, k in enumerate(names)]
    table = pl.DataFrame(
        {
            "class_key": pl.Series(rng.choice(names, n) if n else [], dtype=pl.Utf8),
            "row": np.arange(n, dtype=np.int64),
            "pixel_hash": [f"h{i}" for i in rng.permutation(n)],
        }
    ).sort("class_key", "row")
    keys = [*rng.permutation(names).tolist(), "absent"]
    got = column_by_class(table, "pixel_hash", keys)
    assert len(got) == len(keys)
    for key, values in zip(keys, got, strict=True):
        expected = table.filter(pl.col("class_key") == key)["pixel_hash"].to_list()
        assert values.tolist() == expected
    assert sum(len(v) for v in got) == n
    split = pl.DataFrame({"class_key": ["a", "b", "a"], "pixel_hash": ["1", "2", "3"]})
    with pytest.raises(ValueError, match="sorted by class_key"):
        column_by_class(split, "pixel_hash", ["a", "b"])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [0, 1, 2, 20, 300])
def test_one_class_decoded_images_equal_the_query(seed, n):
    """A class catalog's decoded images in store order, as the filter and sort give them,
    whether the table is the usual one (every row decoded, in store order: given back as
    it is) or not (quarantined rows without a store row, rows out of order, another
    class's rows)."""
    from dedup_assets.core.data.artifacts import catalog_images

    rng = np.random.default_rng(seed * 1000 + n)
    kind = seed % 4  # 0: the usual; 1: some quarantined; 2: out of order; 3: another class
    status = ["ok"] * n
    row: list = list(range(n))
    keys = ["c%20x"] * n
    if kind == 1 and n:
        for i in rng.choice(n, max(1, n // 5), replace=False):
            status[i], row[i] = "unreadable", None
    if kind == 2 and n > 1:
        row = rng.permutation(n).tolist()
    if kind == 3 and n:
        keys[int(rng.integers(n))] = "other"
    table = pl.DataFrame(
        {
            "image_id": [f"i{i}" for i in range(n)],
            "class_key": pl.Series(keys, dtype=pl.Utf8),
            "status": pl.Series(status, dtype=pl.Utf8),
            "row": pl.Series(row, dtype=pl.Int64),
        }
    )
    expected = table.filter((pl.col("status") == "ok") & (pl.col("class_key") == "c%20x")).sort(
        "class_key", "row"
    )
    got = catalog_images(table, "c%20x")
    assert got.equals(expected)
    assert got["image_id"].to_list() == expected["image_id"].to_list()


@pytest.mark.parametrize("seed", range(6))
def test_a_value_by_file_equals_the_mapping_of_each_row(seed):
    """`by_file`: each row's value of its file from the file column's runs, as mapping each
    row gives, for 0 to 30 files of 0 to 6 rows (empty files among them) and odd paths."""
    rng = np.random.default_rng(seed)
    files = [
        f"{ROOTS[i % len(ROOTS)]}/c{i}/scores.parquet" for i in range(int(rng.integers(0, 31)))
    ]
    sizes = rng.integers(0, 7, len(files))
    column = [f for f, n in zip(files, sizes, strict=True) for _ in range(n)]
    frame = pl.DataFrame(
        {"__source": column, "x": np.arange(len(column))}, schema_overrides={"__source": pl.String}
    )
    values = {f: f"label {i} é" for i, f in enumerate(files)}
    got = artifacts.by_file(frame, "__source", values)
    assert got.tolist() == [values[f] for f in column]
