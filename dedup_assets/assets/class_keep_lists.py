"""Asset: every class's keep decisions at every threshold (`core.decision.class_keep_lists`)."""

from collections.abc import Callable, Sequence

import dagster as dg

from dedup_assets.assets.class_batch import ClassOutcome, class_asset, materialize_classes
from dedup_assets.assets.reference_pool import reference_pool
from dedup_assets.assets.spline_fits import spline_fits
from dedup_assets.core.data.artifacts import (
    class_summary,
    hold_class_images,
    read_latent_ids,
    read_latents,
    write_table,
)
from dedup_assets.core.data.thresholds import budget_of
from dedup_assets.core.decision.calibration import store_small_mirrors
from dedup_assets.core.decision.class_keep_lists import class_keep_lists as decide_class
from dedup_assets.core.decision.reference_pool import read_reference_pool
from dedup_assets.core.model.autoencoder import (
    GROUP_IMAGES,
    SMALL_BATCH,
    encode_images,
    load_state,
)
from dedup_assets.core.quality.kurtosis_report import refit_metadata, refit_row
from dedup_assets.names import FULL_TAG
from dedup_assets.ui import md_table
from resources import ComputeDevice, DedupSettings, DedupStorage, ImageSource


def build_class_keep_lists_asset(thresholds: Sequence[str]) -> dg.AssetsDefinition:
    """class_keep_lists: per class, the keep list at every configured threshold."""
    thresholds = list(thresholds)

    @class_asset(
        "class_keep_lists",
        group_name="deduplication",
        kinds={"numpy", "parquet"},
        deps=[spline_fits, reference_pool],
        description="Per class, at every threshold T: pixel-identical copies removed first "
        "(similarity 1.0), then an image is removed when it is more similar than T to an "
        "image already kept (cosine in the configured space, blocked join); the user's "
        "overrides.csv (keep, remove, not_duplicate) honoured, its rows decided_by override.",
    )
    def class_keep_lists(
        context: dg.AssetExecutionContext,
        storage: DedupStorage,
        settings: DedupSettings,
        compute: ComputeDevice,
        image_source: ImageSource,
    ):
        layout = storage.layout()
        # The user's corrections (overrides.csv), checked against the catalog and the
        # source (a path that leaves it through a link is refused): read once a run.
        overrides = storage.read_overrides(image_source.resolve_root())
        current = storage.current_inputs(settings, overrides)
        run_id = context.run.run_id
        shared: dict = {}  # the model and the reference pool, read once a run if a budget needs them

        def model_and_pool() -> dict:
            if not shared and any(budget_of(t) is not None for t in thresholds):
                shared.update(
                    model=load_state(layout.model), pool=read_reference_pool(layout, current)
                )
            return shared

        hold_class_images(
            layout, list(context.partition_keys)
        )  # a range's small catalogs, one read
        grouped = _small_mirrors_together(
            layout,
            [k for k in context.partition_keys if k in current.class_digests],
            current,
            compute,
            model_and_pool,
        )
        if grouped:
            context.log.info(f"mirrors of {grouped:,} small classes encoded together")

        def one(key: str, log: Callable[[str], None]) -> ClassOutcome:
            if key not in current.class_digests:
                log(f"{key}: no readable image, nothing to decide")
                return ClassOutcome({"images": 0, "note": "no readable image"})
            tables = decide_class(
                layout,
                key,
                thresholds,
                settings,
                current,
                run_id=run_id,
                stable=context.run.tags.get(FULL_TAG) != "1",
                log=log,
                device=compute.torch_device(),
                amp_dtype=compute.amp_dtype(),
                overrides=overrides.for_class(key) if overrides is not None else None,
                **model_and_pool(),
            )
            refits = _refits(layout, key, tables)
            for t, keep in tables.items():
                write_table(
                    keep,
                    layout.class_keep_list(t, key),
                    current.keep(key, t),
                    refit_metadata(refits[t]) if t in refits else None,
                )
            return ClassOutcome(_class_metadata(tables, run_id, settings))

        yield from materialize_classes(context, "class_keep_lists", one)

    return class_keep_lists


def _small_mirrors_together(
    layout, keys: list[str], current, compute: ComputeDevice, model_and_pool: Callable
) -> int:
    """Store the mirrors of the run's small classes, encoded together, before any class is
    decided (each then finds its own stored file): a class of 20 alone is a small
    convolution. Only with a budget (the model loaded then) and several classes; a class
    that cannot be read here is left out, and anything that fails here is left to the
    classes' own turns, which report it class by class. Returns how many were stored."""
    try:
        if len(keys) < 2 or not model_and_pool():
            return 0
        small = []
        for k in keys:
            try:
                if 0 < (class_summary(layout, k) or {}).get("images", 0) < SMALL_BATCH:
                    n = read_latent_ids(layout.latents(k)).height
                    small.append((k, current.latents(k), n))
            except Exception:  # noqa: BLE001 - the class's own turn reports it
                continue
        model = model_and_pool()["model"]
        device, amp_dtype = compute.torch_device(), compute.amp_dtype()
        return store_small_mirrors(
            layout,
            small,
            lambda pixels: encode_images(model, pixels, device=device, amp_dtype=amp_dtype),
            small=SMALL_BATCH,
            group=GROUP_IMAGES,
        )
    except Exception:  # noqa: BLE001 - the model or pool unreadable: each class says so
        return 0


def _refits(layout, key: str, tables: dict) -> dict:
    """Each threshold's refitted kurtosis of the class (`kurtosis_report.refit_row` of the
    latents its keep list keeps), for the threshold's report to read with the keep list
    instead of reading every class's latents again (about 3 s of a 1,000-class report). The
    latents are those the decisions were made on, read again only for a class too big to
    be kept from that read (`artifacts._StoredReads`); none for a keep list whose rows are
    not the latents' (the report then refits it itself)."""
    table, latents = read_latents(layout.latents(key))
    ids = table["image_id"]
    out, by_kept = {}, {}  # thresholds that keep the same images share one refit
    for t, keep in tables.items():
        if keep["image_id"].equals(ids):
            kept = keep["kept"].to_numpy()
            mask = kept.tobytes()
            if mask not in by_kept:
                by_kept[mask] = refit_row(latents, kept)
            out[t] = by_kept[mask]
    return out


def _class_metadata(tables: dict, run_id: str, settings: DedupSettings) -> dict:
    """What the UI shows for one class's keep lists: counts per threshold."""
    first = next(iter(tables.values()))
    return {
        "images": first.height,
        "decided_now": dg.MetadataValue.json(
            {t: int((k["decided_in"] == run_id).sum()) for t, k in tables.items()}
        ),
        "similarity_space": str(settings.similarity_space),
        "space_used": first["space"][0] if first.height else str(settings.similarity_space),
        "keep_policy": str(settings.keep_policy),
        "kept_per_threshold": dg.MetadataValue.md(
            md_table(
                ["T", "kept", "removed", "exact copies", "decided by override"],
                [
                    (
                        t,
                        int(k["kept"].sum()),
                        int((~k["kept"]).sum()),
                        int((k["match"] == "exact").sum()),
                        int((k["decided_by"] == "override").sum()),
                    )
                    for t, k in tables.items()
                ],
            )
        ),
    }
