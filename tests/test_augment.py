"""Augmentations (core/model/augment.py): shape, range, dtype, seeding, and JPEG fidelity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dedup_assets.core.model import augment as A
from dedup_assets.core.quality.demo_data import generate_demo_dataset


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> torch.Tensor:
    """Twelve textured 64x64 demo images as a float NCHW batch in [-1, 1]."""
    root = tmp_path_factory.mktemp("aug")
    generate_demo_dataset(root / "d", seed=2, per_class=2, duplicate_fraction=0.0)
    files = sorted(p for p in (root / "d").rglob("*.png") if "broken" not in p.name)[:12]
    arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", A.TRANSFORM_NAMES)
def test_each_transform_keeps_shape_range_dtype_and_is_seeded(batch, name):
    fn = A.TRANSFORMS[name]
    out = fn(batch, _g(1))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    assert torch.equal(out, fn(batch, _g(1))), "same seed, same result"
    change = float((out - batch).abs().mean()) * 127.5  # grey levels
    assert change > 0.5, f"{name} left the images unchanged ({change:.2f})"
    if name != "hflip":  # the only transform without random parameters
        assert not torch.equal(out, fn(batch, _g(2))), "another seed, another result"
    # A near-duplicate, not another image: within 25 grey levels on average (a flip moves
    # pixels, not values, so it is checked on the mirrored image).
    base = batch.flip(-1) if name == "hflip" else batch
    assert float((out - base).abs().mean()) * 127.5 < 25


@pytest.mark.parametrize("quality", [30, 60, 90])
def test_jpeg_matches_pillow_at_the_same_quality(batch, quality):
    ours = A.jpeg(batch, _g(), quality, quality)
    u8 = ((batch + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    pil = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        pil.append(np.asarray(Image.open(buf).convert("RGB")))
    pil_t = torch.from_numpy(np.stack(pil)).permute(0, 3, 1, 2).float() / 127.5 - 1
    to_grey = 127.5
    ours_err = float((ours - batch).abs().mean()) * to_grey
    pil_err = float((pil_t - batch).abs().mean()) * to_grey
    assert abs(ours_err - pil_err) < 0.25 * pil_err + 0.3, (ours_err, pil_err)
    assert float((ours - pil_t).abs().mean()) * to_grey < 1.5


def test_jpeg_rejects_sizes_it_cannot_block():
    with pytest.raises(ValueError, match="divisible by 16"):
        A.jpeg(torch.zeros(1, 3, 20, 20), _g())


def test_mix_applies_each_transform_with_its_probability(batch):
    assert torch.equal(A.augment(batch, _g(), A.AugmentationMix(*(0.0,) * 6)), batch)
    only_flip = A.AugmentationMix(0, 0, 0, 0, 0, 1.0)
    assert torch.equal(A.augment(batch, _g(), only_flip), batch.flip(-1))
    out = A.augment(batch, _g(3))
    assert out.shape == batch.shape and torch.equal(out, A.augment(batch, _g(3)))
    # Each image draws its own: with p = 0.5 some images flip and some do not.
    half = A.augment(batch, _g(5), A.AugmentationMix(0, 0, 0, 0, 0, 0.5))
    flipped = [torch.equal(h, b.flip(-1)) for h, b in zip(half, batch, strict=True)]
    assert 0 < sum(flipped) < len(batch)
    with pytest.raises(ValueError, match="probability of jpeg"):
        A.AugmentationMix(jpeg=1.5)


def test_empty_and_single_image_batches(batch):
    for n in (0, 1):
        out = A.augment(batch[:n], _g())
        assert out.shape == (n, 3, 64, 64)
