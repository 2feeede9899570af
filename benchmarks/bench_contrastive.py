"""The contrastive (InfoNCE) weight of invariant training: what each candidate finds, and
what the kurtosis gate says about it, through the whole `dedup run`.

For every weight and training seed, the real command at its defaults (thresholds
0.93,0.95,0.97,1%, `spline_copula_dct`, early stopping at 12,288 training images, kurtosis
tolerance 0.1) on each planted folder (`dedup plant` output with its ground_truth.csv) and
on the built-in demo (`dedup demo`). Read back: from `evaluation/evaluation.csv` the AP,
recall, recall per planted transform and false-removal rate of the default space; from
`reports/<T>/summary.json` each threshold's gate verdict; whether `clean/<T>` was written.

The weight is no setting of the pipeline: `InvariantLoss.contrast_weight` in
`dedup_assets/core/model/autoencoder.py`. The benchmark sets it in its own child processes only,
through a `sitecustomize` on their PYTHONPATH that changes that default when the module is
imported and logs every loss built (so a run that did not use the weight is refused).

    dedup plant --source ../shared/datasets/eurosat --dest /tmp/cw/es --per-class 600 \
        --fraction 0.1 --seed 1
    dedup plant --source ../shared/datasets/hymenoptera --dest /tmp/cw/hy --fraction 0.15 \
        --seed 1
    python benchmarks/bench_contrastive.py --planted /tmp/cw/es /tmp/cw/hy \
        [--weights 0.05 0.2] [--seeds 0 1 2] [--no-demo | --demo-seeds ...] \
        [--tiny [--tiny-seeds ...]] [--work DIR] [--reuse]       # results/contrastive.json
"""

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import add_out_option, table, write_result  # noqa: E402

DEDUP = Path(sys.executable).with_name("dedup")
SPACE = "spline_copula_dct"
BUDGET = "1%"
COSINE = "0.95"
STDOUT_TAIL = 700  # characters of each command's output kept in the result

# Written into the work folder and put first on the children's PYTHONPATH. It changes
# nothing unless BENCH_CONTRASTIVE_WEIGHT is set, imports nothing of the pipeline itself
# (the CLI sets threads before torch is imported), and patches the autoencoder module right
# after it executes, in whichever process (the CLI's or a spawned worker's) imports it.
SITECUSTOMIZE = """
import importlib.abc
import os
import sys

_WEIGHT = os.environ.get("BENCH_CONTRASTIVE_WEIGHT")
_LOG = os.environ.get("BENCH_CONTRASTIVE_LOG")


def _is_target(name):
    # dedup_assets.core.model.autoencoder (matched by its ends, wherever core files it)
    return name.startswith("dedup_assets.core") and name.endswith(".autoencoder")


def _patch(module):
    import dataclasses
    import inspect

    cls = getattr(module, "InvariantLoss", None)
    if cls is None or getattr(cls, "_bench_patched", False):
        return
    cls._bench_patched = True
    weight = float(_WEIGHT)
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    defaulted = [p.name for p in params if p.default is not inspect.Parameter.empty]
    defaults = list(cls.__init__.__defaults__)
    defaults[defaulted.index("contrast_weight")] = weight
    cls.__init__.__defaults__ = tuple(defaults)
    cls.contrast_weight = weight
    cls.__dataclass_fields__["contrast_weight"].default = weight
    dataclasses.fields(cls)  # still a valid dataclass
    original = cls.__post_init__

    def __post_init__(self):
        original(self)
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(f"{os.getpid()} {self.contrast_weight!r}\\n")

    cls.__post_init__ = __post_init__


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if not _is_target(name):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _WEIGHT:
    sys.meta_path.insert(0, _Hook())
"""


def child_env(work: Path, weight: float, log: Path) -> dict:
    hook = work / "sitecustomize"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEDUP_", "DAGSTER_HOME"))}
    env["PYTHONPATH"] = os.pathsep.join([str(hook), *filter(None, [env.get("PYTHONPATH")])])
    env["BENCH_CONTRASTIVE_WEIGHT"] = repr(weight)
    env["BENCH_CONTRASTIVE_LOG"] = str(log)
    return env


