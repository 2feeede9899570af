"""Partitions: classes discovered from the data x similarity thresholds from configuration.

Classes are dynamic partitions, so one class can be recomputed alone when only its images
change and classes can fan out to separate workers. Thresholds are static keys, written
exactly as configured (`DEDUP_THRESHOLDS`, comma-separated; default 0.93,0.95,0.97).
"""

from __future__ import annotations

import os
import warnings

import dagster as dg

DEFAULT_THRESHOLDS = ("0.93", "0.95", "0.97")
CLASS_DIM = "image_class"
THRESHOLD_DIM = "threshold"


def parse_thresholds(text: str | None) -> tuple[str, ...]:
    """Threshold keys from 'a,b,c', validated as numbers in (-1, 1), kept as written."""
    if not text or not text.strip():
        return DEFAULT_THRESHOLDS
    keys = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for key in keys:
        try:
            value = float(key)
        except ValueError:
            raise ValueError(f"threshold {key!r} is not a number") from None
        if not -1.0 < value < 1.0:
            raise ValueError(f"threshold {key} must lie strictly between -1 and 1 (a cosine)")
    return tuple(sorted(keys, key=float))


THRESHOLDS = parse_thresholds(os.environ.get("DEDUP_THRESHOLDS"))

class_partitions = dg.DynamicPartitionsDefinition(name=CLASS_DIM)
threshold_partitions = dg.StaticPartitionsDefinition(list(THRESHOLDS))
class_threshold_partitions = dg.MultiPartitionsDefinition(
    {CLASS_DIM: class_partitions, THRESHOLD_DIM: threshold_partitions}
)

# How a class x threshold partition relates to one class or one threshold. The mapping
# class is marked beta in Dagster 1.13; it is the documented way to express this relation.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    by_class = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=CLASS_DIM)
    by_threshold = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=THRESHOLD_DIM)


def class_threshold_key(class_key: str, threshold: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({CLASS_DIM: class_key, THRESHOLD_DIM: threshold})
