"""Many classes: the same images as a few big classes and as many small ones, with a
trained model copied in, so the difference is what a class costs (orchestration, files).

    python benchmarks/bench_many_classes.py [--source ../shared/datasets/eurosat] \
        [--images 20000] [--classes 1000] [--work /dev/shm/many_classes]

The images are EuroSAT's (the first images of each class folder, in name order) when
--source is given, else generated textures; the few-classes layout has 10 classes, the
many-classes layout `--classes` classes of the same files (hard links). A model is trained
once (`dedup run --epochs 1` on the few-classes layout) and copied into both outputs, so
both runs keep it. Target (issue 23): many classes within 1.5x of few.

The two layouts run in turn, few then many, `--pairs` times (each into a fresh output),
and the ratio is the median of the pairs' ratios: the machines are shared and their speed
drifts within minutes (three single pairs of the same code in a row on 2026-12-05 gave
1.33, 1.72 and 1.54), and a pair's two runs see nearly the same machine. The table shows
the median pair's runs; every pair is in the JSON. Each run starts after `sync`, the
previous output deleted. The files and outputs are made under --work, by default in memory
(`common.scratch_root`; the result names its file system): on this machine's disk (ext4
without a journal) every new file first skips the inodes deleted in the last 60-360 s, and
each run here comes right after its previous output was deleted (`bench_file_creation.py`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_out_option,
    filesystem_of,
    output_with_model,
    scratch_root,
    table,
    timed_dedup_run,
    write_result,
)

FEW = 10


def make_images(source: Path | None, n: int, dest: Path) -> list[Path]:
    """n image files under dest/all (EuroSAT's first n / 10 per class, or textures)."""
    from PIL import Image

    folder = dest / "all"
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return sorted(folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if source is not None:
        classes = sorted(p for p in source.iterdir() if p.is_dir())
        per = -(-n // len(classes))
        files = [f for c in classes for f in sorted(c.iterdir())[:per]][:n]
        for i, f in enumerate(files):
            try:
                os.link(f, folder / f"{i:06d}{f.suffix}")
            except OSError:  # another file system (--work in memory): a copy
                shutil.copyfile(f, folder / f"{i:06d}{f.suffix}")
    else:
        rng = np.random.default_rng(0)
        for i in range(n):
            base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(base).resize((32, 32)).save(folder / f"{i:06d}.png")
    return sorted(folder.iterdir())


def layout(files: list[Path], classes: int, dest: Path) -> Path:
    """files spread over `classes` class folders of dest (hard links), in order."""
    if dest.is_dir():
        shutil.rmtree(dest)
    per = -(-len(files) // classes)
    for i, f in enumerate(files):
        folder = dest / f"class_{i // per:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(f, folder / f.name)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--work", type=Path, default=scratch_root() / "many_classes")
    parser.add_argument("--thresholds", default="0.95,1%")
    parser.add_argument("--pairs", type=int, default=3, help="few/many pairs, in turn")
    add_out_option(parser)
    args = parser.parse_args()
    work = args.work
    files = make_images(args.source, args.images, work)
    few = layout(files, FEW, work / "few")
    many = layout(files, args.classes, work / "many")
    common = ["--thresholds", args.thresholds]
    model_out = work / "model_run"
    if not (model_out / "model" / "autoencoder.pt").exists():
        shutil.rmtree(model_out, ignore_errors=True)
        timed_dedup_run(few, model_out, [*common, "--epochs", "1"])
    pairs = []
    for at in range(max(1, args.pairs)):
        runs = {}
        for name, source in (("few", few), ("many", many)):
            out = work / f"out_{name}"
            output_with_model(out, model_out / "model" / "autoencoder.pt")
            # The deleted output's blocks are given back (and discarded, on a disk mounted
            # with `discard`) when the journal commits: sync first, so that happens before
            # the timed run, not during its own file creations.
            os.sync()
            runs[name] = timed_dedup_run(source, out, common)
            runs[name]["classes"] = FEW if name == "few" else args.classes
            runs[name].pop("stdout")
        runs["ratio"] = round(runs["many"]["wall_seconds"] / runs["few"]["wall_seconds"], 3)
        print(
            f"pair {at + 1}: {FEW} classes {runs['few']['wall_seconds']:.1f} s, "
            f"{args.classes} classes {runs['many']['wall_seconds']:.1f} s, "
            f"ratio {runs['ratio']:.3f}",
            flush=True,
        )
        pairs.append(runs)
    for name, source in (("few", few), ("many", many)):  # the last pair's outputs, again
        pairs[-1][name]["again"] = timed_dedup_run(source, work / f"out_{name}", common)[
            "wall_seconds"
        ]
    ratios = [r["ratio"] for r in pairs]
    ratio = statistics.median(ratios)
    median = sorted(pairs, key=lambda r: r["ratio"])[(len(pairs) - 1) // 2]
    runs = {"few": median["few"], "many": median["many"]}
    stages = list(dict.fromkeys(s for r in runs.values() for s in r["stages"]))
    rows = [
        [s, *(runs[n]["stages"].get(s, {}).get("seconds", float("nan")) for n in runs)]
        for s in stages
    ]
    rows.append(["wall (command)", runs["few"]["wall_seconds"], runs["many"]["wall_seconds"]])
    rows.append(
        ["rerun, nothing new (last pair)", pairs[-1]["few"]["again"], pairs[-1]["many"]["again"]]
    )
    print(table(["stage (median pair)", f"{FEW} classes", f"{args.classes} classes"], rows))
    print(
        f"many / few: median {ratio:.2f} of {len(pairs)} pairs "
        f"({', '.join(f'{r:.2f}' for r in ratios)}; target <= 1.5)"
    )
    path = write_result(
        "many_classes",
        {
            "images": args.images,
            "source": str(args.source) if args.source else "textures",
            "thresholds": args.thresholds,
            "work": str(work),
            "work_filesystem": filesystem_of(work),
            "runs": runs,
            "pairs": pairs,
            "ratios": ratios,
            "ratio_many_to_few": round(ratio, 3),
            "target": 1.5,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
