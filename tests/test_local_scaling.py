"""Local scaling: levels leave out the right decoys, the null reads the pairs a real pair is
judged by, and margins find copies that one cosine per class cannot."""

import numpy as np
import pytest

from dedup_assets.core.decision.calibration import budget_thresholds, mirror_null
from dedup_assets.core.decision.class_decision import keep_decisions
from dedup_assets.core.decision.keep_policy import greedy_keep
from dedup_assets.core.decision.local_scaling import (
    K_NEIGHBOURS,
    LocalLevels,
    best_with_cap,
    ceiling_of,
    local_levels,
    null_margins,
    outsider_levels,
)
from dedup_assets.core.decision.similarity import count_pairs_above, l2_normalize, pairs_above


def _unit(rng, n, d=16):
    return l2_normalize(rng.standard_normal((n, d)).astype(np.float32))


def _dense_levels(v, d, rows, k=K_NEIGHBOURS):
    """The definition, written out: per image, the best and second-best decoy over decoys
    that are neither its own mirror nor a mirror of its k most similar decoy sources."""
    n = len(v)
    level, second, source = np.zeros(n), np.zeros(n), np.full(n, -1)
    for i in range(n):
        near = v[rows] @ v[i]
        near[rows == i] = -np.inf
        banned = set(rows[np.argsort(-near, kind="stable")[:k]].tolist()) | {i}
        ok = [c for c in range(len(rows)) if rows[c] not in banned]
        sims = d[ok] @ v[i]
        order = np.argsort(-sims, kind="stable")
        level[i], source[i] = sims[order[0]], rows[ok][order[0]]
        second[i] = sims[order[1]] if len(order) > 1 else level[i]
    return level, second, source


def _checked_levels(v, d, rows):
    """`local_levels` in blocks of 16, asserted equal to the definition; both returned."""
    levels = local_levels(v, d, rows, block=16)
    level, second, source = _dense_levels(v, d, rows)
    assert np.allclose(levels.level, level, atol=1e-6)
    assert np.allclose(levels.second, second, atol=1e-6)
    assert np.array_equal(levels.source, source)
    return levels, (level, second, source)


@pytest.mark.parametrize("sampled", [False, True])
def test_levels_and_null_match_their_definition(sampled):
    rng = np.random.default_rng(0)
    v = _unit(rng, 90)
    rows = np.sort(rng.choice(90, 40, replace=False)) if sampled else np.arange(90)
    d = l2_normalize(v[rows] + 0.8 * _unit(rng, len(rows)))
    levels, (level, second, source) = _checked_levels(v, d, rows)

    # Null pairs: image i against decoy c (the mirror of s = rows[c]), both levels leaving
    # out the other's mirror; read per image (every image mirrored) or per decoy (a sample).
    e = np.full((90, len(rows)), -np.inf)
    for i in range(90):
        near = v[rows] @ v[i]
        near[rows == i] = -np.inf
        banned = set(rows[np.argsort(-near, kind="stable")[:K_NEIGHBOURS]].tolist()) | {i}
        for c, s in enumerate(rows):
            if s in banned:
                continue
            mine = second[i] if source[i] == s else level[i]
            theirs = second[s] if source[s] == i else level[s]
            e[i, c] = d[c] @ v[i] - (mine + theirs) / 2
    null = null_margins(v, d, rows, levels, block=16)
    expected = e.max(axis=0) if sampled else e.max(axis=1)
    assert null.shape == expected.shape
    assert np.allclose(null, expected, atol=1e-5)


@pytest.mark.parametrize("sampled", [False, True])
def test_levels_with_tied_neighbours_leave_out_the_first_ones(sampled):
    """Images repeated exactly (every tie in who is nearest): the levels still follow the
    definition, the nearest of equal images taken in row order, and the pool's levels
    (`outsider_levels`) leave out the same ones for a copy of an image of the class."""
    rng = np.random.default_rng(3)
    # Unit vectors of +-1/4 in 16 dimensions: every product is a sum of +-1/16, exact in
    # float32 whatever the order of the sums, so equal images tie exactly in any BLAS (a
    # blocked product of generic vectors may differ in the last bit between equal columns,
    # as this machine's OpenBLAS 0.3.31 (numpy 2.4.6) does: then "equal" is not a tie).
    base = np.where(rng.random((12, 16)) < 0.5, -0.25, 0.25).astype(np.float32)
    v = base[rng.integers(0, 12, 60)]  # 60 images, 12 distinct: ties everywhere
    rows = np.sort(rng.choice(60, 25, replace=False)) if sampled else np.arange(60)
    d = l2_normalize(v[rows] + 0.8 * _unit(rng, len(rows)))
    _checked_levels(v, d, rows)
    outsiders = v[:7]
    outside = outsider_levels(outsiders, v, d, rows, block=16)
    for q, o in enumerate(outsiders):
        near = v @ o  # an outsider has no mirror of its own: its k nearest images only
        banned = set(np.argsort(-near, kind="stable")[:K_NEIGHBOURS].tolist())
        ok = [c for c in range(len(rows)) if rows[c] not in banned]
        assert np.isclose(outside[q], (d[ok] @ o).max(), atol=1e-6)


