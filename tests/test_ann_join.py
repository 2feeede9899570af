"""The approximate join: the class size that selects it, its agreement with the exact join
on clustered vectors, and that it never removes an image for a similarity it lacks."""

import numpy as np
import pytest

from dedup_assets.core.decision.ann_join import ann_pairs_above, resolve_join
from dedup_assets.core.decision.class_decision import keep_decisions
from dedup_assets.core.decision.keep_policy import greedy_keep
from dedup_assets.core.decision.similarity import l2_normalize, pairs_above


def clustered(n: int, d: int = 32, copies: float = 0.1, seed: int = 0) -> np.ndarray:
    """Unit vectors in 40 clusters (like a class's latents), with near-copies planted."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32) * 3
    x = centres[rng.integers(0, 40, n)] + rng.standard_normal((n, d)).astype(np.float32)
    k = int(n * copies)
    x[n - k :] = x[:k] + 0.05 * rng.standard_normal((k, d)).astype(np.float32)
    return l2_normalize(x)


@pytest.mark.parametrize(
    ("setting", "n", "expected"),
    [("auto", 200_000, "exact"), ("auto", 200_001, "ann"), ("exact", 10**7, "exact"),
     ("ann", 2, "ann"), ("auto", 0, "exact")],
)  # fmt: skip
def test_join_is_chosen_by_setting_and_class_size(setting, n, expected):
    assert resolve_join(setting, n) == expected
    assert resolve_join("auto", 50, min_size=49) == "ann"
    with pytest.raises(ValueError, match="unknown join"):
        resolve_join("lsh", 10)


def test_ann_keep_agrees_with_the_exact_one_and_only_removes_true_duplicates():
    x = clustered(6_000)
    order = np.random.default_rng(1).permutation(len(x))
    exact = greedy_keep(x, order, 0.95, block=512)
    ann = greedy_keep(x, order, 0.95, block=512, join="ann", nprobe=8)
    assert (~exact.kept).sum() >= 600, "the planted copies are removed by the exact join"
    agree = (exact.kept == ann.kept).mean()
    assert agree >= 0.99, agree
    gone = np.flatnonzero(~ann.kept)
    named = ann.duplicate_of[gone]
    assert ann.kept[named].all(), "a removed image names a kept image"
    true_sim = np.einsum("ij,ij->i", x[gone], x[named])
    np.testing.assert_allclose(ann.similarity[gone], true_sim, atol=1e-5)
    assert (true_sim > 0.95).all()


def test_ann_pairs_recall_of_the_exact_pairs():
    x = clustered(5_000, copies=0.05)
    i, j, s = pairs_above(x, 0.95)
    ai, aj, as_ = ann_pairs_above(x, 0.95, nprobe=8)
    exact = set(zip(i.tolist(), j.tolist(), strict=True))
    found = set(zip(ai.tolist(), aj.tolist(), strict=True))
    assert len(exact) >= 250
    assert len(exact & found) / len(exact) >= 0.99
    assert found <= exact, "every reported pair is a true pair above T"
    assert (ai < aj).all() and (as_ > 0.95).all()


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs(n):
    x = l2_normalize(np.ones((n, 4), np.float32))
    i, j, _ = ann_pairs_above(x, 0.9)
    assert len(i) == (1 if n == 2 else 0)
    d = keep_decisions(x, np.arange(n), np.array(["h"] * n), [0.9], join="ann")[0]
    assert d.n_kept == min(n, 1) and d.join == "ann"
