"""Incremental runs on EuroSAT: a first run, then 100 new images in one class, then no change.

The source is a folder of links to `../shared/datasets/eurosat` (never written), with one
class folder made real so new images can be added to it. Each step is the real
`dedup run` command; wall times and its stage tables are recorded.

    python benchmarks/bench_incremental.py [--eurosat ../shared/datasets/eurosat] \
        [--work /tmp/bench_incremental] [--class Forest] [--new 100] [--out DIR]
"""

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, timed_dedup_run, write_result  # noqa: E402


def make_source(
    eurosat: Path, work: Path, changed_class: str | tuple[str, ...], *, copies: bool = False
) -> Path:
    """Links to every EuroSAT class folder, except real folders of links to their files for
    the changed class (or classes), so that images can be added to them; `copies`: of
    copies of their files instead (times kept), as a user's folder holds, which a watch's
    live listing trusts (`core.data.live_listing`: a folder of links is listed every time)."""
    changed = {changed_class} if isinstance(changed_class, str) else set(changed_class)
    source = work / "source"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for class_dir in sorted(p for p in eurosat.iterdir() if p.is_dir()):
        if class_dir.name in changed:
            (source / class_dir.name).mkdir()
            for f in class_dir.iterdir():
                if copies:
                    shutil.copy2(f, source / class_dir.name / f.name)
                else:
                    (source / class_dir.name / f.name).symlink_to(f.resolve())
        else:
            (source / class_dir.name).symlink_to(class_dir.resolve())
    return source


def add_images(folder: Path, n: int) -> None:
    """n new images: existing ones of the class turned a quarter (new content, same look)."""
    for i, path in enumerate(sorted(folder.glob("*.jpg"))[:n]):
        with Image.open(path) as img:
            img.rotate(90).save(folder / f"new_{i:04d}.jpg", quality=95)


def run(source: Path, output: Path, extra: list[str]) -> dict:
    done = timed_dedup_run(source, output, extra)
    training = re.search(r"^training: (.+)$", done["stdout"], re.M)
    return {
        "wall_seconds": done["wall_seconds"],
        "exit": done["exit"],
        "nothing_changed": "nothing changed" in done["stdout"],
        "training": training.group(1) if training else None,
        "stages": done["stages"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--eurosat", type=Path, default=Path("../shared/datasets/eurosat"))
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_incremental"))
    p.add_argument("--class", dest="changed_class", default="Forest")
    p.add_argument("--new", type=int, default=100)
    p.add_argument("--epochs", default=None, help="passed to dedup run (default: its auto)")
    add_out_option(p)
    args = p.parse_args()
    if not args.eurosat.is_dir():
        raise SystemExit(f"EuroSAT not found at {args.eurosat}")
    source = make_source(args.eurosat, args.work, args.changed_class)
    output = args.work / "out"
    if output.exists():
        shutil.rmtree(output)
    extra = ["--epochs", args.epochs] if args.epochs else []
    steps = {"first run": run(source, output, extra)}
    add_images(source / args.changed_class, args.new)
    steps[f"+{args.new} images in {args.changed_class}"] = run(source, output, extra)
    steps["no change"] = run(source, output, extra)
    first = steps["first run"]["wall_seconds"]
    rows = [
        (
            name,
            s["wall_seconds"],
            f"{s['wall_seconds'] / first:.1%}",
            sum(v["runs"] for k, v in s["stages"].items() if k != "total"),
            s["training"] or ("nothing changed" if s["nothing_changed"] else ""),
        )
        for name, s in steps.items()
    ]
    print(table(["step", "wall s", "of first run", "Dagster runs", "training"], rows))
    write_result(
        "incremental_eurosat",
        {
            "cpu_count": os.cpu_count(),
            "images": 27_000,
            "new": args.new,
            "epochs": args.epochs or "auto",
            "steps": steps,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
