"""Kept clean over time: the new-data sensor, the schedules, incremental and stable runs."""

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageEnhance

from dedup_assets.config import PipelineConfig
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.decision.class_decision import PriorDecision, keep_decisions
from dedup_assets.core.decision.class_keep import load_class_data
from dedup_assets.core.decision.dct_descriptor import lowfreq_dct
from dedup_assets.core.model.retraining import decide_retraining
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.definitions import build_definitions
from dedup_assets.runner import run_pipeline

T = "0.95"


def _add_variants(folder, n: int, prefix: str = "new") -> list[str]:
    """n new images: brightened versions of existing ones (new files, same look)."""
    sources = sorted(folder.glob("*.png"))[:n]
    names = []
    for i, path in enumerate(sources):
        with Image.open(path) as img:
            out = ImageEnhance.Brightness(img.convert("RGB")).enhance(1.3 + 0.02 * i)
        name = f"{prefix}_{i:02d}.png"
        out.save(folder / name)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    base = tmp_path_factory.mktemp("incremental")
    source = base / "src"
    generate_demo_dataset(source, seed=5, per_class=20, duplicate_fraction=0.2)
    for extra in ("desert", "road", "urban"):
        shutil.rmtree(source / extra)
    config = PipelineConfig.build(
        source=str(source),
        output=str(base / "out"),
        thresholds=T,
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "n_components": 8},
    )
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    return {
        "source": source,
        "config": config,
        "instance": instance,
        "layout": OutputLayout(base / "out"),
    }


def _sensor_tick(defs, instance, config, cursor=None):
    sensor = defs.get_repository_def().get_sensor_def("new_images_sensor")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=config.resources()
    ) as context:
        result = sensor(context)  # the sensor as the daemon calls it, result unprocessed
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result)
    return result


def _latest(instance, asset: str, partition: str):
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return record[0].storage_id if record else None


def test_sensor_requests_the_changed_class_only_and_the_run_encodes_only_new_images(
    materialized,
):
    instance, layout = materialized["instance"], materialized["layout"]
    defs = build_definitions(materialized["config"])
    first = _sensor_tick(defs, instance, materialized["config"])
    assert not first.run_requests and "nothing changed" in first.skip_reason.skip_message
    keep_path = layout.class_keep_list(T, "forest")
    before = pl.read_parquet(keep_path)
    untouched = {k: _latest(instance, "class_latents", k) for k in ("farmland", "water")}
    water_keep = layout.class_keep_list(T, "water").read_bytes()

    added = _add_variants(materialized["source"] / "forest", 10)
    tick = _sensor_tick(defs, instance, materialized["config"])
    assert [(r.job_name, r.partition_key) for r in tick.run_requests] == [
        ("update_class_job", "forest")
    ]
    request = tick.run_requests[0]
    run = defs.resolve_job_def("update_class_job").execute_in_process(
        partition_key=request.partition_key, instance=instance, tags=request.tags
    )
    assert run.success
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in run.get_asset_materialization_events()
    }
    assert meta["class_images"]["read_and_decoded"].value == 10
    assert meta["class_latents"]["encoded"].value == 10
    assert meta["class_latents"]["reused"].value == before.height
    after = pl.read_parquet(keep_path)
    assert after.height == before.height + 10
    assert set(after.filter(pl.col("path").str.contains("/new_"))["path"]) == {
        f"forest/{n}" for n in added
    }
    old = before.select("image_id", "kept", "duplicate_of", "decided_in")
    assert (
        after.join(old, on="image_id", how="semi")
        .sort("image_id")
        .select(old.columns)
        .equals(old.sort("image_id"))
    ), "decisions about the images that were already there must not change"
    new_rows = after.filter(pl.col("path").str.contains("/new_"))
    assert (new_rows["decided_in"] == run.run_id).all()
    assert {k: _latest(instance, "class_latents", k) for k in untouched} == untouched
    assert layout.class_keep_list(T, "water").read_bytes() == water_keep

    again = _sensor_tick(defs, instance, materialized["config"], cursor=tick.cursor)
    assert not again.run_requests and "nothing changed" in again.skip_reason.skip_message


