"""Which engine runs the per-class runs: one after another in the `dedup run` process, a
pool of local processes, the workers of a `dask.distributed` cluster, or (for the code
location of deploy/k8s) a Kubernetes job per step.

This module holds the choice and what it depends on: the `Executor` a configuration
names, what `auto` stands for with the data at hand (`resolve_auto`), the Dagster executor
of the code location (`executor_definition`), and how a process of the local pool is set
up. It sits under the configuration and the definitions, which both read it; running the
partitions on the chosen engine is `dispatch`, above the definitions.

Why not dagster-dask's step executor: with the dask of today (>= 2024.11) its
`client.submit` walks every argument, and the DagsterRun of a run of dynamically
partitioned assets holds a `KeyRangesPartitionsSubset` record that refuses iteration, so
every such run fails before its first step (tried with dagster-dask 0.29.27, dask 2024.10,
2024.11.2 and 2026.8.0). The distribution is therefore by run, as Dagster's own run
launchers do it, not by step (`dispatch`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dagster is imported where a definition needs it: `dedup run` reads
    # this module to choose its executor before anything heavy is imported.
    import dagster as dg


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


class EngineUnavailable(RuntimeError):
    """The chosen executor needs a package or a scheduler that is not there."""


# `auto` runs class and threshold partitions on AUTO_WORKERS local processes when there are
# at least AUTO_MIN_IMAGES images or AUTO_MIN_CLASSES classes, no class holds more than
# AUTO_MAX_CLASS_IMAGES and the machine has the cores (benchmarks/README.md, Scale: 2
# workers at 13,500 images a class, 173 s against 198 s in one process at 135,000 images,
# peak PSS 2.8 GiB against 1.5 GiB).
# Bigger classes stay in one process: two of them at once would pass the 4 GiB a run may
# take on a 2-core, 24 GiB machine (one process peaked at 3.7 GiB at 100,000 a class).
# Many classes count as much as many images: a class costs its steps files, tables and
# Dagster events whatever its size (about 45 ms of the class stage in one process), and two
# workers share that (1,000 classes of one image, `dedup run --epochs 1`: 58.2 and 53.8 s
# on two processes against 75.4 and 75.5 s in one; 300 classes: 34.0 and 31.8 s against
# 32.3 and 40.6 s, about even; benchmarks/bench_auto_many_classes.py).
AUTO_MIN_IMAGES = 20_000
AUTO_MIN_CLASSES = 500
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
    classes = len(class_sizes)
    if total < AUTO_MIN_IMAGES and classes < AUTO_MIN_CLASSES:
        return (
            Executor.in_process,
            1,
            f"{total:,} files (< {AUTO_MIN_IMAGES:,}) in {classes:,} classes "
            f"(< {AUTO_MIN_CLASSES})",
        )
    if largest > AUTO_MAX_CLASS_IMAGES:
        return (
            Executor.in_process,
            1,
            f"a class of {largest:,} files (> {AUTO_MAX_CLASS_IMAGES:,}): one at a time",
        )
    why = f"{total:,} files" if total >= AUTO_MIN_IMAGES else f"{classes:,} classes"
    return Executor.processes, workers, f"{why}, at most {largest:,} a class"


def executor_definition(executor: Executor) -> dg.ExecutorDefinition | None:
    """The Dagster executor of the code location's jobs: k8s_job_executor on Kubernetes,
    else Dagster's default (`dedup run` executes its runs itself, see dispatch.ClassRunPool)."""
    if executor != Executor.k8s:
        return None
    try:
        from dagster_k8s import k8s_job_executor  # optional: the kubernetes extra
    except ImportError as exc:
        raise EngineUnavailable(
            "executor k8s needs dagster-k8s: pip install 'latent-dedup[kubernetes]'"
        ) from exc
    return k8s_job_executor


# What the local pool's worker server imports once, so that every worker starts as a fork
# of it with the pipeline's modules loaded (`worker_context`).
WORKER_PRELOAD = ["dedup_assets.dispatch", "dedup_assets.instance_imports"]
# Polars reads its variable when its pool starts (a process's first parallel operation; the
# server runs none): a worker's two polars threads beside another worker's on 2 cores made a
# small sort 5x and a small parquet read 3x slower (measured with a second process busy).
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "POLARS_MAX_THREADS")


@contextmanager
def _thread_settings(threads: int) -> Iterator[None]:
    """The BLAS and OpenMP thread variables set to `threads` while inside, restored after."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARS}
    os.environ.update({name: str(threads) for name in _THREAD_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_context(threads: int) -> multiprocessing.context.BaseContext:
    """How the local pool starts its processes, the server of `forkserver` started now if
    it is not running yet (and the platform has it): that server imports the pipeline once
    (`WORKER_PRELOAD`, with the workers' thread settings, which numpy's and torch's BLAS
    read as they load), and each worker is a fork of it, not a fresh interpreter importing
    Dagster, torch and polars (4-6 s of each worker on 2 cores, measured). The server runs
    nothing but imports, so its forks start with no threads and no open database, as spawned
    processes do. Started before the calling process's own imports (`dedup run` does, when
    its listing says the pool will be used), both imports share the cores. Elsewhere: spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    with _thread_settings(threads):  # the server's environment is copied as it starts
        multiprocessing.forkserver.ensure_running()
    return context


def threads_per_process(parallel: int) -> int:
    """Torch threads for each of `parallel` concurrent run processes on this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, parallel))


ORPHANED_EXIT = 75
"""A pool process's exit status when it ends because the process that started it is gone."""
PARENT_CHECK_S = 0.5


def exit_with_parent(every: float = PARENT_CHECK_S) -> None:
    """End this process (os._exit) once the process that started it is gone: a `dedup run`
    killed outright (SIGKILL, the kernel's out-of-memory killer, a CI timeout) left its
    pool's processes waiting for work for ever, each holding its memory (340 MB on the
    1,000-class benchmark), since every one of them holds the pool's queue open. A look at
    the parent's pid every `every` seconds, on a daemon thread: whatever thread forked the
    process (the kernel's parent-death signal follows the thread)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def init_pool_process(threads: int, verbose: bool) -> None:
    """A process of the local pool, before its first run: its share of the cores, (unless
    verbose) quiet, since what a run did comes back in its RunReport, and ending with the
    command that started it (`exit_with_parent`). Kept in this light module so that the
    process sets its threads before anything imports torch."""
    exit_with_parent()
    # torch's and numpy's BLAS (OpenBLAS, MKL) read these as they load, polars as its pool
    # starts: set before either.
    # Measured, a numpy QR of 10,000 x 11 took 0.13 s instead of 10 ms with OpenBLAS's
    # threads spinning against a second worker on 2 cores.
    for name in _THREAD_VARS:
        os.environ.setdefault(name, str(threads))
    import torch

    from dedup_assets.core.data.pools import set_process_cores

    torch.set_num_threads(threads)
    set_process_cores(threads)  # its own pools (decoding) too: no pool within the pool
    if not verbose:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)


def init_forked_process(threads: int, verbose: bool) -> None:
    """A pool process forked from `dedup run` itself (`dispatch.prefork_pool`), before its
    first run: the signal handling of a new process (the command's handlers and its wakeup
    pipe are the command's, not the worker's: a SIGTERM that stops a worker must not read
    as the command's own), BLAS held to its share (numpy loaded it before the fork with
    every core), then as any pool process."""
    import signal

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    init_pool_process(threads, verbose)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an environment from before the dependency: as it was
        return
    threadpool_limits(limits=threads, user_api="blas")
