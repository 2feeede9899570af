"""`deduplicate`, the Python API: the same keep lists as `dedup run`, counts that add up, the
planted duplicates found, usage errors raised before any work, a quiet second call.

One run of each (the API in this process, the command in a subprocess at the same time)
on the demo generator's 123 images, one epoch on the CPU: about 40 s on 2 shared cores.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout

import polars as pl
import pytest
from conftest import DEDUP
from polars.testing import assert_frame_equal

from dedup_assets import DedupResult, deduplicate
from dedup_assets.api import COUNT_COLUMNS, _config, option_names
from dedup_assets.cli import config_options
from dedup_assets.config import ConfigError
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.core.quality.planting import read_ground_truth
from dedup_assets.interrupts import check_stop

THRESHOLDS = ["0.95", "1%"]
# The fast settings of test_pipeline's tiny run; a wide kurtosis tolerance, since the gate's
# verdict on classes of 20 images is chance (see there). `components` is the option's name
# of the setting n_components, as `dedup run --components` spells it.
OPTIONS = {
    "thresholds": THRESHOLDS,
    "epochs": 1,
    "device": "cpu",
    "precision": "fp32",
    "batch_size": 32,
    "components": 8,
    "kurtosis_tolerance": 1.0,
    "executor": "in_process",
}
CLI_OPTIONS = [
    "--thresholds=0.95,1%",
    "--epochs=1",
    "--device=cpu",
    "--precision=fp32",
    "--batch-size=32",
    "--components=8",
    "--kurtosis-tolerance=1.0",
    "--executor=in_process",
]
RUN_COLUMNS = ["decided_at", "decided_in"]  # when and in which run: differ between runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    demo = generate_demo_dataset(base / "source", seed=3, per_class=16, duplicate_fraction=0.25)
    env = {
        k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("DEDUP_")
    }
    command = [str(DEDUP), "run", "--source", str(demo.root), "--output", str(base / "cli")]
    with open(base / "cli.log", "w") as cli_log:  # the command runs while the API does
        cli = subprocess.Popen([*command, *CLI_OPTIONS], stdout=cli_log, stderr=cli_log, env=env)
    home_before = os.environ.get("DAGSTER_HOME")
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            result = deduplicate(demo.root, output=base / "api", **OPTIONS)
    finally:
        status = cli.wait(timeout=600)
    return {
        "base": base,
        "demo": demo,
        "result": result,
        "printed": out.getvalue() + err.getvalue(),
        "home_before": home_before,
        "home_after": os.environ.get("DAGSTER_HOME"),
        "cli_status": status,
        "cli_log": (base / "cli.log").read_text(),
    }


def test_the_keep_lists_are_those_dedup_run_writes(runs):
    assert runs["cli_status"] == 0, runs["cli_log"]
    result = runs["result"]
    assert isinstance(result, DedupResult) and result.ok and not result.nothing_changed
    assert list(result.keep_lists) == THRESHOLDS
    cli = OutputLayout(runs["base"] / "cli")
    for t in THRESHOLDS:
        written = pl.read_parquet(cli.keep_list(t)).drop(RUN_COLUMNS)
        assert_frame_equal(result.keep_lists[t].drop(RUN_COLUMNS), written)


def test_the_planted_duplicates_are_found(runs):
    result, demo = runs["result"], runs["demo"]
    pairs = read_ground_truth(demo.ground_truth)
    assert len(pairs) == sum(demo.copies_per_class.values())
    planted = {f"{p.class_name}/{name}" for p in pairs for name in (p.original, p.copy)}
    for t in THRESHOLDS:
        keep = result.keep_lists[t]
        row = {r["path"]: r for r in keep.iter_rows(named=True)}
        split = []  # the pairs of which exactly one image is kept
        for p in pairs:
            a, b = row[f"{p.class_name}/{p.original}"], row[f"{p.class_name}/{p.copy}"]
            if a["kept"] != b["kept"]:
                split.append(p)
            if "__dup_exact" in p.copy:  # byte-identical: gone at every threshold, as exact
                removed, kept = (b, a) if a["kept"] else (a, b)
                assert p in split and removed["match"] == "exact"
                assert removed["duplicate_of"] == kept["image_id"]
        # Measured on this data: 24 of 26 pairs at 0.95, 26 of 26 at 1%, nothing else removed.
        assert len(split) >= 0.8 * len(pairs), f"T={t}: {len(split)} of {len(pairs)} found"
        others = keep.filter(~pl.col("kept") & ~pl.col("path").is_in(sorted(planted)))
        assert others.height <= 1, f"T={t}: removed outside the planted pairs: {others}"


def test_the_counts_add_up(runs):
    result = runs["result"]
    counts = result.counts
    assert counts["threshold"].to_list() == THRESHOLDS
    for row in counts.iter_rows(named=True):
        keep = result.keep_lists[row["threshold"]]
        assert row["kept"] + row["removed"] == row["images"] == keep.height == result.images
        assert row["kept"] == keep["kept"].sum()
        assert row["exact_copies"] == (keep["match"] == "exact").sum() >= 2  # 2 planted
        assert row["exact_copies"] + row["near_duplicates"] == row["removed"]  # no override
        assert row["overrides"] == row["removed_by_override"] == 0
        assert (row["allowed_false"] is None) == (not row["threshold"].endswith("%"))
    lines = repr(result).splitlines()
    columns = list(COUNT_COLUMNS[1:-1])  # as repr shows them, between T and allowed false
    for row in counts.iter_rows(named=True):
        shown = next(line.split() for line in lines if line.split()[:1] == [row["threshold"]])
        assert shown[1:8] == [f"{row[c]:,}" for c in columns]
        assert f"| {row['threshold']} | {row['images']:,} | {row['kept']:,} |" in (
            result._repr_markdown_()
        )


def test_the_paths_timings_and_checks(runs):
    result, base = runs["result"], runs["base"]
    layout = OutputLayout(base / "api")
    assert result.output == layout.root and result.source == runs["demo"].root
    assert result.keep_list_paths == {t: layout.keep_list(t) for t in THRESHOLDS}
    assert result.clean_copies == {t: layout.clean_dir(t) for t in THRESHOLDS}
    for t, folder in result.clean_copies.items():
        files = {
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".latent-dedup-clean")
        }
        assert files == set(result.keep_lists[t].filter("kept")["path"])
    assert result.summary_report == layout.summary and layout.summary.is_file()
    assert result.review_page in (None, layout.review_index)
    assert result.stages and result.timings.height == len(result.stages)
    assert result.timings["seconds"].sum() == pytest.approx(result.outcome.total_seconds)
    assert not result.failures and not result.skipped
    assert all(c.severity == "WARN" for c in result.checks)


def test_quiet_by_default_and_the_process_left_as_it_was(runs):
    assert runs["printed"] == ""
    assert runs["home_after"] == runs["home_before"]  # $DAGSTER_HOME: no later call's


def test_a_second_call_says_nothing_changed_and_returns_the_same_tables(runs, capfd):
    first, lines = runs["result"], []
    again = deduplicate(first.source, output=first.output, log=lines.append, **OPTIONS)
    assert again.ok and again.nothing_changed and "nothing changed" in repr(again)
    assert any(line.startswith("nothing changed") for line in lines)
    for t in THRESHOLDS:
        assert_frame_equal(again.keep_lists[t], first.keep_lists[t])
    assert_frame_equal(again.counts, first.counts)
    assert capfd.readouterr() == ("", "")


def test_every_option_of_dedup_run_is_a_keyword():
    import inspect

    from dedup_assets.cli import RUN_FLAGS

    keywords = option_names()
    for option in config_options("run"):
        if option.name != "source":  # the first argument
            short = option.flag.removeprefix("--").replace("-", "_")
            assert keywords[option.name] == keywords[short] == (option.group, option.name)
    # and every flag (`force=True` raised "unknown option 'force'")
    params = inspect.signature(deduplicate).parameters
    assert {f.removeprefix("--") for f in RUN_FLAGS} <= set(params)


@pytest.mark.parametrize(
    ("given", "keys"),
    [
        (0.95, ("0.95",)),
        ([0.9, "1%"], ("0.9", "1%")),
        ((0.97,), ("0.97",)),
        ("0.95,1%", ("0.95", "1%")),
    ],
)
def test_thresholds_as_a_number_a_list_or_text(tmp_path, given, keys):
    """`thresholds=0.95` is one threshold (it raised a TypeError, not iterable)."""
    assert _config(None, tmp_path / "out", {"thresholds": given}).thresholds == keys


def test_no_source_is_the_demo_dataset_as_dedup_demo_makes_it(tmp_path):
    config = _config(None, tmp_path / "out", {"space": "raw", "epochs": None})
    assert config.source == "" and config.demo_source == tmp_path / "out" / "demo_dataset"
    assert config.method.similarity_space == "raw" and config.method.epochs == 0  # default
    with pytest.raises(ValueError, match="source is empty"):
        _config("", tmp_path / "out", {})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"thresholds": ["1.5"]}, "thresholds"),
        ({"epochs": -1}, "epochs"),
        ({"space": "nope"}, "similarity_space"),
        ({"epoch": 1}, "unknown option 'epoch' (did you mean epochs?)"),
        ({"space": "raw", "similarity_space": "raw"}, "same option"),
        ({"executor": "k8s"}, "executor k8s"),
        # a flag or log of the wrong type: "no" is truthy (it retrained), log=5 failed after
        # the output folder was made
        ({"retrain": "no"}, "retrain must be True or False, got 'no'"),
        ({"verbose": 1}, "verbose must be True or False"),
        ({"log": 5}, "log must be a callable taking a line"),
    ],
)
def test_a_bad_option_raises_before_any_work(runs, options, message):
    output = runs["base"] / "never"
    with pytest.raises(ConfigError, match=re.escape(message)):
        deduplicate(runs["demo"].root, output=output, **options)
    assert not output.exists()


def test_a_source_or_output_that_is_no_path_raises_a_config_error(runs):
    output = runs["base"] / "never"
    with pytest.raises(ConfigError, match="source must be a path"):
        deduplicate(123, output=output)
    with pytest.raises(ConfigError, match="output must be a path"):
        deduplicate(runs["demo"].root, output=["x"])
    assert not output.exists()


def test_the_output_of_another_tool_is_refused(runs):
    theirs = runs["base"] / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not made by latent-dedup"):
        deduplicate(runs["demo"].root, output=theirs, **OPTIONS)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    # An output that cannot be made: refused as the command refuses it (exit 2), not a raw
    # FileNotFoundError / NotADirectoryError from deep inside.
    a_file = runs["base"] / "a_file"
    a_file.write_text("x")
    for output in ("/proc/latent-dedup-out", a_file / "out"):
        with pytest.raises(ConfigError, match=f"output {output} cannot be written"):
            deduplicate(runs["demo"].root, output=output, **OPTIONS)


@pytest.fixture
def sigint(request):
    """SIGINT set to `request.param` (Python's default handler: a foreground process; SIG_IGN:
    one started in the background without job control) for the test, then as it was. A
    suite started as `pytest &` runs with SIGINT ignored, and the API keeps it so: the
    Ctrl-C test failed that way twice, its run never stopped."""
    started = signal.signal(signal.SIGINT, request.param)
    yield request.param
    signal.signal(signal.SIGINT, started)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
@pytest.mark.parametrize("sigint", [signal.default_int_handler], indirect=True)
def test_ctrl_c_raises_keyboard_interrupt_and_restores_the_handlers(runs, sigint):
    handler = signal.getsignal(signal.SIGINT)
    seen: list[str] = []

    def press_ctrl_c(line: str) -> None:
        seen.append(line)
        if line.startswith("[catalog] starting"):
            os.kill(os.getpid(), signal.SIGINT)

    try:
        deduplicate(runs["demo"].root, output=runs["base"] / "stopped", log=press_ctrl_c, **OPTIONS)
    except KeyboardInterrupt as exc:
        assert re.search(r"SIGINT during \[catalog\]", str(exc)), str(exc)
    else:  # what the run said, and the handler it started with: why it was not stopped
        pytest.fail(f"not stopped (SIGINT handler {handler!r}); the run said:\n" + "\n".join(seen))
    assert signal.getsignal(signal.SIGINT) == handler
    check_stop()  # the stop was that call's: a later run in this process starts unstopped


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
@pytest.mark.parametrize("sigint", [signal.SIG_IGN], indirect=True)
def test_a_process_started_ignoring_sigint_is_not_stopped_by_it(runs, sigint):
    """A process started with SIGINT ignored (a background job) keeps ignoring it: the
    run goes on to the end and the handler stays SIG_IGN."""

    def press_ctrl_c(line: str) -> None:
        if line.startswith("[catalog] starting"):
            os.kill(os.getpid(), signal.SIGINT)

    result = deduplicate(
        runs["demo"].root, output=runs["base"] / "ignored", log=press_ctrl_c, **OPTIONS
    )
    assert result.ok and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    check_stop()


UNGUARDED = """
from dedup_assets import deduplicate
deduplicate({source!r}, output={output!r}, thresholds="0.95", epochs=1, device="cpu",
            precision="fp32", executor="processes", parallel=2)
