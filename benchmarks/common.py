"""Shared helpers of the benchmarks: machine description, JSON output, tables."""

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def code_version() -> str | None:
    """The checkout's commit (short), with "+changes" when its tracked files differ from
    it; None outside a git checkout. Read when a benchmark starts (this module's import),
    so a commit made while it runs is not what it names."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


CODE = code_version()


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def filesystem_of(path: Path) -> str:
    """The type of the file system `path` is on (the longest mount point above it in
    /proc/self/mounts: "tmpfs", "ext4", ...), "unknown" where that cannot be read."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, parts[2]
    return kind


def scratch_root() -> Path:
    """Where benchmarks make their sources and outputs by default: /dev/shm (memory) where
    it is a tmpfs, else the system's temporary folder. On this project's machines the disk
    is ext4 without a journal, where creating a file first skips every inode deleted in the
    last 60 s (360 s while its inode table block is dirty; the kernel's `recently_deleted`):
    a benchmark that removed its previous output before a run measured that scan in the
    run's clean copy: 27,000 copies took 1.6-3.4 s right after deletes there, 0.24 s on
    tmpfs (`bench_file_creation.py`, results/file_creation_1216.json)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and filesystem_of(shm) == "tmpfs":
        return shm
    import tempfile

    return Path(tempfile.gettempdir())


def add_out_option(parser: argparse.ArgumentParser) -> None:
    """`--out DIR`: where the result JSON goes (default: benchmarks/results)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for the result JSON (default: benchmarks/results)",
    )


def write_result(name: str, payload: dict, out: Path | None = None) -> Path:
    """Write <out>/<name>.json (with the machine, a timestamp and the code measured,
    `code_version` when the benchmark started) and return its path.

    out: the folder, results/ by default.
    """
    folder = Path(out) if out is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code": CODE,
        "machine": machine(),
        **payload,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def timed_dedup_run(source: Path, output: Path, extra: list[str] | None = None) -> dict:
    """The real `dedup run` (the one beside this Python) on source -> output: wall seconds,
    exit status, stdout and the command's own stage table ({stage: {runs, seconds}})."""
    import re
    import subprocess
    import sys

    dedup = Path(sys.executable).with_name("dedup")
    start = time.perf_counter()
    done = subprocess.run(
        [str(dedup), "run", "--source", str(source), "--output", str(output), *(extra or [])],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(done.stdout + done.stderr)
    stages = {
        m.group(1).strip(): {"runs": int(m.group(2)), "seconds": float(m.group(3))}
        for m in re.finditer(r"^(\S.+?)\s{2,}(\d+)\s+([\d.]+)$", done.stdout, re.M)
    }
    timings = Path(output) / "reports" / "timings.json"
    return {
        "wall_seconds": round(wall, 2),
        "exit": done.returncode,
        "stdout": done.stdout,
        "stages": stages,
        # where the time went, per asset (the command's own table, `dedup_assets.timings`)
        "work": json.loads(timings.read_text())["work"] if timings.exists() else [],
    }


TRAINING_RECORD = ("training.json", "trained_images.parquet")
"""What a run that trained a model writes beside it (`OutputLayout.training_log`,
`trained_images`): with them the retraining rules read the images it was trained on."""


def output_with_model(out: Path, model: Path, *, record: bool = False) -> bool:
    """A new output folder of latent-dedup at `out` (any earlier one removed) with `model`
    copied in, which `dedup run` then keeps: a first run that does not train. With
    `record`, the model's training record beside it is copied too where it has one (as a
    model the first run had trained: the share and error rules then apply to new images);
    returns whether it was."""
    import shutil

    from dedup_assets.core.data.layout import OutputLayout

    shutil.rmtree(out, ignore_errors=True)
    OutputLayout(out).claim()
    (out / "model").mkdir(parents=True)
    shutil.copy2(model, out / "model" / "autoencoder.pt")
    beside = [model.parent / name for name in TRAINING_RECORD]
    if not record or not all(p.is_file() for p in beside):
        return False
    for path in beside:
        shutil.copy2(path, out / "model" / path.name)
    return True
