"""One class's density model: PCA of its latents, then the product spline model (formula (2)).

The paper decorrelates the latent components with PCA and models the density as a
product of one-dimensional spline marginals over the leading components. The fit is
stored, so new images of the class can be scored and embedded later without refitting.
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dedup_assets.core.data.artifacts import STORED_READS, written_fit
from dedup_assets.core.data.atomic_io import PROVENANCE_KEY, atomic_path, save_npz
from dedup_assets.core.density.pca import PCAFit, fit_pca
from dedup_assets.core.density.spline import BinRule, ProductSplineDensity


@dataclass(frozen=True)
class ClassDensityModel:
    """PCA axes plus a spline marginal per leading component."""

    pca: PCAFit
    density: ProductSplineDensity | None
    bin_rule: str

    @property
    def n_components(self) -> int:
        return self.pca.n_components

    def scores(self, latents: np.ndarray) -> np.ndarray:
        """The latents' component scores; those of the array it was last asked for (the
        same object, alive) kept, as deciding a class asks twice (its similarity space and
        its density order: 15 ms a EuroSAT class each time)."""
        last = self.__dict__.get("_last_scores")
        if last is not None and last[0]() is latents and last[1] == np.shape(latents):
            return last[2]
        scores = self.pca.transform(latents)
        try:
            memo = (weakref.ref(latents), np.shape(latents), scores)
        except TypeError:  # not an array (a list): nothing kept
            return scores
        object.__setattr__(self, "_last_scores", memo)
        return scores

    def log_density(self, latents: np.ndarray) -> np.ndarray:
        """Spline log-density of each latent (sum of marginal log-densities)."""
        return self.log_density_of_scores(self.scores(latents))

    def log_density_of_scores(self, scores: np.ndarray) -> np.ndarray:
        """`log_density` of latents whose component scores (`scores`) are known already."""
        if self.density is None:
            return np.zeros(len(scores))
        return self.density.logpdf(scores)

    def save(
        self, path: Path | str, provenance: dict | None = None, basis: FitBasis | None = None
    ) -> Path:
        """Store the fit (npz, no pickles), with the provenance record and what it was
        fitted on (`basis`, read by `reusable_fit`) when given."""
        arrays = {
            "pca_mean": self.pca.mean,
            "pca_components": self.pca.components,
            "pca_variances": self.pca.variances,
            "pca_total_variance": np.array(self.pca.total_variance),
            "pca_n_samples": np.array(self.pca.n_samples),
            "bin_rule": np.array(self.bin_rule),
        }
        if self.density is not None:
            arrays |= {f"spline_{k}": v for k, v in self.density.to_arrays().items()}
        if provenance is not None:
            arrays[PROVENANCE_KEY] = np.array(json.dumps(provenance, sort_keys=True))
        if basis is not None:
            arrays |= basis.to_arrays()
        return save_npz(path, **arrays)

    @classmethod
    def load(cls, path: Path | str) -> ClassDensityModel:
        with np.load(path, allow_pickle=False) as z:
            pca = PCAFit(
                mean=z["pca_mean"],
                components=z["pca_components"],
                variances=z["pca_variances"],
                total_variance=float(z["pca_total_variance"]),
                n_samples=int(z["pca_n_samples"]),
            )
            spline = {k[len("spline_") :]: z[k] for k in z.files if k.startswith("spline_")}
            density = ProductSplineDensity.from_arrays(spline) if spline else None
            return cls(pca, density, str(z["bin_rule"]))


def write_class_density(
    model: ClassDensityModel, path: Path, provenance: dict, basis: FitBasis | None = None
) -> Path:
    """Store a class's fit (`ClassDensityModel.save`, atomically, with what it was fitted on)
    and keep it, with its provenance and component count, for this process's later reads of
    the same file: the class's keep decisions read it next in the same run (a read of the
    npz cost 2 ms, 1.8 s of a 1,000-class run's keep decisions)."""
    with atomic_path(path) as tmp:
        model.save(tmp, provenance, basis)
        written = os.stat(tmp)
    STORED_READS.put(Path(path), written, "density", model, _density_bytes(model))
    written_fit(Path(path), written, provenance, model.pca.variances.shape[0])
    return Path(path)


def read_class_density(path: Path) -> ClassDensityModel:
    """A class's stored fit, reused while the file is the one read or written
    (`artifacts._StoredReads`); callers must not change its arrays."""
    if not Path(path).exists():
        raise FileNotFoundError(f"spline fit not found: {path}")
    return STORED_READS.get(Path(path), "density", ClassDensityModel.load, _density_bytes)


def _density_bytes(model: ClassDensityModel) -> int:
    arrays = [model.pca.mean, model.pca.components, model.pca.variances]
    if model.density is not None:
        arrays += list(model.density.to_arrays().values())
    return sum(np.asarray(a).nbytes for a in arrays) + 1024


# A class of n images supports at most n / SAMPLES_PER_COMPONENT components: beyond that
# the trailing components are noise, and whitening them drowns the signal (measured on the
# demo dataset, 70 images per class: average precision 0.87 at 16 components, 0.70 at 64).
SAMPLES_PER_COMPONENT = 4


