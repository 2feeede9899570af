"""Assets: the kurtosis report per threshold (which carries the kurtosis gate) and the
summary across thresholds."""

import json
from collections.abc import Mapping
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    class_labels,
    digest,
    fit_components,
    is_current,
    labelled_by_partition,
    read_classes,
    read_keep_list,
    read_latent_ids,
    read_latents,
    read_scores,
    read_table_metadata,
    threshold_verdict,
    write_table,
)
from dedup_assets.core.data.atomic_io import atomic_dir, write_text
from dedup_assets.core.data.membership import among
from dedup_assets.core.decision.calibration import budget_summary_markdown
from dedup_assets.core.quality.kurtosis_report import (
    REFIT_SCHEMA,
    REFIT_VERSION,
    build_report,
    refit_kurtosis_by_threshold,
    stored_refit,
    stored_scores_summary,
    summary_markdown,
)
from dedup_assets.core.quality.run_summary import kurtosis_words
from dedup_assets.core.quality.statistics import (
    CHANCE_DRAWS,
    CHANCE_QUANTILE,
    MIN_IMAGES_MEASURED,
)
from dedup_assets.core.quality.summary_inputs import record_summary_inputs
from dedup_assets.names import THRESHOLDS_AT_ONCE_TAG
from dedup_assets.ui import md_image, md_table
from resources import DedupSettings, DedupStorage, ImageSource

GATE = "kurtosis_reduction"


def gate_check_result(summary: dict, table: pl.DataFrame) -> dg.AssetCheckResult:
    """The kurtosis gate as a Dagster check, from the numbers the report computed once.

    Only a blocking verdict (ERROR) fails the check. A WARN (kurtosis not reduced, within
    what removing as many images at random reaches or within the tolerance) passes, its
    verdict said in the description and the metadata: a failed check of severity WARN is
    drawn "Failed" in the UI, and this verdict is a note, not a failure."""
    gate = summary["gate"]
    words = kurtosis_words(summary)
    blocks = gate["severity"] == "error"
    quantile = gate.get("random_removal_quantile", CHANCE_QUANTILE)
    metadata: dict = {
        "verdict": f"{gate['severity'].upper()}: {words}",
        "tolerance": gate["tolerance"],
        "outcome": "; ".join(gate["reasons"]),
        "random_removal_quantile": quantile,
        "classes_measured": summary["classes_measured"],
        "classes_not_measured": ", ".join(summary["classes_not_measured"]) or "none",
    }
    for r, chance in zip(summary["regressions"], gate["random_removal_excess"], strict=True):
        c = r["component"]
        metadata[f"pc{c}_slope"] = r["slope"]
        metadata[f"pc{c}_intercept"] = r["intercept"]
        metadata[f"pc{c}_excess_at_median"] = r["excess_at_median"]
        metadata[f"pc{c}_classes_reduced"] = r["fraction_reduced"]
        metadata[f"pc{c}_random_removal_excess"] = chance
    metadata["per_class"] = dg.MetadataValue.md(
        md_table(
            ["class", "kept / images", "measured", "PC1 change", "PC2 change", "PC3 change"],
            [
                (
                    row["class"],
                    f"{row['n_after']} / {row['n_before']}",
                    "yes" if row["measured"] else row["note"],
                    *(row[f"k{c}_after"] - row[f"k{c}_before"] for c in (1, 2, 3)),
                )
                for row in table.iter_rows(named=True)
            ],
        )
    )
    return dg.AssetCheckResult(
        check_name=GATE,
        passed=not blocks,
        severity=dg.AssetCheckSeverity.ERROR,  # read by Dagster only when the check fails
        description=words,
        metadata=metadata,
    )


