"""Worker pools that stop with the run.

`with ThreadPoolExecutor() as pool` waits, on the way out, for every task still queued: a
Ctrl-C that reaches the waiting thread (Dagster turns the signal into a KeyboardInterrupt
in the step's thread) would still copy, hash or decode the rest of the batch. Leaving
through `cancelling` drops what is queued, so only the chunks already running finish
(callers keep chunks small for that reason).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

PoolT = TypeVar("PoolT", bound=Executor)
T = TypeVar("T")

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
    controller = _blas_controller()
    if controller is None:  # an environment from before the dependency: as it was
        yield
        return
    with controller.limit(limits=threads, user_api="blas"):
        yield


@functools.cache
def _blas_controller() -> Any:
    """threadpoolctl's view of the libraries this process has loaded, taken once a process:
    `threadpool_limits` takes it at every call, walking every loaded library (0.6 ms idle;
    1.9 CPU-seconds of a 1,000-class run, its small classes' null distributions one block
    each). numpy's BLAS, the one limited here, is loaded with numpy, before any call; None
    without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


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


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts: it is not ours to judge)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_idle_cores() -> None:
    """This thread at the lowest scheduling priority (nice 19), where the system sets it per
    thread (Linux): it then runs on a core no other runnable thread wants. Elsewhere, or
    when refused, the thread runs as any other."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def run_on_idle_cores(
    count: int,
    compute: Callable[[int], T],
    store: Callable[[int, int, T], None],
    threads: int,
    split: Sequence[Sequence[int]] | None = None,
    name: str = "idle",
) -> None:
    """`store(thread, i, compute(i))` for every task i in range(count), each store under one
    lock: the caller at its own priority, `threads - 1` helper threads at the lowest
    (`on_idle_cores`), so beside other work (the other worker's reports and clean copies)
    they take only cores left idle. The caller never waits for a helper: when no task is
    left it computes again any task a helper still holds, and returns; a helper's later
    result is dropped. A task may thus be stored twice (by the same value), in any order,
    so `store` must not depend on either. BLAS runs one thread per call meanwhile, with one
    thread as with several: a product then gives the same bits whichever thread computes it
    and however many there are (OpenBLAS on several threads of its own gave some products
    other last bits: a join asked for one thread differed from the same join on two, on a
    machine whose BLAS had two threads free). `split` (tests): the tasks each thread computes, in
    order, none taken from the others. Helper threads are named `<name>-<thread>`."""
    k = len(split) if split is not None else max(1, min(threads, count))
    if count == 0 and split is None:
        return
    lock = threading.Lock()
    state = np.zeros(count, dtype=np.int8)  # 0 waiting, 1 taken, 2 done
    closed = threading.Event()  # the caller has returned: later results are dropped

    def run(t: int, i: int) -> None:
        value = compute(i)
        with lock:
            if not closed.is_set():
                store(t, i, value)
                state[i] = 2

    def take(stealing: bool) -> int | None:
        with lock:
            waiting = np.flatnonzero(state == 0)
            if len(waiting):
                state[waiting[0]] = 1
                return int(waiting[0])
            held = np.flatnonzero(state == 1)
            return int(held[0]) if stealing and len(held) else None

    def helper(t: int) -> None:
        on_idle_cores()
        try:
            for i in split[t] if split is not None else iter(lambda: take(False), None):
                if closed.is_set():
                    return
                run(t, i)
        except Exception:  # noqa: BLE001 - the caller computes what this thread held
            return

    with blas_threads(1):
        helpers = [
            threading.Thread(target=helper, args=(t,), name=f"{name}-{t}", daemon=True)
            for t in range(1, k)
        ]
        for thread in helpers:
            thread.start()
        try:
            if split is not None:
                for i in split[0]:
                    run(0, i)
                for thread in helpers:
                    thread.join()
            else:
                while (i := take(True)) is not None:
                    run(0, i)
        finally:
            closed.set()  # an interrupt or an error here: the helpers stop after their task
