"""`dedup run`'s run storage: Dagster's SQLite run storage on one kept connection, its
files read as they are by the UI's plain instance."""

import os
from pathlib import Path

import dagster as dg
import pytest
from test_event_storage import KEYS, _run, _runs_of, run_as_the_command
from test_event_storage import sqlite_opens as sqlite_opens  # a fixture

from dedup_assets.core.data.layout import INSTANCE_FILE, RUN_INSTANCE_FILE, prepare_dagster_home
from dedup_assets.run_storage import KeptSqliteRunStorage


def _instances(tmp_path: Path) -> tuple[Path, dg.DagsterInstance]:
    home = prepare_dagster_home(tmp_path / "out")
    return home, dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)


def _runs_table(instance: dg.DagsterInstance) -> list[tuple]:
    return sorted((r.run_id, r.status.value, r.job_name) for r in instance.get_runs())


def test_runs_are_stored_on_one_connection_and_read_by_the_plain_storage(
    tmp_path, monkeypatch, sqlite_opens
):
    """Three runs open no connection to `runs.db` beyond the one the instance opened
    (Dagster's own storage opens one for every run's creation, status change and lookup);
    the UI's instance reads the same runs."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home, kept = _instances(tmp_path)
    assert type(kept.run_storage) is KeptSqliteRunStorage
    runs_db = str(home / "history" / "runs.db")
    sqlite_opens.clear()
    for k in range(3):
        _run(kept, keys=KEYS[k : k + 2])
    assert runs_db not in sqlite_opens, sqlite_opens
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert type(ui.run_storage) is not KeptSqliteRunStorage
    assert _runs_table(ui) == _runs_table(kept)
    assert {status for _, status, _ in _runs_table(ui)} == {"SUCCESS"}
    assert len(_runs_table(ui)) == 3

    plain_home = tmp_path / "plain"
    plain_home.mkdir()
    plain = dg.DagsterInstance.from_config(str(plain_home))
    sqlite_opens.clear()
    _run(plain, keys=KEYS[:2])
    plain_runs = str(plain_home / "history" / "runs.db")
    assert sqlite_opens.count(plain_runs) >= 5  # per statement: what this saves


def test_two_instances_see_each_others_runs_at_once(tmp_path, monkeypatch):
    """The command and a worker each keep a connection: a run one stores (created, then
    finished), the other reads at once."""
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    home, a = _instances(tmp_path)
    b = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    _run(a, keys=KEYS[:2])
    assert _runs_table(b) == _runs_table(a)
    _run(b, keys=KEYS[2:4])
    assert _runs_table(a) == _runs_table(b) and len(_runs_table(a)) == 2
    a.delete_run(_runs_of(a)[0])
    assert len(_runs_table(b)) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_engine_and_leaves_its_parents(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    _, instance = _instances(tmp_path)
    _run(instance, keys=KEYS[:2])
    storage = instance.run_storage
    parents = storage._kept
    assert parents is not None
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            _run(instance, keys=KEYS[2:4])
            own = storage._kept is not None and storage._kept is not parents
            storage._close()  # what its exit handlers do: its own engine only
            status = 0 if own and len(instance.get_runs()) == 2 else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage._kept is parents  # untouched, and it still works
    _run(instance, keys=KEYS[4:6])
    assert len(_runs_table(instance)) == 3


def test_dispose_and_the_commands_exit_leave_no_write_ahead_log(tmp_path):
    """The kept connection is closed by `dispose` and by the exit handlers that `dedup run`
    runs before its `os._exit`: SQLite folds its log into `runs.db` and deletes it."""
    home = prepare_dagster_home(tmp_path / "out")
    wal = home / "history" / "runs.db-wal"
    run_as_the_command(
        home, f"assert instance.run_storage._kept is not None\nassert os.path.exists({str(wal)!r})"
    )
    history = home / "history"
    assert not list(history.glob("runs.db-wal")) and not list(history.glob("runs.db-shm"))
    ui = dg.DagsterInstance.from_config(str(home), config_filename=INSTANCE_FILE)
    assert len(_runs_table(ui)) == 1

    instance = dg.DagsterInstance.from_config(str(home), config_filename=RUN_INSTANCE_FILE)
    _run(instance, keys=KEYS[:2])
    assert (history / "runs.db-wal").exists()
    instance.dispose()
    assert not (history / "runs.db-wal").exists()
    assert len(_runs_table(ui)) == 2
