"""Dispatching the runs of `dedup run`: each partition of a named job as one Dagster run,
here or on the chosen engine's workers (`engines`), and what each run did.

The per-class stages (decoding, encoding, spline fits, keep decisions) are independent
across classes, so the main job splits the classes into ranges (`partitions.class_ranges`)
and runs up to `parallel` of them at once. Each range is one Dagster run, executed whole by
one worker (in-process there), in the instance of the output folder: the distribution is by
run, as Dagster's own run launchers do it, not by step.

A worker rebuilds the job from the pipeline configuration itself (`job_for` on the
configuration's JSON), so it needs only the package installed and the source, the output
folder and its Dagster instance at the same paths (a shared filesystem on a real cluster).
This module therefore stands above the definitions: it builds them, nothing below it
imports it.

Stopping: `interrupts.stop_on_signals` turns the first SIGINT or SIGTERM of `dedup run` into
`Interrupted`, which `ClassRunPool.run_all` raises between waits (`check_stop`). Then
`ClassRunPool.stop` ends the runs elsewhere: a local process gets SIGTERM, which Dagster turns
into an interrupted step and a failed run, and SIGKILL if it is still alive STOP_GRACE_S
later. A Dask task cannot be killed, and cancelling its future leaves it running, so the
run's thread on the worker gets a KeyboardInterrupt raised in it (`interrupt_runs`), with the
same effect as SIGTERM has on a local process.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import sqlalchemy

# The origin a run launched from the code location records (no public API builds one).
from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.workspace.load import location_origin_from_module_name

from dedup_assets.config import PipelineConfig
from dedup_assets.core.data.layout import instance_file, use_dagster_home
from dedup_assets.definitions import build_definitions
from dedup_assets.engines import (
    EngineUnavailable,
    Executor,
    init_pool_process,
    threads_per_process,
    worker_context,
)
from dedup_assets.interrupts import (
    INTERRUPT_ERRORS,
    cancel_thread_interrupt,
    check_stop,
    interrupt_thread,
)
from dedup_assets.names import (
    CODE_LOCATION,
    REPOSITORY,
    WORKER_METADATA,
    WORKER_TAG,
    worker_name,
)
from dedup_assets.partitions import ClassRange

# What one run covers: a partition key, a range of class partitions, or nothing.
Selection = str | ClassRange | None

# A run over a range of classes announces each asset it plans once, with the range, instead
# of once per class and asset (Dagster reads this switch when it creates a run; it is not in
# its documentation, see `supports_partition_subset_in_asset_materialization_planned_events`
# in dagster/_core/storage/event_log/base.py). Measured on 200 classes of 10 images: the
# class stage took 60 s with it and 127 s without (2 busy cores). Its cost: the classes of
# a failed run are not marked failed in the UI (the run and its log name them).
os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "1")
# A range's materializations (one per class and asset, at the end of its step) reach the
# storage as batches of at most this many (`event_storage`: two transactions a batch with
# `dedup run`'s instance, one event at a time with any other).
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "connect")
def _sqlite_commits_without_fsync(connection: Any, _record: Any) -> None:
    """Dagster's SQLite storage (in WAL mode) commits every event with an fsync; with
    synchronous=NORMAL a commit is not synced, the database stays consistent, and a power
    cut may lose the last events of a run, which the next `dedup run` recomputes anyway
    (every output carries its own provenance). Measured: decoding 300 classes of 20 images
    in one run took 48.0 s with the default and 25.7 s with this (2 busy cores); a class's
    events (materialization, check verdict) were most of the difference."""
    if isinstance(connection, sqlite3.Connection):
        connection.execute("PRAGMA synchronous=NORMAL")


# A stopped pool's processes get SIGTERM (again every 0.2 s: one that ends its interrupted
# run and takes the next queued one stops at the next) and SIGKILL after STOP_GRACE_S.
# Measured: two workers in the middle of class runs were gone 0.5 s after the first SIGTERM
# (2 cores); `dedup run` exits about 1.5 s later (the interpreter's own shutdown).
STOP_GRACE_S = 3.0
POLL_S = 0.5  # how often a wait for runs elsewhere checks for a stop


@dataclass
class CheckOutcome:
    """A check that did not pass: which, on which partition, how bad and why."""

    check: str
    asset: str
    partition: str | None
    severity: str  # "ERROR" or "WARN"
    reason: str

    def line(self) -> str:
        where = f" [{self.partition}]" if self.partition else ""
        return f"{self.check} on {self.asset}{where}: {self.reason}"

    @classmethod
    def of(cls, evaluation: dg.AssetCheckEvaluation, key: object = None) -> CheckOutcome:
        """A verdict, on its own partition (a class of a range run), else the run's."""
        meta = evaluation.metadata or {}
        reason = meta.get("outcome") or meta.get("problems")
        return cls(
            check=evaluation.check_name,
            asset=evaluation.asset_key.to_user_string(),
            partition=evaluation.partition or (str(key) if key is not None else None),
            severity="ERROR" if evaluation.severity == dg.AssetCheckSeverity.ERROR else "WARN",
            reason=str(reason.value) if reason is not None else "see the check's metadata",
        )


