"""A run with new images and a stored model (`runner._run_stages`): the classes decoded and
processed in one run each, the model kept without a training run (its decision recorded
on the asset), and a retraining rule that fires after all retrains and redoes every class."""

import json
import shutil

import dagster as dg
import polars as pl
import pytest

from dedup_assets.config import PipelineConfig, current_inputs
from dedup_assets.core.data.artifacts import file_digest, stale_classes
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.runner import instance_for, run_pipeline

T = "0.95"
MERGED = "images, latents, spline fits, keep decisions"
CLASSES = "classes: latents, spline fits, keep decisions"


def _two_classes(source):
    """The demo dataset's farmland and forest, 12 images each (with planted copies)."""
    generate_demo_dataset(source, seed=11, per_class=12, duplicate_fraction=0.2)
    for extra in ("desert", "road", "urban", "water"):
        shutil.rmtree(source / extra)
    return source


@pytest.fixture
def first(tmp_path):
    """A finished first run on two small classes, in memory."""
    source = _two_classes(tmp_path / "src")
    config = _config(source, tmp_path / "out")
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    return source, config, instance, OutputLayout(tmp_path / "out")


def _config(source, output, **method) -> PipelineConfig:
    return PipelineConfig.build(
        source=str(source),
        output=str(output),
        thresholds=T,
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "n_components": 8, **method},
    )


def _exact_copy(source, cls: str, name: str, original=None) -> str:
    original = original or sorted((source / cls).glob("*.png"))[0]
    shutil.copyfile(original, source / cls / name)
    return f"{cls}/{original.name}"


def _runs(outcome) -> dict[str, int]:
    return {s.name: s.runs for s in outcome.stages}


def test_a_kept_model_is_decided_without_a_run_and_recorded_on_the_asset(first, monkeypatch):
    """The model kept without a training run, its decision on the asset; the class run
    stored the reconstruction error of its image new since training (with the model's
    digest), which the error rule then reads instead of reconstructing it again."""
    import numpy as np

    from dedup_assets.assets import autoencoder as asset
    from dedup_assets.core.data.artifacts import catalog_images, read_catalog
    from dedup_assets.core.model.autoencoder import load_state, reconstruction_errors
    from dedup_assets.core.model.new_image_errors import errors_key, read_new_image_errors

    source, config, instance, layout = first
    config = _config(source, layout.root, retrain_error_factor=1e6)
    model = file_digest(layout.model)
    assert not layout.new_image_errors("forest").exists()  # all trained on: nothing new
    original = _exact_copy(source, "forest", "zz copy [1].png")
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    assert _runs(outcome) == {
        "catalog: indexed, no run": 0,
        MERGED: 1,  # the one class with a new image, decoded and processed in one run
        "training: model kept, no run": 0,
        "thresholds: keep lists, gates, reports, clean copies": 1,
        "summary, evaluation, review page": 1,
    }
    assert outcome.training.startswith("model kept: 1 new images")
    assert file_digest(layout.model) == model
    assert len(instance.get_runs(dg.RunsFilter(job_name="train_job"))) == 1  # the first run's
    latest = instance.fetch_observations(dg.AssetKey("autoencoder"), limit=1).records[0]
    assert latest.run_id == ""  # a decision of `dedup run`, not of a run
    assert latest.asset_observation.metadata["decision"].value == outcome.training
    assert latest.asset_observation.metadata["new_images"].value == 1
    # The copy was found in that run.
    keep = (layout.keep_list(T).with_suffix(".csv")).read_text()
    row = next(line for line in keep.splitlines() if "zz copy [1].png" in line)
    assert ",false," in row.lower() and original in row
    assert not stale_classes(layout, current_inputs(config), [T])
    stored = read_new_image_errors(layout.new_image_errors("forest"), errors_key(model))
    assert not layout.new_image_errors("farmland").exists()
    new = catalog_images(read_catalog(layout)).filter(pl.col("path").str.contains("zz copy"))
    assert list(stored) == new["image_id"].to_list()
    pixels = np.load(layout.class_pixels("forest"), mmap_mode="r")[new["row"].to_numpy()]
    again = reconstruction_errors(load_state(layout.model), pixels, amp_dtype=None)
    assert stored[new["image_id"][0]] == pytest.approx(float(again[0]), rel=1e-6)

    def refuse(*args, **kwargs):
        raise AssertionError("the rule reconstructed an image whose error is stored")

    monkeypatch.setattr(asset, "reconstruction_errors", refuse)
    resources = config.resources()
    decision = asset.decide_for_run(layout, resources["settings"], resources["compute"])
    assert decision is not None and not decision.retrain and decision.new_images == 1
    assert decision.error_ratio == pytest.approx(
        float(again[0]) / json.loads(layout.training_log.read_text())["final_reconstruction_mse"],
        rel=1e-6,
    )


