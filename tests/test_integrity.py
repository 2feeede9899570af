"""Tests for the data-quality rules on latents and keep lists
(dedup_assets.core.decision.integrity)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from dedup_assets.core.data.artifacts import KEEP_LIST_COLUMNS
from dedup_assets.core.decision.class_decision import keep_decisions
from dedup_assets.core.decision.integrity import keep_list_problems, latent_problems

T = 0.9
SCHEMA = {
    "image_id": pl.String,
    "split": pl.String,
    "class": pl.String,
    "path": pl.String,
    "kept": pl.Boolean,
    "duplicate_of": pl.String,
    "similarity": pl.Float32,
    "match": pl.String,
    "space": pl.String,
    "join": pl.String,
    "cosine": pl.Float64,
    "calibrated_on": pl.String,
    "decided_at": pl.String,
    "decided_in": pl.String,
    "decided_by": pl.String,
}

# image_id, class, kept, duplicate_of, similarity
ROWS = [
    ("a1", "A", True, None, None),
    ("a2", "A", False, "a1", 0.95),
    ("a3", "A", True, None, None),
    ("a4", "A", False, "a3", 0.99),
    ("b1", "B", True, None, None),
    ("b2", "B", False, "b1", 0.91),
    ("c1", "C", True, None, None),
]


def _keep(rows=ROWS) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "split": ["all"] * len(rows),
            "class": [r[1] for r in rows],
            "path": [f"{r[1]}/{r[0]}.png" for r in rows],
            "kept": [r[2] for r in rows],
            "duplicate_of": [r[3] for r in rows],
            "similarity": [r[4] for r in rows],
            "match": [None if r[2] else "near" for r in rows],
            "space": ["spline_copula"] * len(rows),
            "join": ["exact"] * len(rows),
            "cosine": [T] * len(rows),
            "calibrated_on": [None] * len(rows),
            "decided_at": ["2026-11-27T00:00:00+00:00"] * len(rows),
            "decided_in": ["run"] * len(rows),
            "decided_by": ["model"] * len(rows),
        },
        schema=SCHEMA,
    )


def _catalog(rows=ROWS) -> pl.DataFrame:
    return pl.DataFrame({"image_id": [r[0] for r in rows], "class": [r[1] for r in rows]})


def _edit(image_id: str, **changes) -> list[tuple]:
    out = []
    for r in ROWS:
        if r[0] == image_id:
            d = dict(
                zip(("image_id", "class", "kept", "duplicate_of", "similarity"), r, strict=True)
            )
            d.update(changes)
            r = tuple(d.values())
        out.append(r)
    return out


def _has(problems: list[str], *fragments: str) -> None:
    assert len(problems) == len(fragments), problems
    for frag in fragments:
        assert any(frag in p for p in problems), (frag, problems)


def test_unknown_join_is_a_problem():
    keep = _keep().with_columns(pl.Series("join", ["exact"] * 6 + ["lsh"]))
    assert any("join" in p and "lsh" in p for p in keep_list_problems(keep, _catalog(), None))


def test_valid_keep_list_has_no_problems():
    keep = _keep()
    assert tuple(keep.columns) == KEEP_LIST_COLUMNS
    assert keep_list_problems(keep, _catalog(), T) == []


def test_valid_keep_list_without_removals():
    rows = [(r[0], r[1], True, None, None) for r in ROWS]
    assert keep_list_problems(_keep(rows), _catalog(rows), T) == []


def test_class_emptied():
    rows = _edit("b1", kept=False, duplicate_of="b2", similarity=0.95)
    rows = [(*r[:2], False, "b1", 0.95) if r[0] == "b2" else r for r in rows]  # b1 -> b2, b2 -> b1
    _has(
        keep_list_problems(_keep(rows), _catalog(), T),
        "classes emptied by removal: ['B']",
        "2 removed images do not point to a kept image",
    )


def test_removed_points_to_removed_image():
    rows = _edit("a4", duplicate_of="a2")
    _has(keep_list_problems(_keep(rows), _catalog(), T), "1 removed images do not point")


def test_removed_points_to_other_class():
    rows = _edit("b2", duplicate_of="a1")
    _has(
        keep_list_problems(_keep(rows), _catalog(), T),
        "1 removed images point to a kept image of another class",
    )


def test_removed_points_to_missing_id():
    rows = _edit("a2", duplicate_of="zzz")
    _has(keep_list_problems(_keep(rows), _catalog(), T), "1 removed images do not point")


@pytest.mark.parametrize("sim", [0.9, 0.5, -0.2, None])
def test_removed_with_similarity_not_above_threshold(sim):
    rows = _edit("a2", similarity=sim)
    _has(
        keep_list_problems(_keep(rows), _catalog(), T),
        "1 removed images have similarity <= the cosine they were decided at",
    )


def test_similarity_just_above_threshold_in_float32_is_accepted():
    above = float(np.nextafter(np.float32(T), np.float32(1)))
    assert keep_list_problems(_keep(_edit("a2", similarity=above)), _catalog(), T) == []
    equal = float(np.float32(T))  # 0.899999976 <= 0.9
    _has(
        keep_list_problems(_keep(_edit("a2", similarity=equal)), _catalog(), T),
        "<= the cosine they were decided at",
    )


def test_a_budget_keep_list_is_checked_against_each_class_cosine():
    # A budget ("1%") resolves to one cosine per class: A at 0.94, B at 0.90.
    keep = _keep().with_columns(
        pl.when(pl.col("class") == "A").then(0.94).otherwise(0.90).alias("cosine")
    )
    assert keep_list_problems(keep, _catalog()) == []  # a2 0.95 > 0.94, b2 0.91 > 0.90
    low = keep.with_columns(
        pl.when(pl.col("image_id") == "a2")
        .then(0.93)
        .otherwise(pl.col("similarity"))
        .alias("similarity")
    )
    _has(keep_list_problems(low, _catalog()), "1 removed images have similarity <=")
    # Checked as a cosine key, rows decided at another cosine are a problem.
    _has(keep_list_problems(keep, _catalog(), T), "rows were decided at a cosine other than")


def test_missing_catalogued_image():
    # c1 is listed under another id: per-class counts add up, the ids do not
    rows = [r for r in ROWS if r[0] != "c1"] + [("c2", "C", True, None, None)]
    _has(
        keep_list_problems(_keep(rows), _catalog(), T),
        "1 catalogued images are missing from the keep list",
        "1 keep-list images are not in the catalog",
    )
    rows = [r for r in ROWS if r[0] != "a2"]
    _has(
        keep_list_problems(_keep(rows), _catalog(), T),
        "1 catalogued images are missing from the keep list",
        "per-class counts do not add up for ['A']",
    )


def test_extra_image_not_in_catalog():
    catalog = _catalog([r for r in ROWS if r[0] != "a4"])
    _has(
        keep_list_problems(_keep(), catalog, T),
        "1 keep-list images are not in the catalog",
        "per-class counts do not add up for ['A']",
    )


def test_duplicated_row():
    keep = pl.concat([_keep(), _keep().filter(pl.col("image_id") == "b2")])
    _has(
        keep_list_problems(keep, _catalog(), T),
        "1 image ids appear more than once",
        "per-class counts do not add up for ['B']",
    )


@pytest.mark.parametrize(("dup", "sim"), [("a3", None), (None, 0.95), ("a3", 0.95)])
def test_kept_image_with_duplicate_of(dup, sim):
    rows = _edit("a1", duplicate_of=dup, similarity=sim)
    _has(
        keep_list_problems(_keep(rows), _catalog(), T),
        "kept images must have empty duplicate_of and similarity",
    )


def test_missing_columns():
    problems = keep_list_problems(_keep().drop("similarity"), _catalog(), T)
    assert problems == ["keep list lacks columns ['similarity']"]


def test_every_defect_at_once_is_reported():
    rows = _edit("a2", duplicate_of="zzz", similarity=0.1)
    rows = [(*r[:3], "a3", 0.99) if r[0] == "c1" else r for r in rows]
    rows = [(r[0], "A", *r[2:]) if r[0] == "b2" else r for r in rows]  # b2 moved to class A
    _has(
        keep_list_problems(_keep(rows), _catalog(), T),
        "per-class counts do not add up for ['A', 'B']",
        "kept images must have empty duplicate_of",
        "1 removed images do not point",
        "1 removed images point to a kept image of another class",
        "1 removed images have similarity <= the cosine they were decided at",
    )


def _decided_keep_list(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep lists made by the pipeline's decision (exact copies first), and their catalog."""
    rng = np.random.default_rng(seed)
    frames, catalog = [], []
    for name in ("A", "B", "C"):
        c = rng.normal(size=(5, 12))
        x = c[rng.integers(0, 5, 60)] + 0.25 * rng.normal(size=(60, 12))
        hashes = np.array([f"h{name}{i}" for i in range(60)])
        copies = rng.choice(60, 10, replace=False)  # 10 exact copies of other images
        sources = rng.choice(np.setdiff1d(np.arange(60), copies), 10)
        x[copies], hashes[copies] = x[sources], hashes[sources]
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        ids = np.array([f"{name}{i:03d}" for i in range(60)])
        d = keep_decisions(x, rng.permutation(60), hashes, [T], block=7)[0]
        assert 0 < d.n_kept < 60 and d.exact.sum() > 0
        dup = np.where(d.duplicate_of >= 0, ids[np.maximum(d.duplicate_of, 0)], None)
        frames.append(
            pl.DataFrame(
                {
                    "image_id": ids.tolist(),
                    "split": ["all"] * 60,
                    "class": [name] * 60,
                    "path": [f"{name}/{i}.png" for i in ids],
                    "kept": d.kept.tolist(),
                    "duplicate_of": dup.tolist(),
                    "similarity": [None if np.isnan(v) else float(v) for v in d.similarity],
                    "match": np.where(d.kept, None, np.where(d.exact, "exact", "near")).tolist(),
                    "space": ["raw"] * 60,
                    "join": ["exact"] * 60,
                    "cosine": [T] * 60,
                    "calibrated_on": [None] * 60,
                    "decided_at": ["2026-11-27T00:00:00+00:00"] * 60,
                    "decided_in": ["run"] * 60,
                    "decided_by": np.where(d.exact, "exact", "model").tolist(),
                },
                schema=SCHEMA,
            )
        )
        catalog.append(
            pl.DataFrame(
                {"image_id": ids.tolist(), "class": [name] * 60, "pixel_hash": hashes.tolist()}
            )
        )
    return pl.concat(frames), pl.concat(catalog)


