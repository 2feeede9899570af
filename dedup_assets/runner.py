"""Materialize the whole graph in one call: every asset, check and partition, stage by stage.

Dagster runs one partition per run, and the assets here have four partitionings
(none, class, class x threshold, threshold), so the main job is a sequence of in-process
runs against one persistent instance. The same instance backs `dagster dev`, so the UI
shows every run, check verdict and plot afterwards.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from dedup_assets.definitions import ASSETS, CHECKS
from dedup_assets.partitions import class_partitions, class_threshold_key, threshold_partitions


@dataclass
class StageTiming:
    name: str
    seconds: float
    runs: int


@dataclass
class PipelineOutcome:
    """What the main job did: timings per stage, failed runs and failed checks."""

    output: Path
    stages: list[StageTiming] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    check_failures: list[str] = field(default_factory=list)
    check_warnings: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    thresholds: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.check_failures

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def instance_for(output: Path) -> dg.DagsterInstance:
    """The persistent Dagster instance under <output>/.dagster (or $DAGSTER_HOME if set)."""
    import os

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = (output / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def run_pipeline(
    resources: dict,
    instance: dg.DagsterInstance,
    *,
    train: bool = True,
    log: Callable[[str], None] = print,
    log_level: str = "INFO",
) -> PipelineOutcome:
    """Materialize every asset and check, for every class and threshold partition."""
    output = resources["storage"].layout().root
    outcome = PipelineOutcome(output=output, thresholds=threshold_partitions.get_partition_keys())
    graph = [*ASSETS, *CHECKS]

    def stage(name: str, selection: Sequence, keys: Sequence) -> None:
        start = time.perf_counter()
        for key in keys:
            result = dg.materialize(
                graph,
                selection=selection,
                partition_key=key,
                resources=resources,
                instance=instance,
                raise_on_error=False,
                tags={"latent_dedup/stage": name},
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            )
            _collect(result, name, key, outcome)
        seconds = time.perf_counter() - start
        outcome.stages.append(StageTiming(name, seconds, len(keys)))
        log(f"[{name}] {len(keys)} run(s) in {seconds:.1f}s")

    by_key = {a.key.to_user_string(): a for a in ASSETS}
    first = [by_key["image_catalog"]] + ([by_key["autoencoder"]] if train else [])
    stage("catalog + training" if train else "catalog", first, [None])
    if outcome.failures:
        return outcome
    outcome.classes = sorted(instance.get_dynamic_partitions(class_partitions.name))
    stage(
        "latents + spline fits",
        [by_key["class_latents"], by_key["spline_fits"], *_checks_of("class_latents")],
        outcome.classes,
    )
    pairs = [class_threshold_key(c, t) for c in outcome.classes for t in outcome.thresholds]
    stage("keep lists per class", [by_key["class_keep_list"]], pairs)
    stage(
        "keep lists, gates, reports, clean copies",
        [
            by_key["keep_list"],
            *_checks_of("keep_list"),
            by_key["kurtosis_report"],
            by_key["clean_dataset"],
        ],
        outcome.thresholds,
    )
    stage("summary + evaluation", [by_key["dedup_summary"], by_key["dedup_evaluation"]], [None])
    return outcome


def _checks_of(asset_name: str) -> list:
    return [
        c for c in CHECKS if any(k.asset_key.to_user_string() == asset_name for k in c.check_keys)
    ]


def _collect(result, stage: str, key, outcome: PipelineOutcome) -> None:
    where = f"{stage} [{key}]" if key is not None else stage
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                text = f"{evaluation.check_name} on {evaluation.asset_key.to_user_string()} [{key}]"
                if evaluation.severity == dg.AssetCheckSeverity.ERROR:
                    outcome.check_failures.append(text)
                else:
                    outcome.check_warnings.append(text)
        elif event.is_step_failure:
            error = event.event_specific_data.error
            if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
                continue  # already counted as a failed check
            message = error.message.strip().splitlines()[-1] if error else "failed"
            outcome.failures.append(f"{where}: {event.step_key}: {message}")
