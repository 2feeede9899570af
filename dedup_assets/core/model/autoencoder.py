"""The paper's convolutional autoencoder (Table 1), its training loop and the encoder pass.

Images travel as a uint8 NHWC array (the catalog's pixel store); they are scaled to
[-1, 1] batch by batch on the compute device, so the store is staged once and never
decoded twice.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dedup_assets.core.data.progress import PROGRESS_EVERY_S, Throttle
from dedup_assets.core.model.adam import Adam
from dedup_assets.core.model.augment import DEFAULT_AUGMENTATION, AugmentationMix, augment
from dedup_assets.core.model.objective import TrainingObjective

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


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the loss on a held-out slice stops improving.

    The slice is `holdout` of the images (between `min_holdout` and `max_holdout`), drawn
    with the training seed and never trained on. It is scored every `check_every` images
    seen (or once per epoch if that comes first); training stops when `patience` checks
    in a row improve the best held-out loss by less than `min_delta` (relative), after
    `max_images` training images (a budget: what finding duplicates needs is reached long
    before the reconstruction stops improving, benchmarks/README.md), or after
    `max_epochs`.
    """

    max_epochs: int = 60
    holdout: float = 0.05
    min_holdout: int = 32
    max_holdout: int = 1024
    check_every: int = 4096
    patience: int = 2
    min_delta: float = 0.01
    max_images: int | None = None


@dataclass
class TrainingResult:
    """What a training run produced: the model and its measured history.

    epoch_losses: mean training loss per epoch (per check when training stops early);
    holdout_losses: (images seen, held-out loss) at every early-stopping check.
    """

    model: ConvAutoencoder
    epoch_losses: list[float] = field(default_factory=list)
    images_per_second: float = 0.0
    train_seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    images_seen: int = 0
    objective: str = "plain"
    holdout_losses: list[tuple[int, float]] = field(default_factory=list)
    stopped_because: str = ""


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


def make_optimizer(model: nn.Module, learning_rate: float) -> Adam:
    """Adam over the model's parameters (`adam.py`: torch.optim's without its 1.3 s import)."""
    return Adam(model.parameters(), lr=learning_rate)


def stage_pixels(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Put the whole uint8 store on the device once (4x smaller than float32)."""
    t = torch.from_numpy(np.ascontiguousarray(pixels))
    return t.to(device, non_blocking=True) if device.type != "cpu" else t


def contrastive_loss(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: the code of view a of image i should be nearer (cosine of the
    batch-centred codes) to view b of image i than to view b of any other image."""
    za, zb = za.flatten(1).float(), zb.flatten(1).float()
    centre = torch.cat([za, zb]).mean(dim=0, keepdim=True)
    za = nn.functional.normalize(za - centre, dim=1)
    zb = nn.functional.normalize(zb - centre, dim=1)
    logits = za @ zb.T / temperature
    labels = torch.arange(len(za), device=za.device)
    return 0.5 * (
        nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)
    )


@dataclass(frozen=True)
class InvariantLoss:
    """Denoising reconstruction plus `contrast_weight` times the contrastive term.

    views: "two" contrasts two augmented views of each image; "one" contrasts one
    augmented view with the image itself (what a near-duplicate is: a copy beside its
    original), which augments half as much. clean_grad: whether the clean image's code
    (views="one") is trained through the contrastive term too, or held as a target.
    """

    mix: AugmentationMix = DEFAULT_AUGMENTATION
    # 0.2 found as much end to end, and the gate blocked it as often: bench_contrastive.py
    contrast_weight: float = 0.05
    temperature: float = 0.1
    views: str = "two"
    clean_grad: bool = True

    def __post_init__(self) -> None:
        if self.views not in ("one", "two"):
            raise ValueError(f"views must be 'one' or 'two', got {self.views!r}")

    def __call__(
        self, model: ConvAutoencoder, x: torch.Tensor, g: torch.Generator, amp
    ) -> torch.Tensor:
        with torch.no_grad():
            a = augment(x, g, self.mix)
            b = augment(x, g, self.mix) if self.views == "two" else x
        with amp():
            za = model.encoder(a)
            if self.views == "one" and not self.clean_grad:
                with torch.no_grad():
                    zb = model.encoder(b)
            else:
                zb = model.encoder(b)
            rec = nn.functional.mse_loss(model.decoder(za).float(), x)
        return rec + self.contrast_weight * contrastive_loss(za, zb, self.temperature)


