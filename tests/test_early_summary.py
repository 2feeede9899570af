"""`runner._EarlySummary`: the summary started on a worker from within a threshold's run
once its report step has succeeded and the cross-class run beside it has ended without a
failure; in every other case not started (the stage after the run then runs it)."""

from concurrent.futures import Future

import pytest

from dedup_assets import runner
from dedup_assets.dispatch import RunReport
from dedup_assets.names import SUMMARY_JOB
from dedup_assets.runner import SUMMARY_ASSETS, _EarlySummary
from dedup_assets.step_signals import listening, step_succeeded


class _Pool:
    def __init__(self, refuse: bool = False) -> None:
        self.started: list[tuple] = []
        self.refuse = refuse

    def start(self, job, key, tags, run_config, stage, assets):
        if self.refuse:
            raise RuntimeError("the pool has stopped")
        self.started.append((job, key, stage, assets))
        return "handle"


class _Stages:
    def __init__(self, pool: _Pool) -> None:
        self.tags, self.run_config, self.lines, self._pool = {"t": "1"}, {}, [], pool

    def pool(self) -> _Pool:
        return self._pool

    def log(self, line: str) -> None:
        self.lines.append(line)


def _ended(report: RunReport | BaseException) -> Future:
    future: Future = Future()
    if isinstance(report, BaseException):
        future.set_exception(report)
    else:
        future.set_result(report)
    return future


def test_started_after_the_report_once_the_cross_class_run_has_ended():
    pool = _Pool()
    early = _EarlySummary(_Stages(pool), "summary", SUMMARY_ASSETS)
    beside: Future = Future()
    early.beside = beside
    early.step_ended("keep_list")  # not the report: nothing
    assert early._waiting is None
    early.step_ended("kurtosis_report")
    early.step_ended("kurtosis_report")  # told twice: one wait
    assert pool.started == []  # the cross-class run goes on
    beside.set_result(RunReport())
    started = early.started()
    assert started is not None and started[0] == "summary" and started[3] == "handle"
    assert pool.started == [(SUMMARY_JOB, None, "summary", SUMMARY_ASSETS)]
    assert early.stages.lines == ["[summary] starting: 1 run(s) on a worker meanwhile"]


@pytest.mark.parametrize(
    "beside, pool, stop",
    [
        (_ended(RunReport(failures=["cross_class_duplicates: boom"])), _Pool(), False),
        (_ended(RuntimeError("the worker died")), _Pool(), False),
        (_ended(RunReport()), _Pool(), True),
        (_ended(RunReport()), _Pool(refuse=True), False),
    ],
    ids=["the cross-class run failed", "its worker died", "a stop", "the pool stopped"],
)
def test_not_started(beside, pool, stop, monkeypatch):
    monkeypatch.setattr(runner, "stop_requested", lambda: stop)
    early = _EarlySummary(_Stages(pool), "summary", SUMMARY_ASSETS)
    early.beside = beside
    early.step_ended("kurtosis_report")
    assert early.started() is None
    assert pool.started == []


def test_not_started_without_the_report_or_a_run_beside():
    pool = _Pool()
    early = _EarlySummary(_Stages(pool), "summary", SUMMARY_ASSETS)
    early.step_ended("kurtosis_report")  # no cross-class run beside: nothing to wait for
    assert early.started() is None and pool.started == []


def test_the_hook_tells_only_this_threads_listener():
    """`step_signals`: the success hook calls the listener of the thread it runs in, and
    nothing where no one listens."""
    import dagster as dg

    heard: list[str] = []

    @dg.asset
    def kurtosis_report() -> None:
        return None

    job = dg.Definitions(
        assets=[kurtosis_report], jobs=[dg.define_asset_job("j", hooks={step_succeeded})]
    ).resolve_job_def("j")
    with listening(heard.append):
        assert job.execute_in_process().success
    assert heard == ["kurtosis_report"]
    assert job.execute_in_process().success  # no listener: the hook does nothing
    assert heard == ["kurtosis_report"]
