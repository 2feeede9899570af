"""What a training setting finds on a planted set, measured as the pipeline measures it.

python benchmarks/analysis/invariance_sweep.py PLANTED_DIR [--images N] [--check-every N]
    [--objective invariant] [--weight W] [--temperature T] [--batch B] [--components K]
    [--crop C] [--shift S] [--light L] [--json OUT]

Decodes the planted folder (`dedup plant` output) exactly as the catalog does, trains the
Table 1 network in process (bf16 autocast where the CPU has it) for about N images, and at
every check (every CHECK_EVERY images seen) scores the spline-copula space of the codes:
AP of the known pairs over all within-class pairs (by cosine and by margin over local
levels), and recall / false removals (share of images in no known pair that the greedy keep
removes) at cosines 0.9 and 0.95 and at the 1% and 2% false-removal budgets, each resolved
per class from mirrored decoys (`core.decision.calibration`, `core.decision.local_scaling`)
as `dedup run` resolves them, with uniform and with local scaling; recall per planted
transform at each. The augmentation ranges can be overridden (`--crop`, `--shift`, `--light`) to
measure a mix before it becomes the default.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dedup_assets.core.data.image_folder import decode_image_bytes  # noqa: E402
from dedup_assets.core.decision.calibration import budget_thresholds, mirror_null, mirrored  # noqa: E402
from dedup_assets.core.decision.local_scaling import local_levels, null_margins  # noqa: E402
from dedup_assets.core.decision.similarity import embed  # noqa: E402
from dedup_assets.core.density.class_density import fit_class_density  # noqa: E402
from dedup_assets.core.model import augment as AUG  # noqa: E402
from dedup_assets.core.model import autoencoder as A  # noqa: E402
from dedup_assets.core.quality.evaluation import ClassPairs, evaluate_method, positive_pairs  # noqa: E402
from dedup_assets.core.quality.planting import transform_of  # noqa: E402


def load_planted(root: Path):
    """(pixels, class labels, known rows (a, b, transform), class names), cached beside /tmp."""
    cache = Path("/tmp") / f"sweep_{root.name}_{abs(hash(str(root.resolve())))}.npz"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        pixels, labels, names = z["pixels"], z["labels"], z["names"].tolist()
    else:
        pix, labels, names = [], [], []
        for k, c in enumerate(classes):
            for f in sorted((root / c).iterdir()):
                d = decode_image_bytes(f.read_bytes())
                if d.pixels is None:
                    continue
                pix.append(d.pixels)
                labels.append(k)
                names.append(f"{c}/{f.name}")
        pixels, labels = np.stack(pix), np.array(labels)
        np.savez(cache, pixels=pixels, labels=labels, names=np.array(names))
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for r in csv.DictReader((root / "ground_truth.csv").open()):
        a, b = index.get(f"{r['class']}/{r['original']}"), index.get(f"{r['class']}/{r['copy']}")
        if a is not None and b is not None:
            rows.append((a, b, transform_of(r["copy"])))
    return pixels, labels, rows, classes


def score(model, pixels, labels, rows, n_classes, components: int, amp) -> dict:
    """AP (by cosine and by margin), and recall / false removals at fixed cosines and at
    budgets, each budget both ways (uniform: one cosine per class; local: one margin over
    the images' local levels), per planted transform."""
    z = A.encode_images(model, pixels, amp_dtype=amp)
    zm = A.encode_images(model, mirrored(pixels), amp_dtype=amp)
    fixed = [0.9, 0.95]
    budgets = [0.01, 0.02]
    per_class = []
    uniform = {b: {} for b in budgets}
    local = {b: {} for b in budgets}
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        pos = {int(g): n for n, g in enumerate(idx)}
        fit = fit_class_density(z[idx], components, "fd")
        v = embed(z[idx], "spline_copula", fit)
        d = embed(zm[idx], "spline_copula", fit)
        width = max(v.shape[1], d.shape[1])
        v, d = (np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in (v, d))
        every = np.arange(len(idx))
        levels = local_levels(v, d, every)
        cos_t = budget_thresholds(mirror_null(v, d, every), budgets)
        margin_t = budget_thresholds(null_margins(v, d, every, levels), budgets)
        for b, c, m in zip(budgets, cos_t, margin_t, strict=True):
            uniform[b][str(k)], local[b][str(k)] = c, m
        known = [(pos[a], pos[b], t) for a, b, t in rows if a in pos and b in pos]
        pairs, involved = positive_pairs(len(idx), [(a, b) for a, b, _ in known])
        order = np.argsort(fit.log_density(z[idx]), kind="stable")
        per_class.append(
            ClassPairs(
                str(k),
                v,
                pairs,
                order,
                involved,
                None,
                np.array([(a, b) for a, b, _ in known], dtype=np.int64).reshape(-1, 2),
                tuple(t for _, _, t in known),
                levels.offsets,
            )
        )
    labels_t = [*map(str, fixed), "1% uniform", "2% uniform", "1%", "2%"]
    r = evaluate_method(
        "spline_copula",
        per_class,
        [*fixed, uniform[0.01], uniform[0.02], local[0.01], local[0.02]],
        labels=labels_t,
        local=[False, False, False, False, True, True],
    )
    out = {"ap": r.average_precision, "ap_local": r.average_precision_local}
    for row in r.per_threshold:
        out[row["threshold"]] = {
            "recall": row["recall"],
            "false_removals": row["false_removal_rate"],
        } | {k[7:]: v for k, v in row.items() if k.startswith("recall_")}
    out["margins_1%"] = [round(local[0.01][str(k)], 3) for k in range(n_classes)]
    return out


def line(seen: int, elapsed: float, held: float, s: dict) -> str:
    parts = [
        f"{seen:7d} img {elapsed:5.0f}s held {held:.4f} AP {s['ap']:.3f} "
        f"AP (margins) {s['ap_local']:.3f}"
    ]
    for t in ("0.9", "1% uniform", "1%", "2%"):
        row = s[t]
        per = " ".join(
            f"{k[:4]}={v:.2f}" for k, v in row.items() if k not in ("recall", "false_removals")
        )
        parts.append(f"[{t}] R {row['recall']:.3f} FR {row['false_removals']:.4f} {per}")
    return "\n    ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("planted", type=Path)
    p.add_argument("--images", type=int, default=19_800)
    p.add_argument("--check-every", type=int, default=6_600)
    p.add_argument("--objective", default="invariant")
    p.add_argument("--weight", type=float, default=A.InvariantLoss.contrast_weight)
    p.add_argument("--temperature", type=float, default=A.InvariantLoss.temperature)
    p.add_argument("--views", default="two", choices=["one", "two"])
    p.add_argument("--no-clean-grad", action="store_true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--components", type=int, default=128)
    p.add_argument("--crop", type=float, default=None, help="crop_shift max_crop")
    p.add_argument("--shift", type=float, default=None, help="crop_shift max_shift")
    p.add_argument("--light", type=float, default=None, help="brightness_contrast strength")
    p.add_argument("--fp32", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--save-model", type=Path, default=None, help="state dict after training")
    args = p.parse_args()
    if args.crop is not None or args.shift is not None:
        kw = {
            k: v for k, v in (("max_crop", args.crop), ("max_shift", args.shift)) if v is not None
        }
        AUG.TRANSFORMS["crop_shift"] = functools.partial(AUG.crop_shift, **kw)
    if args.light is not None:
        AUG.TRANSFORMS["brightness_contrast"] = functools.partial(
            AUG.brightness_contrast, strength=args.light
        )
    pixels, labels, rows, classes = load_planted(args.planted)
    amp = None if args.fp32 or not A.cpu_supports_bf16() else __import__("torch").bfloat16
    print(
        f"{len(pixels)} images, {len(rows)} known pairs, {vars(args)}, "
        f"threads {os.cpu_count()}, amp {amp}",
        flush=True,
    )
    history = []
    start = time.time()

    def on_check(model, seen: int, held: float) -> None:
        s = score(model, pixels, labels, rows, len(classes), args.components, amp)
        elapsed = time.time() - start
        history.append({"images_seen": seen, "seconds": elapsed, "held_out": held} | s)
        print(line(seen, elapsed, held, s), flush=True)

    rule = A.EarlyStopping(
        max_epochs=max(1, -(-args.images // len(pixels))),
        check_every=args.check_every,
        patience=10**9,
        min_delta=0.0,
    )
    loss = A.InvariantLoss(
        contrast_weight=args.weight,
        temperature=args.temperature,
        views=args.views,
        clean_grad=not args.no_clean_grad,
    )
    result = A.train_autoencoder(
        pixels,
        objective=args.objective,
        invariant=loss,
        early_stopping=rule,
        on_check=on_check,
        batch_size=args.batch,
        learning_rate=args.lr,
        amp_dtype=amp,
    )
    if args.save_model:
        A.save_state(result.model, args.save_model)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "history": history}, indent=1))


if __name__ == "__main__":
    main()
