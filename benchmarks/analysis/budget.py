"""False-removal budgets on an output folder: the cosine each budget maps to per class
(from mirrored decoys, `core.decision.calibration`), and what deciding at it finds.

python benchmarks/analysis/budget.py OUTPUT_DIR GROUND_TRUTH.csv [--budgets 0.005 0.01 0.02]
    [--space spline_copula] [--policy density]

For each budget: pair recall of the known pairs (overall and per planted transform), the
false-removal rate among images in no known pair, and the range of per-class cosines; next
to it the same numbers at fixed cosines for comparison.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.analysis.common import load_classes  # noqa: E402
from dedup_assets.core.data.layout import OutputLayout  # noqa: E402
from dedup_assets.core.decision.calibration import (  # noqa: E402
    budget_thresholds,
    mirrored,
    nearest_decoy_similarity,
)
from dedup_assets.core.decision.class_decision import class_order, keep_decisions, vectorise  # noqa: E402
from dedup_assets.core.model.autoencoder import encode_images, load_state  # noqa: E402
from dedup_assets.core.quality.evaluation import ground_truth_edges  # noqa: E402
from dedup_assets.core.quality.planting import read_ground_truth  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output", type=Path)
    p.add_argument("ground_truth", type=Path)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    p.add_argument("--fixed", type=float, nargs="+", default=[0.9, 0.93, 0.95, 0.97])
    p.add_argument("--space", default="spline_copula")
    p.add_argument("--policy", default="density")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    layout = OutputLayout(args.output)
    model = load_state(layout.model)
    classes = load_classes(args.output, with_pixels=True)
    from dedup_assets.core.data.artifacts import catalog_images, class_names, read_catalog

    key_of = {name: key for key, name in class_names(layout).items()}
    edges = ground_truth_edges(
        catalog_images(read_catalog(layout)),
        read_ground_truth(args.ground_truth),
        key_of,
        with_transforms=True,
    )[0]
    # Per class: scores of known (original, copy) rows, transforms, decisions per cosine.
    settings = {f"budget {b}": ("budget", b) for b in args.budgets} | {
        f"T={t}": ("fixed", t) for t in args.fixed
    }
    totals = {
        name: {"tp": 0, "pairs": 0, "false": 0, "clean": 0, "cosines": [], "by_t": {}}
        for name in settings
    }
    for c in classes:
        data = c.data
        v = vectorise(data, args.space)
        decoy_pixels = mirrored(data.pixels)
        decoy = dataclasses.replace(
            data, latents=encode_images(model, decoy_pixels), pixels=decoy_pixels
        )
        d = vectorise(decoy, args.space)
        null = nearest_decoy_similarity(v, d, own=False)
        index = {i: k for k, i in enumerate(data.image_ids.tolist())}
        rows = [
            (index[a], index[b], t) for a, b, t in edges.get(c.key, []) if a in index and b in index
        ]
        in_gt = np.zeros(len(v), bool)
        for a, b, _ in rows:
            in_gt[a] = in_gt[b] = True
        scores = np.array([float(v[a] @ v[b]) for a, b, _ in rows])
        transforms = [t for _, _, t in rows]
        order = class_order(data, args.policy)
        cosines = dict(zip(args.budgets, budget_thresholds(null, args.budgets), strict=True))
        for name, (kind, value) in settings.items():
            t = cosines[value] if kind == "budget" else value
            kept = keep_decisions(v, order, data.pixel_hashes, [t])[0].kept
            tot = totals[name]
            tot["cosines"].append((c.name, round(t, 4)))
            tot["tp"] += int((scores > t).sum())
            tot["pairs"] += len(scores)
            tot["false"] += int((~kept & ~in_gt).sum())
            tot["clean"] += int((~in_gt).sum())
            for tr, s in zip(transforms, scores, strict=True):
                hit, n = tot["by_t"].get(tr, (0, 0))
                tot["by_t"][tr] = (hit + int(s > t), n + 1)
        print(
            f"{c.name}: budgets -> " + ", ".join(f"{b}: {t:.4f}" for b, t in cosines.items()),
            flush=True,
        )
    report = {}
    for name, tot in totals.items():
        cos = [t for _, t in tot["cosines"]]
        report[name] = {
            "recall": tot["tp"] / max(tot["pairs"], 1),
            "false_removal_rate": tot["false"] / max(tot["clean"], 1),
            "cosine_min": min(cos),
            "cosine_max": max(cos),
            "per_class_cosine": dict(tot["cosines"]),
            "recall_per_transform": {k: h / n for k, (h, n) in sorted(tot["by_t"].items())},
        }
        r = report[name]
        per_t = " ".join(f"{k}={v:.2f}" for k, v in r["recall_per_transform"].items())
        print(
            f"{name:14s} recall {r['recall']:.3f}  false removals {r['false_removal_rate']:.4f}  "
            f"cosine {r['cosine_min']:.3f}-{r['cosine_max']:.3f}  {per_t}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
