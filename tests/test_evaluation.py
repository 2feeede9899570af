"""Tests for scoring against known pairs (dedup_assets.core.quality.evaluation) and pHash
(phash.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image

from dedup_assets.core.decision.keep_policy import greedy_keep
from dedup_assets.core.decision.phash import HASH_BITS, hamming_similarity, hash_vectors, phash_bits
from dedup_assets.core.quality.evaluation import ClassPairs, evaluate_method, positive_pairs


def test_positive_pairs_groups_transitively():
    pairs, involved = positive_pairs(8, [(0, 1), (2, 1), (5, 6), (6, 5), (3, 3)])
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 2], [5, 6]]
    assert involved.tolist() == [True, True, True, True, False, True, True, False]
    assert pairs.dtype == np.int64 and pairs.shape == (4, 2)


def test_positive_pairs_merges_groups_and_handles_empty():
    pairs, involved = positive_pairs(6, [(0, 1), (2, 3), (4, 5), (1, 3), (5, 3)])
    assert pairs.tolist() == [[i, j] for i in range(6) for j in range(i + 1, 6)]
    assert involved.all()
    pairs, involved = positive_pairs(4, [])
    assert pairs.shape == (0, 2) and not involved.any()


def _classes_from(vectors: list[np.ndarray], edges: list[list[tuple[int, int]]], seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for k, (x, e) in enumerate(zip(vectors, edges, strict=True)):
        pairs, involved = positive_pairs(len(x), e)
        out.append(ClassPairs(f"c{k}", x, pairs, rng.permutation(len(x)), involved))
    return out


def _brute_scores(classes, exact=None):
    """All within-class pair scores and the positive ones (float64 unless `exact` given)."""
    all_s, pos_s = [], []
    for k, c in enumerate(classes):
        s = (
            c.vectors.astype(np.float64) @ c.vectors.astype(np.float64).T
            if exact is None
            else exact[k]
        )
        all_s.append(s[np.triu_indices(len(c.vectors), 1)])
        pos_s.extend(s[i, j] for i, j in c.positives)
    return np.concatenate(all_s), np.array(pos_s)


def _brute_ap(all_s: np.ndarray, pos_s: np.ndarray) -> float:
    return float(np.mean([(pos_s >= s).sum() / (all_s >= s).sum() for s in pos_s]))


def test_ap_is_one_when_known_pairs_are_the_most_similar():
    rng = np.random.default_rng(0)
    vectors, edges = [], []
    for _ in range(3):
        x = rng.normal(size=(30, 16))
        e = [(0, 1), (2, 3), (3, 4), (10, 20)]
        for a, b in e:
            x[b] = x[a] + 0.01 * rng.normal(size=16)
        vectors.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
        edges.append(e)
    classes = _classes_from(vectors, edges)
    ev = evaluate_method("m", classes, [0.9])
    assert ev.n_positive_pairs == 3 * (1 + 3 + 1)  # {0,1}, {2,3,4}, {10,20}
    assert ev.n_pairs == 3 * 30 * 29 // 2
    assert ev.average_precision == 1.0
    np.testing.assert_array_equal(ev.precision_curve, 1.0)
    assert ev.recall_curve.max() == 1.0
    row = ev.per_threshold[0]
    assert row["recall"] == 1.0 and row["precision"] == 1.0
    assert row["pairs_flagged"] == 15


# 24 unit vectors in 4-D whose pairwise dot products are exactly -1, -0.5, 0, 0.5 or 1:
# all sign patterns of (0.5, 0.5, 0.5, 0.5) and the signed axes. Many exact ties.
_HALF = np.array(list(itertools.product([-0.5, 0.5], repeat=4)))
_AXES = np.concatenate([np.eye(4), -np.eye(4)])
TIED = np.concatenate([_HALF, _AXES]).astype(np.float32)


def _tied_classes(seed: int):
    rng = np.random.default_rng(seed)
    vectors, edges = [], []
    for _ in range(3):
        n = int(rng.integers(2, 40))
        vectors.append(TIED[rng.integers(0, len(TIED), n)])
        edges.append([(int(a), int(b)) for a, b in rng.integers(0, n, (6, 2)) if a != b])
    return _classes_from(vectors, edges, seed)


THRESHOLDS = (-0.5, 0.0, 0.25, 0.5, 0.9)


@pytest.mark.parametrize("block", [1, 5, 2048])
@pytest.mark.parametrize("seed", range(6))
def test_ap_and_thresholds_match_brute_force_with_ties(seed, block):
    classes = _tied_classes(seed)
    all_s, pos_s = _brute_scores(classes)
    assert set(np.unique(all_s)) <= {-1.0, -0.5, 0.0, 0.5, 1.0}
    ev = evaluate_method("m", classes, THRESHOLDS, block=block)
    assert ev.n_pairs == len(all_s)
    assert ev.n_positive_pairs == len(pos_s)
    if len(pos_s):
        assert ev.average_precision == pytest.approx(_brute_ap(all_s, pos_s), abs=1e-12)
    else:
        assert np.isnan(ev.average_precision)
    for t, row in zip(THRESHOLDS, ev.per_threshold, strict=True):
        flagged = int((all_s > t).sum())
        tp = int((pos_s > t).sum())
        assert row["threshold"] == t
        assert row["pairs_flagged"] == flagged
        assert row["recall"] == pytest.approx(tp / max(len(pos_s), 1))
        if flagged:
            assert row["precision"] == pytest.approx(tp / flagged)
        else:
            assert np.isnan(row["precision"])


@pytest.mark.parametrize("seed", range(4))
def test_ap_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    vectors, edges = [], []
    for _ in range(3):
        n = 40
        x = rng.normal(size=(n, 16))
        e = [(int(a), int(b)) for a, b in rng.integers(0, n, (8, 2)) if a != b]
        for a, b in e:
            x[b] = x[a] + rng.uniform(0.05, 1.5) * rng.normal(size=16)
        vectors.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
        edges.append(e)
    classes = _classes_from(vectors, edges, seed)
    all_s, pos_s = _brute_scores(classes)
    thresholds = (0.3, 0.6, 0.9)
    ev = evaluate_method("m", classes, thresholds, block=7)
    ref = _brute_ap(all_s, pos_s)
    assert 0.0 < ref < 1.0
    assert ev.average_precision == pytest.approx(ref, abs=1e-9)
    assert (ev.precision_curve <= 1.0).all() and (ev.recall_curve <= 1.0).all()
    for t, row in zip(thresholds, ev.per_threshold, strict=True):
        assert row["pairs_flagged"] == int((all_s > t).sum())
        assert row["recall"] == pytest.approx((pos_s > t).sum() / len(pos_s))


def test_per_threshold_removals_match_greedy_keep():
    classes = _tied_classes(3)
    ev = evaluate_method("m", classes, [0.25, 0.9], block=4)
    for t, row in zip([0.25, 0.9], ev.per_threshold, strict=True):
        removed = removed_known = kept_clean = n_clean = 0
        for c in classes:
            d = greedy_keep(c.vectors, c.order, t, block=4)
            removed += int((~d.kept).sum())
            removed_known += int((~d.kept & c.in_ground_truth).sum())
            kept_clean += int((d.kept & ~c.in_ground_truth).sum())
            n_clean += int((~c.in_ground_truth).sum())
        assert row["images_removed"] == removed > 0
        assert row["removed_in_ground_truth"] == removed_known
        assert row["unrelated_kept_fraction"] == pytest.approx(kept_clean / n_clean)


def test_class_without_positives_or_pairs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    classes = _classes_from([x, x[:1]], [[], []])
    ev = evaluate_method("m", classes, [0.5])
    assert ev.n_positive_pairs == 0 and np.isnan(ev.average_precision)
    assert ev.n_pairs == 10
    assert ev.per_threshold[0]["recall"] == 0.0


def _hamming(bits: np.ndarray) -> np.ndarray:
    return (bits[:, None, :] != bits[None, :, :]).sum(axis=-1)


def test_hash_vectors_are_unit_and_match_hamming_closely():
    bits = np.random.default_rng(0).random((200, HASH_BITS)) < 0.5
    v = hash_vectors(bits)
    assert v.shape == (200, 2 * HASH_BITS + 2) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v.astype(np.float64), axis=1), 1.0, atol=1e-7)
    ref = 1.0 - _hamming(bits) / 64.0
    s = v @ v.T
    np.testing.assert_allclose(s, ref, atol=2e-7)
    # ranking by similarity is ranking by Hamming distance (levels are 1/64 apart)
    for i in range(5):
        order = np.argsort(-s[i].astype(np.float64), kind="stable")
        assert np.all(np.diff(ref[i][order]) <= 0)
    assert hamming_similarity(bits[0], bits[1]) == pytest.approx(ref[0, 1], abs=0)


def test_hash_vector_dot_products_are_exact():
    bits = np.random.default_rng(0).random((200, HASH_BITS)) < 0.5
    bits[1] = bits[0]  # an identical pair
    v = hash_vectors(bits)
    ref = (1.0 - _hamming(bits) / 64.0).astype(np.float32)  # exactly representable
    assert float(v[0] @ v[1]) == 1.0
    np.testing.assert_array_equal(v @ v.T, ref)


def test_phash_ap_equals_exact_hamming_ap():
    deviations = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        vectors, edges, exact = [], [], []
        for _ in range(2):
            n = 60
            base = rng.random((3, HASH_BITS)) < 0.5
            bits = base[rng.integers(0, 3, n)].copy()
            for i in range(n):
                bits[i, rng.choice(HASH_BITS, rng.integers(0, 8), replace=False)] ^= True
            vectors.append(hash_vectors(bits))
            exact.append(1.0 - _hamming(bits) / 64.0)
            edges.append([(int(a), int(b)) for a, b in rng.integers(0, n, (12, 2)) if a != b])
        classes = _classes_from(vectors, edges, seed)
        ref = _brute_ap(*_brute_scores(classes, exact))
        deviations.append(abs(evaluate_method("phash", classes, [0.9]).average_precision - ref))
    assert max(deviations) < 1e-12


def _test_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    out = np.empty((n, 64, 64, 3), dtype=np.uint8)
    for i in range(n):
        if i % 2:
            out[i] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        else:
            a, b, f = rng.uniform(-3, 3, 3)
            img = 127.5 + 127.5 * np.sin(f * (a * xx + b * yy))[..., None] * [1.0, 0.6, 0.3]
            out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def test_phash_bits_equal_imagehash():
    px = _test_images(9, 0)
    bits = phash_bits(px)
    assert bits.shape == (9, 64) and bits.dtype == bool
    for i in range(9):
        ref = imagehash.phash(Image.fromarray(px[i]))
        np.testing.assert_array_equal(bits[i], ref.hash.reshape(-1))
        # Hamming similarity agrees with imagehash's distance
        other = imagehash.phash(Image.fromarray(px[(i + 1) % 9]))
        assert hamming_similarity(bits[i], bits[(i + 1) % 9]) == 1 - (ref - other) / 64
    assert phash_bits(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, 64)


@pytest.mark.parametrize("side", [32, 64, 97])
def test_phash_bits_equal_imagehash_bit_for_bit_on_many_images(side):
    """The batched DCTs give imagehash's bits exactly: noise, flat images (ties at the
    median), gradients and stripes, at several sizes; and EuroSAT when it is there."""
    rng = np.random.default_rng(side)
    noise = rng.integers(0, 256, (120, side, side, 3), dtype=np.uint8)
    flat = np.repeat(rng.integers(0, 256, (20, 1, 1, 3), dtype=np.uint8), side, 1).repeat(side, 2)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    grad = np.stack(
        [np.broadcast_to(ramp[None, :, None] * (k / 10), (side, side, 3)) for k in range(10)]
    )
    px = np.concatenate([noise, flat, grad.astype(np.uint8)])
    eurosat = Path(__file__).resolve().parents[2] / "shared/datasets/eurosat"
    if side == 64:
        px = np.concatenate([px, _test_images(10, side)])
    if side == 64 and eurosat.is_dir():
        files = sorted(eurosat.rglob("*.jpg"))[::900][:30]
        px = np.concatenate(
            [px, np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])]
        )
    bits = phash_bits(px, workers=2)
    ref = np.stack([imagehash.phash(Image.fromarray(p)).hash.reshape(-1) for p in px])
    np.testing.assert_array_equal(bits, ref)


def test_phash_bits_thread_pool_keeps_order():
    px = _test_images(6, 1)
    one = phash_bits(px, workers=1)
    many = phash_bits(px, workers=3)
    np.testing.assert_array_equal(one, many)
    assert len({tuple(b) for b in one}) == 6


def test_the_evaluation_decides_every_threshold_as_the_keep_lists_do(tmp_path, monkeypatch):
    """For the run's own space, the evaluation's images removed at each threshold equal the
    keep list's, budgets included: classes read from their mirrors, from the pool in their
    fitted space (a margin), or from the pool alone in the unfitted space (a cosine). The
    keep lists take their DCT descriptors from the class's store (as a big class does), the
    evaluation computes them from the pixels."""
    import dagster as dg
    import polars as pl

    from dedup_assets.core.decision import class_keep

    monkeypatch.setattr(class_keep, "DCT_STORE_MIN_IMAGES", 0)

    from dedup_assets.config import PipelineConfig
    from dedup_assets.core.quality.demo_data import generate_demo_dataset
    from dedup_assets.runner import run_pipeline

    source = tmp_path / "src"
    generate_demo_dataset(source, seed=6, per_class=50, duplicate_fraction=0.2)
    thresholds = ("0.95", "1%", "5%", "20%")
    config = PipelineConfig.build(
        source=str(source),
        output=str(tmp_path / "out"),
        thresholds=thresholds,
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "batch_size": 32, "kurtosis_tolerance": 10.0},
    )
    run_pipeline(config, dg.DagsterInstance.ephemeral(), log=lambda _: None)
    out = tmp_path / "out"
    evaluation = pl.read_csv(out / "evaluation" / "evaluation.csv").filter(
        pl.col("method") == "spline_copula_dct"
    )
    nulls = set()
    for t in thresholds:
        keep = pl.read_parquet(out / "keep_lists" / f"{t}.parquet")
        nulls |= set(keep["calibrated_on"].drop_nulls())
        row = evaluation.filter(pl.col("threshold") == t)
        assert row["images_removed"][0] == int((~keep["kept"]).sum()), t
    assert {"class", "pool"} <= nulls  # both kinds of budget were compared
    assert len(list((out / "latents").glob("*.dct.npz"))) == 6  # every class's store
    _check_pdq_rows(out, source / "ground_truth.csv", thresholds)


def _check_pdq_rows(out, ground_truth, thresholds) -> None:
    """The evaluation's PDQ baseline on the demo, beside pHash: its AP and its recall at
    the cosine 0.95 equal those of pdqhash's own Hamming distances (similarity
    1 - Hamming/256), counted pair by pair; its budgets are resolved like every method's."""
    import pdqhash
    import polars as pl

    from dedup_assets.core.data.artifacts import catalog_images, class_names, read_catalog
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.decision.class_keep import load_class_data
    from dedup_assets.core.quality.evaluation import ground_truth_edges
    from dedup_assets.core.quality.planting import read_ground_truth

    table = pl.read_csv(out / "evaluation" / "evaluation.csv")
    methods = table["method"].unique(maintain_order=True).to_list()
    assert methods[-2:] == ["phash", "pdq"]
    pdq_rows = table.filter(pl.col("method") == "pdq")
    assert pdq_rows["threshold"].cast(str).to_list() == list(thresholds)
    assert pdq_rows["recall"].is_between(0, 1).all()
    assert (pdq_rows["recall_exact"] == 1.0).all()  # an exact copy scores 1.0

    layout = OutputLayout(out)
    full_catalog = read_catalog(layout)
    catalog = catalog_images(full_catalog)
    class_key_of = {name: key for key, name in class_names(layout).items()}
    edges, _ = ground_truth_edges(catalog, read_ground_truth(ground_truth), class_key_of)
    all_s, pos_s = [], []
    for key in sorted(set(catalog["class_key"].to_list())):
        _, data = load_class_data(layout, key, with_pixels=True, catalog=full_catalog)
        bits = np.stack(
            [np.asarray(pdqhash.compute(np.ascontiguousarray(p))[0]) != 0 for p in data.pixels]
        )
        s = 1.0 - (bits[:, None, :] != bits[None, :, :]).sum(axis=2) / 256.0
        index = {i: k for k, i in enumerate(data.image_ids.tolist())}
        pairs, _ = positive_pairs(len(index), [(index[a], index[b]) for a, b in edges.get(key, [])])
        all_s.append(s[np.triu_indices(len(s), 1)])
        pos_s.extend(s[i, j] for i, j in pairs)
    all_s, pos_s = np.concatenate(all_s), np.array(pos_s)
    assert len(pos_s) > 20
    assert pdq_rows["average_precision"][0] == pytest.approx(_brute_ap(all_s, pos_s), abs=1e-12)
    at_095 = pdq_rows.filter(pl.col("threshold").cast(str) == "0.95")["recall"][0]
    assert at_095 == pytest.approx(float((pos_s > 0.95).mean()), abs=1e-12)


