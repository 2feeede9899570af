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


# --- A stored fit kept while a class's images stay close to those it was fitted on --------


def _ids(n: int, start: int = 0) -> np.ndarray:
    return np.array([f"img é {i:05d}" for i in range(start, start + n)])


@pytest.mark.parametrize(
    ("fitted", "now", "share"),
    [
        (0, 0, float("inf")),  # a fit on no image: always refitted
        (1, 1, 0.0),
        (1, 0, 1.0),
        (2, 1, 0.5),
        (2, 3, 0.5),
        (10, 11, 0.1),
        (1000, 1000, 0.0),
    ],
)
def test_changed_share_counts_added_and_removed_images_against_the_fitted(fitted, now, share):
    from dedup_assets.core.density.class_density import changed_share

    assert changed_share(_ids(fitted), _ids(now)) == share


def test_changed_share_sees_replaced_images_with_the_same_count():
    """Ten removed and ten added: 20% changed, though the count is the same."""
    from dedup_assets.core.density.class_density import changed_share

    assert changed_share(_ids(100), _ids(100, start=10)) == pytest.approx(0.2)


def _stored(tmp_path, n: int, digest: str = "m1", components: int = 8, rule: str = "fd"):
    from dedup_assets.core.density.class_density import FitBasis, write_class_density

    latents = np.random.default_rng(n).normal(size=(n, 24)).astype(np.float32)
    model = fit_class_density(latents, components, rule)
    basis = FitBasis(digest, components, rule, _ids(n))
    path = tmp_path / f"fit{n}.npz"
    write_class_density(model, path, {"fit": "f1"}, basis)
    return path, model, basis


@pytest.mark.parametrize("n", [2, 20, 300, 1000])
def test_a_stored_fit_is_kept_up_to_the_refit_share_and_refitted_beyond(tmp_path, n):
    """For class sizes 2 to 1,000: the stored fit stands for images that differ from those
    it was fitted on by at most REFIT_SHARE (added plus removed), never beyond."""
    from dedup_assets.core.density.class_density import (
        REFIT_SHARE,
        FitBasis,
        read_fit_basis,
        reusable_fit,
    )

    path, model, basis = _stored(tmp_path, n)
    stored = read_fit_basis(path)
    assert stored is not None and stored.same_source(basis)
    np.testing.assert_array_equal(stored.image_ids, basis.image_ids)  # odd names round trip

    def now(ids):
        return FitBasis("m1", 8, "fd", ids)

    same = reusable_fit(path, now(_ids(n)))
    assert same is not None and same.share == 0.0
    np.testing.assert_array_equal(same.model.pca.components, model.pca.components)
    allowed = int(np.floor(REFIT_SHARE * n))
    grown = reusable_fit(path, now(_ids(n + allowed)))
    assert grown is not None and grown.share <= REFIT_SHARE
    assert reusable_fit(path, now(_ids(n + allowed + 1))) is None  # one more: refitted
    assert reusable_fit(path, now(_ids(n - allowed - 1))) is None  # removed beyond the share
    if allowed:
        kept = reusable_fit(path, now(_ids(n - allowed)))
        assert kept is not None and kept.basis.image_ids.size == n  # still the fitted ids
        assert kept.describe(n - allowed).startswith(f"kept: fitted on {n:,} images")


def test_a_stored_fit_is_refitted_for_another_model_other_settings_or_no_record(tmp_path):
    from dedup_assets.core.density.class_density import (
        ClassDensityModel,
        FitBasis,
        reusable_fit,
    )

    path, model, _ = _stored(tmp_path, 300)
    ids = _ids(300)
    assert reusable_fit(path, FitBasis("m1", 8, "fd", ids)) is not None
    assert reusable_fit(path, FitBasis("m2", 8, "fd", ids)) is None  # a new model
    assert reusable_fit(path, FitBasis("m1", 16, "fd", ids)) is None  # --components
    assert reusable_fit(path, FitBasis("m1", 8, "scott", ids)) is None  # --bin-rule
    # Fitted ids stored as str (the first files with a basis did): read the same.
    arrays = dict(np.load(path, allow_pickle=False))
    arrays["basis_image_ids"] = np.asarray(ids, dtype=str)
    as_str = tmp_path / "as_str.npz"
    np.savez(as_str, **arrays)
    assert reusable_fit(as_str, FitBasis("m1", 8, "fd", ids)).share == 0.0
    arrays["basis_image_ids"] = np.zeros(3)  # nonsense where the ids go: refitted
    np.savez(tmp_path / "nonsense.npz", **arrays)
    assert reusable_fit(tmp_path / "nonsense.npz", FitBasis("m1", 8, "fd", ids)) is None
    older = tmp_path / "older.npz"  # stored before fits recorded what they were made from
    model.save(older, {"fit": "f1"})
    assert ClassDensityModel.load(older).n_components == model.n_components
    assert reusable_fit(older, FitBasis("m1", 8, "fd", ids)) is None
    assert reusable_fit(tmp_path / "missing.npz", FitBasis("m1", 8, "fd", ids)) is None
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    assert reusable_fit(tmp_path / "broken.npz", FitBasis("m1", 8, "fd", ids)) is None