def test_sensor_turns_a_new_class_folder_into_a_partition(materialized, tmp_path):
    instance = materialized["instance"]
    defs = build_definitions(materialized["config"])
    new_class = materialized["source"] / "orchard"
    new_class.mkdir()
    try:
        _add_variants(materialized["source"] / "water", 3, prefix="orchard")
        for path in sorted((materialized["source"] / "water").glob("orchard_*.png")):
            path.rename(new_class / path.name)
        tick = _sensor_tick(defs, instance, materialized["config"])
        jobs = [(r.job_name, r.partition_key) for r in tick.run_requests]
        assert ("update_class_job", "orchard") in jobs and ("index_job", None) in jobs
        added = [r for r in tick.dynamic_partitions_requests if r.partition_keys == ["orchard"]]
        assert added and added[0].partitions_def_name == "image_class"
    finally:
        shutil.rmtree(new_class)


def test_schedules_bring_changed_classes_up_to_date(materialized):
    defs = build_definitions(materialized["config"])
    repository = defs.get_repository_def()
    refresh = repository.get_schedule_def("nightly_refresh")
    assert refresh.cron_schedule == "0 2 * * *"
    registered = materialized["instance"].get_dynamic_partitions("image_class")
    # A schedule reads the partitions' order from a persistent instance, as the daemon's is.
    # The context is closed inside the instance's block: an unclosed one enters its own
    # instance and leaves Dagster's current defs-state storage pointing at a disposed one
    # when it is garbage-collected later, which breaks every later `Definitions` load.
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance,
            resources=materialized["config"].resources(),
            scheduled_execution_time=datetime(2026, 11, 28, 2, 0, tzinfo=UTC),
        ) as context,
    ):
        instance.add_dynamic_partitions("image_class", registered)
        _add_variants(materialized["source"] / "water", 2, prefix="late")
        requests = refresh(context)
        assert [(r.job_name, r.partition_key) for r in requests] == [("update_class_job", "water")]
        later = [
            materialized["source"] / folder / name
            for folder in registered  # every class changed: one run covers them all
            for name in _add_variants(materialized["source"] / folder, 1, prefix="later")
        ]
        try:
            requests = refresh(context)
            assert len(requests) == 1 and requests[0].partition_key is None, requests
            assert requests[0].tags["dagster/asset_partition_range_start"] == registered[0]
            assert requests[0].tags["dagster/asset_partition_range_end"] == registered[-1]
        finally:
            for path in later:
                path.unlink()
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    )
    retraining = repository.get_schedule_def("nightly_retraining")
    request = retraining(context)
    assert (
        isinstance(request, dg.RunRequest) and request.run_key == "train@2026-11-28T02:00:00+00:00"
    )
    assert retraining.job_name == "train_job"


def test_retraining_rules():
    kept = decide_retraining(
        model_exists=True,
        forced=False,
        n_images=1000,
        n_new=100,
        new_error=0.011,
        trained_error=0.01,
    )
    assert not kept.retrain and kept.reason.startswith("model kept: 100 new images (10.0% < 25%)")
    share = decide_retraining(
        model_exists=True,
        forced=False,
        n_images=1000,
        n_new=250,
        new_error=0.01,
        trained_error=0.01,
    )
    assert share.retrain and "25.0%) are new since training, >= 25%" in share.reason
    error = decide_retraining(
        model_exists=True, forced=False, n_images=1000, n_new=10, new_error=0.02, trained_error=0.01
    )
    assert error.retrain and "2.00x the training error, > 1.5x" in error.reason
    assert (
        decide_retraining(
            model_exists=False,
            forced=False,
            n_images=5,
            n_new=5,
            new_error=None,
            trained_error=None,
        ).reason
        == "no trained model yet"
    )
    forced = decide_retraining(
        model_exists=True, forced=True, n_images=5, n_new=0, new_error=None, trained_error=0.1
    )
    assert forced.retrain and "--retrain" in forced.reason
    same = dict(model_exists=True, forced=False, n_images=9, n_new=0, new_error=None)
    other = decide_retraining(
        **same, trained_error=0.1, trained_objective="plain", objective="invariant"
    )
    assert other.retrain and "trained with the plain objective" in other.reason
    assert "for invariant" in other.reason
    unchanged = decide_retraining(
        **same, trained_error=0.1, trained_objective="invariant", objective="invariant"
    )
    assert not unchanged.retrain


