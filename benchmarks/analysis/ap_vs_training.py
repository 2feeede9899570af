"""AP of planted pairs against training images seen, for one objective, in process.

python benchmarks/analysis/ap_vs_training.py PLANTED_DIR plain|invariant IMAGES [CHECK_EVERY]
    [CONTRAST_WEIGHT] [TEMPERATURE]

Decodes the planted folder (64x64, bilinear), trains the Table 1 network for about IMAGES
images, and at every early-stopping check (every CHECK_EVERY images, default 2048; the
rule is set never to stop) prints the held-out loss and the spline-copula AP of the known
pairs (per-class PCA to 128 components and spline fits, as the pipeline does), with recall
at cosine 0.9 and 0.95.
"""

import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dedup_assets.core.decision.similarity import embed  # noqa: E402
from dedup_assets.core.density.class_density import fit_class_density  # noqa: E402
from dedup_assets.core.model import autoencoder as A  # noqa: E402
from dedup_assets.core.quality.evaluation import ClassPairs, evaluate_method, positive_pairs  # noqa: E402


def main() -> None:
    root, objective, total = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    check_every = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted(c.iterdir()):
            files.append(f)
            labels.append(k)

    def load(f: Path) -> np.ndarray:
        with Image.open(f) as im:
            return np.asarray(im.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))

    pixels, labels = np.stack([load(f) for f in files]), np.array(labels)
    index = {(f.parent.name, f.name): i for i, f in enumerate(files)}
    gt = list(csv.DictReader((root / "ground_truth.csv").open()))
    edges = [(index[(r["class"], r["original"])], index[(r["class"], r["copy"])]) for r in gt]
    print(f"{len(pixels)} images, {len(edges)} known pairs", flush=True)

    def ap(model) -> tuple[float, list[float]]:
        z = A.encode_images(model, pixels)
        pairs_per_class = []
        for k in range(len(classes)):
            idx = np.flatnonzero(labels == k)
            pos = {g: n for n, g in enumerate(idx)}
            vectors = embed(z[idx], "spline_copula", fit_class_density(z[idx], 128, "fd"))
            known = [(pos[a], pos[b]) for a, b in edges if a in pos and b in pos]
            pairs, involved = positive_pairs(len(idx), known)
            pairs_per_class.append(
                ClassPairs(str(k), vectors, pairs, np.arange(len(idx)), involved)
            )
        r = evaluate_method("spline_copula", pairs_per_class, [0.9, 0.95])
        return r.average_precision, [p["recall"] for p in r.per_threshold]

    start = time.time()

    def on_check(model, seen: int, held: float) -> None:
        a, (r90, r95) = ap(model)
        print(
            f"{seen:7d} images {time.time() - start:6.0f}s held-out {held:.5f} AP {a:.3f} "
            f"R@0.9 {r90:.2f} R@0.95 {r95:.2f}",
            flush=True,
        )

    rule = A.EarlyStopping(
        max_epochs=max(1, total // len(pixels)),
        check_every=check_every,
        patience=10**9,
        min_delta=0.0,
    )
    loss = A.InvariantLoss(
        contrast_weight=float(sys.argv[5]) if len(sys.argv) > 5 else 0.05,
        temperature=float(sys.argv[6]) if len(sys.argv) > 6 else 0.1,
    )
    print(f"contrast weight {loss.contrast_weight}, temperature {loss.temperature}", flush=True)
    A.train_autoencoder(
        pixels, objective=objective, invariant=loss, early_stopping=rule, on_check=on_check
    )


if __name__ == "__main__":
    main()
