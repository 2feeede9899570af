"""The main job: every asset, check and partition, stage by stage, through the named jobs.

A Dagster run covers one partition, or a range of class partitions, and the assets have
three partitionings (none, class, threshold), so the main job runs the code location's
named jobs in order, the per-class ones by ranges of classes, against one persistent
instance (the same one `dagster dev` shows). A stage that fails stops every
stage downstream of it in this run; files left by earlier runs are never used in its
place (each reader checks provenance, see `core.data.artifacts`).

Before it starts, a run takes the output folder's lock, sweeps what an interrupted run
left (temporary files, half-swapped folders) and marks runs of a dead process as failed.

SIGINT or SIGTERM stops it (`interrupts.stop_on_signals`): inside a Dagster run, Dagster's
own handler turns the signal into an interrupted step and a failed run, and
`execute_in_process` returns as if the data were at fault; the stage loop therefore checks
for a signal between and after runs (`check_stop`), stops the executor's workers, marks the
runs it leaves unfinished as canceled and raises `Interrupted`. Every output is written
atomically, so the same command resumes where the signal stopped it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from dedup_assets.assets.autoencoder import decide_for_run, kept_observation, likely_kept
from dedup_assets.assets.catalog import index_materialization, index_source
from dedup_assets.assets.clean_dataset import clean_copies_damaged
from dedup_assets.config import (
    PipelineConfig,
    current_inputs,
    known_overrides,
    load_overrides,
)
from dedup_assets.core.data import predecode
from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    MissingArtifact,
    catalogued_keys,
    class_summary,
    file_digest,
    is_current,
    recorded_listings,
    stale_classes,
    stale_thresholds,
)
from dedup_assets.core.data.atomic_io import sweep_interrupted, write_json, write_text
from dedup_assets.core.data.image_folder import FolderScan
from dedup_assets.core.data.layout import OutputLayout, resolve_dagster_home
from dedup_assets.core.data.pools import blas_threads, process_alive
from dedup_assets.core.data.progress import progress_to
from dedup_assets.core.data.run_fingerprint import discard_record
from dedup_assets.core.data.source_index import ClassListing, changed_classes
from dedup_assets.core.data.thresholds import budget_of, canonical_key
from dedup_assets.core.decision.leakage import (
    clean_copies_behind,
    gate_failures,
    has_eval_splits,
    leakage_is_current,
    read_record,
)
from dedup_assets.core.decision.reference_pool import reference_pool_provenance
from dedup_assets.core.model.retraining import RetrainDecision
from dedup_assets.core.quality.summary_inputs import (
    forget_summary_inputs,
    summary_outputs_current,
)
from dedup_assets.dispatch import (
    CheckOutcome,
    ClassRunPool,
    RunReport,
    Selection,
    definitions_for,
    execute,
    open_instance,
)
from dedup_assets.engines import Executor, resolve_auto, threads_per_process
from dedup_assets.interrupts import Interrupted, check_stop, note_stage, stop_requested
from dedup_assets.names import (
    CLASS_JOB,
    FULL_TAG,
    HOST_TAG,
    INDEX_JOB,
    INGEST_JOB,
    PID_TAG,
    RETRAIN_TAG,
    STAGE_TAG,
    SUMMARY_JOB,
    THRESHOLD_JOB,
    THRESHOLDS_AT_ONCE_TAG,
    TRAIN_JOB,
    UI_REPOSITORY_LABEL,
    UI_REPOSITORY_TAG,
    UPDATE_CLASS_JOB,
)
from dedup_assets.partitions import CLASS_DIM, ClassRange, class_ranges
from dedup_assets.step_signals import listening
from dedup_assets.timings import WorkTimes
from resources.image_source import one_listing_per_run, release_listings


class OutputLocked(RuntimeError):
    """Another `dedup run` is writing to the same output folder."""


@dataclass
class StageTiming:
    name: str
    seconds: float
    runs: int


@dataclass
class PipelineOutcome:
    """What the main job did: timings per stage, failures, checks and what was skipped."""

    output: Path
    stages: list[StageTiming] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    stale_clean: list[str] = field(default_factory=list)
    # clean copies of thresholds not among this run's: left as they were, marked not updated
    unlisted_clean: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    thresholds: list[str] = field(default_factory=list)
    summary_written: bool = False
    changes: str = ""
    updated: list[str] = field(default_factory=list)
    training: str = ""
    nothing_changed: bool = False
    work: WorkTimes = field(default_factory=WorkTimes)

    @property
    def check_failures(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.severity == "ERROR"]

    @property
    def check_warnings(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.severity != "ERROR"]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.check_failures and not self.skipped

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def instance_for(output: Path) -> dg.DagsterInstance:
    """The persistent Dagster instance under <output>/.dagster (or $DAGSTER_HOME if set:
    `layout.resolve_dagster_home`)."""
    return open_instance(str(resolve_dagster_home(output)))


@contextmanager
def output_lock(layout: OutputLayout) -> Iterator[None]:
    """Hold the output folder's lock: one `dedup run` writes to a folder at a time."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise OutputLocked(
                f"output {layout.root} is in use by another dedup run ({holder}); "
                "wait for it to finish"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark runs this host started and whose process has died (SIGKILL, crash) as failed."""
    host = socket.gethostname()
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={HOST_TAG: host},
        )
    )
    done = []
    for run in runs:
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and pid != os.getpid() and not process_alive(pid):
            instance.report_run_failed(
                run, f"the process that ran it (pid {pid}) ended without finishing the run"
            )
            done.append(f"marked run {run.run_id[:8]} of dead process {pid} as failed")
    return done


def cancel_unfinished_runs(instance: dg.DagsterInstance, reason: str) -> list[str]:
    """Mark the runs this process started and left unfinished (a worker killed mid-run, a run
    stopped before its first step) as canceled, so none stays STARTED; returns their ids.
    One that cannot be marked (its database locked by a worker stopped mid-write) is left
    to the next run of the output, which marks it failed (`fail_orphaned_runs`): the
    command still stops as interrupted."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING,
            ],
            tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()},
        )
    )
    canceled = []
    for run in runs:
        try:
            instance.report_run_canceled(run, f"dedup run was {reason}")
        except Exception:  # noqa: BLE001 - a locked database: the next run fails it (`fail_orphaned_runs`)
            continue
        canceled.append(run.run_id)
    return canceled


