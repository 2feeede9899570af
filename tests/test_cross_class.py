"""Cross-class duplicates (likely label errors): the join, its edges, and the pipeline's
warning check on a folder with planted cross-class copies."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import run_dedup
from PIL import Image, ImageEnhance

from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.decision.cross_class import cross_class_pairs, shared_space
from dedup_assets.core.decision.similarity import l2_normalize
from dedup_assets.core.model.autoencoder import cpu_supports_bf16
from dedup_assets.core.quality.demo_data import generate_demo_dataset


def _unit(rows) -> np.ndarray:
    return l2_normalize(np.asarray(rows, dtype=np.float32))


def test_only_pairs_of_different_classes_above_t():
    v = _unit([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [0, 1, 0.02], [0, 0, 1]])
    labels = np.array([0, 1, 1, 1, 0])
    hi, lo = cross_class_pairs(v, labels, [0.999, 0.5], block=2)
    # (0, 1): classes 0 and 1, cosine 0.99995; (2, 3) is in one class; nothing else is close.
    assert list(zip(hi.i, hi.j, strict=True)) == [(0, 1)]
    assert list(zip(lo.i, lo.j, strict=True)) == [(0, 1)]
    assert hi.similarity[0] == pytest.approx(1 / np.sqrt(1 + 1e-4), abs=1e-6)
    assert not hi.exact.any()


def test_exact_copies_in_two_classes_are_reported_at_every_threshold():
    # Exact copies may even sit far apart in a space (a zero vector): pixels decide.
    v = _unit([[1, 0], [0, 1], [0, 1], [1, 1]])
    labels = np.array([0, 1, 2, 2])
    hashes = np.array(["a", "b", "b", "a"])
    (at_99,) = cross_class_pairs(v, labels, [0.99], pixel_hashes=hashes)
    pairs = sorted(zip(at_99.i.tolist(), at_99.j.tolist(), at_99.exact.tolist(), strict=True))
    # (0, 3): exact, classes 0 and 2; (1, 2): exact and cosine 1, listed once; (1, 3) no.
    assert pairs == [(0, 3, True), (1, 2, True)]
    assert at_99.similarity.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs(n):
    v = _unit(np.ones((n, 4))) if n else np.zeros((0, 4), np.float32)
    labels = np.arange(n)
    (found,) = cross_class_pairs(v, labels, [0.9], pixel_hashes=np.array(["h"] * n))
    assert len(found.i) == (1 if n == 2 else 0)
    assert shared_space(np.ones((n, 8), np.float32)).shape[0] == n


def test_shared_space_is_unit_and_centred():
    rng = np.random.default_rng(0)
    latents = rng.normal(5.0, 1.0, (300, 64)).astype(np.float32)
    v = shared_space(latents, n_components=16)
    assert v.shape == (300, 16)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Centred: independent images are not all alike (raw cosines here are ~0.96).
    off = (v @ v.T)[np.triu_indices(300, 1)]
    assert abs(float(off.mean())) < 0.05


def test_pipeline_warns_about_cross_class_copies_and_resolves_budgets(tmp_path):
    """One run: planted cross-class copies are listed with a WARN check, and a
    false-removal budget ("5%": classes of about 45 images read it on their own, n + 1 >=
    1/b) resolves to one margin per class over the images' local levels: each row's cosine
    is its own pair's (the class margin plus both offsets)."""
    source = tmp_path / "src"
    generate_demo_dataset(source, seed=9, per_class=36, duplicate_fraction=0.25)
    for extra in ("road", "urban", "water"):
        shutil.rmtree(source / extra)
    forest = sorted((source / "forest").glob("forest_0*.png"))
    shutil.copy(forest[0], source / "desert" / "mislabelled_exact.png")
    with Image.open(forest[1]) as img:  # a near copy, 5% brighter, filed as farmland
        ImageEnhance.Brightness(img.convert("RGB")).enhance(1.05).save(
            source / "farmland" / "mislabelled_near.png"
        )
    out = tmp_path / "out"
    args = ("--thresholds", "0.9,5%", "--epochs", "2", "--device", "cpu")
    done = run_dedup("run", "--source", str(source), "--output", str(out), *args)
    assert done.returncode in (0, 3), done.stdout + done.stderr  # 3: a kurtosis gate verdict
    assert "ERROR " not in done.stdout and "SKIPPED" not in done.stdout, done.stdout

    pairs = pl.read_parquet(out / "cross_class" / "0.9.parquet")
    found = {
        frozenset([(a, pa.split("/")[-1]), (b, pb.split("/")[-1])]): m
        for a, pa, b, pb, m in pairs.select(
            "class_a", "path_a", "class_b", "path_b", "match"
        ).iter_rows()
    }
    exact = frozenset([("forest", forest[0].name), ("desert", "mislabelled_exact.png")])
    near = frozenset([("forest", forest[1].name), ("farmland", "mislabelled_near.png")])
    assert found.get(exact) == "exact"
    assert found.get(near) == "near", pairs
    assert "no_cross_class_duplicates" in done.stdout and "likely label errors" in done.stdout
    budget_pairs = pl.read_parquet(out / "cross_class" / "5%.parquet")
    assert "exact" in budget_pairs["match"].to_list()

    assert "keep list T=5%:" in done.stdout
    keep = pl.read_parquet(out / "keep_lists" / "5%.parquet")
    per_class = keep.group_by("class").agg(pl.col("cosine").n_unique().alias("values"))
    assert per_class.height == 3 and min(per_class["values"].to_list()) > 10, per_class
    made = OutputLayout(out).class_keep_list("5%", "forest")
    provenance = json.loads(pl.read_parquet_metadata(made)["latent_dedup_provenance"])
    assert provenance["scaling"] == "local"
    assert set(keep["space"]) == {"spline_copula_dct"}  # about 45 images a class: fitted
    removed = keep.filter(~pl.col("kept") & (pl.col("match") == "near"))
    assert (removed["similarity"] > removed["cosine"]).all()
    fixed = pl.read_parquet(out / "keep_lists" / "0.9.parquet")
    assert set(fixed["cosine"].to_list()) == {0.9}
    evaluation = pl.read_csv(out / "evaluation" / "evaluation.csv")
    assert set(evaluation["threshold"].cast(pl.String)) == {"0.9", "5%"}
    assert (out / "evaluation" / "recall_per_transform_5%.svg").read_bytes().startswith(b"<svg")
    assert "5%" in (out / "reports" / "summary.md").read_text()

    # The mirrors are encoded once, by each class's calibration, and read by the
    # cross-class one: stored beside the latents, stamped with the latents they mirror.
    from dedup_assets.core.data.artifacts import digest, read_latent_ids, read_provenance

    layout = OutputLayout(out)
    for latents in sorted((out / "latents").glob("*.parquet")):
        key = latents.stem
        with np.load(layout.mirror_latents(key)) as stored:
            assert str(stored["latents"]) == digest(read_provenance(latents))
            assert stored["mirrors"].shape == (read_latent_ids(latents).height, 1024)
    null = out / "cross_class" / ".mirror_null.npz"
    assert null.is_file()
    # Computed by the first partition (0.9) with the nearest pairs, not again for 5%.
    assert null.stat().st_mtime_ns <= (out / "cross_class" / "0.9.parquet").stat().st_mtime_ns


