"""What opening `dedup run`'s Dagster instance imports (its SQLite storages, alembic, the
instance factory: about 400 modules, 0.27 s of a 2-core machine's first `open_instance`),
imported ahead by a process that will open it: the local pool's worker server preloads
this module (`engines.WORKER_PRELOAD`), so a forked worker's first run is created without
them (the workers' first runs of EuroSAT were created 0.37 s after the index ended); with
them, the empty run database each run's storage starts from.

A module that a Dagster release moves or drops is left out (it is then imported when
the instance is opened, as before): nothing here is needed, only sooner."""

from __future__ import annotations

import contextlib
import importlib

MODULES = (
    "dedup_assets.event_storage",
    "dedup_assets.run_storage",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.noop_compute_log_manager",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.root",
    "dagster._core.storage.legacy_storage",
    "dagster._core.instance.factory",
    "dagster._core.secrets.env_file",
    "dagster._core.scheduler",
    "dagster._core.remote_representation",
    "dagster._core.execution.backfill",
    "alembic.command",
    "alembic.config",
    "alembic.runtime.migration",
    "upath",
    # what the instance's definitions state storage imports when it opens (37 modules)
    "upath.core",
    "upath.implementations.local",
    "fsspec.implementations.local",
    "dagster._core.storage.migration.utils",
)

for _name in MODULES:
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)

# And the empty run database every run's storage copies, made once here for the workers
# forked after this import (`event_storage.prepare_run_databases`).
from dedup_assets.event_storage import prepare_run_databases  # noqa: E402

prepare_run_databases()
