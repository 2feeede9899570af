"""Method settings shared by every asset of a run, so keep lists, reports and checks agree."""

from __future__ import annotations

from enum import StrEnum

import dagster as dg
from pydantic import Field

from dedup_assets.core.decision.ann_join import (
    DEFAULT_ANN_MIN_CLASS_SIZE,
    DEFAULT_NPROBE,
    JoinMethod,
)
from dedup_assets.core.decision.keep_policy import KeepPolicy
from dedup_assets.core.decision.leakage import DEFAULT_LEAKAGE_BUDGET
from dedup_assets.core.decision.local_scaling import BudgetScaling
from dedup_assets.core.decision.similarity import SimilaritySpace
from dedup_assets.core.density.spline import BinRule
from dedup_assets.core.model.objective import TrainingObjective
from dedup_assets.core.model.retraining import DEFAULT_ERROR_FACTOR, DEFAULT_MAX_NEW_SHARE

DEFAULT_TRAINING_IMAGES = 12_288
"""Training images with automatic epochs (3 early-stopping checks of 4,096): on planted
EuroSAT the margin AP of the spline-copula codes was 0.958 after 6,270 images, 0.964
after 18,810 and 0.967 after 106,590 (benchmarks/README.md), so a first run trains under a
minute on 2 CPU cores whatever the size of the data."""


class LeakagePolicy(StrEnum):
    """What the clean copy does with a training image whose copy is in an evaluation split:
    drop the training copy (the evaluation set is never touched), drop the evaluation image,
    or only report the pair."""

    drop_train = "drop-train"
    drop_test = "drop-test"
    report = "report"


class CopyMode(StrEnum):
    """How `clean/<T>` holds the kept images."""

    copy = "copy"
    hardlink = "hardlink"
    symlink = "symlink"


class DedupSettings(dg.ConfigurableResource):
    """How the method runs; defaults are the measured choices (see README).

    Every field is checked by pydantic when the object is built, so a bad value fails
    before any work starts. epochs = 0 means auto: train until a held-out slice's loss
    stops improving (core.model.autoencoder.EarlyStopping), on at most `training_images` images.
    """

    epochs: int = Field(
        default=0,
        ge=0,
        description="training epochs; 0: until a held-out slice's loss stops improving",
    )
    training: TrainingObjective = Field(
        default=TrainingObjective.invariant,
        description="autoencoder objective: invariant (codes that see through crops, colour "
        "and re-encoding) or plain (the paper's reconstruction)",
    )
    training_images: int = Field(
        default=DEFAULT_TRAINING_IMAGES,
        ge=1,
        description="with automatic epochs, train on at most this many images; the held-out "
        "loss may stop it sooner",
    )
    batch_size: int = Field(default=128, ge=1, description="training batch")
    learning_rate: float = Field(
        default=1e-3, gt=0, allow_inf_nan=False, description="Adam learning rate"
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="training seed, 0 to 2^32 - 1")
    n_components: int = Field(
        default=128,
        ge=1,
        description="principal components per class, at most a quarter of its size",
    )
    bin_rule: BinRule = Field(
        default=BinRule.fd, description="grid-step rule of the spline densities' histograms"
    )
    similarity_space: SimilaritySpace = Field(
        default=SimilaritySpace.spline_copula_dct,
        description="similarity space; spline_copula_dct joins the spline-copula latents with a "
        "low-frequency DCT descriptor of the pixels",
    )
    keep_policy: KeepPolicy = Field(
        default=KeepPolicy.density,
        description="the order in which a class's images are visited, each kept unless it "
        "duplicates one kept before: density (the least dense first, so dense regions thin "
        "out), first (by image id, a content hash) or quality (the best version of each "
        "group kept: colour, then the most pixels, then the largest file)",
    )
    budget_scaling: BudgetScaling = Field(
        default=BudgetScaling.local,
        description="what a budget threshold (1%) resolves to: local (one margin per class, "
        "each pair's cosine threshold raised by how close unrelated images come to its two "
        "images) or uniform (one cosine per class)",
    )
    kurtosis_tolerance: float = Field(
        default=0.1,
        ge=0,
        allow_inf_nan=False,
        description="how far the kurtosis line may rise above the median before the gate "
        "fails, on top of what random removal does",
    )
    block_size: int = Field(
        default=2048, ge=16, le=65536, description="images compared at once in the joins"
    )
    join: JoinMethod = Field(
        default=JoinMethod.auto,
        description="similarity join of the keep decisions: auto (exact up to "
        "--ann-min-class-size images a class, approximate above), exact, or ann (faiss IVF)",
    )
    ann_min_class_size: int = Field(
        default=DEFAULT_ANN_MIN_CLASS_SIZE,
        ge=1,
        description="with join auto, classes above this many images use the approximate join",
    )
    ann_nprobe: int = Field(default=DEFAULT_NPROBE, ge=1, le=4096, description="IVF cells probed")
    clean_copy_mode: CopyMode = Field(
        default=CopyMode.copy,
        description="how clean/<T> holds the kept images: copy (files of their own), hardlink "
        "or symlink (the source's own files: editing a file in clean/<T> edits the source)",
    )
    leakage: LeakagePolicy = Field(
        default=LeakagePolicy.drop_train,
        description="with split folders (train, val, test), what the clean copy does with an "
        "evaluation image that has a copy in train: drop-train removes the training copy (the "
        "evaluation set is never touched), drop-test removes the evaluation image, report "
        "only lists the pair in leakage.csv",
    )
    leakage_budget: float = Field(
        default=DEFAULT_LEAKAGE_BUDGET,
        gt=0,
        lt=1,
        description="share of the evaluation images without a copy in train that the leakage "
        "check may flag (calibrated like the false-removal budget; 0.001 = 0.1%)",
    )
    leakage_tolerance: int = Field(
        default=0,
        ge=0,
        description="evaluation images with a copy in train that each evaluation split's "
        "blocking leakage check allows",
    )
    retrain_new_share: float = Field(
        default=DEFAULT_MAX_NEW_SHARE,
        gt=0,
        le=1,
        description="retrain the autoencoder when this share of the images is new since training",
    )
    retrain_error_factor: float = Field(
        default=DEFAULT_ERROR_FACTOR,
        gt=1,
        allow_inf_nan=False,
        description="retrain when new images reconstruct this many times worse than the "
        "training images",
    )

    def resolved_epochs(self, n_images: int) -> int:
        """The number of training epochs for a dataset of n_images (with epochs = 0, the
        most early stopping may run: enough epochs for `training_images` images)."""
        if self.epochs > 0:
            return self.epochs
        return int(max(1, -(-self.training_images // max(n_images, 1))))

    def label(self) -> str:
        """One line naming the method, for reports."""
        return (
            f"{self.training} training, "
            f"similarity space `{self.similarity_space}`, keep policy `{self.keep_policy}`, "
            f"up to {self.n_components} principal components per class (each class's count is "
            f"in the per-class table), bin rule `{self.bin_rule}`"
        )
