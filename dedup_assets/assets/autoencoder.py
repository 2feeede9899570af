"""Asset: the paper's Table 1 autoencoder, trained on every catalogued image of the training
split (every image of a source without split folders: evaluation images never shape the
space), and kept until a retraining rule fires (`core.model.retraining`)."""

import json

import dagster as dg
import numpy as np
import polars as pl

from dedup_assets.assets.catalog import class_images
from dedup_assets.core.data.artifacts import (
    catalog_images,
    file_digest,
    gather_pixels,
    read_catalog,
    training_class_keys,
)
from dedup_assets.core.data.atomic_io import atomic_path, write_json, write_parquet
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.progress import with_sinks
from dedup_assets.core.model.autoencoder import (
    TOTAL_PARAMETERS,
    EarlyStopping,
    load_state,
    reconstruct,
    reconstruction_errors,
    save_state,
    train_autoencoder,
)
from dedup_assets.core.model.new_image_errors import (
    errors_key,
    mean_error,
    read_new_image_errors,
)
from dedup_assets.core.model.retraining import RetrainDecision, decide_retraining
from dedup_assets.core.quality import plots
from dedup_assets.interrupts import stop_requested
from dedup_assets.names import FULL_TAG, GPU_OP_TAGS, RETRAIN_TAG
from dedup_assets.ui import image_metadata
from resources import ComputeDevice, DedupSettings, DedupStorage

GRID_IMAGES = 10
EVAL_IMAGES = 2048


def _sample(n: int) -> np.ndarray:
    """At most EVAL_IMAGES evenly spaced indices of range(n)."""
    return (
        np.unique(np.linspace(0, n - 1, min(n, EVAL_IMAGES)).astype(int)) if n else np.zeros(0, int)
    )


def retraining_decision(
    layout: OutputLayout,
    images: pl.DataFrame,
    settings: DedupSettings,
    compute: ComputeDevice,
    *,
    forced: bool,
) -> RetrainDecision:
    """Should the model be trained again for these catalogued images (the training
    split's)? (see core.model.retraining)"""
    model = None
    device = compute.torch_device()  # an unavailable device fails here, not as a bad model
    if layout.model.exists():
        try:
            model = load_state(layout.model, device)
        except Exception:  # noqa: BLE001 - an unreadable model is retrained, and says so
            return RetrainDecision(True, f"the stored model {layout.model} cannot be loaded")
    # A model copied in from elsewhere has no record of its training images: then the share
    # rule cannot be read, and the error rule is applied to a sample of every image.
    known = layout.trained_images.exists()
    history = json.loads(layout.training_log.read_text()) if layout.training_log.exists() else {}
    new = (
        images.join(
            pl.read_parquet(layout.trained_images, columns=["image_id"], glob=False),
            on="image_id",
            how="anti",
        )
        if known
        else images
    )
    trained_error = history.get("final_reconstruction_mse") if model is not None else None
    if model is not None and not forced and not known and trained_error is None:
        # Decided before any reconstruction: without a training error to compare against,
        # the new images' error would be computed (2,048 images, 3 s on 2 cores) for nothing.
        return RetrainDecision(
            False,
            "model kept: it has no record of its training (copied in?); --retrain trains anew",
        )
    new_error = None
    if model is not None and new.height:
        sample = new[_sample(new.height).tolist()]
        # The errors the class runs stored as they encoded these images (with this model);
        # the others reconstructed here (`core.model.new_image_errors`).
        digest = errors_key(file_digest(layout.model), compute.amp_dtype())
        stored = (
            [
                read_new_image_errors(layout.new_image_errors(k), digest)
                for k in sample["class_key"].unique(maintain_order=True).to_list()
            ]
            if known
            else []
        )

        def reconstructed(ids: list[str]) -> np.ndarray:
            rows = sample.filter(pl.col("image_id").is_in(ids))
            return reconstruction_errors(
                model, gather_pixels(layout, rows), device=device, amp_dtype=compute.amp_dtype()
            )

        new_error = mean_error(sample["image_id"].to_list(), stored, reconstructed)
    return decide_retraining(
        model_exists=model is not None,
        forced=forced,
        n_images=images.height,
        n_new=new.height if known else 0,
        new_error=new_error,
        trained_error=trained_error,
        **_rule_settings(settings, history),
    )


def _rule_settings(settings: DedupSettings, history: dict) -> dict:
    """What the retraining rules take from the settings and the training log, for both of
    their callers (`retraining_decision`, `likely_kept`)."""
    return {
        "max_new_share": settings.retrain_new_share,
        "error_factor": settings.retrain_error_factor,
        # A log from before the objective was recorded was written by plain training.
        "trained_objective": history.get("objective", "plain") if history else None,
        "objective": str(settings.training),
    }


def kept_observation(decision: RetrainDecision) -> dg.AssetObservation:
    """What the UI shows on the autoencoder when a run keeps the stored model: why."""
    return dg.AssetObservation(
        asset_key="autoencoder",
        metadata={
            "decision": decision.reason,
            "new_images": decision.new_images,
            "new_share": decision.new_share,
            "error_ratio": decision.error_ratio,
        },
    )


