"""Tests for kurtosis, Theil-Sen regression and the kurtosis gate
(dedup_assets.core.quality.statistics)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dedup_assets.core.decision.calibration import binomial_quantile
from dedup_assets.core.quality.statistics import (
    excess_kurtosis,
    kurtosis_gate,
    random_removal_excess,
    theil_sen,
    theil_sen_slopes,
)


def test_excess_kurtosis_of_normal_is_zero():
    z = np.random.default_rng(0).normal(size=(200_000, 3))
    k = excess_kurtosis(z)
    assert k.shape == (3,)
    assert np.all(np.abs(k) < 0.1)


def test_excess_kurtosis_of_laplace_is_three():
    z = np.random.default_rng(1).laplace(size=(400_000, 2))
    k = excess_kurtosis(z)
    assert np.all(np.abs(k - 3.0) < 0.3)


def test_excess_kurtosis_of_uniform_is_minus_six_fifths():
    z = np.random.default_rng(2).uniform(size=100_000)
    k = excess_kurtosis(z)
    assert k.shape == (1,)
    assert k[0] == pytest.approx(-1.2, abs=0.03)


def test_excess_kurtosis_uses_plain_moments():
    # (-1, -1, 1, 1): m4 / m2^2 = 1, excess -2 (biased estimator, no small-sample correction)
    k = excess_kurtosis(np.array([[-1.0], [-1.0], [1.0], [1.0]]))
    assert k[0] == pytest.approx(-2.0, abs=1e-12)
    x = np.array([0.0, 0.0, 0.0, 0.0, 10.0])
    c = x - x.mean()
    ref = np.mean(c**4) / np.mean(c**2) ** 2 - 3.0
    assert excess_kurtosis(x)[0] == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_excess_kurtosis_is_nan_below_four(n):
    z = np.random.default_rng(n).normal(size=(n, 2))
    k = excess_kurtosis(z)
    assert k.shape == (2,)
    assert np.isnan(k).all()


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_excess_kurtosis_constant_column_is_nan():
    z = np.random.default_rng(3).normal(size=(50, 3))
    z[:, 1] = 4.0
    k = excess_kurtosis(z)
    assert np.isnan(k[1]) and np.isfinite(k[[0, 2]]).all()


@pytest.mark.parametrize("n", [4, 5, 12, 300])
def test_excess_kurtosis_is_scipys_with_plain_moments(n):
    stats = pytest.importorskip("scipy.stats")
    z = np.random.default_rng(n).standard_t(5, size=(n, 6))
    z[:, 2] = np.round(z[:, 2])  # ties
    np.testing.assert_allclose(
        excess_kurtosis(z), stats.kurtosis(z, axis=0, fisher=True, bias=True), rtol=1e-12
    )


@pytest.mark.parametrize("n", [2, 3, 5, 10, 31, 100, 1000])
def test_theil_sen_slopes_are_scipys_with_and_without_ties(n):
    """Slope, intercept and the 95% interval of the slope, as scipy.stats.theilslopes (not
    imported by a run: 0.6 s of every process), over random points and rounded ones; the
    interval's ends are slopes of the points, the very ones scipy's sort picks."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n)
    compared = 0
    for draw in range(30):
        x, y = rng.normal(size=n), rng.normal(size=n)
        if draw % 3 == 0:
            x, y = np.round(x), np.round(y)
        if len(np.unique(x)) < 2:
            continue
        ours, theirs = theil_sen_slopes(y, x), tuple(stats.theilslopes(y, x))
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(ours[2:], theirs[2:])
        compared += 1
    assert compared >= 20


def test_binomial_quantile_is_scipys_ppf_at_every_size():
    stats = pytest.importorskip("scipy.stats")
    sizes = np.concatenate([np.arange(0, 2001), [27_000, 100_000, 1_000_000]])
    for budget in (0.0005, 0.001, 0.01, 0.02, 0.1, 0.5):
        np.testing.assert_array_equal(
            binomial_quantile(0.99, sizes, budget), stats.binom.ppf(0.99, sizes, budget)
        )


