"""The keep list files name the kept image a removed one duplicates by its path relative
to the source (`duplicate_of_path`), beside its image id, and stay valid keep lists."""

import polars as pl
import pytest

from dedup_assets.core.data.artifacts import KEEP_LIST_COLUMNS
from dedup_assets.core.decision.class_keep_lists import DUPLICATE_OF_PATH, with_duplicate_paths
from dedup_assets.core.decision.integrity import keep_list_problems


def _keep() -> pl.DataFrame:
    """Two classes: the removed images name a kept image of their own class (one in a
    folder with a space in its name), one removal by override names none."""
    rows = [
        # image_id, class, path, kept, duplicate_of, similarity, match, decided_by
        ("s", "a", "a/shared.png", True, None, None, None, "model"),
        ("a2", "a", "a/sub dir/copy of shared.png", False, "s", 0.97, "near", "model"),
        ("a3", "a", "a/x.png", False, None, None, "override", "override"),
        ("s2", "b", "b/shared.png", True, None, None, None, "model"),
        ("b2", "b", "b/y.png", False, "s2", 1.0, "exact", "exact"),
    ]
    names = ("image_id", "class", "path", "kept", "duplicate_of", "similarity", "match")
    keep = pl.DataFrame([r[:7] for r in rows], schema=list(names), orient="row")
    return keep.with_columns(
        pl.lit("all").alias("split"),
        pl.lit("raw").alias("space"),
        pl.lit("exact").alias("join"),
        pl.lit(0.95).alias("cosine"),
        pl.lit(None, pl.String).alias("calibrated_on"),
        pl.lit("2026-12-03T00:00:00+00:00").alias("decided_at"),
        pl.lit("run").alias("decided_in"),
        pl.Series("decided_by", [r[7] for r in rows]),
    ).select(KEEP_LIST_COLUMNS)


def test_each_removed_image_names_its_kept_image_by_path():
    keep = with_duplicate_paths(_keep())
    assert keep.columns == [*KEEP_LIST_COLUMNS, DUPLICATE_OF_PATH]
    assert keep[DUPLICATE_OF_PATH].to_list() == [
        None,
        "a/shared.png",
        None,  # removed by override, naming no image
        None,
        "b/shared.png",
    ]
    # the table is otherwise unchanged, row for row
    assert keep.select(KEEP_LIST_COLUMNS).equals(_keep())


def test_the_integrity_check_accepts_it_and_it_is_idempotent():
    keep = with_duplicate_paths(_keep())
    catalog = keep.select("image_id", "class")
    assert keep_list_problems(keep, catalog, None) == []
    assert with_duplicate_paths(keep).equals(keep)


def test_an_id_twice_in_a_class_is_refused():
    keep = _keep()
    twice = pl.concat([keep, keep.filter(pl.col("image_id") == "s")])
    with pytest.raises(ValueError, match="twice in one class"):
        with_duplicate_paths(twice)