def _unit(rows):
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_stable_decisions_keep_what_was_kept_and_decide_new_images_against_it():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(6, 8))
    vectors = _unit(base)
    hashes = np.array([f"h{i}" for i in range(6)])
    first = keep_decisions(vectors, np.arange(6), hashes, [0.9])[0]
    assert first.kept.all()
    # New: a near copy of image 2, an exact copy of image 4, a distinct image.
    near = base[2] + 0.01 * rng.normal(size=8)
    grown = _unit(np.vstack([base, near, base[4], rng.normal(size=8)]))
    hashes2 = np.concatenate([hashes, ["n", "h4", "d"]])
    prior = PriorDecision.none(9)
    prior.state[:6] = 1
    # Put the new images first in visit order: earlier decisions must still win.
    order = np.array([6, 7, 8, 0, 1, 2, 3, 4, 5])
    d = keep_decisions(grown, order, hashes2, [0.9], prior=[prior])[0]
    assert d.kept[:6].all(), "an image kept before stays kept"
    assert not d.kept[6] and d.duplicate_of[6] == 2 and not d.exact[6]
    assert not d.kept[7] and d.duplicate_of[7] == 4 and d.exact[7] and d.similarity[7] == 1.0
    assert d.kept[8]
    assert d.carried.tolist() == [True] * 6 + [False] * 3


def test_a_new_copy_of_a_removed_image_carries_the_cosine_that_image_was_judged_at():
    """A byte-identical copy of an image removed earlier follows it (name, similarity):
    it must also carry the cosine that similarity passed, not the class's threshold now.
    Before, a class whose budget moved to 1.0 (too few null values after new images)
    recorded the copy's 0.9999 against 1.0, and the keep list failed its own integrity
    gate on every later run."""
    vectors = _unit([[1, 0, 0], [1, 0.01, 0], [0, 1, 0], [1, 0.01, 0]])
    hashes = np.array(["a", "b", "c", "b"])  # image 3: a new copy of image 1
    prior = PriorDecision.none(4)
    prior.state[:3] = [1, 0, 1]
    prior.duplicate_of[1] = 0
    prior.similarity[1] = float(vectors[0] @ vectors[1])
    prior.cosine[:3] = [0.95, 0.95, 0.95]
    d = keep_decisions(vectors, np.arange(4), hashes, [1.0], prior=[prior])[0]
    assert d.kept.tolist() == [True, False, True, False]
    assert d.duplicate_of[3] == 0 and d.similarity[3] == pytest.approx(d.similarity[1])
    assert d.cosine[3] == 0.95 and d.similarity[3] > d.cosine[3]


def test_a_carried_decision_keeps_its_similarity_to_the_last_bit():
    """A class decided again with every decision carried (a UI class run) wrote a carried
    row's similarity through float32 (0.9815578609704971 became 0.9815578460693359), so its
    keep list differed from the one `dedup run` left, decisions unchanged."""
    vectors = _unit([[1, 0, 0], [1, 0.2, 0]])
    prior = PriorDecision.none(2)
    prior.state[:] = [1, 0]
    prior.duplicate_of[1] = 0
    prior.similarity[1] = 0.9815578609704971
    prior.cosine[:] = [0.95, 0.95]
    d = keep_decisions(vectors, np.arange(2), np.array(["a", "b"]), [0.95], prior=[prior])[0]
    assert d.similarity[1] == 0.9815578609704971 and d.carried.all()


