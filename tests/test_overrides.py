"""A user's corrections (dedup_assets.core.decision.overrides): the file read and refused
with its line, the decision honouring every override consistently (properties over small
synthetic classes with planted near-duplicates and exact copies), and a class's keep
provenance changing exactly when its own overrides change."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from dedup_assets.core.data.artifacts import (
    CLASS_SUMMARY_KEY,
    KEEP_LIST_COLUMNS,
    CurrentInputs,
    keep_provenance,
    stale_classes,
    write_table,
)
from dedup_assets.core.data.atomic_io import PROVENANCE_KEY
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.decision.class_decision import Corrections, PriorDecision, keep_decisions
from dedup_assets.core.decision.class_keep_lists import _who_decided, prior_decisions
from dedup_assets.core.decision.integrity import keep_list_problems
from dedup_assets.core.decision.overrides import (
    OVERRIDES_FILE,
    ClassOverrides,
    OverridesError,
    check_known,
    check_known_in,
    load_known_overrides,
    overrides_path,
    read_overrides,
)

HEADER = "path,decision,other\n"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for name in ("cats/img 1.png", "cats/a,b.png", 'cats/say "hi".png', "cats/c.png", "dogs/d.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def _write(tmp_path: Path, text: str | bytes, name: str = "o.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _refused(path: Path, root: Path, line: int, fragment: str) -> None:
    with pytest.raises(OverridesError) as caught:
        read_overrides(path, root)
    message = str(caught.value)
    assert message.startswith(f"{path}, line {line}: "), message
    assert fragment in message, message
    assert "\n" not in message


# ---------------------------------------------------------------------------- the file


def test_a_good_file_reads_with_its_lines(tmp_path, source):
    text = (
        "\ufeffpath,decision,other\r\n"
        "cats/img 1.png,keep,\r\n"
        '"cats/a,b.png",remove,\r\n'
        "\r\n"
        '"cats/say ""hi"".png",not_duplicate,cats/c.png\r\n'
        "cats/img 1.png,keep,\r\n"  # the same line twice is fine
        "cats/c.png,not_duplicate,dogs/d.png\r\n"
    )
    o = read_overrides(_write(tmp_path, text), source)
    assert [(r.line, r.path, r.decision, r.other) for r in o.rows] == [
        (2, "cats/img 1.png", "keep", ""),
        (3, "cats/a,b.png", "remove", ""),
        (5, 'cats/say "hi".png', "not_duplicate", "cats/c.png"),
        (6, "cats/img 1.png", "keep", ""),
        (7, "cats/c.png", "not_duplicate", "dogs/d.png"),
    ]


def test_a_record_spanning_lines_is_reported_at_its_first_line(tmp_path, source):
    text = HEADER + '"cats/two\nlines.png",keep,\ncats/c.png,drop,\n'
    _refused(_write(tmp_path, text), source, 4, "unknown decision 'drop'")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "empty"),
        ("path,decision\ncats/c.png,keep\n", 1, "must be exactly path,decision,other"),
        ("path,decision,other,note\n", 1, "must be exactly path,decision,other"),
        ("Path,Decision,Other\n", 1, "must be exactly"),
        (HEADER + "cats/c.png,keep\n", 2, "2 fields, expected 3"),
        (HEADER + "cats/c.png,keep,,x\n", 2, "4 fields, expected 3"),
        (HEADER + "cats/c.png,keep,\ncats/c.png,delete,\n", 3, "unknown decision 'delete'"),
        (HEADER + "cats/c.png,not_duplicate,\n", 2, "needs the pair's other image"),
        (HEADER + "cats/c.png,keep,cats/img 1.png\n", 2, "'other' is only for not_duplicate"),
        (HEADER + "cats/c.png,not_duplicate,cats/c.png\n", 2, "not a duplicate of itself"),
        (HEADER + ",keep,\n", 2, "no path"),
        (HEADER + "../x.png,keep,\n", 2, "holds '..'"),
        (HEADER + "cats/../../x.png,remove,\n", 2, "holds '..'"),
        (HEADER + "/etc/passwd,remove,\n", 2, "is absolute"),
        (HEADER + "cats/c.png,not_duplicate,/etc/passwd\n", 2, "is absolute"),
        (HEADER + "cats//c.png,keep,\n", 2, "empty part"),
        (HEADER + "./cats/c.png,keep,\n", 2, "'.'"),
        (HEADER + "c.png,keep,\n", 2, "not <class>/<image>"),
        (HEADER + 'cats/c.png,keep,\n"cats/c.png,keep,\n', 3, "malformed CSV"),
        (
            HEADER + "cats/c.png,keep,\ncats/img 1.png,keep,\ncats/c.png,remove,\n",
            4,
            "is given remove here and keep on line 2",
        ),
    ],
)
def test_each_refusal_names_the_file_and_line(tmp_path, source, text, line, fragment):
    _refused(_write(tmp_path, text), source, line, fragment)


def test_text_that_is_not_utf8_is_refused_at_its_line(tmp_path, source):
    path = _write(tmp_path, HEADER.encode() + b"cats/c.png,keep,\ncats/\xff.png,keep,\n")
    _refused(path, source, 3, "not UTF-8")


def test_a_link_inside_the_source_pointing_out_is_refused(tmp_path, source):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "x.png").write_bytes(b"x")
    os.symlink(outside / "x.png", source / "cats" / "link.png")
    os.symlink(outside, source / "cats" / "folder")
    _refused(_write(tmp_path, HEADER + "cats/link.png,remove,\n"), source, 2, "outside the source")
    text = HEADER + "cats/c.png,keep,\ncats/c.png,not_duplicate,cats/folder/x.png\n"
    _refused(_write(tmp_path, text), source, 3, "outside the source")
    os.symlink(source / "cats" / "c.png", source / "cats" / "inside.png")  # a link within: fine
    assert len(read_overrides(_write(tmp_path, HEADER + "cats/inside.png,keep,\n"), source)) == 1


def test_every_problem_is_counted_and_the_first_named(tmp_path, source):
    path = _write(tmp_path, HEADER + "../a.png,keep,\n/b.png,keep,\ncats/c.png,nope,\n")
    with pytest.raises(OverridesError) as caught:
        read_overrides(path, source)
    assert len(caught.value.problems) == 3
    assert str(caught.value).endswith("(and 2 more problems)")


def _catalog(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    """(path, class_key, status) rows as the catalog holds them."""
    return pl.DataFrame(
        {
            "path": [r[0] for r in rows],
            "class_key": [r[1] for r in rows],
            "status": [r[2] for r in rows],
            "reason": [None if r[2] == "ok" else "corrupt image" for r in rows],
        }
    )


CATALOG = [
    ("cats/img 1.png", "cats", "ok"),
    ("cats/a,b.png", "cats", "ok"),
    ('cats/say "hi".png', "cats", "ok"),
    ("cats/c.png", "cats", "ok"),
    ("dogs/d.png", "dogs", "ok"),
]


def test_an_unknown_or_unread_image_is_refused_with_its_line(tmp_path, source):
    (source / "cats" / "new.png").write_bytes(b"x")
    text = HEADER + "cats/c.png,keep,\ncats/c.png,not_duplicate,cats/new.png\n"
    o = read_overrides(_write(tmp_path, text), source)
    with pytest.raises(OverridesError, match=r"line 3: 'cats/new.png' is no image of the"):
        check_known(o, _catalog(CATALOG))
    broken = [*CATALOG, ("cats/new.png", "cats", "error")]
    with pytest.raises(OverridesError, match=r"line 3: .*not read as an image \(corrupt image\)"):
        check_known(o, _catalog(broken))
    with pytest.raises(ValueError, match="against the catalog first"):
        o.for_class("cats")


def test_overrides_map_to_classes_by_the_catalog(tmp_path, source):
    text = (
        HEADER + "cats/img 1.png,keep,\ncats/c.png,remove,\n"
        "cats/a,b.png,not_duplicate,cats/img 1.png\n"
        "cats/c.png,not_duplicate,dogs/d.png\n"
    ).replace("cats/a,b.png", '"cats/a,b.png"')
    o = check_known(read_overrides(_write(tmp_path, text), source), _catalog(CATALOG))
    cats = o.for_class("cats")
    assert cats.keep == ("cats/img 1.png",) and cats.remove == ("cats/c.png",)
    assert cats.not_duplicate == (("cats/a,b.png", "cats/img 1.png"),)
    assert not o.for_class("dogs") and o.for_class("dogs").digest == ""
    assert o.classes() == ["cats"] and list(o.digests()) == ["cats"]
    assert o.cross_class_pairs() == [("cats/c.png", "dogs/d.png")]
    paths = ["cats/c.png", "cats/img 1.png", "cats/a,b.png", 'cats/say "hi".png']
    c = cats.corrections(paths)
    assert c.keep.tolist() == [1] and c.remove.tolist() == [0]
    assert c.not_duplicate.tolist() == [[2, 1]]
    with pytest.raises(ValueError, match="latents do not hold"):
        cats.corrections(paths[:2])


def test_the_digest_is_the_content_not_the_order_or_the_lines(tmp_path, source):
    a = HEADER + "cats/c.png,remove,\n\ncats/img 1.png,keep,\ndogs/d.png,keep,\n"
    b = HEADER + "dogs/d.png,keep,\ncats/img 1.png,keep,\ncats/c.png,remove,\ncats/c.png,remove,\n"
    c = HEADER + "dogs/d.png,keep,\ncats/img 1.png,keep,\n"
    known = [
        check_known(read_overrides(_write(tmp_path, t, f"{i}.csv"), source), _catalog(CATALOG))
        for i, t in enumerate((a, b, c))
    ]
    assert known[0].digests() == known[1].digests()
    assert known[0].digests()["dogs"] == known[2].digests()["dogs"]
    assert known[0].digests()["cats"] != known[2].digests()["cats"]


def _class_catalog(layout: OutputLayout, key: str, paths: list[str]) -> None:
    """A class's catalog file as the catalog stage writes it (what the readers use)."""
    table = pl.DataFrame(
        {
            "image_id": [f"id{i}" for i in range(len(paths))],
            "class": [key] * len(paths),
            "class_key": [key] * len(paths),
            "path": paths,
            "status": ["ok"] * len(paths),
            "reason": [None] * len(paths),
        },
        schema_overrides={"reason": pl.String},
    )
    summary = {"class": key, "images": len(paths), "digest": f"d-{key}"}
    layout.class_images(key).parent.mkdir(parents=True, exist_ok=True)
    table.write_parquet(layout.class_images(key), metadata={CLASS_SUMMARY_KEY: json.dumps(summary)})