@dataclass
class RunReport:
    """What one run did, in a form that crosses process boundaries: failed steps, checks
    that did not pass, and the workers that materialized its assets."""

    failures: list[str] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    interrupted: bool = False
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step (asset)
    failed_steps: list[str] = field(default_factory=list)  # the steps (assets) that failed

    @classmethod
    def of(cls, result: dg.ExecuteInProcessResult, stage: str, key: Selection) -> RunReport:
        """Failed steps and checks of a run (a blocking check that stopped a downstream
        asset is a verdict recorded as a check, not a failure of the stage)."""
        report = cls(workers=_workers(result), steps=step_seconds(result))
        report.checks = [
            CheckOutcome.of(e, key) for e in result.get_asset_check_evaluations() if not e.passed
        ]
        where = f"{stage} [{key}]" if key is not None else stage
        report.interrupted = any(
            (event.is_step_failure or event.is_job_failure)
            and _interrupted(event.event_specific_data.error)
            for event in result.all_events
        )
        if report.interrupted:  # not the data's fault: say so, not the step's traceback
            on = f" on {', '.join(report.workers)}" if report.workers else ""
            report.failures.append(
                f"{where}: interrupted{on} (its process got a signal); run the same command "
                "again to resume"
            )
            return report
        for event in result.all_events:
            if not event.is_step_failure:
                continue
            error = event.event_specific_data.error
            if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
                continue
            report.failures.append(f"{where}: {event.step_key}: {root_cause(error)}")
            report.failed_steps.append(str(event.step_key))
        blocked = any(c.severity == "ERROR" for c in report.checks)
        if not result.success and not report.failures and not blocked:
            report.failures.append(f"{where}: the run failed before or between its steps")
        return report


def step_seconds(result: dg.ExecuteInProcessResult) -> dict[str, float]:
    """How long each step of a run took, by step key (an asset's name), as Dagster timed it."""
    return {
        event.step_key: event.event_specific_data.duration_ms / 1000
        for event in result.all_events
        if event.is_step_success and event.step_key is not None
    }


def _workers(result: dg.ExecuteInProcessResult) -> list[str]:
    """Who materialized the run's assets (their WORKER_METADATA), else the run's tag."""
    workers: list[str] = []
    for event in result.get_asset_materialization_events():
        worker = event.materialization.metadata.get(WORKER_METADATA)
        if worker is not None and str(worker.value) not in workers:
            workers.append(str(worker.value))
    if not workers and WORKER_TAG in result.dagster_run.tags:
        # Assets that do not record their worker (the threshold ones): the run's tag.
        workers.append(result.dagster_run.tags[WORKER_TAG])
    return workers