def test_an_image_whose_kept_twin_is_deleted_is_decided_again():
    vectors = _unit([[1, 0, 0], [1, 0.01, 0], [0, 1, 0]])
    prior = PriorDecision.none(3)
    prior.state[:] = [-1, 0, 1]  # image 0 is new; image 1 was removed as a copy of a deleted one
    prior.duplicate_of[1] = -1
    d = keep_decisions(vectors, np.arange(3), np.array(["a", "b", "c"]), [0.9], prior=[prior])[0]
    assert d.kept.tolist() == [True, False, True] and d.duplicate_of[1] == 0
    assert not d.carried[1]


MERGED = "images, latents, spline fits, keep decisions"


def test_cli_run_after_new_images_touches_only_their_class(materialized, monkeypatch):
    from dedup_assets.core.decision import class_keep

    # Classes this small compute their DCT descriptors each time, storing none ...
    assert not list(materialized["layout"].root.glob("latents/*.dct.npz"))
    monkeypatch.setattr(class_keep, "DCT_STORE_MIN_IMAGES", 0)  # ... unless told to here
    instance = materialized["instance"]
    _add_variants(materialized["source"] / "farmland", 4, prefix="cli")
    lines: list[str] = []
    outcome = run_pipeline(materialized["config"], instance, log=lines.append)
    # Every stage ran (the kurtosis gate's verdict on four new images is not the point here).
    assert outcome.failures == [] and outcome.skipped == []
    runs = {s.name: s.runs for s in outcome.stages}
    assert "farmland" in outcome.changes and "farmland" in outcome.updated
    # The model is kept without a training run, and the updated classes are decoded and
    # processed in one run per range of them (no run of their own for decoding).
    assert outcome.training.startswith("model kept")
    assert runs["training: model kept, no run"] == 0
    assert 1 <= runs["images, latents, spline fits, keep decisions"] <= len(outcome.updated)
    assert not any(name.startswith(("images", "classes")) and name != MERGED for name in runs)
    # One more image: the cross-class join of the last run is updated, not computed again.
    _add_variants(materialized["source"] / "farmland", 1, prefix="cli_more")
    assert run_pipeline(materialized["config"], instance, log=lines.append).failures == []
    _assert_cross_class_join_updated(instance, materialized["layout"])
    _assert_stored_descriptors_are_the_computed_ones(materialized["layout"], "farmland")
    again = run_pipeline(materialized["config"], instance, log=lines.append)
    assert again.nothing_changed and again.stages == []


def _assert_stored_descriptors_are_the_computed_ones(layout, key: str) -> None:
    """The class's stored DCT descriptors, read by the update's keep decisions in place of
    its pixels, are those of its images now, exactly as computed from their pixels."""
    _, data = load_class_data(
        layout, key, space="spline_copula_dct", dct_store=layout.class_dct(key)
    )
    assert data.pixels is None and data.descriptors is not None
    _, with_pixels = load_class_data(layout, key, with_pixels=True)
    np.testing.assert_array_equal(data.descriptors["dct"], lowfreq_dct(with_pixels.pixels))
    with np.load(layout.class_dct(key)) as stored:
        assert sorted(stored["pixel_hashes"].tolist()) == sorted(set(data.pixel_hashes))


def _assert_cross_class_join_updated(instance, layout) -> None:
    """The last cross-class run updated the join it stored (the new images against every
    image, the others against the new) and the stored answer is the brute force's over the
    stored vectors: every image's nearest image of another class."""
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("cross_class_duplicates")), limit=1
    ).records[0]
    how = record.asset_materialization.metadata["nearest"].value
    assert how.startswith("updated ("), how
    folder = layout.cross_class_dir
    with np.load(folder / ".join_state.npz") as state:
        ids, partner = state["image_ids"], state["partner"]
        similarity, token = state["similarity"], str(state["token"])
    v = np.load(folder / f".join_vectors-{token}.npy")
    classes = np.array([i[:8] for i in ids])  # the class part of each row's id
    sims = np.where(classes[:, None] != classes[None, :], v @ v.T, -np.inf)
    np.testing.assert_allclose(similarity, sims.max(axis=1), atol=1e-5)
    np.testing.assert_allclose(sims[np.arange(len(v)), partner], similarity, atol=1e-5)
    assert len(list(folder.glob(".join_vectors-*.npy"))) == 1