def test_an_indexed_output_is_indexed_again_without_a_run(first, monkeypatch):
    """An output indexed before is indexed in the command's process: the catalog written,
    a class folder that went and one that came registered, and the asset's materialization
    reported without a run, with the metadata and data version its run would record. An
    index that fails there is made in a run, which says why."""
    from dedup_assets.assets import catalog
    from dedup_assets.core.data.artifacts import digest, recorded_listings
    from dedup_assets.partitions import class_partitions

    source, config, instance, layout = first
    runs = len(instance.get_runs(dg.RunsFilter(job_name="index_job")))
    (source / "farmland").rename(source / "farm land")  # one class gone, one new
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    assert _runs(outcome)["catalog: indexed, no run"] == 0
    assert len(instance.get_runs(dg.RunsFilter(job_name="index_job"))) == runs
    assert not layout.latents("farmland").exists()
    record = instance.fetch_materializations(dg.AssetKey("image_catalog"), limit=1).records[0]
    assert record.run_id == ""
    listings = recorded_listings(layout)
    assert sorted(listings) == ["farm%20land", "forest"]  # keys: the folder names, quoted
    assert sorted(instance.get_dynamic_partitions(class_partitions.name)) == sorted(listings)
    meta = record.asset_materialization.metadata
    files = sum(len(list((source / c).iterdir())) for c in ("farm land", "forest"))
    assert meta["classes"].value == 2 and meta["image_files"].value == files
    assert meta["listing_digests"].value == listings
    assert record.asset_materialization.tags["dagster/data_version"] == digest(listings)
    kept = pl.read_parquet(layout.keep_list(T))
    assert kept["class"].unique().sort().to_list() == [
        "farm land",
        "forest",
    ]

    def broken(*args, **kwargs):
        raise OSError("the disk is gone")

    monkeypatch.setattr(catalog, "write_parquet", broken)
    shutil.copyfile(sorted((source / "forest").glob("*.png"))[0], source / "forest" / "zz.png")
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert not outcome.ok
    assert _runs(outcome) == {"catalog": 1}  # the run, which failed and said why
    assert any("the disk is gone" in f for f in outcome.failures), outcome.failures
    assert len(instance.get_runs(dg.RunsFilter(job_name="index_job"))) == runs + 1


def test_stored_errors_only_for_training_images_and_never_a_failed_class(first, monkeypatch):
    """Evaluation classes (a split's val/test) store no errors, the rule never samples them;
    a failure storing them costs the class nothing: its latents stand, the rule
    reconstructs."""
    import numpy as np

    from dedup_assets.assets import latents as latents_asset
    from dedup_assets.assets.latents import _ClassEncoder
    from dedup_assets.core.model.new_image_errors import update_new_image_errors

    source, config, instance, layout = first
    encoder = _ClassEncoder(layout=layout, device="cpu", amp_dtype=None, full=False)
    stale = layout.new_image_errors("test.forest")
    update_new_image_errors(stale, "m", ["a"], lambda ids: [1.0])
    images = pl.DataFrame({"image_id": ["a"], "row": [0]})
    assert encoder._new_errors("test.forest", images, np.zeros((1, 1024), np.float32)) == 0
    assert not stale.exists()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(latents_asset, "update_new_image_errors", broken)
    config = _config(source, layout.root, retrain_error_factor=1e6)
    _exact_copy(source, "forest", "zz copy [1].png")
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    assert not layout.new_image_errors("forest").exists()
    assert outcome.training.startswith("model kept: 1 new images"), outcome.training


