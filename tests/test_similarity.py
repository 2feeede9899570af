"""Tests for blocked cosine similarity and the similarity spaces
(dedup_assets.core.decision.similarity)."""

from __future__ import annotations

import numpy as np
import pytest

from dedup_assets.core.decision.similarity import (
    LATENT_SPACES,
    count_pairs_above,
    embed,
    iter_similarity_blocks,
    l2_normalize,
    pairs_above,
    top_columns,
)
from dedup_assets.core.density.class_density import fit_class_density


def _unit(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


# Pairs whose float32 cosine is exactly a known value: the first vector is an axis, so the
# dot product is one coordinate of the second vector, stored exactly.
EXACT = [
    ([1.0, 0.0], [0.5, np.sqrt(0.75)], 0.5),
    ([1.0, 0.0], [0.75, np.sqrt(1 - 0.75**2)], 0.75),
    ([0.0, 0.0, 1.0], [np.sqrt(1 - 0.9375**2), 0.0, 0.9375], 0.9375),
    ([1.0, 0.0, 0.0], [0.96875, 0.0, np.sqrt(1 - 0.96875**2)], 0.96875),
    ([0.0, 1.0], [-0.25, np.sqrt(1 - 0.0625)], np.sqrt(1 - 0.0625)),  # float32 of itself
]


@pytest.mark.parametrize(("a", "b", "cos"), EXACT)
def test_threshold_is_strictly_greater_than(a, b, cos):
    x = _unit([a, b])
    c = float(x[0] @ x[1])
    assert c == float(np.float32(cos))
    t_equal = c
    t_below = float(np.nextafter(np.float32(c), np.float32(-1)))
    t_above = float(np.nextafter(np.float32(c), np.float32(2)))
    # equal to T: not a duplicate
    i, j, s = pairs_above(x, t_equal)
    assert len(i) == 0
    assert count_pairs_above(x, np.array([t_equal]))[0] == 0
    # just below T's value: a duplicate, with the exact similarity
    i, j, s = pairs_above(x, t_below)
    assert (i.tolist(), j.tolist()) == ([0], [1])
    assert float(s[0]) == c
    assert count_pairs_above(x, np.array([t_below]))[0] == 1
    assert len(pairs_above(x, t_above)[0]) == 0


def test_paper_example_cosine_0_6_equal_to_threshold_is_not_a_duplicate():
    x = _unit([[1.0, 0.0], [0.6, 0.8]])
    assert len(pairs_above(x, 0.6)[0]) == 0
    assert count_pairs_above(x, np.array([0.6]))[0] == 0
    assert len(pairs_above(x, 0.59)[0]) == 1
    assert count_pairs_above(x, np.array([0.59]))[0] == 1


def test_angles_in_the_plane():
    # unit vectors at 0, 20, 45, 90, 180 degrees
    deg = np.array([0.0, 20.0, 45.0, 90.0, 180.0])
    x = _unit(np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], axis=1))
    i, j, s = pairs_above(x, np.cos(np.radians(30.0)))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (1, 2)]
    np.testing.assert_allclose(s, np.cos(np.radians([20.0, 25.0])), rtol=1e-6)
    i, j, _ = pairs_above(x, np.cos(np.radians(50.0)))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2), (2, 3)]
    # the opposite pair (0 and 180 degrees) has cosine exactly -1: not above T = -1
    assert count_pairs_above(x, np.array([-1.0]))[0] == 10 - 1


def _brute_pairs(x: np.ndarray, t: float) -> set[tuple[int, int]]:
    s = x.astype(np.float64) @ x.astype(np.float64).T
    n = len(x)
    return {(i, j) for i in range(n) for j in range(i + 1, n) if s[i, j] > t}


def _clustered(seed: int, n: int = 150, d: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, d))
    x = centres[rng.integers(0, 10, n)] + 0.4 * rng.normal(size=(n, d))
    return l2_normalize(x)


def _margin_ok(x: np.ndarray, thresholds) -> None:
    s = x.astype(np.float64) @ x.astype(np.float64).T
    iu = np.triu_indices(len(x), 1)
    for t in thresholds:
        assert np.abs(s[iu] - t).min() > 1e-6, "test data too close to a threshold"


THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
@pytest.mark.parametrize("seed", [0, 1])
def test_pairs_above_equals_brute_force(block, seed):
    x = _clustered(seed)
    _margin_ok(x, THRESHOLDS)
    s64 = x.astype(np.float64) @ x.astype(np.float64).T
    for t in THRESHOLDS:
        i, j, s = pairs_above(x, t, block=block)
        got = list(zip(i.tolist(), j.tolist(), strict=True))
        assert len(got) == len(set(got))
        assert set(got) == _brute_pairs(x, t)
        assert all(a < b for a, b in got)
        assert s.dtype == np.float32
        np.testing.assert_allclose(s, s64[i, j], atol=1e-6)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_count_pairs_above_agrees(block):
    x = _clustered(3)
    _margin_ok(x, THRESHOLDS)
    counts = count_pairs_above(x, np.array(THRESHOLDS), block=block)
    assert counts.tolist() == [len(_brute_pairs(x, t)) for t in THRESHOLDS]
    assert counts.tolist() == [len(pairs_above(x, t, block=block)[0]) for t in THRESHOLDS]
    n = len(x)
    assert count_pairs_above(x, np.array([-2.0]), block=block)[0] == n * (n - 1) // 2


def test_pairs_above_small_inputs():
    for n in (0, 1):
        i, j, s = pairs_above(np.zeros((n, 3), np.float32), 0.5)
        assert len(i) == len(j) == len(s) == 0
        assert count_pairs_above(np.zeros((n, 3), np.float32), np.array([0.5]))[0] == 0


def test_similarity_blocks_cover_the_upper_triangle():
    x = _clustered(4, n=23, d=5)
    full = x @ x.T
    seen = np.zeros((23, 23), dtype=int)
    for r0, c0, s in iter_similarity_blocks(x, block=5):
        assert r0 == c0
        assert s.shape == (min(5, 23 - r0), 23 - c0)
        np.testing.assert_allclose(s, full[r0 : r0 + len(s), c0:], atol=1e-6)
        seen[r0 : r0 + len(s), c0:] += 1
    assert (seen[np.triu_indices(23, 1)] == 1).all()


def test_l2_normalize_keeps_zero_rows_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-20, 0.0], [0.0, -2.0]])
    y = l2_normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.0, 0.0])
    np.testing.assert_array_equal(y[3], [0.0, -1.0])
    assert np.all(np.isfinite(y))
    assert len(pairs_above(l2_normalize([[0.0, 0.0], [0.0, 0.0]]), -0.5)[0]) == 1  # cos 0 > -0.5
    assert len(pairs_above(l2_normalize([[0.0, 0.0], [0.0, 0.0]]), 0.0)[0]) == 0


@pytest.fixture(scope="module")
def class_model():
    rng = np.random.default_rng(11)
    latents = np.abs(rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24))).astype(np.float32)
    return latents, fit_class_density(latents, n_components=8)


def _assert_unit_or_zero(e: np.ndarray) -> None:
    norms = np.linalg.norm(e.astype(np.float64), axis=1)
    assert np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0.0))


@pytest.mark.parametrize("space", LATENT_SPACES)
def test_embed_returns_unit_rows(space, class_model):
    latents, model = class_model
    e = embed(latents, space, model)
    assert e.dtype == np.float32
    assert e.shape[0] == len(latents)
    _assert_unit_or_zero(e)
    assert (np.linalg.norm(e, axis=1) > 0).all()


def test_embed_raw_is_cosine_of_latents(class_model):
    latents, _ = class_model
    e = embed(latents, "raw")
    ref = latents / np.linalg.norm(latents, axis=1, keepdims=True)
    np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-6)
    # zero latents get the origin axis: identical to each other, similar to nothing else
    z = embed(np.vstack([np.zeros((2, 5)), np.ones((1, 5))]), "raw")
    assert z.shape == (3, 6)
    np.testing.assert_allclose(z @ z.T, [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-6)


def test_embed_whitened_divides_by_component_std(class_model):
    latents, model = class_model
    e = embed(latents, "whitened", model)
    assert e.shape == (len(latents), 8)
    w = model.pca.transform(latents).astype(np.float64) / np.sqrt(model.pca.variances)
    ref = w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(e, ref, atol=1e-5)
    # whitened scores have unit variance per component
    np.testing.assert_allclose(w.std(axis=0, ddof=1), 1.0, rtol=1e-3)
    # the class mean sits at the origin: it gets the origin axis, so two images at the
    # mean are duplicates of each other (a zero vector would hide them) and of nothing else
    at_mean = np.repeat(model.pca.mean[None, :].astype(np.float32), 2, axis=0)
    m = embed(np.vstack([at_mean, latents[:1]]), "whitened", model)
    assert m.shape == (3, 9)
    np.testing.assert_allclose(m @ m.T, np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]]), atol=1e-6)


