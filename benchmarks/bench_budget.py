"""Does a false-removal budget hold? What it removes from unrelated images, and what it keeps
of planted copies.

Two parts:

1. Unrelated images (`--unrelated`): EuroSAT drawn across its classes at 64 px and
   downscaled to 32 px, and the hymenoptera photos, cut into classes of 2, 3, 5, 10, 30,
   100 and 1,000 images; plus the demo's six kinds of scene, one class per kind (classes of
   alike images that differ from each other). Each decided as a run decides
   (`core.decision.class_keep.decide_in_memory`) at 0.1%, 0.5%, 1% and 5%: every removal is false,
   so the removed share per class size is the measured false-removal rate, beside the
   budget and the binomial 99% bound.
2. Planted copies (`--planted`): `dedup plant` then the real `dedup run --thresholds
   0.1%,0.5%,1%` on EuroSAT (64 px and downscaled to 32 px, `--per-class` originals a
   class) and hymenoptera; from `evaluation/evaluation.csv`: the false-removal rate among
   images in no planted pair and the recall of the planted pairs, for the default space
   and pHash.

    python benchmarks/bench_budget.py --datasets ../shared/datasets [--unrelated] [--planted]
        [--per-class 600] [--work /tmp/bench_budget]      # results/budget_calibration.json
"""

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402

BUDGETS = ["0.1%", "0.5%", "1%", "5%"]
SIZES = {2: 50, 3: 34, 5: 20, 10: 10, 30: 4, 100: 2, 1000: 1}
PHOTO_SIZES = {2: 29, 3: 20, 5: 12, 10: 6, 30: 2, 90: 1}
DEDUP = Path(sys.executable).with_name("dedup")


def _decode_files(files: list[Path], px: int) -> np.ndarray:
    import io

    from PIL import Image

    from dedup_assets.core.data.image_folder import decode_image_bytes

    out = []
    for f in files:
        data = f.read_bytes()
        if px:
            small = Image.open(io.BytesIO(data)).convert("RGB").resize((px, px), Image.BILINEAR)
            buf = io.BytesIO()
            small.save(buf, format="PNG")
            data = buf.getvalue()
        out.append(decode_image_bytes(data).pixels)
    return np.stack(out)


def _cut(pixels: np.ndarray, sizes: dict[int, int]) -> dict[str, np.ndarray]:
    classes, at = {}, 0
    for size, count in sizes.items():
        for i in range(count):
            if at + size <= len(pixels):
                classes[f"s{size:04d}_{i:03d}"] = pixels[at : at + size]
                at += size
    return classes


def _tally(decided: dict) -> list[dict]:
    from scipy.stats import binom

    rows = []
    for key, per_class in decided.items():
        b = float(key.rstrip("%")) / 100
        by_size: dict[int, list[int]] = {}
        for name, d in per_class.items():
            counts = by_size.setdefault(int(name[1:5]), [0, 0, 0])
            counts[0] += len(d.decision.kept)
            counts[1] += int((~d.decision.kept).sum())
            counts[2] += 1
        for size, (n, removed, classes) in sorted(by_size.items()):
            rows.append(
                {
                    "budget": key,
                    "class_size": size,
                    "classes": classes,
                    "images": n,
                    "removed": removed,
                    "removed_share": removed / n,
                    "chance_bound_99": int(binom.ppf(0.99, n, b)),
                }
            )
        n_all = sum(v[0] for v in by_size.values())
        removed_all = sum(v[1] for v in by_size.values())
        rows.append(
            {
                "budget": key,
                "class_size": "all",
                "classes": sum(v[2] for v in by_size.values()),
                "images": n_all,
                "removed": removed_all,
                "removed_share": removed_all / n_all,
                "chance_bound_99": int(binom.ppf(0.99, n_all, b)),
            }
        )
    return rows


def _model(pixels: np.ndarray, epochs: int):
    import torch

    from dedup_assets.core.model.autoencoder import cpu_supports_bf16, train_autoencoder

    amp = torch.bfloat16 if cpu_supports_bf16() else None
    sample = pixels[np.random.default_rng(0).permutation(len(pixels))[:4096]]
    return train_autoencoder(
        sample, epochs=epochs, batch_size=128, objective="invariant", amp_dtype=amp
    ).model


