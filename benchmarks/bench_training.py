"""Training throughput: the pipeline's training step against a bare PyTorch loop.

Both train the same Table 1 model with the same batch size, precision and optimizer, in the
same process, alternating so machine noise hits both; the ratio pipeline / bare is the
figure of merit (goal: >= 0.9 on the CPU, >= 0.5 on a GPU). The bare loop holds the data
pre-scaled in float32 on the device; the pipeline stages the uint8 store and scales each
batch on the device.

    python benchmarks/bench_training.py [--device cpu|cuda] [--images N] [--batch-size B]
        [--epochs E] [--precision bf16|fp32] [--repeats R] [--out DIR]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402
from dedup_assets.core.model.autoencoder import ConvAutoencoder, make_optimizer, train_autoencoder  # noqa: E402


def bare_loop(
    data: torch.Tensor, epochs: int, batch_size: int, amp: torch.dtype | None, device
) -> float:
    """Images/second of the plainest loop: pre-scaled float data, random batches."""
    model = ConvAutoencoder().to(device).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, 1e-3)
    n = len(data)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, device=device)
        for b in range(0, n, batch_size):
            x = data[order[b : b + batch_size]]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = nn.functional.mse_loss(model(x).float(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync()
    return epochs * n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--repeats", type=int, default=3)
    add_out_option(p)
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    n = args.images or (27_000 if gpu else 4_096)
    batch = args.batch_size or (2_048 if gpu else 128)
    epochs = args.epochs or (3 if gpu else 1)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    data = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    data = data.contiguous(memory_format=torch.channels_last)

    def pipeline() -> float:
        return train_autoencoder(
            pixels, epochs=epochs, batch_size=batch, device=device, amp_dtype=amp
        ).images_per_second

    bare_loop(data[: batch * 4], 1, batch, amp, device)  # warm-up: kernels, allocator
    pipeline_runs, bare_runs = [], []
    for _ in range(args.repeats):
        bare_runs.append(bare_loop(data, epochs, batch, amp, device))
        pipeline_runs.append(pipeline())
    bare, pipe = statistics.median(bare_runs), statistics.median(pipeline_runs)
    rows = [[device.type, args.precision, batch, n * epochs, bare, pipe, pipe / bare]]
    print(
        table(
            ["device", "precision", "batch", "images/run", "bare img/s", "pipeline img/s", "ratio"],
            rows,
        )
    )
    path = write_result(
        f"training_{device.type}_{args.precision}",
        {
            "device": str(device),
            "precision": args.precision,
            "batch_size": batch,
            "images": n,
            "epochs": epochs,
            "bare_images_per_second": bare_runs,
            "pipeline_images_per_second": pipeline_runs,
            "ratio_median": pipe / bare,
        },
        args.out,
    )
    print(f"-> {path}")


if __name__ == "__main__":
    main()