def test_the_file_in_the_output_or_given_is_loaded_against_the_output_catalog(tmp_path, source):
    layout = OutputLayout(tmp_path / "out")
    _class_catalog(layout, "cats", ["cats/img 1.png", "cats/c.png"])
    _class_catalog(layout, "dogs", ["dogs/d.png"])
    assert overrides_path(layout.root) is None and load_known_overrides(layout.root, source) is None
    given = _write(tmp_path, HEADER + "cats/c.png,remove,\n")
    with pytest.raises(OverridesError, match="does not exist"):
        overrides_path(layout.root, tmp_path / "missing.csv")
    assert overrides_path(layout.root, given) == given
    (layout.root / OVERRIDES_FILE).write_text(HEADER + "dogs/d.png,keep,\n")
    assert overrides_path(layout.root) == layout.root / OVERRIDES_FILE
    assert overrides_path(layout.root, given) == given  # the file given wins
    assert load_known_overrides(layout.root, source).classes() == ["dogs"]
    assert load_known_overrides(layout.root, source, given).classes() == ["cats"]
    unknown = _write(
        tmp_path, HEADER + "cats/a,b.png,remove,\n".replace("cats/a,b.png", '"cats/a,b.png"')
    )
    with pytest.raises(OverridesError, match="line 2: 'cats/a,b.png' is no image"):
        check_known_in(read_overrides(unknown, source), layout)


