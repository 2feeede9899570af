"""Assets: the kurtosis regression report per threshold, and the summary across thresholds."""

import json

import dagster as dg

from dedup_assets.assets.catalog import image_catalog
from dedup_assets.assets.keep_lists import class_keep_list
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.core.artifacts import (
    catalog_class_keys,
    read_class_keep_lists,
    read_scores,
)
from dedup_assets.core.atomic_io import atomic_dir, write_text
from dedup_assets.core.kurtosis_report import build_report, summary_markdown
from dedup_assets.partitions import by_threshold, threshold_partitions
from dedup_assets.ui import md_image
from resources import DedupSettings, DedupStorage


def method_label(settings: DedupSettings) -> str:
    return (
        f"similarity space `{settings.similarity_space}`, keep policy `{settings.keep_policy}`, "
        f"{settings.n_components} components, bin rule `{settings.bin_rule}`"
    )


@dg.asset(
    group_name="reports",
    kinds={"scipy", "matplotlib"},
    partitions_def=threshold_partitions,
    deps=[
        image_catalog,
        dg.AssetDep(class_keep_list, partition_mapping=by_threshold),
        dg.AssetDep(spline_fits, partition_mapping=dg.AllPartitionMapping()),
    ],
    description="Excess kurtosis of PC1-3 per class before and after removal, Theil-Sen "
    "lines of after on before (the paper's Tables 2-3 and figures 1-3), and the entropy of "
    "the spline marginals before and after.",
)
def kurtosis_report(
    context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings
) -> dg.MaterializeResult:
    layout = storage.layout()
    threshold = context.partition_key
    class_keys = catalog_class_keys(layout)
    scores = read_scores(layout, class_keys)
    keep = read_class_keep_lists(layout, threshold, class_keys)
    report = build_report(
        threshold,
        scores,
        keep,
        bin_rule=settings.bin_rule,
        tolerance=settings.kurtosis_tolerance,
        method=method_label(settings),
    )
    with atomic_dir(layout.report_dir(threshold)) as tmp:
        (tmp / "report.md").write_text(report.markdown)
        for name, png in report.figures.items():
            (tmp / name).write_bytes(png)
        report.table.join(report.entropy, on="class").write_csv(tmp / "per_class.csv")
        (tmp / "summary.json").write_text(json.dumps(report.summary(threshold), indent=2))
    metadata = {
        "report": dg.MetadataValue.md(report.markdown.split("![")[0]),
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
        f"T={threshold}: Theil-Sen "
        + ", ".join(f"PC{c}: {r.equation()}" for c, r in enumerate(report.regressions, 1))
    )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name="reports",
    kinds={"markdown"},
    deps=[dg.AssetDep(kurtosis_report, partition_mapping=dg.AllPartitionMapping())],
    description="Tables 2 and 3 for this dataset across every threshold, beside the paper's.",
)
def dedup_summary(context: dg.AssetExecutionContext, storage: DedupStorage) -> dg.MaterializeResult:
    layout = storage.layout()
    summaries = []
    for threshold in threshold_partitions.get_partition_keys():
        path = layout.report_dir(threshold) / "summary.json"
        if path.exists():
            summaries.append(json.loads(path.read_text()))
        else:
            context.log.warning(f"no kurtosis report for T={threshold} yet")
    if not summaries:
        raise FileNotFoundError("no kurtosis report exists: materialize kurtosis_report first")
    text = summary_markdown(summaries)
    path = write_text(text, layout.root / "reports" / "summary.md")
    return dg.MaterializeResult(
        metadata={"summary": dg.MetadataValue.md(text), "path": dg.MetadataValue.path(str(path))}
    )
