"""Kurtosis before and after removal, the paper's Theil-Sen regression, and its gate.

Decisions the paper leaves open (PAPER.md section 6), made here:
- kurtosis is the excess (Fisher) kurtosis with plain sample moments (scipy's default
  `bias=True`), so a normal law scores 0; it is undefined (NaN) below 4 images;
- "after" is measured on the same principal axes as "before" (the class's PCA fitted on
  all its images), so both numbers describe the same variable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

MIN_IMAGES_FOR_KURTOSIS = 4


def excess_kurtosis(z: np.ndarray) -> np.ndarray:
    """Excess kurtosis of each column of z (n, k); NaN when n < 4 or a column is constant."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if len(z) < MIN_IMAGES_FOR_KURTOSIS:
        return np.full(z.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = stats.kurtosis(z, axis=0, fisher=True, bias=True)
    k = np.asarray(k, dtype=np.float64)
    k[z.std(axis=0) == 0] = np.nan
    return k


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
    slope, intercept, low, high = stats.theilslopes(y, x)
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


def kurtosis_gate(before: np.ndarray, after: np.ndarray, tolerance: float = 0.0) -> KurtosisGate:
    """Did removal make the distribution less peaked? before/after: (classes, components).

    For each component, the Theil-Sen line evaluated at the median before-kurtosis is
    compared with that median: above it by more than `tolerance` is an error (removal
    made the classes more peaked); above it at all, or equal, is a warning (not reduced).
    """
    before = np.atleast_2d(np.asarray(before, dtype=np.float64))
    after = np.atleast_2d(np.asarray(after, dtype=np.float64))
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} differ in shape")
    regs = tuple(theil_sen(before[:, c], after[:, c], c + 1) for c in range(before.shape[1]))
    severity: GateSeverity = "pass"
    reasons = []
    for r in regs:
        if r.n_classes == 0:
            reasons.append(f"PC{r.component}: no class has {MIN_IMAGES_FOR_KURTOSIS}+ images")
            severity = "error" if severity == "error" else "warn"
            continue
        excess = r.excess_at_median
        if excess > tolerance:
            severity = "error"
            reasons.append(
                f"PC{r.component}: line at median {r.median_before:.3f} is {r.line_at_median:.3f},"
                f" above it by {excess:.3f} > tolerance {tolerance}"
            )
        elif excess >= 0:
            severity = "error" if severity == "error" else "warn"
            reasons.append(f"PC{r.component}: kurtosis not reduced (excess {excess:.3f})")
        else:
            reasons.append(f"PC{r.component}: reduced by {-excess:.3f} at the median")
    return KurtosisGate(severity, regs, tuple(reasons))


def random_removal_excess(
    groups: list[np.ndarray],
    kept_counts: list[int],
    *,
    draws: int = 200,
    seed: int = 0,
    quantile: float = 0.95,
) -> np.ndarray:
    """What the gate would read if each class lost the same number of images at random.

    groups: per class, its (n, k) component scores; kept_counts: images kept per class. The
    `quantile` of the line's excess at the median, per component, over `draws` random
    removals: an observed excess above it is more than chance.
    """
    rng = np.random.default_rng(seed)
    before = np.array([excess_kurtosis(z) for z in groups])
    excess = np.empty((draws, before.shape[1]))
    for d in range(draws):
        after = np.array(
            [
                excess_kurtosis(z[rng.permutation(len(z))[:k]])
                for z, k in zip(groups, kept_counts, strict=True)
            ]
        )
        excess[d] = [r.excess_at_median for r in kurtosis_gate(before, after).regressions]
    return np.nanquantile(excess, quantile, axis=0)
