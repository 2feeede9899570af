"""The torch device and numeric precision every model step runs with."""

from __future__ import annotations

import re

import dagster as dg
import torch

from dedup_assets.core.autoencoder import cpu_supports_bf16

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class ComputeDevice(dg.ConfigurableResource):
    """Which torch device trains and encodes, and in which precision.

    device: `auto` (CUDA if present, else CPU), `cpu`, `cuda` or `cuda:N`.
    precision: `auto` (bf16 autocast where the device has fast bf16, else fp32), `fp32`, `bf16`.
    """

    device: str = "auto"
    precision: str = "auto"

    def torch_device(self) -> torch.device:
        if not _DEVICE_PATTERN.match(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"device {self.device!r} was requested but CUDA is not available to this "
                    f"torch build ({torch.__version__}); use device='cpu' or 'auto'"
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise RuntimeError(
                    f"device {self.device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)"
                )
        return dev

    def supports_bf16(self) -> bool:
        dev = self.torch_device()
        if dev.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        return cpu_supports_bf16()

    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype for training, or None for plain fp32."""
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.precision == "fp32":
            return None
        if self.precision == "bf16":
            if not self.supports_bf16():
                raise RuntimeError(
                    f"bf16 was requested but {self.torch_device()} has no bf16 support"
                )
            return torch.bfloat16
        return torch.bfloat16 if self.supports_bf16() else None

    def describe(self) -> str:
        dev = self.torch_device()
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        prec = "bf16 autocast" if self.amp_dtype() is not None else "fp32"
        return f"{dev} ({name}, {torch.get_num_threads()} threads), {prec}"
