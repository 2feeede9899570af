"""Assets: the kurtosis report per threshold (which carries the kurtosis gate) and the
summary across thresholds."""

import json
from collections.abc import Mapping

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    digest,
    read_classes,
    read_keep_list,
    read_latent_ids,
    read_latents,
    read_scores,
    threshold_verdict,
)
from dedup_assets.core.data.atomic_io import atomic_dir, write_text
from dedup_assets.core.decision.calibration import budget_summary_markdown
from dedup_assets.core.quality.kurtosis_report import build_report, refit_kurtosis, summary_markdown
from dedup_assets.ui import md_image, md_table
from resources import DedupSettings, DedupStorage

GATE = "kurtosis_reduction"


def gate_check_result(summary: dict, table: pl.DataFrame) -> dg.AssetCheckResult:
    """The kurtosis gate as a Dagster check, from the numbers the report computed once."""
    gate = summary["gate"]
    metadata: dict = {
        "tolerance": gate["tolerance"],
        "outcome": "; ".join(gate["reasons"]),
        "classes_measured": summary["classes_measured"],
        "classes_not_measured": ", ".join(summary["classes_not_measured"]) or "none",
    }
    for r, chance in zip(summary["regressions"], gate["random_removal_excess_95"], strict=True):
        c = r["component"]
        metadata[f"pc{c}_slope"] = r["slope"]
        metadata[f"pc{c}_intercept"] = r["intercept"]
        metadata[f"pc{c}_excess_at_median"] = r["excess_at_median"]
        metadata[f"pc{c}_classes_reduced"] = r["fraction_reduced"]
        metadata[f"pc{c}_random_removal_excess_95"] = chance
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
    severity = (
        dg.AssetCheckSeverity.ERROR if gate["severity"] == "error" else dg.AssetCheckSeverity.WARN
    )
    return dg.AssetCheckResult(
        check_name=GATE, passed=gate["severity"] == "pass", severity=severity, metadata=metadata
    )


def build_report_assets(
    thresholds_def: dg.StaticPartitionsDefinition, keep_list: dg.AssetsDefinition
) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition]:
    """kurtosis_report (per threshold, with the blocking kurtosis gate) and dedup_summary."""

    @dg.asset(
        group_name="reports",
        kinds={"scipy", "matplotlib"},
        partitions_def=thresholds_def,
        deps=[keep_list],
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[
            dg.AssetCheckSpec(
                GATE,
                asset="kurtosis_report",
                blocking=True,
                partitions_def=thresholds_def,
                description="Removal must not make the classes' distributions more peaked: "
                "ERROR when the Theil-Sen line of kurtosis-after on kurtosis-before, at the "
                "median, lies above it by more than the tolerance and by more than removing "
                "the same number of images per class at random does (98.3% quantile); WARN when "
                "merely not reduced. Classes under 12 images are not measured.",
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
        current = CurrentInputs.of(layout, settings)
        class_keys = sorted(current.class_digests)
        current.require_every_class(
            layout.spline_scores, current.fit, "spline fit scores", "spline_fits"
        )
        provenance = current.keep_list(threshold)
        current.require_keep_list(layout, threshold)
        classes = read_classes(layout)
        names = dict(zip(classes["class_key"], classes["class"], strict=True))
        keep = read_keep_list(layout.keep_list(threshold))
        kept_ids = set(keep.filter(pl.col("kept"))["image_id"].to_list())
        latents, kept, components = _LatentsByClass(layout), {}, {}
        for key in class_keys:
            table = read_latent_ids(layout.latents(key))
            latents.keys_by_name[names[key]] = key
            kept[names[key]] = table["image_id"].is_in(list(kept_ids)).to_numpy()
            with np.load(layout.spline_fit(key)) as fit:
                components[names[key]] = int(fit["pca_variances"].shape[0])
        report = build_report(
            threshold,
            read_scores(layout, class_keys),
            keep,
            bin_rule=settings.bin_rule,
            tolerance=settings.kurtosis_tolerance,
            method=settings.label(),
            empty_classes=classes.filter(pl.col("images") == 0)["class"].to_list(),
            components=components,
            refit=refit_kurtosis(latents, kept),
        )
        summary = report.summary(threshold) | {"keep_list": digest(provenance)}
        with atomic_dir(layout.report_dir(threshold)) as tmp:
            (tmp / "report.md").write_text(report.markdown)
            for name, png in report.figures.items():
                (tmp / name).write_bytes(png)
            report.table.join(report.entropy, on="class").write_csv(tmp / "per_class.csv")
            (tmp / layout.report_summary(threshold).name).write_text(json.dumps(summary, indent=2))
        metadata = {
            "report": dg.MetadataValue.md(report.markdown.split("![")[0]),
            "gate": report.gate.severity.upper(),
            "path": dg.MetadataValue.path(str(layout.report_dir(threshold) / "report.md")),
        }
        for c, reg in enumerate(report.regressions, start=1):
            metadata[f"pc{c}_slope"] = reg.slope
            metadata[f"pc{c}_intercept"] = reg.intercept
            metadata[f"pc{c}_classes_reduced"] = reg.fraction_reduced
            metadata[f"pc{c}_figure"] = dg.MetadataValue.md(
                md_image(report.figures[f"kurtosis_pc{c}.png"])
            )
            metadata[f"pc{c}_densities"] = dg.MetadataValue.md(
                md_image(report.figures[f"density_pc{c}.png"])
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
        automation_condition=dg.AutomationCondition.eager(),
        description="Tables 2 and 3 for this dataset across every threshold, beside the paper's.",
    )
    def dedup_summary(
        context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        current = CurrentInputs.of(layout, settings)
        verdicts = [
            threshold_verdict(layout, t, digest(current.keep_list(t)))
            for t in thresholds_def.get_partition_keys()
        ]
        summaries = []
        for verdict in verdicts:
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
        keep_summaries = [v.keep_summary for v in verdicts if v.keep_summary is not None]
        budgets = budget_summary_markdown(keep_summaries)
        text = summary_markdown(summaries) + (f"\n{budgets}" if budgets else "")
        path = write_text(text, layout.summary)
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

    def __init__(self, layout):
        self.layout, self.keys_by_name = layout, {}

    def __getitem__(self, name: str) -> np.ndarray:
        return read_latents(self.layout.latents(self.keys_by_name[name]))[1]

    def __iter__(self):
        return iter(self.keys_by_name)

    def __len__(self) -> int:
        return len(self.keys_by_name)