def unrelated(datasets: Path, epochs: int) -> dict:
    """The calibration table on every unrelated set."""
    from dedup_assets.core.decision.class_keep import decide_in_memory
    from dedup_assets.core.quality.demo_data import DEMO_CLASSES, _render

    out = {}
    sets = {}
    eurosat = sorted((datasets / "eurosat").rglob("*.jpg"))
    if eurosat:
        for px, seed in ((64, 0), (32, 1)):
            picked = [eurosat[i] for i in np.random.default_rng(seed).permutation(len(eurosat))]
            sets[f"eurosat_{px}px"] = (_decode_files(picked[:1722], 0 if px == 64 else px), SIZES)
    photos = sorted((datasets / "hymenoptera").rglob("*.jpg"))
    if photos:
        order = np.random.default_rng(0).permutation(len(photos))
        sets["photos"] = (_decode_files([photos[i] for i in order], 0), PHOTO_SIZES)
    for name, (pixels, sizes) in sets.items():
        model = _model(pixels, epochs)
        out[name] = _tally(decide_in_memory(_cut(pixels, sizes), BUDGETS, model))
        print(f"{name}: done", flush=True)
    # One kind of scene per class, one run per class size (the pool holds other kinds only).
    decided: dict = {b: {} for b in BUDGETS}
    for size in (5, 10, 30, 60, 300):
        classes = {
            f"s{size:04d}_{kind}": np.stack([_render(kind, size, i) for i in range(size)])
            for kind in DEMO_CLASSES
        }
        model = _model(np.concatenate(list(classes.values())), epochs)
        for key, per_class in decide_in_memory(classes, BUDGETS, model).items():
            decided[key] |= per_class
    out["one_kind_per_class"] = _tally(decided)
    return out


def _run(args: list[str]) -> None:
    done = subprocess.run([str(DEDUP), *args], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stdout + done.stderr)


def _downscaled(source: Path, dest: Path, px: int) -> Path:
    from PIL import Image

    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(source.rglob("*.jpg")):
        target = tmp / f.parent.name / (f.stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").resize((px, px), Image.BILINEAR).save(target)
    tmp.rename(dest)
    return dest


def planted(datasets: Path, work: Path, per_class: int) -> dict:
    """Recall and false removals of the budgets on planted copies, through the real command."""
    sources = {}
    if (datasets / "eurosat").is_dir():
        sources["eurosat_64px"] = (datasets / "eurosat", ["--per-class", str(per_class)])
        small = _downscaled(datasets / "eurosat", work / "eurosat_32px_source", 32)
        sources["eurosat_32px"] = (small, ["--per-class", str(per_class)])
    if (datasets / "hymenoptera").is_dir():
        sources["photos"] = (datasets / "hymenoptera", [])
    out = {}
    for name, (source, extra) in sources.items():
        dest, output = work / f"{name}_planted", work / f"{name}_out"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(output, ignore_errors=True)
        _run(["plant", "--source", str(source), "--dest", str(dest), "--fraction", "0.1", *extra])
        _run(
            ["run", "--source", str(dest), "--output", str(output), "--thresholds", "0.1%,0.5%,1%"]
        )
        with open(output / "evaluation" / "evaluation.csv") as fh:
            rows = [r for r in csv.DictReader(fh) if r["method"] in ("spline_copula_dct", "phash")]
        out[name] = [
            {
                "method": r["method"],
                "budget": r["threshold"],
                "recall": float(r["recall"]),
                "false_removal_rate": float(r["false_removal_rate"]),
                "images_removed": int(r["images_removed"]),
            }
            for r in rows
        ]
        print(f"{name}: done", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--unrelated", action="store_true", help="only part 1")
    p.add_argument("--planted", action="store_true", help="only part 2")
    p.add_argument("--per-class", type=int, default=600, help="EuroSAT originals per class")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of part 1's models")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_budget"))
    add_out_option(p)
    args = p.parse_args()
    both = not args.unrelated and not args.planted
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"budgets": BUDGETS}
    earlier = Path(args.out) / "budget_calibration.json"
    if not both and earlier.exists():  # one part run again: the other part's numbers stay
        kept = json.loads(earlier.read_text())
        result |= {k: kept[k] for k in ("unrelated", "planted") if k in kept}
    if args.unrelated or both:
        result["unrelated"] = unrelated(args.datasets, args.epochs)
        for name, rows in result["unrelated"].items():
            print(f"\n{name}: removed share of unrelated images (chance 99% bound in images)")
            sizes = sorted({r["class_size"] for r in rows}, key=lambda s: (s == "all", s))
            print(
                table(
                    ["size", *BUDGETS],
                    [
                        [s]
                        + [
                            next(
                                f"{r['removed_share']:.2%} ({r['removed']}/{r['images']}, "
                                f"<={r['chance_bound_99']})"
                                for r in rows
                                if r["class_size"] == s and r["budget"] == b
                            )
                            for b in BUDGETS
                        ]
                        for s in sizes
                    ],
                )
            )
    if args.unrelated or both:
        write_result("budget_calibration", result, args.out)  # part 1 kept if part 2 fails
    if args.planted or both:
        result["planted"] = planted(args.datasets, args.work, args.per_class)
        print("\nplanted copies: recall / false-removal rate")
        print(
            table(
                ["set", "method", "budget", "recall", "false removals"],
                [
                    [name, r["method"], r["budget"], r["recall"], f"{r['false_removal_rate']:.2%}"]
                    for name, rows in result["planted"].items()
                    for r in rows
                ],
            )
        )
    print(write_result("budget_calibration", result, args.out))


if __name__ == "__main__":
    main()
