"""Worker pools that stop with the run.

`with ThreadPoolExecutor() as pool` waits, on the way out, for every task still queued: a
Ctrl-C that reaches the waiting thread (Dagster turns the signal into a KeyboardInterrupt
in the step's thread) would still copy, hash or decode the rest of the batch. Leaving
through `cancelling` drops what is queued, so only the chunks already running finish
(callers keep chunks small for that reason).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TypeVar

PoolT = TypeVar("PoolT", bound=Executor)

_process_cores: int | None = None


def set_process_cores(cores: int) -> None:
    """This process's share of the machine's cores, for a process that runs beside others
    (a worker of `dedup run`'s local pool): its own pools use that many, not one per CPU."""
    global _process_cores
    _process_cores = max(1, cores)


def process_cores() -> int:
    """How many processes or threads this process's own pools may use: its share
    (`set_process_cores`), else every CPU. Measured on 2 cores, EuroSAT in two class runs at
    once: each run's decoding step took 8.3 s with two forked decoders of its own, 5.2-5.6 s
    decoding in its own process (the pixels no longer pickled back through a pipe)."""
    return _process_cores or os.cpu_count() or 1


@contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """numpy's BLAS (OpenBLAS, MKL) in this process limited to `threads` while inside: for
    work beside other processes on the same cores (the command's steps beside `dedup run`'s
    workers), whose spinning BLAS threads would wait for cores the others hold (a class
    refit took 38 ms against 29 ms on one thread with one core busy; a QR 0.13 s instead of
    10 ms), and for the cross-class join's own threads, one BLAS thread each."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an environment from before the dependency: as it was
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


@contextmanager
def cancelling(pool: PoolT) -> Iterator[PoolT]:
    """Use `pool`; on any exception (an interrupt included) cancel its queued tasks, then
    wait only for the running ones."""
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
