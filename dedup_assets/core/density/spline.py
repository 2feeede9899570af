"""Quadratic B-spline density estimates (1-D marginals and their product).

The 1-D estimate smooths a histogram with the quadratic B-spline kernel::

    f(t) = (1/h) * sum_i B_{2,h}(t - t_i) * p_i,      t_i = origin + i*h

where ``p_i`` is the fraction of samples in the cell ``[t_i - h/2, t_i + h/2)``
centred on node ``i``.  Grid convention: node 0 sits at ``min(x)`` and the last
node is the one whose cell contains ``max(x)``, so the density is supported on
``[t_0 - 3h/2, t_last + 3h/2]``.

Working in grid units ``u = (t - origin) / h``, the point ``t`` falls in the
cell of node ``j = floor(u + 1/2)`` at offset ``s = u - j`` in ``[-1/2, 1/2)``.
Only nodes ``j-1, j, j+1`` contribute there, with weights that are quadratic
in ``s``, so ``f`` is a quadratic on every cell and its CDF is a cubic.  This
gives O(1) closed forms for ``pdf`` and ``cdf`` and a cheap, exact quadrature
for the entropy.

The n-dimensional model is the product of 1-D marginals fitted on (assumed
independent, e.g. principal) components.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Self

import numpy as np
from scipy.special import ndtri

__all__ = [
    "BinRule",
    "MAX_NODES",
    "PDF_FLOOR",
    "ProductSplineDensity",
    "SplineDensity1D",
    "bspline2_cdf",
    "bspline2_kernel",
    "grid_step",
]


class BinRule(StrEnum):
    """Histogram grid-step rule: Freedman-Diaconis, Scott or Sturges."""

    fd = "fd"
    scott = "scott"
    sturges = "sturges"


#: ``logpdf`` floors the density at this value so the log is finite everywhere
#: (log(1e-300) ~ -690.8 per marginal outside the support).
PDF_FLOOR = 1e-300

#: Upper bound on the number of grid nodes of one marginal.  A step that would
#: need more nodes (extreme outliers, tiny IQR) is widened to
#: ``range / (MAX_NODES - 1)`` to keep memory bounded.
MAX_NODES = 100_000

# Gauss-Legendre rule on a unit-length cell (offsets in [-1/2, 1/2], weights sum to 1).
_GL_X, _GL_W = np.polynomial.legendre.leggauss(16)
_GL_X = _GL_X / 2.0
_GL_W = _GL_W / 2.0


def bspline2_kernel(t: np.ndarray, h: float) -> np.ndarray:
    """Quadratic B-spline kernel ``B_{2,h}(t)``: support ``[-3h/2, 3h/2]``, peak 3/4, integral ``h``."""
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"kernel width h must be finite and > 0, got {h!r}")
    u = np.abs(np.asarray(t, dtype=np.float64)) / h
    inner = (3.0 - 4.0 * u**2) / 4.0
    outer = (2.0 * u - 3.0) ** 2 / 8.0
    return np.where(u <= 0.5, inner, np.where(u < 1.5, outer, 0.0))


def bspline2_cdf(u: np.ndarray) -> np.ndarray:
    """CDF of the unit kernel: ``int_{-inf}^{u h} B_{2,h}(s) ds / h`` (``u`` in units of ``h``).

    Piecewise cubic: 0 below -3/2, ``(2u+3)^3/48`` up to -1/2, ``1/2 + 3u/4 - u^3/3``
    up to 1/2, ``1 - (3-2u)^3/48`` up to 3/2, and 1 above.
    """
    u = np.asarray(u, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # far tails are overwritten below
        left = (2.0 * u + 3.0) ** 3 / 48.0
        mid = 0.5 + 0.75 * u - u**3 / 3.0
        right = 1.0 - (3.0 - 2.0 * u) ** 3 / 48.0
    out = np.where(u < -0.5, left, np.where(u <= 0.5, mid, right))
    out = np.where(u <= -1.5, 0.0, np.where(u >= 1.5, 1.0, out))
    return out


def _fallback_step(x: np.ndarray) -> float:
    """Tiny positive step for degenerate (constant) data: 1e-6 of the magnitude, or 1.0."""
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    step = 1e-6 * scale
    return step if np.isfinite(step) and step > 0 else 1.0


def _validate_1d(x: np.ndarray, what: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty: cannot fit a density to no samples")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{what} contains {bad} non-finite value(s) (NaN or inf)")
    return arr


def grid_step(x: np.ndarray, rule: BinRule = "fd") -> float:
    """Histogram bin width for the sample ``x`` by a classical rule.

    ``fd``: ``2 IQR n^(-1/3)``; ``scott``: ``3.49 std n^(-1/3)``; ``sturges``:
    ``range / (ceil(log2 n) + 1)``.  Degenerate spreads fall back (fd -> scott ->
    a tiny step scaled to ``|x|``, or 1.0), so the result is always finite and > 0.
    """
    x = _validate_1d(x)
    n = x.size
    if rule not in ("fd", "scott", "sturges"):
        raise ValueError(f"unknown bin rule {rule!r}; expected 'fd', 'scott' or 'sturges'")
    if rule == "sturges":
        with np.errstate(over="ignore"):
            step = float(np.ptp(x)) / (np.ceil(np.log2(n)) + 1.0)
        return step if np.isfinite(step) and step > 0 else _fallback_step(x)
    if rule == "fd":
        q25, q75 = quartiles(x)
        step = 2.0 * float(q75 - q25) * n ** (-1.0 / 3.0)
        if np.isfinite(step) and step > 0:
            return step
    # scott (also the fd fallback)
    with np.errstate(over="ignore", invalid="ignore"):  # huge |x|: inf std -> fallback
        std = float(np.std(x, ddof=1)) if n > 1 else 0.0
    step = 3.49 * std * n ** (-1.0 / 3.0)
    return step if np.isfinite(step) and step > 0 else _fallback_step(x)


def quartiles(x: np.ndarray) -> tuple[float, float]:
    """The 25th and 75th percentiles of a non-empty 1-D float64 sample, bit for bit what
    `np.percentile(x, [25, 75])` gives (its linear method: the same index, weight and
    interpolation, the same float operations), from a partition at four places. numpy's
    call costs about 60 us on a small sample, and a report of a thousand classes fits twelve
    thousand spline marginals."""
    n = x.size
    where = []
    for q in (0.25, 0.75):
        v = (n - 1) * q
        i = n - 1 if v >= n - 1 else math.floor(v)
        where.append((v, i))
    places = sorted({j for _, i in where for j in (i, min(i + 1, n - 1))})
    part = np.partition(x, places) if n > 4 else np.sort(x)
    out = []
    for v, i in where:
        if i == n - 1:
            out.append(float(part[n - 1]))
            continue
        a, b = float(part[i]), float(part[i + 1])
        gamma = v - i
        d = b - a
        out.append(b - d * (1.0 - gamma) if gamma >= 0.5 else a + d * gamma)
    return out[0], out[1]


def _as_float_array(t: np.ndarray) -> np.ndarray:
    return np.asarray(t, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class SplineDensity1D:
    """Quadratic B-spline smoothed histogram on a uniform grid (see module docstring)."""

    origin: float  # position of node 0
    step: float  # grid step h
    freqs: np.ndarray  # relative frequencies p_i of the node cells, sum 1

    def __post_init__(self) -> None:
        origin = float(self.origin)
        step = float(self.step)
        freqs = np.array(self.freqs, dtype=np.float64, copy=True)
        if not np.isfinite(origin):
            raise ValueError(f"origin must be finite, got {origin!r}")
        if not (np.isfinite(step) and step > 0):
            raise ValueError(f"step must be finite and > 0, got {step!r}")
        if freqs.ndim != 1 or freqs.size == 0:
            raise ValueError(f"freqs must be a non-empty 1-D array, got shape {freqs.shape}")
        if not np.all(np.isfinite(freqs)) or np.any(freqs < 0):
            raise ValueError("freqs must be finite and non-negative")
        if abs(float(freqs.sum()) - 1.0) > 1e-6:
            raise ValueError(f"freqs must sum to 1, got {float(freqs.sum())!r}")
        freqs.flags.writeable = False
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "freqs", freqs)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, x: np.ndarray, rule: BinRule = "fd", step: float | None = None) -> Self:
        """Fit to the sample ``x`` with step ``step`` (or ``grid_step(x, rule)``).

        Node 0 is at ``min(x)``; cells are ``[t_i - h/2, t_i + h/2)``.  If the
        range would need more than ``MAX_NODES`` nodes the step is widened.
        Raises ``ValueError`` on empty, non-1-D or non-finite input.
        """
        x = _validate_1d(x)
        if step is None:
            h = grid_step(x, rule)
        else:
            h = float(step)
            if not (np.isfinite(h) and h > 0):
                raise ValueError(f"step must be finite and > 0, got {step!r}")
        lo = float(x.min())
        span = float(x.max()) - lo
        if span / h + 1.0 > MAX_NODES:
            h = span / (MAX_NODES - 1)
        idx = np.floor((x - lo) / h + 0.5).astype(np.int64)
        counts = np.bincount(idx)
        return cls(origin=lo, step=h, freqs=counts / x.size)

    # --------------------------------------------------------------- geometry
    @property
    def n_nodes(self) -> int:
        """Number of grid nodes ``m``."""
        return int(self.freqs.size)

    @property
    def nodes(self) -> np.ndarray:
        """Node positions ``t_i = origin + i*h``."""
        return self.origin + self.step * np.arange(self.n_nodes, dtype=np.float64)

    @property
    def support(self) -> tuple[float, float]:
        """Closed support ``[t_0 - 3h/2, t_last + 3h/2]``."""
        return (
            self.origin - 1.5 * self.step,
            self.origin + (self.n_nodes + 0.5) * self.step,
        )

    @cached_property
    def _padded(self) -> np.ndarray:
        """Freqs with two zero nodes on each side: node ``i`` is at index ``i + 2``."""
        return np.concatenate([[0.0, 0.0], self.freqs, [0.0, 0.0]])

    @cached_property
    def _cell_cdf(self) -> np.ndarray:
        """CDF at the cell edges ``u = c - 3/2``, ``c = 0..m+2`` (cell ``c`` is node ``c - 1``).

        Built as a cumulative sum of non-negative cell masses
        ``p_{j-1}/6 + 2 p_j/3 + p_{j+1}/6``, so it is exactly monotone.
        """
        p = self._padded
        mass = p[:-2] / 6.0 + p[1:-1] * (2.0 / 3.0) + p[2:] / 6.0
        return np.concatenate([[0.0], np.cumsum(mass)])

    def _locate(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Grid coordinates of ``t``: (u, inside-support mask, cell index c in 0..m+1, offset s)."""
        u = (t - self.origin) / self.step
        inside = (u >= -1.5) & (u < self.n_nodes + 0.5)
        uc = np.where(inside, u, 0.0)
        j = np.floor(uc + 0.5)
        s = uc - j
        c = j.astype(np.int64) + 1
        return u, inside, c, s

    def _neighbours(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self._padded
        return p[c], p[c + 1], p[c + 2]  # nodes j-1, j, j+1

    # ------------------------------------------------------------ evaluation
    def pdf(self, t: np.ndarray) -> np.ndarray:
        """Density at ``t`` (vectorised, O(1) per point: only the 3 nearest nodes contribute)."""
        t = _as_float_array(t)
        _, inside, c, s = self._locate(t)
        pl, pc, pr = self._neighbours(c)
        val = (
            pl * (2.0 * s - 1.0) ** 2 / 8.0 + pc * (0.75 - s**2) + pr * (2.0 * s + 1.0) ** 2 / 8.0
        ) / self.step
        out = np.where(inside, val, 0.0)
        return np.where(np.isnan(t), np.nan, out)

    def logpdf(self, t: np.ndarray) -> np.ndarray:
        """``log(max(pdf(t), PDF_FLOOR))``: finite everywhere (NaN only for NaN input)."""
        return np.log(np.maximum(self.pdf(t), PDF_FLOOR))

    def cdf(self, t: np.ndarray) -> np.ndarray:
        """Closed-form CDF, O(1) per point, exactly monotone; 0 left of the support, 1 right.

        Within cell ``j`` it is the mass of all cells to the left (a table lookup;
        equal to the cumulative freqs of nodes fully left plus the partial masses
        of nodes ``j-1, j``) plus the integral from the cell's left edge of the 3
        nearest kernels, i.e. differences of ``bspline2_cdf`` written as cubics.
        """
        t = _as_float_array(t)
        u, inside, c, s = self._locate(t)
        pl, pc, pr = self._neighbours(c)
        table = self._cell_cdf
        lo, hi = table[c], table[c + 1]
        val = lo + self._cell_increment(pl, pc, pr, s)
        val = np.clip(val, lo, hi)
        out = np.where(inside, val, np.where(u >= self.n_nodes + 0.5, 1.0, 0.0))
        out = np.minimum(out, 1.0)
        return np.where(np.isnan(t), np.nan, out)

    @staticmethod
    def _cell_increment(
        pl: np.ndarray, pc: np.ndarray, pr: np.ndarray, s: np.ndarray
    ) -> np.ndarray:
        """Mass between the cell's left edge (s = -1/2) and offset ``s``."""
        # Cubes as products: numpy's `** 3` is the generic pow, 0.6 ms of each 3,000-point
        # CDF against 0.1 ms (the normal scores of a 3,000-image class: 0.09 s -> 0.03 s).
        a, b = 2.0 * s - 1.0, 2.0 * s + 1.0
        return (
            pl * (a * a * a + 8.0) / 48.0
            + pc * (0.75 * s - s * s * s / 3.0 + 1.0 / 3.0)
            + pr * (b * b * b) / 48.0
        )

    def ppf(self, q: np.ndarray) -> np.ndarray:
        """Inverse CDF (vectorised).  NaN for ``q`` outside [0, 1].

        The cell is found by ``searchsorted`` on the cell-edge CDF table (always a
        cell of positive mass for ``q`` in (0, 1)); the cubic on that cell is solved
        by Newton steps safeguarded by bisection, to ``|cdf(ppf(q)) - q| < 1e-13``.
        """
        q = _as_float_array(q)
        shape = q.shape
        qf = q.ravel()
        lo_s, hi_s = self.support
        out = np.full(qf.shape, np.nan)
        out[qf == 0.0] = lo_s
        out[qf == 1.0] = hi_s
        work = np.flatnonzero((qf > 0.0) & (qf < 1.0))
        if work.size:
            table = self._cell_cdf
            ncell = table.size - 1
            qq = qf[work]
            c = np.clip(np.searchsorted(table, qq, side="left") - 1, 0, ncell - 1)
            pl, pc, pr = self._neighbours(c)
            r = qq - table[c]
            mass = table[c + 1] - table[c]
            s = np.where(mass > 0, np.clip(r / np.where(mass > 0, mass, 1.0), 0.0, 1.0) - 0.5, 0.0)
            a = np.full(qq.shape, -0.5)
            b = np.full(qq.shape, 0.5)
            act = np.arange(qq.size)  # points not yet converged
            for _ in range(100):
                sa, pla, pca, pra = s[act], pl[act], pc[act], pr[act]
                g = self._cell_increment(pla, pca, pra, sa) - r[act]
                aa = np.where(g < 0, sa, a[act])
                bb = np.where(g > 0, sa, b[act])
                d = (
                    pla * (2.0 * sa - 1.0) ** 2 / 8.0
                    + pca * (0.75 - sa**2)
                    + pra * (2.0 * sa + 1.0) ** 2 / 8.0
                )
                with np.errstate(divide="ignore", invalid="ignore"):
                    newton = sa - g / d
                ok = (d > 0) & (newton >= aa) & (newton <= bb)
                done = (np.abs(g) <= 1e-14) | (bb - aa <= 1e-15)
                s[act] = np.where(done, sa, np.where(ok, newton, 0.5 * (aa + bb)))
                a[act], b[act] = aa, bb
                act = act[~done]
                if act.size == 0:
                    break
            out[work] = self.origin + (c - 1 + s) * self.step
        return out.reshape(shape)

    def entropy(self) -> float:
        """Differential entropy ``-int f log f`` (``0 log 0 = 0``).

        ``f`` is a quadratic on every cell, so each cell is integrated with a
        16-point Gauss-Legendre rule (only the log is approximated).
        """
        p = self._padded
        pl, pc, pr = p[:-2, None], p[1:-1, None], p[2:, None]
        s = _GL_X[None, :]
        f = (
            pl * (2.0 * s - 1.0) ** 2 / 8.0 + pc * (0.75 - s**2) + pr * (2.0 * s + 1.0) ** 2 / 8.0
        ) / self.step
        with np.errstate(divide="ignore", invalid="ignore"):
            flogf = np.where(f > 0, f * np.log(f), 0.0)
        return float(-self.step * np.sum(flogf @ _GL_W))

    # ----------------------------------------------------------- persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez`` (exact round trip with ``from_arrays``)."""
        return {
            "origin": np.asarray(self.origin, dtype=np.float64),
            "step": np.asarray(self.step, dtype=np.float64),
            "freqs": np.asarray(self.freqs, dtype=np.float64).copy(),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        """Rebuild from ``to_arrays`` output (a dict or an ``np.load`` npz)."""
        return cls(
            origin=float(arrays["origin"]),
            step=float(arrays["step"]),
            freqs=np.asarray(arrays["freqs"], dtype=np.float64),
        )


def _validate_2d(z: np.ndarray, k: int | None = None) -> np.ndarray:
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"z must be a 2-D array (n, k), got shape {arr.shape}")
    if k is not None and arr.shape[1] != k:
        raise ValueError(f"z has {arr.shape[1]} columns, the model has {k} marginals")
    return arr


@dataclass(frozen=True, eq=False)
class ProductSplineDensity:
    """Product of independent 1-D spline marginals, one per column (component)."""

    marginals: tuple[SplineDensity1D, ...]
    n_fit: int = 0  # fitting sample size; sets the default clipping eps of normal_scores

    def __post_init__(self) -> None:
        marginals = tuple(self.marginals)
        if not marginals:
            raise ValueError("ProductSplineDensity needs at least one marginal")
        object.__setattr__(self, "marginals", marginals)
        object.__setattr__(self, "n_fit", int(self.n_fit))

    @property
    def dim(self) -> int:
        """Number of marginals ``k``."""
        return len(self.marginals)

    @classmethod
    def fit(cls, z: np.ndarray, rule: BinRule = "fd") -> Self:
        """Fit one ``SplineDensity1D`` per column of ``z`` (n, k)."""
        z = _validate_2d(z)
        if z.shape[0] == 0 or z.shape[1] == 0:
            raise ValueError(f"z is empty (shape {z.shape}): cannot fit a density")
        margs = []
        for col in range(z.shape[1]):
            try:
                margs.append(SplineDensity1D.fit(z[:, col], rule=rule))
            except ValueError as exc:
                raise ValueError(f"column {col}: {exc}") from exc
        return cls(marginals=tuple(margs), n_fit=z.shape[0])

    def logpdf(self, z: np.ndarray) -> np.ndarray:
        """(n,) log density: sum of the (floored) marginal log densities."""
        z = _validate_2d(z, self.dim)
        out = np.zeros(z.shape[0])
        for col, m in enumerate(self.marginals):
            out += m.logpdf(z[:, col])
        return out

    def cdf(self, z: np.ndarray) -> np.ndarray:
        """(n, k) marginal CDF values."""
        z = _validate_2d(z, self.dim)
        out = np.empty_like(z)
        for col, m in enumerate(self.marginals):
            out[:, col] = m.cdf(z[:, col])
        return out

    def default_eps(self) -> float:
        """``1 / (2 n_fit)`` (half a sample's mass), or 1e-6 when ``n_fit`` is unknown."""
        return 0.5 / self.n_fit if self.n_fit > 0 else 1e-6

    def normal_scores(self, z: np.ndarray, eps: float | None = None) -> np.ndarray:
        """(n, k) Gaussianised coordinates ``Phi^{-1}(clip(cdf, eps, 1 - eps))``.

        The clip keeps every score finite; the default ``eps = 1/(2 n_fit)`` bounds
        them by the normal quantile of half a sample's mass beyond the extremes.
        """
        eps = self.default_eps() if eps is None else float(eps)
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps!r}")
        return ndtri(np.clip(self.cdf(z), eps, 1.0 - eps))

    def entropies(self) -> np.ndarray:
        """(k,) differential entropies of the marginals."""
        return np.array([m.entropy() for m in self.marginals])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez``: ragged freqs zero-padded to (k, max_len) plus ``lengths``."""
        lengths = np.array([m.n_nodes for m in self.marginals], dtype=np.int64)
        freqs = np.zeros((self.dim, int(lengths.max())))
        for col, m in enumerate(self.marginals):
            freqs[col, : lengths[col]] = m.freqs
        return {
            "origins": np.array([m.origin for m in self.marginals], dtype=np.float64),
            "steps": np.array([m.step for m in self.marginals], dtype=np.float64),
            "freqs": freqs,
            "lengths": lengths,
            "n_fit": np.asarray(self.n_fit, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Self:
        """Rebuild from ``to_arrays`` output (a dict or an ``np.load`` npz); exact round trip."""
        origins = np.asarray(arrays["origins"], dtype=np.float64)
        steps = np.asarray(arrays["steps"], dtype=np.float64)
        freqs = np.asarray(arrays["freqs"], dtype=np.float64)
        lengths = np.asarray(arrays["lengths"], dtype=np.int64)
        n_fit = int(arrays["n_fit"]) if "n_fit" in arrays else 0
        margs = tuple(
            SplineDensity1D(origin=float(o), step=float(h), freqs=freqs[col, : int(n)])
            for col, (o, h, n) in enumerate(zip(origins, steps, lengths, strict=True))
        )
        return cls(marginals=margs, n_fit=n_fit)