def _interrupted(error: Any) -> bool:
    """Whether a step's or run's error is an interruption (a signal), at any depth."""
    while error is not None:
        if error.cls_name in INTERRUPT_ERRORS:
            return True
        error = error.cause
    return False


def root_cause(error: Any) -> str:
    """One line naming the real cause of a step failure (not Dagster's wrapper)."""
    while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    if error is None:
        return "failed"
    lines = [line for line in error.message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error.cls_name


def open_instance(dagster_home: str) -> dg.DagsterInstance:
    """The Dagster instance at dagster_home as `dedup run` uses it (`layout.instance_file`)."""
    return dg.DagsterInstance.from_config(dagster_home, config_filename=instance_file(dagster_home))


@functools.lru_cache(maxsize=4)
def _definitions_for(config_json: str) -> dg.Definitions:
    """The code location's definitions for a configuration's JSON, built once per process
    for all its jobs (each build is about 0.1 s of a worker's CPU)."""
    return build_definitions(PipelineConfig.model_validate_json(config_json))


def definitions_for(config: PipelineConfig) -> dg.Definitions:
    """The code location's definitions for `config`, the same object for the same
    configuration in this process (as a worker's): a `dedup watch` builds them once, not
    once an update, and its runs' in-process jobs with them (`_in_process_job`)."""
    return _definitions_for(config.model_dump_json())


@functools.lru_cache(maxsize=16)
def job_for(config_json: str, job_name: str) -> dg.JobDefinition:
    """Rebuild a named job from a configuration's JSON, in whatever process runs it (once
    per process: a worker runs many class partitions of the same job)."""
    return _definitions_for(config_json).resolve_job_def(job_name)


@functools.lru_cache(maxsize=16)
def remote_origin(job_name: str) -> RemoteJobOrigin:
    """Where the UI finds the job `job_name`: the code location `names.CODE_LOCATION` that
    workspace.yaml and `dedup ui` load (module `dedup_assets.definitions`), as the workspace
    loader describes it. A run created with it is drawn on the Overview timeline, listed
    on its job's page and in the Jobs list, and can be re-executed from the UI."""
    location = location_origin_from_module_name(
        module_name=build_definitions.__module__,
        attribute=None,
        working_directory=None,
        location_name=CODE_LOCATION,
    )
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY), job_name)


@contextmanager
def _runs_with_origin(instance: dg.DagsterInstance, job_name: str) -> Iterator[None]:
    """Runs this instance creates while inside carry `remote_origin(job_name)`.

    `execute_in_process` creates its run without an origin and has no argument for one
    (dagster issue #17707), and the UI's Overview timeline leaves out every run whose
    `remote_job_origin` is unset (ui-core's useRunsForTimeline drops a run without
    `repositoryOrigin`, which dagster-graphql reads from that field). Launching through the
    code location would give one, at the price of a code server per `dedup run`; the run
    is created here with the origin that launch would record, and executed in process as
    before. Dagster then tags it with the location (`.dagster/repository`,
    `dagster/code_location`) itself."""
    create = instance.create_run_for_job

    def create_with_origin(*args: Any, **kwargs: Any) -> dg.DagsterRun:
        kwargs["remote_job_origin"] = kwargs.get("remote_job_origin") or remote_origin(job_name)
        return create(*args, **kwargs)

    instance.create_run_for_job = create_with_origin  # type: ignore[method-assign]
    try:
        yield
    finally:
        del instance.create_run_for_job


