"""One SIGINT or SIGTERM stops `dedup run` within seconds at every stage, with every
executor, children included; it exits 130 or 143 with one line, leaves no run STARTED, and
the same command then resumes to the keep lists and clean copies of an uninterrupted run.

Each test is a chain on one output folder: interrupt a stage, run the same command again
and interrupt the next, ..., then let it finish and compare with the reference. SIGINT goes
to the whole process group (what Ctrl-C in a terminal does), SIGTERM to the command alone
(what `kill` does), so the workers meet both the signal itself and the command stopping them.
"""

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import sqlalchemy.exc
from conftest import DEDUP, leftovers, run_dedup
from distributed import Client, LocalCluster

from dedup_assets.core.data.layout import MARKER
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.dispatch import runs_in_progress
from dedup_assets.names import CLASS_JOB, THRESHOLD_JOB, TRAIN_JOB

THRESHOLDS = ("0.9", "2%")
FAST = (
    "--epochs", "1", "--device", "cpu", "--precision", "fp32",
    "--thresholds", ",".join(THRESHOLDS), "--kurtosis-tolerance", "1.0",
)  # fmt: skip
STOP_WITHIN_S = 10.0
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
LATENCIES: dict[str, float] = {}  # printed at the end of the module (-s shows them)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt") / "src"
    generate_demo_dataset(root, seed=5, per_class=20, duplicate_fraction=0.2)  # 6 classes
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """The uninterrupted run every chain must end equal to (its model seeds two chains)."""
    out = tmp_path_factory.mktemp("interrupt") / "reference"
    done = run_dedup("run", "--source", str(source), "--output", str(out), *FAST)
    assert done.returncode == 0, done.stdout + done.stderr
    yield out
    print("\nstop latencies (s):", {k: round(v, 2) for k, v in LATENCIES.items()})


def seeded(reference: Path, out: Path) -> Path:
    """A new output folder holding only the reference's trained model (kept by the run)."""
    out.mkdir()
    shutil.copy(reference / MARKER, out / MARKER)
    shutil.copytree(reference / "model", out / "model")
    return out


