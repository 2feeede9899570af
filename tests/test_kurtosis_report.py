"""The paper's evaluation of a removal, on synthetic classes with known effects."""

import numpy as np
import polars as pl
import pytest
from scipy import stats

from dedup_assets.core.quality.kurtosis_report import (
    build_report,
    kurtosis_by_class,
    summary_markdown,
)


def _classes(seed: int = 0):
    """Classes whose peak is made of planted near-copies; removing them lowers kurtosis."""
    rng = np.random.default_rng(seed)
    rows, keep = [], []
    for c in range(5):
        base = rng.standard_normal((300, 3))
        peak = rng.standard_normal((150, 3)) * 0.05  # a dense clump at the centre
        z = np.vstack([base, peak])
        for i, v in enumerate(z):
            rows.append(
                {"class": f"c{c}", "image_id": f"c{c}-{i}", "pc1": v[0], "pc2": v[1], "pc3": v[2]}
            )
            keep.append({"image_id": f"c{c}-{i}", "kept": i < 300})
    return pl.DataFrame(rows), pl.DataFrame(keep)


def test_kurtosis_table_matches_scipy():
    scores, keep = _classes()
    table = kurtosis_by_class(scores, keep)
    assert table.height == 5
    assert (table["n_before"] == 450).all() and (table["n_after"] == 300).all()
    z = scores.filter(pl.col("class") == "c0").select("pc1").to_numpy()[:, 0]
    row = table.filter(pl.col("class") == "c0").row(0, named=True)
    assert row["k1_before"] == pytest.approx(stats.kurtosis(z))
    assert row["k1_after"] == pytest.approx(stats.kurtosis(z[:300]))
    assert (table["k1_after"] < table["k1_before"]).all()


def test_missing_keep_rows_are_an_error():
    scores, keep = _classes()
    with pytest.raises(ValueError, match="absent from the keep list"):
        kurtosis_by_class(scores, keep.head(10))


def test_report_states_reduction_entropy_and_figures():
    scores, keep = _classes()
    report = build_report("0.95", scores, keep, tolerance=0.0)
    assert "Gate: **PASS**" in report.markdown
    assert "| 0.95 | 1,500 | 0.667 | 64,953 | 0.506 |" in report.markdown
    for r in report.regressions:
        assert r.fraction_reduced == 1.0
        assert r.excess_at_median < 0
    # removing the clump widens every marginal: entropy rises in every class
    for c in (1, 2, 3):
        assert (report.entropy[f"h{c}_after"] > report.entropy[f"h{c}_before"]).all()
    assert sorted(report.figures) == sorted(
        [f"kurtosis_pc{c}.svg" for c in (1, 2, 3)] + [f"density_pc{c}.svg" for c in (1, 2, 3)]
    )
    assert all(svg.startswith(b"<svg") for svg in report.figures.values())
    summary = report.summary("0.95")
    assert summary["images_before"] == 2250 and summary["images_after"] == 1500
    assert all(v > 0 for v in summary["entropy_change"])
    md = summary_markdown([summary])
    assert "| 0.95 | 1,500 | 0.667 | 0.506 |" in md


def test_random_removal_baseline_separates_chance_from_a_real_effect():
    from dedup_assets.core.quality.kurtosis_report import gate_arrays, random_removal_baseline
    from dedup_assets.core.quality.statistics import kurtosis_gate

    rng = np.random.default_rng(1)
    rows, keep = [], []
    for c in range(6):
        z = rng.standard_normal((600, 3))
        # keep the peak and the far tails, thin the shoulders: kurtosis must rise
        a = np.abs(z[:, 0])
        keep_mask = (a < 0.5) | (a > 2.0) | (rng.random(600) < 0.2)
        for i, v in enumerate(z):
            rows.append(
                {"class": f"c{c}", "image_id": f"{c}-{i}", "pc1": v[0], "pc2": v[1], "pc3": v[2]}
            )
            keep.append({"image_id": f"{c}-{i}", "kept": bool(keep_mask[i])})
    scores, keep = pl.DataFrame(rows), pl.DataFrame(keep)
    classes = [f"c{c}" for c in range(6)]
    chance = random_removal_baseline(scores, keep, classes, draws=300)
    assert chance.shape == (3,) and np.isfinite(chance).all()
    assert (chance > 0).all() and (chance < 1.0).all()
    gate = kurtosis_gate(*gate_arrays(kurtosis_by_class(scores, keep)), 0.1, chance)
    assert gate.severity == "error"
    assert gate.regressions[0].excess_at_median > 3 * chance[0]