def test_a_rule_that_fires_after_the_merged_run_retrains_and_redoes_every_class(first):
    """A new image the model reconstructs far worse than its training images (noise): the
    error rule, which needs the image decoded, fires after the merged run; the model is
    trained again and every class runs again with it."""
    import numpy as np
    from PIL import Image

    source, config, instance, layout = first
    config = _config(source, layout.root, retrain_error_factor=1.05)  # one epoch: 1.29x
    model = file_digest(layout.model)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(source / "forest" / "noise.png")
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    runs = _runs(outcome)
    assert outcome.training.startswith("retrained: the new images' reconstruction error"), (
        outcome.training
    )
    assert runs[MERGED] == 1 and runs["training"] == 1 and runs[CLASSES] >= 1, runs
    assert file_digest(layout.model) != model
    assert sorted(outcome.classes) == ["farmland", "forest"]
    # Every class is current for the new model: none was left with the old one's latents.
    assert not stale_classes(layout, current_inputs(config), [T])


def test_a_share_of_new_images_that_retrains_is_not_merged(first):
    """Enough new files to pass the share rule (here 1%): the model is retrained before any
    class is processed, so no class runs twice."""
    source, config, instance, layout = first
    config = _config(source, layout.root, retrain_new_share=0.01)  # 1 new of 31: 3.2%
    _exact_copy(source, "forest", "copy.png")
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    runs = _runs(outcome)
    assert MERGED not in runs and runs["images"] == 1 and runs["training"] == 1, runs
    assert runs[CLASSES] >= 1
    assert outcome.training.startswith("retrained: 1 of ") and ">= 1%" in outcome.training
    assert not stale_classes(layout, current_inputs(config), [T])


def test_retrain_and_full_never_take_the_merged_path(first):
    source, config, instance, layout = first
    _exact_copy(source, "forest", "copy.png")
    outcome = run_pipeline(config, instance, retrain=True, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    runs = _runs(outcome)
    assert MERGED not in runs and runs["images"] == 1 and runs["training"] == 1
    assert outcome.training.startswith("retrained: retraining was asked for")


def _fit_said(instance, key: str) -> str:
    """What the newest materialization of `key`'s spline fit says of its fit."""
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("spline_fits"), asset_partitions=[key]),
        limit=1,
    ).records[0]
    return record.asset_materialization.metadata["fit"].value


