"""What one Dagster run costs `dedup run` beyond its steps: a job of one trivial asset,
executed in process again and again on `dedup run`'s instance (`dedup-run.yaml`: the
batched event log, the run storage on one kept connection) and on the same instance with
Dagster's own run storage (a connection per statement), rounds alternated in one process
(the machines are shared and noisy), CPU and wall seconds per run.

    python benchmarks/bench_run_overhead.py [--rounds 7] [--runs 10] [--work /dev/shm] [--name run_overhead]

A `dedup watch` update of EuroSAT by 1% makes seven runs (the index, two class runs, a
threshold's keep list and report beside its cross-class join, the clean copy beside the
summary); the difference per run times seven is what the run storage saves an update.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, scratch_root, table, write_result  # noqa: E402

os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")  # as `dedup run` sets it

import dagster as dg  # noqa: E402

from dedup_assets.core.data.layout import RUN_INSTANCE_FILE, prepare_dagster_home  # noqa: E402

PLAIN_RUNS_FILE = "dagster-run-storage.yaml"  # the run instance less its run storage


@dg.asset
def trivial() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"n": 1})


JOB = dg.Definitions(assets=[trivial], jobs=[dg.define_asset_job("trivial_job")]).resolve_job_def(
    "trivial_job"
)


def instances(home: Path) -> dict[str, dg.DagsterInstance]:
    """`dedup run`'s instance, and the same files with Dagster's SQLite run storage."""
    text = (home / RUN_INSTANCE_FILE).read_text()
    assert "run_storage:" in text, "dedup-run.yaml names no run storage"
    (home / PLAIN_RUNS_FILE).write_text(text.split("run_storage:")[0])
    return {
        "dagster run storage": dg.DagsterInstance.from_config(
            str(home), config_filename=PLAIN_RUNS_FILE
        ),
        "dedup run's (kept connection)": dg.DagsterInstance.from_config(
            str(home), config_filename=RUN_INSTANCE_FILE
        ),
    }


def per_run(instance: dg.DagsterInstance, runs: int) -> tuple[float, float]:
    """CPU and wall seconds per run of JOB, `runs` runs."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(runs):
        assert JOB.execute_in_process(instance=instance).success
    return (time.process_time() - cpu) / runs, (time.perf_counter() - wall) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=10, help="runs of each side per round")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (tmpfs)")
    parser.add_argument("--name", default="run_overhead", help="results/<name>.json")
    add_out_option(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work or scratch_root()))
    sides = instances(prepare_dagster_home(work / "out"))
    for instance in sides.values():  # warm: imports, the job's snapshot stored
        per_run(instance, 2)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, instance in sides.items():
            samples[name].append(per_run(instance, args.runs))
    rows, out = [], {}
    base_cpu = statistics.median(c for c, _ in samples["dagster run storage"])
    for name, got in samples.items():
        cpu = statistics.median(c for c, _ in got)
        wall = statistics.median(w for _, w in got)
        out[name] = {
            "cpu_ms_per_run": round(1000 * cpu, 2),
            "wall_ms_per_run": round(1000 * wall, 2),
            "cpu_ratio": round(cpu / base_cpu, 3),
            "rounds_cpu_ms": [round(1000 * c, 2) for c, _ in got],
        }
        rows.append([name, 1000 * cpu, 1000 * wall, cpu / base_cpu])
    print(table(["run storage", "CPU ms/run", "wall ms/run", "CPU ratio"], rows))
    path = write_result(
        args.name,
        {"rounds": args.rounds, "runs_per_round": args.runs, "work": str(work), **out},
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
