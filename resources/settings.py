"""Method settings shared by every asset of a run, so keep lists, reports and checks agree."""

from __future__ import annotations

import dagster as dg

from dedup_assets.core.keep_policy import KEEP_POLICIES
from dedup_assets.core.similarity import SIMILARITY_SPACES

BIN_RULES = ("fd", "scott", "sturges")
COPY_MODES = ("copy", "hardlink", "symlink")
AUTO_MIN_STEPS = 2000
AUTO_MIN_EPOCHS = 10
AUTO_MAX_EPOCHS = 60


class DedupSettings(dg.ConfigurableResource):
    """How the method runs; defaults are the measured choices (see README).

    epochs = 0 means auto: enough epochs for about AUTO_MIN_STEPS optimiser steps,
    between AUTO_MIN_EPOCHS and AUTO_MAX_EPOCHS (small datasets need more passes).
    """

    epochs: int = 0
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    n_components: int = 128
    bin_rule: str = "fd"
    similarity_space: str = "spline_copula"
    keep_policy: str = "density"
    kurtosis_tolerance: float = 0.1
    block_size: int = 2048
    clean_copy_mode: str = "copy"

    def resolved_epochs(self, n_images: int) -> int:
        """The number of training epochs for a dataset of n_images."""
        if self.epochs > 0:
            return self.epochs
        steps_per_epoch = max(1, -(-n_images // self.batch_size))
        wanted = -(-AUTO_MIN_STEPS // steps_per_epoch)
        return int(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, wanted)))

    def validate(self) -> DedupSettings:
        """Raise a clear error for a setting outside its allowed values."""
        checks = {
            "bin_rule": (self.bin_rule, BIN_RULES),
            "similarity_space": (self.similarity_space, SIMILARITY_SPACES),
            "keep_policy": (self.keep_policy, KEEP_POLICIES),
            "clean_copy_mode": (self.clean_copy_mode, COPY_MODES),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be 0 (auto) or positive, not {self.epochs}")
        for name in ("batch_size", "n_components", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, not {self.learning_rate}")
        return self
