"""What a class costs `dedup run` in process: N classes of `--images` tiny images each, run
by the runner on the persistent instance `dedup run` uses (batched event writes), the
stage table printed, and with --profile a cProfile dump of the whole run.

    python benchmarks/profile_many_classes.py --classes 1000 [--images 1] [--work DIR]
        [--profile out.prof] [--plain-events]

--plain-events uses Dagster's own SQLite event storage with no batches (the comparison of
`dedup_assets/event_storage.py`). Measured 2026-12-03 (1,000 classes of one 16 px image,
2 busy cores): 153 s before the per-class fixes of issue 23, 90 s after.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/profile_many_classes"))
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument("--plain-events", action="store_true")
    args = p.parse_args()
    if args.plain_events:
        os.environ["DAGSTER_EVENT_BATCH_SIZE"] = "0"
    import dagster as dg
    from PIL import Image

    from dedup_assets.config import PipelineConfig
    from dedup_assets.core.data.layout import instance_file, prepare_dagster_home
    from dedup_assets.runner import run_pipeline

    shutil.rmtree(args.work, ignore_errors=True)
    source = args.work / "source"
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (args.classes, 4, 4, 3), dtype=np.uint8)
    for i in range(args.classes):
        folder = source / f"c{i:05d}"
        folder.mkdir(parents=True)
        for j in range(args.images):
            img = Image.fromarray(np.roll(colours[i], j, 0)).resize((16, 16))
            img.save(folder / f"a{j}.png")
    config = PipelineConfig.build(
        source=str(source),
        output=str(args.work / "out"),
        thresholds=["0.95"],
        device="cpu",
        precision="fp32",
        executor="in_process",
        method={"epochs": 1, "batch_size": 256, "n_components": 4, "kurtosis_tolerance": 1.0},
    )
    home = prepare_dagster_home(args.work / "out")
    if args.plain_events:
        (home / instance_file(home)).write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.from_config(str(home), config_filename=instance_file(home))
    lines: list[str] = []
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    outcome = run_pipeline(config, instance, log=lines.append)
    if profiler:
        profiler.disable()
        profiler.dump_stats(str(args.profile))
    wall = time.perf_counter() - start
    print("\n".join(line for line in lines if "run(s) in" in line))
    print(
        f"{args.classes} classes of {args.images} image(s): {wall:.1f} s, failures {outcome.failures}"
    )
    print(f"event storage: {type(instance.event_log_storage).__name__}")


if __name__ == "__main__":
    main()
