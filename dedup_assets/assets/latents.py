"""Asset: per-class latent tables, the 1024-value encoder output of every image."""

import time

import dagster as dg
import numpy as np

from dedup_assets.assets.autoencoder import autoencoder
from dedup_assets.assets.catalog import image_catalog
from dedup_assets.core.artifacts import catalog_images, open_pixels, read_catalog, write_latents
from dedup_assets.core.autoencoder import encode_images, load_state
from dedup_assets.partitions import class_partitions
from resources import ComputeDevice, DedupStorage


@dg.asset(
    group_name="latents",
    kinds={"pytorch", "parquet"},
    partitions_def=class_partitions,
    deps=[image_catalog, autoencoder],
    description="One parquet table per class: image id, path and the 1024-value latent "
    "Code(x) of every decoded image of the class.",
)
def class_latents(
    context: dg.AssetExecutionContext, compute: ComputeDevice, storage: DedupStorage
) -> dg.MaterializeResult:
    layout = storage.layout()
    key = context.partition_key
    images = catalog_images(read_catalog(layout), key)
    if images.height == 0:
        raise ValueError(f"class partition {key!r} has no decoded images in the catalog")
    rows = images["row"].to_numpy()
    pixels = np.asarray(open_pixels(layout)[rows])
    device = compute.torch_device()
    model = load_state(layout.model, device)
    start = time.perf_counter()
    # bf16 where the device has it: measured on planted EuroSAT, the latents' cosine to the
    # fp32 ones is 1 - 1e-5 and average precision is unchanged (0.802 vs 0.801).
    latents = encode_images(model, pixels, device=device, amp_dtype=compute.amp_dtype())
    seconds = time.perf_counter() - start
    path = write_latents(
        layout.latents(key), images["image_id"].to_list(), images["path"].to_list(), latents
    )
    context.log.info(
        f"{key}: encoded {len(latents):,} images in {seconds:.2f}s "
        f"({len(latents) / max(seconds, 1e-9):,.0f} images/s on {device})"
    )
    dead = float((latents.max(axis=0) <= 0).mean())
    return dg.MaterializeResult(
        metadata={
            "images": len(latents),
            "encode_seconds": round(seconds, 3),
            "images_per_second": round(len(latents) / max(seconds, 1e-9), 1),
            "mean_latent_norm": float(np.linalg.norm(latents, axis=1).mean()),
            "dead_dimensions_fraction": dead,
            "path": dg.MetadataValue.path(str(path)),
        }
    )
