"""Corrections end to end: a run on a tiny demo dataset, `overrides.csv` written into its
output (a removed pair marked not a duplicate, a removed image kept, a kept image removed),
a run that honours it (only the touched classes decided again, nothing retrained, the keep
lists say `override`, the clean copy follows), malformed files refused by the real `dedup
run` with one line naming the file and the line and nothing changed, and an override taken
out undone by the next `dedup run`."""

import csv
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import run_dedup, tree_digest

from dedup_assets.cli import EXIT_OK, EXIT_USAGE
from dedup_assets.config import PipelineConfig
from dedup_assets.core.data.artifacts import CurrentInputs, catalog_class_keys, read_keep_list
from dedup_assets.core.data.layout import OutputInUse, OutputLayout
from dedup_assets.core.decision.overrides import without_pairs
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.definitions import build_definitions
from dedup_assets.runner import instance_for, run_pipeline
from resources import DedupSettings

THRESHOLDS = ("0.95", "1%")
METHOD = {"epochs": 2, "batch_size": 32, "n_components": 8, "kurtosis_tolerance": 1.0}
METHOD_SETTINGS = DedupSettings(**METHOD)
# The same settings as `dedup run` options, so the command's runs need no other work.
OPTIONS = [
    "--thresholds",
    ",".join(THRESHOLDS),
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--components",
    "8",
    "--kurtosis-tolerance",
    "1.0",
    "--executor",
    "in_process",
]


def _keep_files(layout: OutputLayout) -> dict[tuple[str, str], bytes]:
    return {
        (t, k): layout.class_keep_list(t, k).read_bytes()
        for t in THRESHOLDS
        for k in catalog_class_keys(layout)
    }


def _rows(layout: OutputLayout, t: str) -> dict[str, dict]:
    keep = pl.read_parquet(layout.keep_list(t))
    return {row["path"]: row for row in keep.iter_rows(named=True)}


