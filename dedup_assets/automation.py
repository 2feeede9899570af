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
- `dedup_automation` evaluates the assets' `AutomationCondition`s: keep lists, reports,
  checks and clean copies follow when class partitions change; every class is encoded
  again when the autoencoder is retrained.

Sensors and schedules start stopped, as Dagster's do: turn them on in the UI's Automation
page; they run in `dagster dev` (which starts the daemon) or under `dagster-daemon run`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import dagster as dg
import polars as pl

from dedup_assets.core.data.artifacts import (
    MissingArtifact,
    digest,
    is_current,
    recorded_listings,
    stale_classes,
)
from dedup_assets.core.data.image_folder import FolderScan
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.source_index import SourceChanges, changed_classes
from dedup_assets.core.decision.overrides import OverridesError
from dedup_assets.names import INDEX_JOB, REASON_TAG, TRAIN_JOB, UPDATE_CLASS_JOB
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
    """Share of the source's image files the model was not trained on (by path)."""
    if not layout.trained_images.exists() or not scan.files:
        return 1.0
    trained = set(pl.read_parquet(layout.trained_images, columns=["raw_path"])["raw_path"])
    return sum(f.raw_path not in trained for f in scan.files) / len(scan.files)


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
        pending = changed_classes(listing, recorded_listings(layout))
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
            return dg.SkipReason("no trained model yet: run `dedup run` (or materialize all) first")
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
        changes = changed_classes(listing, recorded_listings(layout))
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

    automation = dg.AutomationConditionSensorDefinition(
        "dedup_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
        description="Evaluates the automation conditions: keep lists, reports, checks and "
        "clean copies follow when class partitions change.",
    )
    return [new_images_sensor, automation], [nightly_refresh, nightly_retraining]
