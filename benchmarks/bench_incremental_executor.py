"""An incremental run of a big dataset (1% new images in two EuroSAT classes) in one process
against two worker processes, alternated from copies of one output folder.

    python benchmarks/bench_incremental_executor.py --model MODEL \
        [--eurosat ../shared/datasets/eurosat] [--pairs 3] [--work /tmp/bench_inc_exec]

A first run (the model copied in) makes the output; 270 new images (existing ones turned a
quarter) go into Forest and River; then each round runs `dedup run` on a fresh copy of that
output with `--executor in_process`, with `--executor processes --parallel 2` and with the
default `auto`, which judges by the whole listing (since 2026-12-04: before, it judged by
the classes a run decodes and chose `in_process` here, while the command had already
started the workers' server from the whole listing).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_code_pair import STAGE_LINE, stage_seconds  # noqa: E402
from benchmarks.bench_incremental import add_images, make_source  # noqa: E402
from benchmarks.common import add_out_option, output_with_model, table, write_result  # noqa: E402

DEDUP = Path(sys.executable).with_name("dedup")
EXECUTORS = {
    "in_process": ["--executor", "in_process"],
    "processes": ["--executor", "processes", "--parallel", "2"],
    "auto": [],
}


def dedup_run(source: Path, output: Path, extra: list[str]) -> tuple[float, str]:
    """Wall seconds of one `dedup run` (threshold 0.95) and its stage lines."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(DEDUP), "run", "--source", str(source), "--output", str(output)]
        + ["--thresholds", "0.95", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise SystemExit(f"dedup run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    stages = [line for line in done.stdout.splitlines() if STAGE_LINE.match(line)]
    return wall, "\n".join(stages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--eurosat", type=Path, default=Path("../shared/datasets/eurosat"))
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_inc_exec"))
    add_out_option(p)
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    source = make_source(args.eurosat, args.work, ("Forest", "River"))
    base = args.work / "base"
    output_with_model(base, args.model)
    first, _ = dedup_run(source, base, [])
    before = sum(len(list((source / c).glob("*.jpg"))) for c in ("Forest", "River"))
    for name in ("Forest", "River"):
        add_images(source / name, 135)
    runs, stages = [], {}
    for pair in range(args.pairs):
        row = {"pair": pair}
        for name, extra in EXECUTORS.items():
            out = args.work / "run"
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(base, out, symlinks=True)
            row[name], lines = dedup_run(source, out, extra)
            stages[name] = stage_seconds(lines)
        row["ratio"] = round(row["processes"] / row["in_process"], 3)
        runs.append(row)
        print(
            f"pair {pair}: in_process {row['in_process']:.1f} s, "
            f"processes {row['processes']:.1f} s, auto {row['auto']:.1f} s, "
            f"ratio {row['ratio']}",
            flush=True,
        )
    result = {
        "first_run_seconds": round(first, 2),
        "images_in_changed_classes_before": before,
        "new_images": 270,
        "runs": [
            {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in runs
        ],
        "in_process_median_seconds": round(statistics.median(r["in_process"] for r in runs), 2),
        "processes_median_seconds": round(statistics.median(r["processes"] for r in runs), 2),
        "auto_median_seconds": round(statistics.median(r["auto"] for r in runs), 2),
        "ratio_median": round(statistics.median(r["ratio"] for r in runs), 3),
        "ratio_min": min(r["ratio"] for r in runs),
        "ratio_max": max(r["ratio"] for r in runs),
        "stages_last_pair": stages,
    }
    print(
        table(
            ["executor", "median wall s"],
            [
                ["in_process", result["in_process_median_seconds"]],
                ["processes --parallel 2", result["processes_median_seconds"]],
                ["auto", result["auto_median_seconds"]],
            ],
        )
    )
    print(f"ratio per pair: median {result['ratio_median']}")
    print(f"wrote {write_result('incremental_executor', result, args.out)}")


if __name__ == "__main__":
    main()
