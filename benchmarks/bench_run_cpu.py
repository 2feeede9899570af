"""Where a first `dedup run` spends its time and its CPU: for each source, a fresh output with
a model copied in, the command under `perf stat -e task-clock` (every process of the run,
the workers too), and its Dagster runs and steps on one time axis (`run_timeline.py`).

    python benchmarks/bench_run_cpu.py --model MODEL --source A [--source B ...] \
        [--thresholds 0.95,1%] [--runs 2] [--executor auto] [--work /tmp/bench_run_cpu]

Per run: wall seconds, CPU seconds (task-clock over the whole process tree), the cores busy
on average (CPU / wall), the seconds before the first Dagster run and after the last, the
gaps between stages' runs (no run of this output under way), and each step's seconds. It
answers what a ratio of two wall times is made of: more CPU work, or cores left idle. Needs
`perf` (Linux); without it the CPU columns are left out.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, output_with_model, table, write_result  # noqa: E402
from benchmarks.run_timeline import timeline  # noqa: E402


def fresh_output(out: Path, model: Path) -> None:
    """A new output folder of latent-dedup with `model` copied in (kept, not retrained)."""
    output_with_model(out, model)
    subprocess.run(["sync"], check=False)


def measured_run(source: Path, out: Path, extra: list[str]) -> dict:
    """`dedup run` under perf stat where there is perf: wall and CPU seconds."""
    dedup = Path(sys.executable).with_name("dedup")
    command = [str(dedup), "run", "--source", str(source), "--output", str(out), *extra]
    perf = shutil.which("perf")
    stat = out.with_name(out.name + ".perf")
    if perf:
        command = [perf, "stat", "-e", "task-clock", "-x", ",", "-o", str(stat), *command]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    result = {"wall_seconds": round(wall, 2), "exit": done.returncode}
    if perf and stat.exists():
        found = re.search(r"^([\d.]+),msec,task-clock", stat.read_text(), re.M)
        if found:
            cpu = float(found.group(1)) / 1000
            result |= {"cpu_seconds": round(cpu, 2), "cores_busy": round(cpu / wall, 3)}
    return result


def shape(runs: list[dict], wall: float) -> dict:
    """Seconds outside every Dagster run (before, between, after) and per step."""
    if not runs:
        return {}
    spans = sorted((r["start"], r["end"]) for r in runs)
    between, reach = 0.0, spans[0][1]
    for start, end in spans[1:]:
        between += max(0.0, start - reach)
        reach = max(reach, end)
    steps: dict[str, float] = {}
    for r in runs:
        for s in r["steps"]:
            steps[s["step"]] = round(steps.get(s["step"], 0.0) + s["end"] - s["start"], 2)
    return {
        "dagster_runs": len(runs),
        "runs_span_seconds": round(reach - spans[0][0], 2),
        "outside_runs_seconds": round(wall - (reach - spans[0][0]), 2),
        "between_runs_seconds": round(between, 2),
        "step_seconds": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, action="append", required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--thresholds", default="0.95")
    p.add_argument("--executor", default="auto")
    p.add_argument("--runs", type=int, default=2, help="runs of each source, alternated")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_run_cpu"))
    p.add_argument("--name", default="run_cpu")
    add_out_option(p)
    args = p.parse_args()
    extra = ["--thresholds", args.thresholds, "--executor", args.executor]
    results: dict[str, list[dict]] = {str(s): [] for s in args.source}
    for _ in range(max(1, args.runs)):
        for at, source in enumerate(args.source):
            out = args.work / f"out_{at}"
            fresh_output(out, args.model)
            run = measured_run(source, out, extra)
            runs = timeline(out)
            run |= shape(runs, run["wall_seconds"]) | {"timeline": runs}
            results[str(source)].append(run)
            print(
                f"{source}: {run['wall_seconds']} s wall, {run.get('cpu_seconds', '-')} s CPU, "
                f"{run.get('cores_busy', '-')} cores busy",
                flush=True,
            )
    rows = []
    for source, runs in results.items():
        med = {
            k: statistics.median(r[k] for r in runs if k in r)
            for k in ("wall_seconds", "cpu_seconds", "cores_busy", "outside_runs_seconds")
            if any(k in r for r in runs)
        }
        rows.append(
            [
                source,
                *(
                    med.get(k, "-")
                    for k in ("wall_seconds", "cpu_seconds", "cores_busy", "outside_runs_seconds")
                ),
            ]
        )
    print(table(["source", "wall s", "CPU s", "cores busy", "outside runs s"], rows))
    path = write_result(
        args.name,
        {"thresholds": args.thresholds, "executor": args.executor, "sources": results},
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
