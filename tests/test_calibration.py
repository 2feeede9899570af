"""False-removal budgets (core/calibration.py): decoys, nearest-decoy similarity, quantiles."""

import numpy as np
import pytest

from dedup_assets.core.calibration import budget_thresholds, mirrored, nearest_decoy_similarity
from dedup_assets.core.similarity import l2_normalize


def test_mirrored_flips_each_image_and_leaves_the_input():
    px = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    before = px.copy()
    lr, tb = mirrored(px), mirrored(px, vertical=True)
    assert np.array_equal(lr[:, :, 0], px[:, :, 3]) and np.array_equal(tb[:, 0], px[:, 3])
    assert lr.flags.c_contiguous and np.array_equal(px, before)


def test_nearest_decoy_similarity_is_the_row_maximum_in_blocks():
    rng = np.random.default_rng(0)
    v = l2_normalize(rng.normal(size=(300, 8)))
    d = l2_normalize(rng.normal(size=(250, 8)))
    got = nearest_decoy_similarity(v, d, block=16)
    np.testing.assert_allclose(got, (v @ d.T).max(axis=1), rtol=1e-6)
    assert nearest_decoy_similarity(v[:0], d).shape == (0,)
    # Without its own decoy: row i never sees decoy i.
    mirror = v.copy()
    s = v @ mirror.T
    np.fill_diagonal(s, -np.inf)
    got = nearest_decoy_similarity(v, mirror, block=16, own=False)
    np.testing.assert_allclose(got, s.max(axis=1), rtol=1e-6)
    assert (got < 0.9999).all()


def test_budget_cosine_leaves_at_most_the_budget_above_it():
    null = np.linspace(0.0, 0.99, 1000)
    t1, t5 = budget_thresholds(null, [0.01, 0.05])
    assert (null > t1).sum() <= 10 and (null > t5).sum() <= 50
    assert (null >= t1).sum() == 11  # the cosine is a sample value: the next one is over
    assert t1 > t5
    assert budget_thresholds(np.array([]), [0.01]) == [1.0]
    assert budget_thresholds(np.full(5, 0.7), [0.01]) == [0.7]  # all tied: none strictly above
    with pytest.raises(ValueError, match="budget"):
        budget_thresholds(null, [0.0])


def test_sampled_queries_skip_their_own_mirror_as_the_full_pass_does():
    from dedup_assets.core.calibration import nearest_decoy_similarity
    from dedup_assets.core.similarity import l2_normalize

    rng = np.random.default_rng(4)
    v = l2_normalize(rng.standard_normal((300, 8)).astype(np.float32))
    d = l2_normalize(v + 0.01 * rng.standard_normal(v.shape).astype(np.float32))
    full = nearest_decoy_similarity(v, d, 64, own=False)
    picks = np.sort(rng.choice(300, 40, replace=False))
    sampled = nearest_decoy_similarity(v[picks], d, 64, own=False, query_index=picks)
    np.testing.assert_allclose(sampled, full[picks], atol=1e-6)  # same up to BLAS rounding
    assert (full < 0.99).all(), "an image's own near-identical mirror is never its match"


def test_mirror_latents_are_encoded_once_per_latents(tmp_path):
    """Stored under the latents' provenance: read back while it holds, encoded anew when
    the latents change (new images or a new model), never for the wrong latents."""
    from dedup_assets.core.artifacts import mirror_latents
    from dedup_assets.core.layout import OutputLayout

    layout = OutputLayout(tmp_path)
    calls = []

    def encode(value: float):
        def run():
            calls.append(value)
            return np.full((3, 4), value, np.float32)

        return run

    first = mirror_latents(layout, "forest", {"class": "a", "model": "m"}, encode(1.0))
    again = mirror_latents(layout, "forest", {"class": "a", "model": "m"}, encode(2.0))
    assert calls == [1.0] and np.array_equal(first, again)
    changed = mirror_latents(layout, "forest", {"class": "a", "model": "m2"}, encode(3.0))
    assert calls == [1.0, 3.0] and (changed == 3.0).all()
    layout.mirror_latents("forest").write_bytes(b"torn")  # unreadable: encoded again
    assert (mirror_latents(layout, "forest", {"class": "a", "model": "m2"}, encode(4.0)) == 4).all()
