"""Class partitions in batches: one run materializes a whole range of classes.

A Dagster run has a fixed cost of about a second (planning, events, storage), so one run
per class made a dataset of 1,000 small classes spend half an hour in orchestration. The
per-class assets therefore take Dagster's single-run backfill policy: a run covers a range
of class partitions (`partitions.class_ranges`), each asset is one step that loops over
`context.partition_keys`, and a run of one class (materializing one partition in the UI)
is the same code with a range of one.

What the UI shows per class, and why it is done this way: a single-run step has one output
for its whole range (dagster issue #21072), so each class's metadata is attached to its own
partition with `context.add_asset_metadata(partition_key=...)` before that one output, which
Dagster turns into one materialization per class carrying its own metadata; each class's
check verdict is an `AssetCheckEvaluation` for its partition, aimed at that class's new
materialization (the UI counts a verdict only when it targets the partition's latest
materialization). A blocking verdict that fails stops the steps downstream, as Dagster's own
blocking checks do. When a class fails, the classes done before it are recorded as
materialized (one event each) and the step fails naming every class that failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

# The target of a verdict is not exported by Dagster 1.13 (pinned below 1.14 in
# pyproject.toml); without it a partition's verdict does not count as its current one.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as _Target,
)
from dagster._core.execution.context.metadata_logging import (
    AssetMetadataHandle,
    OutputMetadataAccumulator,
)

from dedup_assets.names import WORKER_METADATA, worker_name
from dedup_assets.partitions import class_partitions

BATCH_POLICY = dg.BackfillPolicy.single_run()


class _NoPerClassCheckNote(logging.Filter):
    """Drop Dagster's note that a per-class blocking check "emitted no result" in its step:
    its verdicts are per-partition evaluations, and a failed one fails the step (Dagster
    raises DagsterAssetCheckFailedError), which skips the steps downstream."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "emitted no result in step" not in record.getMessage()


logging.getLogger("dagster._core.execution.plan.active").addFilter(_NoPerClassCheckNote())

PER_CLASS_CHECK_OUTPUTS: set[str] = set()
"""The step outputs of the per-class checks (`class_check`), which their steps never yield."""


class _NoOmittedCheckNote(logging.Filter):
    """Drop Dagster's run-log note that a step "did not yield or return expected outputs"
    when those outputs are per-class checks only: their verdicts are per-partition
    evaluations (module doc), so the note is printed on every run of the step and says
    nothing wrong (it was what `--verbose` showed first after each encoding)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        marker = "did not yield or return expected outputs "
        if marker not in message:
            return True
        named = message.split(marker, 1)[1]
        omitted = {part.strip(" '\"{}.") for part in named.split(",")}
        return not omitted or not omitted <= PER_CLASS_CHECK_OUTPUTS


@dg.logger(
    config_schema=dg.colored_console_logger.config_schema,
    description="Dagster's console logger, without its note that a step omitted the "
    "per-class checks' outputs (their verdicts are per-partition evaluations).",
)
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    """The run's console log (`dedup run --verbose`, `dagster dev`'s compute logs)."""
    made = dg.colored_console_logger.logger_fn(init_context)
    made.addFilter(_NoOmittedCheckNote())
    return made


PROGRESS_EVERY_S = 10.0  # a batch logs its progress at most this often
FETCH_CHUNK = 5_000  # partitions per query for the verdicts' targets


class ClassesFailed(RuntimeError):
    """Some classes of a batch failed; the others were recorded as materialized."""


@dataclass
class ClassOutcome:
    """What one class's step did: its metadata, and its check's verdict when the asset
    carries one (problems empty: passed)."""

    metadata: dict[str, Any]
    problems: list[str] | None = None
    check_metadata: dict[str, Any] = field(default_factory=dict)


def class_asset(
    name: str,
    *,
    deps: Sequence[Any],
    description: str,
    group_name: str,
    kinds: set[str],
    check: dg.AssetCheckSpec | None = None,
    op_tags: dict[str, Any] | None = None,
) -> Callable:
    """The decorator of a per-class asset: class partitions, run in batches."""
    return dg.multi_asset(
        name=name,
        specs=[
            dg.AssetSpec(
                name,
                deps=deps,
                description=description,
                group_name=group_name,
                kinds=kinds,
                partitions_def=class_partitions,
            )
        ],
        check_specs=[check] if check is not None else None,
        backfill_policy=BATCH_POLICY,
        op_tags=op_tags,
        # Makes the check's output optional: a class without a verdict leaves it unset.
        can_subset=True,
    )


def class_check(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    """A blocking check with a verdict per class partition."""
    PER_CLASS_CHECK_OUTPUTS.add(f"{asset}_{name}")
    return dg.AssetCheckSpec(
        name, asset=asset, blocking=True, partitions_def=class_partitions, description=description
    )


def materialize_classes(
    context: dg.AssetExecutionContext,
    asset: str,
    work: Callable[[str, Callable[[str], None]], ClassOutcome],
    *,
    check: str | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Run `work(key, log)` for every class of the run's range, in order, and report each
    class on its own partition (see the module docstring).

    `log` is the run's log in a run of one class; in a run of many, a class's lines go into
    its own metadata ("log") instead: each logged line is an event Dagster stores, and a
    thousand classes' lines cost more than their work (measured: 56 ms a line on 2 busy
    cores), while the run's log says how far the batch is every PROGRESS_EVERY_S."""
    keys = list(context.partition_keys)
    done: dict[str, ClassOutcome] = {}
    failed: dict[str, str] = {}
    start = last = time.perf_counter()
    for at, key in enumerate(keys, 1):
        lines: list[str] = []
        try:
            done[key] = work(key, context.log.info if len(keys) == 1 else lines.append)
            if lines:
                done[key].metadata["log"] = dg.MetadataValue.text("\n".join(lines))
        except Exception as exc:  # noqa: BLE001 - reported with its class, the rest go on
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}"
            context.log.error(f"{asset} [{key}]: {reason}")
            failed[key] = reason
        if len(keys) > 1 and (time.perf_counter() - last >= PROGRESS_EVERY_S or at == len(keys)):
            last = time.perf_counter()
            context.log.info(
                f"{asset}: {at:,} of {len(keys):,} classes in {last - start:.1f}s"
                + (f", {len(failed)} failed" if failed else "")
            )
    worker = {WORKER_METADATA: worker_name()}
    if failed:
        for key, outcome in done.items():
            yield dg.AssetMaterialization(
                asset_key=asset, partition=key, metadata={**outcome.metadata, **worker}
            )
        raise ClassesFailed(
            f"{asset} failed for {len(failed)} of {len(keys)} class(es): "
            + "; ".join(f"{key}: {reason}" for key, reason in failed.items())
        )
    _attach_class_metadata(
        context, asset, {key: {**o.metadata, **worker} for key, o in done.items()}
    )
    yield dg.MaterializeResult(
        asset_key=asset,
        metadata={"classes_in_run": len(keys), "seconds": round(time.perf_counter() - start, 3)},
    )
    if check is None:
        return
    targets = _latest_materializations(
        context, asset, [k for k, o in done.items() if o.problems is not None]
    )
    for key, outcome in done.items():
        if outcome.problems is None:
            continue
        yield dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(asset),
            check_name=check,
            passed=not outcome.problems,
            partition=key,
            blocking=True,
            target_materialization_data=targets.get(key),
            metadata={**outcome.check_metadata, "problems": "; ".join(outcome.problems) or "none"},
        )


