"""The SQLite event log of `dedup run`'s instance, writing a batch of asset events at once.

A run over a range of classes records one materialization per class and asset when its
step ends. Dagster hands such a step's materializations over as one batch when
`DAGSTER_EVENT_BATCH_SIZE` is set (`dispatch.py` sets it), but its SQLite storage stores a
batch one event at a time, and each event opens, commits and closes two databases (the
run's and the cross-run index). Here a batch of asset events of one run is two
transactions: every row into the run's database, then every row, tag and asset entry into
the index, the same statements Dagster's `SqliteEventLogStorage.store_event` runs per
event. Anything else (mixed runs, other event types) is stored event by event, as before.

A planned check's rows (one per class of the run) hold the same serialized event; Dagster
serializes it again for each row, here once (`_store_asset_check_evaluation_planned`).

A range's check verdicts (one `AssetCheckEvaluation` per class) are not batched by Dagster
at all: each was stored on its own, two databases opened and committed three times, about
14 ms a verdict (a third of what a 1,000-class range spent in its step). They are held here
instead and written in one transaction per database, with Dagster's own statements, as soon
as anything else touches the storage: the step's next event (a step always ends with a
success or failure event), any read, `dispose`, the interpreter's exit, or
`HELD_VERDICTS` of them. Nothing in this process reads the storage without seeing them.

The files are Dagster's own: the UI, the daemon and an instance configured without this
class read them as they are.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from dagster._core.events import ASSET_EVENTS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._serdes import serialize_value

MODULE = __name__
CLASS = "BatchedSqliteEventLogStorage"
HELD_VERDICTS = 1_000  # verdicts held at most before they are written


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` whose `store_event_batch` writes a run's asset events in one
    transaction per database (module doc)."""

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: Any, config_value: Any
    ) -> BatchedSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._held: list[EventLogEntry] = []
        self._held_lock = threading.RLock()
        self._open = threading.local()  # the index connection a flush has open, per thread
        self._checks_table = False
        super().__init__(*args, **kwargs)  # opens the databases: after the attributes above
        ref = weakref.ref(self)
        atexit.register(lambda: (held := ref()) is not None and held.store_held_verdicts())

    @property
    def supports_asset_checks(self) -> bool:  # ty: ignore[invalid-method-override]
        # Dagster asks for every verdict, each time opening the index to look for the table;
        # a table once there stays there.
        if not self._checks_table:
            self._checks_table = bool(super().supports_asset_checks)
        return self._checks_table

    def store_event(self, event: EventLogEntry) -> None:
        if not _run_check_verdict(event):
            super().store_event(event)  # `_connect` writes held verdicts first
            return
        with self._held_lock:
            if self._held and self._held[0].run_id != event.run_id:
                self.store_held_verdicts()
            self._held.append(event)
            if len(self._held) >= HELD_VERDICTS:
                self.store_held_verdicts()

    def store_held_verdicts(self) -> None:
        """Write the held check verdicts: every event into the run's database, then into the
        index with Dagster's own update of each verdict's check execution, one transaction
        each."""
        with self._held_lock:
            events, self._held = self._held, []
            if not events:
                return
            # Dagster's own connections: this storage's `_connect` would write them again.
            with self._inserted(events, super()._connect) as (conn, ids):
                self._open.index = conn
                try:
                    for event, event_id in zip(events, ids, strict=True):
                        self.store_asset_check_event(event, event_id)
                finally:
                    self._open.index = None

    @contextmanager
    def _inserted(
        self, events: Sequence[EventLogEntry], connect: Callable[[str], Any]
    ) -> Iterator[tuple[Any, list[int]]]:
        """Insert one run's events into its database, then into the index: the index's open
        transaction and each event's id there, for what else the index records of them."""
        statements = [self.prepare_insert_event(event) for event in events]
        with connect(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        with connect(INDEX_SHARD_NAME) as conn:
            yield conn, [conn.execute(s).inserted_primary_key[0] for s in statements]

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        held_open = getattr(self._open, "index", None)
        if held_open is not None and shard == INDEX_SHARD_NAME:
            yield held_open  # Dagster's own statements of a verdict, inside the flush's transaction
            return
        if self._held:
            self.store_held_verdicts()
        with super()._connect(shard) as conn:
            yield conn

    def _store_asset_check_evaluation_planned(
        self, event: EventLogEntry, event_id: int | None
    ) -> None:
        """A planned check's execution rows, one per partition of the run, as Dagster writes
        them, with the event serialized once: Dagster serializes it again for every row, and
        the event holds the run's whole partition subset (a range of 500 classes: 500
        serializations of 500 keys, 0.45 s of a 1,000-class run's 7 planned checks)."""
        planned = event.get_dagster_event().event_specific_data
        subset = planned.partitions_subset
        keys = subset.get_partition_keys() if subset else [None]
        text = serialize_value(event)
        timestamp = self._event_insert_timestamp(event)
        rows = [
            {
                "asset_key": planned.asset_key.to_string(),
                "check_name": planned.check_name,
                "partition": key,
                "run_id": event.run_id,
                "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
                "evaluation_event": text,
                "evaluation_event_timestamp": timestamp,
                "evaluation_event_storage_id": event_id,
            }
            for key in keys
        ]
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert().values(rows))

    def dispose(self) -> None:
        self.store_held_verdicts()
        super().dispose()

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        if len(events) < 2 or not _one_run_of_asset_events(events):
            super().store_event_batch(events)
            return
        with self._inserted(events, self._connect) as (conn, ids):
            self._store_asset_event_tags(conn, events, ids)
            for at in _last_of_each_kind(events):
                self._store_asset_event(conn, events[at], ids[at])


def _last_of_each_kind(events: Sequence[EventLogEntry]) -> list[int]:
    """The positions, in order, of the last event of each asset and event type.

    An asset's entry (`_store_asset_event`) holds its latest materialization: each event of
    a kind overwrites the same columns, so only the last of each kind leaves a trace, and
    writing only those leaves the entry as writing all of them would (each entry was
    serialized and written a thousand times for a thousand classes: 5.5 s)."""
    last: dict[tuple[Any, Any], int] = {}
    for at, event in enumerate(events):
        last[(event.get_dagster_event().asset_key, event.dagster_event_type)] = at
    return sorted(last.values())


def _run_check_verdict(event: EventLogEntry) -> bool:
    return bool(
        event.run_id
        and event.is_dagster_event
        and event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION
    )


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