def test_at_most_one_partner_per_image_however_many_look_alike():
    """Many alike images in two classes: each is listed with its nearest other-class image
    only, so the table grows with N, not N^2 (EuroSAT: 2.2 million pairs otherwise)."""
    from dedup_assets.core.decision.cross_class import nearest_other_class

    rng = np.random.default_rng(0)
    v = _unit(np.ones((400, 6)) + 0.01 * rng.standard_normal((400, 6)))
    labels = np.repeat([0, 1], 200)
    (found,) = cross_class_pairs(v, labels, [0.9], block=64)
    assert 0 < len(found.i) <= 400
    assert (labels[found.i] != labels[found.j]).all() and (found.i < found.j).all()
    full = v @ v.T
    other = np.where(labels[:, None] != labels[None, :], full, -np.inf)
    nearest = nearest_other_class(v, labels, block=64)
    np.testing.assert_array_equal(nearest.partner, other.argmax(axis=1))
    np.testing.assert_allclose(nearest.similarity, other.max(axis=1), atol=1e-6)
    ann = nearest_other_class(v, labels, join="ann", nprobe=4)
    assert (ann.partner >= 0).all() and (labels[ann.partner] != labels).all()
    np.testing.assert_allclose(ann.similarity, full[np.arange(400), ann.partner], atol=1e-5)


@pytest.mark.skipif(
    not cpu_supports_bf16(),
    reason="this CPU has no fast bf16: the run's precision would be fp32 either way",
)
def test_mirrors_missing_at_the_cross_class_step_are_encoded_like_the_latents(
    tmp_path, monkeypatch
):
    """When a class's stored mirrors are gone, the cross-class budget encodes them again on
    the run's device and at its precision (they ran on the CPU in fp32 before), and stores
    them keyed like the latents."""
    import dagster as dg
    import torch

    from dedup_assets.assets import cross_class as cross_class_asset
    from dedup_assets.config import PipelineConfig
    from dedup_assets.core.decision import calibration
    from dedup_assets.definitions import build_definitions
    from dedup_assets.runner import run_pipeline

    source = tmp_path / "src"
    generate_demo_dataset(source, seed=4, per_class=12, duplicate_fraction=0.2)
    config = PipelineConfig.build(
        source=str(source),
        output=str(tmp_path / "out"),
        thresholds=("1%",),
        device="cpu",
        precision="bf16",
        method={"epochs": 1, "batch_size": 32, "n_components": 8, "kurtosis_tolerance": 1.0},
    )
    instance = dg.DagsterInstance.ephemeral()
    run_pipeline(config, instance, log=lambda _: None)
    layout = OutputLayout(tmp_path / "out")
    for path in layout.root.glob("latents/*.mirrors.npz"):
        path.unlink()
    (layout.cross_class_dir / ".mirror_null.npz").unlink()
    seen = []
    real = calibration.encode_mirrors

    def recording(model, pixels, rows=None, **kw):
        seen.append((str(kw.get("device")), kw.get("amp_dtype")))
        return real(model, pixels, rows, **kw)

    monkeypatch.setattr(cross_class_asset, "encode_mirrors", recording)  # where it is called
    job = build_definitions(config).resolve_job_def("threshold_job")
    result = job.execute_in_process(
        partition_key="1%",
        instance=instance,
        asset_selection=[dg.AssetKey("cross_class_duplicates")],
    )
    assert result.success
    assert len(seen) == 6 and set(seen) == {("cpu", torch.bfloat16)}
    assert len(list(layout.root.glob("latents/*.mirrors.npz"))) == 6


