"""Train/test leakage (`core.decision.leakage`): exact copies by pixel hash, near copies in
any class by the blocked join, and the budget as a property: clean evaluation images are
flagged at most at the budget's rate (within the binomial bound), at every size."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_textures
from scipy.stats import binom

from dedup_assets.core.decision import leakage
from dedup_assets.core.decision.leakage import (
    DECOYS,
    MIN_DRAWS_K,
    budget_threshold,
    crop_views,
    decoy_draws,
    decoy_pixels,
    exact_matches,
    find_leaks,
    leakage_rows,
    leakage_threshold,
    plan_decoys,
    top_k,
    views_top_k,
)
from dedup_assets.core.decision.leakage_index import detect_leakage
from dedup_assets.core.decision.similarity import l2_normalize


def _clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around random centres, each cluster with its own spread: dense and
    sparse regions, like calm water beside cities."""
    which = rng.integers(len(centres), size=n)
    spread = np.linspace(0.3, 1.5, len(centres))[which, None]
    return l2_normalize(centres[which] + spread * rng.standard_normal((n, d)) / np.sqrt(d))


def test_exact_matches_pair_every_equal_hash_and_no_empty_one():
    e = np.array(["a", "b", "", "c", "a"])
    t = np.array(["x", "a", "", "a", "c", "b"])
    rows, cols = exact_matches(e, t)
    got = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    assert got == [(0, 1), (0, 3), (1, 5), (3, 4), (4, 1), (4, 3)]


