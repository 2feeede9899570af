"""`dedup`: the pipeline as one command, for the demo dataset or any ImageFolder.

dedup demo                      # built-in demo dataset -> ./dedup_output
dedup run --source DIR --output DIR [--thresholds 0.93,0.95,0.97] [--epochs N] [--device auto]
dedup plant --source DIR --dest DIR [--fraction 0.05]   # planted near-duplicates + ground truth
dedup ui --output DIR           # dagster dev on the same instance and data
"""

import argparse
import os
import sys
from pathlib import Path


def _add_run_options(p: argparse.ArgumentParser, with_source: bool) -> None:
    if with_source:
        p.add_argument("--source", required=True, help="ImageFolder root: <source>/<class>/<image>")
        p.add_argument(
            "--ground-truth", default=None, help="CSV class,original,copy of known duplicates"
        )
    p.add_argument(
        "--output", default="dedup_output", help="output folder (default ./dedup_output)"
    )
    p.add_argument(
        "--thresholds",
        default=None,
        help="comma-separated cosine thresholds (default 0.93,0.95,0.97)",
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: auto)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default=None, help="auto | fp32 | bf16")
    p.add_argument("--space", default=None, help="similarity space: raw | whitened | spline_copula")
    p.add_argument("--policy", default=None, help="keep policy: first | density")
    p.add_argument("--components", type=int, default=None, help="principal components per class")
    p.add_argument("--kurtosis-tolerance", type=float, default=None)
    p.add_argument("--clean-copy-mode", default=None, help="copy | hardlink | symlink")
    p.add_argument(
        "--reuse-model", action="store_true", help="keep the trained autoencoder if one exists"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dedup", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_options(
        sub.add_parser("demo", help="run everything on the built-in demo dataset"), False
    )
    _add_run_options(sub.add_parser("run", help="run everything on an ImageFolder dataset"), True)
    plant = sub.add_parser(
        "plant", help="copy a dataset and plant near-duplicates with ground truth"
    )
    plant.add_argument("--source", required=True)
    plant.add_argument("--dest", required=True)
    plant.add_argument(
        "--fraction", type=float, default=0.05, help="fraction of originals copied per class"
    )
    plant.add_argument(
        "--per-class", type=int, default=None, help="sample this many originals per class"
    )
    plant.add_argument("--seed", type=int, default=0)
    plant.add_argument(
        "--proportions", default=None, help="transform weights, e.g. jpeg=1,brightness=1,noise=2"
    )
    ui = sub.add_parser("ui", help="open dagster dev on the output folder's instance")
    ui.add_argument("--output", default="dedup_output")
    ui.add_argument("--source", default=None)
    return parser


def _settings(args: argparse.Namespace):
    from resources import DedupSettings

    mapping = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "similarity_space": args.space,
        "keep_policy": args.policy,
        "n_components": args.components,
        "kurtosis_tolerance": args.kurtosis_tolerance,
        "clean_copy_mode": args.clean_copy_mode,
    }
    return DedupSettings(**{k: v for k, v in mapping.items() if v is not None}).validate()


def _run(args: argparse.Namespace) -> int:
    if args.thresholds:
        from dedup_assets.partitions import parse_thresholds

        os.environ["DEDUP_THRESHOLDS"] = ",".join(parse_thresholds(args.thresholds))
    output = Path(args.output).resolve()
    os.environ["DEDUP_OUTPUT"] = str(output)
    from dedup_assets.core.atomic_io import write_json
    from dedup_assets.definitions import PIPELINE_FILE, build_resources
    from dedup_assets.runner import instance_for, run_pipeline

    resources = build_resources(
        source=getattr(args, "source", None) or "",
        output=str(output),
        ground_truth=getattr(args, "ground_truth", None) or "",
        device=args.device,
        precision=args.precision,
        settings=_settings(args),
    )
    instance = instance_for(output)
    layout = resources["storage"].layout()
    write_json(
        {
            "source": resources["image_source"].root,
            "ground_truth": resources["image_source"].ground_truth,
            "thresholds": os.environ.get("DEDUP_THRESHOLDS", ""),
            "device": resources["compute"].device,
            "precision": resources["compute"].precision,
            "settings": resources["settings"].model_dump(),
        },
        output / PIPELINE_FILE,
    )
    train = not (args.reuse_model and layout.model.exists())
    print(f"latent-dedup: {resources['image_source'].root or 'built-in demo dataset'} -> {output}")
    outcome = run_pipeline(resources, instance, train=train)
    print("\nstage                                      runs   seconds")
    for s in outcome.stages:
        print(f"{s.name:<42} {s.runs:>4} {s.seconds:>9.1f}")
    print(f"{'total':<42} {'':>4} {outcome.total_seconds:>9.1f}")
    for t in outcome.thresholds:
        if layout.keep_list(t).exists():
            print(f"keep list T={t}: {layout.keep_list(t)} (+ .csv)")
    for w in outcome.check_warnings:
        print(f"WARN  check {w}")
    for f in outcome.check_failures:
        print(f"FAIL  check {f} (downstream cleaned copy not written)")
    for f in outcome.failures:
        print(f"ERROR {f}")
    summary = layout.root / "reports" / "summary.md"
    if summary.exists():
        print(f"\nreport: {summary}")
        print(f"per-threshold reports: {layout.root / 'reports'}/<T>/report.md")
    print(f"open in the UI: dedup ui --output {output}")
    return 0 if outcome.ok else 1


def _plant(args: argparse.Namespace) -> int:
    from dedup_assets.core.planting import plant_duplicates

    proportions = None
    if args.proportions:
        proportions = {}
        for item in args.proportions.split(","):
            name, _, weight = item.partition("=")
            proportions[name.strip()] = float(weight or 1)
    summary = plant_duplicates(
        Path(args.source),
        Path(args.dest),
        fraction=args.fraction,
        per_class=args.per_class,
        proportions=proportions,
        seed=args.seed,
    )
    print(
        f"copied {summary.n_originals:,} originals and planted {summary.n_copies:,} near-duplicates "
        f"into {summary.dest}; ground truth: {summary.ground_truth}"
    )
    for path, reason in summary.skipped:
        print(f"skipped {path}: {reason}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from dedup_assets.definitions import PIPELINE_FILE, read_pipeline_file

    output = Path(args.output).resolve()
    env = dict(os.environ, DEDUP_OUTPUT=str(output), DAGSTER_HOME=str(output / ".dagster"))
    if args.source:
        env["DEDUP_SOURCE"] = str(Path(args.source).resolve())
    saved = read_pipeline_file(output)
    if saved.get("thresholds") and "DEDUP_THRESHOLDS" not in env:
        env["DEDUP_THRESHOLDS"] = saved["thresholds"]
    if not saved:
        print(f"note: no {PIPELINE_FILE} in {output}; the UI starts with default settings")
    (output / ".dagster").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "dedup_assets.definitions"]
    print(" ".join(cmd), f"(DAGSTER_HOME={env['DAGSTER_HOME']})")
    os.execvpe(cmd[0], cmd, env)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("demo", "run"):
        return _run(args)
    if args.command == "plant":
        return _plant(args)
    return _ui(args)


if __name__ == "__main__":
    sys.exit(main())
