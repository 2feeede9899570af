"""Where the per-class runs execute: one after another in the `dedup run` process, in a
pool of local processes, or on the workers of a `dask.distributed` cluster.

The per-class stages (decoding, encoding, spline fits, keep decisions) are independent
across classes, so the main job can run up to `parallel` class partitions at once. Each
class partition is one Dagster run, executed whole by one worker (in-process there), in
the instance of the output folder: the distribution is by run, as Dagster's own run
launchers do it, not by step.

Why not dagster-dask's step executor: with the dask of today (>= 2024.11) its
`client.submit` walks every argument, and the DagsterRun of a run of dynamically
partitioned assets holds a `KeyRangesPartitionsSubset` record that refuses iteration, so
every such run fails before its first step (tried with dagster-dask 0.29.27, dask 2024.10,
2024.11.2 and 2026.8.0).

A worker rebuilds the job from the pipeline configuration itself (`job_for` on the
configuration's JSON), so it needs only the package installed and the source, the output
folder and its Dagster instance at the same paths (a shared filesystem on a real cluster).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import socket
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from dedup_assets.config import PipelineConfig

WORKER_METADATA = "worker"
WORKER_TAG = "latent_dedup/worker"


class Executor(StrEnum):
    """auto: `processes` where it measured faster within the memory asked, else
    `in_process` (`resolve_auto`; the default of `dedup run`);
    in_process: every run in the calling process (fastest for small data);
    processes: class runs in a pool of `parallel` local processes;
    dask: class runs on the workers of an existing dask.distributed scheduler;
    k8s: every step its own Kubernetes job (dagster-k8s's k8s_job_executor), for the code
    location of the deployment in deploy/k8s; not for `dedup run`."""

    auto = "auto"
    in_process = "in_process"
    processes = "processes"
    dask = "dask"
    k8s = "k8s"


# What the training and encoding steps ask of Kubernetes (read by dagster-k8s only).
GPU_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
            }
        }
    }
}


# `auto` runs class and threshold partitions on AUTO_WORKERS local processes when there are
# at least AUTO_MIN_IMAGES images, no class holds more than AUTO_MAX_CLASS_IMAGES and the
# machine has the cores (benchmarks/README.md, Scale: 2 workers at 13,500 images a class,
# 173 s against 198 s in one process at 135,000 images, peak PSS 2.8 GiB against 1.5 GiB).
# Bigger classes stay in one process: two of them at once would pass the 4 GiB a run may
# take on a 2-core, 24 GiB machine (one process peaked at 3.7 GiB at 100,000 a class).
AUTO_MIN_IMAGES = 20_000
AUTO_MAX_CLASS_IMAGES = 20_000
AUTO_WORKERS = 2


def resolve_auto(
    executor: Executor, parallel: int, class_sizes: Sequence[int], cores: int | None = None
) -> tuple[Executor, int, str]:
    """The executor and parallelism `auto` stands for with these class sizes (files listed
    in each class folder, known before anything is decoded; other executors are returned
    as given), and why."""
    if executor != Executor.auto:
        return executor, parallel, ""
    cores = (os.cpu_count() or 1) if cores is None else cores
    total, largest = sum(class_sizes), max(class_sizes, default=0)
    workers = parallel if parallel > 1 else min(AUTO_WORKERS, cores)
    if cores < 2:
        return Executor.in_process, 1, "one core"
    if total < AUTO_MIN_IMAGES:
        return Executor.in_process, 1, f"{total:,} files (< {AUTO_MIN_IMAGES:,})"
    if largest > AUTO_MAX_CLASS_IMAGES:
        return (
            Executor.in_process,
            1,
            f"a class of {largest:,} files (> {AUTO_MAX_CLASS_IMAGES:,}): one at a time",
        )
    return Executor.processes, workers, f"{total:,} files, at most {largest:,} a class"


def executor_definition(executor: Executor) -> dg.ExecutorDefinition | None:
    """The Dagster executor of the code location's jobs: k8s_job_executor on Kubernetes,
    else Dagster's default (`dedup run` executes its runs itself, see ClassRunPool)."""
    if executor != Executor.k8s:
        return None
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:
        raise EngineUnavailable(
            "executor k8s needs dagster-k8s: pip install 'latent-dedup[kubernetes]'"
        ) from exc
    return k8s_job_executor


class EngineUnavailable(RuntimeError):
    """The chosen executor needs a package or a scheduler that is not there."""


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


@dataclass
class RunReport:
    """What one run did, in a form that crosses process boundaries: failed steps, checks
    that did not pass, and the workers that materialized its assets."""

    failures: list[str] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, result: dg.ExecuteInProcessResult, stage: str, key: str | None) -> RunReport:
        """Failed steps and checks of a run (a blocking check that stopped a downstream
        asset is a verdict recorded as a check, not a failure of the stage)."""
        report = cls()
        for event in result.get_asset_materialization_events():
            worker = event.materialization.metadata.get(WORKER_METADATA)
            if worker is not None and str(worker.value) not in report.workers:
                report.workers.append(str(worker.value))
        if not report.workers and WORKER_TAG in result.dagster_run.tags:
            # Assets that do not record their worker (the threshold ones): the run's tag.
            report.workers.append(result.dagster_run.tags[WORKER_TAG])
        for evaluation in result.get_asset_check_evaluations():
            if evaluation.passed:
                continue
            meta = evaluation.metadata or {}
            reason = meta.get("outcome") or meta.get("problems")
            report.checks.append(
                CheckOutcome(
                    check=evaluation.check_name,
                    asset=evaluation.asset_key.to_user_string(),
                    partition=key,
                    severity="ERROR"
                    if evaluation.severity == dg.AssetCheckSeverity.ERROR
                    else "WARN",
                    reason=str(reason.value) if reason is not None else "see the check's metadata",
                )
            )
        where = f"{stage} [{key}]" if key is not None else stage
        for event in result.all_events:
            if not event.is_step_failure:
                continue
            error = event.event_specific_data.error
            if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
                continue
            report.failures.append(f"{where}: {event.step_key}: {root_cause(error)}")
        blocked = any(c.severity == "ERROR" for c in report.checks)
        if not result.success and not report.failures and not blocked:
            report.failures.append(f"{where}: the run failed before or between its steps")
        return report


