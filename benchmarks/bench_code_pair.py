"""Two versions of the code on one run, alternated: the first EuroSAT run with a trained
model copied in (bench_targets.py's `first`), with this checkout's code and with another
commit's, a warm-up pair then A B A B ..., each pair's ratio of wall times (the machines are shared and noisy:
a ratio within a pair holds when the machine's speed drifts).

    python benchmarks/bench_code_pair.py --base 6ad5b0c --model MODEL \
        [--eurosat ../shared/datasets/eurosat | --source DIR | --demo] [--thresholds 0.95] \
        [--pairs 3] [--work /dev/shm/bench_pair] [--name code_pair_first_run]

Without --model each run trains its own (`--epochs 1`, fp32 on the CPU: what a first run
of the test suite does); --demo runs on the built-in demo dataset (seed 0, 12 images a
class: the suite's size).

The other commit is checked out as a git worktree under --work and run with this
checkout's interpreter and packages (`PYTHONPATH`); every run is `dedup run` into a fresh
output folder with the model copied in, at --thresholds, on links to EuroSAT (or on the
ImageFolder --source, e.g. bench_many_classes.py's 1,000 classes); the result is
results/<--name>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_incremental import make_source  # noqa: E402
from benchmarks.common import (  # noqa: E402
    add_out_option,
    filesystem_of,
    output_with_model,
    scratch_root,
    table,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]
RUN = "from dedup_assets.cli import entry; entry()"
STAGE_LINE = re.compile(r"^\[(?P<stage>[^\]]+)\] \d+ run\(s\) in (?P<seconds>[\d.]+)s$")


def python_for(code: Path) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that import the package from `code`: `-P` keeps
    the working folder off `sys.path`, where a checkout would shadow the other."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    found = subprocess.run(
        [sys.executable, "-P", "-c", "import dedup_assets; print(dedup_assets.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"{code}: the package was imported from {found}")
    return [sys.executable, "-P", "-c", RUN], env


TRAIN = ("--epochs", "1", "--device", "cpu", "--precision", "fp32")


def one_run(
    code: Path, source: Path, output: Path, model: Path | None, thresholds: str = "0.95"
) -> tuple[float, str]:
    """Wall seconds of one first run with the code at `code`, and its stage lines (with
    the model at `model` copied in; None: trained by the run, `TRAIN`)."""
    if model is not None:
        output_with_model(output, model)
    else:
        shutil.rmtree(output, ignore_errors=True)
    prefix, env = python_for(code)
    argv = [*prefix, "run", "--source", str(source), "--output", str(output)]
    if model is None:
        argv += TRAIN
    start = time.perf_counter()
    done = subprocess.run(
        [*argv, "--thresholds", thresholds], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise SystemExit(f"dedup run failed with {code}:\n{done.stderr[-2000:]}")
    stages = [line for line in done.stdout.splitlines() if STAGE_LINE.match(line)]
    return wall, "\n".join(stages)


def stage_seconds(lines: str) -> dict[str, float]:
    """{stage: seconds} from the command's "[stage] N run(s) in S s" lines."""
    found = (STAGE_LINE.match(line) for line in lines.splitlines())
    return {m["stage"]: float(m["seconds"]) for m in found if m}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the commit to compare this checkout with")
    p.add_argument("--model", type=Path, default=None, help="none: every run trains one")
    p.add_argument("--eurosat", type=Path, default=Path("../shared/datasets/eurosat"))
    p.add_argument("--source", type=Path, default=None, help="an ImageFolder, used as is")
    p.add_argument("--demo", action="store_true", help="the built-in demo dataset (seed 0)")
    p.add_argument("--thresholds", default="0.95")
    p.add_argument("--name", default="code_pair_first_run", help="the result's file name")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--work", type=Path, default=scratch_root() / "bench_pair")
    add_out_option(p)
    args = p.parse_args()
    work = args.work.resolve()
    if args.demo:
        from dedup_assets.core.quality.demo_data import generate_demo_dataset

        source = work / "demo"
        shutil.rmtree(source, ignore_errors=True)
        generate_demo_dataset(source, seed=0, per_class=12)
    elif args.source is not None:
        source = args.source.resolve()
    elif args.eurosat.is_dir():
        source = make_source(args.eurosat, work, ())
    else:
        raise SystemExit(f"EuroSAT not found at {args.eurosat}")
    images = sum(1 for f in source.rglob("*") if f.is_file())
    base = work / "base"
    if base.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
        check=True,
        capture_output=True,
    )
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    runs: list[dict] = []
    try:
        t = args.thresholds
        one_run(ROOT, source, work / "out_a", args.model, t)  # warm-up pair, not counted
        one_run(base, source, work / "out_b", args.model, t)
        for n in range(args.pairs):
            a, a_stages = one_run(ROOT, source, work / "out_a", args.model, t)
            b, b_stages = one_run(base, source, work / "out_b", args.model, t)
            runs.append({"pair": n, "a_seconds": round(a, 2), "b_seconds": round(b, 2)})
            print(f"pair {n}: this checkout {a:.1f} s, {args.base} {b:.1f} s, ratio {a / b:.3f}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    ratios = [r["a_seconds"] / r["b_seconds"] for r in runs]
    summary = {
        "a_median_seconds": round(statistics.median(r["a_seconds"] for r in runs), 2),
        "b_median_seconds": round(statistics.median(r["b_seconds"] for r in runs), 2),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
    }
    print(
        table(
            ["code", "median wall s"],
            [
                [f"this checkout ({commit})", summary["a_median_seconds"]],
                [args.base, summary["b_median_seconds"]],
            ],
        )
    )
    print(
        f"ratio per pair: median {summary['ratio_median']} ({summary['ratio_min']}-"
        f"{summary['ratio_max']})"
    )
    print("last stages, this checkout:\n" + a_stages + f"\nlast stages, {args.base}:\n" + b_stages)
    path = write_result(
        args.name,
        {
            "a": commit,
            "b": args.base,
            "source": "demo (seed 0, 12 a class)"
            if args.demo
            else str(args.source)
            if args.source is not None
            else "EuroSAT (links)",
            "model": "trained by each run (--epochs 1)" if args.model is None else str(args.model),
            "thresholds": args.thresholds,
            "images": images,
            "work_filesystem": filesystem_of(args.work),
            "runs": runs,
            **summary,
            "stages_a": stage_seconds(a_stages),
            "stages_b": stage_seconds(b_stages),
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