"""
GUARDED = """
from dedup_assets import deduplicate
if __name__ == "__main__":
    deduplicate({source!r}, output={output!r}, thresholds="0.95", epochs=1, device="cpu",
                precision="fp32", executor="processes", parallel=2)
"""


def test_a_script_calling_it_unguarded_with_workers_is_told_why(runs, tmp_path):
    """Python starts each worker by running the calling script again: a call at a script's
    top level ran again in every worker, and the run broke with a long traceback ending in
    BrokenProcessPool. The worker refuses the call and the caller names the guard."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(source=str(runs["demo"].root), output=str(tmp_path / "out")))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 1
    assert "deduplicate() was called while a worker process started" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: a worker process of the run ended abruptly")
    assert f"if {script} calls deduplicate() at its top level" in last
    script.write_text(GUARDED.format(source=str(runs["demo"].root), output=str(tmp_path / "out")))
    again = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env
    )
    assert again.returncode == 0, again.stderr


def test_the_counts_add_up_with_overrides(tmp_path):
    """removed = exact_copies + near_duplicates + removed_by_override, as the last screen
    counts "N by your overrides"; `overrides` counts every image an override decided (one
    kept, one removed here), which did not add up with the others before."""
    from dedup_assets.api import _counts
    from dedup_assets.core.data.layout import OutputLayout

    keep = pl.DataFrame(
        {
            "kept": [True, False, False, True, False],
            "match": [None, "exact", "near", None, "override"],
            "decided_by": ["model", "exact", "model", "override", "override"],
        }
    )
    layout = OutputLayout(tmp_path)
    layout.keep_list("0.95").parent.mkdir(parents=True)
    keep.write_parquet(layout.keep_list("0.95"))  # a keep list file without a record
    row = dict(zip(COUNT_COLUMNS, _counts(layout, "0.95", keep), strict=True))
    assert (
        row["removed"]
        == 3
        == row["exact_copies"] + row["near_duplicates"] + row["removed_by_override"]
    )
    assert row["removed_by_override"] == 1 and row["overrides"] == 2