def run_pipeline(
    config: PipelineConfig,
    instance: dg.DagsterInstance,
    *,
    retrain: bool = False,
    full: bool = False,
    log: Callable[[str], None] = print,
    log_level: str = "WARNING",
    on_success: Callable[[PipelineOutcome], None] | None = None,
    scanned: tuple[Path, bool, FolderScan] | None = None,
    check_clean_files: bool = False,
) -> PipelineOutcome:
    """Bring every asset and check up to date with the source, doing only what changed.

    retrain: train the autoencoder again whatever the rules say; full: recompute everything
    from scratch (decode, train, encode, decide), ignoring earlier work and decisions.
    on_success: called with the outcome when every stage ran to its end, the output's lock
    still held (`dedup run` records there what a rerun with nothing new answers from,
    `core.data.run_fingerprint`; the record of an earlier run is dropped as this one starts).
    scanned: (root, include_hidden, `scan_image_folder` of it) the caller took already, the
    run's listing of that source when it reads it the same way and it is not split.
    check_clean_files: look at every file of the copy mode clean copies too (`--force`,
    `--verify`; `clean_copies_damaged`), and make a damaged one again.
    A malformed overrides file (`--overrides`, `<output>/overrides.csv`) raises ConfigError
    before any work; one naming an image the catalog does not hold, once the catalog is
    built (before any image is decoded).
    """
    load_overrides(config)
    layout = OutputLayout(Path(config.output))
    layout.claim()
    with output_lock(layout):
        discard_record(layout.root)  # this run may change the outputs the record vouches for
        outcome = PipelineOutcome(output=layout.root, thresholds=list(config.thresholds))
        swept = sweep_interrupted(layout.root, swapped_whole=(layout.clean_root.name,))
        outcome.recovered = swept + fail_orphaned_runs(instance)
        for line in outcome.recovered:
            log(f"recovered: {line}")
        try:
            # The plan and the index from one listing of the source (`scanned`: the scan the
            # caller took of it, `one_listing_per_run`).
            with one_listing_per_run(scanned):
                _run_stages(
                    config,
                    instance,
                    layout,
                    outcome,
                    retrain=retrain,
                    full=full,
                    log=log,
                    log_level=log_level,
                    check_clean_files=check_clean_files or config.verify,
                )
        except KeyboardInterrupt as exc:  # the workers have stopped (ClassRunPool.__exit__)
            cancel_unfinished_runs(instance, str(exc) or "interrupted")
            raise
        note_stage("")
        if outcome.stages:
            write_json({"work": outcome.work.rows()}, layout.timings)
        if not outcome.failures and not outcome.skipped:  # every stage ran to its end
            write_json(config.saved(), layout.pipeline_file)
            if on_success is not None:
                on_success(outcome)
        return outcome


def _nothing_to_do(
    config: PipelineConfig, layout: OutputLayout, changes, check_clean_files: bool = False
) -> bool:
    """True when the source is unchanged and every output matches it and the settings (a
    clean copy made in another `--clean-copy-mode` is stale: `stale_thresholds`; with
    `check_clean_files`, one whose files changed since it was made too)."""
    if changes.any or not layout.model.exists() or not layout.pipeline_file.exists():
        return False
    try:
        current = current_inputs(config)
    except (MissingArtifact, OSError):
        return False
    thresholds = list(config.thresholds)
    return (
        not stale_classes(layout, current, thresholds)
        and not stale_thresholds(layout, current, thresholds)
        # the leakage table is current and its gate passed (a failed gate is said again)
        and leakage_is_current(layout, current)
        and not gate_failures(read_record(layout), config.method.leakage_tolerance)
        and not clean_copies_behind(layout, current, thresholds)
        # the summary, evaluation and review page too: a run stopped among them, or a
        # ground truth changed, left them behind the rest
        and _summary_current(config, layout, current, thresholds)
        and not (check_clean_files and clean_copies_damaged(layout, thresholds))
    )


def _summary_current(
    config: PipelineConfig, layout: OutputLayout, current: CurrentInputs, thresholds: list[str]
) -> bool:
    """The outputs across thresholds record the inputs of now (`summary_inputs`); a ground
    truth file given but missing is not current (the run that follows says so)."""
    resources = config.resources()
    try:
        ground_truth = resources["image_source"].ground_truth_path()
    except OSError:
        return False
    inputs = resources["storage"].summary_inputs(current, thresholds, ground_truth)
    return summary_outputs_current(layout, inputs)


class _Skipped(Exception):
    """A stage failed: every stage after it is skipped, for the reason given."""


