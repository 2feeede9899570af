"""Partitions: classes discovered from the data, thresholds from the configuration.

Classes are dynamic partitions (the catalog registers them), so one class can be
recomputed alone when only its images change and classes can fan out to separate
workers. Thresholds are static keys written exactly as configured; they are built by
`threshold_partitions(config.thresholds)` inside the Definitions factory, never read
from the environment at import time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

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
