"""`dedup run`'s event log: a range's materializations and check verdicts stored as batches,
read back by the UI's plain SQLite storage as if written one at a time."""

import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import run_python
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

import dedup_assets.dispatch  # noqa: F401 - sets DAGSTER_EVENT_BATCH_SIZE as `dedup run` does
from dedup_assets import event_storage
from dedup_assets.core.data.layout import (
    INSTANCE_FILE,
    RUN_INSTANCE_FILE,
    instance_file,
    prepare_dagster_home,
)
from dedup_assets.event_storage import BatchedSqliteEventLogStorage

KEYS = [f"k{i:03d}" for i in range(60)]
parts = dg.DynamicPartitionsDefinition(name="things")
CHECK = dg.AssetCheckKey(dg.AssetKey("checked"), "odd_square")
SEEN_MID_STEP: list[int] = []  # verdicts a read in the step found, after each verdict
READ_MID_STEP = {"on": False}


@dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
def ranged(context: dg.AssetExecutionContext) -> None:
    for key in context.partition_keys:
        context.add_asset_metadata({"key": key, "square": int(key[1:]) ** 2}, partition_key=key)


@dg.multi_asset(
    specs=[dg.AssetSpec("checked", partitions_def=parts)],
    check_specs=[
        dg.AssetCheckSpec("odd_square", asset="checked", blocking=True, partitions_def=parts)
    ],
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
)
def checked(context: dg.AssetExecutionContext):
    """A range with a verdict per partition, the way `class_batch` reports classes: every
    third key fails (a non-blocking severity, so the run goes on)."""
    keys = list(context.partition_keys)
    yield dg.MaterializeResult(asset_key="checked", metadata={"n": len(keys)})
    for key in keys:
        yield dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("checked"),
            check_name="odd_square",
            passed=int(key[1:]) % 3 != 0,
            partition=key,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"square": int(key[1:]) ** 2},
        )
        if not READ_MID_STEP["on"]:
            continue
        history = context.instance.event_log_storage.get_asset_check_execution_history(
            CHECK, limit=1000
        )
        SEEN_MID_STEP.append(
            sum(r.event is not None and r.status.value != "PLANNED" for r in history)
        )


defs = dg.Definitions(
    assets=[ranged, checked],
    jobs=[
        dg.define_asset_job("ranged_job", [ranged]),
        dg.define_asset_job("checked_job", [checked]),
    ],
)


def _run(instance: dg.DagsterInstance, job: str = "ranged_job", keys: list[str] = KEYS) -> None:
    instance.add_dynamic_partitions("things", keys)
    result = defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
    )
    assert result.success


def _stored(instance: dg.DagsterInstance) -> dict[str, dict]:
    records = instance.fetch_materializations(dg.AssetKey("ranged"), limit=1000).records
    return {
        r.partition_key: {k: v.value for k, v in r.asset_materialization.metadata.items()}
        for r in records
    }


@pytest.fixture
def counted_connects(monkeypatch):
    """Transactions on a shard: Dagster's `_connect`, and the batched storage's
    `_open_shard` (its `_connect` on a kept engine)."""
    count = {"n": 0}
    for cls, name in (
        (SqliteEventLogStorage, "_connect"),
        (BatchedSqliteEventLogStorage, "_open_shard"),
    ):
        original = getattr(cls, name)

        def counting(self, shard, original=original):
            count["n"] += 1
            return original(self, shard)

        monkeypatch.setattr(cls, name, counting)
    return count


@pytest.fixture
def sqlite_opens():
    """The file of every SQLite connection opened (beneath SQLAlchemy's pools), in order."""
    import sqlalchemy as db

    opened: list[str] = []

    def record(connection, _record):
        if isinstance(connection, sqlite3.Connection):
            opened.append(connection.execute("PRAGMA database_list").fetchall()[0][2])

    db.event.listen(db.engine.Engine, "connect", record)
    yield opened
    db.event.remove(db.engine.Engine, "connect", record)


