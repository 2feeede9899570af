"""The SQLite event log of `dedup run`'s instance, writing a batch of asset events at once.

A run over a range of classes records one materialization per class and asset when its
step ends. Dagster hands such a step's materializations over as one batch when
`DAGSTER_EVENT_BATCH_SIZE` is set (`dispatch.py` sets it), but its SQLite storage stores a
batch one event at a time, and each event opens, commits and closes two databases (the
run's and the cross-run index). Here a batch of asset events of one run is two
transactions: every row into the run's database, then every row, tag and asset entry into
the index, the same statements Dagster's `SqliteEventLogStorage.store_event` runs per
event. Anything else (mixed runs, other event types) is stored event by event, as before.

The files are Dagster's own: the UI, the daemon and an instance configured without this
class read them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

MODULE = __name__
CLASS = "BatchedSqliteEventLogStorage"


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` whose `store_event_batch` writes a run's asset events in one
    transaction per database (module doc)."""

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: Any, config_value: Any
    ) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        if len(events) < 2 or not _one_run_of_asset_events(events):
            super().store_event_batch(events)
            return
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        with self.index_transaction() as conn:
            ids = []
            for statement in statements:
                result = conn.execute(statement)
                ids.append(result.inserted_primary_key[0])
            self._store_asset_event_tags(conn, events, ids)
            for event, event_id in zip(events, ids, strict=True):
                self._store_asset_event(conn, event, event_id)


def _one_run_of_asset_events(events: Sequence[EventLogEntry]) -> bool:
    run_id = events[0].run_id
    return all(
        event.run_id == run_id
        and event.is_dagster_event
        and event.dagster_event_type in ASSET_EVENTS
        for event in events
    )


def storage_yaml(base_dir: str) -> str:
    """The instance file lines that make an instance store its events with this class."""
    return (
        "event_log_storage:\n"
        f"  module: {MODULE}\n"
        f"  class: {CLASS}\n"
        "  config:\n"
        f"    base_dir: {base_dir}\n"
    )
