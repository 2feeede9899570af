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