def test_theil_sen_recovers_line_despite_outlier():
    x = np.arange(11, dtype=float)
    y = 0.7 * x + 0.25
    y[10] = 1000.0  # gross outlier at the largest x
    r = theil_sen(x, y, component=2)
    assert r.component == 2
    assert r.slope == pytest.approx(0.7, abs=1e-12)
    assert r.intercept == pytest.approx(0.25, abs=1e-12)
    assert r.slope_low <= 0.7 <= r.slope_high
    assert r.n_classes == 11
    assert r.median_before == 5.0
    assert r.line_at_median == pytest.approx(0.7 * 5 + 0.25, abs=1e-12)
    assert r.excess_at_median == pytest.approx(0.7 * 5 + 0.25 - 5, abs=1e-12)
    # y < x everywhere except the outlier (and x = 0, where y = 0.25)
    assert r.fraction_reduced == pytest.approx(9 / 11)
    assert r.equation() == "0.70x + 0.25"


def test_theil_sen_ignores_nan_points():
    x = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.0])
    y = np.array([2.0, 4.0, 100.0, np.nan, 8.0, 10.0])
    r = theil_sen(x, y)
    assert r.n_classes == 4
    assert r.slope == pytest.approx(2.0)
    assert r.intercept == pytest.approx(0.0, abs=1e-12)


def test_theil_sen_degenerate_inputs():
    r = theil_sen(np.array([np.nan, 1.0]), np.array([1.0, np.nan]))
    assert r.n_classes == 0 and np.isnan(r.slope)
    r = theil_sen(np.array([2.0, 2.0, 2.0]), np.array([1.0, 3.0, 2.0]))
    assert r.n_classes == 3
    assert np.isnan(r.slope) and r.equation() == "n/a"
    assert r.median_before == 2.0 and r.line_at_median == 2.0
    assert r.excess_at_median == 0.0


BEFORE = np.array(
    [
        [2.0, 1.0, 0.5],
        [3.0, 4.0, 1.5],
        [5.0, 2.5, 0.8],
        [1.0, 6.0, 2.2],
        [4.0, 3.0, 1.1],
    ]
)


def test_gate_passes_when_kurtosis_halves():
    g = kurtosis_gate(BEFORE, 0.5 * BEFORE, tolerance=0.1)
    assert g.severity == "pass" and g.passed
    assert len(g.regressions) == 3 and len(g.reasons) == 3
    for c, r in enumerate(g.regressions):
        assert r.component == c + 1
        assert r.slope == pytest.approx(0.5)
        assert r.intercept == pytest.approx(0.0, abs=1e-12)
        assert r.fraction_reduced == 1.0
        assert r.excess_at_median == pytest.approx(-0.5 * np.median(BEFORE[:, c]))


def test_gate_errors_when_kurtosis_rises_beyond_tolerance():
    g = kurtosis_gate(BEFORE, BEFORE + 1.0, tolerance=0.1)
    assert g.severity == "error" and not g.passed
    for r in g.regressions:
        assert r.excess_at_median == pytest.approx(1.0)
        assert r.fraction_reduced == 0.0


def test_gate_warns_when_kurtosis_unchanged():
    g = kurtosis_gate(BEFORE, BEFORE.copy(), tolerance=0.1)
    assert g.severity == "warn"
    assert all(r.excess_at_median == pytest.approx(0.0, abs=1e-12) for r in g.regressions)
    g0 = kurtosis_gate(BEFORE, BEFORE.copy(), tolerance=0.0)
    assert g0.severity == "warn"


def test_gate_warns_when_rise_is_within_tolerance():
    g = kurtosis_gate(BEFORE, BEFORE + 0.05, tolerance=0.1)
    assert g.severity == "warn"
    # the same rise with zero tolerance is an error
    assert kurtosis_gate(BEFORE, BEFORE + 0.05, tolerance=0.0).severity == "error"


