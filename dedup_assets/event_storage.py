"""The SQLite event log of `dedup run`'s instance, writing a batch of asset events at once.

A run over a range of classes records one materialization per class and asset when its
step ends. Dagster hands such a step's materializations over as one batch when
`DAGSTER_EVENT_BATCH_SIZE` is set (`dispatch.py` sets it), but its SQLite storage stores a
batch one event at a time, and each event opens, commits and closes two databases (the
run's and the cross-run index). Here a batch of asset events of one run is two
transactions: every row into the run's database, then every row, tag and asset entry into
the index, the same statements Dagster's `SqliteEventLogStorage.store_event` runs per
event. Anything else (mixed runs, other event types) is stored event by event, as before.

Within those transactions the rows go in as one statement each (an `executemany` into the
run's database, an insert returning the new ids into the index): one statement per event
cost about 0.1 ms of SQLAlchemy's work each, twice. A planned check's rows (one per class
of the run) hold the same serialized event; Dagster serializes it again for each row, here
once (`_store_asset_check_evaluation_planned`).

A range's check verdicts (one `AssetCheckEvaluation` per class) are not batched by Dagster
at all: each was stored on its own, two databases opened and committed three times, about
14 ms a verdict (a third of what a 1,000-class range spent in its step). They are held here
instead and written in one transaction per database, with Dagster's own statements, as soon
as anything else touches the storage: the step's next event (a step always ends with a
success or failure event), any read, `dispose`, the interpreter's exit, or
`HELD_VERDICTS` of them. Nothing in this process reads the storage without seeing them.
A partition's verdict updates its planned row with the text already serialized for its
event (Dagster serializes it again) in one statement for the whole batch.

The storage ids of the materializations it stored last (one run's) are kept for
`stored_materialization`: a range's verdicts name each class's new materialization as their
target, which `class_batch` read back from the database (a query and a deserialized record
per class) before.

Opening a database the first time in a process, Dagster reads its alembic revision and
then loads alembic's migration scripts (some fifty Python files, executed) to learn the
head revision, and for a run's new database loads them twice more to stamp it: 22-38 ms a
run, 9 ms an index, 0.31 CPU-seconds of EuroSAT's first run. Here a database already
stamped is left as it is without the scripts (Dagster does nothing more to it either), and a
new run's database gets Dagster's tables and the head revision, read once per process
(`_initdb`).

Each database's engine is kept, with one connection open in its pool: the index's, and a
run's until the run's end is stored (at most `ENGINES_HELD` run databases). Dagster creates
an engine and opens and closes a connection for every statement it stores or reads, about
570 times in EuroSAT's first run across its three processes, SQLite checkpoints its
write-ahead log with an fsync each time the last connection to a database closes, and
Dagster's `has_table` opened the index once more before every dynamic partition lookup
(here on the kept engine, a table once found remembered). EuroSAT's first run took 0.956 of
its time with the engines kept, the 1,000-class run of `bench_many_classes.py` 0.951
(alternated on tmpfs, benchmarks/results/code_pair_event_log_1216.json and
code_pair_engines_many_1216.json). A run's database is closed when its end is stored, and
every database at the interpreter's exit (the command's exit handlers run before its
`os._exit`), so that SQLite folds each write-ahead log into its database and deletes it:
kept open to the end, each run left a log of up to 1.7 MB beside its database. A forked
child never closes or uses the parent's connections (`_forget_engines_in_child`); `wipe`
and `dispose` close them first.

The files are Dagster's own: the UI, the daemon and an instance configured without this
class read them as they are.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_EVENTS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageMetadata,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._serdes import serialize_value
from sqlalchemy import event as dbevent
from sqlalchemy.pool import QueuePool

from dedup_assets.interrupts import shielded

HELD_VERDICTS = 1_000  # verdicts held at most before they are written
IN_CHUNK = 500  # ids in one IN (...): an SQLite before 3.32 binds at most 999 values
ENGINES_HELD = 3  # run databases whose engine and open connection are kept, besides the index
RUN_ENDS = {
    DagsterEventType.RUN_SUCCESS,
    DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELED,
}


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
        # (asset key, partition) -> (storage id, run id, timestamp) of the last run's
        # materializations stored here (`stored_materialization`)
        self._materialized: dict[tuple[str, str | None], tuple[int, str, float]] = {}
        self._engines: OrderedDict[str, db.Engine] = OrderedDict()  # by shard, last used last
        self._engines_lock = threading.Lock()  # `has_table` runs inside `_connect` too
        self._tables: set[str] = set()  # tables the index is known to have
        self._pid = os.getpid()  # the process whose engines these are
        super().__init__(*args, **kwargs)  # opens the databases: after the attributes above
        ref = weakref.ref(self)
        atexit.register(lambda: (held := ref()) is not None and held._at_exit())
        _STORAGES.add(self)

    def _initdb(self, engine: Any, for_index_shard: bool = False) -> None:
        """Dagster's `_initdb` without loading alembic's scripts where they change nothing
        (module doc): a stamped database is left as it is, as Dagster leaves it; a new,
        empty one gets the tables, WAL and the head revision; anything else (an index of
        an older layout, a database half made) goes to Dagster's own."""
        from alembic.runtime.migration import MigrationContext

        with engine.connect() as conn:
            if MigrationContext.configure(conn).get_current_revision() is not None:
                return
            if not for_index_shard and not db.inspect(conn).get_table_names():
                _make_run_tables(conn)
                return
        super()._initdb(engine, for_index_shard)

    @shielded()
    def store_event(self, event: EventLogEntry) -> None:
        if not _run_check_verdict(event):
            super().store_event(event)  # `_connect` writes held verdicts first
            if not event.run_id or (
                event.is_dagster_event and event.dagster_event_type in RUN_ENDS
            ):
                # A run's end, or an event of no run (`dedup run`'s decision to keep the
                # model, stored in Dagster's database of runless events): its log folded
                # in, the file deleted.
                self._close_engine(event.run_id)
            return
        with self._held_lock:
            if self._held and self._held[0].run_id != event.run_id:
                self.store_held_verdicts()
            self._held.append(event)
            if len(self._held) >= HELD_VERDICTS:
                self.store_held_verdicts()

    @shielded()
    def store_held_verdicts(self) -> None:
        """Write the held check verdicts: every event into the run's database, then into the
        index with Dagster's own update of each verdict's check execution (a partition's
        in one statement for all, `_update_partition_verdicts`), one transaction each."""
        with self._held_lock:
            events, self._held = self._held, []
            if not events:
                return
            # Not through `_connect`, which would write them again.
            with self._inserted(events, self._open_shard) as (conn, ids, rows):
                self._open.index = conn
                try:
                    ranged, alone = [], []
                    for event, event_id, row in zip(events, ids, rows, strict=True):
                        if event.get_dagster_event().event_specific_data.partition is None:
                            alone.append((event, event_id))
                        else:
                            ranged.append((event, event_id, row["event"]))
                    self._update_partition_verdicts(conn, ranged)
                    for event, event_id in alone:
                        self.store_asset_check_event(event, event_id)
                finally:
                    self._open.index = None

    def _update_partition_verdicts(
        self, conn: Any, verdicts: Sequence[tuple[EventLogEntry, int, str]]
    ) -> None:
        """Dagster's `_update_asset_check_evaluation` for verdicts of partitions, as one
        statement: each updates the row its planned event made (asset, check, run and
        partition), with the event's text as already serialized. A verdict without such a
        row goes through Dagster's own method (which inserts one)."""
        if not verdicts:
            return
        table = AssetCheckExecutionsTable
        statement = (
            table.update()
            .where(
                db.and_(
                    table.c.asset_key == db.bindparam("b_asset_key"),
                    table.c.check_name == db.bindparam("b_check_name"),
                    table.c.run_id == db.bindparam("b_run_id"),
                    table.c.partition == db.bindparam("b_partition"),
                )
            )
            .values(
                execution_status=db.bindparam("b_status"),
                evaluation_event=db.bindparam("b_event"),
                evaluation_event_timestamp=db.bindparam("b_timestamp"),
                evaluation_event_storage_id=db.bindparam("b_storage_id"),
                materialization_event_storage_id=db.bindparam("b_target"),
            )
        )
        params = []
        for event, event_id, text in verdicts:
            evaluation = event.get_dagster_event().event_specific_data
            target = evaluation.target_materialization_data
            params.append(
                {
                    "b_asset_key": evaluation.asset_key.to_string(),
                    "b_check_name": evaluation.check_name,
                    "b_run_id": event.run_id,
                    "b_partition": evaluation.partition,
                    "b_status": (
                        AssetCheckExecutionRecordStatus.SUCCEEDED.value
                        if evaluation.passed
                        else AssetCheckExecutionRecordStatus.FAILED.value
                    ),
                    "b_event": text,
                    "b_timestamp": self._event_insert_timestamp(event),
                    "b_storage_id": event_id,
                    "b_target": target.storage_id if target else None,
                }
            )
        if conn.execute(statement, params).rowcount == len(verdicts):
            return
        # Rare: a verdict with no planned row, which Dagster's method inserts (the table's
        # unique index on asset, check, run and partition allows no second planned row).
        # Which ones, by the storage ids just written.
        ids = [i for _, i, _ in verdicts]
        written: set[int] = set()
        for at in range(0, len(ids), IN_CHUNK):
            written.update(
                conn.execute(
                    db.select(table.c.evaluation_event_storage_id).where(
                        table.c.evaluation_event_storage_id.in_(ids[at : at + IN_CHUNK])
                    )
                ).scalars()
            )
        for event, event_id, _ in verdicts:
            if event_id not in written:
                self.store_asset_check_event(event, event_id)

    @contextmanager
    def _inserted(
        self, events: Sequence[EventLogEntry], connect: Callable[[str], Any]
    ) -> Iterator[tuple[Any, list[int], list[dict]]]:
        """Insert one run's events into its database, then into the index, one statement
        each: the index's open transaction, each event's id there and its row (the event's
        serialized text among it), for what else the index records of them."""
        rows = [self._event_to_row(event) for event in events]
        with connect(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        with connect(INDEX_SHARD_NAME) as conn:
            ids = _insert_returning_ids(conn, rows)
            if len(ids) != len(rows):
                raise DagsterInvariantViolationError(
                    f"stored {len(rows)} events in the index, {len(ids)} ids came back"
                )
            yield conn, ids, rows

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        held_open = getattr(self._open, "index", None)
        if held_open is not None and shard == INDEX_SHARD_NAME:
            yield held_open  # Dagster's own statements of a verdict, inside the flush's transaction
            return
        if self._held:
            self.store_held_verdicts()
        with self._open_shard(shard) as conn:
            yield conn

    @contextmanager
    def _open_shard(self, shard: str) -> Iterator[Any]:
        """Dagster's `_connect` (a transaction on the shard's database, the database made
        first where new) on the shard's kept engine instead of a new one each time."""
        with shielded(), self._db_lock:  # no thread interrupt inside (`interrupts.shielded`)
            if shard not in self._initialized_dbs and shard != INDEX_SHARD_NAME:
                self._copy_empty_run_database(shard)
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _copy_empty_run_database(self, shard: str) -> None:
        """A new run's database as a copy of an empty one this process made once with
        Dagster's tables, WAL and head revision (`_empty_run_database`): making them cost
        8-12 ms a run (`create_all`, seven runs an update of `dedup watch`), a copy 0.2 ms.
        An existing database is left as it is, for `_initdb`; so is one another process
        makes meanwhile (the copy is linked into place, never over a file)."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
        with open(tmp, "wb") as file:
            file.write(_empty_run_database())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)

    def _engine(self, shard: str) -> db.Engine:
        """The shard's engine, made on first use; the index's kept, the least recently
        used run database's closed beyond ENGINES_HELD. Its pool keeps one connection open
        (more while a caller nests connections, closed as they end); the storage's lock
        serializes their use across threads."""
        with self._engines_lock:
            engine = self._engines.pop(shard, None)
            if engine is None:
                engine = kept_engine(self.conn_string_for_shard(shard))
            self._engines[shard] = engine
            while len(self._engines) > ENGINES_HELD + (INDEX_SHARD_NAME in self._engines):
                oldest = next(k for k in self._engines if k != INDEX_SHARD_NAME)
                close_engine(self._engines.pop(oldest))
            return engine

    def _close_engine(self, shard: str) -> None:
        with self._db_lock, self._engines_lock:
            engine = self._engines.pop(shard, None)
            if engine is not None:
                close_engine(engine)

    def _close_engines(self) -> None:
        with self._db_lock, self._engines_lock:
            while self._engines:
                close_engine(self._engines.popitem()[1])

    def _at_exit(self) -> None:
        if os.getpid() != self._pid:  # a forked child's copy: its parent's to close
            return
        self.store_held_verdicts()
        self._close_engines()

    def has_table(self, table_name: str) -> bool:
        """Dagster's check on the index's kept engine, a table once found remembered (it
        stays): Dagster asks before every dynamic partition lookup and every check verdict
        (`supports_asset_checks`), a new engine and connection each time, 126 times for one
        run over a range of 60 partitions."""
        if table_name in self._tables:
            return True
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._tables.add(table_name)
        return found

    def wipe(self) -> None:
        self.store_held_verdicts()
        self._close_engines()  # the run databases' files go: nothing may stay open on them
        super().wipe()

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
            # executemany: one multi-row VALUES statement of 1,000 rows took SQLAlchemy 50 ms
            # to compile, each time.
            conn.execute(AssetCheckExecutionsTable.insert(), rows)

    @shielded()
    def dispose(self) -> None:
        self.store_held_verdicts()
        self._close_engines()
        super().dispose()

    @shielded()
    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        if len(events) < 2 or not _one_run_of_asset_events(events):
            super().store_event_batch(events)
            return
        with self._inserted(events, self._connect) as (conn, ids, _):
            self._store_asset_event_tags(conn, events, ids)
            for at in _last_of_each_kind(events):
                self._store_asset_event(conn, events[at], ids[at])
        self._remember_materializations(events, ids)

    def _remember_materializations(self, events: Sequence[EventLogEntry], ids: list[int]) -> None:
        if self._materialized and next(iter(self._materialized.values()))[1] != events[0].run_id:
            self._materialized = {}  # another run's: only the last run's are asked for
        for event, event_id in zip(events, ids, strict=True):
            if event.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION:
                dagster_event = event.get_dagster_event()
                key = (dagster_event.asset_key.to_string(), dagster_event.partition)
                self._materialized[key] = (event_id, event.run_id, event.timestamp)

    def stored_materialization(
        self, run_id: str, asset_key: str, partition: str | None
    ) -> tuple[int, float] | None:
        """The storage id and timestamp of the materialization of `asset_key`'s `partition`
        that run `run_id` stored here in a batch, if it was among the last run's; None
        otherwise (the caller asks the database)."""
        found = self._materialized.get((asset_key, partition))
        if found is None or found[1] != run_id:
            return None
        return found[0], found[2]


def kept_engine(conn_string: str) -> db.Engine:
    """An engine for a SQLite database whose pool keeps one connection open between
    statements (more while callers overlap, closed as they end), usable from any thread
    (the storages' locks serialize their use). Close it with `close_engine`."""
    engine = db.create_engine(
        conn_string,
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=-1,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )
    out: set[Any] = set()  # the pool's records of the connections checked out now
    _CHECKED_OUT[engine] = out
    dbevent.listen(engine, "checkout", lambda _conn, record, _proxy: out.add(record))
    dbevent.listen(engine, "checkin", lambda _conn, record: out.discard(record))
    return engine


_CHECKED_OUT: weakref.WeakKeyDictionary[db.Engine, set[Any]] = weakref.WeakKeyDictionary()


def close_engine(engine: db.Engine) -> None:
    """Close a `kept_engine`: its pool's connections, and any its callers never gave back.
    A Dask worker's run is stopped by a KeyboardInterrupt raised in its thread
    (`dispatch.interrupt_runs`, sent again every half second until the run ends); one that
    lands while SQLAlchemy ends a transaction can leave its connection checked out, inside
    the transaction, holding the database's write lock until it is garbage-collected: the
    command then waited SQLite's 30 s busy timeout to record the run as canceled, and
    failed with "database is locked". Closing that connection rolls the transaction back.
    Called where no caller can be inside a transaction (the storages' locks are held, or
    the instance is being disposed)."""
    for record in list(_CHECKED_OUT.pop(engine, ())):
        # Invalidated, not just closed: the pool then neither resets nor reuses it when
        # the connection left behind is collected.
        with contextlib.suppress(Exception):  # closed already: nothing is held
            record.invalidate()
    engine.dispose()


_STORAGES: weakref.WeakSet[BatchedSqliteEventLogStorage] = weakref.WeakSet()
_INHERITED: list[OrderedDict] = []  # a forked child's copies of its parent's engines


def _forget_engines_in_child() -> None:
    """In a forked child, each storage starts with no engine and no held verdict: its
    parent's engines stay referenced here, never used or closed (closing a copied SQLite
    connection can checkpoint and delete the write-ahead log the parent is writing), and the
    verdicts it held are the parent's to write; locks another thread held are new."""
    for storage in list(_STORAGES):
        _INHERITED.append(storage._engines)
        storage._engines = OrderedDict()
        storage._pid = os.getpid()
        storage._held = []  # the parent's to write
        storage._held_lock = threading.RLock()
        storage._engines_lock = threading.Lock()  # one another thread held at the fork
        storage._db_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engines_in_child)


def _insert_returning_ids(conn: Any, rows: list[dict]) -> list[int]:
    """Insert event rows into the index, returning their ids in order: one statement where
    SQLite has RETURNING (3.35 on), else one insert a row (an older SQLite, e.g. Ubuntu
    20.04's 3.31, where SQLAlchemy turns RETURNING off)."""
    table = SqlEventLogStorageTable
    if not conn.dialect.insert_returning:
        return [
            int(conn.execute(table.insert().values(**row)).inserted_primary_key[0]) for row in rows
        ]
    returning = table.insert().returning(table.c.id, sort_by_parameter_order=True)
    return [int(i) for i in conn.execute(returning, rows).scalars()]


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


@functools.cache
def _alembic_head() -> str:
    """The head revision of Dagster's SQLite event log migrations (read once per process)."""
    from alembic.script import ScriptDirectory
    from dagster._core.storage.event_log.sqlite import sqlite_event_log
    from dagster._core.storage.sql import get_alembic_config

    config = get_alembic_config(sqlite_event_log.__file__)
    return str(ScriptDirectory.from_config(config).as_revision_number("head"))


@functools.cache
def _empty_run_database() -> bytes:
    """The bytes of an empty run database, made once a process (a forked child inherits
    them): Dagster's tables, WAL, and its head revision stamped, as `_initdb` makes a new
    one; closed, so its file is the whole database. Made in a folder of its own, removed
    at once: a folder kept for the process's life was left behind by every process that
    ends without its exit handlers (a pool's forked worker, a killed one), 674 of them in
    /tmp after a day of test runs."""
    folder = tempfile.mkdtemp(prefix="latent-dedup-run-db-")
    try:
        path = os.path.join(folder, "run.db")
        engine = db.create_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as conn:
                _make_run_tables(conn)
        finally:
            engine.dispose()
        with open(path, "rb") as file:
            return file.read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prepare_run_databases() -> None:
    """Make the empty run database's bytes now (`_empty_run_database`), in a process about
    to fork the workers that will store runs: each worker would otherwise make them at its
    first run, on the critical path of the class stage (alembic's head revision and
    Dagster's tables: 50 ms idle, several times that on 2 busy cores)."""
    _empty_run_database()


def _make_run_tables(conn: Any) -> None:
    """Make an empty database a run's, as Dagster's `_initdb` does: its tables, WAL, and
    the head revision stamped (without loading alembic's scripts again); committed."""
    SqlEventLogStorageMetadata.create_all(conn)
    conn.execute(db.text("PRAGMA journal_mode=WAL;"))
    version = _alembic_version_table()
    version.create(conn)
    conn.execute(version.insert().values(version_num=_alembic_head()))
    conn.commit()


def _alembic_version_table() -> db.Table:
    """Alembic's own version table, as `alembic stamp` creates it."""
    return db.Table(
        "alembic_version",
        db.MetaData(),
        db.Column("version_num", db.String(32), nullable=False),
        db.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
    )
