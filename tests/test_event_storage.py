"""`dedup run`'s event log: a range's materializations stored as one batch, read back by the
UI's plain SQLite storage as if written one at a time."""

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

import dedup_assets.dispatch  # noqa: F401 - sets DAGSTER_EVENT_BATCH_SIZE as `dedup run` does
from dedup_assets.core.data.layout import (
    INSTANCE_FILE,
    RUN_INSTANCE_FILE,
    instance_file,
    prepare_dagster_home,
)
from dedup_assets.event_storage import BatchedSqliteEventLogStorage

KEYS = [f"k{i:03d}" for i in range(60)]
parts = dg.DynamicPartitionsDefinition(name="things")


@dg.asset(partitions_def=parts, backfill_policy=dg.BackfillPolicy.single_run())
def ranged(context: dg.AssetExecutionContext) -> None:
    for key in context.partition_keys:
        context.add_asset_metadata({"key": key, "square": int(key[1:]) ** 2}, partition_key=key)


defs = dg.Definitions(assets=[ranged], jobs=[dg.define_asset_job("ranged_job", [ranged])])


def _run(instance: dg.DagsterInstance) -> None:
    instance.add_dynamic_partitions("things", KEYS)
    result = defs.resolve_job_def("ranged_job").execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": KEYS[0],
            "dagster/asset_partition_range_end": KEYS[-1],
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
    count = {"n": 0}
    original = SqliteEventLogStorage._connect

    def counting(self, shard):
        count["n"] += 1
        return original(self, shard)

    monkeypatch.setattr(SqliteEventLogStorage, "_connect", counting)
    return count


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