def test_gate_worst_component_decides():
    after = 0.5 * BEFORE
    after[:, 1] = BEFORE[:, 1] + 1.0  # only PC2 rises
    g = kurtosis_gate(BEFORE, after, tolerance=0.1)
    assert g.severity == "error"
    assert g.reasons[1].startswith("PC2") and "above" in g.reasons[1]
    after[:, 1] = BEFORE[:, 1]  # PC2 unchanged
    assert kurtosis_gate(BEFORE, after, tolerance=0.1).severity == "warn"


def test_gate_ignores_nan_classes():
    # each extra class has a NaN kurtosis (before or after) in every component
    before = np.vstack([BEFORE, [[np.nan, 50.0, 50.0]], [[50.0, np.nan, 50.0]]])
    after = np.vstack([0.5 * BEFORE, [[500.0, np.nan, np.nan]], [[np.nan, 500.0, np.nan]]])
    g = kurtosis_gate(before, after, tolerance=0.1)
    ref = kurtosis_gate(BEFORE, 0.5 * BEFORE, tolerance=0.1)
    assert g.severity == "pass"
    for r, r0 in zip(g.regressions, ref.regressions, strict=True):
        assert r.n_classes == 5
        assert r.slope == pytest.approx(r0.slope)
        assert r.intercept == pytest.approx(r0.intercept, abs=1e-12)


def test_gate_single_class():
    before = np.array([[3.0, 2.0, 1.0]])
    g = kurtosis_gate(before, 0.5 * before)
    assert g.severity == "pass"
    for c, r in enumerate(g.regressions):
        assert np.isnan(r.slope) and r.n_classes == 1
        assert r.excess_at_median == pytest.approx(-0.5 * before[0, c])
    assert kurtosis_gate(before, before + 1.0, tolerance=0.1).severity == "error"
    assert kurtosis_gate(before, before, tolerance=0.1).severity == "warn"
    # a 1-D row of one class per component also works
    assert kurtosis_gate(np.array([3.0, 2.0]), np.array([1.0, 1.0])).severity == "pass"


def test_gate_without_usable_classes_warns():
    nan = np.full((3, 2), np.nan)
    g = kurtosis_gate(nan, nan)
    assert g.severity == "warn"
    assert all(r.n_classes == 0 for r in g.regressions)


def test_gate_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        kurtosis_gate(np.zeros((4, 3)), np.zeros((4, 2)))


def test_gate_errors_only_beyond_both_tolerance_and_chance():
    after = BEFORE + 0.3
    assert kurtosis_gate(BEFORE, after, 0.1).severity == "error"  # no chance given
    assert kurtosis_gate(BEFORE, after, 0.1, np.array([0.5, 0.5, 0.5])).severity == "warn"
    g = kurtosis_gate(BEFORE, after, 0.1, np.array([0.5, 0.2, 0.5]))
    assert g.severity == "error"
    assert g.reasons[1].startswith("PC2") and "+0.200 that random removal" in g.reasons[1]
    assert "within what random removal reaches (+0.500)" in g.reasons[0]


def test_gate_does_not_fail_on_a_chance_level_equal_but_for_rounding():
    """One exact copy removed: random removal of one image a class often removes the same
    image, so its quantile equals the observed excess, computed by another sum: the two
    came out 8e-16 apart and the gate held the clean copy back (exit 3) for no effect."""
    after = BEFORE + 0.3
    g = kurtosis_gate(BEFORE, after, 0.1)
    excess = np.array([r.excess_at_median for r in g.regressions])
    below = np.nextafter(excess, -np.inf)  # random removal reached the same, a bit under
    assert kurtosis_gate(BEFORE, after, 0.1, below).severity == "warn"
    assert kurtosis_gate(BEFORE, after, 0.1, excess - 1e-3).severity == "error"


