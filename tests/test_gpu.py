"""GPU paths of the numerical core; skipped without CUDA (CI has none; run on a GPU host)."""

import numpy as np
import pytest
import torch

from dedup_assets.core.model.autoencoder import encode_images, stage_pixels, train_autoencoder

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"
)


def _pixels(n: int = 512) -> np.ndarray:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    base = (ramp[None, :, None, None] * rng.random((n, 1, 1, 3))).astype(np.uint8)
    return np.broadcast_to(base, (n, 64, 64, 3)).copy()


def test_store_is_staged_on_the_device_once():
    staged = stage_pixels(_pixels(8), torch.device("cuda"))
    assert staged.is_cuda and staged.dtype == torch.uint8


def test_bf16_training_on_cuda_lowers_the_loss():
    result = train_autoencoder(
        _pixels(), epochs=4, batch_size=128, device="cuda", amp_dtype=torch.bfloat16
    )
    assert result.device.startswith("cuda") and result.precision == "bf16"
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert next(result.model.parameters()).is_cuda


def test_cuda_encoding_matches_cpu_encoding():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = train_autoencoder(_pixels(64), epochs=1, batch_size=32, device="cpu").model
    px = _pixels(64)
    cpu = encode_images(model, px, device="cpu")
    gpu = encode_images(model, px, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
