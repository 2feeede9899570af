"""The low-frequency DCT descriptor and the joined space it makes with the latents."""

import numpy as np
import pytest

from dedup_assets.core.decision.class_decision import ClassData, needs_pixels, vectorise
from dedup_assets.core.decision.dct_descriptor import DIMENSIONS, _dct_matrix, lowfreq_dct
from dedup_assets.core.decision.similarity import LATENT_WEIGHT, joined, l2_normalize
from dedup_assets.core.density.class_density import fit_class_density


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random images (low frequencies carry the content), values 40-215."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(40, 215, (n, 8, 8, 3))
    return np.repeat(np.repeat(small, 8, axis=1), 8, axis=2).astype(np.uint8)


def test_dct_matrix_is_orthonormal():
    d = _dct_matrix(32).astype(np.float64)
    np.testing.assert_allclose(d @ d.T, np.eye(32), atol=1e-5)


def test_descriptor_shape_and_unit_rows():
    x = _images(5)
    v = lowfreq_dct(x)
    assert v.shape == (5, DIMENSIONS) == (5, 63) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert lowfreq_dct(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 63)
    with pytest.raises(ValueError, match="64, 64, 3"):
        lowfreq_dct(np.zeros((2, 32, 32, 3), np.uint8))


def test_brightness_offset_and_contrast_leave_it_unchanged():
    x = _images(4, seed=1).astype(np.int32)
    base = lowfreq_dct(x.astype(np.uint8))
    brighter = lowfreq_dct((x + 30).astype(np.uint8))  # no clipping: 40..245
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    contrast = lowfreq_dct(np.clip(np.rint((x - mean) * 0.8 + mean), 0, 255).astype(np.uint8))
    assert np.einsum("ij,ij->i", base, brighter).min() > 1 - 1e-5
    assert np.einsum("ij,ij->i", base, contrast).min() > 0.999  # rounding to uint8 only


def test_noise_moves_it_less_than_a_different_image():
    x = _images(20, seed=2)
    rng = np.random.default_rng(3)
    noisy = np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)
    a, b = lowfreq_dct(x), lowfreq_dct(noisy)
    same = np.einsum("ij,ij->i", a, b)
    other = a @ a.T
    np.fill_diagonal(other, -1)
    assert same.min() > 0.99 and other.max() < 0.9


def test_a_flat_image_has_no_direction():
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    assert not lowfreq_dct(flat).any()


def test_joined_cosine_is_the_weighted_sum_of_both():
    rng = np.random.default_rng(4)
    a = l2_normalize(rng.standard_normal((30, 10)).astype(np.float32))
    b = l2_normalize(rng.standard_normal((30, 63)).astype(np.float32))
    j = joined(a, b)
    np.testing.assert_allclose(np.linalg.norm(j, axis=1), 1.0, atol=1e-6)
    want = LATENT_WEIGHT * (a @ a.T) + (1 - LATENT_WEIGHT) * (b @ b.T)
    np.testing.assert_allclose(j @ j.T, want, atol=1e-5)


def test_the_joined_space_reads_the_pixels_and_the_latents():
    rng = np.random.default_rng(5)
    n = 60
    latents = np.maximum(rng.normal(size=(n, 32)), 0).astype(np.float32)
    pixels = _images(n, seed=6)
    model = fit_class_density(latents, 16)
    data = ClassData(np.arange(n).astype(str), np.arange(n).astype(str), latents, model, pixels)
    assert needs_pixels(model, "spline_copula_dct") and not needs_pixels(model, "spline_copula")
    v = vectorise(data, "spline_copula_dct")
    sc, dct = vectorise(data, "spline_copula"), vectorise(data, "dct")
    want = LATENT_WEIGHT * (sc @ sc.T) + (1 - LATENT_WEIGHT) * (dct @ dct.T)
    np.testing.assert_allclose(v @ v.T, want, atol=1e-5)
    with pytest.raises(ValueError, match="needs the class's pixels"):
        vectorise(ClassData(data.image_ids, data.pixel_hashes, latents, model), "dct")
