"""Train/test leakage through the real `dedup run` (issue 25): a split source
(`train/`, `val/`, `test/`) with leaks planted in train (an exact copy, a JPEG re-encoded
copy, one filed under another class, and a test image copied twice into one training
class, so it is both an exact copy within train and a leak); the gate fails with exit 3
and the last screen says how many test images have a copy in train and where to look;
`--leakage-tolerance` lets it pass; `--leakage drop-train`, `drop-test` and `report` change
the clean copy exactly as promised; a new test image is checked without judging the val
split again; overrides marking the pairs not a duplicate clear the gate; an unsplit source
writes no leakage table. One sequence of runs on one output (one training in all), tiny
64 px images, one epoch."""

import csv
import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import run_dedup
from PIL import Image

from dedup_assets.cli import EXIT_GATE, EXIT_OK
from dedup_assets.core.quality.demo_data import generate_demo_dataset

T = "0.95"
# A budget the tiny splits can resolve (0.1% needs about 4,000 decoy draws; 2%, 199).
OPTIONS = (
    "--thresholds", T, "--device", "cpu", "--precision", "fp32", "--epochs", "1",
    "--batch-size", "32", "--components", "8", "--kurtosis-tolerance", "1.0",
    "--executor", "in_process", "--leakage-budget", "0.02",
)  # fmt: skip
# The planted leaks: test image -> its copies in train, and whether the copy is exact.
PLANTED = {
    ("test/forest/forest_008.png", "train/forest/leak_exact.png"): "exact",
    ("test/farmland/farmland_008.png", "train/farmland/leak_a.png"): "exact",
    ("test/farmland/farmland_008.png", "train/farmland/leak_b.png"): "exact",
    ("test/water/water_009.png", "train/water/leak_jpeg.jpg"): "near",
    ("test/urban/urban_010.png", "train/desert/leak_cross.jpg"): "near",  # another class
}
TRAIN_COPIES = {t for _, t in PLANTED}
LEAKED_TEST = {e for e, _ in PLANTED}
NEW_LEAK = ("test/road/road_new.png", "train/road/road_000.png")
NEW_TRAIN_LEAK = ("test/road/road_009.png", "train/road/leak_new.jpg")  # JPEG: a near copy


def _make_source(base: Path) -> Path:
    """6 classes: 8 images each in train, 4 in test, and 3 forest images in val (a class
    only some splits hold), then the planted copies."""
    demo = base / "demo"
    generate_demo_dataset(demo, seed=5, per_class=12, duplicate_fraction=0.0)
    src = base / "src"
    for folder in sorted(p for p in demo.iterdir() if p.is_dir()):
        originals = sorted(p for p in folder.glob(f"{folder.name}_*.png") if p.stem[-3:].isdigit())
        for i, p in enumerate(originals):
            split = "train" if i < 8 else "test"
            (src / split / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, src / split / folder.name / p.name)
    (src / "val" / "forest").mkdir(parents=True)
    for i in range(3):  # val images of their own: no copy in train
        img = Image.open(demo / "road" / f"road_{i:03d}.png").convert("RGB")
        img.transpose(Image.Transpose.ROTATE_90).save(src / "val" / "forest" / f"v{i}.png")
    for (test, train), kind in PLANTED.items():
        if kind == "exact":
            shutil.copy2(src / test, src / train)
        else:
            Image.open(src / test).convert("RGB").save(src / train, quality=85)
    return src


def _run(src: Path, out: Path, *extra: str):
    return run_dedup("run", "--source", str(src), "--output", str(out), *OPTIONS, *extra)


def _leaks(out: Path) -> pl.DataFrame:
    return pl.read_csv(out / "leakage.csv", schema_overrides={"similarity": pl.Float64})


