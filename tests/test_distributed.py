"""Class runs on other processes and on a real dask.distributed cluster give the answer of
the in-process run, and land on every worker."""

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from conftest import run_dedup
from distributed import LocalCluster

from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.names import THRESHOLDS_AT_ONCE_TAG, WORKER_TAG

# Four classes of 20 images: the kurtosis gate's verdict there is chance (test_pipeline says
# why), and these tests are about where class runs execute, so it runs with a wide tolerance.
FAST = (
    "--epochs",
    "1",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--thresholds",
    "0.9,2%",
    "--kurtosis-tolerance",
    "1.0",
)
WORKER = re.compile(
    r"^\[classes: [^\]]*\] (\S+)(?: \.\. (\S+) \(\d+ classes\))?: steps ran on (.+)$", re.M
)
CLASSES = ["desert", "farmland", "forest", "road", "urban", "water"]


def placed_classes(log: str) -> dict[str, str]:
    """{class: worker} from the log's lines on the class runs (a run covers a range of
    classes, named by its first and last)."""
    out = {}
    for start, end, worker in WORKER.findall(log):
        for key in CLASSES[CLASSES.index(start) : CLASSES.index(end or start) + 1]:
            out[key] = worker
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "src"
    generate_demo_dataset(root, seed=5, per_class=16, duplicate_fraction=0.25)
    for extra in ("desert", "road"):  # four classes: two rounds on two workers
        shutil.rmtree(root / extra)
    return root