def execute(
    job: dg.JobDefinition,
    key: Selection,
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    run_config: dict,
    assets: list[str] | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of `job` for one partition key, a range of class partitions, or none, in
    this process, recorded with the code location's origin (`_runs_with_origin`): what
    `JobDefinition.execute_in_process` does, on its in-process job for this asset selection
    made once (`_in_process_job`)."""
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.execution.execute_in_process import (
        core_execute_in_process,
        merge_run_tags,
    )

    partition_key = key if isinstance(key, str) else None
    run_tags = {**tags, **key.tags()} if isinstance(key, ClassRange) else tags
    selection = [dg.AssetKey(a) for a in assets] if assets else []
    in_process, wrapped = _in_process_job(job, tuple(assets or ()))
    with _runs_with_origin(instance, job.name):
        if partition_key and in_process.partitions_def:
            with partition_loading_context(dynamic_partitions_store=instance) as ctx:
                in_process.validate_partition_key(
                    partition_key=partition_key, selected_asset_keys=set(selection), context=ctx
                )
        if not run_config and in_process.partitioned_config and partition_key:
            run_config = in_process.partitioned_config.get_run_config_for_partition_key(
                partition_key
            )
        return core_execute_in_process(
            job=wrapped,
            run_config=run_config,
            instance=instance,
            output_capturing_enabled=True,
            raise_on_error=False,
            run_tags=merge_run_tags(
                job_def=job,
                partition_key=partition_key,
                tags=run_tags,
                asset_selection=selection,
                instance=instance,
                run_config=run_config,
            ),
            run_id=None,
            asset_selection=frozenset(selection),
        )


@functools.lru_cache(maxsize=32)
def _in_process_job(job: dg.JobDefinition, assets: tuple[str, ...]) -> tuple[Any, Any]:
    """`execute_in_process`'s job for `job` with these assets selected (every one when
    none), and its wrapper, made once a process: Dagster makes them, and the job's
    snapshot with them, again for every run (20-30 ms of each class run on a worker)."""
    from dagster._core.definitions.job_base import InMemoryJob

    in_process = job.as_ephemeral_job(
        resource_defs={},
        input_values={},
        asset_selection=[dg.AssetKey(a) for a in assets] or None,
    )
    return in_process, InMemoryJob(job_def=in_process)


def run_partition(
    config_json: str,
    job_name: str,
    key: Selection,
    tags: dict[str, str],
    run_config: dict,
    stage: str,
    dagster_home: str,
    token: str = "",
    assets: list[str] | None = None,
) -> RunReport:
    """Run one partition (or range of class partitions) of a named job in this process, in
    the instance at dagster_home (the output folder's), and report what it did: what a pool
    process or a Dask worker executes for each batch of classes. `token` names the pool that sent it, for `interrupt_runs`."""
    try:
        with _interruptible(token):
            use_dagster_home(dagster_home)
            job = job_for(config_json, job_name)
            with _worker_instance(dagster_home) as instance:
                tags = {**tags, WORKER_TAG: worker_name()}
                result = execute(job, key, instance, tags, run_config, assets)
                return RunReport.of(result, stage, key)
    except KeyboardInterrupt:  # interrupt_runs, outside the run's steps (or before it)
        where = f"{stage} [{key}]" if key is not None else stage
        return RunReport(failures=[f"{where}: interrupted before it ran"], interrupted=True)


_instances: dict[str, dg.DagsterInstance] = {}


@contextmanager
def _worker_instance(dagster_home: str) -> Iterator[dg.DagsterInstance]:
    """The instance a run in this process records into: in a local pool's process (its
    runs one at a time, in its main thread) one kept open for every run there, since
    opening one is 0.1-0.2 s of a worker's CPU (Dagster validates its configuration and
    opens each storage); elsewhere (a Dask worker's threads) one per run, closed after."""
    if threading.current_thread() is not threading.main_thread():
        instance = open_instance(dagster_home)
        try:
            yield instance
        finally:
            _dispose_through_interrupts(instance)
        return
    instance = _instances.get(dagster_home)
    if instance is None:
        instance = _instances[dagster_home] = open_instance(dagster_home)
    try:
        yield instance
    except BaseException:
        _instances.pop(dagster_home, None)  # a run that ended this way: the next opens anew
        instance.dispose()
        raise


def _dispose_through_interrupts(instance: dg.DagsterInstance) -> None:
    """Dispose a Dask worker thread's instance to the end, its databases closed (with any
    connection an interrupt left inside a transaction: `event_storage.close_engine`) before
    the thread leaves its run: `interrupt_runs` is sent again until it has, and one that
    lands in the middle of disposing starts it again (each part is a no-op when done)."""
    while True:
        try:
            instance.dispose()
            return
        except KeyboardInterrupt:
            continue


# Dask worker threads running class runs, by the token of the pool that sent them, and the
# tokens whose pool has stopped (a run of theirs that starts late does not run).
_RUNS_LOCK = threading.Lock()
_RUNS: dict[str, set[int]] = {}
_STOPPED: set[str] = set()


@contextmanager
def _interruptible(token: str) -> Iterator[None]:
    """Register this thread as running a run of `token`'s pool while inside."""
    ident = threading.get_ident()
    with _RUNS_LOCK:
        if token in _STOPPED:
            raise KeyboardInterrupt
        _RUNS.setdefault(token, set()).add(ident)

    def leave() -> None:
        with _RUNS_LOCK:
            _RUNS.get(token, set()).discard(ident)
            if not _RUNS.get(token):
                _RUNS.pop(token, None)
            cancel_thread_interrupt(ident)  # an interrupt sent as the run ended stays here

    try:
        yield
    finally:
        while True:  # an interrupt may land in leave() itself: the run is over, leave again
            try:
                leave()
                break
            except KeyboardInterrupt:
                pass


def interrupt_runs(token: str) -> int:
    """Raise KeyboardInterrupt in the threads of this process that run `token`'s runs (on a
    Dask worker, through `Client.run`): Dagster ends each as an interrupted, failed run, as
    SIGTERM does in a local process. Later runs of the token do not start. Returns how many
    were still running: call again until none is (an exception that lands in a finalizer or
    a garbage-collection callback is printed and dropped there)."""
    with _RUNS_LOCK:
        _STOPPED.add(token)
        idents = set(_RUNS.get(token, ()))
        for ident in idents:
            interrupt_thread(ident)
    return len(idents)


def runs_in_progress(token: str | None = None) -> int:
    """How many runs of `token`'s pool (None: of any pool) this process is still running."""
    with _RUNS_LOCK:
        if token is None:
            return sum(len(idents) for idents in _RUNS.values())
        return len(_RUNS.get(token, ()))


def _reachable(address: str) -> None:
    """Fail at once (OSError) when nothing listens at a tcp://host:port address."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()


_preforked: tuple[int, ProcessPoolExecutor] | None = None


def prefork_pool(parallel: int, verbose: bool) -> None:
    """The local pool's processes forked now from this process (`dedup run`, its imports
    done, nothing run yet: no instance open, no polars or torch pool started), for the
    `ClassRunPool` of this run to take. A fork of a process that has imported the pipeline
    starts with it imported: the workers' server (`engines.worker_context`) imported it a
    second time, 2.4 CPU-seconds beside the command's own on EuroSAT's first run, where a
    first run's decoder (`core.data.predecode`) now has that core."""
    global _preforked
    import multiprocessing

    from dedup_assets.engines import init_forked_process

    release_preforked()
    threads = threads_per_process(parallel)
    pool = ProcessPoolExecutor(
        max_workers=parallel,
        mp_context=multiprocessing.get_context("fork"),
        initializer=init_forked_process,
        initargs=(threads, verbose),
    )
    pool.submit(os.getpid).result()  # a fork context starts every process at the first task
    _preforked = (parallel, pool)


