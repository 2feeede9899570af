"""New images at scale: `dedup run` after 1% new images on an output a first run made (e.g.
bench_scale.py's 135,000 images), with what a run keeps for the next (the cross-class join's
state, the clean copies' unchanged folders) and without it, alternated.

    python benchmarks/bench_incremental_scale.py --source /tmp/latent_dedup_scale/set_135000 \
        --output /tmp/latent_dedup_scale/out_135000 [--classes Forest,River] [--share 0.01] \
        [--pairs 2]

After a warm-up (new images, a run; removed, a run), each pair: 1% new images (existing ones of two classes turned a quarter, a new name per
pair) and a run that reuses (`reuse`); the images removed again and a run (`removed`); the
same new images and a run after the reuse is taken away (`without`: the join's state
deleted, so the join is computed whole; the clean copies' manifests without the sizes and
times that let a folder move, so every file is linked again); removed again and a run.
The source gets back what it had; the output is a normal output of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import add_out_option, table, timed_dedup_run, write_result  # noqa: E402

FILES_NAME = ".latent-dedup-clean.parquet"


def add(source: Path, classes: list[str], per_class: int, tag: str) -> list[Path]:
    """per_class new images in each class: its first files turned a quarter."""
    made = []
    for name in classes:
        folder = source / name
        for i, path in enumerate(sorted(p for p in folder.glob("*.jpg") if "-" not in p.stem)):
            if i == per_class:
                break
            with Image.open(path) as img:
                out = folder / f"{name}-{tag}-{i:05d}.jpg"
                img.rotate(90).save(out, quality=95)
                made.append(out)
    return made


def take_reuse_away(output: Path) -> None:
    """What lets the next run reuse: the join's state, the copies' sizes and times."""
    for path in (output / "cross_class").glob(".join_*"):
        path.unlink()
    for files in (output / "clean").glob(f"*/{FILES_NAME}"):
        pl.read_parquet(files, columns=["raw_path", "content_hash"]).write_parquet(files)


def summary(done: dict) -> dict:
    work = {r["asset"]: r["seconds"] for r in done["work"]}
    return {
        "wall_seconds": done["wall_seconds"],
        "exit": done["exit"],
        "stages": done["stages"],
        "cross_class_seconds": work.get("cross_class_duplicates"),
        "clean_copy_seconds": work.get("clean_dataset"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--classes", default="Forest,River")
    p.add_argument("--share", type=float, default=0.01)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--name", default="incremental_scale")
    add_out_option(p)
    args = p.parse_args()
    classes = args.classes.split(",")
    images = sum(1 for _ in args.source.glob("*/*.jpg"))
    per_class = round(images * args.share / len(classes))
    runs: dict[str, list[dict]] = {"reuse": [], "removed": [], "without": []}
    # A warm-up, not counted: new images and a run, removed and a run (an output made by an
    # earlier version gets what lets the next run reuse; the files are in the page cache).
    new = add(args.source, classes, per_class, "warm")
    timed_dedup_run(args.source, args.output, [])
    for path in new:
        path.unlink()
    timed_dedup_run(args.source, args.output, [])
    for pair in range(args.pairs):
        for kind in ("reuse", "without"):
            new = add(args.source, classes, per_class, f"{kind[0]}{pair}")
            if kind == "without":
                take_reuse_away(args.output)
            runs[kind].append(summary(timed_dedup_run(args.source, args.output, [])))
            for path in new:
                path.unlink()
            runs["removed"].append(summary(timed_dedup_run(args.source, args.output, [])))
    ratios = [
        a["wall_seconds"] / b["wall_seconds"]
        for a, b in zip(runs["reuse"], runs["without"], strict=True)
    ]
    rows = [
        [
            kind,
            len(found),
            statistics.median(r["wall_seconds"] for r in found),
            statistics.median(r["cross_class_seconds"] or 0 for r in found),
            statistics.median(r["clean_copy_seconds"] or 0 for r in found),
        ]
        for kind, found in runs.items()
    ]
    print(f"{images:,} images, {per_class * len(classes):,} new in {', '.join(classes)}")
    print(table(["run", "runs", "wall s", "cross-class s", "clean copies s"], rows))
    print(f"reuse / without, per pair: {', '.join(f'{r:.3f}' for r in ratios)}")
    path = write_result(
        args.name,
        {
            "source": str(args.source),
            "images": images,
            "new_images": per_class * len(classes),
            "runs": runs,
            "ratio_per_pair": [round(r, 3) for r in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
        },
        args.out,
    )
    print(f"wrote {path}")
    print(json.dumps({"median_ratio": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    main()
