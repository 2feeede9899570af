"""Partitions: classes discovered from the data, thresholds from the configuration.

Classes are dynamic partitions (the catalog registers them), so one class can be
recomputed alone when only its images change and classes can fan out to separate
workers. A run covers a contiguous range of them (`class_ranges`): the per-class assets
loop over their run's classes (`assets/class_batch.py`). Thresholds are static keys written exactly as configured; they are built by
`threshold_partitions(config.thresholds)` inside the Definitions factory, never read
from the environment at import time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

# Checks are partitioned like their assets, so the UI shows a verdict per class or per
# threshold. That is a preview feature of Dagster 1.13 (hence the pin to <1.14 in
# pyproject.toml); its warning is silenced here, once, for every module that uses it.
warnings.filterwarnings(
    "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning
)

CLASS_DIM = "image_class"

class_partitions = dg.DynamicPartitionsDefinition(name=CLASS_DIM)


def threshold_partitions(thresholds: Sequence[str]) -> dg.StaticPartitionsDefinition:
    """One partition per configured threshold, keys as written (e.g. "0.95")."""
    return dg.StaticPartitionsDefinition(list(thresholds))


# One run covers a range of class partitions (the per-class assets' single-run backfill
# policy, `assets/class_batch.py`), named by these tags as Dagster's backfills name it.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

# Classes per run at most. A run's per-class check verdicts are read and written in
# statements whose SQL variables grow with its range: measured, a range of more than 4,095
# classes with a check per class fails on SQLite builds limited to 32,766 variables. Runs
# stay well under that, and a failed run costs at most this many classes' work.
MAX_CLASSES_PER_RUN = 1_000


@dataclass(frozen=True)
class ClassRange:
    """A contiguous range of class partitions (in the instance's order): one run's classes."""

    start: str
    end: str
    size: int

    def tags(self) -> dict[str, str]:
        return {RANGE_START_TAG: self.start, RANGE_END_TAG: self.end}

    def __str__(self) -> str:
        return self.start if self.size == 1 else f"{self.start} .. {self.end} ({self.size} classes)"


def class_ranges(
    wanted: Sequence[str],
    order: Sequence[str],
    *,
    parts: int = 1,
    max_size: int | None = None,
) -> list[ClassRange]:
    """The fewest ranges of `order` (the registered partitions, in the instance's order)
    that cover exactly the `wanted` classes, split into at least `parts` ranges where there
    are that many classes (one per worker) and at most `max_size` classes each (default:
    MAX_CLASSES_PER_RUN)."""
    at = {key: i for i, key in enumerate(order)}
    unknown = [k for k in wanted if k not in at]
    if unknown:
        raise KeyError(f"not registered class partitions: {', '.join(map(str, unknown[:5]))}")
    positions = sorted({at[k] for k in wanted})
    stretches: list[list[int]] = []
    for p in positions:
        if stretches and stretches[-1][-1] == p - 1:
            stretches[-1].append(p)
        else:
            stretches.append([p])
    limit = max_size or MAX_CLASSES_PER_RUN
    size = max(1, min(limit, -(-len(positions) // max(parts, 1))))
    out = []
    for stretch in stretches:
        for s in range(0, len(stretch), size):
            piece = stretch[s : s + size]
            out.append(ClassRange(order[piece[0]], order[piece[-1]], len(piece)))
    return out
