"""A small in-process materialization of the whole graph on a tiny demo dataset."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from dedup_assets.config import PipelineConfig
from dedup_assets.core.data.artifacts import KEEP_LIST_COLUMNS, read_catalog
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.core.quality.planting import read_ground_truth
from dedup_assets.definitions import build_definitions
from dedup_assets.names import CODE_LOCATION, UI_REPOSITORY_LABEL, UI_REPOSITORY_TAG
from dedup_assets.runner import run_pipeline

THRESHOLDS = ("0.93", "0.95", "0.97")


def _tree_digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    source = base / "source"
    generate_demo_dataset(source, seed=3, per_class=16, duplicate_fraction=0.25)
    before = _tree_digest(source)
    config = PipelineConfig.build(
        source=str(source),
        output=str(base / "out"),
        thresholds=THRESHOLDS,
        device="cpu",
        precision="fp32",
        # Six classes of 20 images: the kurtosis gate's verdict there is chance (it blocks
        # random removal in up to 5% of thresholds by design, tested in test_statistics,
        # and which draws it gets depends on the CPU's float rounding), so the plumbing
        # runs with a wide tolerance; the gate's wiring is tested with a forced verdict.
        method={"epochs": 2, "batch_size": 32, "n_components": 8, "kurtosis_tolerance": 1.0},
    )
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(config, instance, log=lambda _: None)
    return {
        "source": source,
        "before": before,
        "config": config,
        "layout": OutputLayout(base / "out"),
        "outcome": outcome,
        "instance": instance,
    }


def test_definitions_load_every_asset_check_and_job(tmp_path):
    defs = build_definitions(PipelineConfig.build(output=str(tmp_path)))
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert names == {
        "image_catalog",
        "class_images",
        "autoencoder",
        "reference_pool",
        "class_latents",
        "spline_fits",
        "class_keep_lists",
        "keep_list",
        "cross_class_duplicates",
        "kurtosis_report",
        "dedup_summary",
        "clean_dataset",
        "dedup_evaluation",
        "review_page",
        "leakage",
    }
    checks = {k.name for k in graph.asset_check_keys}
    assert checks == {
        "latents_valid",
        "keep_list_integrity",
        "kurtosis_reduction",
        "no_cross_class_duplicates",
        "no_leak_val",  # one blocking leakage check per evaluation split name
        "no_leak_test",
    }
    jobs = {j.name for j in defs.resolve_all_job_defs()} - {"__ASSET_JOB"}
    assert jobs == {
        "index_job",
        "ingest_job",
        "train_job",
        "class_job",
        "update_class_job",
        "threshold_job",
        "summary_job",
    }
    repository = defs.get_repository_def()
    assert {s.name for s in repository.sensor_defs} == {"new_images_sensor", "dedup_automation"}
    assert {s.name for s in repository.schedule_defs} == {"nightly_refresh", "nightly_retraining"}


def test_whole_graph_materializes(tiny_run):
    outcome = tiny_run["outcome"]
    assert outcome.failures == []
    assert outcome.skipped == []
    assert outcome.check_failures == []
    assert len(outcome.classes) == 6
    # The six classes are decoded in one run and encoded, fitted and decided in another.
    assert [s.runs for s in outcome.stages] == [1, 1, 1, 1, len(THRESHOLDS), 1]
    assert outcome.training == "retrained: no trained model yet"
    saved = json.loads(tiny_run["layout"].pipeline_file.read_text())
    assert saved["thresholds"] == list(THRESHOLDS) and "device" not in saved


def test_the_reference_pool_is_drawn_only_for_a_budget(tiny_run, tmp_path):
    """Cosine thresholds alone read no reference pool: none is drawn (and none is
    materialized). The same output run again with a budget added draws it then, and
    decides the budget, while the cosine keep lists are kept as decided."""
    import shutil

    layout, instance = tiny_run["layout"], tiny_run["instance"]
    assert not layout.reference_pool.exists()
    assert not instance.fetch_materializations(dg.AssetKey("reference_pool"), limit=1).records
    out = tmp_path / "out"
    shutil.copytree(layout.root, out, ignore=shutil.ignore_patterns(".dagster"))
    before = {t: pl.read_parquet(OutputLayout(out).keep_list(t)) for t in THRESHOLDS}
    config = tiny_run["config"].model_copy(
        update={"output": str(out), "thresholds": (*THRESHOLDS, "5%")}
    )
    lines = []
    with dg.DagsterInstance.ephemeral() as again:
        outcome = run_pipeline(config, again, log=lines.append)
        assert outcome.failures == [] and outcome.skipped == []
        assert again.fetch_materializations(dg.AssetKey("reference_pool"), limit=1).records
    assert OutputLayout(out).reference_pool.is_file()
    assert not any("reference pool: not drawn" in line for line in lines)
    budget = pl.read_parquet(OutputLayout(out).keep_list("5%"))
    assert budget.height == before["0.95"].height
    for t in THRESHOLDS:  # the same decisions, made in the first run
        after = pl.read_parquet(OutputLayout(out).keep_list(t))
        assert after.select("path", "kept", "decided_in").equals(
            before[t].select("path", "kept", "decided_in")
        ), t


def test_every_class_partition_has_its_own_materialization_and_verdict(tiny_run):
    """One run for all classes, yet the instance (what the UI reads) holds one
    materialization per class with that class's own metadata, and one current
    latents_valid verdict per class aimed at it."""
    instance, layout = tiny_run["instance"], tiny_run["layout"]
    classes = tiny_run["outcome"].classes
    catalog = read_catalog(layout).filter(pl.col("status") == "ok")
    for asset in ("class_images", "class_latents", "spline_fits", "class_keep_lists"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(classes), asset
    check = dg.AssetCheckKey(dg.AssetKey("class_latents"), "latents_valid")
    history = instance.event_log_storage.get_asset_check_execution_history(check, limit=100)
    assert sorted(r.partition for r in history) == sorted(classes)
    for key in classes:
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("class_latents"), asset_partitions=[key]),
            limit=1,
        ).records[0]
        images = catalog.filter(pl.col("class_key") == key).height
        assert record.asset_materialization.metadata["images"].value == images
        verdict = next(r for r in history if r.partition == key)
        assert verdict.status.value == "SUCCEEDED"
        target = verdict.event.dagster_event.asset_check_evaluation_data.target_materialization_data
        assert target.storage_id == record.storage_id


def test_source_is_never_modified(tiny_run):
    assert _tree_digest(tiny_run["source"]) == tiny_run["before"]


def test_corrupt_file_quarantined_with_reason(tiny_run):
    catalog = read_catalog(tiny_run["layout"])
    bad = catalog.filter(pl.col("status") == "quarantined")
    assert bad["path"].to_list() == ["urban/broken.png"]
    assert "not a readable image" in bad["reason"][0]
    ok = catalog.filter(pl.col("status") == "ok")
    assert ok.height == catalog.height - 1
    # Only the class with something to say keeps a quarantine file of its own; the
    # dataset's list is its rows.
    layout = tiny_run["layout"]
    have = {k for k in tiny_run["outcome"].classes if layout.class_quarantine(k).exists()}
    assert have == {bad["class_key"][0]}
    listed = pl.read_csv(layout.quarantine)
    assert "urban/broken.png" in listed["path"].to_list()  # beside the root's own entries


def test_keep_lists_follow_the_contract(tiny_run):
    layout = tiny_run["layout"]
    catalog = read_catalog(layout).filter(pl.col("status") == "ok")
    for t in THRESHOLDS:
        keep = pl.read_parquet(layout.keep_list(t))
        assert tuple(keep.columns) == (*KEEP_LIST_COLUMNS, "duplicate_of_path")
        csv = pl.read_csv(layout.keep_list(t, "csv"))
        assert csv.height == keep.height and csv.columns == keep.columns
        path_of = dict(keep.select("image_id", "path").iter_rows())
        named = keep.filter(pl.col("duplicate_of").is_not_null())
        assert named.height and named["duplicate_of_path"].to_list() == [
            path_of[i] for i in named["duplicate_of"]
        ]
        assert keep["duplicate_of_path"].is_null().equals(keep["duplicate_of"].is_null())
        assert set(keep["match"].drop_nulls()) <= {"exact", "near"}
        assert keep.height == catalog.height
        removed = keep.filter(~pl.col("kept"))
        kept_ids = set(keep.filter(pl.col("kept"))["image_id"])
        assert set(removed["duplicate_of"]) <= kept_ids
        assert (removed["similarity"] > float(t)).all()
        assert keep.filter(pl.col("kept"))["duplicate_of"].null_count() == keep["kept"].sum()


def test_exact_duplicates_are_removed_at_every_threshold(tiny_run):
    layout = tiny_run["layout"]
    pairs = [
        p
        for p in read_ground_truth(tiny_run["source"] / "ground_truth.csv")
        if "__dup_exact" in p.copy
    ]
    assert pairs, "the demo plants byte-identical copies"
    for t in THRESHOLDS:
        keep = pl.read_parquet(layout.keep_list(t))
        by_path = {r["path"]: r for r in keep.iter_rows(named=True)}
        for p in pairs:
            a, b = by_path[f"{p.class_name}/{p.original}"], by_path[f"{p.class_name}/{p.copy}"]
            assert a["kept"] != b["kept"], f"exactly one of {p} survives at T={t}"
            removed, kept = (b, a) if a["kept"] else (a, b)
            assert removed["duplicate_of"] == kept["image_id"]
            assert removed["similarity"] == 1.0
            assert removed["match"] == "exact"


def test_clean_copy_holds_exactly_the_kept_images(tiny_run):
    layout = tiny_run["layout"]
    for t in THRESHOLDS:
        keep = pl.read_parquet(layout.keep_list(t))
        files = sorted(
            p.relative_to(layout.clean_dir(t)).as_posix()
            for p in layout.clean_dir(t).rglob("*")
            if p.is_file() and not p.name.startswith(".latent-dedup-clean")
        )
        assert files == sorted(keep.filter(pl.col("kept"))["path"].to_list())


def test_clean_copies_share_one_copy_of_each_file_and_never_the_source(tiny_run):
    """Every threshold's copy holds the source's bytes, so a file kept at several
    thresholds is copied once and hard-linked into the others; never linked to the source."""
    layout, source = tiny_run["layout"], tiny_run["source"]
    inodes: dict[str, set[int]] = {}
    for t in THRESHOLDS:
        for p in layout.clean_dir(t).rglob("*.png"):
            rel = p.relative_to(layout.clean_dir(t)).as_posix()
            assert p.read_bytes() == (source / rel).read_bytes()
            assert p.stat().st_ino != (source / rel).stat().st_ino
            inodes.setdefault(rel, set()).add(p.stat().st_ino)
    shared = [rel for rel, ino in inodes.items() if len(ino) == 1]
    assert len(shared) == len(inodes), "one inode per file, whatever the thresholds"
    assert any(
        len([t for t in THRESHOLDS if (layout.clean_dir(t) / rel).exists()]) == len(THRESHOLDS)
        for rel in inodes
    ), "some file is kept at every threshold"


def test_reports_and_summary_written(tiny_run):
    layout = tiny_run["layout"]
    for t in THRESHOLDS:
        report = (layout.report_dir(t) / "report.md").read_text()
        assert f"T = {t}" in report and "Theil-Sen" in report
        for c in (1, 2, 3):
            figure = (layout.report_dir(t) / f"kurtosis_pc{c}.svg").read_bytes()
            assert figure.startswith(b"<svg") and b'<path d="M' in figure  # the classes' points
    summary = (layout.root / "reports" / "summary.md").read_text()
    assert all(f"| {t} |" in summary for t in THRESHOLDS)


def test_the_review_page_is_made_and_linked_from_the_ui(tiny_run):
    """summary_job makes review/index.html; its materialization links to it (a URL the UI
    opens) and counts what it lists."""
    layout, instance = tiny_run["layout"], tiny_run["instance"]
    assert layout.review_index.is_file()
    record = instance.fetch_materializations(dg.AssetKey("review_page"), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert metadata["review_page"].value == layout.review_index.resolve().as_uri()
    removed = sum(int((~pl.read_parquet(layout.keep_list(t))["kept"]).sum()) for t in THRESHOLDS)
    assert metadata["removed_listed"].value == removed


def test_every_run_is_listed_under_its_job_in_the_ui(tiny_run):
    """The UI lists a job's runs by job name and the code location's label (a hidden tag);
    every run `dedup run` made carries the label of the location workspace.yaml and `dedup
    ui` load, so each named job's page shows its runs."""
    instance = tiny_run["instance"]
    workspace = yaml.safe_load((Path(__file__).parents[1] / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["location_name"] == CODE_LOCATION
    runs = instance.get_runs()
    assert runs and all(r.tags.get(UI_REPOSITORY_TAG) == UI_REPOSITORY_LABEL for r in runs)
    for job in ("index_job", "ingest_job", "train_job", "class_job", "threshold_job"):
        listed = dg.RunsFilter(job_name=job, tags={UI_REPOSITORY_TAG: UI_REPOSITORY_LABEL})
        assert instance.get_runs(filters=listed), job


def test_evaluation_scores_every_method(tiny_run):
    table = pl.read_csv(tiny_run["layout"].evaluation_dir / "evaluation.csv")
    methods = {"raw", "whitened", "spline_copula", "spline_copula_dct", "dct", "phash", "pdq"}
    assert set(table["method"]) == methods
    assert table.height == len(methods) * len(THRESHOLDS)
    assert table["average_precision"].is_between(0, 1).all()


def test_checks_recorded_per_partition(tiny_run):
    instance = tiny_run["instance"]
    for asset, check in [
        ("keep_list", "keep_list_integrity"),
        ("kurtosis_report", "kurtosis_reduction"),
    ]:
        records = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(asset), check), limit=10
        )
        assert sorted(r.partition for r in records) == sorted(THRESHOLDS)
    integrity = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("keep_list"), "keep_list_integrity"), limit=10
    )
    assert all(r.evaluation.passed for r in integrity)


