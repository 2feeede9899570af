"""SIGINT and SIGTERM of `dedup run`: the process's stop state, and how code asks for it.

`stop_on_signals` turns the first SIGINT or SIGTERM into `Interrupted` (also when Dagster's
own handler took it inside a run: `check_stop`); `stop_requested` is what a long step
polls (the training loop, between batches). This is process state, not dispatch: the
assets read it, and the dispatch above them (`dispatch.ClassRunPool`) stops its workers
when `Interrupted` reaches it. Standard library only, so every layer may import it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# What a Dagster run's error says when it was interrupted rather than failed.
INTERRUPT_ERRORS = frozenset({"DagsterExecutionInterruptedError", "KeyboardInterrupt"})


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run: what finished is kept, the same command resumes."""

    def __init__(self, signum: int, stage: str = "") -> None:
        super().__init__(signum, stage)
        self.signum, self.stage = signum, stage

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a command the signal ended."""
        return 128 + self.signum

    def __str__(self) -> str:
        where = f" during [{self.stage}]" if self.stage else ""
        return (
            f"interrupted by {signal.Signals(self.signum).name}{where}; what finished is kept: "
            "run the same command again to resume"
        )


@dataclass
class _StopState:
    """The first SIGINT/SIGTERM seen, the stage then running, and the wakeup pipe's end."""

    signum: int | None = None
    stage: str = ""
    wakeup: int = -1


_STOP = _StopState()
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def is_interrupt(exc_type: type[BaseException] | None) -> bool:
    """Whether an exception type is an interruption (a signal), not a failure."""
    return exc_type is not None and (
        issubclass(exc_type, KeyboardInterrupt) or exc_type.__name__ in INTERRUPT_ERRORS
    )


class _DropInterrupts(logging.Filter):
    """Drops a log record of an interrupt that its library re-raises anyway (SQLAlchemy
    logs one landing in a connection's close, then raises it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and is_interrupt(record.exc_info[0]))


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, the first SIGINT or SIGTERM raises `Interrupted`, now or at the next
    `check_stop`; later ones are noted only, so stopping is not itself interrupted.

    Inside a Dagster run Dagster's handler replaces this one (for both signals) and restores
    it afterwards, forgetting the signal; the signal's number is also written to a wakeup
    pipe by Python's C handler whatever the Python handler, and `stop_requested` reads it.
    An interrupt raised inside a finalizer is dropped by Python, and one inside SQLAlchemy's
    connection close is logged before it is re-raised: neither is printed here (the first is
    acted on at the next `check_stop`). A signal the process was started ignoring (SIGINT in
    a background job) stays ignored. Handlers belong to the main thread: elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    old = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    _STOP.signum, _STOP.stage, _STOP.wakeup = None, "", read

    def handler(signum: int, frame: object) -> None:
        if _STOP.signum is None:
            _STOP.signum = signum
            raise Interrupted(signum, _STOP.stage)

    def unraisable(info: Any, hook=sys.unraisablehook) -> None:
        if not is_interrupt(info.exc_type):
            hook(info)

    quiet = logging.StreamHandler()  # what logging's last resort prints, less interrupts
    quiet.setLevel(logging.WARNING)
    quiet.addFilter(_DropInterrupts())
    pool_log = logging.getLogger("sqlalchemy.pool")
    for s, h in old.items():
        if h != signal.SIG_IGN:
            signal.signal(s, handler)
    sys.unraisablehook, old_hook = unraisable, sys.unraisablehook
    pool_log.addHandler(quiet)
    try:
        yield
    finally:
        pool_log.removeHandler(quiet)
        sys.unraisablehook = old_hook
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(old_fd)
        # The signal belonged to this run: a later run in the same process (a notebook, a
        # test) starts unstopped, also one that never enters this context.
        _STOP.signum, _STOP.wakeup = None, -1
        os.close(read)
        os.close(write)


def note_stage(name: str) -> None:
    """The stage now running, named by `Interrupted`."""
    _STOP.stage = name


def stop_requested() -> bool:
    """Whether SIGINT or SIGTERM reached this process inside `stop_on_signals`, even one
    Dagster's handler took in a run; cheap enough to ask between training batches."""
    while _STOP.signum is None and _STOP.wakeup >= 0:
        try:
            data = os.read(_STOP.wakeup, 64)
        except BlockingIOError:
            break
        if not data:
            break
        for signum in data:
            if signum in _STOP_SIGNALS and _STOP.signum is None:
                _STOP.signum = signum
    return _STOP.signum is not None


def check_stop() -> None:
    """Raise `Interrupted` if `stop_requested`."""
    if stop_requested():
        raise Interrupted(_STOP.signum or signal.SIGINT, _STOP.stage)


# ---------------------------------------------------------------- a thread's interrupt

# A Dask worker runs a class run in one of its threads; `dispatch.interrupt_runs` stops it
# by raising KeyboardInterrupt in that thread, sent again every half second until the run
# has ended. One that lands while the thread is inside a database's transaction, or inside
# SQLAlchemy's pool (its own locks), can leave the transaction open and the database locked
# for good, or a lock of the pool held: the command then waited SQLite's 30 s busy timeout
# to record the run as canceled, and one worker hung until its nanny killed it (seen in
# tests/test_interrupt.py under load). The storages mark those sections `shielded`: an
# interrupt sent meanwhile is held and raised as the outermost section ends.
_THREADS_LOCK = threading.Lock()
_SHIELDED: dict[int, int] = {}  # thread ident -> depth of nested shielded sections
_HELD: set[int] = set()  # threads whose interrupt waits for the end of their section


def _async_raise(ident: int, exc: type[BaseException] | None) -> None:
    """Raise exc in thread `ident` at its next Python instruction (None: cancel that)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc) if exc is not None else None
    )


def interrupt_thread(ident: int) -> None:
    """KeyboardInterrupt in thread `ident`: at its next instruction, or, while it is inside
    a `shielded` section, as that section ends."""
    with _THREADS_LOCK:
        if _SHIELDED.get(ident):
            _HELD.add(ident)
        else:
            _async_raise(ident, KeyboardInterrupt)


def cancel_thread_interrupt(ident: int) -> None:
    """Drop an interrupt sent to thread `ident` that it has not raised yet."""
    with _THREADS_LOCK:
        _HELD.discard(ident)
        _async_raise(ident, None)


@contextmanager
def shielded() -> Iterator[None]:
    """A section that `interrupt_thread` does not interrupt (a database's transaction): an
    interrupt sent meanwhile is raised as the outermost section ends. The main thread is
    never sent one (signals reach it instead): nothing is counted there."""
    if threading.current_thread() is threading.main_thread():
        yield
        return
    ident = threading.get_ident()
    with _THREADS_LOCK:
        _SHIELDED[ident] = _SHIELDED.get(ident, 0) + 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            depth = _SHIELDED.pop(ident) - 1
            if depth:
                _SHIELDED[ident] = depth
            held = not depth and ident in _HELD
            _HELD.discard(ident) if held else None
        if held:
            raise KeyboardInterrupt
