"""Time to a first result: a fresh `dedup run` (training included) on 3,600 small photos
and on EuroSAT, as a user starts it.

The small set is EuroSAT's first 360 images of each class resized to 32x32 PNG (made under
--work, never in the source). Each run is the real command in a new output folder with the
default settings; the wall time includes the process start, and the stage table is the
command's own. Nothing here asserts a time.

    python benchmarks/bench_first_run.py --source ../shared/datasets/eurosat [--work DIR]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, timed_dedup_run, write_result  # noqa: E402


def small_set(source: Path, dest: Path, per_class: int = 360, side: int = 32) -> Path:
    """The first `per_class` images of every class, resized to side x side PNG."""
    from PIL import Image

    if dest.exists():
        shutil.rmtree(dest)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:per_class]:
            with Image.open(f) as im:
                small = im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
                small.save(dest / folder.name / f"{f.stem}.png")
    return dest


def first_run(source: Path, output: Path) -> dict:
    if output.exists():
        shutil.rmtree(output)
    done = timed_dedup_run(source, output)
    training = json.loads((output / "model" / "training.json").read_text())
    return {
        "wall_seconds": done["wall_seconds"],
        "exit": done["exit"],
        "stages": {k: v["seconds"] for k, v in done["stages"].items()},
        "training": {
            k: training.get(k)
            for k in ("images", "images_seen", "stopped_because", "train_seconds", "precision")
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, required=True, help="EuroSAT (only read)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_first_run"))
    add_out_option(p)
    args = p.parse_args()
    small = small_set(args.source, args.work / "small32")
    runs = {
        "3,600 images, 32x32": first_run(small, args.work / "out_small"),
        "EuroSAT, 27,000 images": first_run(args.source, args.work / "out_eurosat"),
    }
    rows = [
        (name, f"{r['wall_seconds']:.1f}", f"{r['stages'].get('training', float('nan')):.1f}")
        for name, r in runs.items()
    ]
    print(table(["set", "wall s", "training s"], rows))
    print(f"wrote {write_result('first_run', {'runs': runs}, args.out)}")


if __name__ == "__main__":
    main()