def release_preforked() -> None:
    """Shut down a preforked pool that no run took."""
    global _preforked
    if _preforked is not None:
        _preforked[1].shutdown(wait=True, cancel_futures=True)
        _preforked = None


_kept: tuple[tuple[int, int, bool], ProcessPoolExecutor] | None = None
_keeping = False


def keep_pools(keep: bool) -> None:
    """With `keep` (`dedup watch`), a local pool that ends without error is kept for the
    next `ClassRunPool` of the same size, threads and verbosity: its processes have
    imported the pipeline, built its jobs and opened the instance (`_worker_instance`)
    already, which an update would otherwise pay again. False: the kept pool shut down."""
    global _keeping, _kept
    _keeping = keep
    if not keep and _kept is not None:
        pool, _kept = _kept[1], None
        pool.shutdown(wait=True, cancel_futures=True)


def _take_kept(shape: tuple[int, int, bool]) -> ProcessPoolExecutor | None:
    global _kept
    if _kept is None:
        return None
    kept_shape, pool = _kept
    _kept = None
    if kept_shape == shape and not getattr(pool, "_broken", False):
        return pool
    pool.shutdown(wait=True, cancel_futures=True)
    return None


def _take_preforked(parallel: int) -> ProcessPoolExecutor | None:
    global _preforked
    if _preforked is None:
        return None
    size, pool = _preforked
    _preforked = None
    if size == parallel:
        return pool
    pool.shutdown(wait=True, cancel_futures=True)
    return None


