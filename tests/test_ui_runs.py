"""Runs are where users look in the UI (issue 24): under their named jobs and on the Overview.

One tiny `dedup run` (two classes of six images, in process as the command runs them, on a
persistent instance), then, against the code location `dedup ui` loads (module
`dedup_assets.definitions`, location `latent_dedup`) and Dagster's own GraphQL resolvers:

- every run of the command carries the code location's origin, which the Overview
  timeline's query needs (ui-core drops a run whose `repositoryOrigin` is null), and is
  listed under its named job;
- one tick of the sensor daemon with `dedup_automation` on, after the classes' latents went
  missing, launches one `class_job` run over the range of both classes (the range tags a
  backfill would carry), with the same origin, not a run of `__ASSET_JOB`;
- the sensor asks for `threshold_job` per stale threshold and then `summary_job`.
"""

from __future__ import annotations

import logging
import shutil
import time

import dagster as dg
import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._daemon.sensor import execute_sensor_iteration
from dagster_graphql.test.utils import execute_dagster_graphql

from dedup_assets.config import PipelineConfig
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.demo_data import generate_demo_dataset
from dedup_assets.definitions import build_definitions
from dedup_assets.dispatch import execute
from dedup_assets.names import (
    CLASS_JOB,
    CODE_LOCATION,
    INDEX_JOB,
    INGEST_JOB,
    REPOSITORY,
    SUMMARY_JOB,
    THRESHOLD_JOB,
    TRAIN_JOB,
)
from dedup_assets.partitions import RANGE_END_TAG, RANGE_START_TAG, class_partitions
from dedup_assets.runner import run_pipeline

T = "0.95"
MAIN_JOBS = {INDEX_JOB, INGEST_JOB, TRAIN_JOB, CLASS_JOB, THRESHOLD_JOB, SUMMARY_JOB}

# The Overview timeline's query (ui-core's useRunsForTimeline, CompletedRunTimelineQuery),
# with the fields the timeline groups runs by.
TIMELINE = """
query CompletedRunTimelineQuery($completedFilter: RunsFilter!, $limit: Int!) {
  completed: runsOrError(filter: $completedFilter, limit: $limit) {
    ... on Runs {
      results { id pipelineName status startTime
        repositoryOrigin { repositoryName repositoryLocationName } }
    }
  }
}"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A finished `dedup run` on a persistent instance whose launcher records runs without
    starting them (what a sensor tick launches is inspected, not executed)."""
    base = tmp_path_factory.mktemp("ui_runs")
    source = base / "src"
    generate_demo_dataset(source, seed=7, per_class=6, duplicate_fraction=0.3)
    for extra in ("desert", "road", "urban", "water"):
        shutil.rmtree(source / extra)
    config = PipelineConfig.build(
        source=str(source),
        output=str(base / "out"),
        thresholds=T,
        device="cpu",
        precision="fp32",
        method={"epochs": 1, "n_components": 8},
    )
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    (base / "home").mkdir()
    with dg.instance_for_test(
        temp_dir=str(base / "home"), overrides={"run_launcher": launcher}
    ) as instance:
        outcome = run_pipeline(config, instance, log=lambda _: None)
        assert outcome.ok, (outcome.failures, outcome.skipped)
        yield {"config": config, "instance": instance, "layout": OutputLayout(base / "out")}


@pytest.fixture
def workspace(ran, monkeypatch):
    """The code location as `dedup ui --output OUT` loads it, in this process."""
    monkeypatch.setenv("DEDUP_OUTPUT", str(ran["layout"].root))
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="dedup_assets.definitions"), location_name=CODE_LOCATION
    )
    target = InProcessTestWorkspaceLoadTarget(origin)
    with WorkspaceProcessContext(ran["instance"], target) as context:
        yield context


def test_dedup_run_runs_are_on_the_overview_timeline_under_their_jobs(ran, workspace):
    now = time.time()
    variables = {
        "completedFilter": {
            "statuses": ["SUCCESS", "FAILURE", "CANCELED"],
            "updatedAfter": now - 3600,
            "updatedBefore": now + 60,
        },
        "limit": 500,
    }
    result = execute_dagster_graphql(workspace.create_request_context(), TIMELINE, variables)
    runs = result.data["completed"]["results"]
    assert {r["pipelineName"] for r in runs} == MAIN_JOBS
    origins = {
        (o["repositoryName"], o["repositoryLocationName"]) if (o := r["repositoryOrigin"]) else None
        for r in runs
    }
    assert origins == {(REPOSITORY, CODE_LOCATION)}, origins
    assert all(r["status"] == "SUCCESS" and r["startTime"] for r in runs)


def test_every_sensor_and_schedule_launches_named_jobs(ran):
    """No automation-condition sensor (its runs are `__ASSET_JOB`'s, or backfills), not even
    the default one Dagster adds for assets with automation conditions."""
    repository = build_definitions(ran["config"]).get_repository_def()
    named = {j.name for j in repository.get_all_jobs()} - {"__ASSET_JOB"}
    for sensor in repository.sensor_defs:
        assert not isinstance(sensor, dg.AutomationConditionSensorDefinition), sensor.name
        assert sensor.asset_selection is None, sensor.name
        assert sensor.targets and {t.job_name for t in sensor.targets} <= named, sensor.name
    assert {s.job_name for s in repository.schedule_defs} <= named
    assert {s.name for s in repository.sensor_defs} == {"new_images_sensor", "dedup_automation"}


