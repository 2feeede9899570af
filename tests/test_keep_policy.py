"""Tests for the greedy keep policy (dedup_assets.core.decision.keep_policy)."""

from __future__ import annotations

import numpy as np
import pytest

from dedup_assets.core.decision.keep_policy import greedy_keep, visit_order

BLOCKS = (1, 3, 16, 1024)
THRESHOLDS = (0.8, 0.9, 0.95)
SEEDS = (0, 1, 2)


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(seed: int, n: int = 120, d: int = 16) -> np.ndarray:
    """Unit vectors in clusters of near-duplicates, plus unrelated singletons."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    labels = rng.integers(0, 12, n)
    x = centres[labels] + 0.3 * rng.normal(size=(n, d))
    x[: n // 6] = rng.normal(size=(n // 6, d))  # singletons
    return _unit(x[rng.permutation(n)])


def _ids(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    ids = {f"{v:016x}" for v in rng.integers(0, 2**62, size=n * 2)}
    return np.array(sorted(ids)[:n], dtype=object)[rng.permutation(n)]


def _sim(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ x.astype(np.float64).T


def _check_margin(x: np.ndarray, t: float) -> None:
    s = _sim(x)[np.triu_indices(len(x), 1)]
    assert np.abs(s - t).min() > 1e-6, "test data too close to the threshold"


def _reference(x: np.ndarray, order: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Sequential greedy: keep unless sim > T to some kept image; name the most similar one."""
    s = _sim(x)
    n = len(x)
    kept = np.zeros(n, dtype=bool)
    dup = np.full(n, -1, dtype=np.int64)
    kept_so_far: list[int] = []
    for i in order:
        if kept_so_far:
            sims = s[i, kept_so_far]
            best = int(np.argmax(sims))
            if sims[best] > t:
                dup[i] = kept_so_far[best]
                continue
        kept[i] = True
        kept_so_far.append(int(i))
    return kept, dup


CASES = [(seed, t, block) for seed in SEEDS for t in THRESHOLDS for block in BLOCKS]


@pytest.mark.parametrize(("seed", "t", "block"), CASES)
def test_invariants(seed, t, block):
    x = _clustered(seed)
    _check_margin(x, t)
    order = np.random.default_rng(seed).permutation(len(x))
    d = greedy_keep(x, order, t, block=block)
    s = _sim(x)
    n = len(x)
    assert d.kept.shape == d.duplicate_of.shape == d.similarity.shape == (n,)
    assert 0 < d.n_kept < n  # the data has duplicates at every tested T
    position = np.empty(n, dtype=int)
    position[order] = np.arange(n)
    removed = np.flatnonzero(~d.kept)
    kept = np.flatnonzero(d.kept)
    # (a) every removed image names a kept image, visited earlier, with similarity > T
    assert (d.duplicate_of[d.kept] == -1).all()
    assert np.isnan(d.similarity[d.kept]).all()
    for i in removed:
        j = d.duplicate_of[i]
        assert j >= 0 and d.kept[j]
        assert position[j] < position[i]
        assert s[i, j] > t
        assert d.similarity[i] == pytest.approx(s[i, j], abs=1e-6)
    # (b) the kept images form an independent set of the "similarity > T" graph
    sk = s[np.ix_(kept, kept)]
    np.fill_diagonal(sk, -np.inf)
    assert sk.max() <= t


@pytest.mark.parametrize(("seed", "t", "block"), CASES)
def test_kept_set_matches_sequential_reference(seed, t, block):
    x = _clustered(seed)
    _check_margin(x, t)
    order = np.random.default_rng(seed).permutation(len(x))
    ref_kept, ref_dup = _reference(x, order, t)
    d = greedy_keep(x, order, t, block=block)
    np.testing.assert_array_equal(d.kept, ref_kept)
    assert d.rounds >= 1