# Jobs whose partitions may run at once on the executor's workers: per class, and per
# threshold (each threshold's keep list, report, clean copy and cross-class table are its
# own; the first threshold runs alone, see `_thresholds_and_summary`).
PER_PARTITION_JOBS = frozenset({INGEST_JOB, CLASS_JOB, UPDATE_CLASS_JOB, THRESHOLD_JOB})
# Jobs over class partitions: run by ranges of classes, each range one run.
CLASS_JOBS = frozenset({INGEST_JOB, CLASS_JOB, UPDATE_CLASS_JOB})
CLASS_ASSETS = ["class_latents", "spline_fits", "class_keep_lists"]
THRESHOLD_ASSETS = ["keep_list", "cross_class_duplicates", "kurtosis_report", "clean_dataset"]
SUMMARY_ASSETS = ["dedup_evaluation", "dedup_summary", "review_page"]


class _Stages:
    """The named jobs of one `dedup run`, one stage at a time: a run per partition key, in
    this process or on the executor's workers (started when a stage first needs them, so a
    run with nothing to do starts none); each run's failures and checks go to `outcome`."""

    def __init__(
        self,
        config: PipelineConfig,
        instance: dg.DagsterInstance,
        outcome: PipelineOutcome,
        stack: ExitStack,
        *,
        tags: Mapping[str, str],
        log: Callable[[str], None],
        log_level: str,
    ) -> None:
        self.config, self.instance, self.outcome, self.log = config, instance, outcome, log
        self.in_process = config.executor == Executor.in_process
        self._home = "" if self.in_process else str(resolve_dagster_home(config.output).resolve())
        self._stack, self.verbose = stack, log_level == "INFO"
        self._pool: ClassRunPool | None = None
        self.defs = definitions_for(config)
        self.tags = dict(tags)
        self.forced = RETRAIN_TAG in tags or FULL_TAG in tags  # train whatever the rules say
        # key -> the steps of its runs that failed (None: a run failed outside its steps)
        self.failed_steps: dict[Selection, set[str] | None] = {}
        self.run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
        self.check_clean_files = False  # look at the clean copies' files (`clean_copies_damaged`)

    def pool(self) -> ClassRunPool:
        """The executor's workers, started on first use."""
        if self._pool is None:
            pool = ClassRunPool(self.config, self._home, self.verbose)
            self._pool = self._stack.enter_context(pool)
            self.log(
                f"executor {self.config.executor}: up to {self.config.parallel} class run(s) "
                f"at once on {', '.join(self._pool.workers())}"
            )
        return self._pool

    def run(
        self,
        name: str,
        job_name: str,
        keys: Sequence[str | None],
        assets: list[str] | None = None,
        first_here: bool = False,
        beside: list[str] | None = None,
        early: list[str] | None = None,
        summary: _EarlySummary | None = None,
    ) -> tuple[list[Selection], list[dg.ExecuteInProcessResult]]:
        """Run one job per key, or per range of classes for a per-class job (several at
        once where the executor allows; with `first_here`, the first key alone in this
        process, with every core, then the others at once; with `beside` as well, those
        of its assets run on a worker meanwhile, the others here; with `early` as well,
        those assets of the other keys start on the workers at once too, their other
        assets once every run before has ended, for the keys whose early run succeeded);
        with `summary` too, it may start on a worker from within the first key's run here,
        `_EarlySummary`); returns the keys or ranges whose run failed, and every in-process
        result."""
        note_stage(name)
        check_stop()
        run_tags = {**self.tags, STAGE_TAG: name}
        through_executor = not self.in_process and job_name in PER_PARTITION_JOBS
        runs = self._batches(keys, through_executor) if job_name in CLASS_JOBS else list(keys)
        here = runs if not through_executor else runs[:1] if first_here else []
        away = runs[len(here) :]
        split = bool(beside and through_executor and here)
        at_once = self.config.parallel if away else 1
        self.log(
            f"[{name}] starting: {len(runs) + split} run(s)"
            + (f" for {len(keys):,} classes" if job_name in CLASS_JOBS else "")
            + (f", {at_once} at once ({self.config.executor} executor)" if away else "")
            + (f"; {', '.join(beside or [])} of {here[0]} on a worker meanwhile" if split else "")
        )
        start = time.perf_counter()
        handle, here_assets, away_assets, started = None, assets, assets, []
        if split:
            handle = self.pool().start(job_name, here[0], run_tags, self.run_config, name, beside)
            if summary is not None:
                summary.beside = handle
            job = self.defs.resolve_job_def(job_name)
            every = assets or sorted(
                k.to_user_string() for k in job.asset_layer.selected_asset_keys
            )
            here_assets = [a for a in every if a not in (beside or [])]
            if early and away:
                # The cores the first key leaves free: the other keys' early assets, which
                # need nothing of it, start now; their others wait for it.
                run_tags[THRESHOLDS_AT_ONCE_TAG] = "1"
                firsts = [a for a in every if a in early]
                away_assets = [a for a in every if a not in early]
                started = [
                    (k, self.pool().start(job_name, k, run_tags, self.run_config, name, firsts))
                    for k in away
                ]
        # With local workers running meanwhile, this process takes its share of the cores
        # (a dask cluster's workers may be elsewhere).
        local = split and self.config.executor == Executor.processes
        listener = summary.step_ended if summary is not None and split else None
        with (
            blas_threads(threads_per_process(self.config.parallel)) if local else nullcontext(),
            listening(listener),
        ):
            results = [self._run_here(name, job_name, key, run_tags, here_assets) for key in here]
        reports = [report for _, report in results]
        recorded = list(here)
        later: dict[tuple[str, ...] | None, list[Selection]] = {}
        meanwhile: list[tuple[Selection, Any]] = []
        if started:
            job = self.defs.resolve_job_def(job_name)
            # What reads the first key's `beside` assets waits for them; the rest (the
            # other thresholds' clean copies, which hard-link from the first's) starts as
            # soon as this process's run has ended: at 135,000 images they had waited 21 s
            # for the first threshold's cross-class join, a worker idle meanwhile.
            after_beside = set(beside or []) | _downstream(job, set(beside or []))
            for key, h in started:
                report = self.pool().report(h)
                reports.append(report)
                recorded.append(key)
                if report.failures:
                    continue  # what is left of it would fail on its inputs
                # A blocking verdict of the early run holds back what is downstream of its
                # asset, as it would have in one run (Dagster skips it there).
                held = _downstream(job, {c.asset for c in report.checks if c.severity == "ERROR"})
                rest = [a for a in away_assets or [] if a not in held]
                now = [a for a in rest if a not in after_beside]
                if now:
                    meanwhile.append(
                        (
                            key,
                            self.pool().start(job_name, key, run_tags, self.run_config, name, now),
                        )
                    )
                waiting = tuple(a for a in rest if a in after_beside)
                if waiting:
                    later.setdefault(waiting, []).append(key)
        elif away:
            later[tuple(away_assets) if away_assets else None] = list(away)
        if handle is not None:
            reports.append(self.pool().report(handle))
            recorded.append(here[0])
        for rest, keys in later.items():
            reports += self.pool().run_all(
                job_name, keys, run_tags, self.run_config, name, list(rest) if rest else None
            )
            recorded += keys
        for key, h in meanwhile:
            reports.append(self.pool().report(h))
            recorded.append(key)
        failed = self._record(name, recorded, reports, len(here))
        seconds = time.perf_counter() - start
        self.outcome.stages.append(StageTiming(name, seconds, len(recorded)))
        self.log(f"[{name}] {len(recorded)} run(s) in {seconds:.1f}s")
        return list(dict.fromkeys(failed)), [result for result, _ in results]

    def failed_only(self, key: Selection, steps: set[str] | frozenset[str]) -> bool:
        """Whether every step that failed in `key`'s runs is one of `steps` (False when one
        of its runs failed outside its steps)."""
        failed = self.failed_steps.get(key, set())
        return failed is not None and failed <= set(steps)

    def start(
        self, name: str, job_name: str, key: Selection, assets: list[str]
    ) -> tuple[str, Selection, float, Any]:
        """Start one run of `assets` on a worker and return at once; `finish` waits for it
        and records it as a stage of its own."""
        note_stage(name)
        check_stop()
        self.log(f"[{name}] starting: 1 run(s) on a worker meanwhile")
        tags = {**self.tags, STAGE_TAG: name}
        handle = self.pool().start(job_name, key, tags, self.run_config, name, assets)
        return name, key, time.perf_counter(), handle

    def finish(self, started: tuple[str, Selection, float, Any]) -> list[Selection]:
        """Wait for a run `start`ed and record it; the key when it failed. Its stage's
        seconds are those it added to the run (what ran meanwhile has its own)."""
        name, key, start, handle = started
        waited = time.perf_counter()
        failed = self._record(name, [key], [self.pool().report(handle)], 0)
        end = time.perf_counter()
        self.outcome.stages.append(StageTiming(name, end - waited, 1))
        self.log(f"[{name}] 1 run(s) in {end - start:.1f}s, {end - waited:.1f}s of it waited for")
        return failed

    def _batches(self, keys: Sequence[str | None], spread: bool) -> list[ClassRange]:
        """The classes as ranges of the registered partitions: as few runs as possible,
        one per worker at least when they are spread over the executor's workers."""
        order = self.instance.get_dynamic_partitions(CLASS_DIM)
        parts = self.config.parallel if spread else 1
        return class_ranges([str(k) for k in keys], order, parts=parts)

    def _run_here(
        self,
        name: str,
        job_name: str,
        key: Selection,
        run_tags: dict[str, str],
        assets: list[str] | None,
    ) -> tuple[dg.ExecuteInProcessResult, RunReport]:
        """One run in this process, and its report."""
        check_stop()
        job = self.defs.resolve_job_def(job_name)
        result = execute(job, key, self.instance, run_tags, self.run_config, assets)
        check_stop()  # a signal Dagster's handler took: the run ended as failed
        report = RunReport.of(result, name, key)
        if report.interrupted:  # a KeyboardInterrupt without stop_on_signals
            raise Interrupted(signal.SIGINT, name)
        return result, report

    def _record(
        self, name: str, keys: list[Selection], reports: list[RunReport], here: int
    ) -> list[Selection]:
        """Each run's checks and failures into the outcome; the keys whose run failed."""
        failed = []
        for at, (key, report) in enumerate(zip(keys, reports, strict=True)):
            self.outcome.checks.extend(report.checks)
            self.outcome.work.add(report.steps)
            self.outcome.failures.extend(report.failures)
            if report.failures:
                failed.append(key)
                # The steps that failed; None where the run failed outside a step
                steps = self.failed_steps.setdefault(key, set())
                if steps is not None:
                    steps.update(report.failed_steps)
                    if len(report.failed_steps) < len(report.failures):
                        self.failed_steps[key] = None
            if at >= here:
                where = "" if key is None else f" {key}:"
                self.log(f"[{name}]{where} steps ran on {', '.join(report.workers) or '?'}")
        return failed