def _attach_class_metadata(
    context: dg.AssetExecutionContext, asset: str, metadata: dict[str, dict[str, Any]]
) -> None:
    """What `context.add_asset_metadata(m, partition_key=key)` does for every class, at once.

    Dagster's own call checks that `key` is in the run's range by listing every key of the
    dynamic partitions definition from the instance, one query per call, and copies all the
    metadata gathered so far: quadratic in the classes of a run (measured on 300 classes: 107
    of 552 s in those checks; 1,000 classes read a million keys). The keys here are the
    run's own range, checked once against it; the accumulator is Dagster's private one
    (1.13, pinned below 1.14 in pyproject.toml), set the way `add_asset_metadata` sets it."""
    targeted = set(context.partition_keys)
    stray = sorted(set(metadata) - targeted)
    if stray:
        raise dg.DagsterInvariantViolationError(
            f"metadata for classes outside the run's range: {', '.join(stray[:5])}"
        )
    step = context.op_execution_context._step_execution_context  # noqa: SLF001
    gathered = dict(step._metadata_accumulator.per_output_metadata)  # noqa: SLF001
    asset_key = dg.AssetKey(asset)
    for key, values in metadata.items():
        handle = AssetMetadataHandle(asset_key=asset_key, partition_key=key)
        gathered[handle] = {**gathered.get(handle, {}), **values}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=gathered)  # noqa: SLF001


def _latest_materializations(
    context: dg.AssetExecutionContext, asset: str, keys: list[str]
) -> dict[str, _Target]:
    """Each class's newest materialization of `asset` (the one this step just recorded):
    from what `dedup run`'s event storage kept of the batch it stored
    (`BatchedSqliteEventLogStorage.stored_materialization`), else from the database (a
    query and a deserialized record per class: 0.37 s of a 1,000-class run)."""
    out: dict[str, _Target] = {}
    storage = context.instance.event_log_storage
    kept = getattr(storage, "stored_materialization", None)
    if kept is not None:
        name = dg.AssetKey(asset).to_string()
        for key in keys:
            found = kept(context.run.run_id, name, key)
            if found is not None:
                out[key] = _Target(
                    storage_id=found[0], run_id=context.run.run_id, timestamp=found[1]
                )
    missing = [k for k in keys if k not in out]
    for at in range(0, len(missing), FETCH_CHUNK):
        chunk = missing[at : at + FETCH_CHUNK]
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=chunk),
            limit=len(chunk),
        ).records
        for record in records:  # newest first: the first of a partition is its latest
            out.setdefault(
                record.partition_key,
                _Target(
                    storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
                ),
            )
    return out