@pytest.mark.parametrize(
    "block",
    [1, 3, 16, 1024],
)
def test_duplicate_of_matches_sequential_reference(block):
    mismatches = 0
    for seed in range(6):
        x = _clustered(seed, n=200)
        order = np.random.default_rng(seed).permutation(len(x))
        for t in THRESHOLDS:
            _check_margin(x, t)
            _, ref_dup = _reference(x, order, t)
            d = greedy_keep(x, order, t, block=block)
            mismatches += int((d.duplicate_of != ref_dup).sum())
    assert mismatches == 0


def test_duplicate_of_is_the_most_similar_earlier_kept_image_across_a_block_edge():
    # Visit order A, D | B, C with block = 2. A and B are kept (cos 40 deg < T = cos 30 deg),
    # D is far away. C is 25 deg from A (a duplicate of A) but 15 deg from B: the most
    # similar kept image visited earlier is B.
    deg = np.radians([0.0, -120.0, 40.0, 25.0])  # A, D, B, C
    x = np.stack([np.cos(deg), np.sin(deg)], axis=1).astype(np.float32)
    t = float(np.cos(np.radians(30.0)))
    order = np.arange(4)
    ref_kept, ref_dup = _reference(x, order, t)
    assert ref_kept.tolist() == [True, True, True, False] and ref_dup[3] == 2
    one_block = greedy_keep(x, order, t, block=4)
    assert one_block.duplicate_of.tolist() == [-1, -1, -1, 2]
    two_blocks = greedy_keep(x, order, t, block=2)
    assert two_blocks.kept.tolist() == [True, True, True, False]
    assert two_blocks.duplicate_of.tolist() == [-1, -1, -1, 2]
    assert two_blocks.similarity[3] == pytest.approx(np.cos(np.radians(15.0)), abs=1e-6)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("t", THRESHOLDS)
def test_kept_ids_do_not_depend_on_row_order(block, t):
    x = _clustered(5)
    _check_margin(x, t)
    ids = _ids(len(x), 5)
    d = greedy_keep(x, visit_order(ids, "first"), t, block=block)
    kept_ids = set(ids[d.kept])
    dup_ids = {ids[i]: ids[d.duplicate_of[i]] for i in np.flatnonzero(~d.kept)}
    assert 0 < len(kept_ids) < len(x)
    rng = np.random.default_rng(99)
    for _ in range(3):
        perm = rng.permutation(len(x))
        xs, ids_s = x[perm], ids[perm]
        ds = greedy_keep(xs, visit_order(ids_s, "first"), t, block=block)
        assert set(ids_s[ds.kept]) == kept_ids
        assert {ids_s[i]: ids_s[ds.duplicate_of[i]] for i in np.flatnonzero(~ds.kept)} == dup_ids


@pytest.mark.parametrize("block", BLOCKS)
def test_chain_resolves_first_kept_middle_removed_last_kept(block):
    # A at 0 deg, B at 20, C at 40; T = cos 30 deg: A~B, B~C, A!~C
    deg = np.radians([0.0, 20.0, 40.0])
    x = np.stack([np.cos(deg), np.sin(deg)], axis=1).astype(np.float32)
    t = float(np.cos(np.radians(30.0)))
    d = greedy_keep(x, np.array([0, 1, 2]), t, block=block)
    assert d.kept.tolist() == [True, False, True]
    assert d.duplicate_of.tolist() == [-1, 0, -1]
    assert d.similarity[1] == pytest.approx(np.cos(np.radians(20.0)), abs=1e-6)
    # visited from the other end, C is kept and A too
    d = greedy_keep(x, np.array([2, 1, 0]), t, block=block)
    assert d.kept.tolist() == [True, False, True]
    assert d.duplicate_of.tolist() == [-1, 2, -1]
    # visited B first: B kept, both A and C removed as its duplicates
    d = greedy_keep(x, np.array([1, 0, 2]), t, block=block)
    assert d.kept.tolist() == [False, True, False]
    assert d.duplicate_of.tolist() == [1, -1, 1]