def test_a_copys_mirror_does_not_lift_the_level_of_a_symmetric_image():
    """A nearly symmetric image with two copies: their mirrors are close to the image
    itself. Leaving out the mirrors of its two nearest images keeps them out of its level,
    so the group's margins stay high."""
    rng = np.random.default_rng(1)
    others = _unit(rng, 50)
    base = _unit(rng, 1)[0]
    group = l2_normalize(base + 0.05 * _unit(rng, 3))  # image 0 and its copies 1, 2
    v = np.vstack([group, others])
    # Mirrors: the group's are close to the group (symmetric scene), the others' unrelated.
    d = np.vstack([l2_normalize(group + 0.1 * _unit(rng, 3)), _unit(rng, 50)])
    rows = np.arange(len(v))
    levels = local_levels(v, d, rows)
    assert set(levels.source[:3].tolist()).isdisjoint({0, 1, 2})
    assert levels.level[:3].max() < 0.8
    one = local_levels(v, d, rows, k=1)  # one left out is not enough for a group of three
    assert one.level[:3].min() > 0.9


def test_a_class_of_fewer_images_than_can_be_left_out_has_zero_levels():
    rng = np.random.default_rng(2)
    for n in (0, 1, 2, 3):
        v = _unit(rng, n)
        levels = local_levels(v, v, np.arange(n))
        assert len(levels) == n
        if n <= K_NEIGHBOURS + 1:
            assert np.all(levels.level == 0) and np.all(levels.source == -1)
        null = null_margins(v, v, np.arange(n), levels)
        assert np.all(np.isneginf(null)) or n > K_NEIGHBOURS + 1
    assert budget_thresholds(np.full(3, -np.inf, np.float32), [0.01]) == [1.0]


def test_without_and_offsets():
    lv = LocalLevels(
        np.array([0.6, 0.4], np.float32), np.array([0.5, 0.3], np.float32), np.array([1, 0])
    )
    assert np.allclose(lv.offsets, [0.3, 0.2])
    assert np.allclose(lv.without(np.array([0, 0, 1]), np.array([1, 5, 0])), [0.5, 0.6, 0.3])
    sub = lv.take(np.array([1]))
    assert sub.level.tolist() == pytest.approx([0.4]) and sub.source.tolist() == [0]


def _dense_greedy(x, order, t, offsets):
    s = x @ x.T - offsets[:, None] - offsets[None, :]
    kept = np.zeros(len(x), bool)
    for i in order:
        k = np.flatnonzero(kept)
        if len(k) and s[i, k].max() > t:
            continue
        kept[i] = True
    return kept


@pytest.mark.parametrize("join", ["exact", "ann"])
def test_greedy_keep_on_margins_matches_the_dense_rule(join):
    rng = np.random.default_rng(3)
    base = _unit(rng, 300)
    x = np.vstack([base, l2_normalize(base[:60] + 0.15 * _unit(rng, 60))])
    offsets = rng.uniform(0.0, 0.3, len(x)).astype(np.float32)
    order = rng.permutation(len(x))
    d = greedy_keep(x, order, 0.3, block=64, offsets=offsets, join=join, nprobe=64)
    expected = _dense_greedy(x, order, 0.3, offsets)
    assert np.array_equal(d.kept, expected)
    gone = np.flatnonzero(~d.kept)
    named = d.duplicate_of[gone]
    margins = np.einsum("ij,ij->i", x[gone], x[named]) - offsets[gone] - offsets[named]
    assert np.allclose(d.similarity[gone], margins, atol=1e-5) and np.all(margins > 0.3)


def test_pair_counts_and_pairs_use_margins():
    rng = np.random.default_rng(4)
    x = _unit(rng, 120, 8)
    offsets = rng.uniform(0, 0.2, 120).astype(np.float32)
    s = x @ x.T - offsets[:, None] - offsets[None, :]
    iu = np.triu_indices(120, 1)
    for t in (0.2, 0.4):
        assert count_pairs_above(x, [t], 32, offsets=offsets)[0] == int((s[iu] > t).sum())
        i, j, m = pairs_above(x, t, 32, offsets=offsets)
        assert len(i) == int((s[iu] > t).sum()) and np.allclose(m, s[i, j], atol=1e-6)


