"""A class's density model: PCA + product spline; stored and reloaded without refitting."""

import numpy as np
import pytest

from dedup_assets.core.density.class_density import (
    ClassDensityModel,
    effective_components,
    fit_class_density,
)


def test_effective_components_scale_with_class_size():
    assert effective_components(3000, 64) == 64
    assert effective_components(70, 64) == 17
    assert effective_components(5, 64) == 1
    assert effective_components(1, 64) == 0


def test_fit_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    latents = np.maximum(rng.standard_normal((400, 32)) @ rng.standard_normal((32, 64)), 0).astype(
        np.float32
    )
    model = fit_class_density(latents, 16, "fd")
    assert model.n_components == 16
    path = model.save(tmp_path / "fit.npz")
    loaded = ClassDensityModel.load(path)
    np.testing.assert_array_equal(loaded.scores(latents), model.scores(latents))
    np.testing.assert_array_equal(loaded.log_density(latents), model.log_density(latents))
    assert loaded.bin_rule == "fd"
    # a new image far from the class gets a much lower log-density than a typical member
    far = latents[:1] + 50.0
    assert loaded.log_density(far)[0] < np.median(loaded.log_density(latents)) - 10


def test_single_image_class_has_no_density(tmp_path):
    model = fit_class_density(np.ones((1, 8), np.float32), 64)
    assert model.n_components == 0 and model.density is None
    assert model.log_density(np.ones((1, 8), np.float32)).tolist() == [0.0]
    loaded = ClassDensityModel.load(model.save(tmp_path / "one.npz"))
    assert loaded.density is None


def test_fit_rejects_non_finite_latents():
    bad = np.zeros((10, 4), np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_class_density(bad, 4)


@pytest.mark.parametrize("n", [1, 2, 40, 300])
def test_the_scores_a_fit_returns_are_the_model_s_own(n):
    """`fit_with_scores` hands back the scores it fitted the splines to: bit for bit those of
    `ClassDensityModel.scores`, with the model `fit_class_density` makes."""
    from dedup_assets.core.density.class_density import fit_with_scores

    latents = np.random.default_rng(n).normal(size=(n, 12)).astype(np.float32)
    model, scores = fit_with_scores(latents, 8)
    np.testing.assert_array_equal(scores, model.scores(latents))
    again = fit_class_density(latents, 8)
    np.testing.assert_array_equal(again.pca.components, model.pca.components)
    np.testing.assert_array_equal(again.log_density(latents), model.log_density_of_scores(scores))
