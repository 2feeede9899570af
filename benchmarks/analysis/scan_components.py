"""Average precision of the whitened and spline_copula spaces against the number of components.

python benchmarks/analysis/scan_components.py OUTPUT_DIR GROUND_TRUTH.csv 16,32,64,128,256
    [--policy first|density]

Each class's density model is refitted at every number of components; its vectors and
visit order come from `class_decision` (`vectorise`, `class_order`), and the removals per
threshold from its `keep_decisions` (exact copies first), through `evaluate_method`.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.analysis.common import load_classes  # noqa: E402
from dedup_assets.core.decision.class_decision import class_order, vectorise  # noqa: E402
from dedup_assets.core.decision.keep_policy import KEEP_POLICIES  # noqa: E402
from dedup_assets.core.quality.evaluation import ClassPairs, evaluate_method  # noqa: E402
from dedup_assets.core.quality.planting import read_ground_truth  # noqa: E402

THRESHOLDS = [0.8, 0.9, 0.93, 0.95, 0.97]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("ground_truth", type=Path)
    parser.add_argument("components", help="comma-separated numbers of components, e.g. 16,32,64")
    parser.add_argument(
        "--policy",
        default="first",
        choices=list(KEEP_POLICIES),
        help="visit order of the removals (recall/precision/AP do not depend on it)",
    )
    args = parser.parse_args()
    ks = [int(k) for k in args.components.split(",")]
    classes = load_classes(args.output, read_ground_truth(args.ground_truth))
    for k in ks:
        refitted = [c.refit(k) for c in classes]
        orders = [class_order(c.data, args.policy) for c in refitted]
        for space in ("whitened", "spline_copula"):
            pairs = [
                ClassPairs(
                    c.key,
                    vectorise(c.data, space),
                    c.positives,
                    order,
                    c.in_ground_truth,
                    c.data.pixel_hashes,
                )
                for c, order in zip(refitted, orders, strict=True)
            ]
            r = evaluate_method(space, pairs, THRESHOLDS)
            cells = " ".join(
                f"{p['threshold']}:R{p['recall']:.2f}/P{p['precision']:.2f}/U{p['unrelated_kept_fraction']:.3f}"
                for p in r.per_threshold
            )
            print(f"{k:4d} {space:14s} AP={r.average_precision:.3f} {cells}", flush=True)


if __name__ == "__main__":
    main()
