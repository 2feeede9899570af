"""The run's reference images: a seeded sample of every class, kept with the model, whose
real images every class's false-removal budget is also read against (`core.decision.calibration`).

They are unrelated to a class's images by construction (a class never borrows its own
images or an image identical to one of them), and they serve twice: a class of any size
takes the higher of its mirror threshold and the pool's (mirrors can be easier decoys
than real neighbours), and a class too small to read its own top b (n + 1 < 1/b: under
99 images at 1%) reads b from the pool alone, in the space without a class fit, where
images of different classes are comparable.

The pool is drawn when the model is trained and kept until it is trained again: new
images then change no class's budget but their own class's, and every class of a run is
calibrated against the same reference. It holds latents and pixel descriptors (not
pixels), so any class's space can be computed for it: 4,096 images are about 19 MB.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dedup_assets.core.data.artifacts import CurrentInputs, require_current
from dedup_assets.core.data.atomic_io import PROVENANCE_KEY, save_npz
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.mapped import take_rows
from dedup_assets.core.decision.class_decision import ClassData
from dedup_assets.core.decision.dct_descriptor import DIMENSIONS, lowfreq_dct
from dedup_assets.core.decision.pdq import HASH_BITS as PDQ_BITS
from dedup_assets.core.decision.pdq import pdq_hashes
from dedup_assets.core.decision.phash import HASH_BITS, phash_bits
from dedup_assets.core.density.class_density import ClassDensityModel

DESCRIPTOR_SPACES = frozenset({"dct", "phash", "pdq"})
"""The spaces computed from one stored pixel descriptor alone, without latents."""

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


_NO_ROWS = np.zeros(0, dtype=np.int64)


def _rows_by_value(values: np.ndarray) -> dict[str, np.ndarray]:
    """Each distinct string of `values` and the rows holding it."""
    values = np.asarray(values).astype(str)
    if len(values) == 0:
        return {}
    distinct, inverse = np.unique(values, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(distinct)))[:-1]
    return dict(zip(distinct.tolist(), np.split(order, bounds), strict=True))


@dataclass(frozen=True)
class ReferencePool:
    """The pool's images as what any space is computed from: latents (embedded with a
    class's own fit when that class reads its budget in its fitted space) and the pixel
    descriptors ("dct", "phash", "pdq"), with the class each came from and its pixel hash
    (a class never borrows its own images or their exact copies)."""

    latents: np.ndarray  # (P, 1024) float32
    dct: np.ndarray  # (P, 63) float32 (`dct_descriptor.lowfreq_dct`)
    phash: np.ndarray  # (P, 64) bool
    pdq: np.ndarray  # (P, 256) bool (`pdq.pdq_hashes`)
    class_keys: np.ndarray  # (P,) str
    pixel_hashes: np.ndarray  # (P,) str

    def __len__(self) -> int:
        return len(self.latents)

    def others(self, class_key: str, pixel_hashes: np.ndarray) -> np.ndarray:
        """Which pool images a class may use as unrelated images: those of other classes
        whose pixels are not identical to one of the class's images. Looked up in the
        pool's index of keys and hashes (`_rows_of`), built once: comparing the pool's 4,096
        keys and hashes as strings cost 0.7 ms a class, most of a small class's lookups."""
        keys, hashes = self._rows_of
        other = np.ones(len(self), dtype=bool)
        other[keys.get(class_key, _NO_ROWS)] = False
        for h in dict.fromkeys(np.asarray(pixel_hashes).tolist()):
            rows = hashes.get(h)
            if rows is not None:
                other[rows] = False
        return other

    @functools.cached_property
    def _rows_of(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The pool's rows of each class key and of each pixel hash (the pool never changes)."""
        return _rows_by_value(self.class_keys), _rows_by_value(self.pixel_hashes)

    def as_class(
        self,
        model: ClassDensityModel | None,
        rows: np.ndarray | None = None,
        space: str | None = None,
    ) -> ClassData:
        """Pool images (all, or `rows`) as a class with `model`'s fit, to be vectorised in a
        class's space like its own images; for a `space` of one pixel descriptor ("dct",
        "phash", "pdq") only, with that descriptor alone and without latents (width 0: a
        latent space fails on them): copying the pool's 16 MB of latents for each class
        that borrows it cost 2.5 ms a class, a tenth of a small class's keep decisions."""
        take = (
            np.arange(len(self))
            if rows is None
            else np.flatnonzero(rows)
            if rows.dtype == bool
            else rows
        )
        if space in DESCRIPTOR_SPACES:  # that descriptor alone: 1.1 ms a class for all three
            latents = np.zeros((len(take), 0), np.float32)
            descriptors = {space: getattr(self, space)[take]}
        else:
            latents = self.latents[take]
            descriptors = {"dct": self.dct[take], "phash": self.phash[take], "pdq": self.pdq[take]}
        hashes = self.pixel_hashes[take]
        return ClassData(hashes, hashes, latents, model, None, descriptors)  # type: ignore[arg-type]

    @classmethod
    def empty(cls) -> ReferencePool:
        return cls(
            np.zeros((0, 1024), np.float32),  # the latent width (no torch import here)
            np.zeros((0, DIMENSIONS), np.float32),
            np.zeros((0, HASH_BITS), bool),
            np.zeros((0, PDQ_BITS), bool),
            np.zeros(0, str),
            np.zeros(0, str),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "latents": self.latents.astype(np.float32),
            "dct": self.dct.astype(np.float32),
            "phash": self.phash.astype(bool),
            "pdq": self.pdq.astype(bool),
            "class_keys": self.class_keys.astype(str),
            "pixel_hashes": self.pixel_hashes.astype(str),
        }

    @classmethod
    def from_arrays(cls, arrays) -> ReferencePool:
        return cls(
            np.asarray(arrays["latents"], dtype=np.float32),
            np.asarray(arrays["dct"], dtype=np.float32),
            np.asarray(arrays["phash"], dtype=bool),
            np.asarray(arrays["pdq"], dtype=bool),
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
    pixels = np.concatenate([take_rows(s, r) for s, r in zip(stores, rows, strict=True)])
    hashes = np.concatenate(
        [np.asarray(h, dtype=str)[r] for h, r in zip(pixel_hashes, rows, strict=True)]
    )
    return ReferencePool(
        np.asarray(encode(pixels), dtype=np.float32),
        lowfreq_dct(pixels),
        phash_bits(pixels),
        pdq_hashes(pixels).bits,
        keys,
        hashes,
    )


# ---------------------------------------------------------------------------- stored


def reference_pool_provenance(model_digest: str) -> dict[str, Any]:
    """What the stored pool records it was made from: drawn for a model, encoded with it."""
    return {
        "kind": "reference_pool",
        "model": model_digest,
        "size": POOL_SIZE,
        "holds": "latents, dct, phash, pdq",
    }


def read_reference_pool(layout: OutputLayout, current: CurrentInputs) -> ReferencePool:
    """The run's reference pool, refused unless drawn for the current model."""
    path = require_current(
        layout.reference_pool,
        reference_pool_provenance(current.model_digest),
        "reference pool",
        "materialize reference_pool (the training job) first",
    )
    with np.load(path, allow_pickle=False) as arrays:
        return ReferencePool.from_arrays(arrays)


def write_reference_pool(pool: ReferencePool, path: Path, provenance: dict) -> Path:
    stamp = np.array(json.dumps(provenance, sort_keys=True))
    return save_npz(path, **pool.to_arrays(), **{PROVENANCE_KEY: stamp})