def test_visit_order_first_sorts_by_id():
    ids = ["c", "a", "b", "aa", "B"]
    assert visit_order(ids, "first").tolist() == [4, 1, 3, 2, 0]  # "B" < "a" < "aa" < "b" < "c"
    assert visit_order(np.array(ids, dtype=object), "first").tolist() == [4, 1, 3, 2, 0]
    assert visit_order([], "first").tolist() == []


def test_visit_order_density_ascending_ties_by_id():
    ids = ["d", "b", "a", "c", "e"]
    dens = np.array([0.5, -1.0, 0.5, -3.0, -1.0])
    # -3 (c), -1 (b, e by id), 0.5 (a, d by id)
    assert visit_order(ids, "density", dens).tolist() == [3, 1, 4, 2, 0]
    rng = np.random.default_rng(0)
    ids = [f"{i:04d}" for i in rng.permutation(200)]
    dens = rng.integers(0, 5, 200).astype(float)
    order = visit_order(ids, "density", dens)
    keys = [(dens[i], ids[i]) for i in order]
    assert keys == sorted(keys)
    assert sorted(order.tolist()) == list(range(200))


def test_visit_order_quality_colour_then_pixels_then_bytes_then_id():
    ids = ["e", "d", "c", "b", "a", "f"]
    quality = np.array(
        [
            [1, 4096, 900],  # e: colour, small
            [0, 1e6, 9e5],  # d: greyscale, however large
            [1, 1e6, 5e5],  # c: colour, full size
            [1, 1e6, 8e5],  # b: colour, full size, larger file
            [1, 4096, 900],  # a: as e, first by id
            [0, 4096, 100],  # f: greyscale, small
        ]
    )
    assert visit_order(ids, "quality", quality=quality).tolist() == [3, 2, 4, 0, 1, 5]
    with pytest.raises(ValueError, match="'quality' keep policy needs"):
        visit_order(ids, "quality")


def test_visit_order_errors():
    with pytest.raises(ValueError):
        visit_order(["a", "b"], "random")
    with pytest.raises(ValueError):
        visit_order(["a", "b"], "density")
    with pytest.raises(ValueError):
        visit_order(["a", "b"], "density", np.array([1.0]))


def test_high_threshold_removes_nothing_from_distinct_vectors():
    x = _unit(np.random.default_rng(8).normal(size=(200, 8)))
    s = _sim(x)
    np.fill_diagonal(s, -1)
    assert s.max() < 0.999
    for block in BLOCKS:
        d = greedy_keep(x, np.arange(200), 0.999999, block=block)
        assert d.kept.all()
        assert (d.duplicate_of == -1).all()


@pytest.mark.parametrize("block", BLOCKS)
def test_identical_vectors_keep_exactly_one(block):
    v = _unit(np.random.default_rng(9).normal(size=(1, 10)))
    x = np.repeat(v, 37, axis=0)
    order = np.random.default_rng(block).permutation(37)
    for t in (0.5, 0.999999):
        d = greedy_keep(x, order, t, block=block)
        assert d.n_kept == 1
        assert d.kept[order[0]]
        assert (d.duplicate_of[~d.kept] == order[0]).all()
        np.testing.assert_allclose(d.similarity[~d.kept], 1.0, atol=1e-6)


def test_mixed_identical_groups_and_singletons():
    rng = np.random.default_rng(10)
    base = _unit(rng.normal(size=(20, 32)))  # pairwise far apart in 32-D
    copies = rng.integers(1, 5, 20)
    x = np.repeat(base, copies, axis=0)
    order = rng.permutation(len(x))
    for block in BLOCKS:
        d = greedy_keep(x, order, 0.99, block=block)
        assert d.n_kept == 20
        groups = np.repeat(np.arange(20), copies)
        assert sorted(groups[d.kept].tolist()) == list(range(20))


def test_order_must_be_a_permutation():
    x = _unit(np.eye(3))
    for bad in ([0, 1], [0, 1, 1], [1, 2, 3], [0, 1, 2, 3]):
        with pytest.raises(ValueError):
            greedy_keep(x, np.array(bad), 0.5)


