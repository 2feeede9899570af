"""Plain against invariant training: what each finds, what it costs, on planted sets.

Two parts, both in this process or its `dedup run` children, on the same machine:

1. Cost per epoch: the plain and the invariant objective timed on the same images for the
   same number of steps, alternating (plain, invariant, plain, invariant), so the ratio is
   measured against a baseline run in the same process.
2. What is found: `dedup run --training plain|invariant` (default epochs: early stopping) on
   each planted folder (`dedup plant` output, with its ground_truth.csv), timing the whole
   command and reading `evaluation/evaluation.csv` (AP, recall per threshold and per planted
   transform, false removals among unplanted images) and `model/training.json`.

    python benchmarks/bench_invariance.py --planted /tmp/p9/es /tmp/p9/hy \
        [--trainings plain invariant] [--thresholds 0.85,0.9,0.93,0.95,0.97] [--work DIR]
        [--epochs N] [--skip-cost]
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402

DEDUP = Path(sys.executable).with_name("dedup")


def step_cost(n_images: int = 2048, steps: int = 12, rounds: int = 3) -> dict:
    """Seconds per training image of each objective, interleaved in this process, in the
    precision the pipeline trains in on this CPU (bf16 where it has bf16 units)."""
    import torch

    from dedup_assets.core.model.autoencoder import cpu_supports_bf16, train_autoencoder

    amp = torch.bfloat16 if cpu_supports_bf16() else None
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n_images, 64, 64, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(pixels[:, ::4, ::4], 4, axis=1), 4, axis=2)  # some structure
    batch = 128
    sample = pixels[: steps * batch]
    seconds: dict[str, list[float]] = {"plain": [], "invariant": []}
    for _ in range(rounds):
        for objective in seconds:
            r = train_autoencoder(
                sample, epochs=1, batch_size=batch, objective=objective, amp_dtype=amp
            )
            seconds[objective].append(r.train_seconds / len(sample))
    best = {k: min(v) for k, v in seconds.items()}
    return {
        "threads": torch.get_num_threads(),
        "precision": "bf16" if amp is not None else "fp32",
        "images_per_round": len(sample),
        "seconds_per_image": seconds,
        "images_per_second": {k: 1 / v for k, v in best.items()},
        "invariant_over_plain": best["invariant"] / best["plain"],
    }


def run_one(planted: Path, output: Path, training: str, thresholds: str, extra: list[str]) -> dict:
    if output.exists():
        shutil.rmtree(output)
    start = time.perf_counter()
    done = subprocess.run(
        [
            str(DEDUP),
            "run",
            "--source",
            str(planted),
            "--output",
            str(output),
            "--ground-truth",
            str(planted / "ground_truth.csv"),
            "--training",
            training,
            "--thresholds",
            thresholds,
            *extra,
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(done.stdout + done.stderr)
    log = json.loads((output / "model" / "training.json").read_text())
    rows = list(csv.DictReader((output / "evaluation" / "evaluation.csv").open()))
    for r in rows:
        for k, v in r.items():
            if k not in ("method", "threshold"):
                r[k] = float(v) if v not in ("", "NaN", "nan") else float("nan")
    import polars as pl

    cross = {p.stem: pl.read_parquet(p).height for p in (output / "cross_class").glob("*.parquet")}
    return {
        "wall_seconds": round(wall, 1),
        "exit": done.returncode,
        "stdout_tail": done.stdout[-1500:],
        "training": {
            k: log.get(k)
            for k in (
                "objective",
                "epochs",
                "images_seen",
                "stopped_because",
                "train_seconds",
                "images_per_second",
                "holdout_losses",
            )
        },
        "evaluation": rows,
        "cross_class_pairs": cross,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--planted", type=Path, nargs="*", default=[])
    p.add_argument("--trainings", nargs="+", default=["plain", "invariant"])
    p.add_argument("--thresholds", default="0.85,0.9,0.93,0.95,0.97")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_invariance"))
    p.add_argument("--skip-cost", action="store_true", help="skip the per-epoch cost part")
    p.add_argument("--epochs", default=None, help="passed to dedup run (default: early stopping)")
    add_out_option(p)
    args = p.parse_args()
    result: dict = {"thresholds": args.thresholds, "epochs": args.epochs or "early stopping"}
    if not args.skip_cost:
        result["cost"] = step_cost()
        c = result["cost"]
        print(
            f"training cost: plain {c['images_per_second']['plain']:.0f} img/s, invariant "
            f"{c['images_per_second']['invariant']:.0f} img/s: "
            f"{c['invariant_over_plain']:.2f}x per epoch",
            flush=True,
        )
    runs = {}
    for planted in args.planted:
        for training in args.trainings:
            name = f"{planted.name}/{training}"
            extra = ["--epochs", args.epochs] if args.epochs else []
            r = run_one(
                planted, args.work / planted.name / training, training, args.thresholds, extra
            )
            runs[name] = r
            t = r["training"]
            print(
                f"{name}: {r['wall_seconds']} s wall (exit {r['exit']}), training "
                f"{t['train_seconds']:.0f} s, {t['images_seen']:,} images seen, "
                f"{t['stopped_because']}",
                flush=True,
            )
            rows = [
                (
                    e["method"],
                    str(e["threshold"]),
                    f"{e['average_precision']:.3f}",
                    f"{e.get('average_precision_local', float('nan')):.3f}",
                    f"{e['recall']:.3f}",
                    f"{e['false_removal_rate']:.4f}",
                    " ".join(f"{k[7:]}={v:.2f}" for k, v in e.items() if k.startswith("recall_")),
                )
                for e in r["evaluation"]
                if e["method"] in ("spline_copula_dct", "spline_copula", "dct", "phash")
            ]
            print(
                table(
                    [
                        "method",
                        "T",
                        "AP",
                        "AP (margins)",
                        "recall",
                        "false removals",
                        "per transform",
                    ],
                    rows,
                ),
                flush=True,
            )
    result["runs"] = runs
    path = write_result("invariance", result, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
