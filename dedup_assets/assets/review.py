"""Asset: the review page (`review/index.html`), every removed image beside the kept image it
duplicates and the cross-class pairs, with corrections downloaded as `overrides.csv`. The
page is `core.quality.review_page`."""

import dagster as dg

from dedup_assets.core.data.artifacts import require_current
from dedup_assets.core.data.image_folder import IMAGE_SIZE
from dedup_assets.core.quality.review_page import write_review_page
from dedup_assets.core.quality.summary_inputs import record_summary_inputs
from dedup_assets.ui import md_table
from resources import DedupSettings, DedupStorage, ImageSource


def build_review_asset(
    thresholds_def: dg.StaticPartitionsDefinition,
    keep_list: dg.AssetsDefinition,
    cross_class_duplicates: dg.AssetsDefinition,
) -> dg.AssetsDefinition:
    """review_page: one page over every configured threshold, made once their keep lists
    and cross-class pairs are (both are read only when current)."""
    thresholds = list(thresholds_def.get_partition_keys())

    @dg.asset(
        group_name="reports",
        kinds={"html"},
        deps=[
            dg.AssetDep(keep_list, partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep(cross_class_duplicates, partition_mapping=dg.AllPartitionMapping()),
        ],
        description="`review/index.html`, opened from the file system (no server, no network): "
        "per threshold and class, every removed image beside the kept image it duplicates "
        "with similarity, margin over its threshold and kind (exact/near), borderline first, "
        "paged; cross-class pairs apart; thumbnails cached in `review/thumbs` (at most 20,000, for "
        "the first pages of every list; later images, and those whose source file is already "
        "the 64x64 pixels the decision saw, are shown from their source files). Marks (keep, "
        "remove, not a duplicate) download as `overrides.csv` for the next run. With split "
        "folders, a train/test leakage view lists `leakage.csv` (read as it stands: `dedup "
        "run` makes it before, and a dependency would let its blocking checks hold the page "
        "back).",
    )
    def review_page(
        context: dg.AssetExecutionContext,
        storage: DedupStorage,
        settings: DedupSettings,
        image_source: ImageSource,
    ) -> dg.MaterializeResult:
        layout = storage.layout()
        overrides = storage.read_overrides()  # shown on the page, among the user's marks
        current = storage.current_inputs(settings, overrides)  # their digests per class
        for t in thresholds:
            current.require_keep_list(layout, t)
            require_current(
                layout.cross_class(t),
                current.cross_class(t),
                f"cross-class pairs T={t}",
                "materialize cross_class_duplicates for this threshold first",
            )
        page = write_review_page(
            layout, thresholds, source_root=image_source.resolve_root(), overrides=overrides
        )
        made_from = storage.summary_inputs(current, thresholds, image_source.ground_truth_path())
        record_summary_inputs(layout, "review_page", made_from)
        context.log.info(
            f"review page: {page.index} ({sum(page.pairs.values()):,} removed images over "
            f"{len(thresholds)} thresholds; {page.thumbnails_written:,} thumbnails made, "
            f"{page.thumbnails_reused:,} reused"
            + (
                f", {page.thumbnails_left_out:,} left out (shown from the source files)"
                if page.thumbnails_left_out
                else ""
            )
            + (
                f"; {page.shown_as_source:,} images shown from their own source files "
                f"(already the {IMAGE_SIZE}x{IMAGE_SIZE} pixels the decision saw)"
                if page.shown_as_source
                else ""
            )
            + f"; {page.seconds:.1f}s)"
        )
        return dg.MaterializeResult(
            metadata={
                "review_page": dg.MetadataValue.url(page.index.resolve().as_uri()),
                "path": dg.MetadataValue.path(str(page.index)),
                "removed_listed": sum(page.pairs.values()),
                "cross_class_pairs_listed": sum(page.cross_pairs.values()),
                "thumbnails_written": page.thumbnails_written,
                "thumbnails_reused": page.thumbnails_reused,
                "thumbnails_left_out": page.thumbnails_left_out,
                "shown_as_source": page.shown_as_source,
                "page_files": page.page_files,
                "leakage_pairs_listed": page.leak_pairs if page.leak_pairs is not None else "none",
                "seconds": round(page.seconds, 2),
                "per_threshold": dg.MetadataValue.md(
                    md_table(
                        ["T", "removed listed", "cross-class pairs"],
                        [(t, page.pairs.get(t, 0), page.cross_pairs.get(t, 0)) for t in thresholds],
                    )
                ),
            }
        )

    return review_page
