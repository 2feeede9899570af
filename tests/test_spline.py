"""Tests for the quadratic B-spline density model (dedup_assets.core.density.spline)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from scipy import integrate, stats

from dedup_assets.core.density.spline import (
    MAX_NODES,
    PDF_FLOOR,
    ProductSplineDensity,
    SplineDensity1D,
    bspline2_cdf,
    bspline2_kernel,
    grid_step,
    quartiles,
)

RULES = ("fd", "scott", "sturges")


def _bimodal(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, rng.normal(-2.0, 1.0, n), rng.normal(2.0, 1.0, n))


def _bimodal_pdf(t: np.ndarray) -> np.ndarray:
    return 0.5 * stats.norm(-2.0, 1.0).pdf(t) + 0.5 * stats.norm(2.0, 1.0).pdf(t)


# name -> (sampler, true pdf, interval holding essentially all true mass)
LAWS = {
    "normal": (lambda rng, n: rng.normal(size=n), stats.norm().pdf, (-9.0, 9.0)),
    "bimodal": (_bimodal, _bimodal_pdf, (-11.0, 11.0)),
    "lognormal": (lambda rng, n: rng.lognormal(size=n), stats.lognorm(1.0).pdf, (0.0, 80.0)),
}


def _sample(law: str, seed: int, n: int) -> np.ndarray:
    return LAWS[law][0](np.random.default_rng(seed), n)


def _cell_grid(d: SplineDensity1D, sub: int = 4) -> np.ndarray:
    """Grid over the support aligned with the cell edges, ``sub`` (even) points per cell."""
    lo, hi = d.support
    ncell = d.n_nodes + 2
    return np.linspace(lo, hi, ncell * sub + 1)


def _integrate_cells(d: SplineDensity1D, values: np.ndarray, t: np.ndarray) -> float:
    """Simpson on a cell-aligned grid: exact for the piecewise quadratic pdf."""
    return float(integrate.simpson(values, x=t))


def _brute_pdf(d: SplineDensity1D, t: np.ndarray) -> np.ndarray:
    """O(n_nodes) reference: (1/h) sum_i B(t - t_i) p_i."""
    k = bspline2_kernel(t[:, None] - d.nodes[None, :], d.step)
    return (k * d.freqs[None, :]).sum(axis=1) / d.step


# ---------------------------------------------------------------------- kernel


@pytest.mark.parametrize("h", [0.1, 1.0, 3.7])
def test_kernel_shape_and_integral(h: float) -> None:
    t = np.linspace(-2.5 * h, 2.5 * h, 20_001)
    k = bspline2_kernel(t, h)
    assert np.all(k >= 0.0)
    assert np.all(k[np.abs(t) >= 1.5 * h] == 0.0)
    assert np.all(k[np.abs(t) < 1.49 * h] > 0.0)
    assert bspline2_kernel(np.array(0.0), h) == pytest.approx(0.75, abs=1e-15)
    assert k.max() == pytest.approx(0.75, abs=1e-12)
    np.testing.assert_allclose(k, k[::-1], atol=1e-15)  # symmetric
    eps = 1e-9 * h
    for edge in (-1.5 * h, -0.5 * h, 0.5 * h, 1.5 * h):
        left, right = bspline2_kernel(np.array([edge - eps, edge + eps]), h)
        assert abs(left - right) < 1e-8
    np.testing.assert_allclose(
        bspline2_kernel(np.array([-h, -0.5 * h, 0.5 * h]), h), [1 / 8, 1 / 2, 1 / 2]
    )
    val, _ = integrate.quad(
        lambda s: float(bspline2_kernel(np.array(s), h)),
        -2 * h,
        2 * h,
        points=[-1.5 * h, -0.5 * h, 0.5 * h, 1.5 * h],
        epsabs=1e-13,
        epsrel=1e-13,
    )
    assert val == pytest.approx(h, abs=1e-9 * max(h, 1.0))


def test_kernel_rejects_bad_width() -> None:
    with pytest.raises(ValueError):
        bspline2_kernel(np.zeros(3), 0.0)


def test_bspline2_cdf_matches_integral_of_kernel() -> None:
    u = np.linspace(-2.0, 2.0, 81)
    expected = [
        integrate.quad(
            lambda s: float(bspline2_kernel(np.array(s), 1.0)),
            -2.0,
            ui,
            points=[p for p in (-1.5, -0.5, 0.5, 1.5) if -2.0 < p < ui] or None,
            epsabs=1e-13,
        )[0]
        for ui in u
    ]
    np.testing.assert_allclose(bspline2_cdf(u), expected, atol=1e-10)
    assert np.all(bspline2_cdf(np.array([-1.5, -3.0, -np.inf])) == 0.0)
    assert np.all(bspline2_cdf(np.array([1.5, 3.0, np.inf])) == 1.0)
    np.testing.assert_allclose(bspline2_cdf(np.array([-0.5, 0.0, 0.5])), [1 / 6, 1 / 2, 5 / 6])
    # derivative of the CDF is the unit kernel
    uu = np.linspace(-1.6, 1.6, 3201)
    dF = (bspline2_cdf(uu + 1e-6) - bspline2_cdf(uu - 1e-6)) / 2e-6
    np.testing.assert_allclose(dF, bspline2_kernel(uu, 1.0), atol=1e-6)


# ------------------------------------------------------------------- grid step


def test_grid_step_rules() -> None:
    x = np.random.default_rng(0).normal(size=1000)
    q25, q75 = np.percentile(x, [25, 75])
    assert grid_step(x) == pytest.approx(2 * (q75 - q25) * 1000 ** (-1 / 3))
    assert grid_step(x, "scott") == pytest.approx(3.49 * x.std(ddof=1) * 1000 ** (-1 / 3))
    assert grid_step(x, "sturges") == pytest.approx(np.ptp(x) / (np.ceil(np.log2(1000)) + 1))
    with pytest.raises(ValueError, match="unknown bin rule"):
        grid_step(x, "silverman")  # type: ignore[arg-type]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "x",
    [
        np.full(50, 3.0),
        np.zeros(10),
        np.array([7.0]),
        np.r_[np.zeros(100), 1.0],
        np.array([-1e300, 1e300]),
    ],
)
def test_grid_step_degenerate_is_positive_finite(rule: str, x: np.ndarray) -> None:
    h = grid_step(x, rule)  # type: ignore[arg-type]
    assert np.isfinite(h) and h > 0


def test_fd_falls_back_to_scott_when_iqr_is_zero() -> None:
    x = np.r_[np.zeros(100), 1.0]
    assert grid_step(x, "fd") == pytest.approx(grid_step(x, "scott"))


# ------------------------------------------------------------------ 1-D fitting


@pytest.mark.parametrize("law", list(LAWS))
@pytest.mark.parametrize("rule", RULES)
def test_freqs_and_cells(law: str, rule: str) -> None:
    x = _sample(law, 1, 3000)
    d = SplineDensity1D.fit(x, rule=rule)  # type: ignore[arg-type]
    h = d.step
    assert d.freqs.dtype == np.float64
    assert d.freqs.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(d.freqs >= 0)
    assert d.origin == x.min()
    # every sample lies in the cell [t_i - h/2, t_i + h/2) of an existing node
    i = np.floor((x - d.origin) / h + 0.5).astype(int)
    assert i.min() == 0 and i.max() == d.n_nodes - 1
    t_i = d.nodes[i]
    assert np.all((x >= t_i - h / 2 - 1e-12 * h) & (x < t_i + h / 2 + 1e-12 * h))
    np.testing.assert_allclose(d.freqs * x.size, np.bincount(i, minlength=d.n_nodes), atol=1e-9)
    lo, hi = d.support
    assert lo == pytest.approx(d.nodes[0] - 1.5 * h)
    assert hi == pytest.approx(d.nodes[-1] + 1.5 * h)
    assert lo >= x.min() - 2 * h and hi <= x.max() + 2 * h


@pytest.mark.parametrize("law", list(LAWS))
@pytest.mark.parametrize("rule", RULES)
def test_density_integrates_to_one(law: str, rule: str) -> None:
    d = SplineDensity1D.fit(_sample(law, 2, 4000), rule=rule)  # type: ignore[arg-type]
    t = _cell_grid(d)
    f = d.pdf(t)
    assert np.all(f >= 0)
    assert _integrate_cells(d, f, t) == pytest.approx(1.0, abs=1e-6)
    # zero outside the support
    lo, hi = d.support
    assert np.all(d.pdf(np.array([lo - 1e-9, lo - 5.0, hi + 1e-9, hi + 5.0, -np.inf, np.inf])) == 0)
    assert d.pdf(np.array([lo, hi])) == pytest.approx(0.0, abs=1e-20)  # continuous at the ends


def test_pdf_matches_brute_force_sum() -> None:
    d = SplineDensity1D.fit(_sample("bimodal", 3, 2000))
    lo, hi = d.support
    t = np.random.default_rng(0).uniform(lo - 1, hi + 1, 5000)
    np.testing.assert_allclose(d.pdf(t), _brute_pdf(d, t), rtol=1e-12, atol=1e-14)


def test_pdf_shape_and_nan() -> None:
    d = SplineDensity1D.fit(_sample("normal", 0, 500))
    assert d.pdf(0.0).shape == ()
    assert d.cdf(np.zeros((3, 4))).shape == (3, 4)
    assert d.ppf(np.full((2, 5), 0.5)).shape == (2, 5)
    assert np.isnan(d.pdf(np.nan)) and np.isnan(d.cdf(np.nan)) and np.isnan(d.logpdf(np.nan))


def test_logpdf_finite_everywhere() -> None:
    d = SplineDensity1D.fit(_sample("normal", 0, 1000))
    t = np.array([-1e6, d.support[0], 0.0, d.support[1], 1e6])
    lp = d.logpdf(t)
    assert np.all(np.isfinite(lp))
    assert lp[0] == pytest.approx(np.log(PDF_FLOOR))
    assert lp[2] == pytest.approx(np.log(d.pdf(0.0)))


# ------------------------------------------------------------------- cdf / ppf


@pytest.mark.parametrize("law", list(LAWS))
def test_cdf_monotone_and_derivative(law: str) -> None:
    d = SplineDensity1D.fit(_sample(law, 4, 3000))
    lo, hi = d.support
    t = np.linspace(lo - 2.0, hi + 2.0, 200_001)
    F = d.cdf(t)
    assert np.all(np.diff(F) >= 0.0)
    assert np.all(F[t <= lo] == 0.0) and np.all(F[t >= hi] == 1.0)
    assert F.min() == 0.0 and F.max() == 1.0
    # finite-difference derivative matches the pdf
    tm = np.linspace(lo, hi, 5001)
    e = 1e-6 * d.step
    dF = (d.cdf(tm + e) - d.cdf(tm - e)) / (2 * e)
    np.testing.assert_allclose(dF, d.pdf(tm), atol=1e-6 * d.pdf(tm).max())
    # cdf equals the integral of the pdf at cell edges
    tg = _cell_grid(d, 2)
    cum = integrate.cumulative_simpson(d.pdf(tg), x=tg, initial=0.0)
    np.testing.assert_allclose(d.cdf(tg[::2]), cum[::2], atol=1e-9)


@pytest.mark.parametrize("law", list(LAWS))
def test_ppf_round_trips(law: str) -> None:
    x = _sample(law, 5, 3000)
    d = SplineDensity1D.fit(x)
    q = np.r_[np.linspace(1e-12, 1 - 1e-12, 20_001), np.random.default_rng(1).random(5000)]
    assert np.max(np.abs(d.cdf(d.ppf(q)) - q)) < 1e-9
    # inside the support, where the density is positive, ppf inverts cdf
    t = np.quantile(x, np.linspace(0.01, 0.99, 2001))
    t = t[d.pdf(t) > 1e-3]
    np.testing.assert_allclose(d.ppf(d.cdf(t)), t, atol=1e-8 * d.step)
    lo, hi = d.support
    assert d.ppf(0.0) == lo and d.ppf(1.0) == hi
    assert np.all(np.isnan(d.ppf(np.array([-0.1, 1.1, np.nan]))))


def test_ppf_with_empty_cells() -> None:
    x = np.r_[
        np.random.default_rng(0).normal(0, 1, 500), np.random.default_rng(1).normal(30, 1, 500)
    ]
    d = SplineDensity1D.fit(x, step=0.5)
    assert np.any(d.freqs == 0)
    q = np.linspace(1e-9, 1 - 1e-9, 10_001)
    t = d.ppf(q)
    assert np.all(np.diff(t) >= 0)
    assert np.max(np.abs(d.cdf(t) - q)) < 1e-9
    assert np.all(d.pdf(t) > 0)  # never lands in the gap
    assert d.cdf(15.0) == pytest.approx(0.5, abs=1e-12)


# ------------------------------------------------------------- paper's claims


def _hist_pdf(d: SplineDensity1D, t: np.ndarray) -> np.ndarray:
    i = np.floor((t - d.origin) / d.step + 0.5).astype(np.int64)
    ok = (i >= 0) & (i < d.n_nodes)
    return np.where(ok, d.freqs[np.clip(i, 0, d.n_nodes - 1)] / d.step, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("law", list(LAWS))
def test_ise_beats_histogram_and_normal(law: str, seed: int) -> None:
    """ISE of the spline < histogram on the same cells (all laws) and < fitted normal (non-normal laws)."""
    _, f_true, (a, b) = LAWS[law]
    x = _sample(law, 100 + seed, 5000)
    d = SplineDensity1D.fit(x)  # default rule
    lo, hi = d.support
    t = np.linspace(min(a, lo), max(b, hi), 400_001)
    ft = f_true(t)
    ise_spline = np.trapezoid((d.pdf(t) - ft) ** 2, t)
    ise_hist = np.trapezoid((_hist_pdf(d, t) - ft) ** 2, t)
    ise_normal = np.trapezoid((stats.norm(x.mean(), x.std(ddof=1)).pdf(t) - ft) ** 2, t)
    assert ise_spline < 0.8 * ise_hist
    if law != "normal":
        assert ise_spline < 0.5 * ise_normal


# -------------------------------------------------------------------- entropy


def test_entropy_normal() -> None:
    sigma = 2.0
    d = SplineDensity1D.fit(np.random.default_rng(7).normal(0.0, sigma, 10_000))
    true = 0.5 * np.log(2 * np.pi * np.e * sigma**2)
    assert d.entropy() == pytest.approx(true, rel=0.02)


def test_entropy_uniform() -> None:
    # Smoothing the two jumps adds ~0.05 nats whatever the width; on [0, 100]
    # (true entropy log 100) that is about 1%.
    d = SplineDensity1D.fit(np.random.default_rng(8).uniform(0.0, 100.0, 10_000))
    assert d.entropy() == pytest.approx(np.log(100.0), rel=0.02)
    assert abs(d.entropy() - np.log(100.0)) < 0.08


def test_entropy_matches_fine_quadrature() -> None:
    d = SplineDensity1D.fit(_sample("lognormal", 9, 2000))
    t = _cell_grid(d, 400)
    f = d.pdf(t)
    flogf = np.where(f > 0, f * np.log(np.where(f > 0, f, 1.0)), 0.0)
    assert d.entropy() == pytest.approx(-np.trapezoid(flogf, t), abs=1e-5)


# ---------------------------------------------------------------- persistence


def test_1d_round_trip_via_npz() -> None:
    d = SplineDensity1D.fit(_sample("bimodal", 0, 1000))
    buf = io.BytesIO()
    np.savez(buf, **d.to_arrays())
    buf.seek(0)
    with np.load(buf) as z:
        d2 = SplineDensity1D.from_arrays(z)
    assert d2.origin == d.origin and d2.step == d.step
    np.testing.assert_array_equal(d2.freqs, d.freqs)
    t = np.linspace(*d.support, 1001)
    np.testing.assert_array_equal(d2.pdf(t), d.pdf(t))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "x",
    [np.array([]), np.array([1.0, np.nan, 2.0]), np.array([np.inf, 0.0]), np.zeros((3, 2))],
)
def test_fit_rejects_bad_input(x: np.ndarray) -> None:
    with pytest.raises(ValueError):
        SplineDensity1D.fit(x)


def test_fit_rejects_bad_step_and_product_input() -> None:
    with pytest.raises(ValueError, match="step"):
        SplineDensity1D.fit(np.arange(5.0), step=0.0)
    with pytest.raises(ValueError, match="empty"):
        ProductSplineDensity.fit(np.empty((0, 3)))
    z = np.random.default_rng(0).normal(size=(100, 3))
    z[5, 2] = np.nan
    with pytest.raises(ValueError, match="column 2"):
        ProductSplineDensity.fit(z)
    with pytest.raises(ValueError):
        ProductSplineDensity.fit(np.arange(10.0))
    with pytest.raises(ValueError):
        SplineDensity1D(origin=0.0, step=1.0, freqs=np.array([0.5, 0.2]))


def test_constant_data_and_outlier_cap() -> None:
    d = SplineDensity1D.fit(np.full(20, 5.0))
    assert d.n_nodes == 1 and d.step > 0
    assert _integrate_cells(d, d.pdf(_cell_grid(d)), _cell_grid(d)) == pytest.approx(1.0, abs=1e-6)
    x = np.r_[np.random.default_rng(0).normal(size=1000), 1e9]
    d = SplineDensity1D.fit(x)
    assert d.n_nodes <= MAX_NODES
    assert d.freqs.sum() == pytest.approx(1.0)


# ----------------------------------------------------------------- product


@pytest.fixture(scope="module")
def product_fit() -> tuple[np.ndarray, ProductSplineDensity]:
    rng = np.random.default_rng(11)
    z = np.column_stack([rng.normal(size=5000), _bimodal(rng, 5000), rng.lognormal(size=5000)])
    return z, ProductSplineDensity.fit(z)


def test_product_logpdf_is_sum_of_marginals(product_fit) -> None:
    z, p = product_fit
    zz = np.vstack([z[:200], [[100.0, -100.0, 1e6]]])
    expected = sum(m.logpdf(zz[:, c]) for c, m in enumerate(p.marginals))
    np.testing.assert_allclose(p.logpdf(zz), expected, rtol=1e-14)
    assert p.logpdf(zz).shape == (201,)
    assert np.all(np.isfinite(p.logpdf(zz)))
    assert p.cdf(zz).shape == (201, 3)
    with pytest.raises(ValueError, match="columns"):
        p.logpdf(z[:, :2])


def test_product_normal_scores(product_fit) -> None:
    z, p = product_fit
    s = p.normal_scores(z)
    assert s.shape == z.shape
    assert np.all(np.isfinite(s))
    # every column's fitted CDF maps its own sample to ~U(0,1), hence ~N(0,1) scores
    assert np.all(np.abs(s.mean(axis=0)) < 0.05)
    assert np.all(np.abs(s.std(axis=0) - 1.0) < 0.05)
    # extremes (and far-away points) stay finite, bounded by the default eps = 1/(2n)
    bound = stats.norm.isf(0.5 / z.shape[0])
    far = p.normal_scores(np.array([[-1e9, -1e9, -1e9], [1e9, 1e9, 1e9]]))
    np.testing.assert_allclose(far, [[-bound] * 3, [bound] * 3])
    assert np.all(np.abs(p.normal_scores(z, eps=1e-3)) <= stats.norm.isf(1e-3) + 1e-12)


def test_product_round_trip_and_entropies(product_fit) -> None:
    z, p = product_fit
    arrays = p.to_arrays()
    assert arrays["freqs"].shape == (3, int(arrays["lengths"].max()))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf) as npz:
        p2 = ProductSplineDensity.from_arrays(npz)
    assert p2.n_fit == p.n_fit
    for m, m2 in zip(p.marginals, p2.marginals, strict=True):
        assert (m.origin, m.step) == (m2.origin, m2.step)
        np.testing.assert_array_equal(m.freqs, m2.freqs)
        np.testing.assert_array_equal(m.pdf(z[:, 0]), m2.pdf(z[:, 0]))
    np.testing.assert_array_equal(p.logpdf(z), p2.logpdf(z))
    np.testing.assert_array_equal(p.normal_scores(z), p2.normal_scores(z))
    ent = p.entropies()
    assert ent.shape == (3,)
    assert ent[0] == pytest.approx(0.5 * np.log(2 * np.pi * np.e), rel=0.02)
    np.testing.assert_array_equal(ent, [m.entropy() for m in p.marginals])


def test_quartiles_are_numpys_percentiles_bit_for_bit() -> None:
    """`quartiles` (what the FD rule uses) equals `np.percentile(x, [25, 75])` exactly, on
    1 to 60 values and larger samples, with ties, tiny and huge magnitudes and signs."""
    rng = np.random.default_rng(7)
    for n in [*range(1, 61), 97, 1000]:
        for x in (
            rng.standard_normal(n),
            rng.integers(-3, 4, n).astype(np.float64),
            rng.standard_normal(n) * 1e-300,
            np.exp(rng.standard_normal(n) * 30),
            np.full(n, -2.5),
        ):
            expected = np.percentile(x, [25.0, 75.0])
            assert quartiles(x) == (expected[0], expected[1]), (n, x)
    x = rng.standard_normal(50)
    step = 2.0 * float(np.subtract(*np.percentile(x, [75.0, 25.0]))) * 50 ** (-1.0 / 3.0)
    assert grid_step(x, "fd") == step