def test_margins_find_copies_in_a_sparse_region_that_one_cosine_misses():
    """Half the class is a tight cluster (unrelated images at cosine ~0.9), half scattered
    (~0); ten copies in the scattered half score 0.75 with their originals. One cosine per
    class for a 2% budget must sit above the cluster and misses the copies; margins over
    local levels find them and remove almost nothing else."""
    rng = np.random.default_rng(5)
    d = 32
    centre = _unit(rng, 1, d)[0]

    def cluster(n):
        return l2_normalize(centre + 0.07 * rng.standard_normal((n, d)).astype(np.float32))

    def scattered(n):
        return _unit(rng, n, d)

    originals = scattered(10)
    copies = l2_normalize(originals + 1.0 * _unit(rng, 10, d))
    v = np.vstack([cluster(200), scattered(190), originals, copies])
    pairs = [(390 + k, 400 + k) for k in range(10)]
    assert all(0.55 < float(v[a] @ v[b]) < 0.85 for a, b in pairs)
    # Decoys drawn like the class (what a mirror is: a plausible image that copies nothing).
    decoys = np.vstack([cluster(200), scattered(210)])
    rows = np.arange(len(v))
    order = np.arange(len(v))
    hashes = rows.astype(str)
    clean = np.ones(len(v), bool)
    clean[[i for p in pairs for i in p]] = False

    (cos,) = budget_thresholds(mirror_null(v, decoys, rows), [0.02])
    levels = local_levels(v, decoys, rows)
    (margin,) = budget_thresholds(null_margins(v, decoys, rows, levels), [0.02])
    uniform = keep_decisions(v, order, hashes, [cos])[0]
    local = keep_decisions(v, order, hashes, [margin], offsets=[levels.offsets])[0]

    def found(decision):
        return sum(int(not decision.kept[b] or not decision.kept[a]) for a, b in pairs)

    assert cos > 0.85 and found(uniform) <= 2
    assert found(local) >= 9
    assert (~local.kept & clean).sum() <= 0.02 * clean.sum()
    # Each removed row records its own pair's cosine, above which its similarity lies.
    gone = np.flatnonzero(~local.kept)
    named = local.duplicate_of[gone]
    expected = margin + levels.offsets[gone] + levels.offsets[named]
    assert np.allclose(local.cosine[gone], expected, atol=1e-6)
    assert np.all(local.similarity[gone] > local.cosine[gone])


def test_the_ceiling_lies_halfway_from_the_highest_null_cosine_to_one():
    assert ceiling_of(0.9) == pytest.approx(0.95)
    assert ceiling_of(0.5) == pytest.approx(0.75)
    assert ceiling_of(1.0) == 1.0 and ceiling_of(1.5) == 1.0
    assert ceiling_of(float("nan")) == 1.0 and ceiling_of(-np.inf) == 1.0


def _dense_capped(x, offsets, cap):
    """Every pair's score by the definition: max(margin, cosine - cap)."""
    s = x @ x.T
    return np.maximum(s - offsets[:, None] - offsets[None, :], s - np.float32(cap))


@pytest.mark.parametrize("join", ["exact", "ann"])
def test_greedy_keep_with_a_ceiling_matches_the_dense_rule(join):
    """High offsets (levels near 1) put most pairs' own threshold above 1: only the cap
    (ceiling less margin) lets their near-identical copies go, and the greedy, its names
    and its scores follow max(margin, cosine - cap) exactly, in either join."""
    rng = np.random.default_rng(7)
    base = _unit(rng, 300)
    x = np.vstack([base, l2_normalize(base[:80] + 0.02 * _unit(rng, 80))])
    offsets = rng.uniform(0.46, 0.5, len(x)).astype(np.float32)
    order = rng.permutation(len(x))
    t, cap = 0.1, 0.8  # a pair is removed at cos > 0.9 whatever its offsets
    d = greedy_keep(x, order, t, block=64, offsets=offsets, offset_cap=cap, join=join, nprobe=64)
    s = _dense_capped(x, offsets, cap)
    kept = np.zeros(len(x), bool)
    for i in order:
        k = np.flatnonzero(kept)
        kept[i] = not (len(k) and s[i, k].max() > t)
    assert np.array_equal(d.kept, kept)
    uncapped = greedy_keep(x, order, t, block=64, offsets=offsets, join=join, nprobe=64)
    assert (~d.kept).sum() == 80 and (~uncapped.kept).sum() == 0  # the cap finds them
    gone = np.flatnonzero(~d.kept)
    named = d.duplicate_of[gone]
    assert np.all(d.kept[named])
    assert np.allclose(d.similarity[gone], s[gone, named], atol=1e-5)
    assert np.allclose(d.similarity[gone], s[gone][:, d.kept].max(axis=1), atol=1e-5)


