"""The run's reference images: a seeded sample of every class, kept with the model, that a
class too small to calibrate a false-removal budget on its own borrows as decoys.

A budget b needs about 1/b draws of "an unrelated image's best pair" to read its threshold
(`core.calibration`): a class of n images offers n of them, so a class with n + 1 < 1/b
(fewer than 99 images at 1%, 999 at 0.1%) cannot show its own top b. It then reads the
statistic from real images of the run's *other* classes, which are unrelated to its images
by construction (an image identical to one of the class's is left out): each image's
nearest among n - 1 of them, in every disjoint draw the pool allows, gives about POOL_SIZE
draws instead of n (`calibration.pooled_null`). The class is then compared without a fit
(`class_decision.unfitted_space`: the DCT descriptor for the joined space, pHash for the
latent-only ones), where images of different classes are comparable, and mirrored images
are not used (in the DCT space a mirror flips the sign of the odd horizontal frequencies
and is an easy decoy).

Measured (benchmarks/bench_budget.py): on unrelated EuroSAT images in classes of 2 to 300,
drawn within one EuroSAT class each (the pool then holds the class's own kind of image)
or across classes, and on photos, the pooled null kept the removed share at or below the
budget where the class's own mirrors removed 7-13% in classes of 5 and 10.

The pool is drawn when the model is trained and kept until it is trained again: new
images then change no class's null but their own class's, and every class of a run is
calibrated against the same reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dedup_assets.core.class_decision import ClassData
from dedup_assets.core.class_density import ClassDensityModel
from dedup_assets.core.dct_descriptor import DIMENSIONS, lowfreq_dct
from dedup_assets.core.phash import HASH_BITS, phash_bits

POOL_SIZE = 4_096
"""Images drawn across the run: enough for k = floor(b (draws + 1)) >= 4 at a 0.1% budget."""


def pool_rows(sizes: Sequence[int], total: int = POOL_SIZE, seed: int = 0) -> list[np.ndarray]:
    """Sorted rows drawn from each class (seeded), about `total` in all, in proportion to
    the classes' sizes but at least one from each non-empty class while room is left (a run
    of many tiny classes still draws from each)."""
    sizes = [int(s) for s in sizes]
    n = sum(sizes)
    rng = np.random.default_rng(seed)
    if n <= total:
        return [np.arange(s) for s in sizes]
    share = total / n
    take = [min(s, max(1, int(round(share * s)))) if s else 0 for s in sizes]
    return [np.sort(rng.choice(s, t, replace=False)) for s, t in zip(sizes, take, strict=True)]


@dataclass(frozen=True)
class ReferencePool:
    """The pool's images as what any space is computed from: latents (embedded with a
    class's own fit when that class reads its budget in its fitted space) and the pixel
    descriptors ("dct", "phash"), with the class each came from and its pixel hash (a class
    never borrows its own images or their exact copies)."""

    latents: np.ndarray  # (P, 1024) float32
    dct: np.ndarray  # (P, 63) float32 (`dct_descriptor.lowfreq_dct`)
    phash: np.ndarray  # (P, 64) bool
    class_keys: np.ndarray  # (P,) str
    pixel_hashes: np.ndarray  # (P,) str

    def __len__(self) -> int:
        return len(self.latents)

    def others(self, class_key: str, pixel_hashes: np.ndarray) -> np.ndarray:
        """Which pool images a class may use as unrelated images: those of other classes
        whose pixels are not identical to one of the class's images."""
        other = self.class_keys != class_key
        if len(pixel_hashes):
            other &= ~np.isin(self.pixel_hashes, np.asarray(pixel_hashes, dtype=str))
        return other

    def as_class(
        self, model: ClassDensityModel | None, rows: np.ndarray | None = None
    ) -> ClassData:
        """Pool images (all, or `rows`) as a class with `model`'s fit, to be vectorised in a
        class's space like its own images."""
        take = (
            np.arange(len(self))
            if rows is None
            else np.flatnonzero(rows)
            if rows.dtype == bool
            else rows
        )
        return ClassData(
            self.pixel_hashes[take],
            self.pixel_hashes[take],
            self.latents[take],
            model,  # type: ignore[arg-type]
            None,
            {"dct": self.dct[take], "phash": self.phash[take]},
        )

    @classmethod
    def empty(cls) -> ReferencePool:
        return cls(
            np.zeros((0, 1024), np.float32),  # the latent width (no torch import here)
            np.zeros((0, DIMENSIONS), np.float32),
            np.zeros((0, HASH_BITS), bool),
            np.zeros(0, str),
            np.zeros(0, str),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "latents": self.latents.astype(np.float32),
            "dct": self.dct.astype(np.float32),
            "phash": self.phash.astype(bool),
            "class_keys": self.class_keys.astype(str),
            "pixel_hashes": self.pixel_hashes.astype(str),
        }

    @classmethod
    def from_arrays(cls, arrays) -> ReferencePool:
        return cls(
            np.asarray(arrays["latents"], dtype=np.float32),
            np.asarray(arrays["dct"], dtype=np.float32),
            np.asarray(arrays["phash"], dtype=bool),
            np.asarray(arrays["class_keys"]).astype(str),
            np.asarray(arrays["pixel_hashes"]).astype(str),
        )


def build_reference_pool(
    class_keys: Sequence[str],
    stores: Sequence[np.ndarray],
    pixel_hashes: Sequence[np.ndarray],
    encode: Callable[[np.ndarray], np.ndarray],
    total: int = POOL_SIZE,
) -> ReferencePool:
    """Draw the pool from each class's uint8 pixel store (`pool_rows`): latents by `encode`
    (pixels -> latents, the run's model at the latents' device and precision) and the
    pixel descriptors."""
    rows = pool_rows([len(s) for s in stores], total)
    if sum(len(r) for r in rows) == 0:
        return ReferencePool.empty()
    keys = np.concatenate(
        [np.full(len(r), k, dtype=object) for k, r in zip(class_keys, rows, strict=True)]
    ).astype(str)
    pixels = np.concatenate([np.asarray(s[r]) for s, r in zip(stores, rows, strict=True)])
    hashes = np.concatenate(
        [np.asarray(h, dtype=str)[r] for h, r in zip(pixel_hashes, rows, strict=True)]
    )
    return ReferencePool(
        np.asarray(encode(pixels), dtype=np.float32),
        lowfreq_dct(pixels),
        phash_bits(pixels),
        keys,
        hashes,
    )