def _plain_loss(model: ConvAutoencoder, x: torch.Tensor, g: torch.Generator, amp):
    with amp():
        return nn.functional.mse_loss(model(x).float(), x)


def train_autoencoder(
    pixels: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    objective: TrainingObjective | str = TrainingObjective.plain,
    invariant: InvariantLoss | None = None,
    early_stopping: EarlyStopping | None = None,
    log: Callable[[str], None] | None = None,
    on_check: Callable[[ConvAutoencoder, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log_every_s: float = PROGRESS_EVERY_S,
) -> TrainingResult:
    """Train Table 1 with Adam, shuffling with a seeded generator.

    `pixels` is the uint8 store (N, 64, 64, 3). `amp_dtype=torch.bfloat16` turns on
    autocast. With `early_stopping`, `epochs` is ignored: training runs until the
    held-out loss stops improving (see `EarlyStopping`); without it, exactly `epochs`.
    `on_check(model, images_seen, held_out_loss)` is called at every early-stopping check.
    `should_stop()` is asked before every batch; when it says so, training ends at once with
    KeyboardInterrupt (a stop asked for, e.g. by Ctrl-C, that a library swallowed on its way).
    `log` gets a progress line (epoch, loss, held-out loss, rate) at most every
    `log_every_s` seconds, and the last epoch's with why training stopped; every loss is in
    the result (`epoch_losses`, `holdout_losses`).
    """
    if pixels.ndim != 4 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected pixels of shape (N, 64, 64, 3), got {pixels.shape}")
    if len(pixels) == 0:
        raise ValueError("cannot train the autoencoder on zero images")
    objective = TrainingObjective(objective)
    device = torch.device(device)
    torch.manual_seed(seed)
    model = ConvAutoencoder().to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, learning_rate)
    data = stage_pixels(pixels, device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    aug_generator = torch.Generator(device=device).manual_seed(seed + 1)
    loss_fn = (invariant or InvariantLoss()) if objective == "invariant" else _plain_loss
    result = TrainingResult(
        model=model,
        device=str(device),
        precision="bf16" if amp_dtype == torch.bfloat16 else "fp32",
        objective=str(objective),
    )

    def amp():
        return _autocast(device, amp_dtype)

    train_idx = torch.arange(len(pixels))
    holdout_idx = None
    if early_stopping is not None and len(pixels) >= 2 * early_stopping.min_holdout:
        es = early_stopping
        k = int(min(es.max_holdout, max(es.min_holdout, round(es.holdout * len(pixels)))))
        perm = torch.randperm(len(pixels), generator=generator)
        holdout_idx, train_idx = perm[:k].sort().values, perm[k:].sort().values

    def holdout_loss() -> float:
        # The same augmented views at every check, so the checks compare like with like.
        model.eval()
        g = torch.Generator(device=device).manual_seed(seed + 2)
        total = 0.0
        with torch.no_grad():
            for b in range(0, len(holdout_idx), batch_size):
                idx = holdout_idx[b : b + batch_size].to(device)
                x = to_unit_range(data[idx])
                total += float(loss_fn(model, x, g, amp)) * len(idx)
        model.train()
        return total / len(holdout_idx)

    n = len(train_idx)
    n_batches = math.ceil(n / batch_size)
    max_epochs = epochs if early_stopping is None else early_stopping.max_epochs
    if early_stopping is not None and early_stopping.max_images is not None:
        # The budget of images binds, not an epoch count made for all images (the held-out
        # slice is never trained on).
        max_epochs = max(max_epochs, math.ceil(early_stopping.max_images / max(n, 1)))
    check_every = min(early_stopping.check_every, n) if holdout_idx is not None else None
    best, stale, since_check, seen = math.inf, 0, 0, 0
    result.stopped_because = f"ran the {max_epochs} epochs asked for"
    if early_stopping is not None and holdout_idx is None:
        result.stopped_because = f"too few images for a held-out slice: ran {max_epochs} epochs"
    model.train()
    start = time.perf_counter()
    stop = False
    progress = Throttle(log, log_every_s) if log is not None else None
    held_out = ""  # the latest check, said with the next progress line
    for epoch in range(max_epochs):
        order = train_idx[torch.randperm(n, generator=generator)].to(device)
        total = torch.zeros((), device=device)
        done_in_epoch = 0
        for b in range(n_batches):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt("training stopped: a stop was asked for")
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = to_unit_range(data[idx])
            loss = loss_fn(model, x, aug_generator, amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
            done_in_epoch += len(idx)
            seen += len(idx)
            since_check += len(idx)
            if check_every is not None and since_check >= check_every:
                since_check = 0
                held = holdout_loss()
                result.holdout_losses.append((seen, held))
                if on_check is not None:
                    on_check(model, seen, held)
                    model.train()
                if held < best * (1 - early_stopping.min_delta):
                    best, stale = held, 0
                else:
                    stale += 1
                held_out = (
                    f"; held-out loss {held:.5f} at {seen:,} images seen (best {best:.5f}, "
                    f"{stale}/{early_stopping.patience} without gain)"
                )
                if progress is not None:  # an epoch of many images: say how far it is
                    progress(f"epoch {epoch + 1}/{max_epochs}{held_out}")
                if stale >= early_stopping.patience:
                    result.stopped_because = (
                        f"held-out loss improved by less than {early_stopping.min_delta:.0%} "
                        f"in {stale} checks in a row"
                    )
                    stop = True
                    break
            budget = early_stopping.max_images if early_stopping is not None else None
            if budget is not None and seen >= budget:
                result.stopped_because = f"reached the budget of {budget:,} training images"
                stop = True
                break
        epoch_loss = float(total) / max(done_in_epoch, 1)
        result.epoch_losses.append(epoch_loss)
        last = stop or epoch == max_epochs - 1
        if last and early_stopping is not None and not stop and holdout_idx is not None:
            result.stopped_because = f"reached the limit of {max_epochs} epochs"
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(
                f"epoch {epoch + 1}/{max_epochs}: {objective} loss {epoch_loss:.5f} "
                f"({seen / elapsed:,.0f} images/s on {device}, {result.precision}){held_out}"
                + (f"; stopped: {result.stopped_because}" if last else ""),
                final=last,
            )
        if stop:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.train_seconds = time.perf_counter() - start
    result.images_seen = seen
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
    contiguous weights and batches of 1,024. An image's latents do not depend on the batch
    it is in, as measured on this project's CPU (fp32 and bf16, batches of 1 to 257, one or
    two threads, 2026-12-05): only a batch of one image differed (oneDNN convolves it
    another way: other last bits in fp32), so a lone image is encoded beside a copy of
    itself, and a class encoded alone or with others (`assets.latents`), whole or one new
    image at a time, gets the same bits. Other devices and libraries may choose kernels by
    batch size: there the last bits may differ, never the latents' meaning.
    """
    device = torch.device(device)
    model = _channels_last_on(model, device).eval()
    out = np.empty((len(pixels), LATENT_DIM), dtype=np.float32)
    with _threads_for(len(pixels), device):
        for start in range(0, len(pixels), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size]))
            lone = len(chunk) == 1
            x = to_unit_range(chunk.to(device, non_blocking=True))
            with _autocast(device, amp_dtype):
                z = model.encode(x.repeat(2, 1, 1, 1) if lone else x)
            out[start : start + len(chunk)] = z[: len(chunk)].float().cpu().numpy()
    return out


def _channels_last_on(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on `device` with channels-last weights, converted only when some weight is
    not: `.to()` walks every module and tensor even when nothing moves (measured: 0.33 ms a
    call against 0.04 ms for this look, and a class makes two calls: latents and mirrors)."""
    for p in model.parameters():
        on = p.device == device or (device.index is None and p.device.type == device.type)
        if not on or (p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last)):
            return model.to(device).to(memory_format=torch.channels_last)
    return model


SMALL_BATCH = 64
"""Fewer images than this are encoded on one CPU thread. A class of a few images is a
small convolution that more threads do not speed up, and their synchronisation waits for
cores other processes hold: measured, one 64 px image took 2-5 ms on one thread and 11-68
ms on two, 16 images 7-19 ms against 77-103 ms (2 cores, a load of 4.5); a run of 1,000
one-image classes spent 30 of its 152 s there."""
GROUP_IMAGES = 1_024
"""Classes with fewer than SMALL_BATCH images to encode are encoded together, up to this many
images a batch (`assets.latents`, `calibration.store_small_mirrors`): 1,000 classes of 20
images were encoded in 2.5 s alone against 1.2 s in classes of 2,000 (2026-12-05); on the
CPU an image's latents are the same bits in any batch (`encode_images`)."""


@contextlib.contextmanager
def _threads_for(images: int, device: torch.device):
    """One intra-op thread for a small CPU batch (SMALL_BATCH), the setting as it was after."""
    before = torch.get_num_threads()
    if device.type != "cpu" or images >= SMALL_BATCH or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


@torch.no_grad()
def reconstruction_errors(
    model: ConvAutoencoder,
    pixels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    latents: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Each image's mean squared reconstruction error on the [-1, 1] scale (float32), at the
    precision `amp_dtype` (as the run encodes). With `latents` (the images' own, from
    `encode_images` at that precision) only the decoder runs: the same computation, half of
    it already done."""
    device = torch.device(device)
    model = _channels_last_on(model, device).eval()
    out = np.empty(len(pixels), dtype=np.float32)
    for start in range(0, len(pixels), batch_size):
        chunk = np.ascontiguousarray(pixels[start : start + batch_size])
        x = to_unit_range(torch.from_numpy(chunk).to(device))
        with _autocast(device, amp_dtype):
            if latents is None:
                y = model(x)
            else:
                z = torch.from_numpy(np.ascontiguousarray(latents[start : start + len(chunk)]))
                y = model.decoder(z.to(device).view(len(chunk), -1, 2, 2))
        out[start : start + len(chunk)] = ((y.float() - x) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
    return out


def save_state(model: ConvAutoencoder, path) -> None:
    """Store only the state dict (tensors), never a pickled module."""
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_state(path, device: torch.device | str = "cpu") -> ConvAutoencoder:
    """Load a state dict with weights_only=True, so a stored file cannot run code. The
    model is built without initialising its weights (on the meta device), which the
    state replaces whole: 18 ms of a 40 ms load.

    The model is for inference (in eval mode; every caller encodes or reconstructs, none
    trains it): a process that loads the same file again (by its stat, which a write
    changes) for the same device gets the model it loaded last, not a new one (a `dedup
    watch` update loaded it once in the command and once in each class run, 15 ms each)."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key += (str(device),)
    held = _LOADED.get(key)
    if held is not None:
        return held
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = ConvAutoencoder()
    model.load_state_dict(state, assign=True)  # strict: every tensor comes from the file
    model = model.to(device).eval()
    _LOADED.clear()  # one model held: the one of the output being worked on
    _LOADED[key] = model
    return model


_LOADED: dict[tuple, ConvAutoencoder] = {}