def likely_kept(layout: OutputLayout, settings: DedupSettings, listed: int) -> bool:
    """Whether the retraining rules that need no image decoded (the share of new images,
    the objective) keep the stored model, the `listed` files standing for the images: then
    `dedup run` processes new images with it at once, and the error rule decides after."""
    history = json.loads(layout.training_log.read_text()) if layout.training_log.exists() else {}
    trained = (
        pl.scan_parquet(layout.trained_images, glob=False).select(pl.len()).collect().item()
        if layout.trained_images.exists()
        else None
    )
    decision = decide_retraining(
        model_exists=True,
        forced=False,
        n_images=listed,
        n_new=max(listed - trained, 0) if trained is not None else 0,
        new_error=None,
        trained_error=None,
        **_rule_settings(settings, history),
    )
    return not decision.retrain


def decide_for_run(
    layout: OutputLayout, settings: DedupSettings, compute: ComputeDevice
) -> RetrainDecision | None:
    """The decision a training run not forced would make now, for the catalogued images of
    the training split (None without a stored model or an image to train on: a run says
    why): `dedup run` asks first and starts no training run to keep a model."""
    if not layout.model.exists():
        return None
    images = catalog_images(read_catalog(layout, training_class_keys(layout)))
    if images.height == 0:
        return None
    return retraining_decision(layout, images, settings, compute, forced=False)


@dg.asset(
    group_name="model",
    kinds={"pytorch"},
    op_tags=GPU_OP_TAGS,
    deps=[dg.AssetDep(class_images, partition_mapping=dg.AllPartitionMapping())],
    output_required=False,
    description="Convolutional autoencoder of the paper's Table 1 (1,956,739 parameters), "
    "trained with MSE + Adam on inputs scaled to [-1, 1] on the training split's images (all "
    "images without split folders); stored as a state dict. A run "
    "keeps the stored model (an observation says why) unless a retraining rule fires: no "
    "model, a share of new images, or new images it reconstructs badly.",
)
def autoencoder(
    context: dg.AssetExecutionContext,
    compute: ComputeDevice,
    storage: DedupStorage,
    settings: DedupSettings,
):
    layout = storage.layout()
    images = catalog_images(read_catalog(layout, training_class_keys(layout)))
    if images.height == 0:
        raise ValueError(
            "no decoded image of the training split to train on: materialize class_images "
            "first (a source with split folders needs images in train/<class>/)"
        )
    forced = context.run.tags.get(RETRAIN_TAG) == "1" or context.run.tags.get(FULL_TAG) == "1"
    decision = retraining_decision(layout, images, settings, compute, forced=forced)
    context.log.info(("retraining: " if decision.retrain else "") + decision.reason)
    if not decision.retrain:
        context.log_event(kept_observation(decision))
        return
    pixels = gather_pixels(layout, images)  # in memory: training reads it many times
    device, amp = compute.torch_device(), compute.amp_dtype()
    epochs = settings.resolved_epochs(len(pixels))
    early = (
        EarlyStopping(max_epochs=epochs, max_images=settings.training_images)
        if settings.epochs == 0
        else None
    )
    context.log.info(
        f"{settings.training} training on {len(pixels):,} images "
        + (
            f"until the held-out loss stalls (at most {settings.training_images:,} images)"
            if early
            else f"for {epochs} epochs"
        )
        + f", batch {settings.batch_size}, lr {settings.learning_rate}: {compute.describe()}"
    )
    result = train_autoencoder(
        pixels,
        epochs=epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        device=device,
        amp_dtype=amp,
        objective=settings.training,
        early_stopping=early,
        log=with_sinks(context.log.info, "training"),
        should_stop=stop_requested,  # Ctrl-C of `dedup run`, should a library swallow it
    )
    with atomic_path(layout.model) as tmp:
        save_state(result.model, tmp)
    write_parquet(images.select("class_key", "image_id", "raw_path"), layout.trained_images)

    # Reconstruction error over an evenly spaced sample, and a picture of some of it.
    sample = pixels[_sample(len(pixels))]
    recon, mse = reconstruct(result.model, sample, device=device)
    pick = np.linspace(0, len(sample) - 1, min(GRID_IMAGES, len(sample))).astype(int)
    grid = plots.image_rows([sample[pick], recon[pick]], ["originals", "reconstructions"])
    history = {
        "decision": decision.reason,
        "epoch_losses": result.epoch_losses,
        "final_reconstruction_mse": mse,
        "images_per_second": result.images_per_second,
        "train_seconds": result.train_seconds,
        "device": result.device,
        "precision": result.precision,
        "epochs": epochs if early is None else len(result.epoch_losses),
        "objective": result.objective,
        "images_seen": result.images_seen,
        "stopped_because": result.stopped_because,
        "holdout_losses": result.holdout_losses,
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
    yield dg.MaterializeResult(
        metadata={
            "decision": decision.reason,
            "parameters": TOTAL_PARAMETERS,
            "images": len(pixels),
            "objective": result.objective,
            "epochs": history["epochs"],
            "images_seen": result.images_seen,
            "stopped_because": result.stopped_because,
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