def test_results_are_found_by_any_spelling_of_a_threshold(runs):
    """A call given `thresholds="0.950,1.0%"` gets keys `0.95`, `1%` (one spelling); its
    results are found by the spelling it was given too, not a KeyError."""
    result = runs["result"]
    assert result.keep_lists["0.950"] is result.keep_lists["0.95"]
    assert "1.0%" in result.keep_lists and "0.96" not in result.keep_lists
    assert result.clean_copies.get("1.0%") == result.clean_copies["1%"]
    assert result.keep_list_paths["0.950"].name == "0.95.parquet"
    with pytest.raises(KeyError):
        result.keep_lists["0.97"]


def test_a_result_says_which_outputs_its_thresholds_no_longer_keep_up_to_date(runs, tmp_path):
    """A call without a threshold an earlier run had leaves that threshold's keep list and
    clean copy as they were, marked NOT_UPDATED.txt; its result says so, as the command's
    last screen does."""
    import shutil

    output = tmp_path / "api"
    shutil.copytree(runs["base"] / "api", output)
    options = {**OPTIONS, "thresholds": "0.95"}
    result = deduplicate(runs["demo"].root, output=output, **options)
    assert result.outcome.unlisted_clean == ["1%"]
    assert "NOTE  keep_lists/1% and clean/1% not updated: 1% is not among the thresholds" in (
        repr(result)
    )
    assert (output / "keep_lists" / "1%.NOT_UPDATED.txt").is_file()


