"""Seeded, batched image augmentations: the nuisances that make near-duplicates.

A near-duplicate is what a data pipeline's crop, resize, re-encode or colour step makes
of an image. The invariant training objective (`core/model/autoencoder.py`) shows the encoder
two such views of every image and asks for the same code, so each transform here mimics
one of those steps, with ranges close to what `core/quality/planting.py` plants (planted crops keep
85-95% of a side and brightness and contrast change by 10-25%, a little beyond these; the
measured recall per transform is in benchmarks/README.md):

- `crop_shift`: keep 90-100% of each side at a random offset, shifted by up to 5% more,
  resampled back to the full size (bilinear, reflected at the border);
- `brightness_contrast`: brightness and contrast each scaled by up to +-15%;
- `jpeg`: JPEG re-encoding at quality 30-90, computed the way JPEG does it (YCbCr, 4:2:0
  chroma, 8x8 DCT quantised with the IJG tables scaled by quality), so batches never
  leave the device;
- `noise`: Gaussian noise with sigma up to 8/255;
- `blur`: Gaussian blur with sigma 0.3-1.2 pixels;
- `hflip`: horizontal flip, off by default (some datasets' classes depend on orientation).

Every function takes and returns float NCHW batches in [-1, 1] (the autoencoder's input
scale) of the same shape and dtype, and draws every random number from the given
`torch.Generator`, so a seed fixes the result. Each image draws its own parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch.nn import functional as F

__all__ = [
    "DEFAULT_AUGMENTATION",
    "TRANSFORM_NAMES",
    "AugmentationMix",
    "augment",
    "blur",
    "brightness_contrast",
    "crop_shift",
    "hflip",
    "jpeg",
    "noise",
]


def _uniform(g: torch.Generator, n: int, low: float, high: float, like: torch.Tensor):
    return low + (high - low) * torch.rand(n, generator=g, device=g.device).to(like)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def crop_shift(
    x: torch.Tensor, g: torch.Generator, max_crop: float = 0.10, max_shift: float = 0.05
) -> torch.Tensor:
    """Crop up to `max_crop` of each side at a random offset, shift by up to `max_shift`
    of a side, and resample back to the input size."""
    n = len(x)
    sx = 1.0 - _uniform(g, n, 0.0, max_crop, x)
    sy = 1.0 - _uniform(g, n, 0.0, max_crop, x)
    # Normalised coordinates span 2 units per side: the window may move (1 - s) inside the
    # image, and 2 * max_shift beyond it (the border is reflected).
    tx = (1.0 - sx) * _uniform(g, n, -1, 1, x) + 2 * max_shift * _uniform(g, n, -1, 1, x)
    ty = (1.0 - sy) * _uniform(g, n, -1, 1, x) + 2 * max_shift * _uniform(g, n, -1, 1, x)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp_(-1, 1)


def brightness_contrast(x: torch.Tensor, g: torch.Generator, strength: float = 0.15):
    """Contrast about each image's mean grey, then brightness, each by up to +-strength."""
    n = len(x)
    y = (x + 1) * 0.5
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    c = _per_image(_uniform(g, n, 1 - strength, 1 + strength, x))
    b = _per_image(_uniform(g, n, 1 - strength, 1 + strength, x))
    y = ((y - mean) * c + mean) * b
    return (y.clamp(0, 1) * 2 - 1).to(x.dtype)


def noise(x: torch.Tensor, g: torch.Generator, max_sigma: float = 8 / 255):
    """Add Gaussian noise with a per-image sigma up to `max_sigma` (on the 0-1 scale)."""
    sigma = _per_image(_uniform(g, len(x), 0.0, max_sigma, x)) * 2  # [-1, 1] is twice as wide
    eps = torch.randn(x.shape, generator=g, device=g.device).to(x)
    return (x + sigma * eps).clamp_(-1, 1)


def blur(x: torch.Tensor, g: torch.Generator, low: float = 0.3, high: float = 1.2):
    """Separable Gaussian blur with a per-image sigma in [low, high] pixels."""
    n, c, h, w = x.shape
    radius = 3
    sigma = _uniform(g, n, low, high, x).view(n, 1)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device).view(1, -1)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, 7)
    y = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w).clamp_(-1, 1)


def hflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror left to right (the generator is unused; kept for a uniform signature)."""
    return x.flip(-1)


# IJG base quantisation tables (ITU T.81 Annex K), scaled by quality as libjpeg does.
_LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32  # fmt: skip


def _dct_matrix(device, dtype) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * k.view(1, -1) + 1) * k.view(-1, 1) * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(device=device, dtype=dtype)


def _quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """(n, 2, 8, 8) luma and chroma tables for per-image qualities in [1, 100]."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q).view(-1, 1, 1)
    base = torch.tensor([_LUMA, _CHROMA], dtype=q.dtype, device=q.device)
    return torch.floor((base * scale + 50) / 100).clamp(min=1).view(-1, 2, 8, 8)


def _blockwise(planes: torch.Tensor, fn) -> torch.Tensor:
    """Apply fn to the (n, c, hb, wb, 8, 8) 8x8 blocks of (n, c, h, w) planes."""
    n, c, h, w = planes.shape
    blocks = planes.view(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    out = fn(blocks)
    return out.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def jpeg(x: torch.Tensor, g: torch.Generator, low: int = 30, high: int = 90) -> torch.Tensor:
    """JPEG compression at a per-image quality in [low, high] (height and width must be
    multiples of 16, as 4:2:0 chroma needs)."""
    n, c, h, w = x.shape
    if c != 3 or h % 16 or w % 16:
        raise ValueError(f"jpeg needs RGB with sides divisible by 16, got {tuple(x.shape)}")
    dtype = torch.float32
    rgb = (x.to(dtype) + 1) * 127.5
    r, gr, b = rgb.unbind(1)
    y = 0.299 * r + 0.587 * gr + 0.114 * b
    cb = -0.168736 * r - 0.331264 * gr + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * gr - 0.081312 * b + 128
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # 4:2:0 subsampling
    quality = torch.randint(low, high + 1, (n,), generator=g, device=g.device).to(x.device)
    tables = _quant_tables(quality.to(dtype))
    d = _dct_matrix(x.device, dtype)

    def quantise(table: torch.Tensor):
        def fn(blocks: torch.Tensor) -> torch.Tensor:
            coeff = d @ (blocks - 128) @ d.T
            t = table.view(n, 1, 1, 1, 8, 8)
            return d.T @ (torch.round(coeff / t) * t) @ d + 128

        return fn

    y = _blockwise(y.unsqueeze(1), quantise(tables[:, 0]))
    chroma = _blockwise(chroma, quantise(tables[:, 1]))
    chroma = F.interpolate(chroma, scale_factor=2, mode="nearest")
    cb, cr = chroma[:, 0] - 128, chroma[:, 1] - 128
    y = y[:, 0]
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    out = torch.round(out).clamp_(0, 255)
    return (out / 127.5 - 1).to(x.dtype)


TRANSFORMS = {
    "crop_shift": crop_shift,
    "brightness_contrast": brightness_contrast,
    "jpeg": jpeg,
    "noise": noise,
    "blur": blur,
    "hflip": hflip,
}
TRANSFORM_NAMES: tuple[str, ...] = tuple(TRANSFORMS)


@dataclass(frozen=True)
class AugmentationMix:
    """The probability that each transform is applied to an image, in the listed order.

    The defaults are the one mix measured so far (benchmarks/README.md, "Invariant
    training"); `hflip` is off because some datasets' classes depend on orientation.
    """

    crop_shift: float = 0.8
    brightness_contrast: float = 0.8
    jpeg: float = 0.5
    noise: float = 0.3
    blur: float = 0.3
    hflip: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            p = getattr(self, f.name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probability of {f.name} must be in [0, 1], got {p}")


DEFAULT_AUGMENTATION = AugmentationMix()


def augment(
    x: torch.Tensor, g: torch.Generator, mix: AugmentationMix = DEFAULT_AUGMENTATION
) -> torch.Tensor:
    """One random view of each image: every transform of `mix`, in order, applied to each
    image with its probability (a transform is computed only for the images that draw it:
    JPEG, noise and blur at 0.3-0.5 cost a third to a half of the whole batch's)."""
    out = x
    for name, fn in TRANSFORMS.items():
        p = getattr(mix, name)
        if p <= 0:
            continue
        chosen = torch.rand(len(x), generator=g, device=g.device).to(x.device) < p
        at = chosen.nonzero().squeeze(1)
        if len(at) == 0:
            continue
        if len(at) == len(x):
            out = fn(out, g)
            continue
        if out is x:
            out = x.clone()
        out[at] = fn(out[at], g)
    return out