def _tick(workspace) -> None:
    """One iteration of the sensor daemon, as `dagster-daemon run` makes it."""
    for _ in execute_sensor_iteration(workspace, logging.getLogger("test_ui_runs"), None, None):
        pass


def test_the_automation_launches_a_ranged_class_job_with_the_origin(ran, workspace):
    instance, layout = ran["instance"], ran["layout"]
    classes = instance.get_dynamic_partitions(class_partitions.name)
    assert len(classes) == 2
    aside = layout.root.parent / "latents_aside"
    aside.mkdir()
    for k in classes:  # as a retrained model leaves them: not matching, to compute again
        shutil.move(layout.latents(k), aside / k)
    remote = (
        workspace.create_request_context()
        .get_code_location(CODE_LOCATION)
        .get_repository(REPOSITORY)
        .get_sensor("dedup_automation")
    )
    assert {t.job_name for t in remote.get_targets()} == {CLASS_JOB, THRESHOLD_JOB, SUMMARY_JOB}
    before = {r.run_id for r in instance.get_runs()}
    instance.start_sensor(remote)
    try:
        _tick(workspace)
    finally:
        instance.stop_sensor(remote.get_remote_origin_id(), remote.selector_id, remote)
        for k in classes:
            shutil.move(aside / k, layout.latents(k))
    launched = [r for r in instance.get_runs() if r.run_id not in before]
    ticks = instance.get_ticks(remote.get_remote_origin_id(), remote.selector_id)
    assert len(launched) == 1, [t.tick_data for t in ticks[:1]]
    run = launched[0]
    assert run.job_name == CLASS_JOB
    assert (run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]) == (classes[0], classes[-1])
    assert run.tags["dagster/sensor_name"] == "dedup_automation"
    origin = run.remote_job_origin
    assert origin is not None
    assert (origin.repository_origin.repository_name, origin.location_name) == (
        REPOSITORY,
        CODE_LOCATION,
    )
    instance.delete_run(run.run_id)  # never started: not in flight for the next test


def _evaluate(ran) -> dg.SensorResult | dg.SkipReason | list:
    config = ran["config"]
    defs = build_definitions(config)
    sensor = defs.get_repository_def().get_sensor_def("dedup_automation")
    with dg.build_sensor_context(
        instance=ran["instance"], definitions=defs, resources=config.resources()
    ) as context:
        return sensor(context)


def test_the_automation_asks_for_stale_thresholds_then_the_summary(ran):
    instance, layout = ran["instance"], ran["layout"]
    idle = _evaluate(ran)
    assert isinstance(idle, dg.SkipReason) and "current" in idle.skip_message
    layout.report_summary(T).unlink()  # the kurtosis report of T is gone: T is stale
    requests = _evaluate(ran)
    assert [(r.job_name, r.partition_key) for r in requests] == [(THRESHOLD_JOB, T)]
    # The threshold run (here in process, as `dedup run` makes it) ends after the last
    # summary run: the summary is due, and then nothing more.
    job = build_definitions(ran["config"]).resolve_job_def(THRESHOLD_JOB)
    assert execute(job, T, instance, tags={}, run_config={}).success
    requests = _evaluate(ran)
    assert [(r.job_name, r.partition_key) for r in requests] == [(SUMMARY_JOB, None)]
    job = build_definitions(ran["config"]).resolve_job_def(SUMMARY_JOB)
    assert execute(job, None, instance, tags={}, run_config={}).success
    assert isinstance(_evaluate(ran), dg.SkipReason)
    # A keep list's csv export deleted: T is stale again, and its run writes the csv back.
    exported = layout.keep_list(T, "csv")
    exported.unlink()
    requests = _evaluate(ran)
    assert [(r.job_name, r.partition_key) for r in requests] == [(THRESHOLD_JOB, T)]
    job = build_definitions(ran["config"]).resolve_job_def(THRESHOLD_JOB)
    assert execute(job, T, instance, tags={}, run_config={}).success
    assert exported.is_file()


def test_the_threshold_steps_reading_the_model_wait_for_it(tmp_path):
    """keep_list and cross_class_duplicates read the model (its digest names every keep
    record and latents): upstream of them, so a new output's "Materialize all", planned
    before the catalog registered any class, skips them when the model fails instead of
    running them to fail on a missing file."""
    from dedup_assets.config import PipelineConfig
    from dedup_assets.definitions import build_definitions

    config = PipelineConfig.build(source="", output=str(tmp_path / "out"), thresholds="0.95")
    graph = build_definitions(config).resolve_asset_graph()
    model = dg.AssetKey("autoencoder")
    for name in ("keep_list", "cross_class_duplicates"):
        assert model in graph.get(dg.AssetKey(name)).parent_keys, name