def root_cause(error: Any) -> str:
    """One line naming the real cause of a step failure (not Dagster's wrapper)."""
    while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause
    if error is None:
        return "failed"
    lines = [line for line in error.message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else error.cls_name


@functools.lru_cache(maxsize=16)
def job_for(config_json: str, job_name: str) -> dg.JobDefinition:
    """Rebuild a named job from a configuration's JSON, in whatever process runs it (once
    per process: a worker runs many class partitions of the same job)."""
    from dedup_assets.config import PipelineConfig
    from dedup_assets.definitions import build_definitions

    config = PipelineConfig.model_validate_json(config_json)
    return build_definitions(config).resolve_job_def(job_name)


def run_partition(
    config_json: str,
    job_name: str,
    key: str | None,
    tags: dict[str, str],
    run_config: dict,
    stage: str,
    dagster_home: str,
) -> RunReport:
    """Run one partition of a named job in this process, in the instance at dagster_home
    (the output folder's), and report what it did: what a pool process or a Dask worker
    executes for each class."""
    os.environ["DAGSTER_HOME"] = dagster_home
    job = job_for(config_json, job_name)
    with dg.DagsterInstance.from_config(dagster_home) as instance:
        result = job.execute_in_process(
            partition_key=key,
            instance=instance,
            raise_on_error=False,
            tags={**tags, WORKER_TAG: worker_name()},
            run_config=run_config,
        )
        return RunReport.of(result, stage, key)


def worker_name() -> str:
    """Who runs the current step: the Dask worker's address, else host:pid."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def threads_per_process(parallel: int) -> int:
    """Torch threads for each of `parallel` concurrent run processes on this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel))


def _reachable(address: str) -> None:
    """Fail at once (OSError) when nothing listens at a tcp://host:port address."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()


def _pool_init(threads: int, verbose: bool) -> None:
    """A pool process: its share of the cores, and (unless verbose) quiet, since what a
    run did comes back in its RunReport."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    if not verbose:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)


class ClassRunPool:
    """Runs class partitions `parallel` at a time on the configured engine; a context
    manager that starts and stops the local processes or the Dask client."""

    def __init__(self, config: PipelineConfig, dagster_home: str, verbose: bool = False):
        self.config = config
        self.dagster_home = dagster_home
        self.verbose = verbose
        self._pool: ProcessPoolExecutor | None = None
        self._client = None

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
            self._pool = ProcessPoolExecutor(
                max_workers=self.config.parallel,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_pool_init,
                initargs=(threads_per_process(self.config.parallel), self.verbose),
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def workers(self) -> list[str]:
        """The engine's workers: Dask worker addresses, or the local pool's size."""
        if self._client is not None:
            return sorted(self._client.scheduler_info()["workers"])
        return [f"local process {i + 1}" for i in range(self.config.parallel)]

    def run_all(
        self,
        job_name: str,
        keys: list[str | None],
        tags: dict[str, str],
        run_config: dict,
        stage: str,
    ) -> list[RunReport]:
        """One run per key, at most `parallel` at once; reports in the order of keys."""
        args = [
            (self.config.model_dump_json(), job_name, key, tags, run_config, stage) for key in keys
        ]
        if self._client is not None:
            from distributed import as_completed

            # At most `parallel` class runs at once across the cluster, whatever its size.
            reports: list[RunReport | None] = [None] * len(args)
            todo = iter(enumerate(args))
            index = {}
            running = as_completed()
            for _ in range(self.config.parallel):
                self._submit_next(todo, index, running)
            for future in running:
                reports[index.pop(future)] = future.result()
                self._submit_next(todo, index, running)
            return reports  # type: ignore[return-value]
        assert self._pool is not None
        pending: list[Future] = [
            self._pool.submit(run_partition, *a, self.dagster_home) for a in args
        ]
        return [f.result() for f in pending]

    def _submit_next(self, todo, index: dict, running) -> None:
        for i, a in todo:
            future = self._client.submit(run_partition, *a, self.dagster_home, pure=False)
            index[future] = i
            running.add(future)
            return
