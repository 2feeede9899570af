"""A rerun of `dedup run` with nothing new (issue 23's target: under 3 s plus listing the
source), with the quick path (`core.data.run_fingerprint`) and with `--force` (the full
path: imports, instance, every stored table's provenance), against listing the source alone.

    python benchmarks/bench_nothing_new.py [--source /work/shared/datasets/eurosat] \
        [--output /tmp/es_out] [--repeats 3] [-- OPTIONS OF THE RUN THAT MADE THE OUTPUT]

The output folder must hold a finished run of the same source and options (for EuroSAT:
`dedup run --source .../eurosat --output /tmp/es_out --epochs 1`, the default options
here). Measured, each in its own process, the machine as it is:

- listing: `scan_image_folder` of the source (the catalog's scan: one stat per file), its
  seconds inside the process, and the process's wall time with its imports;
- quick: `dedup run` with nothing new, the record answering (its output says so);
- force: the same command with `--force` (which also records again, so it runs first);
- imports: `python -X importtime` of the quick path: whether it imports any of Dagster,
  torch, polars, matplotlib, scipy or pydantic (it should not) and its costliest imports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402

DEDUP = Path(sys.executable).with_name("dedup")
QUICK = "nothing changed: every output is up to date: "
AVOIDED = ("dagster", "torch", "polars", "matplotlib", "scipy", "pydantic")
LISTING = """
import sys, time
from dedup_assets.core.data.image_folder import scan_image_folder
start = time.perf_counter()
scan = scan_image_folder(sys.argv[1])
print(time.perf_counter() - start, len(scan.files))
"""


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - start, done


def import_times(stderr: str) -> dict[str, float]:
    """Cumulative milliseconds of each top-level import, from `-X importtime`'s lines."""
    found = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cumulative, name = line.split(":", 1)[1].split("|")
        if not name.startswith("  "):  # nested imports are indented further
            found[name.strip()] = int(cumulative) / 1000
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=Path("/work/shared/datasets/eurosat"))
    p.add_argument("--output", type=Path, default=Path("/tmp/es_out"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("options", nargs="*", default=["--epochs", "1"])
    add_out_option(p)
    args = p.parse_args()
    command = [str(DEDUP), "run", "--source", str(args.source), "--output", str(args.output)]
    command += args.options
    load = os.getloadavg()[0]  # other work on the machine, said beside the numbers

    listing, files = [], 0
    for _ in range(args.repeats):
        wall, done = timed([sys.executable, "-c", LISTING, str(args.source)])
        inside, files = done.stdout.split()
        listing.append((float(inside), wall))

    force = []
    for _ in range(max(1, args.repeats - 1)):
        wall, done = timed([*command, "--force"])
        if done.returncode != 0:
            raise SystemExit(f"dedup run --force failed:\n{done.stdout}\n{done.stderr}")
        force.append(wall)

    quick, tries = [], 0
    while len(quick) < args.repeats:
        tries += 1
        if tries > args.repeats + 3:
            raise SystemExit("the quick path was not taken:\n" + done.stdout[:2000])
        wall, done = timed(command)
        if done.returncode == 0 and QUICK in done.stdout:
            quick.append(wall)
        else:  # e.g. someone edited the code since the last run: it recorded again
            print(f"not the quick path: {done.stdout.splitlines()[1][:160]}")

    profiled = subprocess.run(
        [sys.executable, "-X", "importtime", str(DEDUP), *command[1:]],
        capture_output=True,
        text=True,
    )
    imports = import_times(profiled.stderr)
    quick_path = QUICK in profiled.stdout

    listing_inside = min(s for s, _ in listing)
    listing_process = min(w for _, w in listing)
    best_quick, best_force = min(quick), min(force)
    rows = [
        ["listing the source (scan only)", listing_inside, "", ""],
        ["listing in a fresh process", listing_process, "", ""],
        ["rerun, quick path", best_quick, best_quick - listing_inside, "< 3 s"],
        ["rerun, --force (full path)", best_force, best_force - listing_inside, ""],
    ]
    print(
        f"{int(files):,} images in {args.source}; best of {args.repeats} (force: {len(force)}); "
        f"load average {load:.2f} at the start"
    )
    print(table(["what", "seconds", "minus listing", "target"], rows))
    print(f"force / quick: {best_force / best_quick:.1f}x")
    heavy = sorted(m for m in AVOIDED if m in imports)
    print(f"quick path: {len(imports)} top-level imports; of {', '.join(AVOIDED)}: {heavy}")
    for name, ms in sorted(imports.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {name:<28} {ms:>8.1f}")

    path = write_result(
        "nothing_new",
        {
            "source": str(args.source),
            "images": int(files),
            "options": args.options,
            "repeats": args.repeats,
            "load_average_at_start": round(load, 2),
            "listing_seconds": round(listing_inside, 3),
            "listing_process_seconds": round(listing_process, 3),
            "quick_seconds": [round(s, 3) for s in quick],
            "force_seconds": [round(s, 3) for s in force],
            "quick_best": round(best_quick, 3),
            "quick_median": round(statistics.median(quick), 3),
            "force_best": round(best_force, 3),
            "quick_minus_listing": round(best_quick - listing_inside, 3),
            "force_minus_listing": round(best_force - listing_inside, 3),
            "ratio_force_to_quick": round(best_force / best_quick, 2),
            "target_met": best_quick - listing_inside < 3.0,
            "quick_path_imports_ms": {k: round(v, 1) for k, v in sorted(imports.items())},
            "quick_path_heavy_imports": heavy,
            "profiled_run_took_quick_path": quick_path,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
