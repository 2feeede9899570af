"""The PDQ baseline (`core.decision.pdq`): copies near, unrelated images far, and the
blockwise Hamming distances equal to counting differing bits pair by pair."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from dedup_assets.core.decision import pdq
from dedup_assets.core.decision.pdq import (
    HASH_BITS,
    hamming_matrix,
    nearest_hamming,
    pack_bits,
    pdq_hashes,
    pdq_similarity,
)


def _scene(seed: int, size: int = 128) -> np.ndarray:
    """A smooth random colour field with a few blobs: structure at several scales."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(4):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _resized_brighter(img: np.ndarray) -> np.ndarray:
    pil = Image.fromarray(img).resize((96, 96), Image.BILINEAR).resize(img.shape[:2], Image.BICUBIC)
    return np.asarray(ImageEnhance.Brightness(pil).enhance(1.15))


def test_copies_are_near_and_unrelated_images_far():
    originals = np.stack([_scene(s) for s in range(6)])
    copies = np.stack([_resized_brighter(x) for x in originals])
    h = pdq_hashes(np.concatenate([originals, originals, copies]))
    assert h.bits.shape == (18, HASH_BITS) and (h.quality > 0).all()
    d = hamming_matrix(h.packed[:6], h.packed)
    assert (np.diag(d[:, 6:12]) == 0).all()  # exact copies: distance 0
    near = np.diag(d[:, 12:18])
    assert (near <= 31).all(), near  # PDQ's own match distance
    unrelated = d[:, :6][~np.eye(6, dtype=bool)]
    assert unrelated.min() > 64, unrelated  # far: an unrelated pair differs in ~half the bits
    assert near.max() < unrelated.min()
    assert pdq_similarity(0) == 1.0 and pdq_similarity(128) == 0.5


def test_blockwise_distances_equal_counting_bits_pair_by_pair(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.random((37, HASH_BITS)) < 0.5
    b = rng.random((53, HASH_BITS)) < 0.5
    b[5] = a[3]
    want = (a[:, None, :] != b[None, :, :]).sum(axis=2)
    monkeypatch.setattr(pdq, "MAX_BLOCK_BYTES", 4 * 53 * 8 * 5)  # 5 rows a block: 8 blocks
    assert np.array_equal(hamming_matrix(pack_bits(a), pack_bits(b)), want)
    dist, at = nearest_hamming(pack_bits(a), pack_bits(b))
    assert np.array_equal(dist, want.min(axis=1))
    assert np.array_equal(want[np.arange(37), at], dist)
    assert dist[3] == 0 and at[3] == 5
    # excluding the one identical reference leaves query 3 its next nearest
    exclude = np.full(37, -1)
    exclude[3] = 5
    dist2, at2 = nearest_hamming(pack_bits(a), pack_bits(b), exclude=exclude)
    assert at2[3] != 5 and dist2[3] == np.sort(want[3])[1]
    assert np.array_equal(np.delete(dist2, 3), np.delete(dist, 3))
    empty = nearest_hamming(pack_bits(a), pack_bits(b[:0]))
    assert (empty[0] == HASH_BITS + 1).all() and (empty[1] == -1).all()
