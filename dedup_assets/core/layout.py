"""Where each asset's files live under the output folder (one place, so nothing guesses)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputLayout:
    """Paths of every stored artefact; thresholds appear in names exactly as configured."""

    root: Path

    @property
    def catalog_dir(self) -> Path:
        return self.root / "catalog"

    @property
    def catalog(self) -> Path:
        return self.catalog_dir / "catalog.parquet"

    @property
    def pixels(self) -> Path:
        return self.catalog_dir / "pixels.npy"

    @property
    def quarantine(self) -> Path:
        return self.catalog_dir / "quarantine.csv"

    @property
    def model(self) -> Path:
        return self.root / "model" / "autoencoder.pt"

    @property
    def training_log(self) -> Path:
        return self.root / "model" / "training.json"

    def latents(self, class_key: str) -> Path:
        return self.root / "latents" / f"{class_key}.parquet"

    def spline_fit(self, class_key: str) -> Path:
        return self.root / "spline_fits" / f"{class_key}.npz"

    def spline_scores(self, class_key: str) -> Path:
        return self.root / "spline_fits" / f"{class_key}.parquet"

    def class_keep_list(self, threshold: str, class_key: str) -> Path:
        return self.root / "keep_lists" / "by_class" / threshold / f"{class_key}.parquet"

    def keep_list(self, threshold: str, suffix: str = "parquet") -> Path:
        return self.root / "keep_lists" / f"{threshold}.{suffix}"

    def duplicate_pairs_image(self, threshold: str) -> Path:
        return self.root / "keep_lists" / f"{threshold}_pairs.png"

    def report_dir(self, threshold: str) -> Path:
        return self.root / "reports" / threshold

    def clean_dir(self, threshold: str) -> Path:
        return self.root / "clean" / threshold

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    @property
    def demo_dataset(self) -> Path:
        return self.root / "demo_dataset"