def test_a_range_is_stored_in_batches_and_read_back_by_the_plain_storage(
    tmp_path, monkeypatch, counted_connects
):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    assert instance_file(home) == RUN_INSTANCE_FILE
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    assert type(batched.event_log_storage) is BatchedSqliteEventLogStorage
    _run(batched)
    batched_connects = counted_connects["n"]

    counted_connects["n"] = 0
    plain_home = tmp_path / "plain"
    plain_home.mkdir()
    plain = dg.DagsterInstance.from_config(str(plain_home))
    assert type(plain.event_log_storage) is SqliteEventLogStorage
    _run(plain)
    plain_connects = counted_connects["n"]

    expected = {k: {"key": k, "square": int(k[1:]) ** 2} for k in KEYS}
    assert _stored(batched) == expected == _stored(plain)
    # The UI opens the same folder with Dagster's own storage and sees the same.
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert type(ui.event_log_storage) is SqliteEventLogStorage
    assert _stored(ui) == expected
    assert ui.get_materialized_partitions(dg.AssetKey("ranged")) == set(KEYS)
    # The asset's entry holds its latest materialization (written once for the batch, from
    # its last event), as the plain storage's does after writing it for every event.
    latest = {}
    for name, instance in (("batched", ui), ("plain", plain)):
        (record,) = instance.get_asset_records([dg.AssetKey("ranged")])
        entry = record.asset_entry.last_materialization_record
        newest = instance.fetch_materializations(dg.AssetKey("ranged"), limit=1).records[0]
        assert entry.storage_id == newest.storage_id, name
        latest[name] = (entry.partition_key, entry.asset_materialization.metadata)
    assert latest["batched"] == latest["plain"]  # the tags name each run's own versions
    # 60 materializations: two connections each one at a time, two for the batch.
    assert plain_connects - batched_connects >= 2 * len(KEYS) - 2, (
        plain_connects,
        batched_connects,
    )


def test_an_older_run_instance_file_is_rewritten(tmp_path):
    home = prepare_dagster_home(tmp_path / "out")
    (home / RUN_INSTANCE_FILE).write_text("telemetry:\n  enabled: false\n")
    prepare_dagster_home(tmp_path / "out")
    assert "BatchedSqliteEventLogStorage" in (home / RUN_INSTANCE_FILE).read_text()
    assert "BatchedSqliteEventLogStorage" not in (home / INSTANCE_FILE).read_text()


@pytest.mark.parametrize(
    "name", ["out odd #2", "a: b", 'quote\'s "x"', "back\\slash", "ünï #{x}", "- lead", "@home"]
)
def test_the_run_instance_file_names_the_output_s_own_folders(tmp_path, name):
    """Every path of the run instance file is the output's own, whatever its name: an
    output `x #2` was read as `x` with a comment, its history written beside it."""
    home = prepare_dagster_home(tmp_path / name)
    settings = yaml.safe_load((home / RUN_INSTANCE_FILE).read_text())
    history = (home / "history").resolve()
    assert settings["event_log_storage"]["config"]["base_dir"] == str(history / "runs")
    assert settings["run_storage"]["config"]["base_dir"] == str(history) + os.sep
    instance = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    with instance:
        _run(instance, "checked_job")
        assert len(instance.get_runs()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing beside the output


def _verdicts(instance: dg.DagsterInstance) -> dict[str, tuple]:
    history = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=1000)
    out = {}
    for record in history:
        evaluation = record.event.get_dagster_event().event_specific_data
        out[record.partition] = (
            record.status.value,
            evaluation.passed,
            evaluation.metadata["square"].value,
        )
    return out


def _runs_of(instance: dg.DagsterInstance) -> list[str]:
    return [run.run_id for run in instance.get_runs()]


