"""Many small classes, one process against two: what `--executor auto`'s class rule
(`engines.AUTO_MIN_CLASSES`) rests on.

    python benchmarks/bench_auto_many_classes.py [--classes 1000] [--pairs 2] \
        [--work /tmp/auto_many_classes]

`--classes` class folders of one 16 px image each (the suite's many-classes test's images),
run with `dedup run --thresholds 0.95 --epochs 1` as `--executor in_process` and as
`--executor processes --parallel 2`, alternated pair by pair, each run into a new output.
Prints each run's wall time and class stage and the ratio per pair; writes
results/auto_many_classes.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, timed_dedup_run, write_result  # noqa: E402

CLASS_STAGE = "classes: latents, spline fits, keep decisions"
ARMS = {
    "in_process": ["--executor", "in_process"],
    "processes": ["--executor", "processes", "--parallel", "2"],
}


def make_source(dest: Path, classes: int) -> Path:
    """`classes` folders of one 16 px image each (a 4 x 4 colour pattern, seeded)."""
    from PIL import Image

    if dest.is_dir() and len(list(dest.iterdir())) == classes:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    colours = np.random.default_rng(0).integers(0, 256, (classes, 4, 4, 3), dtype=np.uint8)
    for i in range(classes):
        folder = dest / f"c{i:05d}"
        folder.mkdir(parents=True)
        Image.fromarray(colours[i]).resize((16, 16)).save(folder / "a.png")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/auto_many_classes"))
    add_out_option(parser)
    args = parser.parse_args()
    source = make_source(args.work / "source", args.classes)
    common = ["--thresholds", "0.95", "--epochs", "1"]
    runs: list[dict] = []
    for pair in range(args.pairs):
        for arm, extra in ARMS.items() if pair % 2 == 0 else reversed(ARMS.items()):
            out = args.work / f"out_{arm}"
            shutil.rmtree(out, ignore_errors=True)
            run = timed_dedup_run(source, out, [*common, *extra])
            if run["exit"] != 0:
                raise SystemExit(run["stdout"])
            runs.append(
                {
                    "pair": pair,
                    "arm": arm,
                    "wall_seconds": run["wall_seconds"],
                    "class_stage_seconds": run["stages"][CLASS_STAGE]["seconds"],
                    "class_stage_runs": run["stages"][CLASS_STAGE]["runs"],
                    "stages": run["stages"],
                }
            )
    by = {(r["pair"], r["arm"]): r for r in runs}
    ratios = [
        by[(p, "processes")]["wall_seconds"] / by[(p, "in_process")]["wall_seconds"]
        for p in range(args.pairs)
    ]
    stage_ratios = [
        by[(p, "processes")]["class_stage_seconds"] / by[(p, "in_process")]["class_stage_seconds"]
        for p in range(args.pairs)
    ]
    print(
        table(
            ["pair", "executor", "wall s", "class stage s", "class runs"],
            [
                [
                    r["pair"],
                    r["arm"],
                    r["wall_seconds"],
                    r["class_stage_seconds"],
                    r["class_stage_runs"],
                ]
                for r in runs
            ],
        )
    )
    print(
        f"processes / in_process per pair: wall {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"class stage {', '.join(f'{x:.3f}' for x in stage_ratios)}"
    )
    path = write_result(
        "auto_many_classes",
        {
            "classes": args.classes,
            "images": args.classes,
            "command": "dedup run --thresholds 0.95 --epochs 1 --executor in_process | "
            "--executor processes --parallel 2",
            "runs": runs,
            "wall_ratio_per_pair": [round(x, 3) for x in ratios],
            "class_stage_ratio_per_pair": [round(x, 3) for x in stage_ratios],
            "median_wall_ratio": round(statistics.median(ratios), 3),
            "median_class_stage_ratio": round(statistics.median(stage_ratios), 3),
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
