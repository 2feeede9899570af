"""Scale: the main job (`dedup run`, a trained model copied in) on EuroSAT tiled with
perturbed copies up to a million images, per-stage wall time and peak memory, against
imagededup's pHash on the same images; and the approximate join against the exact one.

    python benchmarks/bench_scale.py --source ../shared/datasets/eurosat \
        --model runs/A/model/autoencoder.pt --sizes 27000,100000,300000 \
        [--work /tmp/scale] [--imagededup-python /tmp/idd/bin/python] [--phash-max 135000] \
        [--ann-sizes 200000]

The tiled set (benchmark data, not shipped): tile 0 of every class is its EuroSAT images,
tile k >= 1 a perturbed copy of each (shift of up to 3 pixels, brightness +-8%, noise,
JPEG quality 90), so a tiled set holds real near-duplicates at every size. Sets are nested:
the first N/10 files of each class.

Against imagededup, `dedup run` is timed a second time with nothing sampling it (imagededup
is timed so) and the ratio is taken from that run (`speedup_vs_phash`; the sampled run's
ratio is `speedup_vs_phash_sampled`).

Memory is summed over the `dedup run` process and its children, sampled every 0.2 s and
attributed to the stage its log says is running: PSS (shared pages split between the
processes that share them: what the tree holds) and the RSS sum (which counts the pages a
forked decoder shares with its parent once per process). The copied-in model is kept
(a model without a record of its training is never retrained by the rules).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_end_to_end import IMAGEDEDUP_SCRIPT  # noqa: E402
from benchmarks.common import add_out_option, output_with_model, table, write_result  # noqa: E402

DEDUP = Path(sys.executable).with_name("dedup")
STAGE_START = re.compile(r"^\[(.+?)\] starting")
STAGE_ROW = re.compile(r"^(\S.+?)\s{2,}(\d+)\s+([\d.]+)$")


# ------------------------------------------------------------------ the tiled set


def _perturbed(args: tuple[Path, Path, int]) -> int:
    """Write tile `k` of one class folder: a perturbed JPEG of every source image."""
    from PIL import Image

    src_dir, dest_dir, k = args
    rng = np.random.default_rng(k * 7919 + sum(map(ord, src_dir.name)))
    dest_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(src_dir.iterdir()):
        out = dest_dir / f"{path.stem}_t{k:03d}.jpg"
        if out.exists():
            n += 1
            continue
        with Image.open(path) as im:
            x = np.asarray(im.convert("RGB"), dtype=np.float32)
        dy, dx = rng.integers(-3, 4, size=2)
        x = np.roll(x, (int(dy), int(dx)), axis=(0, 1))
        x = x * rng.uniform(0.92, 1.08) + rng.normal(0, 3.0, x.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.write_bytes(buf.getvalue())
        n += 1
    return n


def build_pool(source: Path, pool: Path, largest: int, workers: int) -> dict[str, list[Path]]:
    """Every file the largest size needs, per class, in tile order (tile 0 = the originals)."""
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    per_class = math.ceil(largest / len(classes))
    jobs = []
    for c in classes:
        originals = len(list(c.iterdir()))
        tiles = math.ceil(per_class / originals)
        dest = pool / c.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in c.iterdir():
            if not (dest / f.name).exists():
                shutil.copyfile(f, dest / f.name)
        jobs += [(c, dest / f"tile{k:03d}", k) for k in range(1, tiles)]
    with Pool(workers) as p:
        p.map(_perturbed, jobs, chunksize=1)
    files = {}
    for c in classes:
        dest = pool / c.name
        tile0 = sorted(f for f in dest.iterdir() if f.is_file())
        rest = [sorted(t.iterdir()) for t in sorted(d for d in dest.iterdir() if d.is_dir())]
        files[c.name] = tile0 + [f for t in rest for f in t]
    return files


def make_set(files: dict[str, list[Path]], dest: Path, n: int) -> int:
    """A source of n images: hard links to the first n/10 files of each class."""
    if dest.exists():
        shutil.rmtree(dest)
    per_class = math.ceil(n / len(files))
    total = 0
    for name, paths in files.items():
        d = dest / name
        d.mkdir(parents=True)
        for p in paths[:per_class]:
            os.link(p, d / p.name)
        total += min(per_class, len(paths))
    return total


# ------------------------------------------------------------------ one measured run


def measured(
    cmd: list[str], env: dict | None = None
) -> tuple[str, dict[str, dict[str, float]], float]:
    """Run cmd; (stdout, peak memory in MiB per stage it logged, wall seconds).

    Two sums over the process and its children: RSS (pages shared by forked workers are
    counted once per process) and PSS (each shared page split between its sharers, so the
    sum is what the process tree really holds)."""
    import psutil

    # Unbuffered: the command's "[stage] starting" lines must arrive as they are printed, or
    # a stage's memory is put down to the stage before (a pipe is block-buffered: until
    # 2026-12-05 the classes stage's peak was read as the reference pool's).
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    stage = {"name": "start"}
    peaks: dict[str, dict[str, float]] = {}
    trace: list[tuple[float, str, float]] = []  # (seconds, stage, tree PSS MiB), once a second
    lines: list[str] = []
    done = threading.Event()

    def pss(pid: int) -> tuple[int, int]:
        """Proportional set size and its anonymous part in bytes, from the kernel's summary
        (psutil's memory_full_info parses the whole smaps in Python: a share of a core).
        The rest of PSS is file pages mapped (memory-mapped pixel stores): page cache."""
        total = anon = 0
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    total = int(line.split()[1]) * 1024
                elif line.startswith("Pss_Anon:"):
                    anon = int(line.split()[1]) * 1024
        return total, anon

    def sample() -> None:
        root = psutil.Process(proc.pid)
        tick, second = 0, (0, 0, "")  # the highest sample of the current second
        while not done.is_set():
            rss = tree_pss = tree_anon = 0
            busiest = ""
            try:
                tree = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree)
                each = [(pss(p.pid), p) for p in tree]  # five times a second
                tree_pss = sum(t for (t, _), _ in each)
                tree_anon = sum(a for (_, a), _ in each)
                top = max(each, key=lambda e: e[0][0])[1]
                busiest = f"{top.pid} {' '.join(top.cmdline()[:4])[-80:]}"
            except (psutil.Error, OSError, ValueError):
                pass
            peak = peaks.setdefault(stage["name"], {"rss": 0.0, "pss": 0.0, "anon": 0.0})
            peak["rss"] = max(peak["rss"], rss / 2**20)
            peak["pss"] = max(peak["pss"], tree_pss / 2**20)
            peak["anon"] = max(peak["anon"], tree_anon / 2**20)
            if tree_pss > second[0]:
                second = (tree_pss, tree_anon, busiest)
            if tick % 5 == 4:  # once a second: that second's highest sample
                at = round(time.perf_counter() - start, 1)
                trace.append(
                    (
                        at,
                        stage["name"],
                        round(second[0] / 2**20),
                        round(second[1] / 2**20),
                        second[2],
                    )
                )
                second = (0, 0, "")
            tick += 1
            time.sleep(0.2)

    start = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        lines.append(line)
        m = STAGE_START.match(line)
        if m:
            stage["name"] = m.group(1)
    proc.wait()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    out = "".join(lines)
    if proc.returncode not in (0, 3):  # 3: a blocking gate held a clean copy back: complete
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    peaks["_trace"] = trace  # type: ignore[assignment]
    return out, peaks, wall


def stage_table(stdout: str) -> dict[str, dict]:
    """The `stage  runs  seconds` table `dedup run` prints at its end."""
    rows, inside = {}, False
    for line in stdout.splitlines():
        if line.startswith("stage "):
            inside = True
            continue
        if inside:
            m = STAGE_ROW.match(line.strip())
            if not m:
                break
            rows[m.group(1).strip()] = {"runs": int(m.group(2)), "seconds": float(m.group(3))}
    return rows


def run_ours(source: Path, out: Path, model: Path, extra: list[str]) -> dict:
    output_with_model(out, model)
    cmd = [str(DEDUP), "run", "--source", str(source), "--output", str(out), *extra]
    stdout, peaks, wall = measured(cmd)
    trace = peaks.pop("_trace")
    stages = stage_table(stdout)
    for name, row in stages.items():
        row["peak_rss_mib"] = round(peaks.get(name, {}).get("rss", 0.0), 1)
        row["peak_pss_mib"] = round(peaks.get(name, {}).get("pss", 0.0), 1)
        row["peak_anon_mib"] = round(peaks.get(name, {}).get("anon", 0.0), 1)
    if "keeps the model" not in stdout and "model kept" not in stdout:
        training = [ln for ln in stdout.splitlines() if ln.startswith("training:")]
        print("note:", training)
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_mib": round(max(p["rss"] for p in peaks.values()), 1),
        "peak_pss_mib": round(max(p["pss"] for p in peaks.values()), 1),
        # PSS less the file pages mapped (memory-mapped pixel stores, page cache)
        "peak_anon_mib": round(max(p.get("anon", 0.0) for p in peaks.values()), 1),
        "stages": stages,
        "command": " ".join(cmd[1:]),
        # where the peak is: each second's highest sample (5 a second): seconds, stage,
        # the tree's PSS and its anonymous part (MiB), the process holding the most
        "memory_trace": trace,
    }


def timed_only(source: Path, out: Path, model: Path, extra: list[str]) -> float:
    """Wall seconds of the same `dedup run` (a fresh output, the model copied in) with nothing
    sampling it: imagededup is timed so, and the 5-a-second memory sampling of `measured`
    (each sample reads every process's smaps_rollup) took 79.0 against 84.6 s at 135,000
    images on 2026-12-05 (two runs of one build, one of each)."""
    output_with_model(out, model)
    cmd = [str(DEDUP), "run", "--source", str(source), "--output", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 3):  # 3: a blocking gate held a clean copy back: complete
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return wall


def run_imagededup(python: str, source: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", IMAGEDEDUP_SCRIPT, str(source), "10"], capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"imagededup failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(wall, 2)
    return result


# ------------------------------------------------------------------ the approximate join


def ann_vs_exact(out: Path, n: int, threshold: float = 0.95, exact_keep: bool = True) -> dict:
    """Exact and approximate keep and pair joins on n spline-copula vectors made from the
    latents of a measured run (tiled with small noise up to n: one big class). Without
    `exact_keep` the exact greedy keep (quadratic) is skipped: pair recall and the
    approximate keep's time only."""
    from dedup_assets.core.data.artifacts import read_latents
    from dedup_assets.core.decision.ann_join import ivf_index
    from dedup_assets.core.decision.keep_policy import greedy_keep
    from dedup_assets.core.decision.similarity import l2_normalize

    # Centred and projected on the 128 leading axes class by class (a million latents are
    # 4 GB): the mean and a 20,000-row sample for the axes first, then every class.
    paths = sorted((out / "latents").glob("*.parquet"))
    rng = np.random.default_rng(0)
    total, sums, sample = 0, 0.0, []
    per_class = math.ceil(20_000 / len(paths))
    for p in paths:
        lat = read_latents(p)[1]
        total, sums = total + len(lat), sums + lat.sum(0, dtype=np.float64)
        sample.append(lat[rng.choice(len(lat), min(per_class, len(lat)), replace=False)])
    mean = (sums / total).astype(np.float32)
    _, _, vt = np.linalg.svd(np.concatenate(sample) - mean, full_matrices=False)
    axes = vt[:128].T.copy()
    proj = np.concatenate([(read_latents(p)[1] - mean) @ axes for p in paths])
    reps = math.ceil(n / len(proj))  # tiled with small noise when n exceeds the run
    spread = proj.std(0)
    x = np.concatenate(
        [
            proj
            + (0.0 if r == 0 else 0.05)
            * rng.standard_normal(proj.shape).astype(np.float32)
            * spread
            for r in range(reps)
        ]
    )[:n]
    v = l2_normalize(x)
    order = rng.permutation(n)
    result = {"n": n, "threshold": threshold, "dims": int(v.shape[1])}
    t = time.perf_counter()
    ann = greedy_keep(v, order, threshold, block=2048, join="ann")
    result["ann_keep_seconds"] = round(time.perf_counter() - t, 2)
    result["ann_removed"] = int((~ann.kept).sum())
    if exact_keep:
        t = time.perf_counter()
        exact = greedy_keep(v, order, threshold, block=2048)
        result["exact_keep_seconds"] = round(time.perf_counter() - t, 2)
        removed_e, removed_a = ~exact.kept, ~ann.kept
        result["exact_removed"] = int(removed_e.sum())
        result["keep_agreement"] = float((exact.kept == ann.kept).mean())
        result["removal_recall"] = float((removed_e & removed_a).sum() / max(1, removed_e.sum()))
    # Pair recall on a sample of query images (all pairs would not fit: near-uniform tiles
    # make hundreds of millions of pairs), the exact side as products of 512 queries.
    queries = np.sort(rng.choice(n, min(n, 2_000), replace=False))
    t = time.perf_counter()
    exact_pairs = set()
    for q0 in range(0, len(queries), 512):
        q = queries[q0 : q0 + 512]
        r, c = np.nonzero(v[q] @ v.T > threshold)
        exact_pairs |= {(int(a), int(b)) for a, b in zip(q[r], c, strict=True) if a != b}
    result["exact_pairs_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    index = ivf_index(v)
    index.add(v)
    lims, _, ids = index.range_search(np.ascontiguousarray(v[queries]), float(threshold))
    found = {
        (int(queries[k]), int(b))
        for k in range(len(queries))
        for b in ids[lims[k] : lims[k + 1]]
        if b != queries[k]
    }
    result["ann_pairs_seconds"] = round(time.perf_counter() - t, 2)
    result["pair_queries"] = len(queries)
    result["exact_pairs"] = len(exact_pairs)
    result["pair_recall"] = len(exact_pairs & found) / max(1, len(exact_pairs))
    if exact_keep:
        result["keep_speedup"] = round(result["exact_keep_seconds"] / result["ann_keep_seconds"], 2)
    result["pairs_speedup"] = round(result["exact_pairs_seconds"] / result["ann_pairs_seconds"], 2)
    return result


def exponents(sizes: list[int], values: list[float]) -> float | None:
    """Growth exponent b of value ~ size^b (least squares on logs)."""
    pts = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(pts) < 2:
        return None
    xs, ys = np.array(pts).T
    return round(float(np.polyfit(xs, ys, 1)[0]), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--sizes", default="27000,100000,300000")
    p.add_argument("--work", type=Path, default=Path("/tmp/latent_dedup_scale"))
    p.add_argument("--imagededup-python", default=None)
    p.add_argument("--ann-sizes", default="", help="class sizes for the ANN comparison")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ann-from", type=Path, default=None, help="output of an earlier run: ANN only")
    p.add_argument(
        "--ann-exact-max",
        type=int,
        default=10**9,
        help="above this many vectors the exact greedy keep (quadratic) is not run",
    )
    p.add_argument(
        "--phash-max",
        type=int,
        default=10**9,
        help="run imagededup's pHash only up to this many images (its search is quadratic)",
    )
    p.add_argument("--extra", default="", help="more `dedup run` options, space-separated")
    add_out_option(p)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.ann_from:
        ann = [
            ann_vs_exact(args.ann_from, int(n), exact_keep=int(n) <= args.ann_exact_max)
            for n in args.ann_sizes.split(",")
            if n
        ]
        print(json.dumps(ann, indent=1))
        write_result("scale_ann", {"ann": ann}, args.out)
        return
    files = build_pool(args.source, args.work / "pool", max(sizes), args.workers)
    results = {"sizes": [], "ann": []}
    last_out = None
    for n in sizes:
        src = args.work / f"set_{n}"
        images = make_set(files, src, n)
        out = args.work / f"out_{n}"
        print(f"--- {images:,} images", flush=True)
        row = {"images": images, "ours": run_ours(src, out, args.model, args.extra.split())}
        if args.imagededup_python and images <= args.phash_max:
            # Both timed alike for the ratio: ours again with no memory sampling beside it.
            row["ours_unsampled_wall_seconds"] = round(
                timed_only(src, out, args.model, args.extra.split()), 2
            )
            row["imagededup_phash"] = run_imagededup(args.imagededup_python, src)
            row["speedup_vs_phash"] = round(
                row["imagededup_phash"]["wall_seconds"] / row["ours_unsampled_wall_seconds"], 3
            )
            row["speedup_vs_phash_sampled"] = round(
                row["imagededup_phash"]["wall_seconds"] / row["ours"]["wall_seconds"], 3
            )
        results["sizes"].append(row)
        print(json.dumps(row, indent=1), flush=True)
        last_out = out
        write_result("scale", results, args.out)
    for n in [int(s) for s in args.ann_sizes.split(",") if s]:
        r = ann_vs_exact(last_out, n)
        results["ann"].append(r)
        print(json.dumps(r), flush=True)
        write_result("scale", results, args.out)
    names = sorted({s for r in results["sizes"] for s in r["ours"]["stages"]} - {"total"})
    ns = [r["images"] for r in results["sizes"]]
    results["exponents"] = {
        s: exponents(
            ns, [r["ours"]["stages"].get(s, {}).get("seconds", 0) for r in results["sizes"]]
        )
        for s in [*names, "total"]
    }
    path = write_result("scale", results, args.out)
    rows = []
    for r in results["sizes"]:
        st = r["ours"]["stages"]
        rows.append(
            [
                r["images"],
                r["ours"]["wall_seconds"],
                r["ours"].get("peak_pss_mib", "-"),
                r["ours"]["peak_rss_mib"],
            ]
            + [
                f"{st.get(s, {}).get('seconds', 0):.1f}/{st.get(s, {}).get('peak_pss_mib', 0):.0f}"
                for s in names
            ]
            + [
                r.get("imagededup_phash", {}).get("wall_seconds", "-"),
                r.get("speedup_vs_phash", "-"),
            ]
        )
    print(
        table(
            [
                "images",
                "wall s",
                "peak PSS MiB",
                "peak RSS-sum MiB",
                *[f"{s} s/PSS MiB" for s in names],
                "pHash s",
                "x pHash",
            ],
            rows,
        )
    )
    print("growth exponents:", results["exponents"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
