"""Progress lines at a readable pace: at most one every PROGRESS_EVERY_S seconds.

Each line a step logs is an event Dagster stores and shows in the run's log; a line per
training check and per epoch (two lines every few seconds on a GPU, hundreds for EuroSAT)
or per class of the evaluation (a thousand for a thousand classes) flooded that log with
heartbeats nobody reads. The whole record stays where it belongs (the training history in
`model/training_log.json`, every class's numbers in the tables); the log says how far a
step is, every so often, and how it ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PROGRESS_EVERY_S = 10.0


class Throttle:
    """A log that passes a progress line on when `every_s` seconds have passed since the
    last one it passed (the first always passes), or when told the line is the last
    (`final=True`: how the step ended is always said). Returns whether it passed."""

    def __init__(
        self,
        log: Callable[[str], None],
        every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log, self.every_s, self.clock = log, every_s, clock
        self.last: float | None = None
        self.dropped = 0

    def __call__(self, line: str, *, final: bool = False) -> bool:
        now = self.clock()
        if final or self.last is None or now - self.last >= self.every_s:
            self.last = now
            self.log(line)
            return True
        self.dropped += 1
        return False


_SINKS: list[Callable[[str], None]] = []


def with_sinks(log: Callable[[str], None], stage: str) -> Callable[[str], None]:
    """`log`, and every sink this process's command registered (`progress_to`) given the
    line with its stage, `[training] ...`: a step's progress lines are Dagster events the
    command's screen shows only with --verbose, so a long training sat silent there."""

    def both(line: str) -> None:
        log(line)
        for sink in list(_SINKS):
            sink(f"[{stage}] {line}")

    return both


@contextmanager
def progress_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Within the block, the progress lines of steps run in this process (`with_sinks`)
    also go to `sink`."""
    _SINKS.append(sink)
    try:
        yield
    finally:
        _SINKS.remove(sink)