def test_approximate_join_finds_other_class_partners_crowded_by_own_class_copies():
    """Each original has 40 near copies in its own class and one in another: the old
    approximate join (an IVF index's 32 nearest, then the best of another class) found no
    partner for such images. Comparing every image of the nearest cells finds them all,
    with the exact similarity, wherever the exact join does."""
    from dedup_assets.core.decision.cross_class import (
        CELL_SIZE,
        cell_centres,
        nearest_other_class,
    )

    rng = np.random.default_rng(2)
    originals = _unit(rng.standard_normal((120, 32)))
    own = np.repeat(originals, 41, axis=0) + 0.01 * rng.standard_normal((120 * 41, 32))
    other = originals + 0.02 * rng.standard_normal((120, 32))
    v = _unit(np.vstack([own, other]).astype(np.float32))
    labels = np.concatenate([np.repeat(np.arange(120) % 3, 41), (np.arange(120) % 3) + 3])
    assert len(v) > 4 * CELL_SIZE  # several cells, each image compared in a few of them
    exact = nearest_other_class(v, labels)
    ann = nearest_other_class(v, labels, join="ann", nprobe=2)
    listed = exact.similarity > 0.9
    assert listed.sum() >= len(v) - 120
    assert (ann.partner[listed] == exact.partner[listed]).mean() > 0.99
    found = ann.partner >= 0
    assert (labels[ann.partner[found]] != labels[found]).all()
    np.testing.assert_allclose(
        ann.similarity[found], np.sum(v[found] * v[ann.partner[found]], axis=1), atol=1e-5
    )
    centres = cell_centres(v, 5)
    assert centres.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)


def _nearest_one_slab_at_a_time(v: np.ndarray, labels: np.ndarray, block: int):
    """The exact join as it ran before its slabs were spread over threads (one loop, each
    slab updating the rows' and columns' best in turn): the answer the threads must give."""
    from dedup_assets.core.data.pools import blas_threads
    from dedup_assets.core.decision.cross_class import _slab_tasks
    from dedup_assets.core.decision.similarity import block_rows

    x, labels, n = np.ascontiguousarray(v, dtype=np.float32), np.asarray(labels), len(v)
    if n < 2:
        return np.full(n, -1, np.int64), np.full(n, -np.inf, np.float32)
    order = np.argsort(labels, kind="stable")
    xs, ls = x[order], labels[order]
    starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
    ends = np.r_[starts[1:], n]
    best = np.full(n, -np.inf, np.float32)
    at = np.full(n, -1, np.int64)
    came = np.full(n, -1, np.int64)
    step = block_rows(n, block)
    # The slabs as the join makes them: a class's blocks against the later classes, small
    # classes together in one slab with each row's own class masked (`_slab_tasks`).
    tasks = _slab_tasks(starts, ends, step)
    for r0, r1, b, grouped in tasks:
        with blas_threads(1):  # as the join computes each product (`run_on_idle_cores`)
            s = xs[r0:r1] @ xs[b:].T
        if grouped:
            s[:, : r1 - r0][ls[r0:r1][:, None] == ls[r0:r1][None, :]] = -np.inf
        # Columns first: a grouped slab's rows are among its columns, and a row's own side
        # wins only when higher than every column value it has (the join's rule).
        c_val = s.max(axis=0)
        up = np.flatnonzero(c_val > best[b:])
        best[b + up], came[b + up] = c_val[up], r0
        r_at = s.argmax(axis=1)
        r_val = s[np.arange(r1 - r0), r_at]
        up = r_val > best[r0:r1]
        best[r0:r1][up], at[r0:r1][up], came[r0:r1][up] = r_val[up], b + r_at[up], -1
    rows_of = {r0: (r1, grouped) for r0, r1, _, grouped in tasks}
    pending = np.flatnonzero(came >= 0)
    for r0 in np.unique(came[pending]):  # the columns of one slab in one product
        cols = pending[came[pending] == r0]
        r1, grouped = rows_of[int(r0)]
        sims = xs[cols] @ xs[r0:r1].T
        if grouped:
            sims[ls[cols][:, None] == ls[r0:r1][None, :]] = -np.inf
        pick = sims.argmax(axis=1)
        at[cols], best[cols] = r0 + pick, sims[np.arange(len(cols)), pick]
    partner = np.full(n, -1, np.int64)
    value = np.full(n, -np.inf, np.float32)
    value[order] = best
    partner[order] = np.where(at >= 0, order[np.maximum(at, 0)], -1)
    return partner, value


def _nearest_by_brute_force(v: np.ndarray, labels: np.ndarray):
    full = v @ v.T
    other = np.where(labels[:, None] != labels[None, :], full, -np.inf)
    return other.argmax(axis=1), other.max(axis=1)


