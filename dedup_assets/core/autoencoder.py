"""The paper's convolutional autoencoder (Table 1), its training loop and the encoder pass.

Images travel as a uint8 NHWC array (the catalog's pixel store); they are scaled to
[-1, 1] batch by batch on the compute device, so the store is staged once and never
decoded twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

LATENT_DIM = 1024
IMAGE_SIZE = 64

# (name, output shape, parameter count) exactly as in the paper's Table 1.
TABLE_1: tuple[tuple[str, tuple[int, int, int], int], ...] = (
    ("Conv2d-1", (32, 32, 32), 896),
    ("Conv2d-3", (64, 16, 16), 18_496),
    ("Conv2d-5", (128, 8, 8), 73_856),
    ("Conv2d-7", (256, 4, 4), 295_168),
    ("Conv2d-9", (256, 2, 2), 590_080),
    ("ConvTranspose2d-11", (256, 4, 4), 590_080),
    ("ConvTranspose2d-13", (128, 8, 8), 295_040),
    ("ConvTranspose2d-15", (64, 16, 16), 73_792),
    ("ConvTranspose2d-17", (32, 32, 32), 18_464),
    ("ConvTranspose2d-19", (3, 64, 64), 867),
)
TOTAL_PARAMETERS = 1_956_739


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1)


def _deconv(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)


class ConvAutoencoder(nn.Module):
    """Table 1: five stride-2 convolutions down to 256x2x2, five transposed ones back."""

    def __init__(self) -> None:
        super().__init__()
        widths = (3, 32, 64, 128, 256, 256)
        enc: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            enc += [_conv(cin, cout), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*enc)
        rev = widths[::-1]
        dec: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(rev[:-1], rev[1:], strict=True)):
            dec += [_deconv(cin, cout), nn.Tanh() if i == len(rev) - 2 else nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's Code(x): the 256x2x2 encoder output, flattened to 1024 values."""
        return self.encoder(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def layer_table(model: ConvAutoencoder) -> list[tuple[str, tuple[int, int, int], int]]:
    """Name, output shape and parameter count of every weighted layer, as Table 1 lists them."""
    rows = []
    x = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    index = 1
    with torch.no_grad():
        for module in [*model.encoder, *model.decoder]:
            x = module(x)
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                n_params = sum(p.numel() for p in module.parameters())
                rows.append((f"{type(module).__name__}-{index}", tuple(x.shape[1:]), n_params))
            index += 1
    return rows


def to_unit_range(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1] (the decoder ends in Tanh), channels-last."""
    x = batch_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


@dataclass
class TrainingResult:
    """What a training run produced: the model and its measured history."""

    model: ConvAutoencoder
    epoch_losses: list[float] = field(default_factory=list)
    images_per_second: float = 0.0
    train_seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    images_seen: int = 0


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_supports_bf16() -> bool:
    """True when oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_optimizer(
    model: nn.Module, learning_rate: float, device: torch.device
) -> torch.optim.Adam:
    """Adam; the fused kernel on CUDA (one launch per step instead of one per tensor)."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=device.type == "cuda")


def stage_pixels(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Put the whole uint8 store on the device once (4x smaller than float32)."""
    t = torch.from_numpy(np.ascontiguousarray(pixels))
    return t.to(device, non_blocking=True) if device.type != "cpu" else t


def train_autoencoder(
    pixels: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainingResult:
    """Train Table 1 on reconstruction (MSE, Adam), shuffling with a seeded generator.

    `pixels` is the uint8 store (N, 64, 64, 3). `amp_dtype=torch.bfloat16` turns on autocast.
    """
    if pixels.ndim != 4 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected pixels of shape (N, 64, 64, 3), got {pixels.shape}")
    if len(pixels) == 0:
        raise ValueError("cannot train the autoencoder on zero images")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = ConvAutoencoder().to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, learning_rate, device)
    data = stage_pixels(pixels, device)
    n = len(pixels)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = TrainingResult(
        model=model,
        device=str(device),
        precision="bf16" if amp_dtype == torch.bfloat16 else "fp32",
    )
    n_batches = math.ceil(n / batch_size)
    model.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total = torch.zeros((), device=device)
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = to_unit_range(data[idx])
            with _autocast(device, amp_dtype):
                loss = nn.functional.mse_loss(model(x).float(), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        epoch_loss = float(total) / n
        result.epoch_losses.append(epoch_loss)
        if log is not None:
            elapsed = time.perf_counter() - start
            log(
                f"epoch {epoch + 1}/{epochs}: loss {epoch_loss:.5f} "
                f"({(epoch + 1) * n / elapsed:,.0f} images/s on {device}, {result.precision})"
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.train_seconds = time.perf_counter() - start
    result.images_seen = epochs * n
    result.images_per_second = result.images_seen / max(result.train_seconds, 1e-9)
    model.eval()
    return result


@torch.no_grad()
def encode_images(
    model: ConvAutoencoder,
    pixels: np.ndarray,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Latent vectors (N, 1024) float32 of a uint8 store, in input order.

    Channels-last weights and batches of 256 measured 22% faster on the CPU than
    contiguous weights and batches of 1,024.
    """
    device = torch.device(device)
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    out = np.empty((len(pixels), LATENT_DIM), dtype=np.float32)
    for start in range(0, len(pixels), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size]))
        x = to_unit_range(chunk.to(device, non_blocking=True))
        with _autocast(device, amp_dtype):
            z = model.encode(x)
        out[start : start + len(chunk)] = z.float().cpu().numpy()
    return out


@torch.no_grad()
def reconstruct(
    model: ConvAutoencoder, pixels: np.ndarray, *, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, float]:
    """Reconstructions as uint8 NHWC and their mean squared error on the [-1, 1] scale."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = to_unit_range(torch.from_numpy(np.ascontiguousarray(pixels)).to(device))
    y = model(x)
    mse = float(nn.functional.mse_loss(y, x))
    images = ((y.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.cpu().numpy(), mse


def save_state(model: ConvAutoencoder, path) -> None:
    """Store only the state dict (tensors), never a pickled module."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_state(path, device: torch.device | str = "cpu") -> ConvAutoencoder:
    """Load a state dict with weights_only=True, so a stored file cannot run code."""
    model = ConvAutoencoder()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()