def test_random_removal_excess_matches_a_slow_reference():
    """The vectorised draw equals, draw for draw in distribution, the gate's own reading."""
    rng = np.random.default_rng(3)
    groups = [rng.standard_t(5, size=(int(n), 3)) for n in rng.integers(40, 120, 7)]
    counts = [len(g) - 10 for g in groups]
    fast = random_removal_excess(groups, counts, draws=2000, quantile=0.9)
    before = np.array([excess_kurtosis(g) for g in groups])
    slow = []
    for _ in range(400):
        after = np.array(
            [
                excess_kurtosis(g[rng.permutation(len(g))[:k]])
                for g, k in zip(groups, counts, strict=True)
            ]
        )
        slow.append([r.excess_at_median for r in kurtosis_gate(before, after).regressions])
    np.testing.assert_allclose(fast, np.quantile(np.array(slow), 0.9, axis=0), atol=0.05)


def _chance_one_class_at_a_time(groups, counts, draws, seed, quantile):
    """The chance baseline as computed before classes were batched: each class's before
    kurtosis and draws in class order from one seeded stream, a median per draw."""
    from dedup_assets.core.quality.statistics import _kurtosis_of_subsets, nanmedian_over_rows

    rng = np.random.default_rng(seed)
    before = np.array([excess_kurtosis(z) for z in groups])
    after = np.stack(
        [_kurtosis_of_subsets(z, k, draws, rng) for z, k in zip(groups, counts, strict=True)],
        axis=1,
    )
    ok = np.isfinite(before)[None] & np.isfinite(after)
    excess = nanmedian_over_rows(np.where(ok, after, np.nan)) - nanmedian_over_rows(
        np.where(ok, before[None], np.nan)
    )
    return np.array(
        [np.nanquantile(c, quantile) if np.isfinite(c).any() else np.nan for c in excess.T]
    )


