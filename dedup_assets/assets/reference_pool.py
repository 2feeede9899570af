"""Asset: the run's reference images (`core.decision.reference_pool`), drawn when the model is
trained, that classes too small to calibrate a budget on their own borrow as decoys."""

import dagster as dg
import numpy as np

from dedup_assets.assets.autoencoder import autoencoder
from dedup_assets.assets.catalog import class_images
from dedup_assets.core.data.artifacts import (
    CurrentInputs,
    catalog_images,
    column_by_class,
    is_current,
    open_pixels,
    read_catalog,
    training_class_keys,
)
from dedup_assets.core.decision.reference_pool import (
    build_reference_pool,
    reference_pool_provenance,
    write_reference_pool,
)
from dedup_assets.core.model.autoencoder import encode_images, load_state
from dedup_assets.names import FULL_TAG
from resources import ComputeDevice, DedupSettings, DedupStorage


@dg.asset(
    group_name="model",
    kinds={"numpy"},
    deps=[autoencoder, dg.AssetDep(class_images, partition_mapping=dg.AllPartitionMapping())],
    output_required=False,
    description="A seeded sample of up to 4,096 images across the training split's classes "
    "(every class without split folders; latents, DCT descriptors, pHash and PDQ bits): "
    "real unrelated images every class's false-removal budget is also read against, and "
    "the only ones for a class too small to read it on its own "
    "(n + 1 < 1/b). Drawn for each trained model and kept with it, so new images change no "
    "other class's budget.",
)
def reference_pool(
    context: dg.AssetExecutionContext,
    storage: DedupStorage,
    settings: DedupSettings,
    compute: ComputeDevice,
):
    layout = storage.layout()
    current = CurrentInputs.of(layout, settings)
    expected = reference_pool_provenance(current.model_digest)
    full = context.run.tags.get(FULL_TAG) == "1"
    if not full and is_current(layout.reference_pool, expected):
        context.log.info("reference pool kept: drawn for this model and space")
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                metadata={"status": "kept: drawn for the current model and space"},
            )
        )
        return
    keys = training_class_keys(layout)  # evaluation images never shape a budget
    catalog = catalog_images(read_catalog(layout, keys))
    hashes = [h.astype(str) for h in column_by_class(catalog, "pixel_hash", keys)]
    model = load_state(layout.model, compute.torch_device())

    def encode(pixels: np.ndarray) -> np.ndarray:  # as the latents are: device and precision
        return encode_images(
            model, pixels, device=compute.torch_device(), amp_dtype=compute.amp_dtype()
        )

    pool = build_reference_pool(keys, [open_pixels(layout, k) for k in keys], hashes, encode)
    write_reference_pool(pool, layout.reference_pool, expected)
    context.log.info(f"reference pool: {len(pool):,} images of {len(keys):,} classes")
    yield dg.MaterializeResult(
        metadata={
            "images": len(pool),
            "classes": len(set(pool.class_keys.tolist())),
            "path": dg.MetadataValue.path(str(layout.reference_pool)),
        }
    )