# ---------------------------------------------------------------------------- the decision


def _planted(seed: int, n: int = 70, d: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors, pixel hashes, visit order): unrelated images, planted near-duplicates
    (a copy plus a little noise) and exact-copy groups (the same vector and hash)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    hashes = np.array([f"h{i}" for i in range(n)], dtype=object)
    near = rng.choice(n, n // 4, replace=False)
    x[near] = x[rng.integers(0, n, len(near))] + 0.15 * rng.normal(size=(len(near), d))
    for _ in range(4):  # exact-copy groups of 2 to 4
        members = rng.choice(n, rng.integers(2, 5), replace=False)
        x[members] = x[members[0]]
        hashes[members] = hashes[members[0]]
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, hashes.astype(str), rng.permutation(n)


def _random_corrections(seed: int, base, hashes: np.ndarray) -> Corrections:
    """A random set of overrides, aimed at what the decision did: removed images kept,
    kept images (some of them named) removed, removal edges and exact copies marked not
    duplicates."""
    rng = np.random.default_rng(seed + 100)
    n = len(hashes)
    removed = np.flatnonzero(~base.kept)
    named = np.unique(base.duplicate_of[base.duplicate_of >= 0])
    keep = rng.choice(removed, min(len(removed), rng.integers(0, 3)), replace=False)
    pool = np.setdiff1d(np.concatenate([named, rng.integers(0, n, 2)]), keep)
    remove = rng.choice(pool, min(len(pool), rng.integers(0, 4)), replace=False)
    edges = [(i, int(base.duplicate_of[i])) for i in removed if base.duplicate_of[i] >= 0]
    pairs = [edges[k] for k in rng.choice(len(edges), min(len(edges), 3), replace=False)]
    groups = [np.flatnonzero(hashes == h) for h in np.unique(hashes)]
    groups = [g for g in groups if len(g) > 1]
    if groups and rng.random() < 0.5:
        g = groups[rng.integers(len(groups))]
        pairs.append((int(g[0]), int(g[1])))
    pairs += [tuple(rng.choice(n, 2, replace=False)) for _ in range(rng.integers(0, 2))]
    pairs = [(a, b) for a, b in pairs if a != b]
    return Corrections.of(keep.tolist(), remove.tolist(), pairs)


def _table(d, hashes: np.ndarray) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The decision as the keep list's table (what `class_keep_lists` writes), and the
    catalog the integrity check reads."""
    n = len(hashes)
    ids = np.array([f"i{k:03d}" for k in range(n)])
    match, decided_by = _who_decided(d)
    dup = np.where(d.duplicate_of >= 0, ids[np.maximum(d.duplicate_of, 0)], None)
    keep = pl.DataFrame(
        {
            "image_id": ids.tolist(),
            "split": ["all"] * n,
            "class": ["c"] * n,
            "path": [f"c/{i}.png" for i in ids],
            "kept": d.kept.tolist(),
            "duplicate_of": pl.Series(dup.tolist(), dtype=pl.String),
            "similarity": pl.Series(d.similarity.astype(np.float64)).fill_nan(None),
            "match": pl.Series(match.tolist(), dtype=pl.String),
            "space": ["raw"] * n,
            "join": ["exact"] * n,
            "cosine": pl.Series(d.cosines(), dtype=pl.Float64),
            "calibrated_on": pl.Series([None] * n, dtype=pl.String),
            "decided_at": ["2026-12-01T00:00:00+00:00"] * n,
            "decided_in": ["run"] * n,
            "decided_by": pl.Series(decided_by.tolist(), dtype=pl.String),
        }
    ).select(KEEP_LIST_COLUMNS)
    catalog = pl.DataFrame({"image_id": ids, "class": ["c"] * n, "pixel_hash": hashes})
    return keep, catalog


def _check(d, c: Corrections, x, hashes, order, t: float, offsets=None, greedy=True) -> None:
    """Every property the semantics promise, for one threshold's decision."""
    n = len(x)
    kept, dup = d.kept, d.duplicate_of
    # Every override honoured.
    assert kept[c.keep].all() and not kept[c.remove].any()
    assert (d.forced[c.remove] == -1).all() and d.overridden[c.named()].all()
    for a, b in c.not_duplicate:
        assert dup[a] != b and dup[b] != a
    # No removed image points to a removed one; only an override's removal names nothing.
    removed = np.flatnonzero(~kept)
    assert kept[dup[removed][dup[removed] >= 0]].all()
    assert set(removed[dup[removed] < 0]) <= set(c.remove.tolist())
    # The keep list passes its integrity check.
    keep, catalog = _table(d, hashes)
    assert keep_list_problems(keep, catalog, None if offsets is not None else t) == []
    assert (keep.filter(pl.col("match") == "override")["decided_by"] == "override").all()
    # An exact-copy group keeps at most one member unless an override says otherwise.
    forced_keep = set(c.keep.tolist())
    inside = {(min(a, b), max(a, b)) for a, b in c.not_duplicate.tolist()}
    for h in np.unique(hashes):
        g = np.flatnonzero(hashes == h)
        said = forced_keep & set(g.tolist()) or any(
            (min(a, b), max(a, b)) in inside for a in g for b in g if a < b
        )
        if not said:
            assert kept[g].sum() <= 1, (h, g, kept[g])
    if not greedy:
        return
    # The greedy stays consistent: a kept image (not forced) has no earlier kept image it
    # duplicates, but through a pair marked not a duplicate.
    s = x.astype(np.float64) @ x.astype(np.float64).T
    if offsets is not None:
        s = s - offsets[:, None] - offsets[None, :]
    s = np.where(hashes[:, None] == hashes[None, :], np.inf, s)
    for a, b in c.not_duplicate:
        s[a, b] = s[b, a] = -np.inf
    rank = np.empty(n, int)
    rank[order] = np.arange(n)
    for i in np.flatnonzero(kept):
        if i in forced_keep:
            continue
        earlier = np.flatnonzero(kept & (rank < rank[i]))
        assert not (s[i, earlier] > t).any(), (i, earlier[s[i, earlier] > t])


CASES = [(seed, t) for seed in range(12) for t in (0.6, 0.9)]


@pytest.mark.parametrize(("seed", "t"), CASES)
def test_random_overrides_are_honoured_consistently(seed, t):
    x, hashes, order = _planted(seed)
    base = keep_decisions(x, order, hashes, [t], block=16)[0]
    c = _random_corrections(seed, base, hashes)
    for block in (7, 2048):
        d = keep_decisions(x, order, hashes, [t], block=block, corrections=c)[0]
        _check(d, c, x, hashes, order, t)
    # The approximate join asks its index only for the rows without a rule.
    d = keep_decisions(x, order, hashes, [t], block=7, join="ann", corrections=c)[0]
    _check(d, c, x, hashes, order, t, greedy=False)


@pytest.mark.parametrize("seed", range(6))
def test_random_overrides_with_local_levels(seed):
    x, hashes, order = _planted(seed)
    offsets = np.random.default_rng(seed).uniform(0.0, 0.1, len(x)).astype(np.float32)
    margin = 0.7
    base = keep_decisions(x, order, hashes, [margin], offsets=[offsets])[0]
    c = _random_corrections(seed, base, hashes)
    d = keep_decisions(x, order, hashes, [margin], offsets=[offsets], corrections=c, block=9)[0]
    _check(d, c, x, hashes, order, margin, offsets)


def _prior(d) -> PriorDecision:
    return PriorDecision(
        np.where(d.kept, 1, 0).astype(np.int8),
        d.duplicate_of.copy(),
        d.similarity.astype(np.float64),
        d.exact.copy(),
        d.cosines().copy(),
    )


@pytest.mark.parametrize("seed", range(8))
def test_earlier_decisions_never_outweigh_an_override(seed):
    """Stable decisions carried from the last run give way to the overrides of now."""
    x, hashes, order = _planted(seed)
    t = 0.6
    base = keep_decisions(x, order, hashes, [t])[0]
    c = _random_corrections(seed, base, hashes)
    d = keep_decisions(x, order, hashes, [t], prior=[_prior(base)], corrections=c)[0]
    _check(d, c, x, hashes, order, t, greedy=False)
    assert not d.carried[c.named()].any()
    again = keep_decisions(x, order, hashes, [t], prior=[_prior(d)], corrections=c)[0]
    np.testing.assert_array_equal(again.kept, d.kept)  # a second run changes nothing


@pytest.mark.parametrize("seed", range(6))
def test_no_override_decides_exactly_as_before(seed):
    x, hashes, order = _planted(seed)
    for t in (0.6, 0.9):
        plain = keep_decisions(x, order, hashes, [t], block=16)[0]
        for none in (None, Corrections.of()):
            d = keep_decisions(x, order, hashes, [t], block=16, corrections=none)[0]
            for f in ("kept", "duplicate_of", "similarity", "exact", "carried"):
                np.testing.assert_array_equal(getattr(d, f), getattr(plain, f))
            np.testing.assert_array_equal(d.cosines(), plain.cosines())
            assert d.forced is None and d.overridden is None
        match, decided_by = _who_decided(plain)
        assert set(decided_by.tolist()) <= {"exact", "model"}
        assert ((decided_by == "exact") == (match == "exact")).all()


def _line(*vectors) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# Visit order a, b, c: b is a near-duplicate of a (0.995), c of b (0.995) but not of a (0.981).
CHAIN = _line([1, 0, 0], [1, 0.1, 0], [1, 0.2, 0])
T = 0.985


def test_keep_makes_the_image_kept_and_later_images_may_name_it():
    hashes = np.array(["a", "b", "c"])
    base = keep_decisions(CHAIN, np.arange(3), hashes, [T])[0]
    assert base.kept.tolist() == [True, False, True]
    d = keep_decisions(CHAIN, np.arange(3), hashes, [T], corrections=Corrections.of(keep=[1]))[0]
    assert d.kept.tolist() == [True, True, False] and d.duplicate_of[2] == 1


def test_remove_frees_the_images_that_named_it():
    hashes = np.array(["a", "b", "c"])
    c = Corrections.of(remove=[0])
    d = keep_decisions(CHAIN, np.arange(3), hashes, [T], corrections=c)[0]
    assert d.kept.tolist() == [False, True, False]
    assert d.duplicate_of.tolist() == [1, -1, 1]  # a names its best kept match above T
    far = _line([1, 0, 0], [0, 1, 0])
    alone = keep_decisions(far, np.arange(2), np.array(["a", "b"]), [T], corrections=c)[0]
    assert alone.kept.tolist() == [False, True] and alone.duplicate_of[0] == -1


def test_not_duplicate_decides_both_again_without_the_pair():
    hashes = np.array(["a", "b", "c"])
    c = Corrections.of(not_duplicate=[(1, 0)])
    d = keep_decisions(CHAIN, np.arange(3), hashes, [T], corrections=c)[0]
    assert d.kept.tolist() == [True, True, False] and d.duplicate_of[2] == 1


def test_an_exact_copy_group_keeps_one_member_unless_told_otherwise():
    x = _line([1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0])
    hashes = np.array(["g", "g", "g", "o"])
    d = keep_decisions(x, np.arange(4), hashes, [T], corrections=Corrections.of(remove=[0]))[0]
    assert d.kept.tolist() == [False, True, False, True]
    assert d.duplicate_of.tolist() == [1, -1, 1, -1] and d.exact[2] and not d.exact[0]
    d = keep_decisions(x, np.arange(4), hashes, [T], corrections=Corrections.of(keep=[2]))[0]
    assert d.kept.tolist() == [True, False, True, True]  # the override keeps a second one
    c = Corrections.of(not_duplicate=[(0, 1)])
    d = keep_decisions(x, np.arange(4), hashes, [T], corrections=c)[0]
    assert d.kept.tolist() == [True, True, False, True] and d.duplicate_of[2] == 0


def test_a_row_an_override_decided_is_not_carried_by_the_next_run(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    settings = SimpleNamespace(
        similarity_space="raw",
        keep_policy="first",
        budget_scaling="local",
        join="auto",
        ann_min_class_size=200_000,
        ann_nprobe=16,
    )
    ids = np.array(["a", "b", "c"])
    table = pl.DataFrame(
        {
            "image_id": ids,
            "kept": [True, True, False],
            "duplicate_of": [None, None, "b"],
            "similarity": [None, None, 0.99],
            "match": [None, None, "near"],
            "cosine": [T, T, T],
            "decided_by": ["model", "override", "model"],
        }
    )
    write_table(table, layout.class_keep_list("0.985", "k"), keep_provenance({}, settings, "0.985"))
    (prior,), _ = prior_decisions(layout, "k", ["0.985"], settings, ids)
    assert prior.state.tolist() == [1, -1, 0]  # b, kept by an override, is decided again
    d = keep_decisions(CHAIN, np.arange(3), ids, [T], prior=[prior])[0]
    assert d.carried.tolist() == [True, False, False]  # and so is c, which named b


# ---------------------------------------------------------------------------- provenance


def _inputs(digests: dict[str, str]) -> CurrentInputs:
    settings = SimpleNamespace(
        n_components=8,
        bin_rule="fd",
        similarity_space="raw",
        keep_policy="first",
        budget_scaling="local",
        join="auto",
        ann_min_class_size=200_000,
        ann_nprobe=16,
        clean_copy_mode="copy",
    )
    return CurrentInputs({"cats": "d1", "dogs": "d2"}, "m", settings, "", digests)


def _materialize(layout: OutputLayout, current: CurrentInputs, thresholds: list[str]) -> None:
    """Files of every class recording `current` as their provenance."""
    for key in current.class_digests:
        write_table(pl.DataFrame({"a": [1]}), layout.latents(key), current.latents(key))
        fit = layout.spline_fit(key)
        fit.parent.mkdir(parents=True, exist_ok=True)
        np.savez(fit, **{PROVENANCE_KEY: np.array(json.dumps(current.fit(key), sort_keys=True))})
        for t in thresholds:
            write_table(
                pl.DataFrame({"a": [1]}), layout.class_keep_list(t, key), current.keep(key, t)
            )


def test_a_classs_keep_provenance_changes_only_with_its_own_overrides(tmp_path):
    layout = OutputLayout(tmp_path / "out")
    thresholds = ["0.95", "1%"]
    none = _inputs({})
    assert none.keep("cats", "0.95") == keep_provenance(none.fit("cats"), none.settings, "0.95")
    assert "overrides" not in none.keep("cats", "1%")
    _materialize(layout, none, thresholds)
    assert stale_classes(layout, none, thresholds) == []
    cats = ClassOverrides(keep=("cats/c.png",))
    one = _inputs({"cats": cats.digest})
    assert stale_classes(layout, one, thresholds) == ["cats"]
    assert one.keep("dogs", "0.95") == none.keep("dogs", "0.95")
    _materialize(layout, one, thresholds)
    assert stale_classes(layout, one, thresholds) == []
    changed = _inputs({"cats": ClassOverrides(remove=("cats/c.png",)).digest})
    assert stale_classes(layout, changed, thresholds) == ["cats"]
    assert stale_classes(layout, none, thresholds) == ["cats"]  # overrides taken out
    both = _inputs({"cats": cats.digest, "dogs": ClassOverrides(keep=("dogs/d.png",)).digest})
    assert stale_classes(layout, both, thresholds) == ["dogs"]
    assert none.keep_list("0.95") != one.keep_list("0.95")  # the clean copy follows


def test_current_inputs_make_each_record_once_and_hand_out_copies():
    """The records a stage asks for again and again are made once: the same values as made
    afresh, a caller's change to one not seen by the next caller."""
    from dedup_assets.core.data.artifacts import digest, fit_provenance, latents_provenance

    current = _inputs({"dogs": "o1"})
    first = current.keep("dogs", "1%")
    assert first == keep_provenance(
        fit_provenance(latents_provenance("d2", "m"), current.settings),
        current.settings,
        "1%",
        "",
        "o1",
    )
    first["threshold"] = "changed by a caller"
    assert current.keep("dogs", "1%")["threshold"] == "1%"
    assert current.fit("cats") is not current.fit("cats")
    assert current.keep_list("0.95")["classes"] == {
        k: digest(current.keep(k, "0.95")) for k in ("cats", "dogs")
    }
    assert current.cross_class("0.95")["latents"] == {
        k: digest(current.latents(k)) for k in ("cats", "dogs")
    }
    # Inputs that differ only in what was made so far are equal.
    assert current == _inputs({"dogs": "o1"})