def test_failing_kurtosis_gate_blocks_the_clean_copy(tiny_run, monkeypatch):
    """The wiring of the gate: an ERROR verdict of the kurtosis report stops clean_dataset
    and leaves the earlier copy as it was (the statistics are tested in test_statistics)."""
    from dedup_assets.core.quality import kurtosis_report
    from dedup_assets.core.quality.statistics import KurtosisGate

    real_gate = kurtosis_report.kurtosis_gate

    def failing_gate(*args, **kwargs):
        gate = real_gate(*args, **kwargs)
        return KurtosisGate("error", gate.regressions, ("PC1: forced to fail by the test",))

    monkeypatch.setattr(kurtosis_report, "kurtosis_gate", failing_gate)
    layout = tiny_run["layout"]
    t = THRESHOLDS[0]
    marker = layout.clean_dir(t) / "old_file.txt"
    marker.write_text("from the first run")
    job = build_definitions(tiny_run["config"]).resolve_job_def("threshold_job")
    result = job.execute_in_process(
        partition_key=t,
        instance=tiny_run["instance"],
        raise_on_error=False,
        asset_selection=[dg.AssetKey("kurtosis_report"), dg.AssetKey("clean_dataset")],
    )
    gate = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert gate["kurtosis_reduction"].passed is False
    assert gate["kurtosis_reduction"].severity == dg.AssetCheckSeverity.ERROR
    steps = {e.step_key for e in result.all_events if e.is_step_start}
    assert "kurtosis_report" in steps and "clean_dataset" not in steps
    assert marker.read_text() == "from the first run", "the blocked asset left it alone"
    marker.unlink()