def _write(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "decision", "other"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("overrides_e2e")
    source = base / "source"
    generate_demo_dataset(source, seed=3, per_class=16, duplicate_fraction=0.25)
    out = base / "out"
    config = PipelineConfig.build(
        source=str(source),
        output=str(out),
        thresholds=THRESHOLDS,
        device="cpu",
        precision="fp32",
        executor="in_process",
        method=METHOD,
    )
    instance = instance_for(out)  # the instance `dedup run` opens on this output
    first = run_pipeline(config, instance, log=lambda _: None)
    assert first.ok, (first.failures, first.skipped, first.check_failures)
    layout = OutputLayout(out)
    before = _keep_files(layout)
    rows = _rows(layout, "0.95")

    # x: removed as a near-duplicate of y (class A); v: removed (class B); z: kept (class C).
    removed = [r for r in rows.values() if not r["kept"] and r["match"] == "near"]
    x = removed[0]
    y = next(r for r in rows.values() if r["image_id"] == x["duplicate_of"])
    v = next(r for r in removed if r["class"] != x["class"])
    z = next(
        r
        for r in sorted(rows.values(), key=lambda r: r["path"])
        if r["kept"] and r["class"] not in (x["class"], v["class"])
    )
    chosen = {"x": x["path"], "y": y["path"], "v": v["path"], "z": z["path"]}
    touched = {r["class"] for r in (x, v, z)}
    _write(
        layout.overrides,
        [
            (chosen["x"], "not_duplicate", chosen["y"]),
            (chosen["v"], "keep", ""),
            (chosen["z"], "remove", ""),
        ],
    )
    lines: list[str] = []
    second = run_pipeline(config, instance, log=lines.append)
    return {
        "source": source,
        "layout": layout,
        "config": config,
        "first": first,
        "second": second,
        "log": lines,
        "before": before,
        "chosen": chosen,
        "touched": touched,
    }


def test_only_the_touched_classes_are_decided_again_and_nothing_is_retrained(runs):
    second, layout = runs["second"], runs["layout"]
    assert second.ok, (second.failures, second.skipped, second.check_failures)
    assert second.training.startswith("model kept"), second.training
    started = [line for line in runs["log"] if line.startswith("[classes") and "starting" in line]
    assert started and f"for {len(runs['touched'])} classes" in started[0], runs["log"]
    names = {
        k: read_keep_list(layout.class_keep_list("0.95", k))["class"][0]
        for k in catalog_class_keys(layout)
    }
    after = _keep_files(layout)
    for (t, key), data in runs["before"].items():
        if names[key] in runs["touched"]:
            assert data != after[(t, key)], (t, key)
        else:
            assert data == after[(t, key)], f"class {key} at T={t} was decided again"


def test_the_keep_lists_honour_the_overrides_and_say_who_decided(runs):
    layout, chosen = runs["layout"], runs["chosen"]
    first_run = {t: _rows(layout, t) for t in THRESHOLDS}
    for t in THRESHOLDS:
        rows = first_run[t]
        v, z, x = rows[chosen["v"]], rows[chosen["z"]], rows[chosen["x"]]
        assert v["kept"] and v["decided_by"] == "override", (t, v)
        assert not z["kept"] and z["decided_by"] == "override" and z["match"] == "override", (t, z)
        y_id = rows[chosen["y"]]["image_id"]
        assert x["duplicate_of"] != y_id, (t, x)  # the pair is no duplicate edge any more
        assert x["decided_by"] == "override", (t, x)
        decided_in = {rows[chosen[k]]["decided_in"] for k in ("v", "z", "x")}
        assert len(decided_in) == 1 and None not in decided_in  # all three in the second run
    untouched = [r for r in first_run["0.95"].values() if r["class"] not in runs["touched"]]
    assert untouched and all(r["decided_by"] in ("exact", "model") for r in untouched)


def test_the_clean_copy_follows_the_overrides(runs):
    layout, chosen = runs["layout"], runs["chosen"]
    for t in THRESHOLDS:
        clean = layout.clean_dir(t)
        assert (clean / chosen["v"]).is_file(), f"kept by override, missing from clean/{t}"
        assert not (clean / chosen["z"]).exists(), f"removed by override, still in clean/{t}"


def test_the_evaluation_scores_the_keep_lists_as_the_overrides_left_them(runs):
    """(Before `test_dedup_run_undoes_an_override_taken_out`, which takes z's line out.)
    `evaluation/keep_lists.csv` scores the stored keep lists against the demo's ground
    truth: the image kept and the one removed by override count as decided."""
    from dedup_assets.core.quality.planting import read_ground_truth

    layout, chosen = runs["layout"], runs["chosen"]
    scores = pl.read_csv(layout.evaluation_dir / "keep_lists.csv")
    truth = read_ground_truth(runs["source"] / "ground_truth.csv")
    known = [(f"{p.class_name}/{p.original}", f"{p.class_name}/{p.copy}") for p in truth]
    for t in THRESHOLDS:
        rows = _rows(layout, t)
        planted = {path for pair in known if set(pair) <= set(rows) for path in pair}
        removed = {path for path, r in rows.items() if not r["kept"]}
        unplanted = set(rows) - planted
        assert chosen["z"] in removed and chosen["v"] not in removed
        row = scores.filter(pl.col("threshold").cast(pl.String) == t).row(0, named=True)
        assert row["images_removed"] == len(removed), t
        assert row["removed_in_ground_truth"] == len(removed & planted), t
        assert row["false_removal_rate"] == pytest.approx(
            len(removed & unplanted) / len(unplanted)
        ), t
        overridden = sum(r["decided_by"] == "override" for r in rows.values())
        assert row["decided_by_override"] == overridden >= 3, t


def test_the_sensor_and_the_schedule_request_the_classes_whose_overrides_changed(runs):
    """An edited overrides.csv with no run yet: the new-images sensor and nightly_refresh
    request update_class_job for exactly the class it changes (the source did not change),
    once per version of the file; a malformed file requests nothing and says why."""
    layout, chosen, config = runs["layout"], runs["chosen"], runs["config"]
    saved = layout.overrides.read_bytes()
    defs = build_definitions(config)
    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def("new_images_sensor")
    refresh = repository.get_schedule_def("nightly_refresh")
    keys = {
        read_keep_list(layout.class_keep_list("0.95", k))["class"][0]: k
        for k in catalog_class_keys(layout)
    }
    # One more correction, in the class of z: z's class is the only one to decide again.
    z_class = _rows(layout, "0.95")[chosen["z"]]["class"]
    kept = sorted(
        p for p, r in _rows(layout, "0.95").items() if r["kept"] and r["class"] == z_class
    )
    extra = next(p for p in kept if p != chosen["z"])

    def evaluate():
        with (
            dg.instance_for_test() as instance,
            dg.build_sensor_context(
                instance=instance, definitions=defs, resources=config.resources()
            ) as sensing,
            dg.build_schedule_context(
                instance=instance,
                resources=config.resources(),
                scheduled_execution_time=datetime(2026, 12, 3, 2, 0, tzinfo=UTC),
            ) as scheduling,
        ):
            instance.add_dynamic_partitions("image_class", sorted(keys.values()))
            return sensor(sensing), refresh(scheduling)

    try:
        quiet = evaluate()
        assert all(isinstance(r, dg.SkipReason) for r in quiet), quiet
        layout.overrides.write_bytes(saved + f"{extra},remove,\n".encode())
        ticked, scheduled = evaluate()
        asked = [(r.job_name, r.partition_key) for r in ticked.run_requests]
        assert asked == [("update_class_job", keys[z_class])], asked
        assert [(r.job_name, r.partition_key) for r in scheduled] == asked
        assert ticked.run_requests[0].run_key == scheduled[0].run_key
        layout.overrides.write_bytes(saved + f"{extra},keep,\n".encode())
        other = evaluate()[0].run_requests[0].run_key
        assert other != ticked.run_requests[0].run_key  # a new version asks again
        layout.overrides.write_bytes(saved + b"nowhere/x.png,keep,\n")
        refused = evaluate()
        assert all(isinstance(r, dg.SkipReason) for r in refused), refused
        assert "overrides refused" in refused[0].skip_message
    finally:
        layout.overrides.write_bytes(saved)


@pytest.mark.parametrize(
    "text, line, fragment, given",
    [
        ("path,decision,other\n{v},keep,\n{z},discard,\n", 3, "discard", True),
        ("path,decision,other\n../x.png,remove,\n", 2, "../x.png", False),
        ("path,decision,other\n{v},keep,\ndesert/nope.png,keep,\n", 3, "desert/nope.png", False),
    ],
    ids=["bad decision, --overrides", "outside the source", "unknown image"],
)
def test_dedup_run_refuses_a_malformed_file_with_its_line_and_changes_nothing(
    runs, text, line, fragment, given
):
    layout, chosen = runs["layout"], runs["chosen"]
    saved = layout.overrides.read_bytes()
    where = layout.root.parent / "bad_overrides.csv" if given else layout.overrides
    before = tree_digest(layout.root / "keep_lists"), tree_digest(layout.root / "clean")
    try:
        where.write_text(text.format(**chosen))
        extra = ["--overrides", str(where)] if given else []
        done = run_dedup(
            "run", "--source", str(runs["source"]), "--output", str(layout.root), *OPTIONS, *extra
        )
        assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
        errors = done.stderr.strip().splitlines()
        assert len(errors) == 1, done.stderr
        assert f"{where.resolve()}, line {line}" in errors[0] and fragment in errors[0], errors[0]
        assert "Traceback" not in done.stdout + done.stderr
    finally:
        layout.overrides.write_bytes(saved)
    assert (tree_digest(layout.root / "keep_lists"), tree_digest(layout.root / "clean")) == before


def test_dedup_run_undoes_an_override_taken_out(runs):
    """Through the real command: the `remove` line taken out, the next `dedup run` decides
    that class again (only it) and the image is back in the clean copy."""
    layout, chosen = runs["layout"], runs["chosen"]
    before = _keep_files(layout)
    z_class = _rows(layout, "0.95")[chosen["z"]]["class"]
    _write(
        layout.overrides, [(chosen["x"], "not_duplicate", chosen["y"]), (chosen["v"], "keep", "")]
    )
    done = run_dedup("run", "--source", str(runs["source"]), "--output", str(layout.root), *OPTIONS)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert "for 1 classes" in done.stdout and "model kept" in done.stdout, done.stdout
    # The last lines say what the run did, the corrections among it, and where to look.
    lines = done.stdout.splitlines()
    said = lines[lines.index("what the run did:") :]
    for t in THRESHOLDS:
        (counted,) = [x for x in said if x.startswith(f"T={t}: kept ")]
        assert "decided by overrides.csv" in counted, counted
    assert any(x.startswith("next: review the removals on file://") for x in said)
    assert said[-1].startswith("done: every stage ran"), said
    after = _keep_files(layout)
    changed = {k for (t, k) in before if before[(t, k)] != after[(t, k)]}
    assert len(changed) == 1
    for t in THRESHOLDS:
        z = _rows(layout, t)[chosen["z"]]
        assert z["class"] == z_class and z["decided_by"] != "override", (t, z)
        assert z["kept"] == (layout.clean_dir(t) / chosen["z"]).is_file()
        assert (layout.clean_dir(t) / chosen["v"]).is_file()
    # Again with nothing changed: no work.
    again = run_dedup(
        "run", "--source", str(runs["source"]), "--output", str(layout.root), *OPTIONS
    )
    assert again.returncode == EXIT_OK and "nothing changed" in again.stdout, again.stdout
    assert "what the outputs hold (nothing was computed):" in again.stdout
    assert again.stdout.splitlines()[-1].startswith("done: ")


def test_a_new_output_folder_holding_only_overrides_csv_is_accepted(tmp_path):
    out = OutputLayout(tmp_path / "out")
    out.root.mkdir()
    _write(out.overrides, [("desert/a.png", "keep", "")])
    out.claim()  # corrections put there before the first run
    assert out.marker.is_file() and out.overrides.is_file()
    other = OutputLayout(tmp_path / "other")
    other.root.mkdir()
    _write(other.overrides, [])
    (other.root / "notes.txt").write_text("mine")
    with pytest.raises(OutputInUse):
        other.claim()


def test_cross_class_pairs_marked_not_duplicate_leave_the_table_and_its_provenance_says_so():
    pairs = pl.DataFrame(
        {
            "class_a": ["a", "a", "b"],
            "path_a": ["a/1.png", "a/2.png", "b/3.png"],
            "class_b": ["b", "c", "c"],
            "path_b": ["b/3.png", "c/4.png", "c/5.png"],
        }
    )
    marked = [("b/3.png", "c/5.png"), ("a/1.png", "b/3.png")]  # sorted pairs, either order
    assert without_pairs(pairs, sorted(marked))["path_a"].to_list() == ["a/2.png"]
    assert without_pairs(pairs, []).equals(pairs)
    plain = CurrentInputs({"a": "1"}, "m", METHOD_SETTINGS)
    marking = CurrentInputs({"a": "1"}, "m", METHOD_SETTINGS, not_duplicate=tuple(sorted(marked)))
    assert "not_duplicate" not in plain.cross_class("0.95")  # as before overrides existed
    assert marking.cross_class("0.95") != plain.cross_class("0.95")
    assert {k: v for k, v in marking.cross_class("0.95").items() if k != "not_duplicate"} == (
        plain.cross_class("0.95")
    )