def _clean(out: Path) -> set[str]:
    root = out / "clean" / T
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name[0] != "."}


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("leakage_pipeline")
    src, out = _make_source(base), base / "out"
    cache = out / ".leakage"
    done = {"src": src, "out": out}
    done["gate"] = _run(src, out)
    done["gate_leaks"], done["gate_clean"] = _leaks(out), _clean(out)
    done["keep"] = pl.read_parquet(out / "keep_lists" / f"{T}.parquet")
    caches = {s: _mtime(cache / f"{s}.parquet") for s in ("val", "test")}
    # The tolerance at the number flagged passes; one below fails (the clean copy is made).
    flagged = done["gate_leaks"]["image"].n_unique()
    done["report"] = _run(src, out, "--leakage", "report", "--leakage-tolerance", str(flagged))
    done["report_clean"] = _clean(out)
    done["report_reused"] = caches == {s: _mtime(cache / f"{s}.parquet") for s in caches}
    done["drop_test"] = _run(
        src, out, "--leakage", "drop-test", "--leakage-tolerance", str(flagged - 1)
    )
    done["drop_test_clean"] = _clean(out)
    # A new test image, an exact copy of a training image: only the test split again.
    shutil.copy2(src / NEW_LEAK[1], src / NEW_LEAK[0])
    done["new"] = _run(src, out)
    done["new_leaks"] = _leaks(out)
    done["new_recomputed"] = {s: _mtime(cache / f"{s}.parquet") != caches[s] for s in caches}
    shutil.copytree(out / "review", base / "review_new")  # the page that lists these leaks
    # A new training image, a near copy of a test image: both splits' indexes updated.
    Image.open(src / NEW_TRAIN_LEAK[0]).convert("RGB").save(src / NEW_TRAIN_LEAK[1], quality=85)
    done["train_new"] = _run(src, out)
    done["train_new_leaks"] = _leaks(out)
    done["train_new_record"] = json.loads((cache / "record.json").read_text())
    with open(out / "overrides.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "decision", "other"])
        for e, t in sorted({*PLANTED, NEW_LEAK, NEW_TRAIN_LEAK}):
            writer.writerow([e, "not_duplicate", t])
    done["overridden"] = _run(src, out)
    done["overridden_leaks"] = _leaks(out)
    done["overridden_clean"] = _clean(out)
    done["overridden_keep"] = pl.read_parquet(out / "keep_lists" / f"{T}.parquet")
    # The default budget (0.1%) on these tiny splits: too few decoy draws to read it.
    (out / "overrides.csv").unlink()
    done["default"] = _run(src, out, "--leakage-budget", "0.001")
    done["default_leaks"] = _leaks(out)
    done["default_record"] = json.loads((cache / "record.json").read_text())
    return done


def test_the_gate_fails_on_planted_leaks_and_says_where_to_look(runs):
    done, out = runs["gate"], runs["out"]
    assert done.returncode == EXIT_GATE, done.stdout + done.stderr
    leaks = runs["gate_leaks"]
    found = {(e, t): k for e, t, k in leaks.select("image", "train_image", "kind").iter_rows()}
    for pair, kind in PLANTED.items():  # every planted leak, each of its kind
        assert found.get(pair) == kind, (pair, found)
    assert {p for p, k in found.items() if k == "exact"} == {
        p for p, k in PLANTED.items() if k == "exact"
    }
    # Near flags of clean test images are false flags: the budget allows 2% of the 19
    # clean ones on average (0.4); more than 3 would be beyond its 99% binomial bound.
    false = set(leaks["image"]) - LEAKED_TEST
    assert len(false) <= 3, false
    assert set(leaks["split"]) == {"test"}  # val holds no copy
    cross = leaks.filter(pl.col("train_image") == "train/desert/leak_cross.jpg").row(0, named=True)
    assert (cross["class"], cross["train_class"]) == ("urban", "desert")
    near = leaks.filter(pl.col("kind") == "near")
    assert (near["similarity"] > near["threshold"]).all()
    assert (leaks.filter(pl.col("kind") == "exact")["similarity"] == 1.0).all()
    flagged = leaks["image"].n_unique()
    line = next(x for x in done.stdout.splitlines() if "no_leak_test" in x)
    assert line.startswith("FAIL  (blocks)"), line
    assert f"{flagged} test images have a copy in train" in line
    assert str(out / "leakage.csv") in line and "review" in line
    assert "no_leak_val" not in done.stdout  # val passed: nothing said as a failure
    # "what the run did" says each evaluation split's verdict, the exit line names the gate.
    assert "  leakage: no val image has a copy in train" in done.stdout
    assert f"  leakage: {flagged} test images have a copy in train" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("exit 3: the leakage gate failed: test images"), last


def test_an_image_both_copied_within_train_and_leaked(runs):
    keep = runs["keep"]
    rows = {r["path"]: r for r in keep.iter_rows(named=True)}
    a, b = rows["train/farmland/leak_a.png"], rows["train/farmland/leak_b.png"]
    assert sorted([a["kept"], b["kept"]]) == [False, True]  # one copy removed within train
    assert (a if not a["kept"] else b)["match"] == "exact"
    assert rows["test/farmland/farmland_008.png"]["kept"]  # a test image never goes
    pairs = runs["gate_leaks"].filter(pl.col("image") == "test/farmland/farmland_008.png")
    assert set(pairs["train_image"]) == {"train/farmland/leak_a.png", "train/farmland/leak_b.png"}
    assert not {"train/farmland/leak_a.png", "train/farmland/leak_b.png"} & runs["gate_clean"]


def test_each_policy_changes_the_clean_copy_exactly_as_promised(runs):
    kept = {p for p, k in runs["keep"].select("path", "kept").iter_rows() if k}
    report = runs["report_clean"]
    assert runs["report"].returncode == EXIT_OK, runs["report"].stdout
    assert report == kept  # report: the keep list as it is
    drop_train = runs["gate_clean"]
    flagged_train = set(runs["gate_leaks"]["train_image"])
    assert drop_train == kept - flagged_train  # the training copies only
    assert {p for p in report if p.startswith("test/")} == {
        p for p in drop_train if p.startswith("test/")
    }  # the evaluation set untouched
    assert TRAIN_COPIES & report and not TRAIN_COPIES & drop_train
    flagged_test = set(runs["gate_leaks"]["image"])
    assert runs["drop_test"].returncode == EXIT_GATE  # tolerance one below: still made
    assert runs["drop_test_clean"] == kept - flagged_test
    assert not LEAKED_TEST & runs["drop_test_clean"]
    assert "left out for train/test leakage, --leakage drop-test" in runs["drop_test"].stdout


def test_tolerance_passes_the_gate_and_nothing_unchanged_is_recomputed(runs):
    done = runs["report"]
    assert done.returncode == EXIT_OK, done.stdout + done.stderr  # tolerance = flagged
    assert "no_leak_test" not in done.stdout
    flagged = runs["gate_leaks"]["image"].n_unique()
    assert f"{flagged} test images have a copy in train" in runs["drop_test"].stdout
    assert f"tolerance {flagged - 1}" in runs["drop_test"].stdout
    assert runs["report_reused"]  # no class changed: neither split judged again


def test_a_new_test_image_is_judged_without_the_other_split(runs):
    done = runs["new"]
    assert done.returncode == EXIT_GATE, done.stdout
    leaks = runs["new_leaks"]
    row = leaks.filter(pl.col("image") == NEW_LEAK[0]).row(0, named=True)
    assert (row["train_image"], row["kind"]) == (NEW_LEAK[1], "exact")
    assert runs["new_recomputed"] == {"val": False, "test": True}


def test_a_new_training_image_updates_each_split_and_its_leak_is_found(runs):
    """A near copy of a test image added to train: each split's index is updated with the
    one new training image (no evaluation image encoded again), not built again, and the
    copy is flagged beside every leak found before."""
    done = runs["train_new"]
    assert done.returncode == EXIT_GATE, done.stdout
    how = runs["train_new_record"]["this_run"]
    for split in ("val", "test"):
        assert how[split].startswith("updated: +1 train, +0/-0 evaluation images"), how
    leaks = runs["train_new_leaks"]
    row = leaks.filter(pl.col("train_image") == NEW_TRAIN_LEAK[1]).row(0, named=True)
    assert (row["image"], row["kind"]) == (NEW_TRAIN_LEAK[0], "near")
    before = set(runs["new_leaks"].select("image", "train_image").iter_rows())
    assert before <= set(leaks.select("image", "train_image").iter_rows())


def test_overrides_mark_the_leaks_not_duplicates(runs):
    done, leaks = runs["overridden"], runs["overridden_leaks"]
    # What is left is what run 1 flagged beyond the planted leaks (none on this data).
    unplanted = set(runs["gate_leaks"]["image"]) - LEAKED_TEST
    assert set(leaks["image"]) == unplanted
    assert done.returncode == (EXIT_OK if not unplanted else EXIT_GATE), done.stdout
    assert ("no_leak_test" in done.stdout) == bool(unplanted)
    kept = {p for p, k in runs["overridden_keep"].select("path", "kept").iter_rows() if k}
    assert runs["overridden_clean"] == kept - set(leaks["train_image"])
    assert TRAIN_COPIES & kept <= runs["overridden_clean"]  # no longer left out


def test_the_review_page_lists_each_leak_and_marks_it_not_a_duplicate(runs, tmp_path):
    """In Chromium: the leakage view shows every pair of leakage.csv side by side; marking
    each "not a duplicate" downloads them as overrides.csv rows (other: the train image)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no Chromium found")
    leaks = runs["new_leaks"]
    index = runs["out"].parent / "review_new" / "index.html"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(accept_downloads=True, bypass_csp=True)
        page.goto(index.as_uri() + "#t=0&v=l&p=0")
        cards = page.locator("article.pair")
        sync_api.expect(cards).to_have_count(leaks.height)
        shown = page.locator("#viewinfo").inner_text()
        assert f"{leaks['image'].n_unique()} test" in shown, shown
        for k in range(leaks.height):
            cards.nth(k).get_by_role("button", name="not a duplicate").click()
        sync_api.expect(page.locator("#counter")).to_have_text(f"{leaks.height} marks")
        with page.expect_download() as download:
            page.locator("#download").click()
        saved = tmp_path / "overrides.csv"
        download.value.save_as(saved)
        browser.close()
    with saved.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "decision", "other"]
    assert sorted(rows[1:]) == sorted(
        [e, "not_duplicate", t] for e, t in leaks.select("image", "train_image").iter_rows()
    )


def test_an_unsplit_source_writes_no_leakage_table(runs, tmp_path):
    out = tmp_path / "out"
    done = run_dedup("run", "--source", str(runs["src"] / "train"), "--output", str(out), *OPTIONS)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert not (out / "leakage.csv").exists()
    for said in ("leakage: evaluation images", "no_leak_", "train/test leakage"):
        assert said not in done.stdout  # no leakage stage, check or clean-copy note


def test_a_split_too_small_for_the_default_budget_says_only_exact_copies_were_flagged(runs):
    """At 0.1% a threshold needs at least 999 decoy draws (k = floor(b (n + 1)) >= 1); each
    split here gives 3 flips of each of its images and each training image, far fewer: the
    threshold is 1.0, only the exact copies are flagged, and the last screen says so, with
    the smallest budget these draws read steadily (its 4th highest draw)."""
    done, src = runs["default"], runs["src"]
    assert done.returncode == EXIT_GATE, done.stdout + done.stderr  # exact copies still leak
    leaks = runs["default_leaks"]
    exact = {e for (e, _), k in PLANTED.items() if k == "exact"} | {NEW_LEAK[0]}
    assert set(leaks["kind"]) == {"exact"} and set(leaks["image"]) == exact
    assert (leaks["threshold"] == 1.0).all()
    n_train = sum(1 for p in (src / "train").rglob("*") if p.is_file())
    facts = runs["default_record"]["splits"]
    for split in ("val", "test"):
        n_eval = sum(1 for p in (src / split).rglob("*") if p.is_file())
        draws = 3 * (n_eval + n_train)  # hflip, vflip, rot180 of every image: all there is
        assert facts[split]["draws"] == draws and facts[split]["readable"] is False
        assert draws < 999
        steady = min(
            b for b in (0.002, 0.005, 0.01, 0.02, 0.05) if math.floor(b * (draws + 1)) >= 4
        )
        line = next(
            x for x in done.stdout.splitlines() if x.startswith("  leakage: ") and f" {split} " in x
        )
        assert f"only exact copies were looked for in {split}" in line, line
        assert "needs at least 999 decoy draws" in line and f"this split gives {draws:,}" in line
        assert f"--leakage-budget {steady:g} reads near copies here" in line, line
    assert "  leakage: no val image has a copy in train (only exact copies" in done.stdout
    assert (
        f"  leakage: {len(exact)} test images have a copy in train ({len(exact)} exact, 0 near"
        in done.stdout
    )
    # The 2% budget of the earlier runs was read: no such note.
    assert "only exact copies" not in runs["gate"].stdout


def test_the_automation_judges_leakage_again_when_its_table_is_not_current(runs):
    """The follow-up sensor's step on a split source: with the settings the table was made
    with it requests no leakage run; with another budget (as after new images or an edited
    pipeline.json) it requests the `leakage` asset alone, before any threshold."""
    import dagster as dg

    from dedup_assets.automation import follow_up_requests
    from dedup_assets.config import PipelineConfig
    from dedup_assets.core.data.artifacts import CurrentInputs
    from dedup_assets.core.data.layout import OutputLayout

    out = runs["out"]
    config = PipelineConfig.from_environment({"DEDUP_OUTPUT": str(out)})
    layout = OutputLayout(out)
    made_with = runs["default_record"]["splits"]["test"]["budget"]

    def requests(budget: float):
        method = config.method.model_copy(update={"leakage_budget": budget})
        current = CurrentInputs.of(layout, method)
        with dg.DagsterInstance.ephemeral() as instance:
            return follow_up_requests(instance, layout, current, config.thresholds)

    def asks_for_leakage(found) -> bool:
        return not isinstance(found, str) and any(
            r.asset_selection == [dg.AssetKey("leakage")] for r in found
        )

    assert not asks_for_leakage(requests(made_with))
    again = requests(0.02)
    assert asks_for_leakage(again) and len(again) == 1, again
