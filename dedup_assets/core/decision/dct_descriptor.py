"""A low-frequency DCT descriptor of an image's pixels: what light, noise and re-encoding
leave alone.

The descriptor is the first step of a perceptual hash kept as numbers: the luma of the
64x64 image averaged to 32x32, its orthonormal 2-D DCT-II, and the DCT_SIZE x DCT_SIZE
lowest frequencies without the DC term, scaled to unit length. Dropping DC removes a
brightness offset and the unit length removes a contrast or brightness factor, so both
leave the descriptor exactly unchanged; noise and JPEG sit mostly in the high frequencies,
blur removes only those. What it does not see through is a crop (the frequencies move),
which is where the autoencoder's invariant codes are strong: `similarity` joins the two.

pHash thresholds these same coefficients at their median into 64 bits; keeping them as
numbers measured better on planted EuroSAT (AP of margins 0.968 against pHash's 0.885),
and the computation is two small matrix products per image, batched.
"""

from __future__ import annotations

import numpy as np

from dedup_assets.core.data.mapped import release_rows

DCT_SIZE = 8
DIMENSIONS = DCT_SIZE * DCT_SIZE - 1
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
CHUNK = 64  # images at a time: their float copy stays in cache (10x faster than 4,096)


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix of size n (rows are frequencies)."""
    k = np.arange(n)
    m = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


# Averaging 2x2 blocks and taking the lowest DCT_SIZE frequencies of the 32x32 result is
# one linear map per axis: the first rows of the DCT matrix times the pairwise average.
_LOW = (_dct_matrix(32)[:DCT_SIZE] @ np.repeat(np.eye(32, dtype=np.float32), 2, axis=1) / 2).astype(
    np.float32
)  # (DCT_SIZE, 64)


def lowfreq_dct(pixels: np.ndarray) -> np.ndarray:
    """(n, DIMENSIONS) float32 unit descriptors of uint8 NHWC images of 64x64 (a flat image,
    with no low frequency but DC, gets a zero row), each a function of its image alone, to
    the bit. Chunked: `pixels` may be memory-mapped."""
    n = len(pixels)
    if n and pixels.shape[1:] != (64, 64, 3):
        raise ValueError(f"expected pixels of shape (N, 64, 64, 3), got {pixels.shape}")
    out = np.zeros((n, DIMENSIONS), dtype=np.float32)
    for start in range(0, n, CHUNK):
        chunk = np.asarray(pixels[start : start + CHUNK]).astype(np.float32)
        # Element by element, not a matrix-vector product (whose rounding follows the
        # chunk's size): an image's descriptor is the same whatever images share its chunk,
        # so one stored by `dct_store` is the one computing it again gives.
        grey = chunk[..., 0] * _LUMA[0] + chunk[..., 1] * _LUMA[1] + chunk[..., 2] * _LUMA[2]
        coeff = np.matmul(np.matmul(_LOW, grey), _LOW.T)  # (b, DCT_SIZE, DCT_SIZE)
        flat = coeff.reshape(len(coeff), -1)[:, 1:]
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        # Below this the image is flat to rounding: no direction to compare.
        np.divide(flat, norms, out=out[start : start + len(flat)], where=norms > 1e-3)
        release_rows(pixels, start, start + CHUNK)  # a mapped store: hold a chunk, not all
    return out