def test_force_looks_at_every_file_of_the_clean_copies(runs):
    """`force=True`, as `dedup run --force`: a file deleted from a clean copy is copied
    again; without it the copy is judged by its manifest (the call refused `force`). The
    forced call is made as from a Jupyter cell (a running asyncio loop): no RuntimeWarning
    from Dagster's cleanup of its own loop ("coroutine ... shutdown_asyncgens was never
    awaited", one per step on stderr) reaches the caller."""
    import asyncio
    import warnings

    out = runs["base"] / "api"
    clean = out / "clean" / THRESHOLDS[0]
    victim = sorted(p for p in clean.rglob("*") if p.is_file() and not p.name.startswith("."))[0]
    victim.unlink()
    plain = deduplicate(runs["demo"].root, output=out, **OPTIONS)
    assert plain.ok and not victim.exists()

    async def cell():
        return deduplicate(runs["demo"].root, output=out, force=True, **OPTIONS)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forced = asyncio.run(cell())
    assert forced.ok and victim.is_file()
    assert not [w for w in caught if "shutdown_asyncgens" in str(w.message)], caught


def test_a_broken_pool_from_a_script_on_standard_input_is_told_what_to_do(monkeypatch):
    """`python - < script.py` with workers: each worker starts by running `<stdin>`, which is
    no file; the advice was to add the `__main__` guard the script already had."""
    from dedup_assets.api import _broken_pool_words

    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__file__", "<stdin>", raising=False)
    words = _broken_pool_words()
    assert "<stdin> is no file it can run (a script read from standard input)" in words
    assert 'executor="in_process"' in words and "__main__" not in words
    monkeypatch.setattr(main, "__file__", __file__, raising=False)
    assert 'call it under `if __name__ == "__main__":`' in _broken_pool_words()