def test_pair_counts_with_a_ceiling_match_the_dense_rule():
    rng = np.random.default_rng(8)
    base = _unit(rng, 100, 8)
    x = np.vstack([base, l2_normalize(base[:30] + 0.05 * _unit(rng, 30, 8))])
    offsets = rng.uniform(0.2, 0.5, len(x)).astype(np.float32)
    iu = np.triu_indices(len(x), 1)
    for t, cap in [(0.1, 0.8), (0.3, 0.5), (0.2, 2.0)]:
        s = _dense_capped(x, offsets, cap)
        got = count_pairs_above(x, [t], 32, offsets=offsets, offset_cap=cap)[0]
        assert got == int((s[iu] > t).sum())
    assert best_with_cap(np.zeros((3, 0), np.float32), np.zeros(3), np.zeros(0), 0.5)[
        1
    ].tolist() == [
        -1,
        -1,
        -1,
    ]


def _dense_class(rng, n_dense, n_sparse, d=32):
    """Latents of a class whose first n_dense images lie in one tight cluster (unrelated
    images at cosine ~0.995, like calm water) and the rest scattered, and decoys drawn
    alike (what mirrors are: plausible images of the class that copy nothing)."""
    centre = _unit(rng, 1, d)[0]

    def cluster(n):
        return l2_normalize(centre + 0.07 * rng.standard_normal((n, d)).astype(np.float32))

    latents = np.vstack([cluster(n_dense), _unit(rng, n_sparse, d)])
    decoys = np.vstack([cluster(n_dense), _unit(rng, n_sparse, d)])
    return latents, decoys


def test_a_near_identical_copy_in_a_dense_region_is_removed_at_a_budget():
    """Levels near 1 put the pair threshold (margin + both levels) above 1: no pair could
    reach it, and a re-encoded copy (cosine 0.99995) of a calm-water image stayed. The
    budget's ceiling, above every cosine its null reached, removes it; unrelated images
    are removed no more than before, and every removed row records its own threshold."""
    from dedup_assets.core.decision.class_decision import ClassData
    from dedup_assets.core.decision.class_keep import decide_thresholds
    from dedup_assets.core.density.class_density import fit_class_density

    rng = np.random.default_rng(11)
    latents, decoys = _dense_class(rng, 300, 200)
    originals = np.arange(0, 300, 30)  # ten images in the cluster
    copies = l2_normalize(latents[originals] + 0.003 * _unit(rng, 10, 32))
    x = np.vstack([latents, copies])
    n = len(x)
    cos = np.einsum("ij,ij->i", l2_normalize(x[originals]), l2_normalize(copies))
    assert np.all(cos > 0.9999)
    ids = np.array([f"{i:04d}" for i in range(n)])
    data = ClassData(ids, ids.copy(), x, fit_class_density(x, 16), np.zeros((n, 8, 8, 3), np.uint8))
    rows = np.arange(len(decoys))  # decoy k mirrors image k (the copies have none)
    (decided,) = decide_thresholds(
        data, ["2%"], space="raw", policy="first", decoy_latents=decoys, decoy_rows=rows
    )
    r = decided.resolved
    assert r.offsets is not None and r.ceiling is not None
    levels = 2 * r.offsets
    assert r.ceiling > levels.max() and r.ceiling == pytest.approx((1 + levels.max()) / 2)
    assert r.offset_cap == pytest.approx(r.ceiling - r.threshold)
    pair_threshold = r.threshold + r.offsets[originals] + r.offsets[500:]
    assert np.all(pair_threshold > 1.0)  # without the ceiling no copy could go
    k = decided.decision
    found = [
        int(not k.kept[a] or not k.kept[b]) for a, b in zip(originals, range(500, n), strict=True)
    ]
    assert sum(found) == 10
    clean = np.ones(n, bool)
    clean[originals] = clean[500:] = False
    assert (~k.kept & clean).sum() <= 0.02 * clean.sum()
    gone = np.flatnonzero(~k.kept)
    named = k.duplicate_of[gone]
    own = np.minimum(r.threshold + r.offsets[gone] + r.offsets[named], r.ceiling)
    assert np.allclose(k.cosine[gone], own, atol=1e-6) and np.all(k.cosine <= r.ceiling + 1e-6)
    assert np.all(k.similarity[gone] > k.cosine[gone] - 1e-6)