class ClassRunPool:
    """Runs class partitions `parallel` at a time on the configured engine; a context
    manager that starts and stops the local processes or the Dask client. Left by an
    exception (an interrupted `dedup run`), it stops every run it started (`stop`)."""

    def __init__(self, config: PipelineConfig, dagster_home: str, verbose: bool = False):
        self.config = config
        self.dagster_home = dagster_home
        self.verbose = verbose
        self._pool: ProcessPoolExecutor | None = None
        self._client = None
        self._futures: list = []
        self._beside: list = []  # runs started by `start`, waited for by `report`
        self._token = uuid.uuid4().hex  # names this pool's runs on the Dask workers

    def __enter__(self) -> ClassRunPool:
        if self.config.executor == Executor.dask:
            try:
                from distributed import Client
            except ImportError as exc:
                raise EngineUnavailable(
                    "--executor dask needs dask.distributed: pip install 'latent-dedup[distributed]'"
                ) from exc
            try:
                _reachable(self.config.dask_address)
                self._client = Client(self.config.dask_address, timeout=10)
            except OSError as exc:
                raise EngineUnavailable(
                    f"no dask scheduler answers at {self.config.dask_address} ({exc})"
                ) from None
        else:
            threads = threads_per_process(self.config.parallel)
            self._pool = (
                _take_kept(self._shape())
                or _take_preforked(self.config.parallel)
                or ProcessPoolExecutor(
                    max_workers=self.config.parallel,
                    mp_context=worker_context(threads),
                    initializer=init_pool_process,
                    initargs=(threads, self.verbose),
                )
            )
        return self

    def _shape(self) -> tuple[int, int, bool]:
        return self.config.parallel, threads_per_process(self.config.parallel), self.verbose

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None:
            self.stop()
            return
        global _kept
        try:
            if self._pool is not None and _keeping and _kept is None:
                _kept, self._pool = (self._shape(), self._pool), None
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
            if self._client is not None:
                self._client.close()
        except BaseException:  # interrupted while shutting down
            self.stop()
            raise

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop every run this pool started, within about `grace` seconds: no queued run
        starts, a local process gets SIGTERM (Dagster records its run as failed) and SIGKILL
        after `grace`, a Dask run gets KeyboardInterrupt in its thread (`interrupt_runs`)."""
        deadline = time.monotonic() + grace
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # The executor's own processes (no public accessor; CPython has kept this one).
            processes = list((getattr(pool, "_processes", None) or {}).values())
            # Queued runs are cancelled by the pool itself (a future cancelled here makes its
            # manager thread fail when it finds the processes gone).
            pool.shutdown(wait=False, cancel_futures=True)
            signalled = 0.0
            while processes and time.monotonic() < deadline:
                if time.monotonic() - signalled >= 0.2:
                    for proc in processes:
                        proc.terminate()
                    signalled = time.monotonic()
                time.sleep(0.02)
                processes = [p for p in processes if p.is_alive()]
            for proc in processes:
                proc.kill()
                proc.join(1)
        if self._client is not None:
            try:
                self._client.cancel([*self._futures, *self._beside], force=True)
                while any(
                    self._client.run(interrupt_runs, self._token, on_error="ignore").values()
                ) and (time.monotonic() < deadline):
                    time.sleep(0.5)
            finally:
                self._client.close(timeout=max(1, int(deadline - time.monotonic())))
                self._client = None

    def workers(self) -> list[str]:
        """The engine's workers: Dask worker addresses, or the local pool's size."""
        if self._client is not None:
            return sorted(self._client.scheduler_info()["workers"])
        return [f"local process {i + 1}" for i in range(self.config.parallel)]

    def run_all(
        self,
        job_name: str,
        keys: Sequence[Selection],
        tags: dict[str, str],
        run_config: dict,
        stage: str,
        assets: list[str] | None = None,
    ) -> list[RunReport]:
        """One run per key (a partition, or a range of class partitions), at most `parallel` at once; reports in the order of keys. Waits
        in steps of POLL_S, checking for a stop (`check_stop`) between them. `assets`: only
        those of the job (and their checks)."""
        args = [
            (self.config.model_dump_json(), job_name, key, tags, run_config, stage) for key in keys
        ]
        self._futures = []
        if self._client is not None:
            from distributed import wait

            # At most `parallel` class runs at once across the cluster, whatever its size.
            reports: list[RunReport | None] = [None] * len(args)
            todo = iter(enumerate(args))
            index: dict = {}
            for _ in range(self.config.parallel):
                self._submit_next(todo, index, assets)
            while index:
                try:
                    done = wait(list(index), timeout=POLL_S, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    done = set()
                check_stop()
                for future in done:
                    reports[index.pop(future)] = future.result()
                    self._submit_next(todo, index, assets)
            return reports  # type: ignore[return-value]
        assert self._pool is not None
        self._futures = [
            self._pool.submit(run_partition, *a, self.dagster_home, self._token, assets)
            for a in args
        ]
        while concurrent.futures.wait(self._futures, timeout=POLL_S).not_done:
            check_stop()
        check_stop()
        return [f.result() for f in self._futures]

    def start(
        self,
        job_name: str,
        key: Selection,
        tags: dict[str, str],
        run_config: dict,
        stage: str,
        assets: list[str],
    ) -> Any:
        """Start one run of `assets` of a job on a worker and return at once: its handle, for
        `report`. The caller runs other steps of the same partition meanwhile."""
        a = (self.config.model_dump_json(), job_name, key, tags, run_config, stage)
        if self._client is not None:
            future = self._client.submit(
                run_partition, *a, self.dagster_home, self._token, assets, pure=False
            )
        else:
            assert self._pool is not None
            future = self._pool.submit(run_partition, *a, self.dagster_home, self._token, assets)
        self._beside.append(future)
        return future

    def report(self, handle: Any) -> RunReport:
        """The report of a run `start`ed, once it has ended; waits in steps of POLL_S,
        checking for a stop (`check_stop`) between them."""
        if self._client is not None:
            from distributed import wait

            while True:
                try:
                    if wait([handle], timeout=POLL_S).done:
                        break
                except TimeoutError:
                    pass
                check_stop()
        else:
            while concurrent.futures.wait([handle], timeout=POLL_S).not_done:
                check_stop()
        check_stop()
        self._beside.remove(handle)
        return handle.result()

    def _submit_next(self, todo, index: dict, assets: list[str] | None = None) -> None:
        for i, a in todo:
            future = self._client.submit(
                run_partition, *a, self.dagster_home, self._token, assets, pure=False
            )
            self._futures.append(future)
            index[future] = i
            return