def test_decided_keep_list_passes_the_rules():
    keep, catalog = _decided_keep_list()
    assert keep_list_problems(keep, catalog, T) == []


def test_exact_copy_naming_a_different_image_is_a_problem():
    keep, catalog = _decided_keep_list()
    near = keep.filter(pl.col("match") == "near").row(0, named=True)
    broken = keep.with_columns(
        pl.when(pl.col("image_id") == near["image_id"])
        .then(pl.lit("exact"))
        .otherwise(pl.col("match"))
        .alias("match")
    )
    problems = keep_list_problems(broken, catalog, T)
    assert problems == [
        "1 images marked exact copies differ in pixels from the image they name or do not "
        "have similarity 1.0"
    ]


def _forced(rows, image_id: str, duplicate_of: str | None) -> pl.DataFrame:
    """The keep list with `image_id` removed by an override naming `duplicate_of`."""
    keep = _keep(rows)
    this = pl.col("image_id") == image_id
    return keep.with_columns(
        pl.when(this).then(False).otherwise(pl.col("kept")).alias("kept"),
        pl.when(this)
        .then(pl.lit(duplicate_of))
        .otherwise(pl.col("duplicate_of"))
        .alias("duplicate_of"),
        pl.when(this).then(None).otherwise(pl.col("similarity")).alias("similarity"),
        pl.when(this).then(pl.lit("override")).otherwise(pl.col("match")).alias("match"),
        pl.when(this).then(pl.lit("override")).otherwise(pl.col("decided_by")).alias("decided_by"),
    )


