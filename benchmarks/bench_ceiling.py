"""A budget's ceiling: near-identical copies in the densest part of a class, found or kept?

With local scaling a pair's own threshold is the class's margin plus half of each image's
level; where both levels are high it passes 1 and no pair can reach it. The ceiling
(`core.decision.local_scaling.ceiling_of`) caps it. This benchmark measures both rules on
the same images, in one process:

1. EuroSAT, `--per-class` images of every class decided at each budget as a run decides
   (`class_keep.decide_in_memory`, a model trained here): how many images have their own
   threshold (margin + their level) above 1, per budget.
2. Into each class, JPEG re-encodes (quality `--quality`) of its `--copies` images of the
   highest level and of as many drawn at random; decided again with and without the
   ceiling (the property `BudgetThreshold.offset_cap` set to None restores the rule
   before it). Recall of the copies of each group, and the removals among the images in no
   pair (all false).

    python benchmarks/bench_ceiling.py --source ../shared/datasets/eurosat \
        [--per-class 600] [--copies 10] [--quality 90]          # results/budget_ceiling.json
"""

import argparse
import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_budget import _decode_files, _model  # noqa: E402
from benchmarks.common import add_out_option, table, write_result  # noqa: E402

BUDGETS = ["0.5%", "1%", "2%"]


def _reencoded(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Each image saved as a JPEG of `quality` and decoded as a run decodes it."""
    from PIL import Image

    from dedup_assets.core.data.image_folder import decode_image_bytes

    out = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="JPEG", quality=quality)
        out.append(decode_image_bytes(buf.getvalue()).pixels)
    return np.stack(out)


def _decide(classes: dict, model, ceiling: bool) -> dict:
    from dedup_assets.core.decision import calibration
    from dedup_assets.core.decision.class_keep import decide_in_memory

    saved = calibration.BudgetThreshold.offset_cap
    if not ceiling:  # the rule before the ceiling: a pair's offsets uncapped
        calibration.BudgetThreshold.offset_cap = property(lambda self: None)
    try:
        return decide_in_memory(classes, BUDGETS, model)
    finally:
        calibration.BudgetThreshold.offset_cap = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, default=Path("../shared/datasets/eurosat"))
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--copies", type=int, default=10, help="high-level and random originals")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--epochs", type=int, default=2)
    add_out_option(p)
    args = p.parse_args()

    rng = np.random.default_rng(0)
    classes = {}
    for folder in sorted(d for d in args.source.iterdir() if d.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        picked = [files[i] for i in np.sort(rng.permutation(len(files))[: args.per_class])]
        classes[folder.name] = _decode_files(picked, 0)
    model = _model(np.concatenate(list(classes.values())), args.epochs)

    first = _decide(classes, model, ceiling=True)
    above_one = {}
    for b in BUDGETS:
        n = above = 0
        for d in first[b].values():
            r = d.resolved
            if r is not None and r.offsets is not None:
                n += len(r.offsets)
                above += int((r.threshold + 2 * r.offsets > 1.0).sum())
        above_one[b] = {"images": n, "own_threshold_above_1": above, "share": above / max(n, 1)}

    # Plant: re-encodes of each class's highest-level images and of random ones (1% levels).
    planted, groups = {}, {}
    for name, pixels in classes.items():
        r = first["1%"][name].resolved
        level = 2 * r.offsets if r is not None and r.offsets is not None else np.zeros(len(pixels))
        high = np.argsort(-level, kind="stable")[: args.copies]
        rest = np.setdiff1d(np.arange(len(pixels)), high)
        drawn = rng.choice(rest, args.copies, replace=False)
        originals = np.concatenate([high, drawn])
        planted[name] = np.concatenate([pixels, _reencoded(pixels[originals], args.quality)])
        groups[name] = (originals, len(pixels), float(level[high].min()))

    rows, results = [], {}
    for ceiling in (False, True):
        decided = _decide(planted, model, ceiling)
        for b in BUDGETS:
            found = {"high": 0, "random": 0}
            false, clean_n = 0, 0
            for name, d in decided[b].items():
                kept = d.decision.kept
                originals, n, _ = groups[name]
                copies = n + np.arange(len(originals))
                hit = ~kept[originals] | ~kept[copies]
                found["high"] += int(hit[: args.copies].sum())
                found["random"] += int(hit[args.copies :].sum())
                clean = np.ones(len(kept), bool)
                clean[originals] = clean[copies] = False
                false += int((~kept & clean).sum())
                clean_n += int(clean.sum())
            total = args.copies * len(groups)
            rule = "with ceiling" if ceiling else "without (before)"
            results.setdefault(rule, {})[b] = {
                "recall_high_level": found["high"] / total,
                "recall_random": found["random"] / total,
                "false_removals": false,
                "false_removal_rate": false / clean_n,
                "unpaired_images": clean_n,
            }
            rows.append(
                [
                    rule,
                    b,
                    found["high"] / total,
                    found["random"] / total,
                    f"{false}/{clean_n}",
                ]
            )
    payload = {
        "source": str(args.source),
        "per_class": args.per_class,
        "copies_per_group_per_class": args.copies,
        "jpeg_quality": args.quality,
        "lowest_high_level_by_class": {k: v[2] for k, v in groups.items()},
        "own_threshold_above_1": above_one,
        "results": results,
    }
    path = write_result("budget_ceiling", payload, args.out)
    print(
        table(
            ["budget", "images", "own threshold > 1", "share"],
            [
                [b, v["images"], v["own_threshold_above_1"], v["share"]]
                for b, v in above_one.items()
            ],
        )
    )
    print()
    print(
        table(["rule", "budget", "recall (high level)", "recall (random)", "false removals"], rows)
    )
    print(path)


if __name__ == "__main__":
    main()