def test_a_class_s_fit_is_kept_for_a_few_new_images_then_refitted(first):
    """One new image in a class of 14 (7%): its stored fit is kept (the same components and
    splines, still on the images it was fitted on) and the new image is decided in it; two
    more (21% since the fit) refit it; `--full` refits every class."""
    import numpy as np

    from dedup_assets.core.density.class_density import ClassDensityModel, read_fit_basis

    source, config, instance, layout = first
    config = _config(source, layout.root, retrain_error_factor=1e6)
    fitted = read_fit_basis(layout.spline_fit("forest"))
    before = ClassDensityModel.load(layout.spline_fit("forest"))
    assert fitted is not None and _fit_said(instance, "forest").startswith("fitted now on")
    # A copy of the class's likeliest image: a new image like those fitted (the fit is kept).
    scores = pl.read_parquet(layout.spline_scores("forest"))
    likeliest = scores.sort("log_density", descending=True)["path"][0]
    _exact_copy(source, "forest", "zz copy [1].png", source / likeliest)
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    after = ClassDensityModel.load(layout.spline_fit("forest"))
    np.testing.assert_array_equal(after.pca.components, before.pca.components)
    np.testing.assert_array_equal(
        after.density.to_arrays()["freqs"], before.density.to_arrays()["freqs"]
    )
    kept = read_fit_basis(layout.spline_fit("forest"))
    np.testing.assert_array_equal(kept.image_ids, fitted.image_ids)
    n = len(fitted.image_ids)
    assert _fit_said(instance, "forest") == (
        f"kept: fitted on {n:,} images, {1 / n:.1%} of them added or removed since "
        f"(refitted beyond 10%); {n + 1:,} now"
    )
    keep = (layout.keep_list(T).with_suffix(".csv")).read_text()
    assert ",false," in next(r for r in keep.splitlines() if "zz copy [1].png" in r).lower()
    assert not stale_classes(layout, current_inputs(config), [T])

    for name in ("zz copy [2].png", "zz copy [3].png"):
        _exact_copy(source, "forest", name, source / likeliest)
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    assert _fit_said(instance, "forest") == f"fitted now on {n + 3:,} images"
    assert len(read_fit_basis(layout.spline_fit("forest")).image_ids) == n + 3

    # New images unlike the class (noise), few enough for the share: refitted all the same.
    from PIL import Image

    stripes = np.zeros((64, 64, 3), dtype=np.uint8)
    stripes[::2] = 255  # nothing like a forest
    Image.fromarray(stripes).save(source / "forest" / "zz stripes.png")
    outcome = run_pipeline(config, instance, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    assert _fit_said(instance, "forest") == (
        f"fitted now on {n + 4:,} images (100% of the new images less likely under the stored "
        "fit than 99% of the images it was fitted on)"
    )

    # --full refits a fit that would be kept, with the same model and images.
    from dedup_assets.assets.spline_fits import _fit_class
    from dedup_assets.core.data.artifacts import CurrentInputs

    settings = config.resources()["settings"]
    current = CurrentInputs.of(layout, settings)
    said = {
        full: _fit_class(
            lambda _: None, layout, "forest", settings, current, draw=False, full=full
        ).metadata["fit"]
        for full in (False, True)
    }
    assert said[False].startswith("kept:") and said[True] == f"fitted now on {n + 4:,} images"

    _exact_copy(source, "farmland", "zz copy [1].png")  # 1 of farmland's: would be kept
    outcome = run_pipeline(config, instance, full=True, log=lambda _: None)
    assert outcome.ok, (outcome.failures, outcome.skipped)
    assert _fit_said(instance, "farmland").startswith("fitted now on")
    assert _fit_said(instance, "forest").startswith("fitted now on")


def test_a_file_digest_kept_for_its_stat_sees_every_rewrite(tmp_path):
    """`file_digest` answers from its process's memory while the file's stat is the same;
    a rewrite in place of the same size with its modification time set back is still seen
    (its change time moved), and so is a new file renamed over it."""
    import os
    import time

    path = tmp_path / "model.pt"
    path.write_bytes(b"a" * 1000)
    first = file_digest(path)
    assert file_digest(path) == first
    before = os.stat(path)
    time.sleep(0.01)
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    second = file_digest(path)
    assert second != first
    other = tmp_path / "other.pt"
    other.write_bytes(b"a" * 1000)
    os.replace(other, path)
    assert file_digest(path) == first


def _first_run(tmp_path, executor: str):
    """A first run on two small classes at two thresholds, the instance on disk (workers
    record their runs in it)."""
    config = PipelineConfig.build(
        source=str(_two_classes(tmp_path / "src")),
        output=str(tmp_path / "out"),
        thresholds="0.9,0.95",
        device="cpu",
        precision="fp32",
        executor=executor,
        method={"epochs": 1, "n_components": 8},
        **({"parallel": 2} if executor == "processes" else {}),
    )
    instance = instance_for(tmp_path / "out")
    try:
        return run_pipeline(config, instance, log=lambda _: None)
    finally:
        instance.dispose()


@pytest.mark.parametrize("executor", ["in_process", "processes"])
def test_a_blocking_gate_holds_back_the_clean_copy_with_either_executor(
    tmp_path, monkeypatch, executor
):
    """With workers the clean copies run apart from their thresholds' gates (and the summary
    beside them): a gate that blocks still holds its copy back, as Dagster does in the one
    run of the in-process executor, and nothing else changes: no failure, the summary made."""
    from dedup_assets.core.quality import kurtosis_report, statistics

    def blocked(*args, **kwargs):
        gate = statistics.kurtosis_gate(*args, **kwargs)
        return statistics.KurtosisGate("error", gate.regressions, ("forced by the test",))

    monkeypatch.setattr(kurtosis_report, "kurtosis_gate", blocked)  # in forked workers too
    outcome = _first_run(tmp_path, executor)
    assert outcome.failures == [] and outcome.skipped == []
    assert {c.asset for c in outcome.check_failures} == {"kurtosis_report"}
    blocked = {c.partition for c in outcome.check_failures}
    # The first threshold runs in this process, patched; with workers the other runs in a
    # worker process that was not: one held back, one made, each as its gate said.
    assert blocked == ({"0.9"} if executor == "processes" else {"0.9", "0.95"})
    layout = OutputLayout(tmp_path / "out")
    for t in ("0.9", "0.95"):
        assert layout.clean_dir(t).exists() == (t not in blocked), t
        assert layout.keep_list(t).exists()
    assert outcome.summary_written


def test_an_override_of_an_image_deleted_since_is_refused_as_before(first):
    """The merged run decides with the overrides; one naming an image the user deleted since
    (a new image beside it, so its class changes) is refused with its file and line
    (ConfigError, exit 2), as when decoding ran alone, not reported as a failed stage."""
    import csv

    from dedup_assets.config import ConfigError

    source, config, instance, layout = first
    victim = sorted((source / "forest").glob("*.png"))[-1]
    with open(layout.overrides, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "decision", "other"])
        writer.writerow([f"forest/{victim.name}", "remove", ""])
    assert run_pipeline(config, instance, log=lambda _: None).ok
    victim.unlink()
    _exact_copy(source, "forest", "zz copy.png")
    with pytest.raises(ConfigError, match=r"overrides\.csv, line 2: .* is no image of the"):
        run_pipeline(config, instance, log=lambda _: None)