def test_density_figures_show_at_most_a_dozen_classes_those_that_moved_most():
    from dedup_assets.core.quality.kurtosis_report import MAX_RIDGES, _ridge_classes

    rng = np.random.default_rng(3)
    rows, keep = [], []
    for c in range(20):
        z = rng.standard_normal((60, 3))
        drop = c % 4 == 0  # every fourth class loses its upper half of PC1: its entropy moves
        for i, v in enumerate(z):
            rows.append(
                {
                    "class": f"c{c:02d}",
                    "image_id": f"{c}-{i}",
                    "pc1": v[0],
                    "pc2": v[1],
                    "pc3": v[2],
                }
            )
            keep.append({"image_id": f"{c}-{i}", "kept": not (drop and v[0] > 0)})
    scores, keep = pl.DataFrame(rows), pl.DataFrame(keep)
    report = build_report("0.95", scores, keep)
    shown = _ridge_classes(report.entropy, 1)
    assert len(shown) == MAX_RIDGES
    assert {f"c{c:02d}" for c in range(0, 20, 4)} <= set(shown)
    ridges = report.figures["density_pc1.svg"]
    assert ridges.startswith(b"<svg") and ridges.count(b"<polyline") == 2 * MAX_RIDGES
    assert _ridge_classes(report.entropy.head(5), 1) == [f"c{c:02d}" for c in range(5)]


def test_refit_of_several_thresholds_reads_each_class_once_and_equals_one_at_a_time():
    from collections.abc import Mapping

    from dedup_assets.core.quality.kurtosis_report import (
        refit_kurtosis,
        refit_kurtosis_by_threshold,
    )

    rng = np.random.default_rng(5)
    stored = {f"c{c}": rng.standard_normal((80 + 10 * c, 16)).astype(np.float32) for c in range(4)}
    reads = []

    class Counted(Mapping):
        def __getitem__(self, name):
            reads.append(name)
            return stored[name]

        def __iter__(self):
            return iter(stored)

        def __len__(self):
            return len(stored)

    kept = {
        t: {name: rng.random(len(x)) < share for name, x in stored.items()}
        for t, share in (("0.9", 0.5), ("0.95", 0.8), ("1%", 0.97))
    }
    together = refit_kurtosis_by_threshold(Counted(), kept)
    assert sorted(reads) == sorted(stored)  # every class read once for the three keep lists
    for t, masks in kept.items():
        assert together[t].equals(refit_kurtosis(stored, masks))


def test_summary_has_the_rows_on_refitted_axes_it_announces():
    """summary.md announced lines on axes refitted to the kept images and had none: the
    report computed them and dropped them before its summary. Refitted kurtosis shifted by
    +0.5 in every class moves each line's intercept by +0.5 and leaves its slope."""
    scores, keep = _classes()
    table = kurtosis_by_class(scores, keep)
    refit = table.select(
        "class", *(pl.col(f"k{c}_after").add(0.5).alias(f"r{c}_after") for c in (1, 2, 3))
    )
    report = build_report("0.95", scores, keep, refit=refit, draws=50)
    summary = report.summary("0.95")
    rows = summary["regressions_refit"]
    assert [r["component"] for r in rows] == [1, 2, 3]
    for orig, ref in zip(summary["regressions"], rows, strict=True):
        assert ref["slope"] == pytest.approx(orig["slope"])
        assert ref["intercept"] == pytest.approx(orig["intercept"] + 0.5)
    md = summary_markdown([summary])
    assert "axes refitted to the kept images" in md
    line = "| 0.95 | refit after removal | " + " | ".join(r["equation"] for r in rows) + " |"
    assert line in md


