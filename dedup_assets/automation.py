"""Keeping the output clean as data arrives: a new-data sensor, a schedule, and the sensor
that evaluates the assets' declarative automation conditions.

- `new_images_sensor` lists the source (one `stat` per file, no file read) and compares
  each class's listing digest with what its catalog was built from, less what an earlier
  tick already requested at the same listing (its cursor): new, changed and deleted files
  request `update_class_job` runs for exactly the class partitions they touch (one run per
  contiguous range of them); a new class
  folder becomes a new partition; classes added or removed also refresh the index; nothing
  changed, nothing requested. With `verify` (`DEDUP_VERIFY`) every file is also read and
  compared with what its catalog read (`source_index.verify_listings`).
- `nightly_refresh` (cron from the configuration) does the same against what the catalog
  was built from, for the registered classes; `nightly_retraining` runs `train_job` at the
  same time, whose asset keeps the model unless a retraining rule fires.
- Both also request the classes whose keep lists are stale while their latents and fits are
  current: an edited `overrides.csv` (or `--overrides` file) decides exactly the classes
  whose corrections changed again (`redecide_classes`), with a run key per version of what
  their keep lists should record, so each edit is requested once.
- `dedup_automation` requests what follows, by the named jobs `dedup run` runs, once no
  run is in flight: `class_job` (by ranges of classes) for the classes whose latents or
  spline fit no longer match the model (a retrained autoencoder), then `threshold_job`
  for every threshold whose keep list, cross-class table, report or clean copy is stale
  (the first alone when all are: it computes the cross-class join the others reuse),
  then `summary_job` after threshold runs. Before the thresholds, `summary_job`'s
  `leakage` alone when the train/test leakage table is not current (its clean copies
  apply `--leakage`), and the thresholds whose clean copy was made with another table.
  Staleness is what `dedup run` reads (`core.data.artifacts`), so both do the same work;
  each request's run key names the inputs it was made for, so a failed run is not
  requested again until they change.
  A plain sensor, not Dagster's automation-condition sensor: that one launches runs of the
  implicit `__ASSET_JOB` (and backfills), which the UI lists under no named job.

Sensors and schedules start stopped, as Dagster's do: turn them on in the UI's Automation
page; they run in `dagster dev` (which starts the daemon) or under `dagster-daemon run`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import dagster as dg
import polars as pl

from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    MissingArtifact,
    digest,
    is_current,
    recorded_listings,
    stale_classes,
    stale_thresholds,
)
from dedup_assets.core.data.image_folder import FolderScan
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.source_index import SourceChanges, changed_classes
from dedup_assets.core.data.splits import is_training_key
from dedup_assets.core.decision.leakage import (
    clean_copies_behind,
    clean_copy_leakage,
    leakage_is_current,
    leakage_made_from,
)
from dedup_assets.core.decision.overrides import OverridesError
from dedup_assets.names import (
    CLASS_JOB,
    INDEX_JOB,
    REASON_TAG,
    SUMMARY_JOB,
    THRESHOLD_JOB,
    TRAIN_JOB,
    UPDATE_CLASS_JOB,
)
from dedup_assets.partitions import class_partitions, class_ranges
from resources import DedupSettings, DedupStorage, ImageSource


def update_requests(
    changes: SourceChanges, listing: dict[str, str], order: Sequence[str]
) -> list[dg.RunRequest]:
    """Update runs for exactly the added and changed classes (a class whose listing did not
    change is never requested): one per range of them in the partitions' `order` (one class:
    its partition key, several: a range run, `partitions.class_ranges`); an index refresh
    when classes come or go."""
    requests = []
    for batch in class_ranges(changes.to_update, order):
        tags = {REASON_TAG: "new or changed files"}
        if batch.size == 1:
            requests.append(
                dg.RunRequest(
                    job_name=UPDATE_CLASS_JOB,
                    partition_key=batch.start,
                    run_key=f"{batch.start}@{listing[batch.start]}",
                    tags=tags,
                )
            )
        else:
            requests.append(
                dg.RunRequest(
                    job_name=UPDATE_CLASS_JOB,
                    run_key=f"{batch}@{digest({k: listing[k] for k in changes.to_update})}",
                    tags={**tags, **batch.tags()},
                )
            )
    if changes.added or changes.removed:
        requests.insert(
            0,
            dg.RunRequest(
                job_name=INDEX_JOB,
                run_key=f"index@{digest(listing)}",
                tags={REASON_TAG: "class folders added or removed"},
            ),
        )
    return requests


def partition_order(instance: dg.DagsterInstance, changes: SourceChanges) -> list[str]:
    """The class partitions in the instance's order once this tick's requests are applied:
    the registered ones, less those removed, then those added (appended in this order)."""
    registered = instance.get_dynamic_partitions(class_partitions.name)
    gone = set(changes.removed)
    return [k for k in registered if k not in gone] + [
        k for k in changes.added if k not in registered
    ]


def redecide_classes(
    storage: DedupStorage, settings: DedupSettings, thresholds: Sequence[str]
) -> dict[str, str]:
    """Classes to decide again though their folders did not change: their keep lists are
    not current while their latents and fits are (the user's overrides changed, or the
    decision's settings), each with the digest of what its keep lists should now record (a
    run key part: a later edit asks again, the same one never twice). A retrained model
    makes latents stale: the automation sensor re-encodes those. {} before the first run;
    OverridesError for a bad overrides file."""
    layout = storage.layout()
    if not layout.model.exists():
        return {}
    try:
        current = storage.current_inputs(settings)
        stale = stale_classes(layout, current, list(thresholds))
    except (MissingArtifact, OSError):
        return {}
    return {
        k: digest([current.keep(k, t) for t in thresholds])
        for k in stale
        if is_current(layout.latents(k), current.latents(k))
        and is_current(layout.spline_fit(k), current.fit(k))
    }


def with_redecided(
    changes: SourceChanges, listing: dict[str, str], redecide: dict[str, str]
) -> tuple[SourceChanges, dict[str, str]]:
    """`changes` with the classes to decide again among the changed ones, and the listing
    their run keys are made of (a redecided class's listing joined with what it is decided
    with). A class not in the listing (its folder is gone) is left out."""
    extra = {k: v for k, v in redecide.items() if k in listing and k not in changes.to_update}
    if not extra:
        return changes, listing
    changed = tuple(sorted({*changes.changed, *extra}))
    keyed = {**listing, **{k: f"{listing[k]}+{v}" for k, v in extra.items()}}
    return SourceChanges(changes.added, changed, changes.removed), keyed


def partition_requests(changes: SourceChanges) -> list:
    """Register new class folders as partitions and drop the ones that are gone."""
    out = []
    if changes.added:
        out.append(class_partitions.build_add_request(list(changes.added)))
    if changes.removed:
        out.append(class_partitions.build_delete_request(list(changes.removed)))
    return out


def new_files_share(layout: OutputLayout, scan: FolderScan) -> float:
    """Share of the training split's image files (every file of an unsplit source) the
    model was not trained on (by path): evaluation images are never trained on."""
    files = [f for f in scan.files if is_training_key(f.class_key)]
    if not layout.trained_images.exists() or not files:
        return 1.0
    trained = set(
        pl.read_parquet(layout.trained_images, columns=["raw_path"], glob=False)["raw_path"]
    )
    return sum(f.raw_path not in trained for f in files) / len(files)


# Runs not yet ended: while any is, what follows from them waits (Dagster's own list).
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
RUN_KEY_TAG = "dagster/run_key"


def reencode_classes(layout: OutputLayout, current: CurrentInputs) -> list[str]:
    """Decoded classes whose latents or spline fit do not match the current model and
    settings (a retrained autoencoder): `class_job` encodes, fits and decides them again.
    A class whose keep lists alone are stale is the new-images sensor's (`redecide_classes`)."""
    return [
        k
        for k in sorted(current.class_digests)
        if not (
            is_current(layout.latents(k), current.latents(k))
            and is_current(layout.spline_fit(k), current.fit(k))
        )
    ]