def test_a_clean_copy_older_than_its_keep_list_is_marked_stale(tiny_run):
    layout = tiny_run["layout"]
    t = THRESHOLDS[1]
    manifest = layout.clean_manifest(t)
    original = manifest.read_text()
    manifest.write_text(json.dumps({"keep_list": "an-earlier-keep-list"}))
    job = build_definitions(tiny_run["config"]).resolve_job_def("threshold_job")
    run = job.execute_in_process(
        partition_key=t, instance=tiny_run["instance"], asset_selection=[dg.AssetKey("keep_list")]
    )
    assert run.success
    note = layout.clean_stale_note(t)
    assert note.is_file() and "STALE" in note.read_text()
    meta = run.get_asset_materialization_events()[0].materialization.metadata
    assert meta["clean_copy_stale"].value is True
    run = job.execute_in_process(
        partition_key=t,
        instance=tiny_run["instance"],
        asset_selection=[dg.AssetKey("kurtosis_report"), dg.AssetKey("clean_dataset")],
    )
    assert run.success
    assert not note.exists(), "a fresh clean copy has no stale note"
    assert json.loads(manifest.read_text())["keep_list"] == json.loads(original)["keep_list"]


def test_pixel_cache_never_trusts_a_store_out_of_step_with_its_table(tiny_run, tmp_path):
    """The old failure: a pixel store whose rows no longer matched its catalog gave images
    a neighbour's pixels. A class's store is reused only if it is the very store written
    with its table (digest recorded in the table); otherwise every image is decoded again."""
    import shutil

    import numpy as np

    layout = OutputLayout(tmp_path / "out")
    shutil.copytree(tiny_run["layout"].root, layout.root, ignore=shutil.ignore_patterns(".dagster"))
    store = layout.class_pixels("forest")
    pixels = np.load(store)
    np.save(store, np.roll(pixels, 1, axis=0))  # every row now holds a neighbour
    job = build_definitions(
        tiny_run["config"].model_copy(update={"output": str(layout.root)})
    ).resolve_job_def("ingest_job")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("image_class", ["forest"])
    run = job.execute_in_process(partition_key="forest", instance=instance)
    meta = run.get_asset_materialization_events()[0].materialization.metadata
    assert meta["unchanged"].value == 0 and meta["read_and_decoded"].value == len(pixels)
    np.testing.assert_array_equal(np.load(store), pixels)
    run = job.execute_in_process(partition_key="forest", instance=instance)
    meta = run.get_asset_materialization_events()[0].materialization.metadata
    assert meta["unchanged"].value == len(pixels) and meta["read_and_decoded"].value == 0


