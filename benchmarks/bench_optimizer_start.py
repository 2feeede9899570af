"""What a process that trains pays before its first step: `torch.optim.Adam` against the
training loop's own Adam (`dedup_assets.core.model.adam`), each in a fresh process, alternated
in pairs (the machines are shared and noisy: the ratio within a pair holds when their speed
drifts).

    python benchmarks/bench_optimizer_start.py [--pairs 5] [--out DIR]

Each process imports torch and the model, builds Table 1, then times building the optimizer
and taking one step on a batch of 8 images; it reports those seconds and whether
`torch._dynamo` got imported. Results: results/optimizer_start.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402

CHILD = """
import json, sys, time
import torch
from torch import nn
from dedup_assets.core.model.adam import Adam
from dedup_assets.core.model.autoencoder import ConvAutoencoder
torch.manual_seed(0)
model = ConvAutoencoder()
x = torch.rand(8, 3, 64, 64) * 2 - 1
start = time.perf_counter()
opt = torch.optim.Adam(model.parameters(), lr=1e-3) if sys.argv[1] == "torch" else Adam(
    model.parameters(), lr=1e-3
)
built = time.perf_counter() - start
nn.functional.mse_loss(model(x), x).backward()
opt.step()
opt.zero_grad()
print(json.dumps({"build_seconds": built, "build_and_step_seconds": time.perf_counter() - start,
                  "imports_torch_dynamo": "torch._dynamo" in sys.modules}))
"""


def one(kind: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5)
    add_out_option(p)
    args = p.parse_args()
    one("torch"), one("ours")  # warm-up: file caches
    pairs = [(one("torch"), one("ours")) for _ in range(args.pairs)]
    ratios = [o["build_and_step_seconds"] / t["build_and_step_seconds"] for t, o in pairs]
    summary = {
        kind: {
            "build_and_step_median_s": statistics.median(
                r[at]["build_and_step_seconds"] for r in pairs
            ),
            "build_median_s": statistics.median(r[at]["build_seconds"] for r in pairs),
            "imports_torch_dynamo": all(r[at]["imports_torch_dynamo"] for r in pairs),
        }
        for at, kind in enumerate(("torch.optim.Adam", "core.model.adam.Adam"))
    }
    path = write_result(
        "optimizer_start",
        {
            "pairs": [{"torch": t, "ours": o} for t, o in pairs],
            "summary": summary,
            "ratio_ours_to_torch": {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
            },
        },
        args.out,
    )
    print(
        table(
            ["optimizer", "build + first step (s, median)", "build (s)", "imports torch._dynamo"],
            [
                [k, v["build_and_step_median_s"], v["build_median_s"], v["imports_torch_dynamo"]]
                for k, v in summary.items()
            ],
        )
    )
    print(
        f"ours / torch per pair: median {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}-{max(ratios):.3f}) over {len(ratios)} pairs -> {path}"
    )


if __name__ == "__main__":
    main()