def test_a_model_copied_in_is_kept_without_reconstructing_anything(tmp_path, monkeypatch):
    """A model with no record of its training (copied into a new output) is kept, and
    decided before any image is reconstructed: without a training error there is nothing
    to compare the new images' error with (measured: 3 s of a 27,000-image first run)."""
    from dedup_assets.assets import autoencoder as asset
    from dedup_assets.core.model.autoencoder import ConvAutoencoder, save_state
    from resources import ComputeDevice, DedupSettings

    layout = OutputLayout(tmp_path)
    layout.model.parent.mkdir(parents=True)
    save_state(ConvAutoencoder(), layout.model)
    images = pl.DataFrame({"class_key": ["a"] * 3, "image_id": ["x", "y", "z"]})

    def no_reconstruction(*args, **kwargs):
        raise AssertionError("reconstructed images for a decision that cannot use them")

    monkeypatch.setattr(asset, "reconstruct", no_reconstruction)
    monkeypatch.setattr(asset, "reconstruction_errors", no_reconstruction)
    monkeypatch.setattr(
        asset, "gather_pixels", lambda layout, frame: np.zeros((frame.height, 64, 64, 3), np.uint8)
    )
    settings, compute = DedupSettings(), ComputeDevice(device="cpu")
    kept = asset.retraining_decision(layout, images, settings, compute, forced=False)
    assert not kept.retrain and "no record of its training" in kept.reason
    # With a record (its training log and images), new images are reconstructed and compared
    # (none of them has an error stored by a class run here).
    layout.training_log.write_text('{"final_reconstruction_mse": 0.01, "objective": "plain"}')
    pl.DataFrame({"image_id": ["x"]}).write_parquet(layout.trained_images)
    with pytest.raises(AssertionError, match="reconstructed images"):
        asset.retraining_decision(layout, images, settings, compute, forced=False)


def test_a_run_lists_the_source_once_and_indexes_what_it_planned_from(materialized, monkeypatch):
    """`dedup run` lists the source once (its plan and its index job from one listing): a
    file added while the run is under way enters neither, and the next run takes it."""
    import resources.image_source as image_source

    real, calls = image_source.list_source, []
    source = materialized["source"] / "water"
    added = []

    def listing(*args, **kwargs):
        calls.append(args[0])
        found = real(*args, **kwargs)
        if not added:  # a file arrives right after the run's listing
            added.extend(_add_variants(source, 1, prefix="meanwhile"))
        return found

    # The listing is let go once the index holds it (its scan is 460 MB at a million images).
    import dedup_assets.runner as runner

    real_training, held = runner._training, []

    def training(*args, **kwargs):
        held.append(len(image_source._SNAPSHOT.listings))
        return real_training(*args, **kwargs)

    _add_variants(materialized["source"] / "farmland", 1, prefix="planned")  # a run to do
    monkeypatch.setattr(image_source, "list_source", listing)
    monkeypatch.setattr(runner, "_training", training)
    outcome = run_pipeline(materialized["config"], materialized["instance"], log=lambda _: None)
    assert outcome.failures == [] and "farmland" in outcome.updated and len(calls) == 1
    assert held == [0]
    index = pl.read_parquet(materialized["layout"].index)
    water = index.filter(pl.col("class_key") == "water")["files"].item()
    monkeypatch.undo()
    later = run_pipeline(materialized["config"], materialized["instance"], log=lambda _: None)
    assert "water" in later.updated
    assert (
        pl.read_parquet(materialized["layout"].index)
        .filter(pl.col("class_key") == "water")["files"]
        .item()
        == water + 1
    )