def _downstream(job: dg.JobDefinition, assets: set[str]) -> set[str]:
    """The assets of `job` downstream of `assets`, however far."""
    below = dg.AssetSelection.assets(*assets).downstream(include_self=False)
    return {key.to_user_string() for key in below.resolve(job.asset_layer.asset_graph)}


def _run_stages(
    config: PipelineConfig,
    instance: dg.DagsterInstance,
    layout: OutputLayout,
    outcome: PipelineOutcome,
    *,
    retrain: bool,
    full: bool,
    log: Callable[[str], None],
    log_level: str,
    check_clean_files: bool = False,
) -> None:
    """The stages in order, each for what changed only; a failed stage skips the rest."""
    _, listings = config.resources()["image_source"].list_source(layout)
    changes = changed_classes(
        {k: v.digest for k, v in listings.items()},
        recorded_listings(layout, config.max_file_bytes),
    )
    # Workers pay for themselves on a big dataset even when few of its classes changed: the
    # threshold stage covers every image (its cross-class pairs beside the keep list, report
    # and clean copy), and the command started their server from the same listing
    # (`cli._prestart_workers`). Measured on EuroSAT with 270 new images in two classes:
    # 10.7-11.3 s with two workers against 13.3-15.0 s in process, which `auto` chose when
    # it judged by the two classes decoded (`benchmarks/bench_incremental_executor.py`).
    config = _choose_executor(config, listings, log, shared=not instance.is_ephemeral)
    with ExitStack() as stack:
        if log_level != "INFO":  # with --verbose Dagster's log shows them already
            stack.enter_context(progress_to(lambda line: log(f"  {line}")))
        tags = _run_tags(retrain=retrain, full=full)
        stages = _Stages(config, instance, outcome, stack, tags=tags, log=log, log_level=log_level)
        stages.check_clean_files = check_clean_files
        _adopt_spellings(layout, list(config.thresholds), log)
        outcome.unlisted_clean = _note_unlisted_clean_copies(layout, list(config.thresholds))
        outcome.changes = changes.describe()
        outcome.updated = list(changes.to_update)
        if not full and not retrain and _nothing_to_do(config, layout, changes, check_clean_files):
            outcome.nothing_changed = True
            log("nothing changed: the source and the settings are those of the outputs")
            return
        log(f"source: {outcome.changes}")
        forget_summary_inputs(layout)  # this run writes them again: only what it ends comes back
        try:
            to_ingest = sorted(listings) if full else list(changes.to_update)
            try:
                _catalog(stages, layout, listings)
                # New images for a model the rules are likely to keep: each class decoded,
                # encoded, fitted and decided in one run (a rule that fires after all
                # trains, and every class runs again with the new model).
                listed = sum(v.files for v in listings.values())
                merged = (
                    bool(to_ingest) and not (full or retrain) and _may_merge(stages, layout, listed)
                )
                _images(stages, to_ingest, listings, merged=merged)
            finally:  # a first run's decoder and its cache: every class is decoded now
                predecode.finish()
            known_overrides(config)  # an image the catalog does not hold: refused, with its line
            current, retrained = _training(stages, layout)
            if merged and retrained:  # every class runs again: the old model's verdicts go
                outcome.checks = [c for c in outcome.checks if c.asset not in CLASS_ASSETS]
            to_process = _classes(
                stages, layout, current, [] if merged else to_ingest, every=retrained or full
            )
            processed = [*to_ingest, *to_process] if merged and not retrained else to_process
            _thresholds_and_summary(stages, layout, current, processed)
        except _Skipped as exc:
            outcome.skipped.append(str(exc))