@pytest.mark.parametrize("n, classes", [(0, 1), (1, 1), (2, 1), (2, 2), (3, 3), (97, 4), (700, 7)])
def test_the_exact_join_on_threads_gives_the_answer_of_one_thread(n, classes):
    """The blocked join's slabs spread over threads: the same partners and similarities,
    bit for bit, as one thread, at every size, for 1 to 8 threads; and the brute force's."""
    from dedup_assets.core.decision.cross_class import nearest_other_class

    rng = np.random.default_rng(n)
    v = _unit(rng.standard_normal((n, 12))) if n else np.zeros((0, 12), np.float32)
    labels = rng.integers(0, classes, n)
    one = nearest_other_class(v, labels, block=16, threads=1)
    partner, value = _nearest_one_slab_at_a_time(v, labels, 16)
    np.testing.assert_array_equal(one.partner, partner)
    np.testing.assert_array_equal(one.similarity, value)
    for threads in (2, 3, 8):
        many = nearest_other_class(v, labels, block=16, threads=threads)
        np.testing.assert_array_equal(many.partner, one.partner)
        np.testing.assert_array_equal(many.similarity, one.similarity)
    if n and len(set(labels.tolist())) > 1:
        partner, value = _nearest_by_brute_force(v.astype(np.float32), labels)
        np.testing.assert_array_equal(one.partner, partner)
        np.testing.assert_allclose(one.similarity, value, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_the_exact_join_breaks_ties_the_same_way_on_any_threads(threads):
    """Exact copies in several classes and identical images everywhere: every image's best
    is 1.0 with many partners; the partner chosen is the same whatever the threads."""
    from dedup_assets.core.decision.cross_class import nearest_other_class

    base = _unit(np.random.default_rng(3).standard_normal((40, 8)))
    copies = np.concatenate([base, base, base, base[:10]])
    copy_labels = np.repeat([0, 1, 2, 3], [40, 40, 40, 10])
    same = np.full((30, 4), 0.5, np.float32)
    for v, labels in ((copies, copy_labels), (same, np.arange(30) % 3)):
        one = _nearest_one_slab_at_a_time(v, labels, 8)
        many = nearest_other_class(v, labels, block=8, threads=threads)
        np.testing.assert_array_equal(many.partner, one[0])
        np.testing.assert_array_equal(many.similarity, one[1])
        one = nearest_other_class(v, labels, block=8, threads=1)
        assert (labels[one.partner] != labels).all()
        np.testing.assert_allclose(one.similarity, 1.0, atol=1e-6)


def _sorted_slabs(n: int, classes: int, block: int, seed: int):
    """Rows sorted by class, their class bounds and the join's slab size (as the join makes
    them), for calling `_exact_slabs` directly."""
    from dedup_assets.core.decision.similarity import block_rows

    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, classes, n))
    xs = _unit(rng.standard_normal((n, 8)))
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    return xs, starts, np.r_[starts[1:], n], block_rows(n, block)


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_the_merge_of_the_threads_is_the_same_whoever_took_which_slab(threads):
    """Slabs dealt to the threads round-robin, in reverse, or all to the last thread: the
    same best, partner and block as one thread taking them in order (with ties: the rows
    are copies of 12 vectors)."""
    from dedup_assets.core.decision.cross_class import _exact_slabs

    xs, starts, ends, step = _sorted_slabs(300, 4, 16, threads)
    xs = xs[np.arange(300) % 12]  # copies: ties between slabs and threads
    one = _exact_slabs(xs, starts, ends, step, 1)
    tasks = sum(len(range(a, b, step)) for a, b in zip(starts, ends, strict=True) if b < 300)
    deals = [
        [list(range(t, tasks, threads)) for t in range(threads)],
        [list(range(tasks))[::-1][t::threads] for t in range(threads)],
        [[] for _ in range(threads - 1)] + [list(range(tasks))],
    ]
    for split in deals:
        got = _exact_slabs(xs, starts, ends, step, threads, split=split)
        for mine, theirs in zip(got, one, strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_the_caller_does_not_wait_for_a_helper_that_gets_no_core(monkeypatch):
    """A helper thread that holds a slab and never gets a core (at nice 19 beside busy
    processes): the caller computes that slab too and returns the one-thread answer."""
    import threading

    from dedup_assets.core.decision import cross_class

    xs, starts, ends, step = _sorted_slabs(400, 4, 16, 0)
    one = cross_class._exact_slabs(xs, starts, ends, step, 1)
    release, held = threading.Event(), threading.Event()
    real = cross_class._slab

    def slab(xs, r0, r1, b, outputs):
        if threading.current_thread() is not threading.main_thread():
            held.set()
            release.wait(30)  # starved
        return real(xs, r0, r1, b, outputs)

    monkeypatch.setattr(cross_class, "_slab", slab)
    try:
        got = cross_class._exact_slabs(xs, starts, ends, step, 2)
        assert held.is_set()  # the helper did take a slab, and still holds it
    finally:
        release.set()
    for mine, theirs in zip(got, one, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_an_interrupt_stops_the_join_and_its_helpers(monkeypatch):
    """Ctrl-C in the caller ends the join there, and its helpers after their slab."""
    import threading
    import time

    from dedup_assets.core.decision import cross_class

    xs, starts, ends, step = _sorted_slabs(400, 4, 8, 1)
    real, calls = cross_class._slab, []

    def slab(xs, r0, r1, b, outputs):
        if threading.current_thread() is threading.main_thread():
            calls.append(r0)
            raise KeyboardInterrupt
        time.sleep(0.05)  # the helpers are slow: the caller takes a slab too
        return real(xs, r0, r1, b, outputs)

    monkeypatch.setattr(cross_class, "_slab", slab)
    with pytest.raises(KeyboardInterrupt):
        cross_class._exact_slabs(xs, starts, ends, step, 3)
    deadline = time.monotonic() + 10
    while any(t.name.startswith("join-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the join's helpers kept running"
        time.sleep(0.01)


def test_the_join_s_threads_fit_the_slab_memory():
    from dedup_assets.core.decision.cross_class import JOIN_SLAB_BYTES, join_threads
    from dedup_assets.core.decision.similarity import block_rows

    assert join_threads(3, 1_000, 16) == 3
    assert join_threads(64, 1_000, 16) == 8
    assert join_threads(0, 1_000, 16) == 1
    assert join_threads(None, 1_000, 16) >= 1
    n = 135_000
    step = block_rows(n)
    assert join_threads(8, n, step) * 4 * step * n <= JOIN_SLAB_BYTES
    assert join_threads(8, n, step) == 4


def test_the_join_s_extra_threads_take_idle_cores_only(monkeypatch):
    """Every thread of the join but the caller's asks for the lowest priority: beside other
    work (the command's report and clean copy) the join takes only the cores left idle."""
    import threading

    from dedup_assets.core.data import pools
    from dedup_assets.core.decision import cross_class

    asked = []
    monkeypatch.setattr(pools, "on_idle_cores", lambda: asked.append(threading.get_ident()))
    rng = np.random.default_rng(0)
    v, labels = _unit(rng.standard_normal((600, 8))), rng.integers(0, 3, 600)
    cross_class.nearest_other_class(v, labels, block=16, threads=3)
    assert len(asked) == 2 and threading.get_ident() not in asked
    asked.clear()
    cross_class.nearest_other_class(v, labels, block=16, threads=1)
    assert asked == []


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priority here")
def test_a_helper_thread_of_the_join_runs_at_the_lowest_priority():
    """`on_idle_cores` lowers the thread it runs in, not the process."""
    import threading

    from dedup_assets.core.data.pools import on_idle_cores

    seen = []

    def helper():
        on_idle_cores()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, 0)
    thread = threading.Thread(target=helper)
    thread.start()
    thread.join()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


@pytest.mark.parametrize(
    ("sizes", "step"),
    [
        ([20] * 50, 64),  # small classes: grouped up to the step
        ([2000] * 10, 2048),  # one class a slab: the blocks of old
        ([5, 300, 3, 3, 70, 1, 1, 1], 64),  # big classes split, small ones between
        ([64, 64, 1], 64),  # exactly a step: alone
        ([1], 64),
        ([3, 4], 64),  # the last class in a group
    ],
)
def test_the_join_s_slabs_cover_every_pair_of_classes_once_within_the_step(sizes, step):
    """Every pair of rows of different classes is in some slab (as row and column), no
    slab has more than `step` rows, a class bigger than `step` is split as before, and a
    class alone keeps its old block (against the later classes only)."""
    from dedup_assets.core.decision.cross_class import _slab_tasks

    ends = np.cumsum(sizes)
    starts = ends - np.asarray(sizes)
    n = int(ends[-1])
    label = np.repeat(np.arange(len(sizes)), sizes)
    covered = np.zeros((n, n), bool)
    for r0, r1, b, grouped in _slab_tasks(starts, ends, step):
        assert 0 < r1 - r0 <= step and r0 < r1 <= n
        assert (b == r0) if grouped else (b >= r1)
        assert grouped == (len(set(label[r0:r1].tolist())) > 1)
        covered[r0:r1, b:] = True
    other = label[:, None] != label[None, :]
    assert (covered | covered.T)[other].all()
    if sizes == [2000] * 10:
        old = [
            (r0, min(r0 + step, b), b, False)
            for a, b in zip(starts, ends, strict=True)
            if b < n
            for r0 in range(a, b, step)
        ]
        assert _slab_tasks(starts, ends, step) == old


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_many_small_classes_join_like_the_brute_force(threads):
    """300 classes of 1-6 images (grouped slabs): each image's partner and cosine are the
    brute force's, the same on every thread count, never of its own class."""
    from dedup_assets.core.decision.cross_class import nearest_other_class

    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(300), rng.integers(1, 7, 300))
    v = _unit(rng.standard_normal((len(labels), 16)))
    got = nearest_other_class(v, labels, block=64, threads=threads)
    partner, value = _nearest_by_brute_force(v, labels)
    np.testing.assert_array_equal(got.partner, partner)
    np.testing.assert_allclose(got.similarity, value, atol=1e-6)
    assert (labels[got.partner] != labels).all()
    one = _nearest_one_slab_at_a_time(v, labels, 64)
    np.testing.assert_array_equal(got.partner, one[0])
    np.testing.assert_array_equal(got.similarity, one[1])


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_ties_among_small_grouped_classes_break_the_same_way_on_any_threads(threads):
    """Copies of 6 vectors in 60 classes of 3 (grouped slabs, ties everywhere) and one
    vector everywhere: the reference's partner on every thread count, never of its own
    class, at similarity 1."""
    from dedup_assets.core.decision.cross_class import nearest_other_class

    base = _unit(np.random.default_rng(5).standard_normal((6, 8)))
    copies = base[np.arange(180) % 6]
    labels = np.arange(180) // 3
    same = np.full((40, 4), 0.5, np.float32)
    for v, lab in ((copies, labels), (same, np.arange(40) // 2)):
        one = _nearest_one_slab_at_a_time(v, lab, 16)
        got = nearest_other_class(v, lab, block=16, threads=threads)
        np.testing.assert_array_equal(got.partner, one[0])
        np.testing.assert_array_equal(got.similarity, one[1])
        assert (lab[got.partner] != lab).all()
        np.testing.assert_allclose(got.similarity, 1.0, atol=1e-6)


def _brute_nearest(v: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    full = v @ v.T
    other = np.where(labels[:, None] != labels[None, :], full, -np.inf)
    if not len(v):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    return other.max(axis=1), other.argmax(axis=1)


@pytest.mark.parametrize("seed", range(6))
def test_an_updated_join_is_the_join_of_the_new_set_over_sequences_of_changes(seed):
    """Runs after one another (images added, removed, moved to a new row order, classes
    emptied or new), each join updated from the last one's: every image's nearest image of
    another class is the brute force's, its value to 1e-5 and its partner one of equal
    value, from 0 images on."""
    from dedup_assets.core.decision.cross_class import (
        nearest_other_class,
        update_nearest_other,
        update_share,
    )

    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 8))
    ids = np.zeros(0, np.int64)
    v, labels = np.zeros((0, d), np.float32), np.zeros(0, np.int64)
    nearest = nearest_other_class(v, labels)
    next_id = 0
    for step in range(12):
        keep = rng.random(len(ids)) > rng.choice([0.0, 0.05, 0.5, 1.0])
        add = int(rng.choice([0, 1, 2, 7, 60]))
        new_v = _unit(rng.standard_normal((add, d)) + (step % 3 == 0))
        new_labels = rng.integers(0, int(rng.integers(1, 5)), add)
        if step % 4 == 1 and add:
            new_v[0] = v[0] if len(v) else new_v[0]  # an exact copy: ties
        order = rng.permutation(int(keep.sum()) + add)
        was = np.concatenate([np.flatnonzero(keep), -np.ones(add, np.int64)])[order]
        ids = np.concatenate([ids[keep], np.arange(next_id, next_id + add)])[order]
        next_id += add
        v = np.concatenate([v[keep], new_v])[order]
        labels = np.concatenate([labels[keep], new_labels])[order]
        share = update_share(was, nearest)
        assert share >= 0 and (share == 0) == (add == 0 and _holds(was, nearest))
        nearest = update_nearest_other(v, labels, was, nearest, block=int(rng.integers(1, 40)))
        best, _ = _brute_nearest(v, labels)
        np.testing.assert_allclose(nearest.similarity, best, atol=1e-5)
        has = nearest.partner >= 0
        np.testing.assert_array_equal(has, np.isfinite(best))
        assert (labels[nearest.partner[has]] != labels[has]).all()
        np.testing.assert_allclose(
            (v[has] * v[nearest.partner[has]]).sum(axis=1), best[has], atol=1e-5
        )


def _holds(was: np.ndarray, nearest) -> bool:
    """Every kept image's partner is kept too (nothing to compute again)."""
    kept = was[was >= 0]
    partners = nearest.partner[kept]
    return bool(np.isin(partners[partners >= 0], kept).all())


def test_an_update_computes_only_the_new_rows_and_those_whose_partner_left():
    """Its products: new x N, orphaned x N and kept x new; nothing changed, none."""
    from dedup_assets.core.decision.cross_class import (
        nearest_other_class,
        update_nearest_other,
        update_share,
    )

    rng = np.random.default_rng(0)
    v = _unit(rng.standard_normal((1000, 8)))
    labels = np.repeat(np.arange(10), 100)
    before = nearest_other_class(v, labels)
    assert update_share(np.arange(1000), before) == 0
    again = update_nearest_other(v, labels, np.arange(1000), before)
    np.testing.assert_array_equal(again.partner, before.partner)
    np.testing.assert_array_equal(again.similarity, before.similarity)
    # 10 new images: 10 x 1,010 + 1,000 x 10 products of a full join's 1,010^2 / 2.
    grown = np.concatenate([v, _unit(rng.standard_normal((10, 8)))])
    was = np.r_[np.arange(1000), -np.ones(10, np.int64)]
    assert update_share(was, before) == pytest.approx((10 * 1010 + 1000 * 10) / (1010**2 / 2))
    grown_labels = np.r_[labels, np.arange(10)]
    updated = update_nearest_other(grown, grown_labels, was, before)
    np.testing.assert_allclose(
        updated.similarity, _brute_nearest(grown, grown_labels)[0], atol=1e-5
    )
    # An image gone: those whose partner it was are compared with every image again.
    orphans = int((before.partner == 0).sum())
    share = update_share(np.r_[-1, np.arange(1, 1000)], before)
    assert share == pytest.approx(((1 + orphans) * 1000 + (999 - orphans) * 1) / (1000**2 / 2))
    # Against the approximate join's n x nprobe x cell products (here every image: n^2).
    assert update_share(was, before, "ann", 4) == pytest.approx(
        (10 * 1010 + 1000 * 10) / (1010 * 1010)
    )


def test_the_join_state_is_stored_read_back_and_replaced_whole(tmp_path, monkeypatch):
    """The state reads back (its vectors in chunks, any rows in any order); another key,
    a missing vectors file or a broken state file reads as none; an interrupted save leaves
    the previous state; a new one leaves one vectors file."""
    from dedup_assets.core.decision import cross_class_state as state_module
    from dedup_assets.core.decision.cross_class import NearestOther, SharedSpace
    from dedup_assets.core.decision.cross_class_state import (
        load_join_state,
        previous_rows,
        save_join_state,
    )

    monkeypatch.setattr(state_module, "ROWS_READ", 7)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((50, 4)).astype(np.float32)
    ids = np.array([f"c{i % 3}-img{i}" for i in range(50)], dtype=np.bytes_)
    space = SharedSpace(np.ones(16, np.float32), rng.standard_normal((16, 4)).astype(np.float32))
    nearest = NearestOther(np.arange(50)[::-1].copy(), rng.random(50).astype(np.float32))
    save_join_state(tmp_path, "k1", space, ids, v, nearest, fitted_on=50)
    state = load_join_state(tmp_path, "k1")
    assert state is not None and state.width == 4 and state.fitted_on == 50
    np.testing.assert_array_equal(state.space.axes, space.axes)
    np.testing.assert_array_equal(state.nearest.partner, nearest.partner)
    rows = rng.permutation(50)[:33]
    out = np.zeros((40, 4), np.float32)
    state.vectors_at(rows, out, np.arange(7, 40))
    np.testing.assert_array_equal(out[7:], v[rows])
    assert not out[:7].any()
    # Another process saves a new state meanwhile (a threshold partition beside this one):
    # the vectors file of this one is removed, and this one still reads its own.
    save_join_state(tmp_path, "k1", space, ids[::-1], v[::-1], nearest, fitted_on=50)
    assert not Path(state.vectors.name).exists()
    again = np.zeros((50, 4), np.float32)
    state.vectors_at(np.arange(50), again, np.arange(50))
    np.testing.assert_array_equal(again, v)
    state.close()
    newer = load_join_state(tmp_path, "k1")
    np.testing.assert_array_equal(newer.image_ids, ids[::-1])
    newer.close()
    assert load_join_state(tmp_path, "another key") is None
    assert load_join_state(tmp_path / "nowhere", "k1") is None

    def failing_save(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(state_module.np, "savez", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_join_state(tmp_path, "k2", space, ids[:3], v[:3], nearest, fitted_on=3)
    monkeypatch.undo()
    kept = load_join_state(tmp_path, "k1")
    assert kept is not None and len(kept.image_ids) == 50  # the previous state, whole
    kept.close()
    save_join_state(
        tmp_path,
        "k3",
        SharedSpace(np.zeros(4, np.float32), None),
        ids[:2],
        v[:2],
        NearestOther(nearest.partner[:2], nearest.similarity[:2]),
        fitted_on=2,
    )
    last = load_join_state(tmp_path, "k3")
    assert last.space.axes is None
    last.close()
    assert len(list(tmp_path.glob(state_module.VECTORS_GLOB))) == 1
    (tmp_path / state_module.STATE_NAME).write_bytes(b"not a state")
    assert load_join_state(tmp_path, "k3") is None
    np.testing.assert_array_equal(
        previous_rows(np.array([b"c1-img4", b"new", b"c0-img0"]), ids), [4, -1, 0]
    )
    assert previous_rows(np.array([b"x"]), np.zeros(0, np.bytes_)).tolist() == [-1]
    assert previous_rows(np.zeros(0, np.bytes_), ids).tolist() == []


@pytest.mark.parametrize(
    ("fitted_on", "images", "outgrown"),
    [
        (20_000, 27_270, False),  # a full-size sample serves any size
        (20_000, 1_000_000, False),
        (30, 37, False),  # within 1.25x
        (30, 38, True),
        (30, 10_030, True),  # the 30 images of a first run, then 10,000 more
        (0, 1, False),
        (1, 2, True),
        (15_000, 20_001, True),
    ],
)
def test_a_kept_space_serves_until_the_images_outgrow_its_sample(fitted_on, images, outgrown):
    from dedup_assets.core.decision.cross_class_state import space_outgrown

    assert space_outgrown(fitted_on, images) is outgrown


def test_a_join_on_a_space_fitted_on_too_few_images_fits_it_again(tmp_path):
    """The asset's join keeps a stored space while the images have not outgrown it, and
    fits a new one (saying why) when they have; under `--full` it reads no stored state."""
    from dedup_assets.assets.cross_class import _Join
    from dedup_assets.core.decision.cross_class import NearestOther, SharedSpace
    from dedup_assets.core.decision.cross_class_state import save_join_state

    layout = OutputLayout(tmp_path)
    rng = np.random.default_rng(1)
    ids = np.array([b"%08d" % i for i in range(200)])
    v = rng.standard_normal((30, 4)).astype(np.float32)
    space = SharedSpace(np.zeros(16, np.float32), rng.standard_normal((16, 4)).astype(np.float32))
    near = NearestOther(np.zeros(30, np.int64), np.zeros(30, np.float32))
    save_join_state(layout.cross_class_dir, "key", space, ids[:30], v, near, fitted_on=30)

    def join(n: int, full: bool = False) -> _Join:
        return _Join(
            layout, [], [n], ids[:n], np.zeros(n, np.int32), None, "exact",
            state_key="key", full=full,
        )  # fmt: skip

    kept = join(37)
    assert kept.state is not None and kept.refit == ""
    kept.state.close()
    grown = join(200)
    assert grown.state is None and "200 images against the 30" in grown.refit
    assert join(30, full=True).state is None


def test_nearest_pairs_stored_before_a_full_run_are_not_its_own(monkeypatch):
    """The stored nearest pairs' key: the same for the same latents and settings, another
    under `--full` (even with the same latents), the same within one `--full` command."""
    from types import SimpleNamespace

    from dedup_assets.assets.cross_class import _nearest_key
    from dedup_assets.names import FULL_TAG, HOST_TAG, PID_TAG

    settings = SimpleNamespace(seed=0, ann_nprobe=8)
    classes = {"a": "digest-a", "b": "digest-b"}
    plain = _nearest_key(classes, settings, "exact", {}, "run-1")
    assert plain == _nearest_key(classes, settings, "exact", {}, "run-2")
    assert plain != _nearest_key({**classes, "b": "other"}, settings, "exact", {}, "run-1")
    command = {FULL_TAG: "1", PID_TAG: "4242", HOST_TAG: "host"}
    full = _nearest_key(classes, settings, "exact", command, "run-1")
    assert full != plain
    assert full == _nearest_key(classes, settings, "exact", command, "run-2")
    assert full != _nearest_key(classes, settings, "exact", {**command, PID_TAG: "7"}, "run-1")
    ann = _nearest_key(classes, settings, "ann", {}, "r")
    assert ann != plain
    # A result of another version of the approximate join is not this one's, in the stored
    # pairs' key and in the join state's.
    from dedup_assets.assets import cross_class as asset

    current = SimpleNamespace(model_digest="m")
    state = asset._state_key(current, settings, "ann")
    assert asset._state_key(current, settings, "exact") != state
    monkeypatch.setattr(asset, "APPROXIMATE_JOIN", "cells-another")
    assert _nearest_key(classes, settings, "ann", {}, "r") != ann
    assert asset._state_key(current, settings, "ann") != state
    assert _nearest_key(classes, settings, "exact", {}, "r") == plain


@pytest.mark.parametrize("rows", [3, 5, 40, 3000])
def test_shared_axes_are_the_samples_leading_principal_axes(rows):
    """The fitted axes are orthonormal and span the sample's leading principal axes (those
    of an exact SVD), for a sample smaller than the range finder's width and a large one."""
    from dedup_assets.core.decision.cross_class import SharedSpace

    rng = np.random.default_rng(rows)
    d, k = 32, 6
    scales = np.r_[np.geomspace(50, 5, k), np.full(d - k, 0.5)].astype(np.float32)
    x = (rng.standard_normal((rows, d)) * scales + 3).astype(np.float32)
    space = SharedSpace.fit(x, n_components=k)
    want = min(k, rows, d)
    assert space.axes.shape == (d, want)
    np.testing.assert_allclose(space.axes.T @ space.axes, np.eye(want), atol=1e-5)
    np.testing.assert_allclose(space.mean, x.mean(axis=0), rtol=1e-5, atol=1e-5)
    _, _, vt = np.linalg.svd((x - x.mean(axis=0)).astype(np.float64), full_matrices=False)
    top = min(want, rows - 1)  # a centred sample of n rows has rank n - 1 at most
    # Cosines of the principal angles between the two subspaces: all 1.
    cosines = np.linalg.svd(vt[:top] @ space.axes.astype(np.float64), compute_uv=False)
    assert cosines.min() > 0.999


@pytest.mark.parametrize("blas", [1, 2])
def test_the_join_and_the_null_give_the_same_bits_on_any_threads_whatever_blas_has(blas):
    """One thread or several, the same bits, with BLAS free to use one or two threads of its
    own: a join asked for one thread ran its products on BLAS's threads and gave other last
    bits than on two (the partners equal, some cosines one ulp apart)."""
    from threadpoolctl import threadpool_limits

    from dedup_assets.core.decision.calibration import nearest_decoy_similarity
    from dedup_assets.core.decision.cross_class import nearest_other_class

    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(300), rng.integers(1, 7, 300))
    v = _unit(rng.standard_normal((len(labels), 16)))
    decoys = _unit(rng.standard_normal((len(labels), 16)))
    with threadpool_limits(limits=blas, user_api="blas"):
        joins = [nearest_other_class(v, labels, block=64, threads=t) for t in (1, 2, 3)]
        nulls = [nearest_decoy_similarity(v, decoys, 16, own=False, threads=t) for t in (1, 2, 3)]
    for other in joins[1:]:
        np.testing.assert_array_equal(other.partner, joins[0].partner)
        np.testing.assert_array_equal(other.similarity, joins[0].similarity)
    for other in nulls[1:]:
        np.testing.assert_array_equal(other, nulls[0])