def test_empty_input_and_progress():
    d = greedy_keep(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 0.9)
    assert d.n_kept == 0 and len(d.kept) == 0
    calls: list[tuple[int, int]] = []
    x = _clustered(1, n=50)
    greedy_keep(x, np.arange(50), 0.9, block=16, progress=lambda a, b: calls.append((a, b)))
    assert calls == [(16, 50), (32, 50), (48, 50), (50, 50)]


def _constrained_reference(
    x: np.ndarray,
    order: np.ndarray,
    t: float,
    forced: np.ndarray,
    excluded: np.ndarray,
    group: np.ndarray,
    offsets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential greedy with the rules of `Constraints`: forced rows kept or removed where
    visited, excluded pairs never an edge, rows of one group duplicates (score +inf, named
    first); a forced-removed row names its best kept image of the final set above T."""
    s = _sim(x)
    if offsets is not None:
        s = s - offsets[:, None] - offsets[None, :]
    same = (group[:, None] == group[None, :]) & (group[:, None] >= 0)
    s = np.where(same, np.inf, s)
    for a, b in excluded:
        s[a, b] = s[b, a] = -np.inf
    n = len(x)
    kept = np.zeros(n, dtype=bool)
    dup = np.full(n, -1, dtype=np.int64)
    kept_so_far: list[int] = []
    for i in order:
        if forced[i] == -1:
            continue
        if forced[i] == 0 and kept_so_far:
            sims = s[i, kept_so_far]
            best = int(np.argmax(sims))
            if sims[best] > t:
                dup[i] = kept_so_far[best]
                continue
        kept[i] = True
        kept_so_far.append(int(i))
    for i in np.flatnonzero(forced == -1):
        sims = s[i, kept_so_far]
        if len(sims) and sims.max() > t:
            dup[i] = kept_so_far[int(np.argmax(sims))]
    return kept, dup


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("with_offsets", [False, True])
def test_constraints_match_a_sequential_reference(block, with_offsets):
    """Forced rows, excluded pairs and exact-copy groups, across block edges, give what the
    plain sequential greedy with those rules gives: the kept set and every name."""
    from dedup_assets.core.decision.keep_policy import Constraints

    for seed in range(4):
        rng = np.random.default_rng(seed)
        x = _clustered(seed, n=90)
        n = len(x)
        order = rng.permutation(n)
        offsets = rng.uniform(-0.05, 0.05, n).astype(np.float32) if with_offsets else None
        forced = np.zeros(n, np.int8)
        picked = rng.choice(n, 12, replace=False)
        forced[picked[:4]] = 1
        forced[picked[4:8]] = -1
        group = np.full(n, -1, np.int64)
        group[rng.choice(n, 6, replace=False)] = rng.integers(0, 2, 6)
        t = 0.9 if offsets is None else 0.8
        s = _sim(x) if offsets is None else _sim(x) - offsets[:, None] - offsets[None, :]
        close = np.argwhere(np.triu(s > t, 1))  # exclude some real duplicate edges
        excluded = close[rng.choice(len(close), min(8, len(close)), replace=False)]
        c = Constraints(forced=forced, excluded=excluded, group=group)
        d = greedy_keep(x, order, t, block=block, constraints=c, offsets=offsets)
        ref_kept, ref_dup = _constrained_reference(x, order, t, forced, excluded, group, offsets)
        np.testing.assert_array_equal(d.kept, ref_kept)
        np.testing.assert_array_equal(d.duplicate_of, ref_dup)
        assert d.kept[forced == 1].all() and not d.kept[forced == -1].any()


def test_empty_constraints_change_nothing():
    from dedup_assets.core.decision.keep_policy import Constraints

    x = _clustered(5)
    order = np.random.default_rng(5).permutation(len(x))
    plain = greedy_keep(x, order, 0.9, block=16)
    ruled = greedy_keep(x, order, 0.9, block=16, constraints=Constraints())
    np.testing.assert_array_equal(plain.kept, ruled.kept)
    np.testing.assert_array_equal(plain.duplicate_of, ruled.duplicate_of)
    np.testing.assert_array_equal(plain.similarity, ruled.similarity)
