"""A stage's read of every class's table: one file at a time against one polars read of all
of them (`artifacts.read_tables`), on the files of an existing output, in one process.

    python benchmarks/bench_batched_reads.py --output OUT [--repeats 5] [--threads 1]

Each kind of class file (catalogs, class keep lists of one threshold, spline scores,
latent ids) is read both ways, alternated, `--repeats` times; the result (medians, their
ratio, and that both ways give equal frames) is results/batched_reads.json. Polars runs on
`--threads` threads, as a worker beside others does (`engines._THREAD_VARS`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    add_out_option(p)
    args = p.parse_args()
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # before polars is imported
    import polars as pl

    from dedup_assets.core.data import artifacts
    from dedup_assets.core.data.layout import OutputLayout

    layout = OutputLayout(args.output)
    keys = artifacts.catalogued_keys(layout)
    threshold = sorted(p.name for p in (args.output / "keep_lists" / "by_class").iterdir())[0]
    kinds = {
        "catalogs": [layout.class_images(k) for k in keys],
        f"class keep lists ({threshold})": [layout.class_keep_list(threshold, k) for k in keys],
        "spline scores": [layout.spline_scores(k) for k in keys],
        "latent ids": [layout.latents(k) for k in keys],
    }
    rows, results = [], {}
    for kind, paths in kinds.items():
        columns = ["image_id", "path"] if kind == "latent ids" else None
        one, together = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            frames = [pl.read_parquet(f, columns=columns, glob=False) for f in paths]
            by_one = pl.concat(frames, how="vertical_relaxed")
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            at_once = artifacts.read_tables(paths, columns=columns)
            together.append(time.perf_counter() - start)
        results[kind] = {
            "files": len(paths),
            "rows": by_one.height,
            "one_by_one_seconds": round(statistics.median(one), 4),
            "together_seconds": round(statistics.median(together), 4),
            "ratio": round(statistics.median(together) / statistics.median(one), 3),
            "equal": at_once is not None and at_once.equals(by_one),
        }
        r = results[kind]
        rows.append([kind, r["files"], r["one_by_one_seconds"], r["together_seconds"], r["ratio"]])
    print(table(["files", "classes", "one by one s", "together s", "ratio"], rows))
    path = write_result(
        "batched_reads",
        {
            "output": str(args.output),
            "polars_threads": args.threads,
            "repeats": args.repeats,
            "kinds": results,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
