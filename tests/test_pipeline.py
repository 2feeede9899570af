"""A small in-process materialization of the whole graph on a tiny demo dataset."""

import hashlib
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from dedup_assets.core.artifacts import KEEP_LIST_COLUMNS
from dedup_assets.core.demo_data import generate_demo_dataset
from dedup_assets.core.planting import read_ground_truth
from dedup_assets.definitions import ASSETS, CHECKS, build_resources, defs
from dedup_assets.partitions import THRESHOLDS
from dedup_assets.runner import run_pipeline
from resources import DedupSettings


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
    resources = build_resources(
        source=str(source),
        output=str(base / "out"),
        ground_truth="",
        device="cpu",
        precision="fp32",
        # The gate's tolerance is wide here: 16-image classes give noisy kurtosis; the gate
        # itself is exercised in test_failing_kurtosis_gate_blocks_the_clean_copy.
        settings=DedupSettings(epochs=2, batch_size=32, n_components=8, kurtosis_tolerance=50.0),
    )
    instance = dg.DagsterInstance.ephemeral()
    outcome = run_pipeline(resources, instance, log=lambda _: None, log_level="WARNING")
    return {
        "source": source,
        "before": before,
        "layout": resources["storage"].layout(),
        "outcome": outcome,
        "instance": instance,
    }


def test_definitions_load_every_asset_and_check():
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert names == {a.key.to_user_string() for a in ASSETS}
    assert len(names) == 10
    check_names = {k.name for c in CHECKS for k in c.check_keys}
    assert check_names == {"latents_valid", "keep_list_integrity", "kurtosis_reduction"}


def test_whole_graph_materializes(tiny_run):
    outcome = tiny_run["outcome"]
    assert outcome.failures == []
    assert outcome.check_failures == []
    assert len(outcome.classes) == 6
    assert [s.runs for s in outcome.stages] == [1, 6, 6 * len(THRESHOLDS), len(THRESHOLDS), 1]


def test_source_is_never_modified(tiny_run):
    assert _tree_digest(tiny_run["source"]) == tiny_run["before"]


def test_corrupt_file_quarantined_with_reason(tiny_run):
    catalog = pl.read_parquet(tiny_run["layout"].catalog)
    bad = catalog.filter(pl.col("status") == "quarantined")
    assert bad["path"].to_list() == ["urban/broken.png"]
    assert "not a readable image" in bad["reason"][0]
    ok = catalog.filter(pl.col("status") == "ok")
    assert ok.height == catalog.height - 1


def test_keep_lists_follow_the_contract(tiny_run):
    layout = tiny_run["layout"]
    catalog = pl.read_parquet(layout.catalog).filter(pl.col("status") == "ok")
    for t in THRESHOLDS:
        keep = pl.read_parquet(layout.keep_list(t))
        assert tuple(keep.columns) == KEEP_LIST_COLUMNS
        assert pl.read_csv(layout.keep_list(t, "csv")).height == keep.height
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
            assert removed["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_clean_copy_holds_exactly_the_kept_images(tiny_run):
    layout = tiny_run["layout"]
    for t in THRESHOLDS:
        keep = pl.read_parquet(layout.keep_list(t))
        files = sorted(
            p.relative_to(layout.clean_dir(t)).as_posix()
            for p in layout.clean_dir(t).rglob("*")
            if p.is_file()
        )
        assert files == sorted(keep.filter(pl.col("kept"))["path"].to_list())


def test_reports_and_summary_written(tiny_run):
    layout = tiny_run["layout"]
    for t in THRESHOLDS:
        report = (layout.report_dir(t) / "report.md").read_text()
        assert f"T = {t}" in report and "Theil-Sen" in report
        for c in (1, 2, 3):
            assert (layout.report_dir(t) / f"kurtosis_pc{c}.png").read_bytes()[:4] == b"\x89PNG"
    summary = (layout.root / "reports" / "summary.md").read_text()
    assert all(f"| {t} |" in summary for t in THRESHOLDS)


def test_evaluation_scores_every_method(tiny_run):
    table = pl.read_csv(tiny_run["layout"].evaluation_dir / "evaluation.csv")
    assert set(table["method"]) == {"raw", "whitened", "spline_copula", "phash"}
    assert table.height == 4 * len(THRESHOLDS)
    assert table["average_precision"].is_between(0, 1).all()


def test_checks_recorded_per_partition(tiny_run):
    instance = tiny_run["instance"]
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("keep_list"), "keep_list_integrity"), limit=10
    )
    assert len(records) == len(THRESHOLDS)
    assert all(r.evaluation.passed for r in records if r.evaluation is not None)


def test_failing_kurtosis_gate_blocks_the_clean_copy(tiny_run, tmp_path):
    """A crafted impossible tolerance makes the real gate fail: clean_dataset must not run."""
    layout = tiny_run["layout"]
    resources = build_resources(
        source=str(tiny_run["source"]),
        output=str(layout.root),
        ground_truth="",
        device="cpu",
        precision="fp32",
        settings=DedupSettings(epochs=2, batch_size=32, n_components=8, kurtosis_tolerance=-1000.0),
    )
    t = THRESHOLDS[0]
    marker = layout.clean_dir(t) / ".marker"
    marker.write_text("from the first run")
    by_name = {a.key.to_user_string(): a for a in ASSETS}
    result = dg.materialize(
        [*ASSETS, *CHECKS],
        selection=[by_name["keep_list"], by_name["clean_dataset"], *CHECKS[1:]],
        partition_key=t,
        resources=resources,
        instance=tiny_run["instance"],
        raise_on_error=False,
    )
    evaluations = {
        e.event_specific_data.check_name: e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert evaluations["kurtosis_reduction"].passed is False
    assert evaluations["kurtosis_reduction"].severity == dg.AssetCheckSeverity.ERROR
    assert evaluations["keep_list_integrity"].passed is True
    steps = {e.step_key for e in result.all_events if e.is_step_start}
    assert "clean_dataset" not in steps
    assert marker.read_text() == "from the first run", "the blocked asset left the old copy alone"
