"""The watch's live listing (`core.data.live_listing`) against a full listing of the
source (`scan_image_folder`), after 1% new images in two classes: what a `dedup run`
answered by a watch waits for before its update starts; and the listing digest from the
digest lines the live listing keeps per class folder against formatting them all. EuroSAT
copied as real files (a class folder of links is listed in full each time, see the
module), rounds alternated
in one process; each round adds the new images and then takes them out again, so both
arms list the same two states. Also the listing with nothing changed.

    python benchmarks/bench_live_listing.py [--eurosat ../shared/datasets/eurosat] [--rounds 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    add_out_option,
    filesystem_of,
    scratch_root,
    table,
    write_result,
)
from dedup_assets.core.data.image_folder import scan_image_folder  # noqa: E402
from dedup_assets.core.data.live_listing import LiveListing  # noqa: E402
from dedup_assets.core.data.run_fingerprint import _listing  # noqa: E402

CHANGED = ("Forest", "River")


def make_source(eurosat: Path, work: Path) -> tuple[Path, list[Path], Path]:
    """A copy of EuroSAT (real files, times kept) less 1% of the images of CHANGED, which
    wait in `aside` to be moved in."""
    source, aside = work / "source", work / "aside"
    if not source.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
        shutil.copytree(eurosat, work / "partial", copy_function=shutil.copy2)
        (work / "partial").rename(source)
    for waiting in sorted(aside.glob("*/*")):  # a run before left them aside: back first
        waiting.rename(source / waiting.parent.name / waiting.name)
    shutil.rmtree(aside, ignore_errors=True)
    new: list[Path] = []
    per_class = 27_000 // 100 // len(CHANGED)
    for name in CHANGED:
        (aside / name).mkdir(parents=True)
        for path in sorted((source / name).iterdir())[:per_class]:
            path.rename(aside / name / path.name)
            new.append(source / name / path.name)
    return source, new, aside


def move(new: list[Path], aside: Path, into_source: bool) -> None:
    for path in new:
        elsewhere = aside / path.parent.name / path.name
        (elsewhere.rename(path) if into_source else path.rename(elsewhere))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eurosat", type=Path, default=Path("../shared/datasets/eurosat"))
    p.add_argument("--work", type=Path, default=scratch_root() / "bench_live_listing")
    p.add_argument("--rounds", type=int, default=9)
    add_out_option(p)
    args = p.parse_args()
    if not args.eurosat.is_dir():
        raise SystemExit(f"EuroSAT not found at {args.eurosat}")
    args.work.mkdir(parents=True, exist_ok=True)
    source, new, aside = make_source(args.eurosat, args.work)
    times: dict[str, list[float]] = {
        "full": [],
        "live": [],
        "live, nothing changed": [],
        "listing digest, lines formatted": [],
        "listing digest, lines kept": [],
    }
    relisted: list[int] = []
    with LiveListing(source) as live:
        if not live.live:
            raise SystemExit("no change events on this machine (inotify): nothing to compare")
        live.scan()
        for r in range(args.rounds):
            for into in (True, False):
                move(new, aside, into)
                arms = ("full", "live") if r % 2 == 0 else ("live", "full")
                results = {}
                for arm in arms:
                    start = time.perf_counter()
                    scan = scan_image_folder(source) if arm == "full" else live.scan()
                    times[arm].append(time.perf_counter() - start)
                    results[arm] = [(f.raw_path, f.size, f.mtime_ns) for f in scan.files]
                    if arm == "live":
                        relisted.append(len(live.listed))
                if results["full"] != results["live"]:
                    raise SystemExit("the live listing differs from the full one")
                start = time.perf_counter()
                scan = live.scan()
                times["live, nothing changed"].append(time.perf_counter() - start)
                start = time.perf_counter()
                formatted = _listing(source, False, scan)
                times["listing digest, lines formatted"].append(time.perf_counter() - start)
                start = time.perf_counter()
                kept = _listing(source, False, scan, live.lines)
                times["listing digest, lines kept"].append(time.perf_counter() - start)
                if formatted != kept:
                    raise SystemExit("the listing digest from the kept lines differs")
        files = len(scan_image_folder(source).files)
    medians = {arm: statistics.median(t) for arm, t in times.items()}
    rows = [[arm, medians[arm], min(t), max(t)] for arm, t in times.items()]
    print(
        f"{files:,} files in {len(list(source.iterdir()))} class folders on "
        f"{filesystem_of(source)}; {len(new)} moved in and out of {', '.join(CHANGED)}"
    )
    print(table(["listing", "median s", "min s", "max s"], rows))
    print(f"live / full: {medians['live'] / medians['full']:.3f}")
    digest_ratio = (
        medians["listing digest, lines kept"] / medians["listing digest, lines formatted"]
    )
    print(f"listing digest, kept / formatted: {digest_ratio:.3f}")
    path = write_result(
        "live_listing",
        {
            "command": "python benchmarks/bench_live_listing.py " + " ".join(sys.argv[1:]),
            "files": files,
            "new_images": len(new),
            "filesystem": filesystem_of(source),
            "rounds": args.rounds,
            "class_folders_listed_again": sorted(set(relisted)),
            "seconds": {arm: [round(x, 4) for x in t] for arm, t in times.items()},
            "median_seconds": {arm: round(m, 4) for arm, m in medians.items()},
            "ratio_live_to_full": round(medians["live"] / medians["full"], 3),
            "ratio_digest_kept_to_formatted": round(digest_ratio, 3),
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