def _adopt_spellings(
    layout: OutputLayout, thresholds: list[str], log: Callable[[str], None]
) -> None:
    """Rename what an output stores under another spelling of a listed threshold (`0.950`,
    `1.0%`, written as given before thresholds had one spelling) to the listed one, so its
    decisions carry on (`class_keep_lists.prior_decisions` compares thresholds by value)
    instead of being made again under a new name beside the old."""
    names: set[str] = set()
    for folder, files in (
        (layout.root / "keep_lists" / "by_class", False),
        (layout.clean_root, False),
        (layout.reports_dir, False),
        (layout.keep_list("x").parent, True),
    ):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            if files and e.name.endswith(".parquet") and e.is_file():
                names.add(e.name.removesuffix(".parquet"))
            elif not files and e.is_dir():
                names.add(e.name)
    for name in sorted(names - set(thresholds)):
        try:
            spelled = canonical_key(name)
        except ValueError:
            continue  # not a threshold's name
        if spelled in thresholds and layout.adopt_spelling(name, spelled):
            log(
                f"T={name} is now spelled {spelled}: its keep lists, reports and clean copy renamed"
            )


def _note_unlisted_clean_copies(layout: OutputLayout, thresholds: list[str]) -> list[str]:
    """Mark each clean copy and keep list whose threshold is not among `thresholds` (a run
    with other --thresholds than before) with a note that no run keeps it up to date, and
    take the note out where the threshold is listed again; the unlisted thresholds, sorted.
    Such a copy (or keep list) was left as it was, with nothing to tell it from a current
    one."""
    try:
        copies = {e.name for e in os.scandir(layout.clean_root) if e.is_dir()}
    except OSError:
        copies = set()
    try:
        suffix = ".parquet"
        folder = layout.keep_list("x").parent
        lists = {e.name[: -len(suffix)] for e in os.scandir(folder) if e.name.endswith(suffix)}
    except OSError:
        lists = set()
    present = sorted(copies | lists)
    unlisted = [t for t in present if t not in thresholds and not t.startswith(".")]
    stamp = time.strftime("%Y-%m-%d %H:%M")
    for t in present:
        notes = []
        if t in copies:
            notes.append((layout.clean_unlisted_note(t), "copy", "Delete this folder"))
        if t in lists:
            notes.append((layout.keep_list_unlisted_note(t), "keep list", "Delete its files"))
        for note, what, delete in notes:
            if t in thresholds:
                note.unlink(missing_ok=True)
            elif t in unlisted and not note.exists():
                write_text(
                    f"T={t} is not among the thresholds of this output's runs since {stamp} "
                    f"(--thresholds {','.join(thresholds)}): this {what} is as an earlier run "
                    "made it and no run keeps it up to date with the source. "
                    f"{delete}, or run again with {t} among --thresholds.\n",
                    note,
                )
    return unlisted


