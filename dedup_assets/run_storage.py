"""The SQLite run storage of `dedup run`'s instance, on one kept engine and connection.

Dagster's `SqliteRunStorage` creates an engine and opens and closes a SQLite connection
for every statement it runs: a run's creation, each status change and each lookup of a
run by id (a run's start and end events look it up again). Each new connection also runs
the connect listener (`dispatch._sqlite_commits_without_fsync`) and SQLAlchemy's first-
connect checks. On a `dedup watch` update of EuroSAT by 1% (seven runs) that was
0.17 CPU-seconds of the command and its two workers (py-spy, `SqliteRunStorage.connect`).
Here the storage keeps one engine whose pool keeps one connection open (more while
threads overlap, closed as they end), as the event log does (`event_storage.kept_engine`).

A forked child never uses its parent's engine (it makes its own on first use); the kept
connection is closed by `dispose` and at the interpreter's exit, so that SQLite folds the
write-ahead log into the database. The files are Dagster's own (`history/runs.db`): the
UI and an instance configured without this class read them as they are."""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

from dedup_assets.event_storage import close_engine, kept_engine
from dedup_assets.interrupts import shielded


class KeptSqliteRunStorage(SqliteRunStorage):
    """`SqliteRunStorage` whose statements share one kept engine (module doc)."""

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: Any, config_value: Any
    ) -> KeptSqliteRunStorage:
        return cls.from_local(inst_data=inst_data, **config_value)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._kept: db.Engine | None = None
        self._kept_pid = os.getpid()  # the process whose engine `_kept` is
        self._kept_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        ref = weakref.ref(self)
        atexit.register(lambda: (held := ref()) is not None and held._close())

    def _engine(self) -> db.Engine:
        with self._kept_lock:
            if self._kept is None or self._kept_pid != os.getpid():
                # In a forked child the parent's engine stays untouched (closing a copied
                # connection could checkpoint the log the parent writes): a new one.
                self._kept, self._kept_pid = kept_engine(self._conn_string), os.getpid()
            return self._kept

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """Dagster's `connect` (a transaction) on the kept engine instead of a new one."""
        with shielded(), self._engine().connect() as conn, conn.begin():
            yield conn  # no thread interrupt inside (`interrupts.shielded`)

    def _close(self) -> None:
        with self._kept_lock:
            engine, self._kept = self._kept, None
            if engine is not None and self._kept_pid == os.getpid():
                close_engine(engine)

    @shielded()
    def dispose(self) -> None:
        self._close()
        super().dispose()