def build_report_assets(
    thresholds_def: dg.StaticPartitionsDefinition, keep_list: dg.AssetsDefinition
) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition]:
    """kurtosis_report (per threshold, with the blocking kurtosis gate) and dedup_summary."""

    @dg.asset(
        group_name="reports",
        kinds={"scipy", "svg"},
        partitions_def=thresholds_def,
        deps=[keep_list],
        check_specs=[
            dg.AssetCheckSpec(
                GATE,
                asset="kurtosis_report",
                blocking=True,
                partitions_def=thresholds_def,
                description="Removal must not make the classes' distributions more peaked. "
                "Fails (ERROR, blocks the clean copy) when the Theil-Sen line of kurtosis-after "
                "on kurtosis-before, at the median, lies above it by more than the tolerance "
                "and by more than removing the same number of images per class at random does "
                f"(its {CHANCE_QUANTILE:.1%} quantile over {CHANCE_DRAWS:,} draws, metadata "
                "`pcN_random_removal_excess`). Passes otherwise: reduced (PASS), or not "
                "reduced within that or the tolerance (WARN, a note: the verdict says which). "
                f"Classes under {MIN_IMAGES_MEASURED} images are not measured.",
            )
        ],
        description="Excess kurtosis of PC1-3 per class before and after removal, Theil-Sen "
        "lines of after on before (the paper's Tables 2-3 and figures 1-3), the entropy of "
        "the spline marginals before and after, and the kurtosis gate.",
    )
    def kurtosis_report(
        context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        threshold = context.partition_key
        current = storage.current_inputs(settings)  # the overrides in each class provenance
        class_keys = sorted(current.class_digests)
        current.require_every_class(
            layout.spline_scores, current.fit, "spline fit scores", "spline_fits"
        )
        provenance = current.keep_list(threshold)
        current.require_keep_list(layout, threshold)
        classes = read_classes(layout)
        names = class_labels(layout)  # one per class partition: a split's classes apart
        keep = labelled_by_partition(read_keep_list(layout.keep_list(threshold)))
        components, entropy_before = _stored_summaries(layout, class_keys, names, settings)
        # Each report refits the other thresholds' classes too while it has their latents
        # (the next reports find them cached), unless those reports run at the same time.
        at_once = context.run.tags.get(THRESHOLDS_AT_ONCE_TAG) == "1"
        thresholds = [threshold] if at_once else thresholds_def.get_partition_keys()
        refit = _refits(layout, current, threshold, thresholds, class_keys, names, keep)
        report = build_report(
            threshold,
            read_scores(layout, class_keys),
            keep,
            bin_rule=settings.bin_rule,
            tolerance=settings.kurtosis_tolerance,
            method=settings.label(),
            empty_classes=[names[k] for k in classes.filter(pl.col("images") == 0)["class_key"]],
            components=components,
            refit=refit,
            entropy_before=entropy_before,
        )
        summary = report.summary(threshold) | {"keep_list": digest(provenance)}
        with atomic_dir(layout.report_dir(threshold)) as tmp:
            (tmp / "report.md").write_text(report.markdown)
            for name, figure in report.figures.items():
                (tmp / name).write_bytes(figure)
            report.table.join(report.entropy, on="class").write_csv(tmp / "per_class.csv")
            (tmp / layout.report_summary(threshold).name).write_text(json.dumps(summary, indent=2))
        metadata = {
            "report": dg.MetadataValue.md(report.markdown.split("![")[0]),
            "gate": report.gate.severity.upper(),
            "verdict": kurtosis_words(summary),
            "path": dg.MetadataValue.path(str(layout.report_dir(threshold) / "report.md")),
        }
        for c, reg in enumerate(report.regressions, start=1):
            metadata[f"pc{c}_slope"] = reg.slope
            metadata[f"pc{c}_intercept"] = reg.intercept
            metadata[f"pc{c}_classes_reduced"] = reg.fraction_reduced
            metadata[f"pc{c}_figure"] = dg.MetadataValue.md(
                md_image(report.figures[f"kurtosis_pc{c}.svg"])
            )
            metadata[f"pc{c}_densities"] = dg.MetadataValue.md(
                md_image(report.figures[f"density_pc{c}.svg"])
            )
        context.log.info(
            f"T={threshold}: gate {report.gate.severity.upper()}; Theil-Sen "
            + ", ".join(f"PC{c}: {r.equation()}" for c, r in enumerate(report.regressions, 1))
        )
        return dg.MaterializeResult(
            metadata=metadata, check_results=[gate_check_result(summary, report.table)]
        )

    @dg.asset(
        group_name="reports",
        kinds={"markdown"},
        deps=[dg.AssetDep(kurtosis_report, partition_mapping=dg.AllPartitionMapping())],
        description="Tables 2 and 3 for this dataset across every threshold, beside the paper's.",
    )
    def dedup_summary(
        context: dg.AssetExecutionContext,
        storage: DedupStorage,
        settings: DedupSettings,
        image_source: ImageSource,
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        current = storage.current_inputs(settings)
        thresholds = thresholds_def.get_partition_keys()
        verdicts = [threshold_verdict(layout, t, digest(current.keep_list(t))) for t in thresholds]
        summaries, held = [], []
        for verdict in verdicts:
            if verdict.report is None and verdict.problems:  # its gate stopped the report
                held.append(
                    f"- T={verdict.threshold}: no report; its keep list fails its integrity "
                    f"check ({'; '.join(verdict.problems)}), so its clean copy is held back"
                )
                continue
            if verdict.report_summary is None:
                raise FileNotFoundError(
                    f"no kurtosis report for T={verdict.threshold}: materialize kurtosis_report "
                    "first"
                )
            if verdict.report is None:
                raise RuntimeError(
                    f"the kurtosis report for T={verdict.threshold} is stale (made from an "
                    "earlier keep list): materialize kurtosis_report for it first"
                )
            summaries.append(verdict.report)
            if verdict.gate == "error":  # reported, and its clean copy held back
                held.append(
                    f"- T={verdict.threshold}: its kurtosis gate failed (see "
                    f"{layout.report_dir(verdict.threshold) / 'report.md'}), so its clean "
                    "copy is held back"
                )
        keep_summaries = [v.keep_summary for v in verdicts if v.keep_summary is not None]
        budgets = budget_summary_markdown(keep_summaries)
        text = summary_markdown(summaries) + (f"\n{budgets}" if budgets else "")
        if held:
            text += "\n## Thresholds held back\n\n" + "\n".join(held) + "\n"
        path = write_text(text, layout.summary)
        made_from = storage.summary_inputs(current, thresholds, image_source.ground_truth_path())
        record_summary_inputs(layout, "dedup_summary", made_from)
        context.log.info(f"summary of {len(summaries)} thresholds: {path}")
        return dg.MaterializeResult(
            metadata={
                "summary": dg.MetadataValue.md(text),
                "path": dg.MetadataValue.path(str(path)),
            }
        )

    return kurtosis_report, dedup_summary


class _LatentsByClass(Mapping):
    """Class name -> latents, read from disk when asked for: one class in memory at a time
    while the report refits each class's axes (a million latents would be 4 GB)."""

    def __init__(self, layout, keys_by_name: dict[str, str]):
        self.layout, self.keys_by_name = layout, keys_by_name

    def __getitem__(self, name: str) -> np.ndarray:
        return read_latents(self.layout.latents(self.keys_by_name[name]))[1]

    def __iter__(self):
        return iter(self.keys_by_name)

    def __len__(self) -> int:
        return len(self.keys_by_name)


class _KeptByClass(Mapping):
    """Class name -> which rows of its latents a keep list keeps, worked out when asked for,
    after the refit has read the class's latents (`_LatentsByClass`): their image ids are
    then those of that read while the process keeps it (`read_latent_ids`; classes under a
    quarter of its cache), not a second reading of the file (0.7 s of a 1,000-class report)."""

    def __init__(self, layout, keys_by_name: dict[str, str], keep_of):
        self.layout, self.keys_by_name, self.keep_of = layout, keys_by_name, keep_of

    def __getitem__(self, name: str) -> np.ndarray:
        key = self.keys_by_name[name]
        ids = read_latent_ids(self.layout.latents(key))["image_id"]
        return among(ids, self.keep_of(key).filter(pl.col("kept"))["image_id"])

    def __contains__(self, name: object) -> bool:
        return name in self.keys_by_name

    def __iter__(self):
        return iter(self.keys_by_name)

    def __len__(self) -> int:
        return len(self.keys_by_name)


# The refitted kurtosis of every class at every threshold, computed by the first report
# that needs it from one reading of each class's latents and read by the others: the keep
# decisions of every threshold are known once the classes are decided
# (`keep_lists/by_class/<T>`), and each report read every class's 1,024-d latents again
# (about 10 us a row: 0.2 s for a class of 20,000, twice its refit's 0.1 s). Rows are
# keyed by what each was computed from (the class's keep decisions at that threshold), so
# after new images in one class only that class is read and refitted again.
REFIT_CACHE = ".refit_kurtosis.parquet"


def _refit_path(layout) -> Path:
    return layout.reports_dir / REFIT_CACHE


def _refit_key(current: CurrentInputs, key: str, threshold: str) -> str:
    """What one class's refit at one threshold is computed from: the class's keep
    decisions (whose provenance names its latents and fit) and the refit's own version."""
    return digest({"keep": digest(current.keep(key, threshold)), "refit": REFIT_VERSION})


def _stored_summaries(
    layout, class_keys: list[str], names: dict[str, str], settings: DedupSettings
) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Each class's component count, and its before-removal entropies where its current
    scores table stores them (`scores_summary`, read with the provenance just checked);
    the count from the fit itself for a table written without them."""
    components, entropy = {}, {}
    for key in class_keys:
        stored = stored_scores_summary(
            read_table_metadata(layout.spline_scores(key)), str(settings.bin_rule)
        )
        if stored is None:
            components[names[key]] = fit_components(layout, key)
        else:
            components[names[key]], entropy[names[key]] = stored
    return components, entropy


def _refits(
    layout,
    current: CurrentInputs,
    threshold: str,
    thresholds: list[str],
    class_keys: list[str],
    names: dict[str, str],
    keep: pl.DataFrame,
) -> pl.DataFrame:
    """`refit_kurtosis` of this threshold's keep list: each class's row as its current keep
    list at the threshold stores it (`class_keep_lists` computes it while deciding), else
    from the cache when a report computed it from the same keep decisions, else computed
    here, together with the missing rows of every other threshold whose keep decisions for
    the class are current (one reading of the class's latents for all of them)."""
    stored, missing = [], []
    for k in class_keys:
        at = layout.class_keep_list(threshold, k)
        values = (
            stored_refit(read_table_metadata(at))
            if is_current(at, current.keep(k, threshold))
            else None
        )
        if values is None:
            missing.append(k)
        else:
            stored.append({"class": names[k]} | {f"r{c + 1}_after": values[c] for c in range(3)})
    found = pl.DataFrame(stored, schema=REFIT_SCHEMA)
    if not missing:
        return found.sort("class")
    # Keep lists written before their classes stored a refit (or of another version).
    class_keys = missing
    path = _refit_path(layout)
    wanted = {(t, k): _refit_key(current, k, t) for t in thresholds for k in class_keys}
    try:
        cached = pl.read_parquet(path, glob=False).filter(
            pl.col("key").is_in(list(wanted.values()))
        )
    except (OSError, pl.exceptions.PolarsError):
        cached = pl.DataFrame(schema={**REFIT_SCHEMA, "threshold": pl.String, "key": pl.String})
    done = set(cached["key"].to_list())
    todo = {
        t: [
            k
            for k in class_keys
            if wanted[(t, k)] not in done
            and (t == threshold or is_current(layout.class_keep_list(t, k), current.keep(k, t)))
        ]
        for t in thresholds
    }
    if todo[threshold]:
        by_class = keep.partition_by("class", as_dict=True)
        empty = keep.clear()
        read = sorted({k for keys in todo.values() for k in keys})
        kept = {}
        for t, keys in todo.items():
            if not keys:
                continue
            keep_of = (
                (lambda k: by_class.get((names[k],), empty))
                if t == threshold
                else (lambda k, t=t: read_keep_list(layout.class_keep_list(t, k)))
            )
            kept[t] = _KeptByClass(layout, {names[k]: k for k in keys}, keep_of)
        latents = _LatentsByClass(layout, {names[k]: k for k in read})
        computed = []
        for t, table in refit_kurtosis_by_threshold(latents, kept).items():
            key_of = {names[k]: wanted[(t, k)] for k in todo[t]}
            computed.append(
                table.with_columns(
                    pl.lit(t).alias("threshold"),
                    pl.col("class").replace_strict(key_of, return_dtype=pl.String).alias("key"),
                )
            )
        cached = pl.concat([cached, *computed], how="diagonal_relaxed")
        write_table(cached, path)
    mine = {wanted[(threshold, k)] for k in class_keys}
    computed_here = cached.filter(pl.col("key").is_in(list(mine))).select(list(REFIT_SCHEMA))
    return pl.concat([found, computed_here]).sort("class")
