"""The torch device and numeric precision every model step runs with (the GPU resource)."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:  # torch is imported when a device is first used: settings load fast
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"


class Precision(StrEnum):
    """auto: bf16 autocast where the device has fast bf16, else fp32."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine."""


class ComputeDevice(dg.ConfigurableResource):
    """Which torch device trains and encodes, and in which precision.

    device: `auto` (CUDA if present, else CPU), `cpu`, `cuda` or `cuda:N`; checked at
    construction. Whether the device exists is checked when it is first used, so a
    configuration naming `cuda` can be written on a machine without one.
    """

    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    precision: Precision = Precision.auto

    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise DeviceUnavailable(
                    f"device {self.device!r} was requested but CUDA is not available to this "
                    f"torch build ({torch.__version__}); use --device cpu or auto"
                )
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise DeviceUnavailable(
                    f"device {self.device!r} does not exist: "
                    f"{torch.cuda.device_count()} CUDA device(s)"
                )
        return dev

    def supports_bf16(self) -> bool:
        import torch

        from dedup_assets.core.model.autoencoder import cpu_supports_bf16

        dev = self.torch_device()
        if dev.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        return cpu_supports_bf16()

    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype for training and encoding, or None for plain fp32."""
        import torch

        if self.precision == Precision.fp32:
            return None
        if self.precision == Precision.bf16:
            if not self.supports_bf16():
                raise DeviceUnavailable(
                    f"bf16 was requested but {self.torch_device()} has no bf16 support"
                )
            return torch.bfloat16
        return torch.bfloat16 if self.supports_bf16() else None

    def describe(self) -> str:
        import torch

        dev = self.torch_device()
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
        prec = "bf16 autocast" if self.amp_dtype() is not None else "fp32"
        return f"{dev} ({name}, {torch.get_num_threads()} threads), {prec}"
