"""Kurtosis before and after removal, the paper's Theil-Sen regression, and its gate.

Decisions the paper leaves open (PAPER.md section 6), made here:
- kurtosis is the excess (Fisher) kurtosis with plain sample moments (scipy's default
  `bias=True`), so a normal law scores 0; it is undefined (NaN) below 4 images;
- "after" is measured on the same principal axes as "before" (the class's PCA fitted on
  all its images), so both numbers describe the same variable;
- the gate measures only classes with at least MIN_IMAGES_MEASURED images before and
  after removal: a class needs 12 images for three principal components (at most one
  component per 4 images, `class_density.SAMPLES_PER_COMPONENT`), and below that the
  sample kurtosis swings by more than its whole range of interest.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import ndtri

MIN_IMAGES_FOR_KURTOSIS = 4
MIN_IMAGES_MEASURED = 12


def excess_kurtosis(z: np.ndarray) -> np.ndarray:
    """Excess kurtosis of each column of z (n, k); NaN when n < 4 or a column is constant."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    return _excess_kurtosis_stacked(z[None])[0]


def theil_sen_slopes(
    y: np.ndarray, x: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Theil-Sen slope, intercept (median(y) - slope median(x)) and the slope's confidence
    interval after Sen (1968), with ties; the same numbers as `scipy.stats.theilslopes`,
    whose module takes 0.6 s to import in every run."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx = x[:, None] - x
    dy = y[:, None] - y
    rising = dx > 0
    # Three order statistics of the slopes (the median and the interval's ends) found by
    # partitioning, not sorting: a thousand classes have half a million slopes.
    slopes = dy[rising] / dx[rising]
    slope = float(np.median(slopes))
    intercept = float(np.median(y) - slope * np.median(x))

    def tie_term(values: np.ndarray) -> float:
        counts = np.unique(values, return_counts=True)[1]
        counts = counts[counts > 1].astype(np.float64)
        return float((counts * (counts - 1) * (2 * counts + 5)).sum())

    n = len(y)
    variance = (n * (n - 1) * (2 * n + 5) - tie_term(x) - tie_term(y)) / 18.0
    if variance < 0:  # ties in nearly every point: no interval (scipy answers NaN too)
        return slope, intercept, float("nan"), float("nan")
    sigma = np.sqrt(variance)
    z = float(ndtri((1.0 - confidence) / 2.0))
    count = len(slopes)
    upper = min(int(np.round((count - z * sigma) / 2.0)), count - 1)
    lower = max(int(np.round((count + z * sigma) / 2.0)) - 1, 0)
    ranked = np.partition(slopes, sorted({lower, upper}))
    return slope, intercept, float(ranked[lower]), float(ranked[upper])


@dataclass(frozen=True)
class ComponentRegression:
    """Theil-Sen line of kurtosis-after (y) on kurtosis-before (x), one point per class."""

    component: int
    slope: float
    intercept: float
    slope_low: float
    slope_high: float
    median_before: float
    line_at_median: float
    fraction_reduced: float
    n_classes: int

    @property
    def excess_at_median(self) -> float:
        """How far the line lies above y = x at the median before-kurtosis (> 0: more peaked)."""
        return self.line_at_median - self.median_before

    def equation(self) -> str:
        if not np.isfinite(self.slope):
            return "n/a"
        sign = "+" if self.intercept >= 0 else "-"
        return f"{self.slope:.2f}x {sign} {abs(self.intercept):.2f}"


def theil_sen(before: np.ndarray, after: np.ndarray, component: int = 1) -> ComponentRegression:
    """Robust line through (before, after) points, ignoring classes with NaN kurtosis.

    With fewer than two distinct x values a line is undefined: the slope is NaN and the
    median of `after` stands in for the line's value at the median.
    """
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    ok = np.isfinite(before) & np.isfinite(after)
    x, y = before[ok], after[ok]
    n = int(ok.sum())
    if n == 0:
        nan = float("nan")
        return ComponentRegression(component, nan, nan, nan, nan, nan, nan, nan, 0)
    median_x = float(np.median(x))
    reduced = float(np.mean(y < x))
    if len(np.unique(x)) < 2:
        nan = float("nan")
        return ComponentRegression(
            component, nan, nan, nan, nan, median_x, float(np.median(y)), reduced, n
        )
    slope, intercept, low, high = theil_sen_slopes(y, x)
    return ComponentRegression(
        component=component,
        slope=float(slope),
        intercept=float(intercept),
        slope_low=float(low),
        slope_high=float(high),
        median_before=median_x,
        line_at_median=float(slope * median_x + intercept),
        fraction_reduced=reduced,
        n_classes=n,
    )


GateSeverity = Literal["pass", "warn", "error"]


@dataclass(frozen=True)
class KurtosisGate:
    """Outcome of the kurtosis-reduction gate, with the reason for each component."""

    severity: GateSeverity
    regressions: tuple[ComponentRegression, ...]
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return self.severity == "pass"


def kurtosis_gate(
    before: np.ndarray,
    after: np.ndarray,
    tolerance: float = 0.0,
    chance: np.ndarray | None = None,
) -> KurtosisGate:
    """Did removal make the distribution less peaked? before/after: (classes, components).

    For each component, the Theil-Sen line evaluated at the median before-kurtosis is
    compared with that median. The gate fails (error) only when the line lies above it by
    more than `tolerance` *and* by more than `chance[c]`, what removing the same number of
    images per class at random reaches (`random_removal_excess`): removing a few percent
    of a class moves kurtosis by chance, and a fixed tolerance alone blocks correct work.
    Above the median at all, or equal, is a warning (not reduced); below it is a pass.
    """
    before = np.atleast_2d(np.asarray(before, dtype=np.float64))
    after = np.atleast_2d(np.asarray(after, dtype=np.float64))
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ in shape")
    regs = tuple(theil_sen(before[:, c], after[:, c], c + 1) for c in range(before.shape[1]))
    severity: GateSeverity = "pass"
    reasons = []
    for r in regs:
        c = r.component
        if r.n_classes == 0:
            reasons.append(f"PC{c}: no class large enough to measure")
            severity = "error" if severity == "error" else "warn"
            continue
        excess = r.excess_at_median
        by_chance = float(chance[c - 1]) if chance is not None else float("nan")
        limit = max(tolerance, by_chance) if np.isfinite(by_chance) else tolerance
        # Beyond the limit by more than rounding: the line and random removal's quantile are
        # computed by different sums, and a removal random draws also make (one exact copy)
        # gives both the same value up to the last bits (0.84224890688110850 against ...77).
        if excess - limit > GATE_ROUNDING * max(1.0, abs(limit)):
            severity = "error"
            context = (
                f" and the {by_chance:+.3f} that random removal of the same counts stays under"
                if np.isfinite(by_chance)
                else ""
            )
            reasons.append(
                f"PC{c}: line at the median lies {excess:+.3f} above it, beyond the "
                f"tolerance {tolerance}{context}"
            )
        elif excess >= 0:
            severity = "error" if severity == "error" else "warn"
            why = ""
            if excess > tolerance:
                why = f", within what random removal reaches ({by_chance:+.3f})"
            reasons.append(f"PC{c}: kurtosis not reduced (line {excess:+.3f} at the median{why})")
        else:
            reasons.append(f"PC{c}: reduced by {-excess:.3f} at the median")
    return KurtosisGate(severity, regs, tuple(reasons))


GATE_ROUNDING = 1e-9
"""How far beyond its limit an excess must lie to fail the kurtosis gate (`kurtosis_gate`),
relative to the limit: below it, the two are equal but for floating-point rounding."""

# The gate compares three components; each is held to the 1 - 0.05/3 quantile of random
# removal (Bonferroni), so removal at random fails the gate in at most 5% of runs, not 14%.
CHANCE_QUANTILE = 1 - 0.05 / 3
CHANCE_DRAWS = 1000


_DRAWS_AT_ONCE = 32
_ROWS_AT_ONCE = 512  # x draws x 12 columns x 8 bytes: 1.5 MB, a core's cache
_SMALL_CLASS = 256  # up to this many rows, a class's draws are made at once (2 MB of numbers)


_FEW_DRAWN = 8  # up to this many rows drawn per subset, every draw is made at once


def draw_few(rng: np.random.Generator, n: int, side: int, draws: int) -> np.ndarray:
    """(draws, side) rows of distinct indices below n, each row a uniform random subset:
    drawn at once with replacement, rows holding a repeat drawn again (rare with few rows
    of many: a class of 3,000 losing 2 images repeats one in 3,000 rows). A report of ten
    EuroSAT classes that lost an image or two spent 0.02 s in 1,000 calls of `rng.choice`
    a class."""
    picks = rng.integers(0, n, size=(draws, side))
    while True:
        ordered = np.sort(picks, axis=1)
        again = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if not len(again):
            return picks
        picks[again] = rng.integers(0, n, size=(len(again), side))


def _sums_of_rows(powers: np.ndarray, draws: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """(len(draws), columns): the sum of each draw's rows of `powers`, added one row after
    another in the draw's order (what `powers[idx].sum(axis=1)` does, bit for bit). `draws`:
    a list of equal-length row arrays, or a (draws, rows) array.

    The rows of all draws are taken a block at a time into one small buffer laid out (row,
    draw, column), so each addition runs over draws x columns at once, and each block
    continues the running sums (the buffer's first row) in order. Fancy indexing whole
    draws took 13 s for 1,000 draws of 50,000 rows of a class of 100,000; this, about 1 s.
    """
    idx = draws.T if isinstance(draws, np.ndarray) else np.stack(draws, axis=1)  # (rows, draws)
    size, width = idx.shape[0], powers.shape[1]
    buf = np.empty((min(size, _ROWS_AT_ONCE) + 1, idx.shape[1], width))
    acc = None
    for s0 in range(0, size, _ROWS_AT_ONCE):
        block = idx[s0 : s0 + _ROWS_AT_ONCE]
        first = 0 if acc is None else 1
        if acc is not None:
            buf[0] = acc
        np.take(powers, block, axis=0, out=buf[first : first + len(block)], mode="clip")
        acc = buf[: first + len(block)].sum(axis=0)
    return acc


def _kurtosis_of_subsets(z: np.ndarray, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, components) excess kurtosis of `draws` random k-subsets of the rows of z.

    Each subset's first four power sums are the rows' total minus the sums over the
    removed rows (or, when fewer are kept than removed, the sums over the kept ones): a
    draw costs the smaller side, not n, so a class of 100,000 images that loses 2% costs
    2,000 rows a draw. The rows are standardised first so the float64 identities lose
    nothing.
    """
    n, m = z.shape
    if k < MIN_IMAGES_FOR_KURTOSIS:
        return np.full((draws, m), np.nan)
    std = z.std(axis=0)
    x = (z - z.mean(axis=0)) / np.where(std > 0, std, 1.0)
    powers = np.concatenate([x, x**2, x**3, x**4], axis=1)  # (n, 4m)
    total = powers.sum(axis=0)
    side = min(k, n - k)  # rows drawn per subset: the removed ones, or the kept ones
    if side == 0:
        # Nothing removed (or everything): every draw is the class itself, one row of it
        # broadcast (a thousand classes that lost nothing spent 0.5 s here, two reports).
        return np.broadcast_to(_kurtosis_of_sums(total[None], k), (draws, m))
    if n <= _SMALL_CLASS:
        # Every draw at once: the `side` smallest of n uniform numbers are a uniform random
        # subset (a thousand classes of 20 spent 1.4 s of their report in a million calls of
        # `rng.choice`).
        picks = np.argpartition(rng.random((draws, n)), side - 1, axis=1)[:, :side]
        drawn = _sums_of_rows(powers, picks)
    elif side <= _FEW_DRAWN:
        drawn = _sums_of_rows(powers, draw_few(rng, n, side, draws))
    else:
        drawn = np.concatenate(
            [
                _sums_of_rows(
                    powers, [rng.choice(n, side, replace=False, shuffle=False) for _ in chunk]
                )
                for chunk in np.array_split(np.arange(draws), -(-draws // _DRAWS_AT_ONCE))
            ]
        )
    return _kurtosis_of_sums(drawn if side == k else total - drawn, k)


def excess_kurtosis_of_groups(groups: Sequence[np.ndarray]) -> np.ndarray:
    """(groups, m): `excess_kurtosis` of each (n, m) group, the same bits, computed for all
    the groups of one size at once (a thousand classes of 20 took a thousand calls)."""
    groups = [np.asarray(z, dtype=np.float64) for z in groups]
    if not groups:
        return np.zeros((0, 3))
    out = np.empty((len(groups), groups[0].shape[1]))
    sizes: dict[int, list[int]] = {}
    for at, z in enumerate(groups):
        sizes.setdefault(len(z), []).append(at)
    for ats in sizes.values():
        out[ats] = _excess_kurtosis_stacked(np.stack([groups[at] for at in ats]))
    return out


def _excess_kurtosis_stacked(z: np.ndarray) -> np.ndarray:
    """Excess kurtosis of each column of each class of a (classes, n, m) stack, (classes, m);
    NaN when n < 4 or a column is constant (`excess_kurtosis` is a stack of one class)."""
    if z.shape[1] < MIN_IMAGES_FOR_KURTOSIS:
        return np.full((z.shape[0], z.shape[2]), np.nan)
    centred = z - z.mean(axis=1, keepdims=True)
    squares = centred * centred
    m2 = squares.mean(axis=1)
    m4 = (squares * squares).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = m4 / (m2 * m2) - 3.0
    k[z.std(axis=1) == 0] = np.nan
    return k


def _whole_kurtosis_stacked(z: np.ndarray, n: int) -> np.ndarray:
    """(classes, m): what `_kurtosis_of_subsets` gives for a class of a (classes, n, m) stack
    that keeps all its n rows (each of its draws), computed for every class at once."""
    std = z.std(axis=1, keepdims=True)
    x = (z - z.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    total = np.concatenate([x, x**2, x**3, x**4], axis=2).sum(axis=1)  # (classes, 4m)
    return _kurtosis_of_sums(total, n)


def _kurtosis_of_sums(sums: np.ndarray, k: int) -> np.ndarray:
    """Excess kurtosis per row of (rows, 4m) power sums over k standardised rows."""
    e1, e2, e3, e4 = np.split(sums / k, 4, axis=1)
    m2 = e2 - e1**2
    m4 = e4 - 4 * e1 * e3 + 6 * e1**2 * e2 - 3 * e1**4
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m2 > 1e-12, m4 / m2**2 - 3.0, np.nan)


def nanmedian_over_rows(values: np.ndarray) -> np.ndarray:
    """`np.nanmedian(values, axis=1)` of a (draws, classes, m) array, sorted once: numpy's
    takes a Python loop over every (draw, component) from 600 classes on (a thousand
    classes' chance baseline spent half a second there)."""
    if values.shape[1] == 0:
        return np.full((values.shape[0],) + values.shape[2:], np.nan)
    ordered = np.sort(values, axis=1)  # NaN sort last
    count = np.sum(~np.isnan(values), axis=1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0), axis=1)
    high = np.take_along_axis(ordered, np.maximum(count // 2, 0), axis=1)
    with np.errstate(invalid="ignore"):
        middle = np.where(count > 0, (low + high) / 2, np.nan)
    return middle[:, 0]


def random_removal_excess(
    groups: list[np.ndarray],
    kept_counts: list[int],
    *,
    draws: int = CHANCE_DRAWS,
    seed: int = 0,
    quantile: float = CHANCE_QUANTILE,
) -> np.ndarray:
    """What the gate would read if each class lost the same number of images at random.

    groups: per class, its (n, k) component scores; kept_counts: images kept per class. The
    `quantile` of the line's excess at the median, per component, over `draws` random
    removals: an observed excess above it is more than chance. With scipy's Theil-Sen
    intercept (`median(y) - slope * median(x)`), the line's value at the median x is the
    median of y, so the excess is median(after) - median(before) over classes: that is
    what is drawn here, vectorised over draws.
    """
    if not groups:
        return np.full(3, np.nan)
    rng = np.random.default_rng(seed)
    groups = [np.asarray(z, dtype=np.float64) for z in groups]
    m = groups[0].shape[1]
    before = np.empty((len(groups), m))
    after = np.empty((draws, len(groups), m))
    # Classes that drew nothing at random (none removed, or too few kept: most classes of a
    # run) are computed together, classes of one size at a time, with the same operations
    # a class alone takes: a thousand classes of 20 spent 0.2 s a report in per-class calls.
    # The classes that draw do so one after another in class order, as the seeded stream
    # has always been consumed, so the baseline's bits do not change.
    sizes: dict[int, list[int]] = {}
    for at, (z, k) in enumerate(zip(groups, kept_counts, strict=True)):
        if k < MIN_IMAGES_FOR_KURTOSIS or min(k, len(z) - k) == 0:
            sizes.setdefault(len(z), []).append(at)
        else:
            before[at] = excess_kurtosis(z)
            after[:, at] = _kurtosis_of_subsets(z, k, draws, rng)
    for n, ats in sizes.items():
        stacked = np.stack([groups[at] for at in ats])  # (classes, n, m)
        kept = np.array([kept_counts[at] for at in ats])
        before[ats] = _excess_kurtosis_stacked(stacked)
        if n >= MIN_IMAGES_FOR_KURTOSIS:
            whole = _whole_kurtosis_stacked(stacked, n)
            after[:, ats] = np.where((kept >= MIN_IMAGES_FOR_KURTOSIS)[:, None], whole, np.nan)
        else:
            after[:, ats] = np.nan
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok = np.isfinite(before)[None] & np.isfinite(after)
        med_after = nanmedian_over_rows(np.where(ok, after, np.nan))
        if (ok == ok[:1]).all():  # the same classes measured in every draw: one median
            med_before = nanmedian_over_rows(np.where(ok[:1], before[None], np.nan))
        else:
            med_before = nanmedian_over_rows(np.where(ok, before[None], np.nan))
        excess = med_after - med_before  # (draws, m)
        return np.array(
            [np.nanquantile(c, quantile) if np.isfinite(c).any() else np.nan for c in excess.T]
        )
