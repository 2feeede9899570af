"""What creating a clean copy's files costs on a file system, fresh and right after deleting
as many: the clean copy's own copy (`clean_dataset._copy_file`) of every EuroSAT image.

    python benchmarks/bench_file_creation.py [--source ../shared/datasets/eurosat] \
        [--work /tmp/bench_files --work /dev/shm/bench_files]

For each --work folder, copies one after another, each into a new folder: `first`, with
nothing deleted by this script before it, then --cycles times right after deleting the
copy before (as a benchmark that removes its previous output before a run does). Each:
wall seconds and the process's user and system CPU seconds. Why it exists: on
2026-12-06 the first run's clean copy step on this machine's disk (ext4 without a journal)
took 1.0-4.2 s against 0.3 s on tmpfs, and `perf` put the difference in the kernel's
`recently_deleted` (each new inode first skips those deleted in the last 60 s, 360 s while
their inode table block is dirty; ext4 only checks that without a journal).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, filesystem_of, table, write_result  # noqa: E402
from dedup_assets.assets.clean_dataset import _copy_file  # noqa: E402


def source_files(source: Path) -> list[bytes]:
    """Every file of the source's class folders, relative to it, sorted."""
    root = os.fsencode(source)
    out = []
    for folder in sorted(os.listdir(root)):
        path = os.path.join(root, folder)
        if os.path.isdir(path):
            out += [os.path.join(folder, name) for name in sorted(os.listdir(path))]
    return out


def timed_copy(source: Path, files: list[bytes], dest: Path) -> dict:
    """Copy `files` from source into the new folder dest: wall, user and system seconds."""
    root, into = os.fsencode(source), os.fsencode(dest)
    for folder in sorted({os.path.dirname(f) for f in files}):
        os.makedirs(os.path.join(into, folder))
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for f in files:
        _copy_file(os.path.join(root, f), os.path.join(into, f))
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_seconds": round(wall, 3),
        "user_seconds": round(after.ru_utime - before.ru_utime, 3),
        "system_seconds": round(after.ru_stime - before.ru_stime, 3),
    }


def measure(source: Path, files: list[bytes], work: Path, cycles: int) -> dict:
    """The copies of the module doc in `work` (removed after)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    first = timed_copy(source, files, work / "0")
    after = []
    for k in range(1, cycles + 1):
        shutil.rmtree(work / str(k - 1))
        after.append(timed_copy(source, files, work / str(k)))
    shutil.rmtree(work, ignore_errors=True)
    return {
        "work": str(work),
        "filesystem": filesystem_of(work.parent),
        "first": first,
        "after_delete": after,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=Path("../shared/datasets/eurosat"))
    p.add_argument("--work", type=Path, action="append", default=None)
    p.add_argument("--cycles", type=int, default=4, help="copies right after a delete")
    add_out_option(p)
    args = p.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"no source at {args.source}")
    works = args.work or [Path("/tmp/bench_files"), Path("/dev/shm/bench_files")]
    files = source_files(args.source)
    results = [measure(args.source, files, w, args.cycles) for w in works]
    rows = [
        [r["work"], r["filesystem"], name, run["wall_seconds"], run["system_seconds"]]
        for r in results
        for name, run in [
            ("first", r["first"]),
            *((f"after delete {k + 1}", run) for k, run in enumerate(r["after_delete"])),
        ]
    ]
    print(f"{len(files):,} files copied {1 + args.cycles} times per folder")
    print(table(["folder", "file system", "copy", "wall s", "system s"], rows))
    path = write_result("file_creation", {"files": len(files), "runs": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
