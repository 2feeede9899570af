"""A step's success told to the code that runs its run in process, while the run goes on.

`dedup run` with workers starts the summary on a worker as soon as a threshold's report
step has succeeded in its own process, while the same run goes on to the threshold's clean
copy (`runner._EarlySummary`): the summary reads the keep list, the report and the
cross-class table, never the clean copy. A Dagster success hook on `threshold_job`, called
in the thread that executes the step; where nothing listens there (a worker's runs, the
UI's), it does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

_LISTENING = threading.local()


@dg.success_hook(name="step_succeeded")
def step_succeeded(context: dg.HookContext) -> None:
    """Tell this thread's listener (`listening`) which step has succeeded."""
    listener = getattr(_LISTENING, "listener", None)
    if listener is not None:
        listener(context.op.name)


@contextmanager
def listening(listener: Callable[[str], None] | None) -> Iterator[None]:
    """Within: `listener(op name)` after each step of a run this thread executes succeeds
    (None: nothing listens)."""
    previous = getattr(_LISTENING, "listener", None)
    _LISTENING.listener = listener
    try:
        yield
    finally:
        _LISTENING.listener = previous