def test_small_additions_add_up_to_a_refit(tmp_path):
    """The share is counted against the images fitted on, not the last run's: five
    additions of 3% each keep the fit three times, then refit."""
    from dedup_assets.core.density.class_density import FitBasis, reusable_fit

    path, _, _ = _stored(tmp_path, 100)
    kept = [reusable_fit(path, FitBasis("m1", 8, "fd", _ids(100 + 3 * k))) for k in range(1, 6)]
    assert [k is not None for k in kept] == [True, True, True, False, False]


@pytest.mark.parametrize("n", [20, 300, 3000])
def test_new_images_like_the_fitted_ones_keep_the_fit_and_unlike_ones_refit_it(n):
    """A kept fit is refitted when more than OUTLIER_SHARE of the new images are less likely
    under it than all but OUTLIER_QUANTILE of its own: images off the class's support always
    are; new images from the class's law mostly stay under it (a few of them fall where the
    fit saw no image: 2-4% on average here, and a refit is only the time it takes)."""
    from dedup_assets.core.density.class_density import (
        OUTLIER_SHARE,
        fit_with_scores,
        new_images_share_unlikely,
    )

    alike_shares = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        mixing = rng.normal(size=(16, 24))
        fitted = (rng.normal(size=(n, 16)) @ mixing).astype(np.float32)
        model, _ = fit_with_scores(fitted, 8)
        extra = max(1, n // 20)
        alike = (rng.normal(size=(extra, 16)) @ mixing).astype(np.float32)
        unlike = alike + 40.0 * mixing[0]  # far along the class's main direction
        mask = np.r_[np.ones(n, bool), np.zeros(extra, bool)]
        density = model.log_density(np.vstack([fitted, unlike]).astype(np.float32))
        assert new_images_share_unlikely(density, mask) == 1.0
        density = model.log_density(np.vstack([fitted, alike]).astype(np.float32))
        alike_shares.append(new_images_share_unlikely(density, mask))
    assert np.mean(alike_shares) <= OUTLIER_SHARE / 2, alike_shares
    assert np.mean(np.array(alike_shares) <= OUTLIER_SHARE) >= 0.6, alike_shares
    assert new_images_share_unlikely(np.zeros(5), np.ones(5, bool)) == 0.0  # nothing new
    assert new_images_share_unlikely(np.zeros(5), np.zeros(5, bool)) == 0.0  # nothing fitted


def test_scores_are_computed_once_for_the_same_array_and_again_for_any_other():
    """Deciding a class asks for the same latents' scores twice: the second answer is the
    first, never one for another array (equal values, a view, a new array at the same
    address once the first is gone)."""
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(200, 16)).astype(np.float32)
    model = fit_class_density(latents, 8)
    calls = []
    transform = model.pca.transform
    object.__setattr__(model.pca, "transform", lambda x: calls.append(1) or transform(x))
    first = model.scores(latents)
    assert model.scores(latents) is first and len(calls) == 1
    copy = latents.copy()
    np.testing.assert_array_equal(model.scores(copy), first)
    assert len(calls) == 2
    assert model.scores(latents[:10]).shape == (10, 8) and len(calls) == 3
    del copy, latents
    other = rng.normal(size=(200, 16)).astype(np.float32)
    assert not np.array_equal(model.scores(other), first)
    assert model.scores([[0.0] * 16]).shape == (1, 8)  # not an array: computed, not kept
