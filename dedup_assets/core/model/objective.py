"""Which objective trains the autoencoder (kept free of torch, so settings load fast)."""

from __future__ import annotations

from enum import StrEnum


class TrainingObjective(StrEnum):
    """What the autoencoder is trained to do (member names equal values: Dagster shows names).

    plain: the paper's reconstruction (MSE of the image from its own code).
    invariant: reconstruct the clean image from an augmented view (denoising), and pull
    the codes of two augmented views of one image together relative to the other images
    of the batch (InfoNCE), so a crop, shift, colour change or re-encoding moves the code
    less than a different image does.
    """

    plain = "plain"
    invariant = "invariant"
