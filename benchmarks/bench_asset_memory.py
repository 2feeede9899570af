"""Peak memory of one asset of an existing output, materialized alone in this process (its
job's in-process executor), the process's PSS sampled every 50 ms.

    python benchmarks/bench_asset_memory.py --output OUT --asset review_page \
        [--partition 0.95] [--name asset_memory] [--out DIR]

Run with another checkout's code first on `PYTHONPATH` to compare two versions on the same
output (the asset rewrites its own files in OUT, nothing upstream of it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

# Appended: a checkout on PYTHONPATH comes first (`dedup_assets` of another version).
sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, write_result  # noqa: E402


def pss_mib() -> dict[str, int]:
    """This process's PSS, anonymous and file-backed, in MiB (Linux)."""
    found = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            name = line.split(":")[0]
            if name in ("Pss", "Pss_Anon", "Pss_File"):
                found[name] = int(line.split()[1]) // 1024
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--asset", required=True)
    p.add_argument("--partition", default=None, help="a threshold or class partition key")
    p.add_argument("--name", default="asset_memory")
    add_out_option(p)
    args = p.parse_args()
    os.environ["DAGSTER_HOME"] = str(args.output / ".dagster")
    import dedup_assets
    from dedup_assets.config import PipelineConfig
    from dedup_assets.definitions import build_definitions
    from dedup_assets.dispatch import execute
    from dedup_assets.runner import instance_for

    saved = json.loads((args.output / "pipeline.json").read_text())
    config = PipelineConfig.build(
        source=saved["source"],
        output=str(args.output),
        thresholds=saved["thresholds"],
        executor="in_process",
    )
    defs = build_definitions(config)
    job = min(  # the smallest of the project's jobs that holds the asset
        (
            j
            for j in defs.resolve_all_job_defs()
            if not j.name.startswith("__")
            and args.asset in {k.to_user_string() for k in j.asset_layer.selected_asset_keys}
        ),
        key=lambda j: len(j.asset_layer.selected_asset_keys),
    )
    samples: list[tuple[float, dict[str, int]]] = []
    stop = threading.Event()
    start = time.perf_counter()
    before = pss_mib()

    def sample() -> None:
        while not stop.is_set():
            samples.append((round(time.perf_counter() - start, 2), pss_mib()))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with instance_for(args.output) as instance:
        result = execute(job, args.partition, instance, {}, {}, [args.asset])
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    at, peak = max(samples, key=lambda s: s[1]["Pss"])
    payload = {
        "output": str(args.output),
        "asset": args.asset,
        "partition": args.partition,
        "code": str(Path(dedup_assets.__file__).resolve().parents[1]),
        "success": result.success,
        "wall_seconds": round(wall, 2),
        "pss_before_mib": before["Pss"],
        "peak_pss_mib": peak["Pss"],
        "peak_anon_mib": peak.get("Pss_Anon"),
        "peak_at_seconds": at,
    }
    print(json.dumps(payload, indent=1))
    print("wrote", write_result(args.name, payload, args.out))


if __name__ == "__main__":
    main()
