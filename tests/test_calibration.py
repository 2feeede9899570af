"""False-removal budgets (core/decision/calibration.py): decoys, nearest-decoy similarity,
quantiles."""

import numpy as np
import pytest

from dedup_assets.core.decision.calibration import (
    budget_thresholds,
    mirror_null,
    mirrored,
    nearest_decoy_similarity,
)
from dedup_assets.core.decision.similarity import l2_normalize


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


@pytest.mark.parametrize("rows", [0, 1, 2, 17, 300])
def test_the_null_is_the_same_on_any_number_of_threads(rows):
    """Blocks of the null also on idle-core threads (`threads`): the same values, bit for
    bit, as one thread, with and without own decoys and a sample of queries, and through
    `mirror_null` for every image mirrored and for a sample of mirrors."""
    rng = np.random.default_rng(rows)
    v = l2_normalize(rng.normal(size=(rows, 8)))
    d = l2_normalize(v + 0.5 * rng.normal(size=(rows, 8))) if rows else v
    index = rng.permutation(rows)
    for own in (True, False):
        one = nearest_decoy_similarity(v, d, block=16, own=own, query_index=index)
        for threads in (2, 3, 8):
            got = nearest_decoy_similarity(
                v, d, block=16, own=own, query_index=index, threads=threads
            )
            np.testing.assert_array_equal(got, one)
    # A block of the null: at most NULL_SLAB_BYTES of similarities, whatever the threads.
    from dedup_assets.core.decision.calibration import NULL_SLAB_BYTES, null_block_rows

    assert null_block_rows(17, 16) == 16 and null_block_rows(0) == 2048
    million = null_block_rows(1_000_000)
    assert 4 * million * 1_000_000 <= NULL_SLAB_BYTES < 4 * (million + 1) * 1_000_000
    assert null_block_rows(10**12) == 1
    sample = np.sort(rng.choice(rows, rows // 2, replace=False)) if rows else np.arange(0)
    for mirrors in (np.arange(rows), sample):
        one = mirror_null(v, d[mirrors], mirrors, block=16)
        np.testing.assert_array_equal(mirror_null(v, d[mirrors], mirrors, 16, threads=3), one)


def test_budget_cosine_leaves_at_most_the_budget_above_it():
    null = np.linspace(0.0, 0.99, 1000)
    t1, t5 = budget_thresholds(null, [0.01, 0.05])
    assert (null > t1).sum() <= 10 and (null > t5).sum() <= 50
    # k = floor(b (n + 1)): the 10th and the 50th highest of 1,000 are the cosines.
    assert (null >= t1).sum() == 10 and (null >= t5).sum() == 50
    assert t1 > t5
    assert budget_thresholds(np.array([]), [0.01]) == [1.0]
    assert budget_thresholds(np.full(200, 0.7), [0.01]) == [0.7]  # all tied: none above
    with pytest.raises(ValueError, match="budget"):
        budget_thresholds(null, [0.0])
    # Too few values to show the top 1% (51 < 100): not the highest of them, which an
    # unrelated image would exceed with probability 1/51, but 1.0 (no near removal).
    assert budget_thresholds(null[:50], [0.01]) == [1.0]
    assert budget_thresholds(null[:99], [0.01]) == [null[98]]  # k = floor(0.01 x 100) = 1


def test_budget_cosine_holds_the_budget_in_expectation():
    # A fresh unrelated image exceeds the cosine with probability 1 - t for uniform nulls;
    # over many classes of 600 that averages k / 601 = 0.998% at 1%. The plain sample
    # quantile (7th highest) would average 7 / 601 = 1.165%.
    rng = np.random.default_rng(0)
    exceed = [1.0 - budget_thresholds(rng.random(600), [0.01])[0] for _ in range(4000)]
    assert 0.0094 < float(np.mean(exceed)) < 0.0106


def test_sampled_queries_skip_their_own_mirror_as_the_full_pass_does():
    from dedup_assets.core.decision.calibration import nearest_decoy_similarity
    from dedup_assets.core.decision.similarity import l2_normalize

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
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.decision.calibration import mirror_latents

    layout = OutputLayout(tmp_path)
    calls = []

    def encode(value: float):
        def run(rows):
            calls.append(value)
            return np.full((len(rows), 4), value, np.float32)

        return run

    rows, first = mirror_latents(layout, "forest", {"class": "a", "model": "m"}, 3, encode(1.0))
    _, again = mirror_latents(layout, "forest", {"class": "a", "model": "m"}, 3, encode(2.0))
    assert calls == [1.0] and np.array_equal(first, again) and rows.tolist() == [0, 1, 2]
    _, changed = mirror_latents(layout, "forest", {"class": "a", "model": "m2"}, 3, encode(3.0))
    assert calls == [1.0, 3.0] and (changed == 3.0).all()
    layout.mirror_latents("forest").write_bytes(b"torn")  # unreadable: encoded again
    _, torn = mirror_latents(layout, "forest", {"class": "a", "model": "m2"}, 3, encode(4.0))
    assert (torn == 4).all()
    with pytest.raises(ValueError, match="mirror latents"):  # an encoder that lost rows
        mirror_latents(layout, "oak", {"class": "b"}, 3, lambda rows: np.zeros((2, 4)))


def test_large_classes_mirror_a_seeded_sample(monkeypatch):
    """Up to MAX_MIRRORS every image is mirrored; above it a sorted seeded sample of
    exactly MAX_MIRRORS rows, the same on every call (the stored mirrors stay valid)."""
    from dedup_assets.core.decision import calibration

    assert calibration.mirror_rows(0).tolist() == []
    assert calibration.mirror_rows(1).tolist() == [0]
    full = calibration.mirror_rows(calibration.MAX_MIRRORS)
    assert np.array_equal(full, np.arange(calibration.MAX_MIRRORS))
    big = calibration.mirror_rows(50_000)
    assert len(big) == calibration.MAX_MIRRORS == len(np.unique(big))
    assert (np.diff(big) > 0).all() and big.max() < 50_000
    assert np.array_equal(big, calibration.mirror_rows(50_000))


def test_sampled_mirrors_read_the_null_from_the_mirrors_side():
    """With a sample of mirrors, each mirror's nearest image other than its source: the
    columns of the same image-by-mirror comparison the full pass reads by rows."""
    from dedup_assets.core.decision.calibration import mirror_null

    rng = np.random.default_rng(5)
    v = l2_normalize(rng.standard_normal((400, 8)).astype(np.float32))
    d = l2_normalize(v + 0.3 * rng.standard_normal(v.shape).astype(np.float32))
    s = v @ d.T  # image i against mirror j
    np.fill_diagonal(s, -np.inf)
    full = mirror_null(v, d, np.arange(400), block=32)
    np.testing.assert_allclose(full, s.max(axis=1), atol=1e-6)
    rows = np.sort(rng.choice(400, 50, replace=False))
    sampled = mirror_null(v, d[rows], rows, block=32)
    np.testing.assert_allclose(sampled, s[:, rows].max(axis=0), atol=1e-6)
    # Both read the same distribution: their medians agree closely on 400 images.
    assert abs(np.median(sampled) - np.median(full)) < 0.05


@pytest.mark.parametrize("scaling", ["uniform", "local"])
@pytest.mark.parametrize("space", ["spline_copula", "raw", "phash"])
def test_a_class_above_max_mirrors_encodes_only_its_sample(monkeypatch, space, scaling):
    """Above MAX_MIRRORS a class's budget mirrors (and encodes) only the sampled images,
    and the threshold it resolves reads the same distribution as mirroring every image."""
    import torch

    from dedup_assets.core.decision import calibration
    from dedup_assets.core.decision.class_decision import ClassData
    from dedup_assets.core.density.class_density import fit_class_density
    from dedup_assets.core.model.autoencoder import ConvAutoencoder, encode_images

    torch.manual_seed(0)
    model = ConvAutoencoder()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (120, 64, 64, 3), dtype=np.uint8)
    latents = encode_images(model, pixels)
    data = ClassData(
        np.array([f"{i:03d}" for i in range(120)]),
        np.array([f"h{i}" for i in range(120)]),
        latents,
        fit_class_density(latents, 16),
        pixels,
    )
    full = calibration.class_budgets(data, model, space, [0.05, 0.2], scaling=scaling)
    assert [r.null for r in full] == ["class", "class"]  # 120 images: enough for 5%
    encoded = []
    real = calibration.encode_mirrors

    def counting(model, pixels, rows=None, **kw):
        encoded.append(len(pixels) if rows is None else len(rows))
        return real(model, pixels, rows, **kw)

    monkeypatch.setattr(calibration, "encode_mirrors", counting)
    monkeypatch.setattr(calibration, "MAX_MIRRORS", 60)
    resolution = calibration.class_budgets(data, model, space, [0.05, 0.2], scaling=scaling)
    sampled = [r.threshold for r in resolution]
    assert encoded == [60]
    assert sampled[0] >= sampled[1] and all(-1.0 <= c <= 1.0 for c in sampled)
    assert abs(sampled[1] - full[1].threshold) < 0.1, (sampled, full)
    offsets = resolution[0].offsets
    assert (offsets is None) == (scaling == "uniform") == (full[0].offsets is None)
    if scaling == "local":  # an offset for every image, each read against the 60 mirrors
        assert len(offsets) == 120 and np.all(offsets > 0)


def test_at_most_max_queries_are_measured_either_way(monkeypatch):
    """Above MAX_QUERIES images (full mirrors) or mirrors (sampled), a seeded sample of
    exactly MAX_QUERIES is measured, each value the one the unsampled pass gives it."""
    from dedup_assets.core.decision import calibration

    rng = np.random.default_rng(6)
    v = l2_normalize(rng.standard_normal((300, 8)).astype(np.float32))
    d = l2_normalize(v + 0.3 * rng.standard_normal(v.shape).astype(np.float32))
    rows = np.sort(rng.choice(300, 120, replace=False))
    full_side = calibration.mirror_null(v, d, np.arange(300), block=32)
    mirror_side = calibration.mirror_null(v, d[rows], rows, block=32)
    monkeypatch.setattr(calibration, "MAX_QUERIES", 50)
    few_full = calibration.mirror_null(v, d, np.arange(300), block=32)
    few_mirrors = calibration.mirror_null(v, d[rows], rows, block=32)
    assert len(few_full) == len(few_mirrors) == 50
    for few, every in ((few_full, full_side), (few_mirrors, mirror_side)):
        assert np.abs(few[:, None] - every[None, :]).min(axis=1).max() < 1e-5  # BLAS rounding
    assert np.array_equal(few_mirrors, calibration.mirror_null(v, d[rows], rows, block=32))


def test_proportional_mirrors_weigh_each_class_by_its_size(monkeypatch):
    """A 100,000-image class with 4,096 mirrors beside a fully mirrored class of 1,000:
    the same share of each is measured, so the big class weighs 100 times the small one."""
    from dedup_assets.core.decision import calibration

    picks = calibration.proportional_mirrors([100_000, 1_000], [4_096, 1_000])
    assert [len(p) for p in picks] == [4_096, 41]
    assert len(np.unique(picks[1])) == 41 and picks[1].max() < 1_000
    monkeypatch.setattr(calibration, "MAX_QUERIES", 1_010)  # the query cap binds first
    picks = calibration.proportional_mirrors([100_000, 1_000], [4_096, 1_000])
    assert [len(p) for p in picks] == [1_000, 10]
    assert [len(p) for p in calibration.proportional_mirrors([0, 5], [0, 5])] == [0, 5]
    assert calibration.proportional_mirrors([], []) == []


def test_mirrors_are_encoded_with_the_precision_asked():
    # Decoys must be encoded like the class's latents (the compute resource's precision).
    import torch

    from dedup_assets.core.decision.calibration import encode_mirrors
    from dedup_assets.core.model.autoencoder import ConvAutoencoder, encode_images

    torch.manual_seed(0)
    model = ConvAutoencoder().eval()
    px = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    rows = np.array([4, 1])
    fp32 = encode_mirrors(model, px, rows)
    bf16 = encode_mirrors(model, px, rows, amp_dtype=torch.bfloat16)
    np.testing.assert_array_equal(fp32, encode_images(model, mirrored(px[rows])))
    np.testing.assert_array_equal(
        bf16, encode_images(model, mirrored(px[rows]), amp_dtype=torch.bfloat16)
    )
    assert not np.array_equal(fp32, bf16)


@pytest.mark.parametrize("n", [1, 2, 20])
def test_stored_mirrors_are_handed_to_this_process_later_reads(tmp_path, monkeypatch, n):
    """Mirrors encoded and stored by this process are what its next call for the same
    latents gets, without opening the file: equal to what the file holds, read-only (the
    caller's encoder output is not kept writable); a file replaced since by another writer
    is opened again, and one holding other latents' mirrors is encoded anew."""
    import os

    from dedup_assets.core.data.artifacts import STORED_READS
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.decision import calibration

    STORED_READS.clear()
    layout = OutputLayout(tmp_path)
    loads = []
    real_load = calibration.np.load
    monkeypatch.setattr(
        calibration.np, "load", lambda p, *a, **k: loads.append(p) or real_load(p, *a, **k)
    )
    made = np.arange(n * 4, dtype=np.float64).reshape(n, 4)
    rows, first = calibration.mirror_latents(layout, "k", {"c": 1}, n, lambda r: made[r])
    assert loads == [layout.mirror_latents("k")]  # none stored yet: the failed open
    loads.clear()
    again_rows, again = calibration.mirror_latents(
        layout, "k", {"c": 1}, n, lambda r: pytest.fail("encoded again")
    )
    assert loads == [] and again is first and again_rows is rows
    assert first.dtype == np.float32 and not first.flags.writeable and not rows.flags.writeable
    made[:] = -1.0  # the encoder's array is not what was kept
    STORED_READS.clear()  # a process that did not write it opens the file
    read_rows, read = calibration.mirror_latents(
        layout, "k", {"c": 1}, n, lambda r: pytest.fail("encoded again")
    )
    assert len(loads) == 1 and not read.flags.writeable
    np.testing.assert_array_equal(read, np.arange(n * 4, dtype=np.float32).reshape(n, 4))
    np.testing.assert_array_equal(read_rows, rows)
    # Replaced by another writer: opened again; other latents' mirrors: encoded anew.
    other = tmp_path / "other.npz"
    np.savez(other, latents=np.array("x"), rows=rows, mirrors=np.ones((n, 4), np.float32))
    os.replace(other, layout.mirror_latents("k"))
    _, fresh = calibration.mirror_latents(layout, "k", {"c": 1}, n, lambda r: np.zeros((n, 4)))
    assert len(loads) == 2 and (fresh == 0).all()
    STORED_READS.clear()


def test_mirrors_above_the_handover_cap_are_read_again(tmp_path, monkeypatch):
    """A class's mirrors bigger than `artifacts.HANDOVER_MAX_BYTES` are not kept by the
    process that stored them (a big class's read is cheap beside its work; holding them is
    memory): the next call opens the file, and gets what it holds."""
    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.artifacts import STORED_READS
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.decision import calibration

    STORED_READS.clear()
    monkeypatch.setattr(artifacts, "HANDOVER_MAX_BYTES", 1024)
    layout = OutputLayout(tmp_path)
    made = np.ones((64, 8), np.float32)  # 2 KiB of mirrors
    calibration.mirror_latents(layout, "k", {"c": 1}, 64, lambda r: made[r])
    loads = []
    real_load = calibration.np.load
    monkeypatch.setattr(
        calibration.np, "load", lambda p, *a, **k: loads.append(p) or real_load(p, *a, **k)
    )
    _, again = calibration.mirror_latents(
        layout, "k", {"c": 1}, 64, lambda r: pytest.fail("encoded again")
    )
    assert loads == [layout.mirror_latents("k")] and (again == 1).all()
    STORED_READS.clear()


@pytest.mark.parametrize("n", [0, 1, 2, 20])
@pytest.mark.parametrize("kind", ["contiguous", "strided", "mapped", "float"])
def test_mirrored_is_the_flip_of_each_image(tmp_path, n, kind):
    """Mirrored decoys are each image flipped left-right (top-bottom with `vertical`), a new
    C-ordered array of the input's dtype and shape, whatever the input: in memory, a view
    with strides, a memory-mapped store, floats."""
    from dedup_assets.core.decision.calibration import mirrored

    rng = np.random.default_rng(n)
    pixels = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    if kind == "strided":
        pixels = rng.integers(0, 256, (2 * n, 64, 64, 3), dtype=np.uint8)[::2]
    elif kind == "mapped":
        np.save(tmp_path / "p.npy", pixels)
        pixels = np.load(tmp_path / "p.npy", mmap_mode="r")
    elif kind == "float":
        pixels = pixels.astype(np.float32) / 255
    for vertical in (False, True):
        got = mirrored(pixels, vertical)
        expected = np.asarray(pixels)[:, ::-1] if vertical else np.asarray(pixels)[:, :, ::-1]
        assert got.flags.c_contiguous and got.dtype == pixels.dtype and got.shape == pixels.shape
        np.testing.assert_array_equal(got, expected)
        assert not np.shares_memory(got, pixels)


def test_removals_against_budget_counts_each_split_s_class_apart():
    """With split folders a class of each split is decided on its own: one row each (a
    row of both counted 204 bees where the training class had 121, and gave the
    training class's null to the evaluation images)."""
    import polars as pl

    from dedup_assets.core.decision.calibration import removals_against_budget, shown_class

    keep = pl.DataFrame(
        {
            "split": ["train"] * 3 + ["val"] * 2 + ["all"],
            "class": ["bees"] * 5 + ["ants"],
            "kept": [True, False, True, True, True, True],
            "match": [None, "near", None, None, None, None],
            "space": ["spline_copula_dct"] * 3 + ["dct"] * 2 + ["dct"],
            "calibrated_on": ["class"] * 3 + ["pool"] * 2 + ["pool"],
        }
    )
    rows = removals_against_budget(keep, 0.01).to_dicts()
    got = {shown_class(r): (r["images"], r["near_duplicates"], r["calibrated_on"]) for r in rows}
    assert got == {
        "train/bees": (3, 1, "class"),
        "val/bees": (2, 0, "pool"),
        "ants": (1, 0, "pool"),
    }
    assert removals_against_budget(keep.drop("split"), None)["images"].to_list() == [1, 5]