def _decided(kept: dict[str, bool], overridden: tuple[str, ...] = ()):
    """A keep list of class c: its rows' paths, kept and who decided."""
    import polars as pl

    names = list(kept)
    return pl.DataFrame(
        {
            "path": [f"c/{n}" for n in names],
            "kept": [kept[n] for n in names],
            "decided_by": ["override" if n in overridden else "model" for n in names],
        }
    )


def test_the_keep_lists_are_scored_as_decided_overrides_included():
    """Two planted pairs and two unrelated images: the model removes the blurred copy and
    an unrelated image; the user's overrides keep that image and remove the JPEG copy the
    model kept. The keep lists as decided score the corrections, not the model alone."""
    from dedup_assets.core.quality.evaluation import score_keep_lists
    from dedup_assets.core.quality.planting import GroundTruthPair

    truth = [
        GroundTruthPair("c", "a.png", "a__dup_blur.png"),
        GroundTruthPair("c", "b.png", "b__dup_jpeg.png"),
        GroundTruthPair("c", "gone.png", "gone__dup_blur.png"),  # not in the keep list
    ]
    model = {
        "a.png": True,
        "a__dup_blur.png": False,
        "b.png": True,
        "b__dup_jpeg.png": True,
        "u1.png": False,
        "u2.png": True,
    }
    corrected = model | {"u1.png": True, "b__dup_jpeg.png": False}
    scores = score_keep_lists(
        {
            "model": _decided(model),
            "decided": _decided(corrected, overridden=("u1.png", "b__dup_jpeg.png")),
        },
        truth,
    )
    by = {row["threshold"]: row for row in scores.iter_rows(named=True)}
    m, d = by["model"], by["decided"]
    assert (m["images_removed"], m["removed_in_ground_truth"]) == (2, 1)
    assert m["false_removal_rate"] == 0.5 and m["recall"] == 0.5
    assert (m["recall_blur"], m["recall_jpeg"]) == (1.0, 0.0)
    assert m["decided_by_override"] == 0
    assert (d["images_removed"], d["removed_in_ground_truth"]) == (2, 2)
    assert d["false_removal_rate"] == 0.0 and d["recall"] == 1.0
    assert (d["recall_blur"], d["recall_jpeg"]) == (1.0, 1.0)
    assert d["decided_by_override"] == 2
    assert m["ground_truth_rows_unmatched"] == d["ground_truth_rows_unmatched"] == 1
    assert m["known_pairs"] == 2


