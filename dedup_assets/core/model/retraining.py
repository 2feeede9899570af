"""When a trained autoencoder is kept and when it is trained again.

A model is reused by default: retraining re-encodes every class and shifts every
similarity, while a few new images are encoded well by a model trained on the rest. It is
trained again when any rule fires, and the decision says which:

- there is no model yet (or it cannot be loaded), or retraining was asked for;
- the model was trained with another objective than the settings name (plain/invariant);
- at least `max_new_share` of the catalogued images are new since training (default 25%);
- the mean reconstruction error of the new images exceeds the training error by more
  than `error_factor` (default 1.5x): the new images do not look like the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_NEW_SHARE = 0.25
DEFAULT_ERROR_FACTOR = 1.5


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    new_images: int = 0
    new_share: float = 0.0
    error_ratio: float | None = None


def decide_retraining(
    *,
    model_exists: bool,
    forced: bool,
    n_images: int,
    n_new: int,
    new_error: float | None,
    trained_error: float | None,
    max_new_share: float = DEFAULT_MAX_NEW_SHARE,
    error_factor: float = DEFAULT_ERROR_FACTOR,
    trained_objective: str | None = None,
    objective: str | None = None,
) -> RetrainDecision:
    """Apply the rules in the module docstring; `new_error` is None when nothing is new."""
    share = n_new / n_images if n_images else 0.0
    ratio = (
        new_error / trained_error
        if new_error is not None and trained_error is not None and trained_error > 0
        else None
    )
    if not model_exists:
        return RetrainDecision(True, "no trained model yet", n_new, share, ratio)
    if forced:
        return RetrainDecision(
            True, "retraining was asked for (--retrain or --full)", n_new, share, ratio
        )
    if trained_objective and objective and trained_objective != objective:
        return RetrainDecision(
            True,
            f"the model was trained with the {trained_objective} objective; the settings ask "
            f"for {objective}",
            n_new,
            share,
            ratio,
        )
    if n_images and share >= max_new_share:
        return RetrainDecision(
            True,
            f"{n_new:,} of {n_images:,} images ({share:.1%}) are new since training, "
            f">= {max_new_share:.0%}",
            n_new,
            share,
            ratio,
        )
    if ratio is not None and ratio > error_factor:
        return RetrainDecision(
            True,
            f"the new images' reconstruction error is {ratio:.2f}x the training error, "
            f"> {error_factor}x",
            n_new,
            share,
            ratio,
        )
    detail = f"{n_new:,} new images ({share:.1%} < {max_new_share:.0%})"
    if ratio is not None:
        detail += f", reconstruction error {ratio:.2f}x the training error (<= {error_factor}x)"
    return RetrainDecision(False, f"model kept: {detail}", n_new, share, ratio)
