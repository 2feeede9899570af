"""The blocked similarity join against a plain matrix product of the same size.

For classes of 1,000 to 100,000 vectors: the time of `pairs_above` (all pairs over T)
and of `greedy_keep` (the keep decision), against the floor, the product X @ X.T of the
same vectors computed in the same row blocks (a single n x n product would need n^2 floats:
40 GB at 100,000). Peak memory (tracemalloc, which sees numpy's buffers) must grow linearly
with n. The ratio is floor time / join time: >= 0.8 is the goal.

This measures the raw join on synthetic vectors, so it calls `keep_policy.greedy_keep`
directly; a class's decision (exact copies first, then this keep) is
`class_decision.decide_class`, which bench_end_to_end.py times on real images.

    python benchmarks/bench_join.py [--sizes 1000,3000,10000,30000,100000] [--dims 64] [--out DIR]
"""

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402
from dedup_assets.core.decision.keep_policy import greedy_keep  # noqa: E402
from dedup_assets.core.decision.similarity import DEFAULT_BLOCK, l2_normalize, pairs_above  # noqa: E402

HEADERS = [
    "n",
    "d",
    "floor s",
    "join s",
    "join ratio",
    "keep s",
    "keep ratio",
    "join MiB",
    "keep MiB",
    "floor GFLOP/s",
]


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors with 5% planted near-duplicates, so the join has pairs to return."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    k = n // 20
    src = rng.integers(0, n - k, size=k)
    x[n - k :] = x[src] + 0.1 * rng.standard_normal((k, d), dtype=np.float32)
    return l2_normalize(x)


def floor_product(x: np.ndarray, block: int) -> float:
    start = time.perf_counter()
    for b in range(0, len(x), block):
        s = x[b : b + block] @ x.T
        del s
    return time.perf_counter() - start


def timed(fn):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    p.add_argument("--dims", default="64")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--block", type=int, default=DEFAULT_BLOCK)
    add_out_option(p)
    args = p.parse_args()
    rows, records = [], []
    for d in [int(v) for v in args.dims.split(",")]:
        for n in [int(v) for v in args.sizes.split(",")]:
            x = vectors(n, d)
            floor = min(floor_product(x, args.block) for _ in range(2))
            (i, _, _), t_join, mem_join = timed(
                lambda x=x: pairs_above(x, args.threshold, args.block)
            )
            decision, t_keep, mem_keep = timed(
                lambda x=x, n=n: greedy_keep(x, np.arange(n), args.threshold)
            )
            rec = {
                "n": n,
                "dim": d,
                "floor_seconds": floor,
                "join_seconds": t_join,
                "keep_seconds": t_keep,
                "join_ratio": floor / t_join,
                "keep_ratio": floor / t_keep,
                "pairs_found": int(len(i)),
                "kept": decision.n_kept,
                "join_peak_mib": mem_join / 2**20,
                "keep_peak_mib": mem_keep / 2**20,
                "input_mib": x.nbytes / 2**20,
                "floor_gflops": 2 * n * n * d / floor / 1e9,
            }
            records.append(rec)
            rows.append(
                [
                    n,
                    d,
                    floor,
                    t_join,
                    rec["join_ratio"],
                    t_keep,
                    rec["keep_ratio"],
                    rec["join_peak_mib"],
                    rec["keep_peak_mib"],
                    rec["floor_gflops"],
                ]
            )
            print(
                table(
                    HEADERS,
                    rows[-1:],
                ),
                flush=True,
            )
    print()
    print(
        table(
            HEADERS,
            rows,
        )
    )
    payload = {"threshold": args.threshold, "block": args.block, "runs": records}
    print(f"-> {write_result('join', payload, args.out)}")


if __name__ == "__main__":
    main()