def test_summary_without_refitted_rows_does_not_announce_them():
    scores, keep = _classes()
    summary = build_report("0.95", scores, keep, draws=50).summary("0.95")
    assert summary["regressions_refit"] == []
    md = summary_markdown([summary])
    assert "refit" not in md


@pytest.mark.parametrize("classes", [0, 1, 2, 7])
def test_class_scores_are_each_class_rows_in_order(classes):
    """`class_scores` gives each class (sorted by name; only those asked for) its own rows
    of PC1-3 and kept flags, in the order the table holds them: what the per-class loops
    it replaced read, for 0, 1, 2 and several classes of different sizes."""
    from dedup_assets.core.quality.kurtosis_report import class_scores

    rng = np.random.default_rng(classes)
    sizes = rng.integers(1, 9, classes)
    names = [f"c{c:02d}" for c in range(classes)][::-1]  # stored in reverse name order
    labels = [n for n, size in zip(names, sizes, strict=True) for _ in range(size)]
    order = rng.permutation(len(labels))  # the classes' rows interleaved
    scores = pl.DataFrame(
        {
            "class": pl.Series([labels[i] for i in order], dtype=pl.String),
            "image_id": [f"i{i}" for i in range(len(labels))],
            "pc1": rng.standard_normal(len(labels)),
            "pc2": rng.standard_normal(len(labels)),
            "pc3": rng.standard_normal(len(labels)).astype(np.float32),
        }
    )
    keep = pl.DataFrame({"image_id": scores["image_id"], "kept": rng.random(len(labels)) < 0.5})
    groups = class_scores(scores, keep.reverse())
    assert [name for name, _, _ in groups] == sorted(names)
    for name, z, kept in groups:
        rows = scores.with_row_index().filter(pl.col("class") == name)
        assert z.dtype == np.float64 and z.shape == (rows.height, 3)
        assert np.array_equal(z, rows.select("pc1", "pc2", "pc3").cast(pl.Float64).to_numpy())
        expected = rows.join(keep, on="image_id", how="left").sort("index")["kept"].to_numpy()
        assert np.array_equal(kept, expected)
    asked = sorted(names)[1:2]
    assert [name for name, _, _ in class_scores(scores, keep, asked)] == asked


def test_entropies_are_fitted_once_per_distinct_scores_and_equal_a_fresh_fit(monkeypatch):
    """A marginal's entropy is kept by its scores' bytes: a class that loses nothing and a
    second threshold's before-removal scores are not fitted again, and every value is what
    a fit of its own gives."""
    from dedup_assets.core.density.spline import SplineDensity1D
    from dedup_assets.core.quality import kurtosis_report as kr

    scores, keep = _classes(seed=4)
    untouched = keep.with_columns(
        pl.when(pl.col("image_id").str.starts_with("c0-"))
        .then(True)
        .otherwise(pl.col("kept"))
        .alias("kept")
    )  # c0 loses nothing, the other 4 classes lose their clump
    fits = []
    real_fit = SplineDensity1D.fit.__func__
    monkeypatch.setattr(
        SplineDensity1D,
        "fit",
        classmethod(lambda cls, x, **kw: fits.append(len(x)) or real_fit(cls, x, **kw)),
    )
    monkeypatch.setattr(kr, "_ENTROPIES", {})
    first = kr.entropy_by_class(scores, untouched, "fd")
    assert len(fits) == 3 * (1 + 2 * 4)  # c0's after is its before
    second = kr.entropy_by_class(scores, keep, "fd")  # another threshold: c0 loses its clump
    assert len(fits) == 27 + 3  # only c0's new after-removal marginals
    assert second.select("class", "h1_before", "h2_before", "h3_before").equals(
        first.select("class", "h1_before", "h2_before", "h3_before")
    )
    row = first.filter(pl.col("class") == "c0").row(0, named=True)
    assert [row[f"h{c}_after"] for c in (1, 2, 3)] == [row[f"h{c}_before"] for c in (1, 2, 3)]
    # Each kept value is the entropy a fit of its own scores gives, bit for bit.
    monkeypatch.setattr(kr, "_ENTROPIES", {})
    for name, z, kept in kr.class_scores(scores, keep):
        got = second.filter(pl.col("class") == name).row(0, named=True)
        for c in range(3):
            assert (
                got[f"h{c + 1}_before"] == real_fit(SplineDensity1D, z[:, c], rule="fd").entropy()
            )
            assert (
                got[f"h{c + 1}_after"]
                == real_fit(SplineDensity1D, np.ascontiguousarray(z[kept, c]), rule="fd").entropy()
            )


