"""The Dagster code location: assets, checks, jobs and resources of latent-dedup.

`build_definitions(config)` makes the whole graph from one `PipelineConfig`: the threshold
partitions, the resources and the named jobs all come from that value. `dedup run`
builds its config from the command line; `dagster dev` (workspace.yaml, `dedup ui`) loads
`defs` below, which builds it from the environment when the code location loads, not at
import: DEDUP_OUTPUT's saved `pipeline.json`, then DEDUP_SOURCE, DEDUP_THRESHOLDS, ...
"""

from __future__ import annotations

import dagster as dg

from dedup_assets.assets.autoencoder import autoencoder
from dedup_assets.assets.catalog import class_images, image_catalog
from dedup_assets.assets.class_batch import console_logger
from dedup_assets.assets.class_keep_lists import build_class_keep_lists_asset
from dedup_assets.assets.clean_dataset import build_clean_dataset_asset
from dedup_assets.assets.cross_class import build_cross_class_asset
from dedup_assets.assets.evaluation import build_evaluation_asset
from dedup_assets.assets.keep_list import build_keep_list_asset
from dedup_assets.assets.latents import class_latents
from dedup_assets.assets.leakage import build_leakage_asset
from dedup_assets.assets.reference_pool import reference_pool
from dedup_assets.assets.reports import build_report_assets
from dedup_assets.assets.review import build_review_asset
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.automation import build_automation
from dedup_assets.config import PipelineConfig
from dedup_assets.engines import executor_definition
from dedup_assets.names import (
    CLASS_JOB,
    INDEX_JOB,
    INGEST_JOB,
    SUMMARY_JOB,
    THRESHOLD_JOB,
    TRAIN_JOB,
    UPDATE_CLASS_JOB,
)
from dedup_assets.partitions import threshold_partitions
from dedup_assets.step_signals import step_succeeded


def build_definitions(config: PipelineConfig) -> dg.Definitions:
    """Every asset, check, job and resource, for this configuration."""
    thresholds = threshold_partitions(config.thresholds)
    class_keep_lists = build_class_keep_lists_asset(config.thresholds)
    keep_list = build_keep_list_asset(thresholds, class_keep_lists)
    kurtosis_report, dedup_summary = build_report_assets(thresholds, keep_list)
    clean_dataset = build_clean_dataset_asset(thresholds, keep_list, kurtosis_report)
    dedup_evaluation = build_evaluation_asset(thresholds)
    cross_class_duplicates, no_cross_class_duplicates = build_cross_class_asset(thresholds)
    review_page = build_review_asset(thresholds, keep_list, cross_class_duplicates)
    leakage = build_leakage_asset(config.splits)
    per_class = [class_latents, spline_fits, class_keep_lists]
    jobs = [
        dg.define_asset_job(
            INDEX_JOB,
            selection=[image_catalog],
            description="List the source (no file is read): class folders, root entries; "
            "register the class partitions.",
        ),
        dg.define_asset_job(
            INGEST_JOB,
            selection=[class_images],
            description="One class: decode its new and changed images.",
        ),
        dg.define_asset_job(
            TRAIN_JOB,
            selection=[autoencoder, reference_pool],
            description="Keep the autoencoder, or train it again when a retraining rule fires; "
            "draw the reference pool for a new model.",
        ),
        dg.define_asset_job(
            CLASS_JOB,
            selection=per_class,
            description="One class: encode new images, fit the spline density, decide at "
            "every threshold.",
        ),
        dg.define_asset_job(
            UPDATE_CLASS_JOB,
            selection=[class_images, *per_class],
            description="One class brought up to date with its folder, with the current "
            "model: what the new-data sensor and the schedule request.",
        ),
        dg.define_asset_job(
            THRESHOLD_JOB,
            selection=[keep_list, kurtosis_report, clean_dataset, cross_class_duplicates],
            hooks={step_succeeded},
            description="One threshold: keep list, gates, kurtosis report, clean copy, "
            "cross-class duplicates.",
        ),
        dg.define_asset_job(
            SUMMARY_JOB,
            selection=[dedup_summary, dedup_evaluation, review_page, leakage],
            description="Tables across thresholds, the ground-truth evaluation, the review "
            "page (review/index.html) and train/test leakage (leakage.csv; `dedup run` runs "
            "it alone before the thresholds, whose clean copies apply --leakage).",
        ),
    ]
    sensors, schedules = build_automation(jobs, config.schedule, config.thresholds)
    return dg.Definitions(
        assets=[
            image_catalog,
            class_images,
            autoencoder,
            reference_pool,
            class_latents,
            spline_fits,
            class_keep_lists,
            keep_list,
            cross_class_duplicates,
            kurtosis_report,
            dedup_summary,
            clean_dataset,
            dedup_evaluation,
            review_page,
            leakage,
        ],
        asset_checks=[no_cross_class_duplicates],
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=config.resources(),
        executor=executor_definition(config.executor),
        loggers={"console": console_logger},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location `dagster dev` loads: configured from the environment at load time."""
    return build_definitions(PipelineConfig.from_environment())