def test_a_known_group_counts_each_pair_left_with_both_images():
    """A~B and A~C make {A, B, C} one group of three pairs: with A and B kept, one pair is
    left duplicated."""
    from dedup_assets.core.quality.evaluation import score_keep_lists
    from dedup_assets.core.quality.planting import GroundTruthPair

    truth = [GroundTruthPair("c", "a.png", "b.png"), GroundTruthPair("c", "a.png", "c.png")]
    scores = score_keep_lists(
        {"t": _decided({"a.png": True, "b.png": True, "c.png": False, "u.png": True})}, truth
    )
    row = scores.row(0, named=True)
    assert row["known_pairs"] == 3 and row["recall"] == pytest.approx(2 / 3)
    assert row["false_removal_rate"] == 0.0


def test_no_keep_list_to_score_still_names_the_columns():
    from dedup_assets.core.quality.evaluation import KEEP_LIST_SCORES, score_keep_lists

    assert score_keep_lists({}, []).schema == KEEP_LIST_SCORES


def test_a_ground_truth_path_is_read_in_every_spelling_a_user_copies():
    """File names in the class folder; paths from the source as keep lists spell them, with
    or without a split folder; never a spelling the catalog does not hold."""
    from dedup_assets.core.quality.evaluation import source_path_of
    from dedup_assets.core.quality.planting import GroundTruthPair

    known = {"cats/a.png", "train/cats/b.png", "cats/sub/c.png", "dogs/cats/d.png"}
    assert source_path_of(GroundTruthPair("cats", "a.png", "x"), "a.png", known) == "cats/a.png"
    assert source_path_of(GroundTruthPair("cats", "a", "x"), "cats/a.png", known) == "cats/a.png"
    split = GroundTruthPair("cats", "train/cats/b.png", "x")
    assert source_path_of(split, "train/cats/b.png", known) == "train/cats/b.png"
    assert source_path_of(GroundTruthPair("train/cats", "b.png", "x"), "b.png", known) == (
        "train/cats/b.png"
    )
    assert source_path_of(GroundTruthPair("cats", "sub/c.png", "x"), "sub/c.png", known) == (
        "cats/sub/c.png"
    )
    # a path of another class is not taken for this one
    assert source_path_of(GroundTruthPair("dogs", "x", "x"), "cats/a.png", known) == (
        "dogs/cats/a.png"
    )
    assert source_path_of(GroundTruthPair("cats", "x", "x"), "nope.png", known) == "cats/nope.png"


def test_the_ground_truth_check_matches_paths_as_the_evaluation_does(tmp_path):
    from dedup_assets.config import ConfigError, PipelineConfig

    for name in ("train/cats/a.png", "train/cats/b.png", "test/cats/c.png"):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "src" / name)
    truth = tmp_path / "truth.csv"

    def check(rows: str) -> None:
        truth.write_text("class,original,copy\n" + rows)
        PipelineConfig.build(
            source=str(tmp_path / "src"), output=str(tmp_path / "out"), ground_truth=str(truth)
        )

    check("train/cats,a.png,b.png\n")
    check("cats,train/cats/a.png,train/cats/b.png\n")  # as the keep list spells them
    for wrong in ("./train/cats,a.png,b.png\n", "train/cats,a.png,../../test/cats/c.png\n"):
        with pytest.raises(ConfigError, match="none of its 1 rows names two files"):
            check(wrong)