def test_top_k_is_the_brute_force_top_k_in_blocks_and_close_by_cells(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((12, 16))
    refs = _clustered(3000, 16, rng, centres)
    queries = _clustered(400, 16, rng, centres)
    want = queries @ refs.T
    vals, idx = top_k(queries, refs, 3, block=64)  # many blocks
    assert np.array_equal(idx[:, 0], want.argmax(axis=1))
    assert np.allclose(vals, -np.sort(-want, axis=1)[:, :3], atol=1e-6)
    monkeypatch.setattr(leakage, "CELL_SIZE", 100)  # 30 cells, 4 probed
    avals, aidx = top_k(queries, refs, 3, join="ann", nprobe=4)
    # every similarity reported is the pair's own; the nearest is found for nearly all
    assert np.allclose(avals, np.take_along_axis(want, aidx, axis=1), atol=1e-6)
    assert (aidx[:, 0] == idx[:, 0]).mean() > 0.9
    assert (avals[:, 0] <= vals[:, 0] + 1e-6).all()


def test_near_copies_in_any_class_and_exact_copies_are_flagged():
    rng = np.random.default_rng(1)
    d = 32
    train = l2_normalize(rng.standard_normal((500, d)))
    clean = l2_normalize(rng.standard_normal((300, d)))
    # eval 0-9: near copies of train rows 100-109; eval 10: an exact copy of train 7,
    # which train holds twice (7 and 8: a duplicate within train that is also a leak)
    near = l2_normalize(train[100:110] + 0.05 * rng.standard_normal((10, d)))
    evals = np.concatenate([near, train[7:8], clean])
    train[8] = train[7]
    t_hash = np.array([f"t{i}" for i in range(500)])
    t_hash[8] = t_hash[7]
    e_hash = np.array([f"e{i}" for i in range(len(evals))])
    e_hash[10] = t_hash[7]
    found = find_leaks(evals, train, 0.9, eval_hashes=e_hash, train_hashes=t_hash, block=64)
    assert found.flagged.tolist() == list(range(11))
    pairs = set(
        zip(found.eval_row.tolist(), found.train_row.tolist(), found.kind.tolist(), strict=True)
    )
    assert {(i, 100 + i, "near") for i in range(10)} <= pairs
    assert (10, 7, "exact") in pairs and (10, 8, "exact") in pairs
    assert not any(e == 10 and k == "near" for e, _, k in pairs)  # an exact pair is not repeated
    assert found.nearest[:10].tolist() == list(range(100, 110))
    assert found.nearest_similarity[10] == 1.0
    labels = np.array(["cats", "dogs"])[rng.integers(2, size=500)]
    rows = leakage_rows(
        found,
        "test",
        ["c"] * len(evals),
        [f"e{i}.png" for i in range(len(evals))],
        labels.tolist(),
        [f"t{i}.png" for i in range(500)],
    )
    assert rows[0] == {
        "split": "test",
        "class": "c",
        "image": "e0.png",
        "train_class": labels[100],
        "train_image": "t100.png",
        "similarity": pytest.approx(float(found.similarity[0])),
        "kind": "near",
        "threshold": 0.9,
    }


@pytest.mark.parametrize("budget", [0.001, 0.01])
def test_the_budget_holds_on_clean_eval_images_at_every_size(budget):
    """Decoys drawn like clean eval images (exchangeable), each with a source whose nearest
    training images are left out as `detect_leakage` leaves them out: over sizes of train
    (100 to 4,000) and eval, the clean eval images flagged stay within the binomial 99%
    bound of b x images, overall and per size."""
    d = 24
    total = flagged_total = 0
    for n_train, n_eval, reps in ((100, 3000, 4), (1000, 3000, 4), (4000, 6000, 2)):
        flagged_size = clean_size = 0
        for rep in range(reps):
            rng = np.random.default_rng([n_train, rep, int(budget * 1e4)])
            centres = rng.standard_normal((8, d))
            train = _clustered(n_train, d, rng, centres)
            sources = _clustered(n_eval, d, rng, centres)
            decoys = _clustered(n_eval, d, rng, centres)
            t, _ = budget_threshold([decoy_draws(decoys, sources, train)], budget)
            clean = _clustered(n_eval, d, rng, centres)
            found = find_leaks(clean, train, t)
            flagged_size += len(found.flagged)
            clean_size += n_eval
        bound = binom.ppf(0.99, clean_size, budget)
        assert flagged_size <= bound, (n_train, flagged_size, clean_size, bound)
        flagged_total += flagged_size
        total += clean_size
    assert flagged_total <= binom.ppf(0.99, total, budget)
    # and the rule is not vacuous: it flags about b of them, not none
    assert flagged_total >= binom.ppf(0.01, total, budget)


def test_too_few_draws_for_the_budget_flag_exact_copies_only():
    assert leakage_threshold(np.full(998, 0.5), 0.001) == 1.0
    assert leakage_threshold(np.linspace(0, 1, 999), 0.001) == 1.0  # k = 1: the highest
    assert leakage_threshold(np.array([np.nan, -np.inf]), 0.5) == 1.0


def test_a_threshold_read_from_its_few_highest_draws_is_said_to_be_unsteady():
    """Below about 4,000 draws at 0.1% the threshold is the single highest (k = 1, 2 or 3):
    one decoy that copies a training image (the mirror of a mirrored copy) lifts it over
    every near copy, so the note says so and names the budget that reads it steadily (its
    4th highest draw); from MIN_DRAWS_K on, nothing is said; below 999, exact copies only."""
    unsteady = leakage.budget_facts(0.001, 1773, 0.91484)
    assert unsteady["readable"] and not unsteady["steady"]
    assert unsteady["from_highest"] == 1 and unsteady["suggested_budget"] == 0.005
    assert 0.005 * (1773 + 1) >= MIN_DRAWS_K > 0.002 * (1773 + 1)  # 0.2% reads only its 3rd
    note = leakage.budget_note("test", unsteady)
    assert note.startswith("the near-copy threshold of test (0.9148) was read from its highest")
    assert "decoy draw of 1,773 (about 3,999 read the 0.1% budget steadily)" in note
    assert note.endswith("; --leakage-budget 0.005 reads it steadily")
    assert leakage.budget_read_words(unsteady) == "yes, from its 1 highest draw(s): not steady"
    three = leakage.budget_facts(0.001, 3998, 0.8)
    assert three["from_highest"] == 3 and "from its 3 highest decoy draws" in leakage.budget_note(
        "val", three
    )
    steady = leakage.budget_facts(0.001, 3999, 0.8)
    assert steady["steady"] and steady["from_highest"] == MIN_DRAWS_K
    assert leakage.budget_note("test", steady) == "" and leakage.budget_read_words(steady) == "yes"
    unread = leakage.budget_facts(0.001, 998, 1.0)
    assert not unread["readable"] and unread["from_highest"] == 0
    assert leakage.budget_note("test", unread).startswith("only exact copies were looked for")
    assert leakage.budget_read_words(unread) == "no: exact copies only"
    # a record written before `steady` existed says nothing new
    assert leakage.budget_note("test", {"budget": 0.001, "readable": True}) == ""
    # the smallest larger budget that reads its 4th highest draw; none above 50%
    assert leakage.budget_facts(0.05, 40, 0.9)["suggested_budget"] == 0.1  # floor(0.1 x 41)
    last = leakage.budget_facts(0.5, 6, 0.9)  # floor(0.5 x 7) = 3: readable, not steady
    assert last["readable"] and not last["steady"] and last["suggested_budget"] is None
    assert leakage.budget_note("test", last).endswith("can hide near copies")


def test_decoys_are_added_until_the_budget_can_be_read():
    plan = plan_decoys(5000, 20000, 0.001)
    assert [(s, k) for s, k, _ in plan.parts] == [("eval", "hflip")]  # 5,000 >= 3,999 draws
    small = plan_decoys(150, 250, 0.001)
    assert [(s, k) for s, k, _ in small.parts] == [
        (s, k) for k in DECOYS for s in ("eval", "train")
    ][: len(small.parts)]
    assert small.draws == 1200  # every flip of both splits: as many draws as there are
    capped = plan_decoys(30000, 30000, 0.001, max_sources=20000)
    assert capped.draws == 20000 and len(np.unique(capped.parts[0][2])) == 20000
    px = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert np.array_equal(decoy_pixels(px, "hflip")[:, :, 0], px[:, :, -1])
    assert np.array_equal(decoy_pixels(px, "vflip")[:, 0], px[:, -1])
    assert np.array_equal(decoy_pixels(px, "rot180")[:, 0, 0], px[:, -1, -1])


def test_detect_leakage_end_to_end_finds_planted_copies_within_the_budget():
    """A fixed random projection stands in for the encoder: copies (brightened, noisy,
    cropped, exact) of 20 of 600 eval images put into train are found, at most the
    budget's share of the clean eval images is flagged."""
    rng = np.random.default_rng(3)
    train_px = smooth_textures(900, rng)
    eval_px = smooth_textures(600, rng)
    proj = rng.standard_normal((64 * 64 * 3 // 16, 64)).astype(np.float32)

    def encode(px: np.ndarray) -> np.ndarray:
        small = px.reshape(len(px), 16, 4, 16, 4, 3).mean(axis=(2, 4)).reshape(len(px), -1)
        return (small.astype(np.float32) / 255.0 - 0.5) @ proj

    leaked = np.arange(0, 600, 30)  # 20 images
    copies = eval_px[leaked].astype(np.float32)
    copies[:7] = copies[:7] * 1.1 + 5
    copies[7:14] += rng.normal(0, 4, copies[7:14].shape)
    copies = np.clip(copies, 0, 255).astype(np.uint8)
    copies[14:17] = crop_views(eval_px[leaked[14:17]])[4]  # zoomed in on the centre, 14-16
    # 17-19: exact
    train_px = np.concatenate([train_px, copies])
    hashes = lambda px: np.array([hash(x.tobytes()) for x in px]).astype(str)  # noqa: E731
    result = detect_leakage(
        encode(eval_px),
        eval_px,
        encode(train_px),
        train_px,
        encode,
        eval_hashes=hashes(eval_px),
        train_hashes=hashes(train_px),
        budget=0.01,
    )
    assert result.draws >= 399  # k = floor(0.01 x (draws + 1)) >= 4
    flagged = set(result.leaks.flagged.tolist())
    assert set(leaked.tolist()) <= flagged
    clean_flagged = len(flagged - set(leaked.tolist()))
    assert clean_flagged <= binom.ppf(0.99, 580, 0.01)
    exact = result.leaks.eval_row[result.leaks.kind == "exact"]
    assert sorted(exact.tolist()) == sorted(leaked[17:].tolist())
    assert 0.0 < result.threshold < 1.0


def test_views_count_each_reference_once_at_its_best_view_and_match_plant_crops():
    from PIL import Image

    refs = l2_normalize(np.eye(6, dtype=np.float32)[:, :4] + 0.01)
    a = l2_normalize(np.array([[1, 0.2, 0, 0], [0, 0, 1, 0.1]], np.float32))
    b = l2_normalize(np.array([[1, 0.9, 0, 0], [0, 0.1, 1, 0]], np.float32))
    vals, idx = views_top_k([a, b], refs, 3)
    for row in range(2):
        want = np.maximum(a[row] @ refs.T, b[row] @ refs.T)
        assert idx[row].tolist() == np.argsort(-want)[:3].tolist()  # no reference twice
        assert np.allclose(vals[row], np.sort(want)[::-1][:3])
    # the views are the crops `dedup plant` makes: 90% of each side at a corner, the centre
    px = smooth_textures(2, np.random.default_rng(5))
    views = crop_views(px)
    assert len(views) == 9
    for view, box in ((0, (0, 0, 58, 58)), (4, (3, 3, 61, 61)), (8, (6, 6, 64, 64))):
        crop = np.asarray(Image.fromarray(px[1]).resize((64, 64), Image.BICUBIC, box=box))
        assert np.array_equal(views[view][1], crop)


def test_an_empty_split_flags_nothing_and_says_so():
    rng = np.random.default_rng(4)
    px = smooth_textures(40, rng)
    proj = rng.standard_normal((64 * 64 * 3, 16)).astype(np.float32)

    def encode(p: np.ndarray) -> np.ndarray:
        return (p.reshape(len(p), 64 * 64 * 3).astype(np.float32) / 255.0 - 0.5) @ proj

    none = px[:0]
    empty_eval = detect_leakage(encode(none), none, encode(px), px, encode, budget=0.05)
    assert len(empty_eval.leaks) == 0 and empty_eval.leaks.nearest.shape == (0,)
    # train's flips alone read the budget: as many as k = 4 needs (79 of its 120)
    assert empty_eval.draws == int(np.ceil(MIN_DRAWS_K / 0.05)) - 1 == 79
    empty_train = detect_leakage(encode(px), px, encode(none), none, encode, budget=0.05)
    assert len(empty_train.leaks) == 0 and empty_train.threshold == 1.0  # nothing to read
    assert (empty_train.leaks.nearest == -1).all()