def _float(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def headroom(excess: list, chance: list, tolerance: float) -> float:
    """How far the gate's closest component stays under its blocking limit, the larger of
    the tolerance and the random-removal quantile (below 0: blocked)."""
    limits = [max(tolerance, c) if math.isfinite(c) else tolerance for c in chance]
    gaps = [lim - e for e, lim in zip(excess, limits, strict=True) if math.isfinite(e)]
    return min(gaps, default=float("nan"))


def read_run(output: Path) -> dict:
    """Evaluation rows of the default space, gate verdicts and clean copies per threshold."""
    rows = [
        {k: _float(v) if k not in ("method", "threshold") else v for k, v in r.items()}
        for r in csv.DictReader((output / "evaluation" / "evaluation.csv").open())
    ]
    evaluation = {r["threshold"]: r for r in rows if r["method"] == SPACE}
    gates = {}
    for path in sorted((output / "reports").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        t = summary["threshold"]
        excess = [r["excess_at_median"] for r in summary["regressions"]]
        chance = summary["gate"]["random_removal_excess"]
        tolerance = summary["gate"]["tolerance"]
        gates[t] = {
            "severity": summary["gate"]["severity"],
            # How far the closest component stays under the blocking limit (< 0: blocked).
            "headroom": headroom(excess, chance, tolerance),
            "reasons": summary["gate"]["reasons"],
            "excess_at_median": excess,
            "random_removal_excess": chance,
            "classes_measured": summary["classes_measured"],
            "clean_copy": (output / "clean" / t).is_dir()
            and not (output / "clean" / t / "STALE.txt").exists(),
        }
    training = json.loads((output / "model" / "training.json").read_text())
    return {
        "evaluation": evaluation,
        "gates": gates,
        "training": {
            k: training.get(k)
            for k in ("objective", "images_seen", "stopped_because", "train_seconds", "precision")
        },
    }


# tests/test_pipeline.py's fixture, through the command (its kurtosis tolerance left at 0.1).
TINY_SETTINGS = [
    "--thresholds", "0.93,0.95,0.97", "--epochs", "2", "--batch-size", "32",
    "--components", "8", "--device", "cpu", "--precision", "fp32",
]  # fmt: skip


def make_tiny(dest: Path) -> Path:
    """The demo set tests/test_pipeline.py runs on: seed 3, 16 per class, 25% planted."""
    from dedup_assets.core.quality.demo_data import generate_demo_dataset

    generate_demo_dataset(dest, seed=3, per_class=16, duplicate_fraction=0.25)
    return dest.resolve()


def run_one(
    kind: str, source: Path | None, output: Path, weight: float, seed: int, reuse: bool = False
) -> dict:
    """One `dedup run` (or `dedup demo`) with the weight; with `reuse`, a finished run's
    record (`<output>.run.json`, written after the run) is read back instead."""
    record = output.parent / f"{output.name}.run.json"
    if reuse and record.exists():
        run = json.loads(record.read_text())
        return run | {"stdout_tail": run["stdout_tail"][-STDOUT_TAIL:]} | read_run(output)
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    log = output.parent / f"{output.name}.weights.log"
    log.unlink(missing_ok=True)
    if kind == "demo":
        cmd = [str(DEDUP), "demo", "--output", str(output), "--seed", str(seed)]
    else:
        gt = source / "ground_truth.csv"
        cmd = [str(DEDUP), "run", "--source", str(source), "--output", str(output)]
        cmd += ["--ground-truth", str(gt), "--seed", str(seed)]
    if source is not None and source.name == "tiny_source":
        cmd += TINY_SETTINGS
    start = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(output.parent, weight, log)
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    lines = log.read_text().splitlines() if log.exists() else []
    used = sorted({float(line.split()[1]) for line in lines})
    if used != [weight]:
        raise SystemExit(f"{output}: the training used contrastive weights {used}, not {weight}")
    run = {
        "command": cmd,
        "wall_seconds": round(wall, 1),
        "exit": done.returncode,
        "stdout_tail": done.stdout[-STDOUT_TAIL:],
        "weight": weight,
        "seed": seed,
        "weights_used": used,
    }
    record.write_text(json.dumps(run, indent=2))
    return run | read_run(output)


def _rate(r: dict, t: str, key: str) -> float:
    return float(r["evaluation"].get(t, {}).get(key, float("nan")))


def summary_rows(runs: dict) -> list[list]:
    rows = []
    for name, r in runs.items():
        per = {
            k[len("recall_") :]: v
            for k, v in r["evaluation"].get(BUDGET, {}).items()
            if k.startswith("recall_")
        }
        gates = " ".join(
            f"{t}:{g['severity'].upper()}"
            for t, g in sorted(r["gates"].items(), key=lambda x: x[0])
        )
        rows.append(
            [
                name,
                _rate(r, COSINE, "average_precision"),
                _rate(r, BUDGET, "recall"),
                f"{100 * _rate(r, BUDGET, 'false_removal_rate'):.2f}%",
                _rate(r, COSINE, "recall"),
                f"{100 * _rate(r, COSINE, 'false_removal_rate'):.2f}%",
                " ".join(f"{k}={v:.2f}" for k, v in sorted(per.items())),
                gates,
                min((g["headroom"] for g in r["gates"].values()), default=float("nan")),
                r["exit"],
            ]
        )
    return rows


def aggregate(runs: dict) -> dict:
    """Per set and weight, over seeds: mean AP, recall and false removals, mean recall per
    transform at the budget, and every threshold's gate verdicts counted."""
    groups: dict = {}
    for name, r in runs.items():
        groups.setdefault((name.split(" ")[0], r["weight"]), []).append(r)
    out = {}
    for (label, weight), rs in groups.items():

        def mean(t: str, key: str, rs=rs) -> float:
            values = [_rate(r, t, key) for r in rs]
            values = [v for v in values if math.isfinite(v)]
            return sum(values) / len(values) if values else float("nan")

        budget = rs[0]["evaluation"].get(BUDGET, {})
        transforms = sorted(k[len("recall_") :] for k in budget if k.startswith("recall_"))
        verdicts = [g["severity"] for r in rs for g in r["gates"].values()]
        out[f"{label} w={weight}"] = {
            "set": label,
            "weight": weight,
            "seeds": [r["seed"] for r in rs],
            "average_precision": mean(COSINE, "average_precision"),
            "recall_budget": mean(BUDGET, "recall"),
            "recall_budget_range": [
                min(_rate(r, BUDGET, "recall") for r in rs),
                max(_rate(r, BUDGET, "recall") for r in rs),
            ],
            "false_removal_budget": mean(BUDGET, "false_removal_rate"),
            "recall_cosine": mean(COSINE, "recall"),
            "false_removal_cosine": mean(COSINE, "false_removal_rate"),
            "recall_per_transform_budget": {t: mean(BUDGET, f"recall_{t}") for t in transforms},
            "gate_verdicts": {v: verdicts.count(v) for v in ("pass", "warn", "error")},
            "runs_blocked": sum(r["exit"] == 1 for r in rs),
            "lowest_headroom": min(g["headroom"] for r in rs for g in r["gates"].values()),
        }
    return out


def aggregate_rows(agg: dict) -> list[list]:
    return [
        [
            name,
            len(a["seeds"]),
            a["average_precision"],
            a["recall_budget"],
            f"{100 * a['false_removal_budget']:.2f}%",
            a["recall_cosine"],
            " ".join(f"{t}={v:.2f}" for t, v in a["recall_per_transform_budget"].items()),
            "/".join(str(a["gate_verdicts"][v]) for v in ("pass", "warn", "error")),
            f"{a['runs_blocked']}/{len(a['seeds'])}",
        ]
        for name, a in agg.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--planted", type=Path, nargs="*", default=[], help="`dedup plant` folders")
    p.add_argument("--weights", type=float, nargs="+", default=[0.05, 0.2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    p.add_argument("--no-demo", action="store_true", help="skip `dedup demo`")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="add tests/test_pipeline.py's set and settings (6 classes of 20 images, 2 epochs)",
    )
    p.add_argument("--demo-seeds", type=int, nargs="+", default=None, help="(default --seeds)")
    p.add_argument("--tiny-seeds", type=int, nargs="+", default=None, help="(default --seeds)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_contrastive"))
    p.add_argument("--reuse", action="store_true", help="read back runs finished in --work")
    p.add_argument("--name", default="contrastive", help="result file name (no .json)")
    add_out_option(p)
    args = p.parse_args()
    sets = [("run", s.resolve(), s.name) for s in args.planted]
    if not args.no_demo:
        sets.append(("demo", None, "demo"))
    if args.tiny:
        sets.append(("run", make_tiny(args.work / "tiny_source"), "tiny"))
    runs: dict = {}
    for kind, source, label in sets:
        seeds = {"demo": args.demo_seeds, "tiny": args.tiny_seeds}.get(label) or args.seeds
        for seed in seeds:
            for weight in args.weights:
                name = f"{label} w={weight} seed={seed}"
                out = args.work / label / f"w{weight}_s{seed}" / "out"
                runs[name] = r = run_one(kind, source, out, weight, seed, args.reuse)
                print(
                    f"{name}: {r['wall_seconds']} s (exit {r['exit']}), "
                    f"{r['training']['images_seen']:,} training images, "
                    + ", ".join(f"{t} {g['severity']}" for t, g in sorted(r["gates"].items())),
                    flush=True,
                )
    result = {
        "space": SPACE,
        "weights": args.weights,
        "seeds": args.seeds,
        "demo_seeds": None if args.no_demo else (args.demo_seeds or args.seeds),
        "tiny_seeds": (args.tiny_seeds or args.seeds) if args.tiny else None,
        "sets": [str(s) if s else "demo" for _, s, _ in sets],
        "runs": runs,
    }
    result["aggregate"] = agg = aggregate(runs)
    path = write_result(args.name, result, args.out)
    print(
        table(
            [
                "run",
                "AP",
                f"R@{BUDGET}",
                f"FR@{BUDGET}",
                f"R@{COSINE}",
                f"FR@{COSINE}",
                f"per transform @{BUDGET}",
                "gates",
                "headroom",
                "exit",
            ],
            summary_rows(runs),
        )
    )
    print()
    print(
        table(
            [
                "set, weight",
                "seeds",
                "AP",
                f"R@{BUDGET}",
                f"FR@{BUDGET}",
                f"R@{COSINE}",
                f"per transform @{BUDGET}",
                "gates P/W/E",
                "blocked",
            ],
            aggregate_rows(agg),
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
