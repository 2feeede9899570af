"""The threshold stage alone: seconds per asset of `threshold_job` at several sizes, and
their growth exponents.

`dedup run`'s stage "thresholds: keep lists, gates, reports, clean copies" runs the job
`threshold_job` (keep_list, kurtosis_report, clean_dataset, cross_class_duplicates and
its check) once per threshold. This script runs that stage again on outputs that a
`dedup run` already made (every class decided), as a first run does it: every threshold's
keep list, report, clean copy and cross-class table (and the cross-class caches) removed,
then one run per threshold in this process, one after another, the first computing the
cross-class join the others read and the clean copy they hard-link from. Each step's
seconds come from Dagster's own step events.

    python benchmarks/bench_threshold_stage.py --outputs /tmp/thr23/out_30000 \
        /tmp/thr23/out_100000 /tmp/thr23/out_200000          # results/threshold_stage.json
        [--thresholds 0.93,0.95,0.97,1%] [--profile DIR] [--rerun] [--label before]

Set OPENBLAS_NUM_THREADS=1 on a shared machine: with other processes on its cores,
OpenBLAS's spinning threads made a (10,000 x 11) QR take 0.13 s instead of 10 ms.

`--join-sizes 200000,500000,1000000`: the cross-class join alone (results/cross_class_join.json),
on the first output's shared-space vectors tiled with noise, with the approximate join's
recall of the exact partner on a sample.

`--rerun`: keep what the thresholds made and run them again (the keep lists unchanged:
each clean copy is its own donor). `--profile DIR`: a cProfile of each run,
`DIR/<images>_<T>.prof`.

The outputs: the tiled EuroSAT of `bench_scale.py`, one `dedup run` each with the model
of any EuroSAT run copied in (about 25 minutes on 2 cores for the three):

    python -c "from pathlib import Path; from benchmarks.bench_scale import build_pool, make_set
    f = build_pool(Path('../shared/datasets/eurosat'), Path('/tmp/thr23/pool'), 200_000, 2)
    [make_set(f, Path(f'/tmp/thr23/set_{n}'), n) for n in (30_000, 100_000, 200_000)]"

then for each size, as `bench_scale.run_ours` does: `OutputLayout(out).claim()`, the model
copied to `<out>/model/autoencoder.pt`, and `dedup run --source /tmp/thr23/set_<n>
--output /tmp/thr23/out_<n>`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402

STEP_SUCCESS, STEP_FAILURE = "STEP_SUCCESS", "STEP_FAILURE"


def clear_threshold_outputs(out: Path, thresholds: list[str]) -> None:
    """What a first run's threshold stage finds: no keep list, report, clean copy or
    cross-class table of any threshold, and no cache of the cross-class join or the
    reports."""
    from dedup_assets.core.data.layout import OutputLayout

    layout = OutputLayout(out)
    for t in thresholds:
        for path in (
            *(layout.keep_list(t, ext) for ext in ("parquet", "csv", "json")),
            layout.duplicate_pairs_image(t),
            layout.cross_class(t),
        ):
            path.unlink(missing_ok=True)
        for folder in (layout.report_dir(t), layout.clean_dir(t)):
            shutil.rmtree(folder, ignore_errors=True)
    for cache in [*layout.cross_class_dir.glob(".*.npz"), *layout.reports_dir.glob(".*.parquet")]:
        cache.unlink()


def run_threshold(defs, instance, threshold: str, profile: Path | None) -> dict:
    """One threshold_job run in this process: wall seconds and seconds per step."""
    from dedup_assets.names import THRESHOLD_JOB

    job = defs.resolve_job_def(THRESHOLD_JOB)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = job.execute_in_process(
        partition_key=threshold,
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )
    if profiler:
        profiler.disable()
        profile.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile))
    wall = time.perf_counter() - start
    # Step seconds from the event log's timestamps: a step whose blocking check failed
    # (the kurtosis gate) ends in STEP_FAILURE, which carries no duration.
    started, steps, failed = {}, {}, []
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            started[event.step_key] = entry.timestamp
        elif event.event_type_value in (STEP_SUCCESS, STEP_FAILURE):
            steps[event.step_key] = round(entry.timestamp - started[event.step_key], 3)
            if event.event_type_value == STEP_FAILURE:
                failed.append(event.step_key)
    return {"wall_seconds": round(wall, 3), "steps": steps, "failed": failed}


def measure(out: Path, thresholds: list[str], rerun: bool, profile: Path | None) -> dict:
    import polars as pl

    from dedup_assets.config import PipelineConfig
    from dedup_assets.definitions import build_definitions
    from dedup_assets.runner import instance_for

    saved = json.loads((out / "pipeline.json").read_text())
    saved.pop("version", None)
    saved.pop("demo_source", None)
    config = PipelineConfig.model_validate(
        saved | {"output": str(out), "thresholds": thresholds, "executor": "in_process"}
    )
    images = sum(
        pl.scan_parquet(p).select(pl.len()).collect().item()
        for p in (out / "latents").glob("*.parquet")
    )
    if not rerun:
        clear_threshold_outputs(out, thresholds)
    defs = build_definitions(config)
    instance = instance_for(out)
    runs = {}
    for t in thresholds:
        prof = profile / f"{images}_{t}.prof" if profile else None
        runs[t] = run_threshold(defs, instance, t, prof)
        print(f"{images:,} images, T={t}: {runs[t]}", flush=True)
    steps = sorted({s for r in runs.values() for s in r["steps"]})
    per_step = {s: round(sum(r["steps"].get(s, 0.0) for r in runs.values()), 3) for s in steps}
    return {
        "output": str(out),
        "images": images,
        "runs": runs,
        "seconds_per_step": per_step,
        "wall_seconds": round(sum(r["wall_seconds"] for r in runs.values()), 3),
    }


def join_scale(out: Path, sizes: list[int], exact_max: int, sample: int = 3000) -> list[dict]:
    """The cross-class nearest-other-class join alone on n shared-space vectors: the
    output's images (its latents in the shared space, classes as labels), tiled with small
    noise past their number; seconds of the approximate join (and of the exact one up to
    `exact_max`), and the share of `sample` images whose exact partner, when above a
    cosine, the approximate join found (the exact side by products of the sample)."""
    from dedup_assets.core.data.artifacts import read_latents
    from dedup_assets.core.decision.cross_class import (
        SharedSpace,
        nearest_other_class,
        stratified_sample,
    )
    from dedup_assets.core.decision.similarity import l2_normalize

    latents = [read_latents(p)[1] for p in sorted((out / "latents").glob("*.parquet"))]
    picks = stratified_sample([len(x) for x in latents])
    space = SharedSpace.fit(np.concatenate([x[at] for x, at in zip(latents, picks, strict=True)]))
    vectors = np.concatenate([space.project(x) for x in latents])
    labels = np.concatenate([np.full(len(x), k) for k, x in enumerate(latents)])
    del latents
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        reps = -(-n // len(vectors))
        noise = [
            0.02 * rng.standard_normal(vectors.shape).astype(np.float32) for _ in range(1, reps)
        ]
        x = np.concatenate([vectors, *(l2_normalize(vectors + e) for e in noise)])[:n]
        lab = np.concatenate([labels] * reps)[:n]
        row: dict = {"n": n}
        start = time.perf_counter()
        ann = nearest_other_class(x, lab, join="ann")
        row["ann_seconds"] = round(time.perf_counter() - start, 2)
        if n <= exact_max:
            start = time.perf_counter()
            nearest_other_class(x, lab)
            row["exact_seconds"] = round(time.perf_counter() - start, 2)
        queries = np.sort(rng.choice(n, min(sample, n), replace=False))
        sims = x[queries] @ x.T
        sims[lab[queries][:, None] == lab[None, :]] = -np.inf
        partner, best = sims.argmax(axis=1), sims.max(axis=1)
        for t in (0.9, 0.93, 0.97):
            listed = best > t
            found = (ann.partner[queries] == partner) & listed
            row[f"sampled_above_{t}"] = int(listed.sum())
            row[f"found_above_{t}"] = round(float(found.sum() / max(1, listed.sum())), 4)
        print(row, flush=True)
        rows.append(row)
    return rows


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """b in value ~ size^b, least squares on logs."""
    pts = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(pts) < 2:
        return None
    xs, ys = np.array(pts).T
    return round(float(np.polyfit(xs, ys, 1)[0]), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--outputs", type=Path, nargs="+", required=True)
    p.add_argument(
        "--join-sizes",
        default="",
        help="instead: the cross-class join alone at these sizes, on the first output's vectors",
    )
    p.add_argument("--exact-max", type=int, default=200_000, help="exact join up to this size")
    p.add_argument("--thresholds", default="0.93,0.95,0.97,1%")
    p.add_argument("--rerun", action="store_true", help="keep the thresholds' outputs")
    p.add_argument("--profile", type=Path, default=None, help="folder for cProfile dumps")
    p.add_argument("--label", default="", help="a name for this measurement (e.g. a commit)")
    add_out_option(p)
    args = p.parse_args()
    if args.join_sizes:
        sizes = [int(n) for n in args.join_sizes.split(",")]
        rows = join_scale(args.outputs[0], sizes, args.exact_max)
        result = {"output": str(args.outputs[0]), "join": rows}
        result["ann_exponent"] = exponent(sizes, [r["ann_seconds"] for r in rows])
        print("approximate join exponent:", result["ann_exponent"])
        print(f"wrote {write_result('cross_class_join', result, args.out)}")
        return
    thresholds = [t for t in args.thresholds.split(",") if t]
    sizes = [measure(o, thresholds, args.rerun, args.profile) for o in args.outputs]
    sizes.sort(key=lambda r: r["images"])
    ns = [r["images"] for r in sizes]
    steps = sorted({s for r in sizes for s in r["seconds_per_step"]})
    exponents = {
        s: exponent(ns, [r["seconds_per_step"].get(s, 0.0) for r in sizes]) for s in steps
    } | {"wall": exponent(ns, [r["wall_seconds"] for r in sizes])}
    commit = __import__("subprocess").run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    result = {
        "label": args.label,
        "commit": commit.stdout.strip(),
        "thresholds": thresholds,
        "rerun": args.rerun,
        "sizes": sizes,
        "exponents": exponents,
    }
    name = "threshold_stage" + (f"_{args.label}" if args.label else "")
    path = write_result(name, result, args.out)
    rows = [
        [s, *(r["seconds_per_step"].get(s, 0.0) for r in sizes), exponents[s] or "-"] for s in steps
    ]
    rows.append(["wall (all runs)", *(r["wall_seconds"] for r in sizes), exponents["wall"] or "-"])
    print(table(["step (s, all thresholds)", *(f"{n:,}" for n in ns), "exponent"], rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