def test_a_removal_by_override_needs_no_similarity_and_may_name_nothing():
    rows = [r for r in ROWS if r[0] != "a4"] + [("a4", "A", True, None, None)]
    assert keep_list_problems(_forced(rows, "a4", None), _catalog(), T) == []
    assert keep_list_problems(_forced(rows, "a4", "a1"), _catalog(), T) == []


def test_a_removal_by_override_must_name_a_kept_image_of_its_class():
    rows = [r for r in ROWS if r[0] != "a4"] + [("a4", "A", True, None, None)]
    _has(
        keep_list_problems(_forced(rows, "a4", "a2"), _catalog(), T),
        "1 removed images do not point to a kept image",
    )
    _has(
        keep_list_problems(_forced(rows, "a4", "b1"), _catalog(), T),
        "1 removed images point to a kept image of another class",
    )


def test_override_rows_must_say_so_and_decided_by_must_be_known():
    keep = _forced(ROWS, "c1", None).with_columns(
        pl.when(pl.col("image_id") == "c1")
        .then(pl.lit("model"))
        .otherwise(pl.col("decided_by"))
        .alias("decided_by")
    )
    problems = keep_list_problems(keep, _catalog(), T)
    assert "1 removals by override are not decided_by override" in problems
    unknown = _keep().with_columns(pl.lit("user").alias("decided_by"))
    _has(keep_list_problems(unknown, _catalog(), T), "rows without a known decided_by")


def test_a_class_emptied_by_overrides_alone_is_the_users_choice():
    assert keep_list_problems(_forced(ROWS, "c1", None), _catalog(), T) == []
    model = _keep(_edit("c1", kept=False, duplicate_of="c1", similarity=0.99))
    assert any("emptied" in p for p in keep_list_problems(model, _catalog(), T))


IDS = ["x1", "x2", "x3", "x4"]


def _latents(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)


def test_latents_valid():
    assert latent_problems(IDS, _latents(), IDS) == []
    assert latent_problems(IDS[::-1], _latents(), IDS) == []


def test_latents_non_finite_rows():
    z = _latents()
    z[1, 3] = np.nan
    z[2, 0] = np.inf
    z[2, 5] = -np.inf
    _has(latent_problems(IDS, z, IDS), "2 latent vectors contain NaN or infinite values")


def test_latents_missing_and_extra_ids():
    _has(
        latent_problems(["x1", "x2", "x3", "y9"], _latents(), IDS),
        "1 catalogued images have no latent (e.g. x4)",
        "1 latents belong to no catalogued image (e.g. y9)",
    )
    _has(latent_problems(IDS[:3], _latents(3), IDS), "1 catalogued images have no latent (e.g. x4)")


def test_latents_duplicated_ids():
    _has(
        latent_problems(["x1", "x2", "x2", "x3", "x4"], _latents(5), IDS),
        "1 duplicated image ids",
    )


def test_latents_shape_mismatch():
    problems = latent_problems(IDS, _latents(3), IDS)
    assert any("does not match 4 ids" in p for p in problems)
    problems = latent_problems(IDS, np.zeros(4, np.float32), IDS)
    assert any("does not match" in p for p in problems)