def test_keep_decisions_refuse_latents_of_images_the_catalog_lacks(materialized):
    """A class's latents are decided only against its catalog: an image with no pixel hash
    there (quarantined since) or not there at all makes the latents stale, whatever the
    rest; the catalog as stored decides."""
    from dedup_assets.core.data.artifacts import StaleArtifact, catalog_class_keys, read_catalog

    layout = materialized["layout"]
    key = next(k for k in catalog_class_keys(layout) if k != "farmland")  # others add there
    catalog = read_catalog(layout, [key])
    table, data = load_class_data(layout, key, catalog=catalog)
    assert len(data.image_ids) == table.height > 2
    first = data.image_ids[0]
    without_hash = catalog.with_columns(
        pl.when(pl.col("image_id") == first)
        .then(None)
        .otherwise(pl.col("pixel_hash"))
        .alias("pixel_hash")
    )
    without_image = catalog.filter(pl.col("image_id") != first)
    for broken in (without_hash, without_image):
        with pytest.raises(StaleArtifact, match="the catalog does not hold"):
            load_class_data(layout, key, catalog=broken)


def _water_and_farmland(tmp_path, seed: int, per_class: int, duplicates: float) -> Path:
    """A small demo source of two classes (water, farmland) under tmp_path/src."""
    source = tmp_path / "src"
    generate_demo_dataset(source, seed=seed, per_class=per_class, duplicate_fraction=duplicates)
    for extra in ("desert", "road", "urban", "forest"):
        shutil.rmtree(source / extra)
    return source


def _small_config(source: Path, output: Path, thresholds: str) -> PipelineConfig:
    """One epoch on the CPU, 8 components: the settings of this file's own runs."""
    return PipelineConfig.build(
        source=str(source),
        output=str(output),
        thresholds=thresholds,
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "n_components": 8},
    )


def test_a_keep_list_held_back_by_its_integrity_gate_leaves_a_summary_of_the_rest(
    tmp_path, monkeypatch
):
    """When `keep_list_integrity` fails for one threshold its kurtosis report is never made:
    the summary across thresholds covers the others and names the one held back. Before,
    it raised "the kurtosis report for T is stale" and every later run failed (exit 1)
    instead of reporting a held-back clean copy (exit 3)."""
    from dedup_assets.assets import keep_list

    source = _water_and_farmland(tmp_path, seed=3, per_class=12, duplicates=0.2)
    config = _small_config(source, tmp_path / "out", "0.9,0.95")
    real = keep_list.keep_list_problems

    def failing_at_095(keep, catalog, threshold, *args, **kwargs):
        found = real(keep, catalog, threshold, *args, **kwargs)
        return [*found, "a planted problem"] if threshold == 0.95 else found

    monkeypatch.setattr(keep_list, "keep_list_problems", failing_at_095)
    for _ in range(2):  # the run that makes the keep list, then a rerun
        outcome = run_pipeline(config, dg.DagsterInstance.ephemeral(), log=lambda _: None)
        assert outcome.failures == [], outcome.failures
    layout = OutputLayout(tmp_path / "out")
    summary = layout.summary.read_text()
    assert "## Thresholds held back" in summary and "T=0.95: no report" in summary
    assert "a planted problem" in summary and "0.9" in summary
    assert (layout.clean_dir("0.9") / "water").is_dir()


def test_a_clean_copy_held_back_by_the_kurtosis_gate_is_named_in_the_summary(tmp_path, monkeypatch):
    """The summary names every threshold whose clean copy a gate held back: the kurtosis
    gate's too, not only the keep list's integrity check."""
    from dedup_assets.core.quality import kurtosis_report, statistics

    source = _water_and_farmland(tmp_path, seed=3, per_class=12, duplicates=0.2)
    config = _small_config(source, tmp_path / "out", "0.9,0.95")
    real = statistics.kurtosis_gate

    def failing(before, after, tolerance=0.0, chance=None):
        gate = real(before, after, tolerance, chance)
        return statistics.KurtosisGate("error", gate.regressions, ("PC1: planted",))

    monkeypatch.setattr(kurtosis_report, "kurtosis_gate", failing)
    outcome = run_pipeline(config, dg.DagsterInstance.ephemeral(), log=lambda _: None)
    assert outcome.failures == [], outcome.failures
    summary = OutputLayout(tmp_path / "out").summary.read_text()
    assert "## Thresholds held back" in summary
    for t in ("0.9", "0.95"):
        assert f"- T={t}: its kurtosis gate failed (see " in summary


