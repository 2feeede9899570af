"""Keep policies `first` and `density` in one similarity space, at equal numbers removed.

For each policy and T in 0.90-0.99: images removed and the kurtosis gate's regressions;
then the line's excess at the median and the slopes, interpolated at equal removals.

    python benchmarks/analysis/compare_keep_policies.py OUTPUT_DIR [--space raw] [RESULT.json]
        [--tolerance 0.1] [--draws 1000] [--targets 8000,12000,16000] [--block 2048]

Each class is decided by `class_decision.decide_class` (exact copies first, then the greedy
keep), and the gate is the pipeline's: `kurtosis_report.kurtosis_by_class` on the stored
component scores, only the classes large enough to measure (`gate_arrays`), and the
random-removal baseline of the same counts (`random_removal_baseline`; `--draws 0` skips it).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.analysis.common import load_classes  # noqa: E402
from dedup_assets.core.data.artifacts import read_scores  # noqa: E402
from dedup_assets.core.data.layout import OutputLayout  # noqa: E402
from dedup_assets.core.decision.class_decision import VECTORISERS, decide_class  # noqa: E402
from dedup_assets.core.decision.keep_policy import KEEP_POLICIES  # noqa: E402
from dedup_assets.core.quality.kurtosis_report import (  # noqa: E402
    gate_arrays,
    kurtosis_by_class,
    random_removal_baseline,
)
from dedup_assets.core.quality.statistics import CHANCE_DRAWS, kurtosis_gate  # noqa: E402

THRESHOLDS = [0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
TARGETS = "8000,12000,16000"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("result", type=Path, nargs="?", help="write the rows as JSON here")
    parser.add_argument(  # the classes are loaded without pixels: the hashes need them
        "--space", default="raw", choices=[s for s in VECTORISERS if s not in ("phash", "pdq")]
    )
    parser.add_argument("--tolerance", type=float, default=0.1, help="the gate's tolerance")
    parser.add_argument("--draws", type=int, default=CHANCE_DRAWS, help="random-removal draws")
    parser.add_argument("--targets", default=TARGETS, help="numbers removed to compare at")
    parser.add_argument("--block", type=int, default=2048)
    args = parser.parse_intermixed_args()
    classes = load_classes(args.output)
    scores = read_scores(OutputLayout(args.output), [c.key for c in classes])
    ids = np.concatenate([c.ids for c in classes]).tolist()
    n_images = len(ids)
    results: dict[str, list[dict]] = {}
    for policy in KEEP_POLICIES:
        decided = [
            decide_class(c.data, THRESHOLDS, space=args.space, policy=policy, block=args.block)
            for c in classes
        ]
        rows = []
        for k, t in enumerate(THRESHOLDS):
            kept = np.concatenate([d[k].kept for d in decided])
            exact = sum(int(d[k].exact.sum()) for d in decided)
            keep = pl.DataFrame({"image_id": ids, "kept": kept})
            table = kurtosis_by_class(scores, keep)
            before, after = gate_arrays(table)
            measured = table.filter(pl.col("measured"))["class"].to_list()
            chance = (
                random_removal_baseline(scores, keep, measured, draws=args.draws)
                if args.draws > 0
                else None
            )
            gate = kurtosis_gate(before, after, args.tolerance, chance)
            regs = gate.regressions
            rows.append(
                {
                    "threshold": t,
                    "removed": n_images - int(kept.sum()),
                    "exact_copies_removed": exact,
                    "classes_measured": len(measured),
                    "severity": gate.severity,
                    "slopes": [r.slope for r in regs],
                    "excess": [r.excess_at_median for r in regs],
                    "reduced": [r.fraction_reduced for r in regs],
                    "chance": None if chance is None else [float(v) for v in chance],
                }
            )
            print(
                policy,
                t,
                rows[-1]["removed"],
                gate.severity,
                " ".join(
                    f"PC{r.component}: {r.equation()} excess={r.excess_at_median:+.3f}"
                    + (f" (chance {chance[r.component - 1]:+.3f})" if chance is not None else "")
                    + f" reduced={r.fraction_reduced:.0%}"
                    for r in regs
                ),
                flush=True,
            )
        results[policy] = rows
    for target in [int(v) for v in args.targets.split(",")]:
        cells = []
        for policy, rows in results.items():
            removed = np.array([r["removed"] for r in rows])
            order = np.argsort(removed, kind="stable")
            excess = np.array([r["excess"] for r in rows])[order]
            slopes = np.array([r["slopes"] for r in rows])[order]
            ex = ",".join(
                f"{np.interp(target, removed[order], excess[:, c]):+.3f}" for c in range(3)
            )
            sl = ",".join(
                f"{np.interp(target, removed[order], slopes[:, c]):.2f}" for c in range(3)
            )
            cells.append(f"{policy}: excess {ex} slope {sl}")
        print(f"removed {target}: " + " | ".join(cells))
    if args.result is not None:
        args.result.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
