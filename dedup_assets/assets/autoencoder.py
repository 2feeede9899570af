"""Asset: the paper's Table 1 autoencoder, trained on every catalogued image."""

import dagster as dg
import numpy as np

from dedup_assets.assets.catalog import image_catalog
from dedup_assets.core import plots
from dedup_assets.core.artifacts import file_digest, open_pixels
from dedup_assets.core.atomic_io import atomic_path, write_json
from dedup_assets.core.autoencoder import (
    TOTAL_PARAMETERS,
    reconstruct,
    save_state,
    train_autoencoder,
)
from dedup_assets.ui import image_metadata
from resources import ComputeDevice, DedupSettings, DedupStorage

GRID_IMAGES = 10
EVAL_IMAGES = 2048


@dg.asset(
    group_name="model",
    kinds={"pytorch"},
    deps=[image_catalog],
    description="Convolutional autoencoder of the paper's Table 1 (1,956,739 parameters), "
    "trained with MSE + Adam on inputs scaled to [-1, 1]; stored as a state dict.",
)
def autoencoder(
    context: dg.AssetExecutionContext,
    compute: ComputeDevice,
    storage: DedupStorage,
    settings: DedupSettings,
) -> dg.MaterializeResult:
    layout = storage.layout()
    pixels = np.array(open_pixels(layout))  # in memory: training reads it many times
    device, amp = compute.torch_device(), compute.amp_dtype()
    epochs = settings.resolved_epochs(len(pixels))
    context.log.info(
        f"training on {len(pixels):,} images for {epochs} epochs, "
        f"batch {settings.batch_size}, lr {settings.learning_rate}: {compute.describe()}"
    )
    result = train_autoencoder(
        pixels,
        epochs=epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        device=device,
        amp_dtype=amp,
        log=context.log.info,
    )
    with atomic_path(layout.model) as tmp:
        save_state(result.model, tmp)

    # Reconstruction error over an evenly spaced sample, and a picture of some of it.
    step = max(1, len(pixels) // EVAL_IMAGES)
    sample = pixels[::step][:EVAL_IMAGES]
    recon, mse = reconstruct(result.model, sample, device=device)
    pick = np.linspace(0, len(sample) - 1, min(GRID_IMAGES, len(sample))).astype(int)
    grid = plots.image_rows([sample[pick], recon[pick]], ["originals", "reconstructions"])
    history = {
        "epoch_losses": result.epoch_losses,
        "final_reconstruction_mse": mse,
        "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
        "device": result.device,
        "precision": result.precision,
        "epochs": epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "images": len(pixels),
        "model_digest": file_digest(layout.model),
    }
    write_json(history, layout.training_log)
    context.log.info(
        f"trained in {result.train_seconds:.1f}s ({result.images_per_second:,.0f} images/s); "
        f"reconstruction MSE {mse:.5f}"
    )
    return dg.MaterializeResult(
        metadata={
            "parameters": TOTAL_PARAMETERS,
            "images": len(pixels),
            "epochs": epochs,
            "final_loss": result.epoch_losses[-1],
            "reconstruction_mse": mse,
            "images_per_second": round(result.images_per_second, 1),
            "train_seconds": round(result.train_seconds, 2),
            "device": compute.describe(),
            "loss_per_epoch": image_metadata(plots.loss_curve(result.epoch_losses), "loss"),
            "reconstructions": image_metadata(grid, "originals vs reconstructions"),
            "epoch_losses": dg.MetadataValue.json(result.epoch_losses),
            "model_path": dg.MetadataValue.path(str(layout.model)),
            "model_digest": history["model_digest"],
        }
    )
