"""The PDQ baseline: Meta's 256-bit perceptual hash (the `pdqhash` package), compared by
Hamming distance, blockwise.

PDQ is the weight-free hash made for finding copies across collections (Meta's
ThreatExchange matches it at distance <= 31 of 256): a 64x64 luma image after Jarosz
filters, its 16x16 lowest DCT frequencies thresholded at their median. It stands beside
pHash (`core.decision.phash`, 64 bits) as the strongest baseline without trained weights;
the benchmarks compare the latent codes with both (benchmarks/bench_leakage.py), and the
ground-truth evaluation scores it as the method `pdq` (`class_decision`: its bits as unit
vectors by `phash.hash_vectors`, dot product 1 - Hamming/256, `pdq_similarity`).

Hashes are packed 8 bits a byte (`np.packbits`) and viewed as four uint64 words, so the
Hamming distance of two images is four XORs and popcounts (`np.bitwise_count`); a block of
queries against every reference is one broadcast of (rows, refs, 4) words, with rows
chosen so the block stays under MAX_BLOCK_BYTES: memory grows with the number of images,
never with their square, and no pair is visited by a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HASH_BITS = 256
WORDS = HASH_BITS // 64
MAX_BLOCK_BYTES = 64 * 2**20  # one block of XORed words: 64 MiB at most


@dataclass(frozen=True)
class PdqHashes:
    """(n, 256) bool hash bits and (n,) PDQ quality (0-100; under 50 the image is too flat
    for its hash to mean much, as PDQ's own documentation warns)."""

    bits: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:
        return len(self.bits)

    @property
    def packed(self) -> np.ndarray:
        return pack_bits(self.bits)


def pdq_hashes(pixels: np.ndarray) -> PdqHashes:
    """PDQ of each uint8 RGB image (n, H, W, 3); `pixels` may be memory-mapped (read one
    image at a time). About 50 us an image at 64x64."""
    import pdqhash  # deferred: only the evaluation, its reference pool and the benchmarks

    n = len(pixels)
    bits = np.zeros((n, HASH_BITS), dtype=bool)
    quality = np.zeros(n, dtype=np.int16)
    for i in range(n):
        h, q = pdqhash.compute(np.ascontiguousarray(pixels[i], dtype=np.uint8))
        bits[i] = np.asarray(h) != 0
        quality[i] = q
    return PdqHashes(bits, quality)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, 256) bool -> (n, 4) uint64 words (the same bits, 8 a byte, big-endian within
    each byte as `np.packbits` writes them; only XOR and popcount read them)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2 or bits.shape[1] % 64:
        raise ValueError(f"expected (n, k*64) bits, got {bits.shape}")
    return np.ascontiguousarray(np.packbits(bits, axis=1)).view(np.uint64)


def _rows_per_block(refs: int, words: int) -> int:
    return int(max(1, MAX_BLOCK_BYTES // max(1, refs * words * 8)))


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All Hamming distances (len(a), len(b)) int32 between packed hashes (`pack_bits`);
    built block by block (use only where the result itself fits in memory)."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    out = np.empty((len(a), len(b)), dtype=np.int32)
    step = _rows_per_block(len(b), a.shape[1] if a.ndim == 2 else WORDS)
    for start in range(0, len(a), step):
        x = a[start : start + step, None, :] ^ b[None, :, :]
        out[start : start + step] = np.bitwise_count(x).sum(axis=2, dtype=np.int32)
    return out


def nearest_hamming(
    queries: np.ndarray,
    refs: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's smallest Hamming distance to any reference, and that reference's index
    (HASH_BITS + 1 and -1 without references), blockwise: memory is one block of
    MAX_BLOCK_BYTES, whatever the sizes. `exclude` (len(queries),) names one reference per
    query it may not match (-1: none), e.g. itself when queries and refs are one set."""
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    refs = np.ascontiguousarray(refs, dtype=np.uint64)
    n, m = len(queries), len(refs)
    words = queries.shape[1] if queries.ndim == 2 else WORDS
    dist = np.full(n, words * 64 + 1, dtype=np.int32)
    at = np.full(n, -1, dtype=np.int64)
    if n == 0 or m == 0:
        return dist, at
    step = _rows_per_block(m, words)
    for start in range(0, n, step):
        d = np.bitwise_count(queries[start : start + step, None, :] ^ refs[None, :, :]).sum(
            axis=2, dtype=np.int32
        )
        if exclude is not None:
            ex = np.asarray(exclude[start : start + step])
            rows = np.flatnonzero(ex >= 0)
            d[rows, ex[rows]] = words * 64 + 1
        best = d.argmin(axis=1)
        dist[start : start + len(d)] = d[np.arange(len(d)), best]
        at[start : start + len(d)] = best
    return dist, at


def pdq_similarity(distance: np.ndarray | int) -> np.ndarray:
    """1 - distance / 256: a similarity on the same scale as the other methods' (1: same
    hash; an unrelated pair sits near 0.5)."""
    return 1.0 - np.asarray(distance, dtype=np.float64) / HASH_BITS
