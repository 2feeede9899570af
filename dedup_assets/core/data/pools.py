"""Worker pools that stop with the run.

`with ThreadPoolExecutor() as pool` waits, on the way out, for every task still queued: a
Ctrl-C that reaches the waiting thread (Dagster turns the signal into a KeyboardInterrupt
in the step's thread) would still copy, hash or decode the rest of the batch. Leaving
through `cancelling` drops what is queued, so only the chunks already running finish
(callers keep chunks small for that reason).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TypeVar

PoolT = TypeVar("PoolT", bound=Executor)


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
