"""A run killed (SIGKILL) in any stage: the next run sweeps what it left, marks its Dagster
run failed and gives the same keep lists as a run that was never interrupted."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import dagster as dg
import polars as pl
import pytest
import sqlalchemy.exc
from conftest import DEDUP, leftovers, run_dedup

from dedup_assets.config import PipelineConfig
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.runner import run_pipeline

ARGS = ("--thresholds", "0.95", "--epochs", "1", "--device", "cpu", "--precision", "fp32")
STAGES = ["catalog", "training", "classes", "thresholds", "summary"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    base = tmp_path_factory.mktemp("recovery")
    source = base / "src"
    generate_demo_dataset(source, seed=4, per_class=10, duplicate_fraction=0.3)
    for extra in ("desert", "road", "urban"):  # three classes keep every run short
        shutil.rmtree(source / extra)
    done = run_dedup("run", "--source", str(source), "--output", str(base / "out"), *ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    return {"source": source, "keep": pl.read_parquet(base / "out" / "keep_lists" / "0.95.parquet")}


def _own_env() -> dict[str, str]:
    """The environment for a run of its own: without a $DAGSTER_HOME an earlier in-process
    run of this worker left, so its instance is the output's (as a user's shell has it)."""
    return {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}


def _until_a_run_started(output, timeout: float = 30.0) -> None:
    """Until the output's instance holds a run STARTED (the stage's first: the earlier
    stages' runs have ended), polled: a fixed sleep after the stage's first line was
    sometimes the whole of a short stage."""
    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_config(str(output / ".dagster")) as instance:
        while time.monotonic() < deadline:
            try:
                if instance.get_runs(filters=started, limit=1):
                    return
            except sqlalchemy.exc.OperationalError:  # the command holds the database
                pass
            time.sleep(0.01)
    raise AssertionError(f"no run started in {output} within {timeout} s")


def _kill_in(stage: str, source, output, *, into_a_run: bool = True) -> str:
    """Start `dedup run` and SIGKILL its whole process group once `stage` has started (its
    first run started, unless not `into_a_run`: as soon as the stage's line is out)."""
    proc = subprocess.Popen(
        [str(DEDUP), "run", "--source", str(source), "--output", str(output), *ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=_own_env(),
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"[{stage}") and "starting" in line:
            if into_a_run:
                _until_a_run_started(output)  # into the stage's first run
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_in_each_stage_then_the_next_run_recovers(baseline, stage, tmp_path):
    output = tmp_path / "out"
    _kill_in(stage, baseline["source"], output)
    # The next run, in this process (what `dedup run` runs, without paying for another
    # interpreter): a model the killed run finished was written atomically, whole or
    # absent, so it is kept and only what was interrupted is redone.
    config = PipelineConfig.build(
        source=str(baseline["source"]),
        output=str(output),
        thresholds="0.95",
        device="cpu",
        precision="fp32",
        method={"epochs": 1},
    )
    instance = dg.DagsterInstance.from_config(str(output / ".dagster"))
    lines: list[str] = []
    outcome = run_pipeline(config, instance, log=lines.append)
    assert outcome.ok, (outcome.failures, outcome.skipped, outcome.check_failures)
    keep = pl.read_parquet(output / "keep_lists" / "0.95.parquet")
    when = ["decided_at", "decided_in"]  # the time and run of a decision differ, not the decision
    assert keep.drop(when).equals(baseline["keep"].drop(when)), f"keep list differs ({stage})"
    assert leftovers(output) == []
    running = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
    )
    assert running == [], "a run of the killed process is still marked as running"
    marked = [line for line in lines if "dead process" in line]
    failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert len(failed) == len(marked)


def _review_text(output) -> str:
    """Every file of the review page, as one text (the page and its paged data)."""
    return "".join(
        p.read_text(errors="replace")
        for p in sorted((output / "review").rglob("*"))
        if p.is_file() and p.suffix in (".html", ".js")
    )


def test_a_run_killed_in_its_summary_is_finished_by_the_next(baseline, tmp_path):
    """Killed among the summary, evaluation and review page, after every keep list was
    written: the next run makes those three again, not "nothing changed" (it said so, and
    the page went on without the new image)."""
    source, output = tmp_path / "src", tmp_path / "out"
    shutil.copytree(baseline["source"], source)
    done = run_dedup("run", "--source", str(source), "--output", str(output), *ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = sorted(p for p in source.iterdir() if p.is_dir())[0]
    original = sorted(folder.iterdir())[0]
    shutil.copyfile(original, folder / f"zz_copy{original.suffix}")
    # At the stage's line: a short stage's run may end before a look at the instance sees it
    _kill_in("summary", source, output, into_a_run=False)
    assert "zz_copy" not in _review_text(output)  # the page of the run before, as killed
    config = PipelineConfig.build(
        source=str(source),
        output=str(output),
        thresholds="0.95",
        device="cpu",
        precision="fp32",
        method={"epochs": 1},
    )
    lines: list[str] = []
    with dg.DagsterInstance.from_config(str(output / ".dagster")) as instance:
        outcome = run_pipeline(config, instance, log=lines.append)
    assert outcome.ok and not outcome.nothing_changed, lines
    assert outcome.summary_written
    assert "zz_copy" in _review_text(output)


BLOCKING_RUN = """
import sys, time, dagster as dg
from pathlib import Path
from dedup_assets.names import HOST_TAG, PID_TAG
from dedup_assets.runner import instance_for
import os, socket

@dg.asset
def slow() -> None:
    Path(sys.argv[2]).write_text("started")
    time.sleep(600)

instance = instance_for(Path(sys.argv[1]))
dg.materialize([slow], instance=instance,
               tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
"""


def test_runs_of_a_killed_process_are_marked_failed(tmp_path):
    from dedup_assets.runner import fail_orphaned_runs, instance_for

    out, ready = tmp_path / "out", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKING_RUN, str(out), str(ready)], env=_own_env()
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    os.environ.pop("DAGSTER_HOME", None)
    instance = instance_for(out)
    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    assert len(instance.get_runs(filters=started)) == 1
    done = fail_orphaned_runs(instance)
    assert len(done) == 1 and f"dead process {proc.pid}" in done[0]
    assert instance.get_runs(filters=started) == []
    failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert len(failed) == 1
    assert fail_orphaned_runs(instance) == []  # nothing left to mark


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_pool_processes_end_when_the_command_is_killed_alone(baseline, tmp_path):
    """`dedup run` killed outright by itself (the out-of-memory killer's way, not its
    process group): its pool's processes, waiting for the next run on a queue they all hold
    open, end within seconds instead of living on with their memory."""
    from dedup_assets.engines import PARENT_CHECK_S

    output = tmp_path / "out"
    proc = subprocess.Popen(
        [
            str(DEDUP),
            "run",
            "--source",
            str(baseline["source"]),
            "--output",
            str(output),
            *ARGS,
            "--executor",
            "processes",
            "--parallel",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env=_own_env(),
    )
    try:
        workers: list[int] = []
        for line in proc.stdout:
            if line.startswith("[classes") and "starting" in line:
                _until_a_run_started(output)
                workers = [p for p in _children(proc.pid) if b"predecode" not in _cmdline(p)]
                os.kill(proc.pid, signal.SIGKILL)  # the command alone
                break
        proc.wait(timeout=60)
        assert len(workers) == 2, workers
        deadline = time.monotonic() + 20 * PARENT_CHECK_S + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers), "pool processes outlived the command"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
