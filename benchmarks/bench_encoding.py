"""Encoding throughput: images/second of the encoder pass (the latents asset's work).

python benchmarks/bench_encoding.py [--device cpu|cuda] [--images N] [--batch-size B] [--out DIR]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402
from dedup_assets.core.model.autoencoder import ConvAutoencoder, encode_images  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    add_out_option(p)
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    n = args.images or (27_000 if gpu else 8_192)
    batch = args.batch_size or (4_096 if gpu else 256)
    pixels = np.random.default_rng(0).integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
    model = ConvAutoencoder().to(device).eval()
    rows, record = [], {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        encode_images(model, pixels[:batch], batch_size=batch, device=device, amp_dtype=amp)
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encode_images(model, pixels, batch_size=batch, device=device, amp_dtype=amp)
            rates.append(n / (time.perf_counter() - start))
        record[name] = rates
        rows.append([device.type, name, batch, n, statistics.median(rates)])
    print(table(["device", "precision", "batch", "images", "images/s"], rows))
    payload = {"batch_size": batch, "images": n, "images_per_second": record}
    print(f"-> {write_result(f'encoding_{device.type}', payload, args.out)}")


if __name__ == "__main__":
    main()
