"""Recall at one threshold and AP per planted transform: whitened, spline_copula and pHash.

python benchmarks/analysis/per_transform.py OUTPUT_DIR GROUND_TRUTH.csv [N_COMPONENTS]
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.analysis.common import load_classes  # noqa: E402
from dedup_assets.core.artifacts import catalog_images, open_pixels, read_catalog  # noqa: E402
from dedup_assets.core.class_density import fit_class_density  # noqa: E402
from dedup_assets.core.evaluation import ClassPairs, evaluate_method  # noqa: E402
from dedup_assets.core.layout import OutputLayout  # noqa: E402
from dedup_assets.core.phash import hash_vectors, phash_bits  # noqa: E402
from dedup_assets.core.planting import read_ground_truth, transform_of  # noqa: E402
from dedup_assets.core.similarity import embed  # noqa: E402


def main() -> None:
    output, gt_path = Path(sys.argv[1]), Path(sys.argv[2])
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    gt = read_ground_truth(gt_path)
    layout = OutputLayout(output)
    catalog = catalog_images(read_catalog(layout))
    row = dict(zip(catalog["image_id"].to_list(), catalog["row"].to_list(), strict=True))
    pixels = open_pixels(layout)
    base = load_classes(output)
    vectors = {}
    for c in base:
        model = fit_class_density(c.latents, k)
        vectors[c.key] = {
            "whitened": embed(c.latents, "whitened", model),
            "spline_copula": embed(c.latents, "spline_copula", model),
            "phash": hash_vectors(phash_bits(np.asarray(pixels[[row[i] for i in c.ids]]))),
        }
    for transform in sorted({transform_of(p.copy) for p in gt}):
        subset = load_classes(output, [p for p in gt if transform_of(p.copy) == transform])
        cells = []
        for method in ("whitened", "spline_copula", "phash"):
            pairs = [
                ClassPairs(
                    c.key,
                    vectors[c.key][method],
                    c.positives,
                    np.arange(len(c.ids)),
                    c.in_ground_truth,
                )
                for c in subset
            ]
            r = evaluate_method(method, pairs, [0.95])
            cells.append(
                f"{method} AP={r.average_precision:.3f} R@0.95={r.per_threshold[0]['recall']:.2f}"
            )
        n = sum(len(c.positives) for c in subset)
        print(f"{transform:10s} pairs={n:4d} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