def effective_components(n_images: int, requested: int) -> int:
    """How many components a class of n_images gets when `requested` are asked for."""
    return int(max(0, min(requested, max(1, n_images // SAMPLES_PER_COMPONENT), n_images - 1)))


def fit_class_density(
    latents: np.ndarray, n_components: int, bin_rule: BinRule = "fd"
) -> ClassDensityModel:
    """PCA to the class's effective number of axes, then one spline marginal per axis."""
    return fit_with_scores(latents, n_components, bin_rule)[0]


def fit_with_scores(
    latents: np.ndarray, n_components: int, bin_rule: BinRule = "fd"
) -> tuple[ClassDensityModel, np.ndarray]:
    """`fit_class_density` and the latents' component scores it fitted the splines to
    (`ClassDensityModel.scores` of them, not computed twice)."""
    pca = fit_pca(latents, effective_components(len(latents), n_components))
    scores = pca.transform(latents)
    if pca.n_components == 0:
        return ClassDensityModel(pca, None, bin_rule), scores
    density = ProductSplineDensity.fit(scores, rule=bin_rule)
    return ClassDensityModel(pca, density, bin_rule), scores


# A class's stored fit is kept while its images differ from those it was fitted on by at
# most this share of them (images added plus images removed), for the same model and
# settings: as the model is kept below `--retrain-new-share` and the cross-class space below
# SPACE_GROWTH. Refitting a 3,000-image class for 135 new images was a third of its
# update's class run (the PCA's eigendecomposition of a 1,024 x 1,024 covariance, 0.13 s),
# for a density that moves less than its own sampling noise; kept, the class's images stay
# in the space its earlier decisions were made in. The share is counted against the fitted
# images, not the last run's, so small additions add up to a refit; `--full` always refits.
REFIT_SHARE = 0.1


@dataclass(frozen=True)
class FitBasis:
    """What a fit was made from: the model's digest, the requested settings and the ids of
    the images it was fitted on."""

    model_digest: str
    n_components: int
    bin_rule: str
    image_ids: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "basis_model": np.array(self.model_digest),
            "basis_n_components": np.array(int(self.n_components)),
            "basis_bin_rule": np.array(self.bin_rule),
            # UTF-8 bytes: numpy's str arrays take 4 bytes a character (7 MB at 100,000)
            "basis_image_ids": np.char.encode(np.asarray(self.image_ids, dtype=str), "utf-8"),
        }

    def same_source(self, other: FitBasis) -> bool:
        """The same model and settings (the images aside)."""
        return (self.model_digest, int(self.n_components), self.bin_rule) == (
            other.model_digest,
            int(other.n_components),
            other.bin_rule,
        )


def read_fit_basis(path: Path) -> FitBasis | None:
    """What the stored fit at `path` was fitted on; None for a fit stored without it (an
    older output), or an unreadable file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "basis_image_ids" not in z.files:
                return None
            return FitBasis(
                str(z["basis_model"]),
                int(z["basis_n_components"]),
                str(z["basis_bin_rule"]),
                _ids_of(z["basis_image_ids"]),
            )
    except Exception:  # noqa: BLE001 - whatever is wrong with it, the class is refitted
        return None


def _ids_of(stored: np.ndarray) -> np.ndarray:
    """Stored ids as str: UTF-8 bytes, or str as fits of 2026-12-06 before 11:45 stored them."""
    return np.char.decode(stored, "utf-8") if stored.dtype.kind == "S" else stored.astype(str)


def changed_share(fitted_ids: np.ndarray, ids: np.ndarray) -> float:
    """Images added plus images removed since a fit on `fitted_ids`, as a share of them
    (infinite for a fit on no image); ids are unique."""
    fitted, now = np.asarray(fitted_ids, dtype=str), np.asarray(ids, dtype=str)
    if len(fitted) == 0:
        return float("inf")
    same = np.intersect1d(fitted, now, assume_unique=True).size
    return (len(fitted) - same + len(now) - same) / len(fitted)


# A kept fit must still describe the class's new images: it is refitted when more than
# OUTLIER_SHARE of them are less likely under it than all but OUTLIER_QUANTILE of the images
# it was fitted on (about OUTLIER_QUANTILE of them are, when they are like those). New
# images unlike the class (beyond a marginal's support, at the floor density, sharing one
# clipped coordinate there in the copula space) would otherwise be decided in a space that
# has no room for them.
OUTLIER_QUANTILE = 0.01
OUTLIER_SHARE = 0.1


def new_images_share_unlikely(log_density: np.ndarray, fitted: np.ndarray) -> float:
    """The share of the new images (`~fitted`) whose log-density under a kept fit is below
    the OUTLIER_QUANTILE quantile of the fitted images' (0 when either side is empty)."""
    log_density, fitted = np.asarray(log_density, dtype=np.float64), np.asarray(fitted, bool)
    if fitted.all() or not fitted.any():
        return 0.0
    low = np.quantile(log_density[fitted], OUTLIER_QUANTILE)
    return float((log_density[~fitted] < low).mean())


@dataclass(frozen=True)
class KeptFit:
    """A stored fit kept for a class's images now (`reusable_fit`)."""

    model: ClassDensityModel
    basis: FitBasis
    share: float

    def describe(self, images: int) -> str:
        return (
            f"kept: fitted on {len(self.basis.image_ids):,} images, {self.share:.1%} of them "
            f"added or removed since (refitted beyond {REFIT_SHARE:.0%}); {images:,} now"
        )


def reusable_fit(path: Path, now: FitBasis) -> KeptFit | None:
    """The class's stored fit at `path` when it may stand for a fit on `now` (the model,
    settings and images now): made with the same model and settings, on images that
    differ from today's by at most REFIT_SHARE (`changed_share`); None to refit."""
    stored = read_fit_basis(path)
    if stored is None or not stored.same_source(now):
        return None
    share = changed_share(stored.image_ids, now.image_ids)
    if share > REFIT_SHARE:
        return None
    try:
        model = read_class_density(path)
    except Exception:  # noqa: BLE001 - unreadable: refitted
        return None
    return KeptFit(model, stored, share)
