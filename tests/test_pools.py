"""Pools that stop with the run: an interrupt drops the queued tasks and waits only for the
running ones (before, `with ThreadPoolExecutor()` copied, hashed or decoded the rest)."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dedup_assets.core.data.pools import cancelling


def test_an_interrupt_cancels_what_is_queued():
    started = []

    def task(i: int) -> int:
        started.append(i)
        time.sleep(0.05)
        return i

    with pytest.raises(KeyboardInterrupt), cancelling(ThreadPoolExecutor(2)) as pool:
        results = pool.map(task, range(100))
        next(results)
        raise KeyboardInterrupt
    # The running tasks finished; the ~96 queued ones never started (5 s of work).
    assert len(started) < 10


def test_without_an_interrupt_every_task_runs():
    with cancelling(ThreadPoolExecutor(max_workers=2)) as pool:
        assert sum(pool.map(lambda i: i, range(100))) == 4950


@pytest.mark.parametrize("count", [0, 1, 2, 7, 50])
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_every_task_is_stored_whatever_the_threads(count, threads):
    """`run_on_idle_cores`: every task's result stored (some twice, never a wrong one), on at
    most `threads` threads, helpers named for the work."""
    import threading

    from dedup_assets.core.data.pools import run_on_idle_cores

    stored: dict[int, int] = {}
    names: set[str] = set()

    def compute(i: int) -> int:
        names.add(threading.current_thread().name)
        return i * i

    def store(t: int, i: int, value: int) -> None:
        assert 0 <= t < max(1, min(threads, count)) and stored.get(i, value) == value
        stored[i] = value

    run_on_idle_cores(count, compute, store, threads, name="squares")
    assert stored == {i: i * i for i in range(count)}
    assert names <= {threading.current_thread().name} | {f"squares-{t}" for t in range(1, threads)}


def test_the_caller_computes_what_a_starved_or_failing_helper_holds():
    """A helper that never gets a core, and one whose task raises: the caller computes their
    tasks too and returns every result; the starved helper's late result is dropped."""
    import threading

    from dedup_assets.core.data.pools import run_on_idle_cores

    release, held = threading.Event(), threading.Event()
    taken = {"sleepy-1": 0, "sleepy-2": 0}

    def compute(i: int) -> tuple[int, str]:
        name = threading.current_thread().name
        if name in taken:
            taken[name] += 1
            if name == "sleepy-1":
                held.set()
                release.wait(30)  # starved
            else:
                raise RuntimeError("a helper's task failed")
        else:
            held.wait(10)  # the caller lets the first helper take a task
        return i, name

    stored: dict[int, tuple[int, str]] = {}
    try:
        run_on_idle_cores(20, compute, lambda _t, i, v: stored.__setitem__(i, v), 3, name="sleepy")
        assert taken["sleepy-1"] == 1  # it took a task and still held it
        late = dict(stored)
    finally:
        release.set()
    assert sorted(stored) == list(range(20))
    time.sleep(0.1)  # the starved helper finishes now: its result is not stored
    assert stored == late


def test_an_interrupt_in_the_caller_stops_the_helpers():
    import threading

    from dedup_assets.core.data.pools import run_on_idle_cores

    def compute(i: int) -> int:
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        time.sleep(0.02)
        return i

    with pytest.raises(KeyboardInterrupt):
        run_on_idle_cores(200, compute, lambda *a: None, 3, name="stopping")
    deadline = time.monotonic() + 10
    while any(t.name.startswith("stopping-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the helpers kept running"
        time.sleep(0.01)


def test_blas_threads_limits_numpys_blas_inside_and_restores_it_after(monkeypatch):
    """numpy's BLAS has the asked number of threads inside (nested too), what it had after;
    the libraries are looked up once a process, not at every call (each look walked every
    loaded library: 0.6 ms, thousands of calls in a run of many small classes)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from dedup_assets.core.data import pools

    def blas() -> list[int]:
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    if not blas():
        pytest.skip("threadpoolctl finds no BLAS library in this numpy: nothing to limit")
    before = blas()

    def walked(*args, **kwargs):
        raise AssertionError("threadpool_limits looks up every loaded library at each call")

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", walked)
    pools._blas_controller.cache_clear()
    try:
        for _ in range(5):
            with pools.blas_threads(1):
                assert blas() == [1] * len(before)
                with pools.blas_threads(2):
                    assert blas() == [2] * len(before)
                assert blas() == [1] * len(before)
            assert blas() == before
        assert pools._blas_controller.cache_info().misses == 1
    finally:
        pools._blas_controller.cache_clear()