def _choose_executor(
    config: PipelineConfig,
    listings: Mapping[str, ClassListing],
    log: Callable[[str], None],
    *,
    shared: bool = True,
) -> PipelineConfig:
    """The configuration with `auto` resolved for these class sizes (and said why); in
    process with an instance in memory (`shared` False), which worker processes could not
    record their runs in."""
    if config.executor == Executor.auto and not shared:
        executor, parallel, why = Executor.in_process, 1, "an instance in memory"
    else:
        executor, parallel, why = resolve_auto(
            config.executor, config.parallel, [v.files for v in listings.values()]
        )
    if not why:
        return config
    log(
        f"executor auto: {executor}"
        + (f", {parallel} at once" if parallel > 1 else "")
        + f" ({why})"
    )
    return config.model_copy(update={"executor": executor, "parallel": parallel})


def _run_tags(*, retrain: bool, full: bool) -> dict[str, str]:
    """Every run's tags: who started it (for `fail_orphaned_runs`), the run's options, and
    the code location the UI lists the run under (`names.UI_REPOSITORY_TAG`), so `dedup
    ui` shows it on its job's page."""
    tags = {
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        UI_REPOSITORY_TAG: UI_REPOSITORY_LABEL,
    }
    if retrain:
        tags[RETRAIN_TAG] = "1"
    if full:
        tags[FULL_TAG] = "1"
    return tags


def _catalog(stages: _Stages, layout: OutputLayout, listings: Mapping[str, ClassListing]) -> None:
    """List the source (the index): in a run the first time, in this process after (an
    output indexed before), or in a run again where that fails (the run says why)."""
    stages.outcome.work.count(["image_catalog"], sum(v.files for v in listings.values()))
    failed_catalog = False
    if not (layout.index.exists() and _index_here(stages, layout)):
        failed_catalog = bool(stages.run("catalog", INDEX_JOB, [None])[0])
    release_listings()  # the index has it: the scan need not last the run (460 MB at 1M)
    if failed_catalog:
        raise _Skipped("every later stage: the catalog failed")


def _index_here(stages: _Stages, layout: OutputLayout) -> bool:
    """The index made in this process, its materialization reported without a run (as the
    kept model's decision is): the asset's own work on the listing this command has made,
    without the run's own cost, about 0.1 s of CPU (its creation, resources, events) on an
    update's critical path, where the class runs wait for it. Whether it was made."""
    note_stage("catalog")
    check_stop()
    stages.log("[catalog] starting: the index in this process, no run")
    start = time.perf_counter()
    lines = stages.log if stages.verbose else lambda _line: None
    try:
        metadata, version = index_source(
            stages.config.resources()["image_source"], layout, stages.instance, lines
        )
    except Exception:  # noqa: BLE001 - the run meets it again and says why
        return False
    stages.instance.report_runless_asset_event(index_materialization(metadata, version))
    check_stop()
    seconds = time.perf_counter() - start
    stages.outcome.work.add({"image_catalog": seconds})
    stages.outcome.stages.append(StageTiming("catalog: indexed, no run", seconds, 0))
    stages.log(f"[catalog] indexed in {seconds:.1f}s, no run")
    return True


def _may_merge(stages: _Stages, layout: OutputLayout, listed: int) -> bool:
    """Whether the classes may be decoded and processed in the same run: a stored model the
    rules will likely keep (not when the `listed` files exceed those it was trained on by
    the share that retrains: every class would run twice, with the old model and the new;
    its reconstruction error decides after), and everything the class stage reads current
    now (the overrides, known to the catalog; the reference pool of a false-removal
    budget)."""
    if not layout.model.exists() or not layout.pipeline_file.exists():
        return False
    try:
        current = current_inputs(stages.config)
        stages.config.resources()["compute"].torch_device()  # no such device: training says
        if not likely_kept(layout, stages.config.method, listed):
            return False
    except Exception:  # noqa: BLE001 - the runs that decode and train first say why
        return False
    if any(budget_of(t) is not None for t in stages.config.thresholds):
        return is_current(layout.reference_pool, reference_pool_provenance(current.model_digest))
    return True


def _images(
    stages: _Stages, to_ingest: list[str], listings: Mapping[str, ClassListing], *, merged: bool
) -> None:
    """Decode the classes in `to_ingest` (`merged`: encode, fit and decide them too)."""
    if not to_ingest:
        return
    images = sum(listings[k].files for k in to_ingest if k in listings)
    if not merged:
        stages.outcome.work.count(["class_images"], images)
        failed, _ = stages.run("images", INGEST_JOB, to_ingest)
        if failed:
            raise _Skipped(
                f"every later stage: decoding failed for {', '.join(str(k) for k in failed)}"
            )
        return
    stages.outcome.work.count(["class_images", *CLASS_ASSETS], images)
    failed, _ = stages.run(
        "images, latents, spline fits, keep decisions", UPDATE_CLASS_JOB, to_ingest
    )
    if failed:
        # An overrides file naming an image the new catalog no longer holds fails the
        # decisions: refused as such (ConfigError, with its line), as when decoding ran
        # alone and the check came before any decision.
        known_overrides(stages.config)
        raise _Skipped(
            f"every later stage: decoding or the class stage failed for "
            f"{', '.join(str(k) for k in failed)}"
        )