def test_a_ranges_verdicts_are_stored_as_one_batch_and_read_back_by_the_plain_storage(
    tmp_path, monkeypatch, counted_connects
):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    _run(batched, "checked_job")
    batched_connects = counted_connects["n"]

    counted_connects["n"] = 0
    plain_home = tmp_path / "plain"
    plain_home.mkdir()
    plain = dg.DagsterInstance.from_config(str(plain_home))
    _run(plain, "checked_job")
    plain_connects = counted_connects["n"]

    expected = {
        k: ("FAILED" if int(k[1:]) % 3 == 0 else "SUCCEEDED", int(k[1:]) % 3 != 0, int(k[1:]) ** 2)
        for k in KEYS
    }
    assert _verdicts(plain) == expected
    assert _verdicts(batched) == expected
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert _verdicts(ui) == expected
    # Each verdict's event is in the run's own log as well, in the order yielded, before the
    # step's end.
    run_id = _runs_of(ui)[0]
    logged = [
        e.dagster_event.event_specific_data.partition
        for e in ui.all_logs(run_id)
        if e.dagster_event is not None
        and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert logged == KEYS
    types = [e.dagster_event.event_type_value for e in ui.all_logs(run_id) if e.dagster_event]
    last_verdict = max(i for i, t in enumerate(types) if t == "ASSET_CHECK_EVALUATION")
    assert types.index("STEP_SUCCESS") > last_verdict
    # The same asset entry (its latest materialization) either way.
    entry = ui.get_latest_materialization_event(dg.AssetKey("checked"))
    assert entry is not None and entry.asset_materialization.metadata["n"].value == len(KEYS)
    # What a verdict costs: a range of 20 against the range of 60, each on its own instance.
    # One at a time, three connections a verdict (run log, index, check execution; and a
    # look for the checks' table); held, two for the whole range.
    counted_connects["n"] = 0
    batched_20 = dg.DagsterInstance.from_config(
        str(prepare_dagster_home(tmp_path / "out20")), config_filename=RUN_INSTANCE_FILE
    )
    _run(batched_20, "checked_job", KEYS[:20])
    batched_extra = batched_connects - counted_connects["n"]
    counted_connects["n"] = 0
    (tmp_path / "plain20").mkdir()
    _run(dg.DagsterInstance.from_config(str(tmp_path / "plain20")), "checked_job", KEYS[:20])
    plain_extra = plain_connects - counted_connects["n"]
    assert plain_extra >= 3 * 40 and batched_extra <= 4, (plain_extra, batched_extra)


def test_a_read_while_verdicts_are_held_sees_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    monkeypatch.setitem(READ_MID_STEP, "on", True)
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    SEEN_MID_STEP.clear()
    _run(batched, "checked_job")
    # A read in this process while verdicts are held writes them first: each read, after
    # each verdict, saw all the verdicts yielded so far.
    assert list(range(1, len(KEYS) + 1)) == SEEN_MID_STEP


def test_held_verdicts_are_written_on_dispose_and_at_most_held_verdicts_at_once(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    monkeypatch.setattr(event_storage, "HELD_VERDICTS", 7)
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    storage = batched.event_log_storage
    held_sizes: list[int] = []
    original = BatchedSqliteEventLogStorage.store_held_verdicts

    def recording(self):
        held_sizes.append(len(self._held))
        original(self)

    monkeypatch.setattr(BatchedSqliteEventLogStorage, "store_held_verdicts", recording)
    _run(batched, "checked_job")
    assert max(held_sizes) == 7  # never more held than HELD_VERDICTS
    assert storage._held == []
    assert len(_verdicts(batched)) == len(KEYS)

    # A verdict held when the instance is disposed is written, not lost.
    run_id = _runs_of(batched)[0]
    record = batched.all_logs(run_id)
    verdict = next(
        e
        for e in record
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    )
    before = len(batched.all_logs(run_id))
    storage.store_event(verdict)
    assert len(storage._held) == 1
    batched.dispose()
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert len(ui.all_logs(run_id)) == before + 1


def _planned_rows(storage) -> list[tuple]:
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable

    t = AssetCheckExecutionsTable.c
    query = AssetCheckExecutionsTable.select().order_by(t.partition)
    with storage.index_connection() as conn:
        return [
            (
                r.asset_key,
                r.check_name,
                r.partition,
                r.run_id,
                r.execution_status,
                r.evaluation_event,
                r.evaluation_event_timestamp,
                r.evaluation_event_storage_id,
            )
            for r in conn.execute(query)
        ]


@pytest.mark.parametrize("keys", [0, 1, 2, 60])
def test_a_planned_check_is_serialized_once_into_the_rows_dagster_writes(
    tmp_path, monkeypatch, keys
):
    """A planned check over a range: one PLANNED row per partition (or one without a
    partition), the same rows as Dagster's own storage writes, from one serialization of
    the event instead of one per row."""
    from dagster._core.events import AssetCheckEvaluationPlanned, DagsterEvent, DagsterEventType
    from dagster._core.events.log import EventLogEntry

    subset = parts.empty_subset().with_partition_keys(KEYS[:keys]) if keys else None
    event = EventLogEntry(
        error_info=None,
        level=10,
        user_message="",
        run_id="r" * 32,
        timestamp=1_700_000_000.0,
        dagster_event=DagsterEvent(
            event_type_value=DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value,
            job_name="checked_job",
            event_specific_data=AssetCheckEvaluationPlanned(
                asset_key=CHECK.asset_key, check_name=CHECK.name, partitions_subset=subset
            ),
        ),
    )
    batched = BatchedSqliteEventLogStorage(str(tmp_path / "batched"))
    plain = SqliteEventLogStorage(str(tmp_path / "plain"))
    calls = {"n": 0}
    counting = event_storage.serialize_value

    def counted(value):
        calls["n"] += 1
        return counting(value)

    monkeypatch.setattr(event_storage, "serialize_value", counted)
    batched.store_event(event)
    plain.store_event(event)
    rows = _planned_rows(batched)
    assert rows == _planned_rows(plain)
    assert [r[2] for r in rows] == (sorted(KEYS[:keys]) if keys else [None])
    assert {r[4] for r in rows} == {"PLANNED"} and len({r[5] for r in rows}) == 1
    assert calls["n"] == 1


def test_the_storage_keeps_the_ids_of_the_last_runs_materializations(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    storage = batched.event_log_storage
    _run(batched)
    first = _runs_of(batched)[0]
    name = dg.AssetKey("ranged").to_string()
    for record in batched.fetch_materializations(dg.AssetKey("ranged"), limit=1000).records:
        kept = storage.stored_materialization(first, name, record.partition_key)
        assert kept == (record.storage_id, record.timestamp)
    assert storage.stored_materialization("another run", name, KEYS[0]) is None
    assert storage.stored_materialization(first, name, "not a key") is None
    # A second run's batch replaces the first's.
    _run(batched, keys=KEYS[:3])
    second = next(r for r in _runs_of(batched) if r != first)
    assert storage.stored_materialization(first, name, KEYS[0]) is None
    for record in batched.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("ranged"), asset_partitions=KEYS[:3]),
        limit=3,
    ).records:
        assert record.run_id == second
        kept = storage.stored_materialization(second, name, record.partition_key)
        assert kept == (record.storage_id, record.timestamp)
    assert storage.stored_materialization(second, name, KEYS[3]) is None


def _verdict_event(instance: dg.DagsterInstance, run_id: str, key: str):
    return next(
        e
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None
        and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.dagster_event.event_specific_data.partition == key
    )


def test_a_held_verdict_without_a_planned_row_is_inserted(tmp_path, monkeypatch):
    """The batched update of a range's verdicts handles what Dagster's one-at-a-time update
    does when a verdict has no planned row: Dagster's method inserts one."""

    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    monkeypatch.setattr(event_storage, "IN_CHUNK", 1)  # the look-up in several queries too
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    _run(batched, "checked_job", KEYS[:4])
    run_id = _runs_of(batched)[0]
    storage = batched.event_log_storage
    # A verdict of a run that planned nothing: stored, and its execution row inserted.
    orphan = _verdict_event(batched, run_id, KEYS[1])._replace(run_id="r-orphan")
    paired = _verdict_event(batched, run_id, KEYS[2])._replace(run_id="r-orphan")
    storage.store_event(orphan)
    storage.store_event(paired)
    storage.store_held_verdicts()
    rows = [
        r
        for r in storage.get_asset_check_execution_history(CHECK, limit=100)
        if r.run_id == "r-orphan"
    ]
    assert sorted(r.partition for r in rows) == [KEYS[1], KEYS[2]]
    assert {r.status.value for r in rows} == {"SUCCEEDED"}  # keys 1 and 2: not a multiple of 3


def test_a_ranges_verdicts_target_the_stored_materializations_without_reading_them_back(
    tmp_path, monkeypatch
):
    """`class_batch` aims each class's verdict at the materialization just stored, from the
    ids this storage kept of its batch: no query for them, the same targets."""
    from dedup_assets.assets.class_batch import (
        ClassOutcome,
        class_asset,
        class_check,
        materialize_classes,
    )
    from dedup_assets.partitions import CLASS_DIM

    verdict = class_check("small", "counted", "the class number is under 50")

    @class_asset(
        "counted", deps=[], description="", group_name="g", kinds={"python"}, check=verdict
    )
    def counted(context: dg.AssetExecutionContext):
        def one(key, log):
            number = int(key[1:])
            return ClassOutcome({"number": number}, [] if number < 50 else ["50 or more"])

        yield from materialize_classes(context, "counted", one, check="small")

    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    batched.add_dynamic_partitions(CLASS_DIM, KEYS)
    fetches = {"n": 0}
    original = dg.DagsterInstance.fetch_materializations

    def counting(self, *args, **kwargs):
        fetches["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(dg.DagsterInstance, "fetch_materializations", counting)
    job = dg.Definitions(
        assets=[counted], jobs=[dg.define_asset_job("counted_job", [counted])]
    ).resolve_job_def("counted_job")
    result = job.execute_in_process(
        instance=batched,
        tags={
            "dagster/asset_partition_range_start": KEYS[0],
            "dagster/asset_partition_range_end": KEYS[-1],
        },
        raise_on_error=False,
    )
    assert not result.success  # keys 50-59 fail their blocking check
    assert fetches["n"] == 0
    monkeypatch.setattr(dg.DagsterInstance, "fetch_materializations", original)
    check = dg.AssetCheckKey(dg.AssetKey("counted"), "small")
    history = batched.event_log_storage.get_asset_check_execution_history(check, limit=100)
    assert sorted(r.partition for r in history) == KEYS
    for record in batched.fetch_materializations(dg.AssetKey("counted"), limit=100).records:
        row = next(r for r in history if r.partition == record.partition_key)
        target = row.event.dagster_event.asset_check_evaluation_data.target_materialization_data
        assert (target.storage_id, target.run_id, target.timestamp) == (
            record.storage_id,
            record.run_id,
            record.timestamp,
        )
        assert row.status.value == ("SUCCEEDED" if int(record.partition_key[1:]) < 50 else "FAILED")


def test_a_batch_is_stored_the_same_where_sqlite_has_no_returning(tmp_path, monkeypatch):
    """An SQLite before 3.35 has no RETURNING (SQLAlchemy turns it off): the batch's index
    rows go in one at a time, with the same ids and the same reads back."""
    from sqlalchemy.dialects.sqlite.base import SQLiteDialect

    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    monkeypatch.setattr(SQLiteDialect, "insert_returning", False)
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    _run(batched)
    expected = {k: {"key": k, "square": int(k[1:]) ** 2} for k in KEYS}
    assert _stored(batched) == expected
    run_id = _runs_of(batched)[0]
    name = dg.AssetKey("ranged").to_string()
    for record in batched.fetch_materializations(dg.AssetKey("ranged"), limit=1000).records:
        kept = batched.event_log_storage.stored_materialization(run_id, name, record.partition_key)
        assert kept == (record.storage_id, record.timestamp)


def _schema(path) -> tuple:
    import sqlite3

    con = sqlite3.connect(path)
    try:
        master = sorted(con.execute("select type, name, tbl_name, sql from sqlite_master"))
        mode = con.execute("pragma journal_mode").fetchone()[0]
        version = con.execute("select version_num from alembic_version").fetchall()
    finally:
        con.close()
    return master, mode, version


def test_a_new_runs_database_is_made_as_dagster_makes_it_without_alembics_scripts(
    tmp_path, monkeypatch
):
    """A run's new database: the same tables, indexes, WAL mode and alembic revision as
    Dagster's own `_initdb` makes, with alembic's scripts loaded once per process (not two
    or three times a database); a database already stamped is left without loading them."""
    import alembic.script

    ours = BatchedSqliteEventLogStorage(str(tmp_path / "ours"))
    plain = SqliteEventLogStorage(str(tmp_path / "plain"))
    event_storage._alembic_head()  # the process's one load, before counting
    loads = []
    real = alembic.script.ScriptDirectory.from_config
    monkeypatch.setattr(
        alembic.script.ScriptDirectory,
        "from_config",
        staticmethod(lambda *a, **k: loads.append(1) or real(*a, **k)),
    )
    for run in ("run-a", "run-b"):
        with ours.run_connection(run):
            pass
    assert loads == []
    with plain.run_connection("run-a"):
        pass
    assert loads  # Dagster's own loads them for every new database
    assert _schema(tmp_path / "ours" / "run-a.db") == _schema(tmp_path / "plain" / "run-a.db")
    master, mode, version = _schema(tmp_path / "ours" / "run-b.db")
    assert mode == "wal" and version == [(event_storage._alembic_head(),)]
    assert any(name == "event_logs" for _, name, _, _ in master)
    # A stamped database (the index, a run's once made) opened by a new storage: no load.
    loads.clear()
    again = BatchedSqliteEventLogStorage(str(tmp_path / "ours"))
    with again.run_connection("run-a"):
        pass
    with again.index_connection():
        pass
    assert loads == []


def test_each_database_is_opened_once_a_process_not_once_a_statement(
    tmp_path, monkeypatch, sqlite_opens
):
    """The batched storage keeps each database's engine with a connection open: a run opens
    the index and its own database once (Dagster's storage opens them for every event and
    every read, and SQLite checkpoints its log on each last close)."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    base = Path(batched.event_log_storage._base_dir)
    sqlite_opens.clear()
    _run(batched)
    _run(batched, "checked_job")
    ours = [Path(f) for f in sqlite_opens if Path(f).parent == base]
    (first, second) = _runs_of(batched)[::-1]
    for name in ("index.db", f"{first}.db", f"{second}.db"):
        assert 1 <= sum(f.name == name for f in ours) <= 2, (name, ours)  # 2: one nested
    plain_home = tmp_path / "plain"
    plain_home.mkdir()
    plain = dg.DagsterInstance.from_config(str(plain_home))
    sqlite_opens.clear()
    _run(plain)
    plain_base = Path(plain.event_log_storage._base_dir)
    assert sum(Path(f).parent == plain_base for f in sqlite_opens) > 4 * len(ours)
    assert _stored(batched) == _stored(plain)


def test_kept_engines_are_bounded_and_closed_by_a_runs_end_wipe_and_dispose(tmp_path, monkeypatch):
    """A run's database stays open while the run stores events and is closed at its end
    (SQLite folds its log into it and deletes it); reads keep the last ENGINES_HELD run
    databases open, and the index; wipe and dispose close every one."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    storage = batched.event_log_storage
    base = Path(storage._base_dir)
    for k in range(event_storage.ENGINES_HELD + 2):
        _run(batched, keys=KEYS[k : k + 3])
        assert list(storage._engines) == ["index"]  # the run's own closed at its end
        assert [f.name for f in base.glob("*-wal")] == ["index.db-wal"]
    runs = _runs_of(batched)  # newest first
    for run in runs:
        assert batched.all_logs(run)
    # the index kept (it was open), the last ENGINES_HELD run databases read
    assert list(storage._engines) == ["index", *runs[-event_storage.ENGINES_HELD :]]
    # wipe deletes the run databases: nothing stays open on them, and storing goes on.
    storage.wipe()
    assert set(storage._engines) <= {"index"}  # the index emptied anew, its file kept
    assert not list(base.glob("*-*.db"))
    batched.wipe()
    _run(batched, keys=KEYS[:2])
    assert set(_stored(batched)) == set(KEYS[:2])
    batched.all_logs(_runs_of(batched)[0])
    assert len(storage._engines) == 2
    batched.dispose()
    assert not storage._engines
    assert not list(base.glob("*-wal")) and not list(base.glob("*-shm"))


def run_as_the_command(home: Path, lines: str) -> None:
    """In a new process, `instance` opened on `home` as `dedup run` opens it and four
    partitions run (`_run`), then `lines`, then its end as the command's: the exit handlers
    run, then `os._exit`."""
    import subprocess
    import sys

    script = f"""
import os, atexit, sys
os.environ["DAGSTER_EVENT_BATCH_SIZE"] = "1000"
sys.path.insert(0, {str(Path(__file__).parent)!r})
import dagster as dg
import test_event_storage as t
instance = dg.DagsterInstance.from_config({str(home)!r}, config_filename={RUN_INSTANCE_FILE!r})
t._run(instance, keys=t.KEYS[:4])
{lines}
atexit._run_exitfuncs()
os._exit(0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_command_leaves_no_write_ahead_log(tmp_path):
    """A process that ends through its exit handlers (`dedup run` runs them before its
    `os._exit`) closes what it kept open: no log left beside any database."""
    home = prepare_dagster_home(tmp_path / "out")
    run_as_the_command(
        home,
        "instance.all_logs(instance.get_runs()[0].run_id)\n"
        "assert instance.event_log_storage._engines",
    )
    runs = home / "history" / "runs"
    assert len(list(runs.glob("*-*.db"))) == 1
    assert not list(runs.glob("*-wal")) and not list(runs.glob("*-shm"))
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert set(_stored(ui)) == set(KEYS[:4])


def test_two_processes_storages_each_keeping_connections_see_each_others_events(
    tmp_path, monkeypatch
):
    """`dedup run` and its workers each keep the index open: what one stores, the other
    reads at once, in both directions, and the plain storage reads it all."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    a = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    b = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    _run(a, keys=KEYS[:5])
    assert set(_stored(b)) == set(KEYS[:5])
    _run(b, keys=KEYS[5:9])
    assert set(_stored(a)) == set(KEYS[:9])
    _run(a, keys=KEYS[9:12])
    assert set(_stored(b)) == set(KEYS[:12])
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert set(_stored(ui)) == set(KEYS[:12])


def test_threads_share_a_storages_kept_connections(tmp_path, monkeypatch):
    """Reads from other threads while this one stores a run (Dagster's own threads do: the
    UI's event watcher, a run's heartbeat): each waits for the storage's lock, none fails
    on SQLite's same-thread rule, every read sees whole runs."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    _run(batched, keys=KEYS[:10])
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(len(_stored(batched)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        _run(batched, keys=KEYS[10:30])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert seen and set(seen) <= {10, 30}
    assert len(_stored(batched)) == 30


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_neither_uses_nor_closes_its_parents_connections(tmp_path, monkeypatch):
    """A child forked from a process with the storage open gets no engine and no held
    verdict of its parent's: it opens its own, ending it (its exit handlers) neither closes
    the parent's connections nor writes the parent's held verdicts a second time."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    storage = batched.event_log_storage
    _run(batched, "checked_job")
    run_id = _runs_of(batched)[0]
    verdict = next(
        e
        for e in batched.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
    )
    before = len(batched.all_logs(run_id))
    storage.store_event(verdict)  # held, not yet written
    assert len(storage._held) == 1
    kept = dict(storage._engines)
    assert kept
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            fresh = not storage._engines and not storage._held
            read = set(_verdicts(batched)) == set(KEYS)
            own = not set(map(id, storage._engines.values())) & set(map(id, kept.values()))
            storage._at_exit()  # what its exit handlers do
            status = 0 if fresh and read and own else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage._engines == kept  # the parent goes on with its own
    assert len(storage._held) == 1
    _run(batched, keys=KEYS[:3])
    assert set(_stored(batched)) == set(KEYS[:3])
    batched.dispose()
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert len(ui.all_logs(run_id)) == before + 1  # the held verdict, written once


def test_an_event_of_no_run_leaves_no_write_ahead_log(tmp_path):
    """An observation reported outside any run (`dedup run` keeping the model) goes to
    Dagster's database of runless events, closed at once like a finished run's: no log
    beside it while the process goes on; the UI's plain storage reads it back."""
    home = prepare_dagster_home(tmp_path / "out")
    batched = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    for n in range(2):
        batched.report_runless_asset_event(
            dg.AssetObservation(asset_key="autoencoder", metadata={"decision": f"kept {n}"})
        )
    runs = Path(batched.event_log_storage._base_dir)
    assert (runs / ".db").exists() and not list(runs.glob(".db-*"))
    assert "" not in batched.event_log_storage._engines
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    records = ui.fetch_observations(dg.AssetKey("autoencoder"), limit=5).records
    assert [r.asset_observation.metadata["decision"].value for r in records] == ["kept 1", "kept 0"]
    batched.dispose()


def test_new_run_databases_are_copies_of_one_made_once_a_process(tmp_path, monkeypatch):
    """Dagster's tables are made once a process (an empty run database), each new run's
    database a copy of it: the same schema as Dagster's own; and nothing of it is left in
    the temporary folder, whether or not the process's exit handlers ever run (a pool's
    forked worker ends without them: 674 folders were left in /tmp by a day of tests)."""
    from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata

    made = []
    real = SqlEventLogStorageMetadata.create_all
    monkeypatch.setattr(
        SqlEventLogStorageMetadata, "create_all", lambda *a, **k: made.append(1) or real(*a, **k)
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    event_storage._empty_run_database.cache_clear()
    try:
        ours = BatchedSqliteEventLogStorage(str(tmp_path / "ours"))
        made.clear()  # the index's own tables
        for run in ("run-a", "run-b", "run-c"):
            with ours.run_connection(run):
                pass
        assert made == [1]
        assert list(temp.iterdir()) == []
    finally:
        event_storage._empty_run_database.cache_clear()
    plain = SqliteEventLogStorage(str(tmp_path / "plain"))
    with plain.run_connection("run-a"):
        pass
    assert _schema(tmp_path / "ours" / "run-c.db") == _schema(tmp_path / "plain" / "run-a.db")
    assert not [p for p in os.listdir(tmp_path / "ours") if p.endswith(".tmp")]


def test_a_worker_forked_after_the_preload_makes_no_empty_run_database_of_its_own(tmp_path):
    """`instance_imports`, which the command and the workers' server import before they
    fork, makes the empty run database: a forked child's first run copies those bytes
    and never makes Dagster's tables itself (each worker did, on the class stage's
    critical path)."""
    script = (
        "import os\n"
        "from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata\n"
        "import dedup_assets.instance_imports\n"
        "from dedup_assets import event_storage\n"
        "assert event_storage._empty_run_database.cache_info().currsize == 1\n"
        "made = []\n"
        "real = SqlEventLogStorageMetadata.create_all\n"
        "SqlEventLogStorageMetadata.create_all = lambda *a, **k: made.append(1) or real(*a, **k)\n"
        f"storage = event_storage.BatchedSqliteEventLogStorage({str(tmp_path / 'events')!r})\n"
        "made.clear()  # the index's own tables\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    with storage.run_connection('run-in-child'):\n"
        "        pass\n"
        "    os._exit(3 if made else 0)\n"
        "print(os.waitpid(pid, 0)[1] >> 8)\n"
    )
    assert run_python(script).strip() == "0"
    assert (tmp_path / "events" / "run-in-child.db").is_file()


def test_a_forked_worker_that_ends_without_exit_handlers_leaves_no_temporary_folder(tmp_path):
    """The way a pool's worker ends (`os._exit`, no exit handlers) after storing a run of
    its own: the temporary folder is as it was."""
    temp = tmp_path / "temp"
    temp.mkdir()
    script = (
        "import os, tempfile\n"
        f"tempfile.tempdir = {str(temp)!r}\n"
        "from dedup_assets.event_storage import BatchedSqliteEventLogStorage\n"
        f"storage = BatchedSqliteEventLogStorage({str(tmp_path / 'events')!r})\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    with storage.run_connection('run-in-child'):\n"
        "        pass\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "os._exit(os.waitstatus_to_exitcode(status))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "events" / "run-in-child.db").exists()
    assert list(temp.iterdir()) == []


def test_close_engine_rolls_back_a_connection_an_interrupt_left_in_a_transaction(tmp_path):
    """A Dask run stopped by a KeyboardInterrupt raised in its thread can leave a connection
    checked out inside a write: the database stays locked, and `dedup run` failed with
    "database is locked" recording the run as canceled (tests/test_interrupt.py, under
    load). Disposing the engine leaves such a connection open; `close_engine` closes it."""
    path = tmp_path / "run.db"
    engine = event_storage.kept_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.commit()
    left = engine.connect()  # never given back: its thread was interrupted
    left.begin()
    left.exec_driver_sql("INSERT INTO t VALUES (1)")
    other = sqlite3.connect(path, timeout=0.05)

    def write() -> None:
        other.execute("INSERT INTO t VALUES (2)")
        other.commit()

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        write()
    other.rollback()
    engine.dispose()  # SQLAlchemy's own: only the connections given back are closed
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        write()
    other.rollback()
    event_storage.close_engine(engine)
    write()
    assert other.execute("SELECT x FROM t").fetchall() == [(2,)]  # the interrupted write undone
    other.close()
    event_storage.close_engine(engine)  # again: nothing left to close


def test_close_engine_leaves_given_back_connections_to_the_pool(tmp_path):
    engine = event_storage.kept_engine(f"sqlite:///{tmp_path / 'run.db'}")
    for _ in range(3):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    assert event_storage._CHECKED_OUT[engine] == set()
    with engine.connect() as conn:
        assert len(event_storage._CHECKED_OUT[engine]) == 1
    assert event_storage._CHECKED_OUT[engine] == set()
    event_storage.close_engine(engine)
    assert engine not in event_storage._CHECKED_OUT
