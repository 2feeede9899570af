"""Tests for principal component analysis (dedup_assets.core.density.pca)."""

from __future__ import annotations

import numpy as np
import pytest

from dedup_assets.core.density.pca import PCAFit, components_for_variance, fit_pca

STDS = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
D = len(STDS)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture(scope="module")
def known():
    rng = np.random.default_rng(42)
    rot = _rotation(D, 7)  # columns: the true axes
    mean = np.array([10.0, -4.0, 2.0, 0.0, 7.0, -1.0])
    z = rng.normal(size=(20_000, D)) * STDS
    x = (z @ rot.T + mean).astype(np.float32)
    return x, rot, mean


def test_recovers_axes_and_variances(known):
    x, rot, mean = known
    fit = fit_pca(x, D)
    assert fit.n_components == D
    assert fit.n_samples == len(x)
    np.testing.assert_allclose(fit.mean, mean, atol=0.1)
    for k in range(D):
        assert abs(float(fit.components[k] @ rot[:, k])) > 0.99, k
    np.testing.assert_allclose(fit.variances, STDS**2, rtol=0.05)
    assert fit.total_variance == pytest.approx(float((STDS**2).sum()), rel=0.05)
    assert np.all(np.diff(fit.variances) <= 0)  # descending


def test_components_are_orthonormal(known):
    x, _, _ = known
    fit = fit_pca(x, 4)
    assert fit.components.shape == (4, D)
    np.testing.assert_allclose(fit.components @ fit.components.T, np.eye(4), atol=1e-10)


def test_scores_are_uncorrelated_with_the_fitted_variances(known):
    x, _, _ = known
    fit = fit_pca(x, D)
    s = fit.transform(x).astype(np.float64)
    assert s.shape == (len(x), D)
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=1e-3)
    cov = np.cov(s, rowvar=False)
    np.testing.assert_allclose(np.diag(cov), fit.variances, rtol=1e-3)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-3 * fit.variances[0]


def test_sign_convention_largest_loading_positive():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 8)) * np.linspace(3, 0.5, 8)
    for flip in (1.0, -1.0):
        fit = fit_pca(flip * x, 8)
        for c in fit.components:
            assert c[np.argmax(np.abs(c))] > 0
    # the sign convention makes fits of x and -x share the same components
    np.testing.assert_allclose(fit_pca(x, 8).components, fit_pca(-x, 8).components, atol=1e-12)


@pytest.mark.parametrize(
    ("n", "d", "asked", "expected"),
    [(5, 10, 20, 4), (50, 3, 10, 3), (50, 10, 2, 2), (1, 4, 3, 0), (2, 4, 3, 1), (10, 4, 0, 0)],
)
def test_number_of_components_is_capped(n, d, asked, expected):
    x = np.random.default_rng(n * 100 + d).normal(size=(n, d))
    fit = fit_pca(x, asked)
    assert fit.n_components == expected
    assert fit.components.shape == (expected, d)
    assert fit.variances.shape == (expected,)
    assert fit.transform(x).shape == (n, expected)


def test_transform_of_the_mean_is_zero(known):
    x, _, _ = known
    fit = fit_pca(x, 3)
    np.testing.assert_array_equal(fit.transform(fit.mean[None, :]), np.zeros((1, 3)))


def test_transform_matches_projection(known):
    x, _, _ = known
    fit = fit_pca(x, 3)
    ref = (x[:100].astype(np.float64) - fit.mean) @ fit.components.T
    np.testing.assert_allclose(fit.transform(x[:100]), ref, rtol=1e-4, atol=1e-3)