def summary_due(instance: dg.DagsterInstance) -> bool:
    """Whether a threshold run succeeded after the latest summary run was created."""
    done = instance.get_run_records(
        dg.RunsFilter(job_name=THRESHOLD_JOB, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    if not done or done[0].end_time is None:
        return False
    summary = instance.get_run_records(dg.RunsFilter(job_name=SUMMARY_JOB), limit=1)
    return not summary or summary[0].create_timestamp.timestamp() < done[0].end_time


def _requested(instance: dg.DagsterInstance, run_key: str | None) -> bool:
    """Whether a run with this run key exists (requested before, for the same inputs)."""
    return instance.get_runs_count(dg.RunsFilter(tags={RUN_KEY_TAG: str(run_key)})) > 0


def follow_up_requests(
    instance: dg.DagsterInstance,
    layout: OutputLayout,
    current: CurrentInputs,
    thresholds: Sequence[str],
) -> list[dg.RunRequest] | str:
    """The runs of named jobs that bring the outputs after the classes up to date, one stage
    at a time (classes, thresholds, summary), or why none is requested."""
    reencode = reencode_classes(layout, current)
    if reencode:
        order = instance.get_dynamic_partitions(class_partitions.name)
        keys = [k for k in reencode if k in order]
        if not keys:
            return f"classes not registered as partitions yet: {', '.join(reencode[:5])}"
        tags = {REASON_TAG: "latents not computed with the current model"}
        requests = [
            dg.RunRequest(
                job_name=CLASS_JOB,
                partition_key=batch.start if batch.size == 1 else None,
                run_key=f"classes {batch}@{digest([current.fit(k) for k in keys])}",
                tags=tags if batch.size == 1 else {**tags, **batch.tags()},
            )
            for batch in class_ranges(keys, order)
        ]
        fresh = [r for r in requests if not _requested(instance, r.run_key)]
        return fresh or (
            f"{len(keys)} class(es) not current though already run for these inputs: see "
            "the failed class_job runs"
        )
    waiting = stale_classes(layout, current, list(thresholds))
    if waiting:
        return (
            f"{len(waiting)} class(es) to decide again first (new_images_sensor requests "
            f"them): {', '.join(waiting[:5])}"
        )
    if not leakage_is_current(layout, current):  # before the clean copies that apply it
        run_key = f"leakage@{digest(leakage_made_from(current))}"
        if not _requested(instance, run_key):
            return [
                dg.RunRequest(
                    job_name=SUMMARY_JOB,
                    asset_selection=[dg.AssetKey("leakage")],
                    run_key=run_key,
                    tags={REASON_TAG: "train/test leakage table not current"},
                )
            ]
    stale = stale_thresholds(layout, current, list(thresholds))
    stale += [t for t in clean_copies_behind(layout, current, thresholds) if t not in stale]
    leak = clean_copy_leakage(current, str(getattr(current.settings, "leakage", "")))
    if stale:

        def request(t: str) -> dg.RunRequest:
            made = digest(current.keep_list(t)) + (f"+{digest(leak)}" if leak else "")
            return dg.RunRequest(
                job_name=THRESHOLD_JOB,
                partition_key=t,
                run_key=f"threshold {t}@{made}",
                tags={REASON_TAG: "keep list, report or clean copy not current"},
            )

        requests = [request(t) for t in stale]
        fresh = [r for r in requests if not _requested(instance, r.run_key)]
        if fresh and fresh[0] is requests[0] and len(stale) == len(thresholds):
            return fresh[:1]  # the cross-class join and the clean copy the others reuse
        if fresh:
            return fresh
        return (
            f"T={', '.join(stale)} not current though already run for these inputs: "
            "see the failed threshold_job runs"
        )
    if summary_due(instance):
        made_from = digest([current.keep_list(t) for t in thresholds])
        return [
            dg.RunRequest(
                job_name=SUMMARY_JOB,
                run_key=f"summary@{made_from}",
                tags={REASON_TAG: "thresholds brought up to date"},
            )
        ]
    return "every class, threshold and the summary are current"


def build_automation(
    jobs: Sequence[dg.UnresolvedAssetJobDefinition],
    schedule_cron: str,
    thresholds: Sequence[str] = (),
) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    """The new-data sensor, the automation-condition sensor and the nightly schedule;
    `thresholds`: the configured ones, whose keep lists the overrides can make stale."""
    thresholds = list(thresholds)
    by_name = {j.name: j for j in jobs}
    targets = [by_name[INDEX_JOB], by_name[UPDATE_CLASS_JOB], by_name[TRAIN_JOB]]

    @dg.sensor(
        name="new_images_sensor",
        jobs=targets,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="New, changed and deleted files in the image source request runs of "
        "update_class_job for exactly the class partitions they affect; so does an edited "
        "overrides.csv, for the classes whose corrections changed.",
    )
    def new_images_sensor(
        context: dg.SensorEvaluationContext,
        image_source: ImageSource,
        storage: DedupStorage,
        settings: DedupSettings,
    ):
        layout = storage.layout()
        scan, listings = image_source.list_source(layout)
        listing = {k: v.digest for k, v in listings.items()}
        # What the outputs lack, less what an earlier tick requested at the same listing.
        pending = changed_classes(listing, recorded_listings(layout, image_source.max_file_bytes))
        changes = pending.unseen(listing, json.loads(context.cursor) if context.cursor else None)
        try:
            redecide = redecide_classes(storage, settings, thresholds)
        except OverridesError as exc:
            return dg.SkipReason(f"overrides refused, nothing requested: {exc}")
        if not pending.any and not redecide:
            return dg.SkipReason("nothing changed in the image source")
        if not changes.any and not redecide:
            return dg.SkipReason(f"already requested: {pending.describe()}")
        if not layout.model.exists():
            return dg.SkipReason(
                "no trained model yet: run `dedup run` first (or, in the UI, materialize "
                "image_catalog, which registers the classes, then every asset)"
            )
        changes, keyed = with_redecided(changes, listing, redecide)
        requests = update_requests(changes, keyed, partition_order(context.instance, changes))
        share = new_files_share(layout, scan)
        if share >= settings.retrain_new_share:
            requests.append(
                dg.RunRequest(
                    job_name=TRAIN_JOB,
                    run_key=f"train@{digest(listing)}",
                    tags={REASON_TAG: f"{share:.0%} of the image files are new since training"},
                )
            )
        context.log.info(f"{changes.describe()}: {len(requests)} run(s) requested")
        return dg.SensorResult(
            run_requests=requests,
            cursor=json.dumps(listing, sort_keys=True),
            dynamic_partitions_requests=partition_requests(changes),
        )

    @dg.schedule(
        name="nightly_refresh",
        cron_schedule=schedule_cron,
        job=by_name[UPDATE_CLASS_JOB],
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Brings every class whose files changed since its catalog was built up "
        "to date, and decides again the classes whose overrides changed (new class folders "
        "are registered by the sensor or `dedup run`).",
    )
    def nightly_refresh(
        context: dg.ScheduleEvaluationContext,
        image_source: ImageSource,
        storage: DedupStorage,
        settings: DedupSettings,
    ):
        layout = storage.layout()
        _, listings = image_source.list_source(layout)
        listing = {k: v.digest for k, v in listings.items()}
        changes = changed_classes(listing, recorded_listings(layout, image_source.max_file_bytes))
        try:
            redecide = redecide_classes(storage, settings, thresholds)
        except OverridesError as exc:
            return dg.SkipReason(f"overrides refused, nothing requested: {exc}")
        known, keyed = with_redecided(SourceChanges((), changes.changed, ()), listing, redecide)
        if not known.any:
            return dg.SkipReason(changes.describe())
        return update_requests(known, keyed, partition_order(context.instance, known))

    @dg.schedule(
        name="nightly_retraining",
        cron_schedule=schedule_cron,
        job=by_name[TRAIN_JOB],
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Asks the autoencoder asset whether a retraining rule fires (share of new "
        "images, reconstruction error of new images); it keeps the model otherwise.",
    )
    def nightly_retraining(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time
        return dg.RunRequest(
            run_key=f"train@{tick.isoformat() if tick else ''}", tags={REASON_TAG: "nightly"}
        )

    @dg.sensor(
        name="dedup_automation",
        jobs=[by_name[CLASS_JOB], by_name[THRESHOLD_JOB], by_name[SUMMARY_JOB]],
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="What follows, once no run is in flight: class_job for the classes a "
        "retrained model changes, threshold_job for every stale threshold (keep list, "
        "gates, report, clean copy), then summary_job (tables, evaluation, review page).",
    )
    def dedup_automation(
        context: dg.SensorEvaluationContext, storage: DedupStorage, settings: DedupSettings
    ):
        in_flight = context.instance.get_runs_count(dg.RunsFilter(statuses=IN_FLIGHT))
        if in_flight:
            return dg.SkipReason(f"waiting for {in_flight} run(s) in flight")
        layout = storage.layout()
        if not layout.model.exists():
            return dg.SkipReason(
                "no trained model yet: run `dedup run` first (or, in the UI, materialize "
                "image_catalog, which registers the classes, then every asset)"
            )
        try:
            current = storage.current_inputs(settings)
        except OverridesError as exc:
            return dg.SkipReason(f"overrides refused, nothing requested: {exc}")
        except (MissingArtifact, OSError) as exc:
            return dg.SkipReason(f"outputs not readable yet: {exc}")
        requests = follow_up_requests(context.instance, layout, current, thresholds)
        if isinstance(requests, str):
            return dg.SkipReason(requests)
        context.log.info(f"{len(requests)} run(s) requested: {[r.run_key for r in requests]}")
        return requests

    return [new_images_sensor, dedup_automation], [nightly_refresh, nightly_retraining]
