"""The command's contract: bad settings and overlapping or foreign folders are refused
before any work, a failed stage stops everything after it, and every option of `dedup run`
and `dedup plant` changes what is written. Through the real `dedup` command (tiny data)."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import run_dedup
from PIL import Image

from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset

FAST = ("--epochs", "1", "--device", "cpu", "--precision", "fp32")


def _keep(output: Path, t: str) -> pl.DataFrame:
    return pl.read_parquet(output / "keep_lists" / f"{t}.parquet")


# ------------------------------------------------------------------ refused before any work


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "src"
    generate_demo_dataset(root, seed=2, per_class=8, duplicate_fraction=0.25)
    for extra in ("desert", "road", "urban"):  # three classes: fewer runs, same contract
        shutil.rmtree(root / extra)
    return root


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--thresholds", "1.5"], "thresholds: threshold 1.5 must lie strictly between 0 and 1"),
        (["--thresholds", "0.9,high"], "threshold 'high' is not a number"),
        (["--thresholds", "0%"], "false-removal budget 0% must lie strictly between"),
        (["--epochs", "-1"], "method.epochs: Input should be greater than or equal to 0"),
        (["--device", "gpu0"], "device: String should match pattern"),
        (["--precision", "fp8"], "precision: Input should be 'auto', 'fp32' or 'bf16'"),
        (["--space", "l2"], "method.similarity_space: Input should be"),
        (["--budget-scaling", "global"], "method.budget_scaling: Input should be 'local' or"),
        (["--components", "0"], "method.n_components"),
        (["--max-file-bytes", "0"], "max_file_bytes"),
        (["--executor", "spark"], "should be 'auto', 'in_process', 'processes', 'dask' or 'k8s'"),
        (["--executor", "k8s"], "executor k8s is for the code location of a Kubernetes"),
        (["--executor", "dask"], "executor dask needs the scheduler's address"),
        (["--dask-address", "tcp://127.0.0.1:8786"], "only used with --executor dask"),
        (
            ["--executor", "in_process", "--parallel", "2"],
            "parallel class runs need steps outside this process",
        ),
        (["--executor", "processes", "--parallel", "0"], "parallel: Input should be greater"),
        # refused here, not in the stage that meets them (numpy's, torch's or Dagster's
        # error, exit 1, after work was done and the output folder made)
        (["--seed", "-1"], "method.seed: Input should be greater than or equal to 0"),
        (["--seed", "99999999999999999999"], "method.seed: Input should be less than or equal"),
        (["--learning-rate", "inf"], "method.learning_rate: Input should be a finite number"),
        (["--kurtosis-tolerance", "inf"], "kurtosis_tolerance: Input should be a finite number"),
        (["--retrain-error-factor", "inf"], "retrain_error_factor: Input should be a finite"),
        (["--schedule", "0 25 * * *"], "is not a cron schedule Dagster runs"),
        (["--schedule", "*/0 * * * *"], "is not a cron schedule Dagster runs"),
        (["--executor", "dask", "--dask-address", "foo"], "'foo' is not a scheduler address"),
    ],
)
def test_bad_settings_exit_2_with_one_line(small_source, tmp_path, extra, message):
    done = run_dedup("run", "--source", str(small_source), "--output", str(tmp_path / "o"), *extra)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dedup run: error: "), done.stderr
    assert message in lines[0]
    assert not (tmp_path / "o").exists(), "nothing is written for a refused command"


@pytest.mark.parametrize("name", ["o%41b", "o%2fb", "100%20"])
def test_an_output_the_history_database_would_misplace_is_refused(small_source, tmp_path, name):
    """SQLite's address unquotes `%41` to `A`: the run failed with a raw SQLite error (its
    databases' folder did not exist). Refused with one line, nothing written."""
    done = run_dedup("run", "--source", str(small_source), "--output", str(tmp_path / name))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "which the run history's SQLite address reads" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("run", ["--thresholds", "1.5"]),
        ("run", ["--executor", "k8s"]),
        ("watch", ["--thresholds", "1.5"]),
    ],
)
def test_a_refused_setting_is_said_before_the_run_is_imported(
    small_source, tmp_path, command, extra
):
    """The settings are checked before the run's modules (torch, the workers' dispatch):
    a refused setting costs the settings' imports alone."""
    done = run_dedup(
        command,
        "--source",
        str(small_source),
        "--output",
        str(tmp_path / "o"),
        *extra,
        env_extra={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"dedup {command}: error: "), lines[-1]
    imported = {m.split("|")[-1].strip() for m in lines[:-1]}
    assert "dedup_assets.config" in imported  # the report is what it says it is
    assert not imported & {"torch", "dedup_assets.dispatch", "dedup_assets.runner"}


def test_output_overlapping_the_source_is_refused(small_source, tmp_path):
    for output, why in [
        (small_source, "is the source folder"),
        (small_source / "forest" / "out", "is inside the source"),
        (small_source.parent, "is inside the output"),
    ]:
        done = run_dedup("run", "--source", str(small_source), "--output", str(output))
        assert done.returncode == 2 and why in done.stderr, done.stderr
    assert (small_source / "forest").is_dir() and not (small_source / "forest" / "out").exists()


def test_foreign_or_unusable_outputs_are_refused(small_source, tmp_path):
    home = tmp_path / "home"
    (home / "evaluation").mkdir(parents=True)
    (home / "evaluation" / "mine.txt").write_text("keep me")
    done = run_dedup("run", "--source", str(small_source), "--output", str(home))
    assert done.returncode == 2 and "not made by latent-dedup" in done.stderr
    assert (home / "evaluation" / "mine.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = run_dedup("run", "--source", str(small_source), "--output", str(a_file))
    assert done.returncode == 2 and "is not a folder" in done.stderr
    done = run_dedup("run", "--source", str(small_source), "--output", "/proc/latent-dedup-out")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1  # a setting
    assert "output /proc/latent-dedup-out cannot be written" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_dedup("run", "--source", str(tmp_path / "missing"), "--output", str(tmp_path / "o"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_corrupt_saved_settings_are_named(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.json").write_text("{oops")
    done = run_dedup("ui", "--output", str(out))
    assert done.returncode == 2
    assert "pipeline.json is not valid JSON" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------ failures stop downstream


def test_failed_stage_stops_downstream_and_nothing_is_rebuilt_from_stale_files(
    small_source, tmp_path
):
    source = tmp_path / "src"
    shutil.copytree(small_source, source)
    out = tmp_path / "out"
    one = ("--thresholds", "0.95", *FAST)
    first = run_dedup("run", "--source", str(source), "--output", str(out), *one)
    assert first.returncode == 0, first.stdout + first.stderr
    keep_before = (out / "keep_lists" / "0.95.parquet").read_bytes()
    saved_before = (out / "pipeline.json").read_text()

    # An image disappears; a run then asks for CUDA on a machine without it. It fails with
    # one line, stops every later stage (no keep list is rebuilt) and is not sticky.
    deleted = sorted((source / "forest").glob("*.png"))[0]
    deleted.unlink()
    if not __import__("torch").cuda.is_available():
        cuda = run_dedup(
            "run", "--source", str(source), "--output", str(out), "--device", "cuda", *one[:2]
        )
        assert cuda.returncode == 1
        assert "CUDA is not available" in cuda.stdout and "Traceback" not in cuda.stdout
        assert "SKIPPED every later stage: training failed" in cuda.stdout
        assert "report:" not in cuda.stdout, "a failed run must not point at an old report"
        assert (out / "pipeline.json").read_text() == saved_before
        assert (out / "keep_lists" / "0.95.parquet").read_bytes() == keep_before

    # The stored model is damaged too: the next run says so, retrains and recovers; the
    # deleted image is gone from every keep list.
    (out / "model" / "autoencoder.pt").write_bytes(b"not a model")
    again = run_dedup("run", "--source", str(source), "--output", str(out), *one)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "training: retrained: the stored model" in again.stdout
    assert "cannot be loaded" in again.stdout
    paths = _keep(out, "0.95")["path"].to_list()
    assert f"forest/{deleted.name}" not in paths and len(paths) > 0
    rerun = run_dedup("run", "--source", str(source), "--output", str(out), *one)
    assert rerun.returncode == 0 and "nothing changed" in rerun.stdout


def test_a_new_ground_truth_is_scored_on_a_rerun(small_source, tmp_path):
    """Nothing else changed, the ground truth did: the evaluation is scored against the new
    file (it kept the old one's, and a rerun said every output was up to date), and a
    malformed one is refused before any work (it failed the evaluation, after the rest)."""
    out = tmp_path / "out"
    run = ("run", "--source", str(small_source), "--output", str(out), "--thresholds", "0.95")
    first = run_dedup(*run, *FAST)
    assert first.returncode == 0, first.stdout + first.stderr
    scored = pl.read_csv(out / "evaluation" / "keep_lists.csv")
    header, *rows = (small_source / "ground_truth.csv").read_text().splitlines()
    all_rows = len(rows)
    rows = [r for r in rows if (small_source / r.split(",")[0]).is_dir()]  # classes kept
    assert scored["known_pairs"][0] == len(rows) > 1
    # the last screen says what the ground truth found, and the rows it could not score
    recall = scored["recall"][0]
    assert (
        f"  evaluation: share of the {len(rows)} known pairs resolved: T=0.95 {recall:.3f}"
        in first.stdout
    ), first.stdout
    assert all_rows > len(rows) and (
        f"  evaluation: {all_rows - len(rows)} ground-truth row(s) name no catalogued image"
        in first.stdout
    )
    # paths written from the source (`forest/a.png`, as keep lists spell them) match too;
    # they matched nothing, silently (recall NaN)
    prefixed = tmp_path / "prefixed.csv"
    at = header.split(",")
    spelled = []
    for r in rows:
        values = r.split(",")
        cls = values[at.index("class")]
        for column in ("original", "copy"):
            values[at.index(column)] = f"{cls}/{values[at.index(column)]}"
        spelled.append(",".join(values))
    prefixed.write_text("\n".join([header, *spelled]) + "\n")
    moved = run_dedup(*run, *FAST, "--ground-truth", str(prefixed))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    rescored = pl.read_csv(out / "evaluation" / "keep_lists.csv")
    assert rescored["known_pairs"][0] == len(rows) and rescored["recall"][0] == recall
    assert "ground-truth row(s) name no catalogued image" not in moved.stdout
    # a file none of whose rows names two files of the source is refused before any work,
    # also where the files exist under a spelling the evaluation cannot match (`./forest`)
    cls, original, copy = (rows[0].split(",")[at.index(c)] for c in ("class", "original", "copy"))
    assert (small_source / cls / original).is_file() and (small_source / cls / copy).is_file()
    for text in ("forest,nope.png,nope_copy.png", f"./{cls},{original},{copy}"):
        nowhere = tmp_path / "nowhere.csv"
        nowhere.write_text(f"class,original,copy\n{text}\n")
        refused = run_dedup(*run, *FAST, "--ground-truth", str(nowhere))
        assert refused.returncode == 2 and refused.stdout == "", refused.stdout + refused.stderr
        assert "none of its 1 rows names two files of the source" in refused.stderr
    one = tmp_path / "one.csv"
    one.write_text(f"{header}\n{rows[0]}\n")
    again = run_dedup(*run, *FAST, "--ground-truth", str(one))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing changed:" not in again.stdout
    assert pl.read_csv(out / "evaluation" / "keep_lists.csv")["known_pairs"][0] == 1
    same = run_dedup(*run, *FAST, "--ground-truth", str(one))
    assert same.returncode == 0 and "nothing changed:" in same.stdout, same.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("cls,orig,cp\nforest,a,b\n")
    wrong = run_dedup(*run, *FAST, "--ground-truth", str(bad))
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr  # refused before any work
    assert "not a ground-truth file" in wrong.stderr and wrong.stdout == ""


def test_outputs_of_settings_no_longer_given_are_not_left_as_current(small_source, tmp_path):
    """A threshold dropped from --thresholds leaves its clean copy marked not updated (it
    stayed, with nothing to tell it from a current one), the mark gone once the threshold is
    back; a ground truth no longer given takes its evaluation away (its scores stayed)."""
    source, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(small_source, source)
    truth = tmp_path / "truth.csv"
    shutil.move(source / "ground_truth.csv", truth)
    run = ("run", "--source", str(source), "--output", str(out), *FAST)
    both = run_dedup(*run, "--thresholds", "0.95,0.97", "--ground-truth", str(truth))
    assert both.returncode == 0, both.stdout + both.stderr
    assert (out / "evaluation" / "keep_lists.csv").is_file()
    note = out / "clean" / "0.97" / "NOT_UPDATED.txt"
    one = run_dedup(*run, "--thresholds", "0.95")
    assert one.returncode == 0, one.stdout + one.stderr
    assert (
        "NOTE  keep_lists/0.97 and clean/0.97 not updated: 0.97 is not among --thresholds"
        in one.stdout
    )
    assert "run again with 0.97 among --thresholds" in note.read_text()
    listed = out / "keep_lists" / "0.97.NOT_UPDATED.txt"  # the keep list too, not only its copy
    assert "this keep list is as an earlier run made it" in listed.read_text()
    assert not (out / "clean" / "0.95" / "NOT_UPDATED.txt").exists()
    assert not (out / "keep_lists" / "0.95.NOT_UPDATED.txt").exists()
    assert not (out / "evaluation").exists()
    again = run_dedup(*run, "--thresholds", "0.95,0.97")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not note.exists() and not listed.exists() and "not updated" not in again.stdout
    assert "STALE" not in again.stdout


# ------------------------------------------------------------------ every option takes effect


def test_every_run_option_takes_effect(tmp_path):
    """Each `dedup run` option, given a value other than its default, changes what is
    written: a flag that parses but is ignored is the worst kind of bug."""

    source = tmp_path / "src"
    generate_demo_dataset(source, seed=8, per_class=30, duplicate_fraction=0.2)
    for extra in ("desert", "road", "urban", "water"):
        shutil.rmtree(source / extra)
    big = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    Image.fromarray(big).save(source / "forest" / "big.png")  # about 480 KB
    truth = tmp_path / "truth.csv"
    shutil.move(source / "ground_truth.csv", truth)
    out = tmp_path / "out"
    options = [
        ("--ground-truth", str(truth)),
        ("--thresholds", "0.91,0.96,1%"),
        ("--epochs", "1"),
        ("--training", "plain"),
        ("--batch-size", "16"),
        ("--learning-rate", "0.002"),
        ("--seed", "3"),
        ("--device", "cpu"),
        ("--precision", "fp32"),
        ("--space", "whitened"),
        ("--policy", "first"),
        ("--budget-scaling", "uniform"),
        ("--components", "9"),
        ("--join", "auto"),
        ("--ann-min-class-size", "20"),
        ("--kurtosis-tolerance", "0.4"),
        ("--clean-copy-mode", "symlink"),
        ("--max-file-bytes", "100000"),
        ("--retrain-new-share", "0.5"),
        ("--retrain-error-factor", "3"),
        ("--schedule", "30 4 * * 1"),
    ]
    args = [a for pair in options for a in pair]
    done = run_dedup("run", "--source", str(source), "--output", str(out), *args, "--verbose")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dagster - " in done.stdout + done.stderr, "--verbose shows Dagster's log"
    layout = OutputLayout(out)
    training = json.loads(layout.training_log.read_text())
    assert (training["epochs"], training["batch_size"], training["seed"]) == (1, 16, 3)
    assert training["learning_rate"] == 0.002 and training["precision"] == "fp32"
    assert training["device"] == "cpu" and training["objective"] == "plain"
    assert sorted(p.name for p in (out / "keep_lists").glob("*.parquet")) == [
        "0.91.parquet",
        "0.96.parquet",
        "1%.parquet",
    ]
    # --budget-scaling uniform: the 1% budget is one cosine per class, for every row.
    budget = _keep(out, "1%")
    assert budget.group_by("class").agg(pl.col("cosine").n_unique())["cosine"].to_list() == [1, 1]
    scaled = json.loads(
        pl.read_parquet_metadata(layout.class_keep_list("1%", "forest"))["latent_dedup_provenance"]
    )
    assert scaled["scaling"] == "uniform"
    keep = _keep(out, "0.96")
    assert set(keep["space"]) == {"whitened"}  # classes of 36 images: 9 components, fitted
    with np.load(layout.spline_fit("forest")) as fit:
        assert fit["pca_variances"].shape == (9,)
    provenance = json.loads(
        pl.read_parquet_metadata(layout.class_keep_list("0.96", "forest"))[
            "latent_dedup_provenance"
        ]
    )
    assert (provenance["space"], provenance["policy"]) == ("whitened", "first")
    # Classes of 36 images are above --ann-min-class-size 20: the approximate join decided.
    assert set(keep["join"]) == {"ann"} and "auto above 20" in provenance["join"]
    gate = json.loads(layout.report_summary("0.96").read_text())["gate"]
    assert gate["tolerance"] == 0.4
    clean = [p for p in layout.clean_dir("0.96").rglob("*.png")]
    assert clean and all(p.is_symlink() for p in clean)
    quarantine = pl.read_csv(layout.quarantine)
    big_row = quarantine.filter(pl.col("path") == "forest/big.png")
    assert "larger than the limit of 100000 bytes" in big_row["reason"][0]
    assert (out / "evaluation" / "evaluation.csv").exists()
    saved = json.loads(layout.pipeline_file.read_text())
    assert saved["schedule"] == "30 4 * * 1" and saved["ground_truth"] == str(truth)
    assert saved["method"]["retrain_new_share"] == 0.5
    assert saved["method"]["retrain_error_factor"] == 3.0

    # --retrain trains again although no rule fires; --full decodes and decides again.
    again = run_dedup(
        "run", "--source", str(source), "--output", str(out), *args, "--retrain", "--full"
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "training: retrained: retraining was asked for (--retrain or --full)" in again.stdout
    assert re.search(r"^\[images\] starting: 1 run\(s\) for 2 classes", again.stdout, re.M), (
        "--full decodes every class"
    )
    decided = set(_keep(out, "0.96")["decided_in"])  # one run for both class partitions
    assert len(decided) == 1 and decided.isdisjoint(set(keep["decided_in"]))


def test_training_images_caps_automatic_training(small_source, tmp_path):
    """--training-images is the budget of automatic epochs (no --epochs): training stops
    at it and says so (the every-option test fixes --epochs, which this would not affect)."""
    out = tmp_path / "out"
    args = ("--training-images", "48", "--batch-size", "16", "--thresholds", "0.95")
    done = run_dedup("run", "--source", str(small_source), "--output", str(out), *args, *FAST[2:])
    assert done.returncode == 0, done.stdout + done.stderr
    training = json.loads(OutputLayout(out).training_log.read_text())
    assert 48 <= training["images_seen"] < 48 + 16
    assert training["stopped_because"] == "reached the budget of 48 training images"
    assert (
        json.loads(OutputLayout(out).pipeline_file.read_text())["method"]["training_images"] == 48
    )


def test_plant_options_take_effect(tmp_path):
    source = tmp_path / "src"
    generate_demo_dataset(source, seed=1, per_class=10, duplicate_fraction=0.0)
    (source / "urban" / "broken.png").unlink()  # every class keeps 10 readable images
    dest = tmp_path / "planted"
    done = run_dedup(
        "plant",
        "--source",
        str(source),
        "--dest",
        str(dest),
        "--fraction",
        "0.2",
        "--per-class",
        "8",
        "--seed",
        "4",
        "--proportions",
        "jpeg=1,noise=1",
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((dest / "ground_truth.csv").open()))
    assert len(rows) == 6 * 2  # 20% of the 8 sampled originals of each of 6 classes
    assert {r["copy"].rsplit("__dup_", 1)[1].split(".")[0] for r in rows} <= {"jpeg", "noise"}
    assert all(len(list((dest / c).iterdir())) == 8 + 2 for c in {r["class"] for r in rows})
    assert "planted 12 near-duplicates" in done.stdout
    bad = run_dedup(
        "plant", "--source", str(source), "--dest", str(tmp_path / "x"), "--proportions", "blur=x"
    )
    assert bad.returncode == 2 and "is not a number" in bad.stderr


def test_join_exact_and_ann_decide_what_they_say(small_source, tmp_path):
    """--join ann decides every class with the approximate join although every class is far
    below --ann-min-class-size; --join exact keeps the exact one although every class is
    above it; a second run in the same output with the other join decides again. The
    keep lists' `join` column and provenance say which."""
    out = tmp_path / "out"
    base = ("run", "--source", str(small_source), "--output", str(out), "--thresholds", "0.95")
    for join, limit in (("ann", "200000"), ("exact", "5")):
        done = run_dedup(*base, "--join", join, "--ann-min-class-size", limit, *FAST)
        assert done.returncode == 0, done.stdout + done.stderr
        keep = _keep(out, "0.95")
        assert set(keep["join"]) == {join}, join
        made = json.loads(
            pl.read_parquet_metadata(OutputLayout(out).class_keep_list("0.95", "forest"))[
                "latent_dedup_provenance"
            ]
        )
        assert made["join"].startswith(f"{join} above {limit}")


def test_policy_quality_keeps_the_original_of_each_photo_and_removes_its_lesser_copies(tmp_path):
    """`--policy quality`: of each group, the colour, largest, biggest file is kept. With
    the default policy the original photo was removed in about half of its pairs with a
    downscaled, cropped or greyscale copy (helper, hymenoptera), and nothing could ask for
    the best version. Whatever pairs the one-epoch model finds, the original stays."""
    rng = np.random.default_rng(7)
    source = tmp_path / "src"
    originals, copies = [], {}
    for cls in ("ants", "bees"):
        (source / cls).mkdir(parents=True)
        for i in range(14):
            coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((160, 160), Image.BICUBIC)
            # names that sort (and hash) every way: the policy, not the name, decides
            name = f"{cls}/{'z' if i % 2 else 'a'}_photo_{i}.png"
            img.save(source / name)
            originals.append(name)
            if i < 4:
                small = f"{cls}/copy_small_{i}.png"
                img.resize((80, 80), Image.LANCZOS).save(source / small)
                grey = f"{cls}/copy_grey_{i}.png"
                img.convert("L").save(source / grey)
                copies[small], copies[grey] = name, name
    out = tmp_path / "out"
    done = run_dedup(
        "run", "--source", str(source), "--output", str(out), "--thresholds", "0.9",
        "--policy", "quality", *FAST,
    )  # fmt: skip
    assert done.returncode in (0, 3), done.stdout + done.stderr
    keep = _keep(out, "0.9")
    kept = dict(zip(keep["path"], keep["kept"], strict=True))
    found = [c for c, o in copies.items() if kept[c] != kept[o]]
    assert len(found) >= len(copies) // 2, f"found {found}"
    for copy in found:
        assert kept[copies[copy]] and not kept[copy], (copy, copies[copy])
    assert all(kept[c] or kept[copies[c]] for c in copies)  # never both of a pair gone
    assert json.loads((out / "pipeline.json").read_text())["method"]["keep_policy"] == "quality"