@pytest.mark.parametrize("seed", range(12))
def test_random_removal_excess_is_the_class_by_class_baseline_bit_for_bit(seed):
    """Classes that draw nothing (none removed, too few kept, empty, constant columns) are
    computed together by size, the others draw in class order: the same bits as one class
    at a time, for runs of 1 to 80 classes of 0 to 300 images."""
    rng = np.random.default_rng(seed)
    groups, counts = [], []
    for _ in range(int(rng.integers(1, 80))):
        n = int(rng.choice([0, 1, 3, 4, 5, 20, 20, 20, 21, 64, 257, 300]))
        z = rng.standard_t(5, size=(n, 3)) * rng.choice([1e-3, 1.0, 1e3])
        if n and rng.random() < 0.1:
            z[:, 1] = 1.5  # a constant component: kurtosis undefined
        groups.append(z)
        counts.append(min(n, int(rng.choice([0, 1, 3, 4, n, n, n, max(n - 1, 0), n // 2]))))
    draws = int(rng.choice([1, 7, 200]))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = _chance_one_class_at_a_time(groups, counts, draws, seed, 0.95)
        got = random_removal_excess(groups, counts, draws=draws, seed=seed, quantile=0.95)
    np.testing.assert_array_equal(got, expected)


def test_removing_planted_copies_does_not_fail_the_gate():
    """Classes of real-looking scores with 5% planted copies (duplicated rows); the removal
    takes exactly the copies away. That is correct work: the gate must not block it."""
    rng = np.random.default_rng(11)
    before, after, groups, counts = [], [], [], []
    for _ in range(10):
        z = rng.standard_t(8, size=(400, 3))
        copies = z[rng.choice(400, 20, replace=False)] + rng.normal(0, 1e-3, (20, 3))
        full = np.vstack([z, copies])
        before.append(excess_kurtosis(full))
        after.append(excess_kurtosis(z))
        groups.append(full)
        counts.append(400)
    chance = random_removal_excess(groups, counts)
    g = kurtosis_gate(np.array(before), np.array(after), 0.1, chance)
    assert g.severity != "error", g.reasons


@pytest.mark.parametrize(
    ("n", "k"),
    [(500, 480), (500, 30), (200, 190), (200, 12), (24, 20), (3000, 2999), (3000, 2997)],
)  # few removed / few kept; up to 256 rows a class's subsets are drawn at once
# (`_SMALL_CLASS`), above one by one, or at once for a few rows a draw (`draw_few`)
def test_random_subset_kurtosis_matches_drawing_the_subsets(n, k):
    from dedup_assets.core.quality.statistics import _kurtosis_of_subsets

    z = np.random.default_rng(1).standard_t(5, (n, 3))
    fast = _kurtosis_of_subsets(z, k, 2000, np.random.default_rng(0))
    slow = np.array(
        [
            excess_kurtosis(z[np.random.default_rng(i).choice(n, k, replace=False)])
            for i in range(2000)
        ]
    )
    from scipy.stats import ks_2samp

    for c in range(3):  # the same distribution of draws (two-sample Kolmogorov-Smirnov)
        assert ks_2samp(fast[:, c], slow[:, c]).pvalue > 0.001, c


def _subsets_by_blocks(z, k, draws, rng, budget=4_000_000):
    """`_kurtosis_of_subsets` as it was written before 2026-12-03: blocks of draws gathered
    by fancy indexing and summed at once (kept to prove the faster loop changes no bit);
    its subsets drawn as the function draws them (`rng.choice` per draw, or for a small
    class one matrix of uniform numbers, drawn the same in blocks or at once)."""
    from dedup_assets.core.quality.statistics import _FEW_DRAWN, _SMALL_CLASS, draw_few

    n, m = z.shape
    std = z.std(axis=0)
    x = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
    powers = np.concatenate([x, x**2, x**3, x**4], axis=1)
    total = powers.sum(axis=0)
    side = min(k, n - k)
    out = np.empty((draws, m))
    step = max(1, budget // max(side * powers.shape[1], 1))
    for d0 in range(0, draws, step):
        d1 = min(draws, d0 + step)
        if side == 0:
            sums = np.broadcast_to(total, (d1 - d0, len(total)))
        else:
            if n <= _SMALL_CLASS:  # small classes: every draw's subset from one matrix
                idx = np.argpartition(rng.random((d1 - d0, n)), side - 1, axis=1)[:, :side]
            elif side <= _FEW_DRAWN:  # few rows a draw: every draw at once
                idx = draw_few(rng, n, side, d1 - d0)
            else:
                idx = np.stack(
                    [rng.choice(n, side, replace=False, shuffle=False) for _ in range(d1 - d0)]
                )
            drawn = powers[idx].sum(axis=1)
            sums = drawn if side == k else total - drawn
        e1, e2, e3, e4 = np.split(sums / k, 4, axis=1)
        m2 = e2 - e1**2
        m4 = e4 - 4 * e1 * e3 + 6 * e1**2 * e2 - 3 * e1**4
        with np.errstate(invalid="ignore", divide="ignore"):
            out[d0:d1] = np.where(m2 > 1e-12, m4 / m2**2 - 3.0, np.nan)
    return out


@pytest.mark.parametrize(
    ("n", "k", "budget"),
    [
        (500, 480, 4_000_000),
        (500, 30, 4_000_000),
        (5_000, 2_500, 4_000_000),
        (600, 300, 5_000),
        (40, 40, 4_000_000),
        (60, 20, 100),
        (20, 19, 4_000_000),
        (256, 200, 1_000),
        (257, 200, 1_000),
        (3_000, 2_998, 4_000_000),
    ],
)
def test_random_subset_kurtosis_is_bit_identical_to_the_block_version(n, k, budget):
    from dedup_assets.core.quality.statistics import _kurtosis_of_subsets

    z = np.random.default_rng(n + k).standard_t(5, (n, 3))
    fast = _kurtosis_of_subsets(z, k, 300, np.random.default_rng(7))
    blocks = _subsets_by_blocks(z, k, 300, np.random.default_rng(7), budget)
    assert np.array_equal(fast, blocks, equal_nan=True)


@pytest.mark.parametrize(
    ("shape", "missing"),
    [
        ((300, 700, 3), 0.0),
        ((300, 700, 3), 0.2),
        ((50, 601, 3), 0.9),
        ((7, 5, 3), 0.3),
        ((3, 1, 2), 0.0),
        ((4, 2, 3), 1.0),
        ((2, 0, 3), 0.0),
        ((5, 4, 3), 0.5),
    ],
)
def test_nanmedian_over_rows_is_numpys(shape, missing):
    """The chance baseline's medians over classes: numpy's `nanmedian` to the bit, odd and
    even counts, all-NaN columns, no classes at all."""
    from dedup_assets.core.quality.statistics import nanmedian_over_rows

    rng = np.random.default_rng(len(shape) + shape[1])
    values = rng.standard_t(4, shape)
    values[rng.random(shape) < missing] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(values, axis=1)
    assert np.array_equal(nanmedian_over_rows(values), expected, equal_nan=True)


@pytest.mark.parametrize("n", [4, 20, 300, 1000])
def test_a_class_that_loses_nothing_reads_its_own_kurtosis_in_every_draw(n):
    """Nothing removed: every draw is the whole class, its kurtosis the class's own; no
    random number is drawn, so the classes after it draw what they drew before."""
    from dedup_assets.core.quality.statistics import _kurtosis_of_subsets

    z = np.random.default_rng(n).standard_t(5, (n, 3))
    rng = np.random.default_rng(0)
    out = _kurtosis_of_subsets(z, n, 500, rng)
    assert out.shape == (500, 3)
    assert (out == out[0]).all()
    np.testing.assert_allclose(out[0], excess_kurtosis(z), rtol=1e-9, atol=1e-12)
    assert rng.random() == np.random.default_rng(0).random()


@pytest.mark.parametrize(("n", "side"), [(2, 1), (2, 2), (3, 2), (300, 1), (300, 8), (5, 5)])
def test_a_few_rows_drawn_at_once_are_distinct_and_uniform(n, side):
    """`draw_few`: each row a set of `side` distinct indices below n, every index as likely
    (chi-square over 20,000 rows), every unordered pair as likely for a small n."""
    from scipy.stats import chisquare

    from dedup_assets.core.quality.statistics import draw_few

    rows = draw_few(np.random.default_rng(n * 10 + side), n, side, 20_000)
    assert rows.shape == (20_000, side)
    assert ((rows >= 0) & (rows < n)).all()
    assert (np.sort(rows, axis=1)[:, 1:] != np.sort(rows, axis=1)[:, :-1]).all()
    if side < n:
        counts = np.bincount(rows.ravel(), minlength=n)
        assert chisquare(counts).pvalue > 0.001
    if 2 < n <= 5 and side == 2:
        pairs = np.unique(np.sort(rows, axis=1), axis=0, return_counts=True)[1]
        assert len(pairs) == n * (n - 1) // 2 and chisquare(pairs).pvalue > 0.001


@pytest.mark.parametrize("seed", range(5))
def test_excess_kurtosis_of_groups_is_each_groups_bit_for_bit(seed):
    """Groups of one size computed together give each group's own `excess_kurtosis`, bit
    for bit: sizes 0 to 300 in any order, constant columns (NaN), scales far apart."""
    from dedup_assets.core.quality.statistics import excess_kurtosis_of_groups

    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(int(rng.integers(1, 60))):
        n = int(rng.choice([0, 1, 3, 4, 5, 20, 20, 21, 300]))
        z = rng.standard_t(5, size=(n, 3)) * rng.choice([1e-4, 1.0, 1e4])
        if n and rng.random() < 0.2:
            z[:, int(rng.integers(3))] = -0.5
        groups.append(z)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        together = excess_kurtosis_of_groups(groups)
        alone = np.array([excess_kurtosis(z) for z in groups])
    np.testing.assert_array_equal(together, alone)
    assert excess_kurtosis_of_groups([]).shape == (0, 3)