@pytest.mark.parametrize("executor", ["in_process", "processes"])
def test_a_failed_clean_copy_fails_the_run_but_not_the_summary(tmp_path, monkeypatch, executor):
    """The summary reads no clean copy: with either executor a clean copy that fails (here
    the first threshold's, made in this process) is a failure of the run, and the summary
    and review page are made all the same."""
    from dedup_assets.assets import clean_dataset

    def broken(*args, **kwargs):
        raise OSError("no space left on the device (the test)")

    monkeypatch.setattr(clean_dataset, "write_clean_copy", broken)
    outcome = _first_run(tmp_path, executor)
    assert any("clean_dataset: OSError: no space left" in f for f in outcome.failures)
    assert outcome.skipped == [] and outcome.summary_written
    assert not OutputLayout(tmp_path / "out").clean_dir("0.9").exists()


def test_only_a_failed_cross_class_table_lets_a_threshold_s_clean_copy_be_made():
    """`_Stages.failed_only`: the steps that failed in a key's runs, against those allowed;
    a run that failed outside its steps allows nothing."""
    from dedup_assets.dispatch import RunReport
    from dedup_assets.runner import CROSS_CLASS_STEPS, PipelineOutcome, _Stages

    stages = object.__new__(_Stages)
    stages.outcome, stages.failed_steps, stages.log = PipelineOutcome(output=None), {}, print
    join = RunReport(failures=["T [0.9]: cross_class_duplicates: MemoryError"])
    join.failed_steps = ["cross_class_duplicates"]
    keep = RunReport(failures=["T [0.95]: keep_list: OSError"], failed_steps=["keep_list"])
    outside = RunReport(failures=["T [2%]: the run failed before or between its steps"])
    assert stages._record("T", ["0.9", "0.95", "2%"], [join, keep, outside], 3) == [
        "0.9",
        "0.95",
        "2%",
    ]
    assert stages.failed_only("0.9", CROSS_CLASS_STEPS)
    assert not stages.failed_only("0.95", CROSS_CLASS_STEPS)
    assert not stages.failed_only("2%", CROSS_CLASS_STEPS)
    assert stages.failed_only("0.97", CROSS_CLASS_STEPS)  # nothing failed


def test_the_pairs_picture_is_drawn_again_only_when_what_it_shows_changed(first, monkeypatch):
    """The keep list's picture of removed pairs: the stored one when the pairs, their
    similarities as drawn and the note are those it was drawn from; drawn again otherwise."""
    from dedup_assets.assets import keep_list as keep_list_asset
    from dedup_assets.core.data.artifacts import catalog_images, read_catalog, read_keep_list
    from dedup_assets.core.quality import plots

    _, _, _, layout = first
    stored = layout.duplicate_pairs_image(T)
    keep = read_keep_list(layout.keep_list(T))
    catalog = catalog_images(read_catalog(layout))
    assert plots.pairs_stamp(stored)  # drawn by the run, stamped
    drawn = []
    real = plots.duplicate_pairs
    monkeypatch.setattr(plots, "duplicate_pairs", lambda *a: drawn.append(a) or real(*a))
    same = keep_list_asset._pairs_picture(layout, T, keep, catalog, "density")
    assert same == stored.read_bytes() and drawn == []
    moved = keep.with_columns(
        pl.when(~pl.col("kept")).then(pl.col("similarity") - 0.01).otherwise(pl.col("similarity"))
    )
    again = keep_list_asset._pairs_picture(layout, T, moved, catalog, "density")
    assert len(drawn) == 1 and again != same
    assert keep_list_asset._pairs_picture(layout, T, keep, catalog, "first") != same
    assert len(drawn) == 2  # another note: drawn again
