"""The leakage index kept between runs: an index updated with new training images, new or
removed evaluation images, in any order, judges as one built from scratch on the same space
(the same threshold, draws, flagged pairs), and compares again only what it must."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import smooth_textures

from dedup_assets.core.decision.leakage import LeakageSpace, SplitImages, crop_views
from dedup_assets.core.decision.leakage_index import LeakageIndex, TopLists, _pixels_from

BUDGET = 0.05  # 79 draws read it: small sets; fewer eval images than that take train's


_PROJ = np.random.default_rng(11).standard_normal((64 * 64 * 3 // 16, 48)).astype(np.float32)


def _encode(px: np.ndarray) -> np.ndarray:
    px = np.asarray(px)
    small = px.reshape(len(px), 16, 4, 16, 4, 3).mean(axis=(2, 4)).reshape(len(px), -1)
    return (small.astype(np.float32) / 255.0 - 0.5) @ _PROJ


def _images(px: np.ndarray, prefix: str, start: int = 0) -> SplitImages:
    ids = np.array([f"{prefix}{start + i:04d}" for i in range(len(px))], dtype=str).reshape(-1)
    hashes = np.array([str(hash(p.tobytes())) for p in px], dtype=str).reshape(-1)
    return SplitImages(ids, ids, ids, _encode(px), px, hashes)


def _take(s: SplitImages, rows) -> SplitImages:
    rows = np.asarray(rows, dtype=np.int64)
    return SplitImages(
        s.classes[rows], s.ids[rows], s.paths[rows], s.latents[rows], s.pixels[rows], s.hashes[rows]
    )


def _join(*parts: SplitImages) -> SplitImages:
    return SplitImages(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in SplitImages.__dataclass_fields__)
    )


@pytest.fixture(scope="module")
def sets():
    """220 training images (20 of them copies of eval images: brightened, noisy, cropped,
    exact) and 130 eval images."""
    rng = np.random.default_rng(5)
    train = smooth_textures(200, rng)
    ev = smooth_textures(130, rng)
    leaked = np.arange(0, 130, 6)[:20]
    copies = ev[leaked].astype(np.float32)
    copies[:6] = copies[:6] * 1.1 + 5
    copies[6:12] += rng.normal(0, 4, copies[6:12].shape)
    copies = np.clip(copies, 0, 255).astype(np.uint8)
    copies[12:16] = crop_views(ev[leaked[12:16]])[4]
    train = np.concatenate([train, copies])
    order = rng.permutation(len(train))  # the copies arrive at any point
    return _images(train[order], "t"), _images(ev, "e"), leaked


def _judged(index: LeakageIndex):
    result, _ = index.judge()
    leaks = result.leaks
    pairs = sorted(
        zip(
            index.eval_ids[leaks.eval_row].tolist(),
            index.train_ids[leaks.train_row].tolist(),
            leaks.kind.tolist(),
            strict=True,
        )
    )
    nearest = dict(zip(index.eval_ids.tolist(), leaks.nearest_similarity.tolist(), strict=True))
    return result, pairs, nearest


def _same(a: LeakageIndex, b: LeakageIndex) -> None:
    ra, pa, na = _judged(a)
    rb, pb, nb = _judged(b)
    assert ra.draws == rb.draws and ra.decoys == rb.decoys
    assert ra.threshold == pytest.approx(rb.threshold, abs=1e-5)
    assert pa == pb
    assert na.keys() == nb.keys()
    assert np.allclose([na[k] for k in na], [nb[k] for k in na], atol=1e-5)


def _update(index, new_train=None, new_eval=None, removed=(), pool=()):
    return index.update(new_train, new_eval, removed, _encode, _pixels_from(*pool))


@pytest.mark.parametrize(
    "first_train, first_eval",
    [(150, 130), (2, 130), (1, 40), (0, 60), (220, 0)],
)
def test_new_training_images_update_to_what_a_build_judges(sets, first_train, first_eval):
    """Train grows (from 0, 1, 2 images and from most of it) and eval is given: the
    updated index judges as a build on the same space, and finds the planted copies."""
    train, ev, leaked = sets
    space_of = LeakageSpace.fit(train.latents)
    start = LeakageIndex.build(
        _take(train, range(first_train)),
        _take(ev, range(first_eval)),
        _encode,
        budget=BUDGET,
        space=space_of,
    )
    counts = _update(
        start,
        _take(train, range(first_train, len(train.ids))),
        _take(ev, range(first_eval, len(ev.ids))),
        pool=(train, ev),
    )
    assert counts.train_added == len(train.ids) - first_train
    full = LeakageIndex.build(train, ev, _encode, budget=BUDGET, space=space_of)
    _same(start, full)
    _, pairs, _ = _judged(start)
    flagged = {e for e, _, _ in pairs}
    assert {f"e{i:04d}" for i in leaked} <= flagged


def test_a_sequence_of_updates_in_any_order_judges_as_one_build(sets):
    """Add train, remove eval, add eval, add both, add nothing: after each step the index
    judges as a build of what it then holds."""
    train, ev, _ = sets
    space = LeakageSpace.fit(train.latents)
    extra = _images(smooth_textures(30, np.random.default_rng(9)), "x")
    pool = (train, _join(ev, extra))
    held = (150, _join(_take(ev, range(40)), extra))
    index = LeakageIndex.build(
        _take(train, range(held[0])), held[1], _encode, budget=BUDGET, space=space
    )
    steps = [
        (dict(new_train=_take(train, range(150, 180))), (180, held[1])),
        (dict(removed=list(extra.ids)), (180, _take(ev, range(40)))),
        (dict(new_eval=_take(ev, range(40, 100))), (180, _take(ev, range(100)))),
        (
            dict(new_train=_take(train, range(180, 220)), new_eval=_take(ev, range(100, 130))),
            (220, ev),
        ),
        (dict(), (220, ev)),
    ]
    for step, (n_train, held_eval) in steps:
        _update(index, pool=pool, **step)
        expected = LeakageIndex.build(
            _take(train, range(n_train)), held_eval, _encode, budget=BUDGET, space=space
        )
        _same(index, expected)


def test_an_update_encodes_and_compares_only_what_changed(sets):
    """1% more training images: no eval image is encoded again, only the decoys that the
    sample takes in, and few rows are compared with the whole training split."""
    train, ev, _ = sets
    index = LeakageIndex.build(
        _take(train, range(218)), _take(ev, range(40)), _encode, budget=BUDGET
    )
    assert any(s == "train" for s, _, _ in index.judge()[0].decoys)  # a sample of train
    counts = _update(index, _take(train, range(218, 220)), pool=(train, ev))
    _, recompared = index.judge()
    assert counts.eval_added == 0 and counts.train_added == 2
    assert counts.encoded == 10 * counts.decoys_added  # each new decoy and its 9 views
    assert counts.decoys_added <= 2  # at most the new images enter the decoys' sample
    assert recompared < 0.1 * (len(index.eval_ids) + len(index.decoy_keys))


def test_the_index_is_saved_and_read_back_whole(sets, tmp_path):
    train, ev, _ = sets
    index = LeakageIndex.build(
        _take(train, range(100)), _take(ev, range(80)), _encode, budget=BUDGET
    )
    path = index.save(tmp_path / "test.npz")
    again = LeakageIndex.load(path)
    _same(index, again)
    _update(again, _take(train, range(100, 120)), pool=(train, ev))
    _update(index, _take(train, range(100, 120)), pool=(train, ev))
    _same(index, again)
    (tmp_path / "bad.npz").write_bytes(b"not an index")
    assert LeakageIndex.load(tmp_path / "bad.npz") is None
    assert LeakageIndex.load(tmp_path / "missing.npz") is None


def test_an_index_is_updated_only_where_an_update_reaches_a_build(sets):
    train, ev, _ = sets
    index = LeakageIndex.build(
        _take(train, range(100)), _take(ev, range(50)), _encode, budget=0.05, extra={"model": "m1"}
    )
    ids = list(train.ids[:100])
    settings = {"budget": 0.05, "model": "m1"}
    assert index.can_update(settings, ids + list(train.ids[100:125]))  # 1.25x
    assert not index.can_update(settings, ids + list(train.ids[100:126]))  # a new space
    assert not index.can_update({"budget": 0.05, "model": "m2"}, ids)  # another model
    assert not index.can_update({"budget": 0.01, "model": "m1"}, ids)
    assert not index.can_update(settings, ids[1:])  # a training image removed or changed


def test_top_lists_keep_their_floor_through_lowering_and_merging():
    """A floor bounds every score left out: after lowering entries and merging another
    list, the entries at or above it are exactly the true best."""
    rng = np.random.default_rng(2)
    scores = rng.random((50, 30)).astype(np.float32)  # 50 queries x 30 training rows
    k = 5

    def fresh(cols):
        s = scores[:, cols]
        order = np.argsort(-s, axis=1)[:, :k]
        return TopLists.fresh(np.take_along_axis(s, order, 1), np.asarray(cols)[order])

    lists = fresh(np.arange(20))
    drop = np.zeros(30, np.float32)
    drop[rng.choice(20, 6, replace=False)] = rng.random(6).astype(np.float32) * 0.3
    scores -= drop[None, :]
    lists.lower(drop)
    lists.merge(fresh(np.arange(20, 30)))
    for q in range(50):
        truth = np.sort(scores[q])[::-1]
        certain = lists.vals[q] >= lists.floor[q]
        assert np.allclose(lists.vals[q][certain], truth[: certain.sum()])
        assert (truth[certain.sum() :] <= lists.floor[q] + 1e-7).all()


def test_rows_whose_lists_no_longer_tell_are_compared_again(sets, monkeypatch):
    """Lists one entry wide, and new training images that are near copies of listed ones
    (their densities rise, their scores fall below the floor): the rows that can no longer
    be read from their lists are compared again, and the judgement is still a build's."""
    from dedup_assets.core.decision import leakage_index

    monkeypatch.setattr(leakage_index, "COPIES", 1)
    monkeypatch.setattr(leakage_index, "DECOY_WIDTH", 2)
    train, ev, _ = sets
    rng = np.random.default_rng(4)
    base = _take(train, range(150))
    twins = np.clip(base.pixels[:60].astype(np.float32) + rng.normal(0, 3, (60, 64, 64, 3)), 0, 255)
    new = _images(twins.astype(np.uint8), "n")
    index = LeakageIndex.build(base, ev, _encode, budget=BUDGET)
    _update(index, new, pool=(_join(base, new), ev))
    _, recompared = index.judge()
    assert recompared > 0
    _same(
        index, LeakageIndex.build(_join(base, new), ev, _encode, budget=BUDGET, space=index.space)
    )