def _training(stages: _Stages, layout: OutputLayout) -> tuple[CurrentInputs, bool]:
    """Keep the model or train it again, and draw the reference pool when it is not the
    model's and a false-removal budget will read it (only a budget does: with cosine
    thresholds alone it is not drawn, 1.6 s of EuroSAT's first run, and a later run with a
    budget draws it); the current inputs then, and whether the model changed."""
    needs_pool = any(budget_of(t) is not None for t in stages.config.thresholds)
    kept = None if stages.forced else _kept_model(stages, layout)
    if kept is not None:
        # Kept: the decision as an observation of the model, without a run (the run would
        # only have made the same decision: 0.14 s of an update of EuroSAT by 1%).
        stages.instance.report_runless_asset_event(kept_observation(kept))
        stages.outcome.training, retrained = kept.reason, False
    else:
        model_before = file_digest(layout.model) if layout.model.exists() else None
        failed, results = stages.run(
            "training", TRAIN_JOB, [None], None if needs_pool else ["autoencoder"]
        )
        if failed:
            raise _Skipped("every later stage: training failed")
        stages.outcome.training = _training_decision(results[0])
        retrained = file_digest(layout.model) != model_before
    stages.log(f"training: {stages.outcome.training}")
    current = current_inputs(stages.config)
    if not needs_pool:
        stages.log("reference pool: not drawn, no threshold is a false-removal budget")
    elif not is_current(layout.reference_pool, reference_pool_provenance(current.model_digest)):
        # A kept model skips the training job's pool step: draw the pool on its own.
        if stages.run("reference pool", TRAIN_JOB, [None], ["reference_pool"])[0]:
            raise _Skipped("every later stage: drawing the reference pool failed")
        current = current_inputs(stages.config)
    return current, retrained


def _kept_model(stages: _Stages, layout: OutputLayout) -> RetrainDecision | None:
    """The stored model's keep decision when the rules keep it (`decide_for_run`); None
    when a training run must decide or train (no model, no image, a rule fires)."""
    note_stage("training")
    check_stop()
    start = time.perf_counter()
    resources = stages.config.resources()
    try:
        decision = decide_for_run(layout, resources["settings"], resources["compute"])
    except Exception:  # noqa: BLE001 - the training run meets it again and says why
        return None
    if decision is None or decision.retrain:
        return None
    seconds = time.perf_counter() - start
    stages.outcome.work.add({"autoencoder": seconds})
    stages.outcome.stages.append(StageTiming("training: model kept, no run", seconds, 0))
    return decision


def _classes(
    stages: _Stages,
    layout: OutputLayout,
    current: CurrentInputs,
    ingested: list[str],
    *,
    every: bool,
) -> list[str]:
    """Encode, fit and decide the classes that need it (`every`: all of them); returns
    those it ran."""
    outcome = stages.outcome
    outcome.classes = catalogued_keys(layout)
    if every:
        to_process = outcome.classes
    else:
        thresholds = list(stages.config.thresholds)
        pending = set(stale_classes(layout, current, thresholds)) | set(ingested)
        to_process = [k for k in outcome.classes if k in pending]
    if to_process:
        images = sum((class_summary(layout, k) or {}).get("images", 0) for k in to_process)
        outcome.work.count(CLASS_ASSETS, images)
        failed, _ = stages.run(
            "classes: latents, spline fits, keep decisions", CLASS_JOB, to_process
        )
        if failed:
            raise _Skipped(
                f"keep lists, reports, clean copies and evaluation: the class stage failed for "
                f"{', '.join(str(k) for k in failed)}"
            )
    return to_process


