"""The runs of an output folder on one time axis: each Dagster run's start, end and
partition (or class range), and each of its steps, from the output's own instance.

    python benchmarks/run_timeline.py --output OUT [--last N] [--json FILE]

Where the stage table (`dedup run`'s last screen) sums each step over the workers, this
shows which runs overlapped and when a core sat idle: on 2026-12-04 it showed the
1,000-class run's first kurtosis report beside two other processes on 2 cores, and at
135,000 images the first threshold's cross-class join alone on one core for 32 s (what
aea5f5e then spread over the idle cores). Seconds are from the first run shown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timeline(output: Path, last: int | None = None) -> list[dict]:
    """Runs (oldest first; the `last` N only when given), each with its steps, in seconds
    from the first run shown. $DAGSTER_HOME is left as it was (`instance_for` sets it to the
    output's instance, which a later `dedup run` started from this process would inherit)."""
    before = os.environ.get("DAGSTER_HOME")
    try:
        return _timeline(output, last)
    finally:
        if before is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = before


def _timeline(output: Path, last: int | None) -> list[dict]:
    from dedup_assets.runner import instance_for

    with instance_for(output) as instance:
        records = [r for r in instance.get_run_records() if r.start_time]
        records.sort(key=lambda r: r.start_time)
        if last:
            records = records[-last:]
        if not records:
            return []
        t0 = records[0].start_time
        runs = []
        for record in records:
            run = record.dagster_run
            tags = run.tags
            part = tags.get("dagster/partition") or (
                f"{tags['dagster/asset_partition_range_start']}.."
                f"{tags['dagster/asset_partition_range_end']}"
                if "dagster/asset_partition_range_start" in tags
                else ""
            )
            steps = [
                {
                    "step": s.step_key,
                    "start": round(s.start_time - t0, 2),
                    "end": round(s.end_time - t0, 2),
                    "status": s.status.value if s.status else None,
                }
                for s in instance.get_run_step_stats(run.run_id)
                if s.start_time and s.end_time
            ]
            runs.append(
                {
                    "job": run.job_name,
                    "partition": part,
                    "assets": sorted(k.to_user_string() for k in run.asset_selection or []),
                    "start": round(record.start_time - t0, 2),
                    "end": round((record.end_time or record.start_time) - t0, 2),
                    "status": run.status.value,
                    "steps": sorted(steps, key=lambda s: s["start"]),
                }
            )
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True, help="an output folder of dedup run")
    p.add_argument("--last", type=int, default=None, help="only the last N runs")
    p.add_argument("--json", type=Path, default=None, help="also write the runs here")
    args = p.parse_args()
    if not (args.output / ".dagster").is_dir() and not os.environ.get("DAGSTER_HOME"):
        raise SystemExit(f"{args.output}: no Dagster instance here (not an output of dedup run)")
    runs = timeline(args.output, args.last)
    print(f"{'start':>8} {'end':>8} {'s':>7}  run / step")
    for run in runs:
        what = ", ".join(run["assets"]) or run["job"]
        print(
            f"{run['start']:8.2f} {run['end']:8.2f} {run['end'] - run['start']:7.2f}  "
            f"{run['partition'] or '-'}  {what}  ({run['status']})"
        )
        for step in run["steps"]:
            print(
                f"{step['start']:8.2f} {step['end']:8.2f} {step['end'] - step['start']:7.2f}"
                f"      {step['step']}"
            )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