def test_the_kept_entropies_are_bounded(monkeypatch):
    from dedup_assets.core.quality import kurtosis_report as kr

    monkeypatch.setattr(kr, "ENTROPIES_KEPT", 4)
    monkeypatch.setattr(kr, "_ENTROPIES", {})
    rng = np.random.default_rng(0)
    for _ in range(10):
        kr._entropy(rng.standard_normal(50), "fd")
        assert len(kr._ENTROPIES) <= 4
    assert np.isnan(kr._entropy(np.ones(10), "fd")) and np.isnan(kr._entropy(np.ones(1), "fd"))


def test_a_large_class_is_refitted_a_chunk_at_a_time_with_the_same_kurtosis(monkeypatch):
    """Above REFIT_CHUNK_BYTES of kept latents, `refit_row` works a chunk of rows (that many
    bytes) at a time: the same kurtosis as the class refitted in one piece, and no centred
    copy of the class in memory (what the keep decisions of a class of 100,000 held beside
    their own, 400 MB). Under it, one piece."""
    import tracemalloc

    from dedup_assets.core.quality import kurtosis_report as kr

    rng = np.random.default_rng(3)
    n, d = 12_000, 256
    scale = np.linspace(3.0, 0.1, d).astype(np.float32)
    latents = (rng.standard_t(5, (n, d)) * scale).astype(np.float32)
    kept = rng.random(n) < 0.8
    monkeypatch.setattr(kr, "REFIT_CHUNK_BYTES", 10**12)
    whole = kr.refit_row(latents, kept)
    monkeypatch.setattr(kr, "REFIT_CHUNK_BYTES", 1024 * d * 4)
    tracemalloc.start()
    chunked = kr.refit_row(latents, kept)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.isfinite(whole).all()
    np.testing.assert_allclose(chunked, whole, rtol=1e-3, atol=1e-4)
    copy = int(kept.sum()) * d * 4  # one float32 copy of the kept rows
    assert peak < copy / 2, (peak, copy)
    # Index rows give the mask's answer; under MIN_IMAGES_FOR_KURTOSIS kept: NaN.
    np.testing.assert_array_equal(kr.refit_row(latents, np.flatnonzero(kept)), chunked)
    assert np.isnan(kr.refit_row(latents, np.arange(3))).all()
    # The default: 16,384 latents of 1,024 (64 MiB) in one piece, one more in chunks.
    monkeypatch.undo()
    chunks = []
    monkeypatch.setattr(kr, "_chunked_leading_scores", lambda *a: chunks.append(a[3]) or 1 / 0)
    wide = np.zeros((16_385, 1024), np.float32)
    wide[:, :3] = rng.standard_t(5, (16_385, 3))
    assert np.isfinite(kr.refit_row(wide, np.arange(16_384))).all() and chunks == []
    with pytest.raises(ZeroDivisionError):
        kr.refit_row(wide, np.arange(16_385))
    assert chunks == [16_384]