def test_an_edited_clean_file_is_copied_anew_not_linked(tiny_run):
    """A file someone edited in a clean copy (its size or mtime no longer the source's) is
    not linked into the next copy: that copy takes the source's bytes again."""
    import os

    layout, source = tiny_run["layout"], tiny_run["source"]
    t = THRESHOLDS[2]
    rel = sorted(p.relative_to(layout.clean_dir(t)) for p in layout.clean_dir(t).rglob("*.png"))[0]
    edited = layout.clean_dir(t) / rel
    os.unlink(edited)  # an in-place edit would reach the other thresholds' links too
    edited.write_bytes(b"edited by hand")
    job = build_definitions(tiny_run["config"]).resolve_job_def("threshold_job")
    run = job.execute_in_process(
        partition_key=t,
        instance=tiny_run["instance"],
        asset_selection=[dg.AssetKey("kurtosis_report"), dg.AssetKey("clean_dataset")],
    )
    assert run.success
    assert edited.read_bytes() == (source / rel).read_bytes()
    meta = run.get_asset_materialization_events()[-1].materialization.metadata
    # Every other file is linked from the earlier copies; the edited one from another
    # threshold's intact copy of the same bytes (never from the edited file or the source).
    assert meta["unchanged_linked"].value == meta["images"].value
    assert not edited.samefile(source / rel)
