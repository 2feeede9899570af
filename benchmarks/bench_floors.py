"""The floors every other figure is read against: this machine's measured matrix-product
rate (fp32 and bf16), its memory bandwidth, and the autoencoder's FLOPs per image.

    python benchmarks/bench_floors.py [--device cpu|cuda] [--gemm-size N] [--out DIR]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402
from dedup_assets.core.model.autoencoder import ConvAutoencoder  # noqa: E402


def model_flops() -> dict:
    """Multiply-adds x 2 of one image through the encoder and the decoder."""
    model = ConvAutoencoder()
    counts = {"encoder": 0, "decoder": 0}
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        for part in ("encoder", "decoder"):
            for m in getattr(model, part):
                y = m(x)
                if isinstance(m, nn.Conv2d):
                    counts[part] += 2 * y.numel() * m.in_channels * 9
                elif isinstance(m, nn.ConvTranspose2d):
                    counts[part] += 2 * x.numel() * m.out_channels * 9
                x = y
    forward = counts["encoder"] + counts["decoder"]
    return {"encode": counts["encoder"], "forward": forward, "train_step": 3 * forward}


def best_time(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gemm-size", type=int, default=None, help="n of the n x n products")
    add_out_option(p)
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n = args.gemm_size or (8192 if dev.type == "cuda" else 2048)
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)

        def mm(a=a, b=b):
            a @ b
            sync()

        mm()
        rates[f"gemm_{name}_gflops"] = 2 * n**3 / best_time(mm) / 1e9
    x = np.random.default_rng(0).random(64 * 2**20 // 8)  # 64 MiB: past the caches
    y = np.empty_like(x)
    rates["numpy_copy_gb_per_s"] = 2 * x.nbytes / best_time(lambda: np.copyto(y, x)) / 1e9
    flops = model_flops()
    rows = [[k, v] for k, v in rates.items()] + [
        [f"model {k} MFLOP/image", v / 1e6] for k, v in flops.items()
    ]
    rows.append(
        ["train images/s at bf16 GEMM peak", rates["gemm_bf16_gflops"] * 1e9 / flops["train_step"]]
    )
    rows.append(
        ["encode images/s at fp32 GEMM peak", rates["gemm_fp32_gflops"] * 1e9 / flops["encode"]]
    )
    print(table(["quantity", "value"], rows))
    payload = {"gemm_size": n, "rates": rates, "model_flops_per_image": flops}
    print(f"-> {write_result(f'floors_{dev.type}', payload, args.out)}")


if __name__ == "__main__":
    main()