def test_a_ridge_fit_is_kept_by_its_scores_and_is_the_fit_of_them():
    """`_ridge_fit` answers equal scores (another array) with the fit it kept, and that fit
    is the one a fit of them makes; other scores get their own."""
    from dedup_assets.core.density.spline import SplineDensity1D
    from dedup_assets.core.quality import kurtosis_report

    x = np.random.default_rng(3).standard_t(5, 500)
    first = kurtosis_report._ridge_fit(x, "fd")
    assert kurtosis_report._ridge_fit(x.copy(), "fd") is first
    grid = np.linspace(x.min(), x.max(), 50)
    np.testing.assert_array_equal(first.pdf(grid), SplineDensity1D.fit(x, rule="fd").pdf(grid))
    other = kurtosis_report._ridge_fit(x[:-1], "fd")
    assert other is not first
    assert kurtosis_report._ridge_fit(x, "sturges") is not first


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [4, 11, 20, 300])
def test_leading_directions_are_those_of_a_fresh_seeded_draw(n, dtype):
    """The range finder's Gaussian is drawn once a process and reused: the same directions,
    bit for bit, as a draw made for each class (two classes in a row, two seeds)."""
    from dedup_assets.core.quality.kurtosis_report import leading_directions

    def fresh(centred, k, seed=0):
        n_, d = centred.shape
        width = min(k + 8, n_, d)
        g = np.random.default_rng(seed).standard_normal((d, width)).astype(centred.dtype)
        y = centred @ g
        for _ in range(4):
            y, _ = np.linalg.qr(centred @ (centred.T @ y))
        return np.linalg.svd(y.T @ centred, full_matrices=False)[2][: min(k, width)]

    rng = np.random.default_rng(n)
    for seed in (0, 0, 3):
        x = rng.normal(size=(n, 64)).astype(dtype)
        centred = x - x.mean(axis=0)
        np.testing.assert_array_equal(leading_directions(centred, 3, seed), fresh(centred, 3, seed))


@pytest.mark.parametrize("seed", range(6))
def test_stored_entropies_give_the_report_the_entropies_it_computes(seed):
    """A class's before-removal entropies stored with its scores (`scores_summary`, of the
    scores as the table holds them) and read back make the same entropy table as fitting
    every marginal again: classes that kept all, lost some, lost all but a few, have one
    or two components (NaN columns) or a constant one; a class without a stored record is
    computed; another bin rule's record is not used."""
    import json

    from dedup_assets.core.quality.kurtosis_report import (
        SCORES_SUMMARY_KEY,
        entropy_by_class,
        scores_summary,
        stored_scores_summary,
    )

    rng = np.random.default_rng(seed)
    frames, keeps, stored = [], [], {}
    for c in range(int(rng.integers(1, 25))):
        n = int(rng.choice([1, 2, 3, 5, 20, 64]))
        z = rng.standard_t(4, size=(n, 3))
        components = int(rng.choice([1, 2, 3, 8]))
        z[:, min(components, 3) :] = np.nan
        if rng.random() < 0.15:
            z[:, 0] = 2.0
        name = f"class {c} ü"
        ids = [f"{c}-{i}" for i in range(n)]
        frames.append(
            pl.DataFrame({"class": [name] * n, "image_id": ids}).with_columns(
                [pl.Series(f"pc{k + 1}", z[:, k]) for k in range(3)]
            )
        )
        kept = rng.random(n) > rng.choice([0.0, 0.1, 0.9])
        keeps.append(pl.DataFrame({"image_id": ids, "kept": kept}))
        if rng.random() < 0.8:  # some classes written before the record
            meta = scores_summary(z, components, "fd")
            assert stored_scores_summary(meta, "scott") is None
            assert json.loads(meta[SCORES_SUMMARY_KEY])["components"] == components
            got = stored_scores_summary(meta, "fd")
            assert got is not None and got[0] == components
            stored[name] = got[1]
    scores, keep = pl.concat(frames), pl.concat(keeps)
    expected = entropy_by_class(scores, keep, "fd")
    with_stored = entropy_by_class(scores, keep, "fd", before=stored)
    assert with_stored.equals(expected, null_equal=True)