def _thresholds_and_summary(
    stages: _Stages, layout: OutputLayout, current: CurrentInputs, processed: list[str]
) -> None:
    """Every threshold again when classes changed, else the stale ones; then the summary
    across thresholds and the review page (when every threshold succeeded) and the
    evaluation."""
    outcome = stages.outcome
    thresholds = list(stages.config.thresholds)
    if has_eval_splits(current) or not leakage_is_current(layout, current):
        # Train/test leakage in a run of its own, before the clean copies that apply the
        # --leakage policy (its blocking checks would hold them back in one run) and every
        # time a source has evaluation splits, so its gate speaks for this run.
        stages.run(
            "leakage: evaluation images with a copy in train", SUMMARY_JOB, [None], ["leakage"]
        )
    stale = set(thresholds if processed else stale_thresholds(layout, current, thresholds))
    stale |= set(clean_copies_behind(layout, current, thresholds))  # another leakage table
    if stages.check_clean_files:
        damaged = [t for t in clean_copies_damaged(layout, thresholds) if t not in stale]
        for t in damaged:
            stages.log(
                f"clean copy T={t}: its files changed since it was made (one deleted, added or "
                "rewritten): made again"
            )
        stale |= set(damaged)
    to_threshold = [t for t in thresholds if t in stale]
    images = sum((class_summary(layout, k) or {}).get("images", 0) for k in outcome.classes)
    outcome.work.count(THRESHOLD_ASSETS, images * len(to_threshold))
    outcome.work.count(["dedup_summary", "dedup_evaluation"], images)
    # With workers, the summary runs on one of them while this process makes the clean
    # copies, which nothing of the summary reads (0.2 s of an update of EuroSAT by 1%);
    # in one process, each threshold's clean copy is made in its threshold's run.
    apart = not stages.in_process
    summary = "summary, evaluation, review page"
    # One threshold with workers: its clean copy in its own run here, after its report,
    # and the summary started on a worker from within that run as soon as the report and
    # the cross-class join beside it have ended (`_EarlySummary`): a run of its own for
    # the clean copy made the update wait for one run to end and the next to start.
    alone = apart and len(to_threshold) == 1
    early = _EarlySummary(stages, summary, SUMMARY_ASSETS) if alone else None
    failed = []
    if to_threshold:
        # With workers, the first threshold runs alone: it computes the cross-class join
        # every threshold reads, so the rest, run at once, do not repeat it; its
        # cross-class join runs on one of them meanwhile: nothing else of the threshold
        # needs it, and this process is busy with the keep list and the report (3.5 s of
        # EuroSAT's 11.5 s were the join). The other thresholds' keep lists and reports
        # need nothing of the first, so they start on the workers at once as well; their
        # cross-class tables (which read the first's) once it has ended. Then the clean
        # copies: the first threshold's alone, which the others hard-link from, so they
        # do not copy every file again.
        failed = stages.run(
            "thresholds: keep lists, gates, reports"
            + ("" if apart and not alone else ", clean copies"),
            THRESHOLD_JOB,
            to_threshold,
            [a for a in THRESHOLD_ASSETS if a != "clean_dataset"] if apart and not alone else None,
            first_here=True,
            beside=["cross_class_duplicates"],
            early=["keep_list", "kurtosis_report"],
            summary=early,
        )[0]
    # The summary reads the keep lists, reports and cross-class tables, never a clean copy:
    # a threshold whose clean copy alone failed does not hold it back.
    holding = [t for t in failed if not stages.failed_only(t, {"clean_dataset"})]
    assets = ["dedup_evaluation"] if holding else SUMMARY_ASSETS
    if holding:
        outcome.skipped.append(
            f"the summary across thresholds: T={', '.join(str(t) for t in holding)} failed"
        )
    to_copy: list[Selection] = []
    started = early.started() if early is not None else None
    if apart and not alone:
        # A blocking gate of a threshold holds its clean copy back, as in one run; so does
        # a failed keep list or report (its cross-class table alone does not).
        gates = ("keep_list", "kurtosis_report")
        held = {c.partition for c in outcome.checks if c.severity == "ERROR" and c.asset in gates}
        to_copy = [
            t
            for t in to_threshold
            if t not in held and (t not in failed or stages.failed_only(t, CROSS_CLASS_STEPS))
        ]
    if started is not None:  # every threshold held nothing back: its assets are these
        summary_failed = stages.finish(started)
    elif to_copy:
        started = stages.start(summary, SUMMARY_JOB, None, assets)
        stages.run("clean copies", THRESHOLD_JOB, to_copy, ["clean_dataset"], first_here=True)
        summary_failed = stages.finish(started)
    else:
        summary_failed = stages.run(summary, SUMMARY_JOB, [None], assets)[0]
    write_json({"work": outcome.work.rows()}, layout.timings)
    outcome.stale_clean = [t for t in thresholds if layout.clean_stale_note(t).exists()]
    if not summary_failed:
        outcome.summary_written = "dedup_summary" in assets


class _EarlySummary:
    """The summary started on a worker from within a threshold's run here: once its report
    step has succeeded (`step_signals`) and its cross-class run beside has ended without a
    failure, while the run goes on to the clean copy, which the summary never reads. Not
    started otherwise (its report failed or was held back, the cross-class run failed, a
    stop): the summary then runs after the threshold's run, as it would have anyway."""

    REPORT_STEP = "kurtosis_report"

    def __init__(self, stages: _Stages, name: str, assets: list[str]) -> None:
        self.stages, self.name, self.assets = stages, name, assets
        self.beside: Any = None  # the cross-class run's handle, once started
        self._started: tuple[str, Selection, float, Any] | None = None
        self._waiting: threading.Thread | None = None

    def step_ended(self, step: str) -> None:
        """The hook's listener: after the report step, wait for the cross-class run on a
        thread of its own (this one goes on with the run's next step)."""
        if step != self.REPORT_STEP or self.beside is None or self._waiting is not None:
            return
        self._waiting = threading.Thread(target=self._start, name="early summary", daemon=True)
        self._waiting.start()

    def _start(self) -> None:
        try:
            report = self.beside.result()  # a local or a Dask future
        except BaseException:  # noqa: BLE001 - stopped or broken: the stage says so itself
            return
        if report.failures or stop_requested():
            return
        stages = self.stages
        tags = {**stages.tags, STAGE_TAG: self.name}
        try:
            handle = stages.pool().start(
                SUMMARY_JOB, None, tags, stages.run_config, self.name, self.assets
            )
        except Exception:  # noqa: BLE001 - the pool stopping: the summary runs after, or not
            return
        self._started = (self.name, None, time.perf_counter(), handle)
        stages.log(f"[{self.name}] starting: 1 run(s) on a worker meanwhile")

    def started(self) -> tuple[str, Selection, float, Any] | None:
        """The summary's run, for `_Stages.finish`, once the run here has ended; None if it
        was not started."""
        if self._waiting is not None:
            self._waiting.join()
        return self._started


CROSS_CLASS_STEPS = frozenset(
    {"cross_class_duplicates", "cross_class_duplicates_no_cross_class_duplicates"}
)


def _training_decision(result: dg.ExecuteInProcessResult) -> str:
    """What the autoencoder asset decided: retrained (and why) or kept (and why)."""
    for event in result.get_asset_materialization_events():
        decision = event.materialization.metadata.get("decision")
        if decision is not None:
            return f"retrained: {decision.value}"
    for event in result.get_asset_observation_events():
        decision = event.asset_observation_data.asset_observation.metadata.get("decision")
        if decision is not None:
            return str(decision.value)
    return "no decision recorded"
