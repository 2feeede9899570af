"""Recall at one threshold and AP per planted transform: whitened, spline_copula, pHash, PDQ.

python benchmarks/analysis/per_transform.py OUTPUT_DIR GROUND_TRUTH.csv [N_COMPONENTS]
    [--threshold 0.95] [--policy first|density]

Each class's density model is refitted to N_COMPONENTS (default 128); the vectors of every
method, pHash and PDQ included, come from `class_decision.vectorise`, so they are the ones the
pipeline decides with. Each class is loaded once; only the known pairs change per transform.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.analysis.common import load_classes, with_ground_truth  # noqa: E402
from dedup_assets.core.decision.class_decision import class_order, vectorise  # noqa: E402
from dedup_assets.core.decision.keep_policy import KEEP_POLICIES  # noqa: E402
from dedup_assets.core.quality.evaluation import ClassPairs, evaluate_method  # noqa: E402
from dedup_assets.core.quality.planting import read_ground_truth, transform_of  # noqa: E402

METHODS = ("whitened", "spline_copula", "phash", "pdq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("ground_truth", type=Path)
    parser.add_argument("components", type=int, nargs="?", default=128)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument(
        "--policy",
        default="first",
        choices=list(KEEP_POLICIES),
        help="visit order of the removals (recall and AP do not depend on it)",
    )
    args = parser.parse_args()
    gt = read_ground_truth(args.ground_truth)
    classes = [c.refit(args.components) for c in load_classes(args.output, with_pixels=True)]
    vectors = {c.key: {m: vectorise(c.data, m) for m in METHODS} for c in classes}
    orders = {c.key: class_order(c.data, args.policy) for c in classes}
    t = args.threshold
    for transform in sorted({transform_of(p.copy) for p in gt}):
        subset = with_ground_truth(
            args.output, classes, [p for p in gt if transform_of(p.copy) == transform]
        )
        cells = []
        for method in METHODS:
            pairs = [
                ClassPairs(
                    c.key,
                    vectors[c.key][method],
                    c.positives,
                    orders[c.key],
                    c.in_ground_truth,
                    c.data.pixel_hashes,
                )
                for c in subset
            ]
            r = evaluate_method(method, pairs, [t])
            cells.append(
                f"{method} AP={r.average_precision:.3f} R@{t}={r.per_threshold[0]['recall']:.2f}"
            )
        n = sum(len(c.positives) for c in subset)
        print(f"{transform:10s} pairs={n:4d} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
