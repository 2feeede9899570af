"""The one function that decides a class: exact copies first, in every space and policy."""

import numpy as np
import pytest

from dedup_assets.core.decision.class_decision import (
    ClassData,
    decide_class,
    exact_groups,
    keep_decisions,
)
from dedup_assets.core.decision.keep_policy import KEEP_POLICIES
from dedup_assets.core.decision.similarity import SIMILARITY_SPACES
from dedup_assets.core.density.class_density import fit_class_density

THRESHOLDS = [0.5, 0.93, 0.97, 0.999]


def _class(n_distinct: int, n_copies: int, seed: int = 0) -> ClassData:
    """n_distinct different images plus n_copies pixel-identical copies of image 0."""
    rng = np.random.default_rng(seed)
    distinct = np.maximum(rng.normal(size=(n_distinct, 64)), 0).astype(np.float32)
    latents = np.vstack([distinct, np.repeat(distinct[:1], n_copies, axis=0)])
    hashes = np.array([f"h{i}" for i in range(n_distinct)] + ["h0"] * n_copies)
    ids = np.array([f"{i:05d}" for i in range(len(latents))])
    pixels = rng.integers(0, 256, (n_distinct, 64, 64, 3), dtype=np.uint8)
    pixels = np.vstack([pixels, np.repeat(pixels[:1], n_copies, axis=0)])
    model = fit_class_density(latents, 16)
    quality = np.column_stack([np.ones(len(ids)), np.full(len(ids), 4096.0), np.arange(len(ids))])
    return ClassData(ids, hashes, latents, model, pixels, None, quality)


@pytest.mark.parametrize("policy", KEEP_POLICIES)
@pytest.mark.parametrize("space", [*SIMILARITY_SPACES, "phash", "pdq"])
@pytest.mark.parametrize("n_distinct", [40, 1])
def test_500_copies_leave_exactly_one(space, policy, n_distinct):
    data = _class(n_distinct, 500)
    identical = np.flatnonzero(data.pixel_hashes == "h0")
    assert len(identical) == 501
    for d in decide_class(data, THRESHOLDS, space=space, policy=policy):
        assert not d.exact[d.kept].any()
        if d.kept[identical].sum() == 0:
            # At a low T the image itself can be a near-duplicate of another kept image:
            # then every copy names that image, with the same similarity.
            assert d.threshold == 0.5 and n_distinct > 1
            assert len(set(d.duplicate_of[identical])) == 1
            assert not d.exact[identical].any()
            continue
        assert d.kept[identical].sum() == 1
        kept = identical[d.kept[identical]][0]
        gone = identical[identical != kept]
        np.testing.assert_array_equal(d.duplicate_of[gone], kept)
        np.testing.assert_array_equal(d.similarity[gone], 1.0)
        assert d.exact[gone].all()
        if n_distinct == 1:
            assert d.n_kept == 1


def test_copies_of_a_removed_image_name_the_image_that_removed_it():
    rng = np.random.default_rng(3)
    a = rng.normal(size=16).astype(np.float32)
    b = a + 0.01 * rng.normal(size=16).astype(np.float32)  # near-duplicate of a
    vectors = np.vstack([a, b, b, b, rng.normal(size=16)]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hashes = np.array(["a", "b", "b", "b", "c"])
    d = keep_decisions(vectors, np.arange(5), hashes, [0.9])[0]
    assert d.kept.tolist() == [True, False, False, False, True]
    np.testing.assert_array_equal(d.duplicate_of[1:4], 0)  # b's copies name a, not b
    np.testing.assert_allclose(d.similarity[1:4], d.similarity[1])
    assert d.similarity[1] < 1.0 and not d.exact[1:4].any()


def test_representative_is_the_first_copy_in_visit_order():
    hashes = np.array(["x", "y", "x", "x", "y"])
    order = np.array([3, 4, 0, 1, 2])
    representative, reps = exact_groups(hashes, order)
    assert representative.tolist() == [3, 4, 3, 3, 4]
    assert reps.tolist() == [3, 4]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_classes(n):
    if n == 0:
        data = ClassData(np.array([], str), np.array([], str), np.zeros((0, 8), np.float32), None)
        assert [d.n_kept for d in decide_class(data, THRESHOLDS, space="raw", policy="first")] == [
            0
        ] * 4
        return
    data = _class(n, 0)
    for space in SIMILARITY_SPACES:
        for d in decide_class(data, [0.999], space=space, policy="density"):
            assert d.kept[0]  # the first image is always kept


def test_two_identical_images_keep_one_in_every_space():
    data = _class(1, 1)
    for space in SIMILARITY_SPACES:
        for d in decide_class(data, THRESHOLDS, space=space, policy="first"):
            assert d.kept.tolist() == [True, False]
            assert d.exact.tolist() == [False, True]
            assert d.similarity[1] == 1.0


def test_images_at_the_class_mean_are_not_hidden_by_a_zero_embedding():
    """Two different files whose latents both equal the class mean embed to zero in the
    centred spaces; they must still be found similar to each other."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 32)).astype(np.float32)
    base -= base.mean(axis=0)
    latents = np.vstack([base, np.zeros((2, 32), np.float32)])  # the mean of the class is 0
    latents += 1.0
    model = fit_class_density(latents, 10)
    ids = np.array([f"{i:03d}" for i in range(42)])
    data = ClassData(ids, np.array([f"h{i}" for i in range(42)]), latents, model)
    for space in ("whitened", "spline_copula"):
        d = decide_class(data, [0.99], space=space, policy="first")[0]
        assert d.space == space
        assert d.kept[40] != d.kept[41], space
        assert np.nanmax(d.similarity[40:]) == pytest.approx(1.0, abs=1e-6)


def test_a_class_too_small_for_a_fitted_space_is_decided_by_phash():
    """Three distinct images give one principal component: in one dimension every pair on
    the same side of the mean has cosine 1, so the fitted spaces would remove distinct
    images. Such a class is decided by pHash and says so."""
    data = _class(3, 0, seed=9)
    assert data.model.n_components < 8
    for space in ("whitened", "spline_copula"):
        for d in decide_class(data, [0.9, 0.97], space=space, policy="density"):
            assert d.space == "phash"
            assert d.kept.all()
    assert decide_class(data, [0.9], space="raw", policy="first")[0].space == "raw"
    # The joined space falls back to its own pixel part, the DCT descriptor.
    joined = decide_class(data, [0.9], space="spline_copula_dct", policy="density")[0]
    assert joined.space == "dct" and joined.kept.all()


@pytest.mark.parametrize(
    ("wanted", "ids", "expected"),
    [
        ([], [], []),
        (["a"], [], [-1]),
        ([], ["a"], []),
        (["b", "a"], ["a", "b"], [1, 0]),
        (["x/é 1.png", "x/é 10.png", "gone"], ["x/é 10.png", "z", "x/é 1.png"], [2, 0, -1]),
        (["a", "a"], ["a"], [0, 0]),
    ],
)
def test_latent_rows_find_their_catalog_rows(wanted, ids, expected):
    """`load_class_data` places each latent row at its catalog row (-1: not catalogued)."""
    from dedup_assets.core.decision.class_keep import _positions_of

    got = _positions_of(np.array(wanted, dtype=str), np.array(ids, dtype=str))
    assert got.tolist() == expected