def test_chunked_covariance_matches_direct(monkeypatch):
    import dedup_assets.core.density.pca as pca_mod

    x = np.random.default_rng(5).normal(size=(1000, 5)) @ _rotation(5, 1) * [4, 3, 2, 1, 0.5]
    whole = fit_pca(x, 5)
    monkeypatch.setattr(pca_mod, "_CHUNK", 37)
    chunked = fit_pca(x, 5)
    np.testing.assert_allclose(chunked.variances, whole.variances, rtol=1e-5)
    np.testing.assert_allclose(
        np.abs(chunked.components @ whole.components.T), np.eye(5), atol=1e-5
    )
    ref = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    np.testing.assert_allclose(whole.variances, ref, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
    x = np.ones((10, 3))
    x[4, 1] = bad
    with pytest.raises(ValueError):
        fit_pca(x, 2)


@pytest.mark.parametrize("shape", [(0, 3), (5,), (2, 3, 4)])
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError):
        fit_pca(np.zeros(shape), 2)


def _fit_with_variances(variances, total=None) -> PCAFit:
    v = np.asarray(variances, dtype=np.float64)
    k = len(v)
    return PCAFit(
        mean=np.zeros(k),
        components=np.eye(k),
        variances=v,
        total_variance=float(v.sum() if total is None else total),
        n_samples=100,
    )


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 1), (0.3, 1), (0.5, 1), (0.51, 2), (0.75, 2), (0.8, 3), (0.875, 3), (0.9, 4), (1.0, 4)],
)
def test_components_for_variance(fraction, expected):
    # explained ratios 0.5, 0.25, 0.125, 0.125 (all exact in binary)
    fit = _fit_with_variances([4.0, 2.0, 1.0, 1.0])
    np.testing.assert_array_equal(fit.explained_ratio, [0.5, 0.25, 0.125, 0.125])
    assert components_for_variance(fit, fraction) == expected


def test_components_for_variance_caps_at_available_components():
    # only half of the total variance is in the kept components
    fit = _fit_with_variances([2.0, 1.0, 1.0], total=8.0)
    assert components_for_variance(fit, 0.4) == 3
    assert components_for_variance(fit, 0.99) == 3
    assert components_for_variance(fit, 0.25) == 1
    assert components_for_variance(fit, 0.26) == 2


def test_components_for_variance_on_a_real_fit(known):
    x, _, _ = known
    fit = fit_pca(x, D)
    ratios = STDS**2 / (STDS**2).sum()  # 0.626, 0.225, 0.100, ...
    assert components_for_variance(fit, 0.5) == 1
    assert components_for_variance(fit, 0.8) == 2
    assert components_for_variance(fit, 0.9) == 3
    assert components_for_variance(fit, 0.99) == int(np.searchsorted(np.cumsum(ratios), 0.99) + 1)


@pytest.mark.parametrize("asked", [1, 5, 12, 39])
def test_the_leading_components_alone_equal_those_of_the_whole_spectrum(asked):
    """Fewer components than dimensions are found alone (`scipy.linalg.eigh` by index);
    they, their variances and the total variance are those of the whole decomposition (a
    fit asking for every dimension), and the rank cap still holds (a rank-12 cloud)."""
    rng = np.random.default_rng(3)
    for x, rank in (
        (rng.normal(size=(300, 40)) * np.linspace(3, 0.1, 40), 40),
        (rng.normal(size=(300, 12)) @ rng.normal(size=(12, 40)), 12),
    ):
        whole, fit = fit_pca(x, 40), fit_pca(x, asked)
        k = min(asked, rank)
        assert whole.n_components == rank and fit.n_components == k
        np.testing.assert_allclose(fit.variances, whole.variances[:k], rtol=1e-10)
        np.testing.assert_allclose(fit.components, whole.components[:k], atol=1e-8)
        # The trace, against the sum of the eigenvalues clipped at 0: the covariance of float32
        # products has rounding-noise eigenvalues of either sign (1e-7 of it here).
        assert fit.total_variance == pytest.approx(whole.total_variance, rel=1e-6)
        assert fit.total_variance == pytest.approx(np.trace(np.cov(x.T)), rel=1e-6)
