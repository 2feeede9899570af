"""The review page of an existing output, alone: its wall time and the peak anonymous
memory of the process that writes it, with this checkout's code and with another commit's
(a git worktree on `PYTHONPATH`), each in a fresh process, alternated.

    python benchmarks/bench_review_page_memory.py \
        --output /tmp/latent_dedup_scale/out_1000000 --base 7087e3c [--pairs 1]

The output is a finished `dedup run` (e.g. bench_scale.py's million images); the page is
written again into it (the same page: its build folder is named by its contents, which the
result records per run, so the two versions' pages are compared too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Run in a child: samples RssAnon every 20 ms while the page is written.
CHILD = r"""
import json, sys, threading, time, hashlib
from pathlib import Path

def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024

from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.quality.review_page import write_review_page

layout = OutputLayout(Path(sys.argv[1]))
thresholds = sys.argv[2].split(",")
peak, done = [anon()], []
start_anon = peak[0]

def sample():
    while not done:
        peak[0] = max(peak[0], anon())
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
write_review_page(layout, thresholds)
seconds = time.perf_counter() - t
done.append(1)
peak[0] = max(peak[0], anon())
index = hashlib.sha1(layout.review_index.read_bytes()).hexdigest()[:16]
builds = sorted(p.name for p in layout.review_pages.iterdir() if not p.name.startswith("."))
print(json.dumps({"seconds": round(seconds, 2), "peak_anon_mib": round(peak[0], 1),
                  "start_anon_mib": round(start_anon, 1), "index_sha1": index, "build": builds}))
"""


def _run(code_root: Path, output: Path, thresholds: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(output), thresholds],
        env=env,
        cwd=code_root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, required=True, help="a finished dedup run's output")
    p.add_argument("--base", required=True, help="the other commit")
    p.add_argument("--thresholds", default="0.93,0.95,0.97,1%")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_review_page"))
    p.add_argument("--name", default="review_page_memory")
    add_out_option(p)
    args = p.parse_args()
    tree = args.work / f"base-{args.base}"
    if not tree.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), args.base], cwd=ROOT, check=True
        )
    runs = []
    for pair in range(args.pairs):
        for version, root in (("head", ROOT), ("base", tree)):
            r = _run(root, args.output, args.thresholds)
            runs.append({"pair": pair, "version": version, **r})
            print(f"{version}: {r}", flush=True)
    head = [r for r in runs if r["version"] == "head"]
    base = [r for r in runs if r["version"] == "base"]
    rows = [
        [v, max(r["peak_anon_mib"] for r in rs), min(r["seconds"] for r in rs)]
        for v, rs in (("head", head), (f"base {args.base}", base))
    ]
    print(table(["code", "peak anon MiB", "seconds (min)"], rows))
    # The page's build folder is named by its contents (index.html also carries the minute
    # it was written, so its digest is recorded, not compared).
    same_builds = len({tuple(r["build"]) for r in runs}) == 1
    write_result(
        args.name,
        {
            "output": str(args.output),
            "thresholds": args.thresholds,
            "base": args.base,
            "runs": runs,
            "head_peak_anon_mib": max(r["peak_anon_mib"] for r in head),
            "base_peak_anon_mib": max(r["peak_anon_mib"] for r in base),
            "pages_identical": same_builds,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
