"""Many classes in one `dedup run`: ranges of classes, not a run per class.

Tiny images (one 16 px image per class folder), one threshold; the point is what a class
costs the orchestration. The suite runs five thousand classes in runs of 1,000 (the SQLite
limits of a persistent instance are why a run covers at most `MAX_CLASSES_PER_RUN` classes;
see partitions.py) the way `dedup run` does: an instance on disk and two worker processes.
Measured alone on 2 cores (2026-12-04): 272.9 s before a range's check verdicts were
written in one batch (`event_storage.py`), 113.4 s after, with training on a budget of 512
images. DEDUP_MANY_CLASSES=N runs N classes instead (below AUTO_MIN_CLASSES: in process
with an instance in memory, in runs of at most 120)."""

import os

import dagster as dg
import numpy as np
import polars as pl
from PIL import Image

from dedup_assets import partitions
from dedup_assets.config import PipelineConfig
from dedup_assets.core.data.artifacts import open_pixels, read_latents
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.model.autoencoder import encode_images, load_state
from dedup_assets.engines import AUTO_MIN_CLASSES
from dedup_assets.partitions import MAX_CLASSES_PER_RUN
from dedup_assets.runner import instance_for, run_pipeline

CLASSES = int(os.environ.get("DEDUP_MANY_CLASSES", "5000"))
PER_RUN = MAX_CLASSES_PER_RUN if CLASSES >= 5 * MAX_CLASSES_PER_RUN else 120


def test_many_classes_in_one_run(tmp_path, monkeypatch):
    monkeypatch.setattr(partitions, "MAX_CLASSES_PER_RUN", PER_RUN)
    source = tmp_path / "source"
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (CLASSES, 4, 4, 3), dtype=np.uint8)
    for i in range(CLASSES):
        folder = source / f"c{i:05d}"
        folder.mkdir(parents=True)
        Image.fromarray(colours[i]).resize((16, 16)).save(folder / "a.png")
    config = PipelineConfig.build(
        source=str(source),
        output=str(tmp_path / "out"),
        thresholds=["0.95"],
        device="cpu",
        precision="fp32",
        # Training is not what a class costs: automatic epochs on a budget of 512 images.
        method={
            "epochs": 0,
            "training_images": 512,
            "batch_size": 256,
            "n_components": 4,
            "kurtosis_tolerance": 1.0,
        },
    )
    if CLASSES >= AUTO_MIN_CLASSES:
        # `dedup run`'s way: an instance on disk, shared by the workers that many classes
        # take (`engines.AUTO_MIN_CLASSES`), however few their images.
        monkeypatch.delenv("DAGSTER_HOME", raising=False)  # set for this test by instance_for
        instance = instance_for(tmp_path / "out")
        expected = f"processes, 2 at once ({CLASSES:,} classes, at most 1 a class)"
    else:  # the suite's: in memory (29.5 s against 36.3 s on disk, one run each), in process
        instance = dg.DagsterInstance.ephemeral()
        expected = "in_process (an instance in memory)"
    lines: list[str] = []
    outcome = run_pipeline(config, instance, log=lines.append)
    assert outcome.failures == [] and outcome.skipped == [], outcome.failures
    assert lines[0] == f"executor auto: {expected}", lines[:3]
    runs = {s.name.split(":")[0]: s.runs for s in outcome.stages}
    batches = -(-CLASSES // PER_RUN)
    assert runs["images"] == runs["classes"] == batches, runs
    keys = instance.get_dynamic_partitions("image_class")
    assert len(keys) == CLASSES
    for asset in ("class_images", "class_latents", "spline_fits", "class_keep_lists"):
        assert len(instance.get_materialized_partitions(dg.AssetKey(asset))) == CLASSES, asset
    verdicts = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("class_latents"), "latents_valid"), limit=CLASSES + 1
    )
    assert len(verdicts) == CLASSES and {v.status.value for v in verdicts} == {"SUCCEEDED"}
    # The classes' single images were encoded together (`assets.latents.GROUP_IMAGES`), each
    # class's latents the bits of its image encoded alone, and each class says so.
    layout = OutputLayout(tmp_path / "out")
    model = load_state(layout.model)
    for key in (keys[0], keys[len(keys) // 2], keys[-1]):
        _, stored = read_latents(layout.latents(key))
        assert np.array_equal(stored, encode_images(model, np.asarray(open_pixels(layout, key))))
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("class_latents"), asset_partitions=[keys[1]]),
        limit=1,
    ).records
    log = records[0].asset_materialization.metadata["log"].value
    assert "in one batch" in log, log
    keep = pl.read_parquet(layout.keep_list("0.95"))
    assert keep.height == CLASSES and keep["kept"].all()  # one image a class: nothing to remove
    # A rerun with nothing new does nothing.
    again = run_pipeline(config, instance, log=lines.append)
    assert again.nothing_changed and again.stages == []