class Command:
    """`dedup run` in its own process group, its output read as it comes."""

    def __init__(self, source: Path, out: Path, *extra: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEDUP_")}
        env.pop("DAGSTER_HOME", None)
        self.out = out
        self.proc = subprocess.Popen(
            [str(DEDUP), "run", "--source", str(source), "--output", str(out), *FAST, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._seen = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._seen:
                lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 180) -> None:
        """Until a line of stdout matches (the stage has started)."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(re.search(pattern, line) for line in self.stdout):
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no {pattern!r}: {self.log()}"
                self._seen.wait(min(left, 0.5))

    def log(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_for_run(
        self, job: str, partition: str | None = None, step: str | None = None, timeout=180
    ) -> None:
        """Until a run of `job` (of that partition, inside that step) is executing."""
        deadline = time.monotonic() + timeout
        with dg.DagsterInstance.from_config(str(self.out / ".dagster")) as instance:
            while not self._running(instance, job, partition, step):
                assert time.monotonic() < deadline and self.proc.poll() is None, (
                    f"no {job} run in {step or 'progress'}: {self.log()}"
                )
                time.sleep(0.02)

    @staticmethod
    def _running(instance, job: str, partition: str | None, step: str | None) -> bool:
        try:
            runs = instance.get_runs(
                filters=dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.STARTED])
            )
            for run in runs:
                if partition is not None and run.tags.get("dagster/partition") != partition:
                    continue
                if step is None or any(
                    r.event_log_entry.step_key == step
                    for r in instance.get_records_for_run(
                        run.run_id, of_type=dg.DagsterEventType.STEP_START
                    ).records
                ):
                    return True
        except sqlalchemy.exc.OperationalError:  # the command holds the database: next time
            pass
        return False

    def interrupt(self, signum: int, to_group: bool) -> float:
        """Send the signal; seconds until the command has exited."""
        sent = time.monotonic()
        (os.killpg if to_group else os.kill)(self.proc.pid, signum)
        self.proc.wait(timeout=60)
        took = time.monotonic() - sent
        for reader in self._readers:
            reader.join(10)
        return took

    def kill(self) -> None:
        """The command's process group, if the command still runs (a check failed)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def group_members(pgid: int) -> list[str]:
    """Live processes (zombies aside) of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(stat.split(")", 1)[0] + ")")
    return found


def interrupt_at(
    source: Path,
    out: Path,
    name: str,
    signum: int,
    to_group: bool,
    stage: str,
    *extra: str,
    job: str | None = None,
    partition: str | None = None,
    step: str | None = None,
) -> None:
    """Run the command, signal it once inside `stage` (and inside a run of `job` there), and
    check how it stopped."""
    cmd = Command(source, out, *extra)
    try:
        cmd.wait_for_line(rf"^\[{re.escape(stage)}[^\]]*\] starting")
        if job is not None:
            cmd.wait_for_run(job, partition, step)
        took = cmd.interrupt(signum, to_group)
    finally:
        cmd.kill()
    LATENCIES[name] = took
    log = cmd.log()
    assert cmd.proc.returncode == 128 + signum, log
    assert took < STOP_WITHIN_S, f"{name}: stopped {took:.1f}s after the signal\n{log}"
    lines = "".join(cmd.stderr).strip().splitlines()
    assert len(lines) == 1, log
    assert lines[0].startswith(f"dedup run: interrupted by {signal.Signals(signum).name} ")
    assert f"during [{stage}" in lines[0] and "run the same command again to resume" in lines[0]
    deadline = time.monotonic() + 3
    while (left := group_members(cmd.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        os.killpg(cmd.proc.pid, signal.SIGKILL)
    assert not left, f"{name}: processes left behind: {left}"
    with dg.DagsterInstance.from_config(str(out / ".dagster")) as instance:
        unfinished = instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))
        assert not unfinished, [(r.job_name, r.status) for r in unfinished]


def assert_resumes_to_reference(source: Path, out: Path, reference: Path, *extra: str) -> None:
    """The same command finishes, with the reference's keep lists and clean copies."""
    done = run_dedup("run", "--source", str(source), "--output", str(out), *FAST, *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not leftovers(out)
    for t in THRESHOLDS:
        mine, theirs = (
            pl.read_parquet(o / "keep_lists" / f"{t}.parquet")
            .drop("decided_at", "decided_in")
            .sort("path")
            for o in (out, reference)
        )
        assert mine.columns == theirs.columns and mine.height == theirs.height, t
        for column in mine.columns:
            if mine[column].dtype.is_float():  # workers may sum in another order
                assert mine[column].is_null().equals(theirs[column].is_null()), (t, column)
                assert ((mine[column] - theirs[column]).abs() < 1e-6).all(), (t, column)
            else:
                assert mine[column].equals(theirs[column]), (t, column)
        mine, theirs = (
            sorted(p.relative_to(o) for p in (o / "clean" / t).rglob("*.png"))
            for o in (out, reference)
        )
        assert mine == theirs and mine, t
    assert (~pl.read_parquet(out / "keep_lists" / "0.9.parquet")["kept"]).sum() > 0


def test_in_process_stops_at_every_stage_and_resumes(source, reference, tmp_path):
    out = tmp_path / "out"
    INT, TERM = signal.SIGINT, signal.SIGTERM
    # Fifty epochs for the interrupted command alone: one epoch of 120 images could end
    # before a loaded machine's observer sees its step start (the signal then comes late).
    interrupt_at(
        source, out, "in_process training", INT, True, "training", "--epochs", "50",
        job=TRAIN_JOB, step="autoencoder",
    )  # fmt: skip
    assert not (out / "model" / "autoencoder.pt").exists()
    interrupt_at(source, out, "in_process classes", TERM, False, "classes", job=CLASS_JOB)
    interrupt_at(source, out, "in_process thresholds", INT, True, "thresholds", job=THRESHOLD_JOB)
    interrupt_at(
        source, out, "in_process clean copy", TERM, False, "thresholds",
        job=THRESHOLD_JOB, step="clean_dataset",
    )  # fmt: skip
    assert_resumes_to_reference(source, out, reference)


def test_processes_stop_with_their_workers_and_resume(source, reference, tmp_path):
    out = seeded(reference, tmp_path / "out")
    pool = ("--executor", "processes", "--parallel", "2")
    interrupt_at(
        source, out, "processes classes", signal.SIGINT, True, "classes", *pool, job=CLASS_JOB
    )
    # The first threshold runs in the command's process, the second on a worker.
    interrupt_at(
        source, out, "processes thresholds (worker)", signal.SIGTERM, False, "thresholds",
        *pool, job=THRESHOLD_JOB, partition=THRESHOLDS[1],
    )  # fmt: skip
    assert_resumes_to_reference(source, out, reference, *pool)


def test_dask_runs_stop_on_the_workers_and_resume(source, reference, tmp_path):
    out = seeded(reference, tmp_path / "out")
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        dask = ("--executor", "dask", "--dask-address", cluster.scheduler_address)
        dask += ("--parallel", "2")
        interrupt_at(
            source, out, "dask classes", signal.SIGINT, True, "classes", *dask, job=CLASS_JOB
        )
        with Client(cluster.scheduler_address) as client:  # nothing of the run goes on there
            assert not any(client.run(runs_in_progress).values())
            assert not any(client.processing().values())
        assert_resumes_to_reference(source, out, reference, *dask)