def test_embed_spline_copula_uses_normal_scores(class_model):
    latents, model = class_model
    e = embed(latents, "spline_copula", model)
    assert e.shape == (len(latents), 8)
    g = model.density.normal_scores(model.scores(latents)).astype(np.float64)
    ref = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(e, ref, atol=1e-5)
    # normal scores of the fitting sample are roughly standard normal per component
    assert np.all(np.abs(g.mean(axis=0)) < 0.1)
    assert np.all(np.abs(g.std(axis=0) - 1.0) < 0.15)


def test_embed_identical_latents_are_maximally_similar(class_model):
    latents, model = class_model
    x = np.concatenate([latents[:5], latents[:5]])
    for space in LATENT_SPACES:
        e = embed(x, space, model)
        np.testing.assert_allclose(np.einsum("ij,ij->i", e[:5], e[5:]), 1.0, atol=1e-6)


def test_embed_one_image_class_gives_a_unit_vector():
    latents = np.ones((1, 6), dtype=np.float32)
    model = fit_class_density(latents, n_components=4)
    assert model.density is None
    for space in ("whitened", "spline_copula"):
        e = embed(latents, space, model)
        assert e.shape[0] == 1
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0)


def test_embed_unknown_space_raises(class_model):
    latents, model = class_model
    with pytest.raises(ValueError, match="unknown similarity space"):
        embed(latents, "cosine", model)
    with pytest.raises(ValueError):
        embed(latents, "Raw")


@pytest.mark.parametrize("space", ["whitened", "spline_copula"])
def test_embed_missing_model_raises(space, class_model):
    latents, _ = class_model
    with pytest.raises(ValueError, match="density model"):
        embed(latents, space)
    with pytest.raises(ValueError):
        embed(latents, space, None)


@pytest.mark.parametrize("rows, cols", [(0, 3), (1, 1), (1, 5), (2, 2), (7, 40), (64, 300)])
def test_top_columns_are_the_stably_sorted_largest(rows, cols):
    """Each row's k largest, highest first, equal values by lowest column: the first k of a
    stable descending sort, for every k up to the row's width (past the argmax passes
    too), on values with many ties and on -inf entries."""
    rng = np.random.default_rng(rows * 1000 + cols)
    values = rng.integers(0, 4, size=(rows, cols)).astype(np.float32)
    values[rng.random((rows, cols)) < 0.1] = -np.inf
    for k in range(0, cols + 1):
        expected = np.argsort(-values, axis=1, kind="stable")[:, :k]
        got = top_columns(values.copy(), k)
        assert got.dtype == np.int64 and got.shape == (rows, k)
        assert np.array_equal(got, expected), k


def test_top_columns_of_identical_values_are_the_first_columns():
    s = np.ones((3, 10), np.float32)
    assert np.array_equal(top_columns(s, 2), np.tile([0, 1], (3, 1)))
    assert np.array_equal(top_columns(np.ones((3, 10), np.float32), 9), np.tile(range(9), (3, 1)))
    with pytest.raises(ValueError, match="k = 11"):
        top_columns(np.ones((3, 10), np.float32), 11)


def test_slab_outputs_give_the_operators_bits_in_one_buffer_per_thread():
    import threading

    from dedup_assets.core.decision.similarity import SlabOutputs

    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    outputs = SlabOutputs()
    first = outputs.product(x[:50], x[50:].T)
    assert np.array_equal(first, x[:50] @ x[50:].T)  # the same bits as the operator
    buffer = outputs.buffer
    smaller = outputs.product(x[:10], x[100:].T)  # fits: written into the same memory
    assert outputs.buffer is buffer and np.shares_memory(smaller, buffer)
    assert np.array_equal(smaller, x[:10] @ x[100:].T)
    bigger = outputs.product(x[:200], x.T)  # outgrows it: a new buffer
    assert outputs.buffer is not buffer and np.array_equal(bigger, x[:200] @ x.T)
    reserved = SlabOutputs(capacity=200 * 300)
    reserved.product(x[:2], x[:3].T)
    assert reserved.buffer.size == 200 * 300  # allocated once for the largest
    seen = {}

    def other_thread() -> None:
        seen["result"] = outputs.product(x[:50], x[50:].T)
        seen["buffer"] = outputs.buffer

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert seen["buffer"] is not outputs.buffer  # its own buffer: the caller's result stands
    assert np.array_equal(bigger, x[:200] @ x.T)
    assert np.array_equal(seen["result"], x[:50] @ x[50:].T)
    assert not np.shares_memory(first, outputs.buffer)  # the first buffer, outgrown since