def test_a_new_copy_that_sorts_first_does_not_take_over_its_original_s_decision(tmp_path):
    """Decisions are carried by image id (content hash, -2, -3... for byte-identical files).
    Ids were given in path order, so a new exact copy whose name sorts before its original
    took the original's id and its kept decision (with the first run's time), and the
    unchanged original was removed as its copy. Ids now stay with the files that had them."""
    source = _water_and_farmland(tmp_path, seed=4, per_class=10, duplicates=0.0)
    config = _small_config(source, tmp_path / "out", T)
    instance = dg.DagsterInstance.ephemeral()
    assert run_pipeline(config, instance, log=lambda _: None).failures == []
    layout = OutputLayout(tmp_path / "out")
    first = pl.read_parquet(layout.keep_list(T))
    original = first.filter(pl.col("kept") & (pl.col("class") == "water"))["path"].sort()[-1]
    shutil.copyfile(source / original, source / "water" / "AAA_copy.png")
    assert run_pipeline(config, instance, log=lambda _: None).failures == []
    now = pl.read_parquet(layout.keep_list(T))
    before = first.filter(pl.col("path") == original).row(0, named=True)
    after = now.filter(pl.col("path") == original).row(0, named=True)
    assert after["kept"] and after["image_id"] == before["image_id"]
    assert after["decided_at"] == before["decided_at"]
    copy = now.filter(pl.col("path") == "water/AAA_copy.png").row(0, named=True)
    assert not copy["kept"] and copy["match"] == "exact"
    assert copy["duplicate_of"] == before["image_id"]
    unchanged = first.filter(pl.col("path") != original).select("path", "image_id", "kept")
    assert (
        now.join(unchanged, on="path")
        .filter(
            (pl.col("image_id") != pl.col("image_id_right"))
            | (pl.col("kept") != pl.col("kept_right"))
        )
        .is_empty()
    )


def test_an_output_of_a_threshold_spelled_otherwise_is_renamed_and_its_decisions_carried(
    tmp_path, monkeypatch
):
    """An output made before thresholds had one spelling holds `0.950/` (keep lists, clean
    copy, reports). The same command after the upgrade asks for `0.95`: the output's files
    are renamed and every decision carried, not made again beside the old ones (which were
    then marked not updated although the user gave that very threshold)."""
    from dedup_assets import config as config_module

    source = _water_and_farmland(tmp_path, seed=6, per_class=12, duplicates=0.3)

    def build():
        return _small_config(source, tmp_path / "out", "0.950")

    with monkeypatch.context() as m:  # the code before: thresholds kept as written
        m.setattr(config_module, "canonical_key", lambda key: key.strip())
        old = build()
        assert old.thresholds == ("0.950",)
        assert run_pipeline(old, dg.DagsterInstance.ephemeral(), log=lambda _: None).ok
    layout = OutputLayout(tmp_path / "out")
    before = pl.read_parquet(layout.keep_list("0.950"))
    assert (~before["kept"]).sum() > 0 and (layout.clean_dir("0.950") / "water").is_dir()
    lines: list[str] = []
    new = build()
    assert new.thresholds == ("0.95",)
    outcome = run_pipeline(new, dg.DagsterInstance.ephemeral(), log=lines.append)
    assert outcome.failures == [] and outcome.unlisted_clean == []
    assert "T=0.950 is now spelled 0.95: its keep lists, reports and clean copy renamed" in lines
    assert not any(p.exists() for p in layout.threshold_paths("0.950"))
    after = pl.read_parquet(layout.keep_list("0.95"))
    joined = after.join(before, on="path", suffix="_before")
    assert joined.height == before.height == after.height
    assert (joined["kept"] == joined["kept_before"]).all()
    assert (joined["decided_in"] == joined["decided_in_before"]).all()  # carried, not redone
    assert (layout.clean_dir("0.95") / "water").is_dir()
