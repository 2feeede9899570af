"""Average precision of the whitened and spline_copula spaces against the number of components.

python benchmarks/analysis/scan_components.py OUTPUT_DIR GROUND_TRUTH.csv 16,32,64,128,256
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.analysis.common import load_classes  # noqa: E402
from dedup_assets.core.class_density import fit_class_density  # noqa: E402
from dedup_assets.core.evaluation import ClassPairs, evaluate_method  # noqa: E402
from dedup_assets.core.keep_policy import visit_order  # noqa: E402
from dedup_assets.core.planting import read_ground_truth  # noqa: E402
from dedup_assets.core.similarity import embed  # noqa: E402

THRESHOLDS = [0.8, 0.9, 0.93, 0.95, 0.97]


def main() -> None:
    output, gt, ks = Path(sys.argv[1]), Path(sys.argv[2]), [int(k) for k in sys.argv[3].split(",")]
    classes = load_classes(output, read_ground_truth(gt))
    for k in ks:
        models = [fit_class_density(c.latents, k) for c in classes]
        for space in ("whitened", "spline_copula"):
            pairs = [
                ClassPairs(
                    c.key,
                    embed(c.latents, space, m),
                    c.positives,
                    visit_order(c.ids, "first"),
                    c.in_ground_truth,
                )
                for c, m in zip(classes, models, strict=True)
            ]
            r = evaluate_method(space, pairs, THRESHOLDS)
            cells = " ".join(
                f"{p['threshold']}:R{p['recall']:.2f}/P{p['precision']:.2f}/U{p['unrelated_kept_fraction']:.3f}"
                for p in r.per_threshold
            )
            print(f"{k:4d} {space:14s} AP={r.average_precision:.3f} {cells}", flush=True)


if __name__ == "__main__":
    main()