@pytest.fixture(scope="module")
def in_process(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "in_process"
    done = run_dedup("run", "--source", str(source), "--output", str(out), *FAST)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def keep_lists(out):
    return {
        t: pl.read_parquet(out / "keep_lists" / f"{t}.parquet")
        .sort("path")
        .select("path", "kept", "duplicate_of", "cosine")
        for t in ("0.9", "2%")
    }


def assert_same_decisions(out, reference):
    mine, theirs = keep_lists(out), keep_lists(reference)
    for t in mine:
        assert mine[t]["path"].to_list() == theirs[t]["path"].to_list()
        assert mine[t]["kept"].to_list() == theirs[t]["kept"].to_list(), t
        assert mine[t]["duplicate_of"].to_list() == theirs[t]["duplicate_of"].to_list(), t
    assert (~mine["0.9"]["kept"]).sum() > 0, "the planted duplicates are found"


def test_dask_cluster_runs_every_class_on_both_workers(source, in_process, tmp_path):
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        workers = set(cluster.scheduler_info["workers"])
        assert len(workers) == 2
        out = tmp_path / "dask"
        done = run_dedup(
            "run", "--source", str(source), "--output", str(out), *FAST,
            "--executor", "dask", "--dask-address", cluster.scheduler_address, "--parallel", "2",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)  # the log of the run, with the worker of every class
    assert "executor dask: up to 2 class run(s) at once on" in done.stdout
    placed = placed_classes(done.stdout)
    assert sorted(placed) == ["farmland", "forest", "urban", "water"]
    assert set(placed.values()) == workers, "the class runs landed on both workers"
    assert_same_decisions(out, in_process)


def test_local_processes_give_the_in_process_answer(source, in_process, tmp_path):
    out = tmp_path / "processes"
    done = run_dedup(
        "run", "--source", str(source), "--output", str(out), *FAST,
        "--executor", "processes", "--parallel", "2", "--thresholds", "0.9,0.95,2%",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    placed = placed_classes(done.stdout)
    assert len(placed) == 4 and len(set(placed.values())) == 2, placed
    assert_same_decisions(out, in_process)
    # The first threshold runs here, its cross-class join on a pool process meanwhile; the
    # others, two at once, on the pool's processes.
    assert re.search(
        r"^\[thresholds: [^\]]*\] starting: 4 run\(s\), 2 at once \(processes executor\); "
        r"cross_class_duplicates of 0\.9 on a worker meanwhile$",
        done.stdout,
        re.M,
    ), done.stdout
    on_pool = dict(
        re.findall(r"^\[thresholds: [^\]]*\] (\S+): steps ran on (.+)$", done.stdout, re.M)
    )
    assert sorted(on_pool) == ["0.9", "0.95", "2%"], done.stdout
    assert "?" not in on_pool.values() and set(on_pool.values()) <= set(placed.values())
    for t in ("0.9", "2%"):  # what each threshold wrote is what the in-process run wrote
        for table in (f"cross_class/{t}.parquet", f"keep_lists/{t}.parquet"):
            assert (
                pl.read_parquet(out / table)
                .sort("path" if "keep" in table else "path_a")[:, :4]
                .equals(
                    pl.read_parquet(in_process / table).sort(
                        "path" if "keep" in table else "path_a"
                    )[:, :4]
                )
            ), table
        mine = sorted(p.relative_to(out / "clean" / t) for p in (out / "clean" / t).rglob("*.png"))
        theirs = sorted(
            p.relative_to(in_process / "clean" / t)
            for p in (in_process / "clean" / t).rglob("*.png")
        )
        assert mine == theirs and len(mine) > 0, t
    summary = (out / "reports" / "summary.md").read_text()
    assert "| 0.95 |" in summary and "| 2% |" in summary
    # The other thresholds' keep lists and reports started on the pool while the first
    # threshold ran here (or, once that ran faster than the pool could take them all, with
    # the pool full when it ended: they never waited for it); their cross-class tables once
    # its cross-class join had ended (they read it). Then the clean copies, the first here
    # and the others once it had ended (they hard-link from its copy), the summary on a
    # pool process meanwhile.
    assert re.search(r"^\[thresholds: [^\]]*\] 6 run\(s\) in ", done.stdout, re.M), done.stdout
    assert re.search(r"^\[clean copies\] 3 run\(s\) in ", done.stdout, re.M), done.stdout
    summary_on = re.findall(r"^\[summary, [^\]]*\] steps ran on (.+)$", done.stdout, re.M)
    assert len(summary_on) == 1 and summary_on[0] in set(placed.values()), done.stdout
    with dg.DagsterInstance.from_config(str(out / ".dagster")) as instance:
        runs = {}
        for record in instance.get_run_records(
            dg.RunsFilter(job_name="threshold_job", statuses=[dg.DagsterRunStatus.SUCCESS])
        ):
            run = record.dagster_run
            assets = frozenset(k.to_user_string() for k in run.asset_selection or [])
            runs[(run.tags["dagster/partition"], assets)] = record
    first_here = runs[("0.9", frozenset({"keep_list", "kurtosis_report"}))]
    first_join = runs[("0.9", frozenset({"cross_class_duplicates"}))]
    first_copy = runs[("0.9", frozenset({"clean_dataset"}))]
    earlies = [runs[(t, frozenset({"keep_list", "kurtosis_report"}))] for t in ("0.95", "2%")]
    assert min(r.start_time for r in earlies) < first_here.end_time
    for t in ("0.95", "2%"):
        early = runs[(t, frozenset({"keep_list", "kurtosis_report"}))]
        copy = runs[(t, frozenset({"clean_dataset"}))]
        pairs = runs[(t, frozenset({"cross_class_duplicates"}))]
        assert first_copy.end_time <= copy.start_time, t
        assert early.end_time <= copy.start_time, t
        assert first_join.end_time <= pairs.start_time, t
    assert len(runs) == 9, sorted(runs)  # the first threshold: keep list and report, copy apart
    with dg.DagsterInstance.from_config(str(out / ".dagster")) as instance:
        (summary_run,) = instance.get_run_records(dg.RunsFilter(job_name="summary_job"))
    # The summary started before the last clean copy had ended: it reads none of them.
    assert summary_run.start_time < max(
        runs[(t, frozenset({"clean_dataset"}))].end_time for t in ("0.9", "0.95", "2%")
    )
    # Each report, run at the same time as the others, refits its own threshold only.
    for t, assets in runs:
        if "kurtosis_report" in assets:
            assert runs[(t, assets)].dagster_run.tags[THRESHOLDS_AT_ONCE_TAG] == "1", t


def test_a_blocking_verdict_of_an_early_run_holds_back_what_is_downstream():
    """What a failed blocking check of a threshold's early run (keep list, report) holds
    back of its later run: what Dagster would have skipped had they been one run."""
    from dedup_assets.config import PipelineConfig
    from dedup_assets.definitions import build_definitions
    from dedup_assets.runner import _downstream

    config = PipelineConfig.build(
        source=str(Path(__file__).parent), output="/tmp/unused-out", thresholds=["0.9"]
    )
    job = build_definitions(config).resolve_job_def("threshold_job")
    assert _downstream(job, {"keep_list"}) == {"kurtosis_report", "clean_dataset"}
    assert _downstream(job, {"kurtosis_report"}) == {"clean_dataset"}
    assert _downstream(job, {"cross_class_duplicates"}) == set()
    assert _downstream(job, set()) == set()


@pytest.mark.parametrize("at_once", [False, True])
def test_a_report_refits_every_thresholds_classes_unless_they_run_at_once(
    source, in_process, tmp_path, at_once, monkeypatch
):
    """One threshold's report, in a run of its own: it refits the other thresholds' classes
    too (their reports then find them cached), unless its run says the thresholds' reports
    run at the same time (THRESHOLDS_AT_ONCE_TAG), when each refits its own only."""
    from dedup_assets.assets.reports import REFIT_CACHE
    from dedup_assets.config import PipelineConfig
    from dedup_assets.core.data.artifacts import (
        STORED_READS,
        class_labels,
        read_keep_list,
        read_latents,
    )
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.quality.kurtosis_report import refit_kurtosis
    from dedup_assets.definitions import build_definitions
    from dedup_assets.dispatch import execute
    from dedup_assets.runner import instance_for

    out = tmp_path / "out"
    shutil.copytree(in_process, out, symlinks=True)
    cache = out / "reports" / REFIT_CACHE
    cache.unlink(missing_ok=True)
    _without_stored_refits(out)  # keep lists written before their classes stored a refit
    config = PipelineConfig.build(
        source=str(source), output=str(out), thresholds=["0.9", "2%"], device="cpu",
        precision="fp32", method={"kurtosis_tolerance": 1.0},
    )  # fmt: skip
    job = build_definitions(config).resolve_job_def("threshold_job")
    tags = {THRESHOLDS_AT_ONCE_TAG: "1"} if at_once else {}
    reads = Counter()
    keep = STORED_READS.get

    def counted(path, what, *args):
        reads[(Path(path).name, what)] += 1
        return keep(path, what, *args)

    monkeypatch.setattr(STORED_READS, "get", counted)
    with instance_for(out) as instance:
        result = execute(job, "0.9", instance, tags, {}, ["kurtosis_report"])
    assert result.success
    refitted = pl.read_parquet(cache)
    assert set(refitted["threshold"].to_list()) == ({"0.9"} if at_once else {"0.9", "2%"})
    # Each class's latents are read once for the refits, their image ids from that read.
    layout = OutputLayout(out)
    names = class_labels(layout)
    keys = sorted(names)
    assert {(layout.latents(k).name, "latents") for k in keys} <= set(reads)
    assert all(reads[(layout.latents(k).name, "latents")] == 1 for k in keys), reads
    assert not [r for r in reads if r[1] == "latent ids"], reads
    # The refitted kurtosis is that of the kept latents, class by class.
    kept_ids = read_keep_list(layout.keep_list("0.9")).filter(pl.col("kept"))["image_id"]
    latents, masks = {}, {}
    for k in keys:
        table, x = read_latents(layout.latents(k))
        latents[names[k]] = x
        masks[names[k]] = np.isin(table["image_id"].to_numpy(), kept_ids.to_numpy())
    expected = refit_kurtosis(latents, masks)
    mine = refitted.filter(pl.col("threshold") == "0.9").sort("class")
    assert mine["class"].to_list() == expected["class"].to_list()
    for c in (1, 2, 3):
        assert np.allclose(mine[f"r{c}_after"], expected[f"r{c}_after"], equal_nan=True)
    if not at_once:  # the other threshold's rows, from its class keep lists, are right too
        kept_ids = read_keep_list(layout.keep_list("2%")).filter(pl.col("kept"))["image_id"]
        masks = {
            names[k]: np.isin(read_latents(layout.latents(k))[0]["image_id"].to_numpy(), kept_ids)
            for k in keys
        }
        other = refitted.filter(pl.col("threshold") == "2%").sort("class")
        expected = refit_kurtosis(latents, masks)
        for c in (1, 2, 3):
            assert np.allclose(other[f"r{c}_after"], expected[f"r{c}_after"], equal_nan=True)


def _without_stored_refits(out: Path) -> None:
    """Every class keep list rewritten as before the classes stored their refit: the same
    table and provenance, no refit in its metadata."""
    from dedup_assets.core.data.artifacts import STORED_READS, read_provenance, write_table

    for path in sorted((out / "keep_lists" / "by_class").rglob("*.parquet")):
        write_table(pl.read_parquet(path), path, read_provenance(path))
    STORED_READS.clear()


def test_a_report_reads_each_class_s_refit_from_its_keep_list(
    source, in_process, tmp_path, monkeypatch
):
    """The classes stage stores each class's refit in its keep list at every threshold:
    the report reads no latents and writes no refit cache, and its refitted regressions are
    those of a report that refits every class itself from the latents."""
    from dedup_assets.assets.reports import REFIT_CACHE
    from dedup_assets.config import PipelineConfig
    from dedup_assets.core.data.artifacts import (
        STORED_READS,
        class_labels,
        read_keep_list,
        read_latents,
        read_table_metadata,
    )
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.quality.kurtosis_report import refit_row, stored_refit
    from dedup_assets.definitions import build_definitions
    from dedup_assets.dispatch import execute
    from dedup_assets.runner import instance_for

    summaries = {}
    for stored in (True, False):
        out = tmp_path / f"out_{stored}"
        shutil.copytree(in_process, out, symlinks=True)
        (out / "reports" / REFIT_CACHE).unlink(missing_ok=True)
        layout = OutputLayout(out)
        names = class_labels(layout)
        if stored:  # each class keep list's refit is that of its kept latents
            for t in ("0.9", "2%"):
                for k in names:
                    path = layout.class_keep_list(t, k)
                    table, x = read_latents(layout.latents(k))
                    kept = read_keep_list(path)
                    assert kept["image_id"].to_list() == table["image_id"].to_list()
                    np.testing.assert_array_equal(
                        stored_refit(read_table_metadata(path)),
                        refit_row(x, kept["kept"].to_numpy()),
                    )
        else:
            _without_stored_refits(out)
        STORED_READS.clear()
        config = PipelineConfig.build(
            source=str(source), output=str(out), thresholds=["0.9", "2%"], device="cpu",
            precision="fp32", method={"kurtosis_tolerance": 1.0},
        )  # fmt: skip
        job = build_definitions(config).resolve_job_def("threshold_job")
        reads = Counter()
        keep = STORED_READS.get

        def counted(path, what, *args, reads=reads, keep=keep):
            reads[what] += 1
            return keep(path, what, *args)

        monkeypatch.setattr(STORED_READS, "get", counted)
        with instance_for(out) as instance:
            assert execute(job, "0.9", instance, {}, {}, ["kurtosis_report"]).success
        monkeypatch.undo()
        assert (reads["latents"] == 0) == stored, reads
        assert (out / "reports" / REFIT_CACHE).exists() != stored
        summary = json.loads((out / "reports" / "0.9" / "summary.json").read_text())
        assert summary["regressions_refit"]
        summaries[stored] = summary["regressions_refit"]
    assert summaries[True] == summaries[False]


def test_an_absent_scheduler_is_named(source, tmp_path):
    done = run_dedup(
        "run", "--source", str(source), "--output", str(tmp_path / "o"), *FAST,
        "--executor", "dask", "--dask-address", "tcp://127.0.0.1:9", timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no dask scheduler answers at tcp://127.0.0.1:9" in done.stderr


def test_auto_executor_rule():
    from dedup_assets.engines import (
        AUTO_MAX_CLASS_IMAGES,
        AUTO_MIN_CLASSES,
        AUTO_MIN_IMAGES,
        Executor,
        resolve_auto,
    )

    many = [AUTO_MIN_IMAGES // 10] * 10  # EuroSAT-like: many images, small classes
    assert resolve_auto(Executor.auto, 1, many, cores=2)[:2] == (Executor.processes, 2)
    assert resolve_auto(Executor.auto, 1, many, cores=16)[:2] == (Executor.processes, 2)
    assert resolve_auto(Executor.auto, 3, many, cores=16)[:2] == (Executor.processes, 3)
    assert resolve_auto(Executor.auto, 1, many, cores=1)[:2] == (Executor.in_process, 1)
    small = resolve_auto(Executor.auto, 1, [100, 200], cores=2)
    assert small == (Executor.in_process, 1, "300 files (< 20,000) in 2 classes (< 500)")
    # Many classes pay for the workers whatever their size (a class's fixed cost).
    assert resolve_auto(Executor.auto, 1, [1] * AUTO_MIN_CLASSES, cores=2) == (
        Executor.processes,
        2,
        "500 classes, at most 1 a class",
    )
    assert resolve_auto(Executor.auto, 1, [1] * (AUTO_MIN_CLASSES - 1), cores=2)[0] == (
        Executor.in_process
    )
    assert resolve_auto(Executor.auto, 1, [1] * AUTO_MIN_CLASSES, cores=1)[0] == (
        Executor.in_process
    )
    huge = [1] * AUTO_MIN_CLASSES + [AUTO_MAX_CLASS_IMAGES + 1]
    assert resolve_auto(Executor.auto, 1, huge, cores=2)[0] == Executor.in_process
    big = [AUTO_MAX_CLASS_IMAGES + 1, 10]  # a class too big to run two at once
    assert resolve_auto(Executor.auto, 1, big, cores=2)[0] == Executor.in_process
    assert resolve_auto(Executor.auto, 1, [], cores=2)[0] == Executor.in_process
    # An executor asked for by name is used as asked, whatever the data.
    assert resolve_auto(Executor.in_process, 1, many, cores=2) == (Executor.in_process, 1, "")
    assert resolve_auto(Executor.processes, 4, [1], cores=2) == (Executor.processes, 4, "")


def test_auto_keeps_many_classes_in_process_with_an_instance_in_memory(tmp_path, monkeypatch):
    """With many classes `auto` picks workers, except for a caller's in-memory Dagster
    instance (a notebook's, a test's): workers could not record their runs in it, so the
    run stays in process and says why; an executor asked for by name is left as asked."""
    from types import SimpleNamespace

    import dedup_assets.engines as engines
    from dedup_assets.config import PipelineConfig
    from dedup_assets.engines import AUTO_MIN_CLASSES, Executor
    from dedup_assets.runner import _choose_executor

    monkeypatch.setattr(engines.os, "cpu_count", lambda: 2)
    (tmp_path / "s").mkdir()
    config = PipelineConfig.build(source=str(tmp_path / "s"), output=str(tmp_path / "o"))
    listings = {f"c{i}": SimpleNamespace(files=1) for i in range(AUTO_MIN_CLASSES)}
    lines: list[str] = []
    shared = _choose_executor(config, listings, lines.append, shared=True)
    memory = _choose_executor(config, listings, lines.append, shared=False)
    assert shared.executor == Executor.processes and shared.parallel == 2
    assert lines[0] == "executor auto: processes, 2 at once (500 classes, at most 1 a class)"
    assert memory.executor == Executor.in_process and memory.parallel == 1
    assert lines[-1] == "executor auto: in_process (an instance in memory)"
    named = config.model_copy(update={"executor": Executor.processes, "parallel": 3})
    kept = _choose_executor(named, listings, lines.append, shared=False)
    assert kept.executor == Executor.processes and kept.parallel == 3


def test_auto_executor_uses_worker_processes_for_many_images(
    source, in_process, tmp_path, monkeypatch, capsys
):
    # The threshold lowered so the 82-file source counts as many: the default executor
    # then runs classes and thresholds on two local processes, with the in-process answer.
    import dedup_assets.engines as engines
    from dedup_assets.cli import main

    monkeypatch.setattr(engines, "AUTO_MIN_IMAGES", 10)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    out = tmp_path / "auto"
    code = main(["run", "--source", str(source), "--output", str(out), *FAST])
    log = capsys.readouterr().out
    assert code == 0, log
    assert re.search(
        r"^executor auto: processes, 2 at once \(82 files, at most 21 a class\)$", log, re.M
    ), log
    assert len(set(placed_classes(log).values())) == 2, log
    assert_same_decisions(out, in_process)


def test_auto_executor_keeps_small_data_in_process(source, tmp_path):
    done = run_dedup("run", "--source", str(source), "--output", str(tmp_path / "o"), *FAST)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "executor auto: in_process (82 files (< 20,000) in 4 classes (< 500))" in done.stdout
    assert "steps ran on" not in done.stdout


def test_a_step_outside_dask_is_named_by_host_and_pid_without_importing_dask():
    """`worker_name` off a Dask worker: host:pid, and `distributed` (0.46 s to import) is
    not imported to find that out; on a worker it is the worker's address (the cluster
    test above finds both workers' addresses in the run's log)."""
    script = (
        "import os, socket, sys\n"
        "from dedup_assets.names import worker_name\n"
        "print(worker_name() == f'{socket.gethostname()}:{os.getpid()}', "
        "'distributed' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_this_process_takes_its_share_of_blas_threads_beside_the_workers(
    source, tmp_path, monkeypatch
):
    """While the first threshold runs here and the workers run its cross-class join and the
    other thresholds' keep lists and reports, this process's numpy BLAS runs on its share of
    the cores (one of two), not its default of every core, whose threads spun against the
    workers'; its other runs, alone, keep the default."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import dedup_assets.engines as engines
    from dedup_assets import runner
    from dedup_assets.api import deduplicate

    def blas() -> int:
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    if not any(i["user_api"] == "blas" for i in threadpool_info()):
        pytest.skip("threadpoolctl finds no BLAS library in this numpy: nothing to limit")

    seen: list[tuple[str, int]] = []
    original = runner._Stages._run_here

    def recording(self, name, job_name, key, run_tags, assets):
        seen.append((name.split(":")[0], blas()))
        return original(self, name, job_name, key, run_tags, assets)

    monkeypatch.setattr(runner._Stages, "_run_here", recording)
    # A 2-core machine (os.cpu_count, patched for the whole process during the test) and
    # its BLAS default, whatever this test worker's.
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 2)
    with threadpool_limits(limits=2, user_api="blas"):
        result = deduplicate(
            source, output=tmp_path / "out", thresholds=["0.9", "2%"], epochs=1,
            device="cpu", precision="fp32", executor="processes", parallel=2,
            kurtosis_tolerance=1.0,
        )  # fmt: skip
        assert blas() == 2  # restored after the stage
    assert result.ok, result.failures
    assert ("thresholds", 1) in seen, seen
    assert [t for stage, t in seen if stage != "thresholds"] == [2] * (len(seen) - 1), seen


def test_auto_judges_an_incremental_run_by_every_class(source, in_process, tmp_path, monkeypatch):
    """New images in one class of a dataset: `auto` decides from every class's listing (the
    threshold stage covers every image, and the command started the workers' server from
    that listing), not from the one class the run decodes."""
    from dedup_assets import runner
    from dedup_assets.config import PipelineConfig

    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(source, src)
    shutil.copytree(in_process, out, symlinks=True)
    first = sorted(p for p in (src / "forest").iterdir() if p.suffix == ".png")[0]
    shutil.copy(first, src / "forest" / "new_copy.png")
    seen = {}

    class Chosen(Exception):
        pass

    def choose(config, listings, log, *, shared=True):
        seen.update(listings)
        raise Chosen

    monkeypatch.setattr(runner, "_choose_executor", choose)
    config = PipelineConfig.build(
        source=str(src), output=str(out), device="cpu", method={"epochs": 1}
    )
    with runner.instance_for(out) as instance, pytest.raises(Chosen):
        runner.run_pipeline(config, instance, log=lambda line: None)
    assert sorted(seen) == sorted(p.name for p in src.iterdir() if p.is_dir())
    assert len(seen) == 4  # the class with a new image and the three without


def test_one_threshold_starts_the_summary_from_within_its_run(source, in_process, tmp_path):
    """With workers and one threshold, its clean copy is made in its own run here, after
    its report, and the summary is started on a worker from within that run (once the
    report and the cross-class join beside it have ended: `test_early_summary.py`), not as a
    stage after it: same decisions, same clean copy, no run of the clean copy alone."""
    out = tmp_path / "processes"
    done = run_dedup(
        "run", "--source", str(source), "--output", str(out), *FAST,
        "--executor", "processes", "--parallel", "2", "--thresholds", "0.9",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    log = done.stdout
    stage = "[thresholds: keep lists, gates, reports, clean copies]"
    assert f"{stage} starting: 2 run(s); cross_class_duplicates of 0.9 on a worker" in log
    # started by `_EarlySummary` (a summary run after the stage would start in this process)
    assert "[summary, evaluation, review page] starting: 1 run(s) on a worker meanwhile" in log
    assert re.search(r"^\[summary, [^\]]*\] steps ran on \S+", log, re.M), log
    assert "[clean copies]" not in log, log
    mine = pl.read_parquet(out / "keep_lists" / "0.9.parquet").sort("path")
    theirs = pl.read_parquet(in_process / "keep_lists" / "0.9.parquet").sort("path")
    assert mine.select("path", "kept", "duplicate_of").equals(
        theirs.select("path", "kept", "duplicate_of")
    )
    copied = sorted(
        p.relative_to(out / "clean" / "0.9")
        for p in (out / "clean" / "0.9").rglob("*")
        if p.is_file() and not p.name.startswith(".")  # the copy's manifest
    )
    made = sorted(
        p.relative_to(in_process / "clean" / "0.9")
        for p in (in_process / "clean" / "0.9").rglob("*")
        if p.is_file() and not p.name.startswith(".")  # the copy's manifest
    )
    assert copied == made and len(copied) == int(mine["kept"].sum())
    assert "| 0.9 |" in (out / "reports" / "summary.md").read_text()
    with dg.DagsterInstance.from_config(str(out / ".dagster")) as instance:
        here = [
            r
            for r in instance.get_run_records(dg.RunsFilter(job_name="threshold_job"))
            if "clean_dataset" in {k.to_user_string() for k in r.dagster_run.asset_selection or []}
        ]
        assert len(here) == 1 and {
            k.to_user_string() for k in here[0].dagster_run.asset_selection
        } == {"keep_list", "kurtosis_report", "clean_dataset"}
        summaries = [
            r
            for r in instance.get_runs(dg.RunsFilter(job_name="summary_job"))
            if "dedup_summary" in {k.to_user_string() for k in r.asset_selection or []}
        ]
        assert len(summaries) == 1 and summaries[0].tags.get(WORKER_TAG)  # sent to a worker
        assert not here[0].dagster_run.tags.get(WORKER_TAG)  # the threshold's run: here
