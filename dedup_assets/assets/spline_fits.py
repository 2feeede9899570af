"""Asset: per-class PCA + product spline density fits (the paper's formula (2))."""

import time
from collections.abc import Callable

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.class_batch import ClassOutcome, class_asset, materialize_classes
from dedup_assets.assets.latents import class_latents
from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    class_name,
    read_latents,
    require_current,
    write_table,
)
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.density.class_density import (
    OUTLIER_QUANTILE,
    OUTLIER_SHARE,
    FitBasis,
    fit_with_scores,
    new_images_share_unlikely,
    reusable_fit,
    write_class_density,
)
from dedup_assets.core.density.pca import components_for_variance
from dedup_assets.core.quality import plots
from dedup_assets.core.quality.kurtosis_report import scores_summary
from dedup_assets.names import FULL_TAG
from dedup_assets.ui import image_metadata, md_table
from resources import DedupSettings, DedupStorage

REPORTED_COMPONENTS = 3
# Marginal plots per run: about 24 KB of SVG each in the event log; a user reads a few.
PLOTTED_CLASSES = 8


@class_asset(
    "spline_fits",
    group_name="density",
    kinds={"scipy", "numpy"},
    deps=[class_latents],
    description="Per class: principal components of the latents and a second-order "
    "B-spline density per leading component (grid origin, step, frequencies), with each "
    "image's log-density and leading component scores.",
)
def spline_fits(context: dg.AssetExecutionContext, storage: DedupStorage, settings: DedupSettings):
    layout = storage.layout()
    current = CurrentInputs.of(layout, settings)
    plotted: list[str] = []
    full = context.run.tags.get(FULL_TAG) == "1"  # every class refitted

    def one(key: str, log: Callable[[str], None]) -> ClassOutcome:
        outcome = _fit_class(
            log, layout, key, settings, current, draw=len(plotted) < PLOTTED_CLASSES, full=full
        )
        if not isinstance(outcome.metadata.get("marginal_densities", ""), str):
            plotted.append(key)
        return outcome

    yield from materialize_classes(context, "spline_fits", one)


def _fit_class(
    log: Callable[[str], None],
    layout: OutputLayout,
    key: str,
    settings: DedupSettings,
    current: CurrentInputs,
    *,
    draw: bool,
    full: bool = False,
) -> ClassOutcome:
    """One class's PCA and spline fit (the stored one kept while the class's images are
    close to those it was fitted on, `class_density.reusable_fit`; not with `full`), its
    per-image scores, and (with `draw`) its plot."""
    if key not in current.class_digests:
        log(f"{key}: no readable image, nothing to fit")
        return ClassOutcome({"images": 0, "note": "no readable image"})
    path = require_current(
        layout.latents(key),
        current.latents(key),
        f"latents of class {key}",
        "materialize class_latents for this class first",
    )
    table, latents = read_latents(path)
    start = time.perf_counter()
    now = FitBasis(
        current.model_digest,
        int(settings.n_components),
        str(settings.bin_rule),
        table["image_id"].to_numpy().astype(str),
    )
    kept = None if full else reusable_fit(layout.spline_fit(key), now)
    unlikely = None
    if kept is not None:
        scores = kept.model.scores(latents)
        log_density = kept.model.log_density_of_scores(scores)
        fitted = np.isin(now.image_ids, kept.basis.image_ids)
        unlikely = new_images_share_unlikely(log_density, fitted)
        if unlikely > OUTLIER_SHARE:  # new images the kept fit has no room for: refitted
            kept = None
    if kept is not None:
        model, basis, fit_words = kept.model, kept.basis, kept.describe(len(latents))
    else:
        model, scores = fit_with_scores(latents, settings.n_components, settings.bin_rule)
        log_density = model.log_density_of_scores(scores)
        basis, fit_words = now, f"fitted now on {len(latents):,} images"
        if unlikely is not None:
            fit_words += (
                f" ({unlikely:.0%} of the new images less likely under the stored fit than "
                f"{1 - OUTLIER_QUANTILE:.0%} of the images it was fitted on)"
            )
    seconds = time.perf_counter() - start
    provenance = current.fit(key)
    write_class_density(model, layout.spline_fit(key), provenance, basis)
    # Made from its columns: `select` and `with_columns` went through polars' query engine,
    # 0.4 ms a class on 2 busy cores (0.4 s of a 1,000-class run's fits).
    per_image = pl.DataFrame(
        [
            table["image_id"],
            table["path"],
            pl.Series("log_density", log_density.astype(np.float64)),
            *[
                pl.Series(
                    f"pc{c + 1}",
                    scores[:, c] if c < scores.shape[1] else np.full(len(table), np.nan),
                    dtype=pl.Float64,
                )
                for c in range(REPORTED_COMPONENTS)
            ],
        ]
    )
    k = model.n_components
    reported = np.column_stack(
        [per_image.get_column(f"pc{c + 1}").to_numpy() for c in range(REPORTED_COMPONENTS)]
    )
    write_table(
        per_image,
        layout.spline_scores(key),
        provenance,
        scores_summary(reported, k, str(settings.bin_rule)),
    )
    metadata: dict = {
        "images": len(latents),
        "fit": fit_words,
        "components": k,
        "bin_rule": str(settings.bin_rule),
        "fit_seconds": round(seconds, 3),
        "path": dg.MetadataValue.path(str(layout.spline_fit(key))),
    }
    if model.density is not None:
        ratio = model.pca.explained_ratio
        entropies = model.density.entropies()
        shown = min(REPORTED_COMPONENTS, k)
        metadata |= {
            "explained_variance": float(ratio.sum()),
            "components_for_90pct_variance": components_for_variance(model.pca, 0.9),
            "leading_components": dg.MetadataValue.md(
                md_table(
                    ["component", "explained variance", "grid step h", "cells", "entropy (nats)"],
                    [
                        (
                            f"PC{c + 1}",
                            float(ratio[c]),
                            model.density.marginals[c].step,
                            len(model.density.marginals[c].freqs),
                            float(entropies[c]),
                        )
                        for c in range(shown)
                    ],
                )
            ),
        }
        metadata["marginal_densities"] = (
            image_metadata(
                plots.marginal_densities(
                    model.density.marginals[:shown],
                    [scores[:, c] for c in range(shown)],
                    f"{class_name(layout, key)}: spline marginals of the leading components",
                ),
                "marginal densities",
            )
            if draw
            else f"not drawn: a run draws the first {PLOTTED_CLASSES} classes it fits; "
            "materialize this class alone to draw it"
        )
    if kept is not None:
        log(f"{key}: spline fit {fit_words} ({seconds:.2f}s)")
    else:
        log(f"{key}: PCA to {k} components and spline fits in {seconds:.2f}s")
    return ClassOutcome(metadata)
