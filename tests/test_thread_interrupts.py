"""A thread's interrupt (`interrupts.interrupt_thread`, how a Dask worker's run is stopped)
held while the thread is inside a `shielded` section (a storage's transaction) and raised
as the outermost section ends; at once outside one."""

from __future__ import annotations

import threading
import time

import pytest

from dedup_assets import interrupts


def _run_in_thread(body) -> tuple[list[str], threading.Thread]:
    """`body(events, ready)` in a new thread; what it recorded, and the thread."""
    events: list[str] = []
    ready = threading.Event()

    def target() -> None:
        try:
            body(events, ready)
            events.append("ended")
        except KeyboardInterrupt:
            events.append("interrupted")

    thread = threading.Thread(target=target)
    thread.start()
    assert ready.wait(10)
    return events, thread


def _spin(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # Python instructions: an interrupt lands here
        pass


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_an_interrupt_waits_for_the_end_of_the_outermost_section(depth):
    def body(events, ready):
        def section(level: int) -> None:
            with interrupts.shielded():
                if level == depth:
                    ready.set()
                    _spin(0.5)  # sent meanwhile: held
                    events.append("section done")
                else:
                    section(level + 1)
                    events.append(f"level {level} done")

        section(1)
        _spin(5)  # never reached in full

    events, thread = _run_in_thread(body)
    time.sleep(0.1)
    interrupts.interrupt_thread(thread.ident)
    thread.join(10)
    assert events == ["section done", *[f"level {lv} done" for lv in range(depth - 1, 0, -1)]] + [
        "interrupted"
    ]


def test_an_interrupt_outside_a_section_lands_at_once():
    def body(events, ready):
        ready.set()
        _spin(5)

    events, thread = _run_in_thread(body)
    sent = time.monotonic()
    interrupts.interrupt_thread(thread.ident)
    thread.join(10)
    assert events == ["interrupted"] and time.monotonic() - sent < 2


def test_a_cancelled_interrupt_is_not_raised_and_a_section_counts_nothing_after():
    def body(events, ready):
        with interrupts.shielded():
            ready.set()
            _spin(0.5)
        _spin(0.3)

    events, thread = _run_in_thread(body)
    time.sleep(0.1)
    interrupts.interrupt_thread(thread.ident)
    interrupts.cancel_thread_interrupt(thread.ident)
    thread.join(10)
    assert events == ["ended"]
    assert thread.ident not in interrupts._SHIELDED and thread.ident not in interrupts._HELD


def test_the_main_thread_is_not_counted():
    with interrupts.shielded():
        assert threading.get_ident() not in interrupts._SHIELDED
