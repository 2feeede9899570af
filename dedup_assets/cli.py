"""`dedup`: the pipeline as one command, for the demo dataset or any ImageFolder.

dedup demo                      # built-in demo dataset -> ./dedup_output
dedup run --source DIR --output DIR [--thresholds 0.93,0.95,0.97,1%] [--epochs N] [--device auto]
dedup plant --source DIR --dest DIR [--fraction 0.05]   # planted near-duplicates + ground truth
dedup ui --output DIR           # dagster dev on the same instance and data

Exit status: 0 when every stage ran and no blocking gate failed, 1 when a run failed or a
gate blocked a clean copy, 2 for bad arguments or settings. Errors are one line naming
the cause; `--verbose` adds tracebacks and Dagster's own log.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or settings: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one line per usage error (what is wrong, and where help is), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_run_options(p: argparse.ArgumentParser, with_source: bool) -> None:
    if with_source:
        p.add_argument("--source", required=True, help="ImageFolder root: <source>/<class>/<image>")
        p.add_argument(
            "--ground-truth",
            default=None,
            help="CSV with columns class,original,copy of known duplicates "
            "(default: <source>/ground_truth.csv when present)",
        )
    p.add_argument(
        "--output",
        default="dedup_output",
        help="output folder, new or made by latent-dedup, outside the source "
        "(default ./dedup_output)",
    )
    p.add_argument(
        "--thresholds",
        default=None,
        help="comma-separated thresholds, one keep list each: cosines in (0, 1), the same "
        "in every class, or false-removal budgets like 1%% (at most that share of images "
        "with no duplicate removed, calibrated per class) (default 0.93,0.95,0.97,1%%)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default 0: until a held-out slice's loss stops improving)",
    )
    p.add_argument(
        "--training-images",
        type=int,
        default=None,
        help="with automatic epochs, train on at most this many images; the held-out loss "
        "may stop it sooner (default 12288)",
    )
    p.add_argument(
        "--training",
        default=None,
        help="autoencoder objective: invariant (codes that see through crops, colour and "
        "re-encoding) | plain (the paper's reconstruction) (default invariant)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 128)")
    p.add_argument(
        "--learning-rate", type=float, default=None, help="Adam learning rate (default 1e-3)"
    )
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument(
        "--device", default=None, help="auto | cpu | cuda | cuda:N (default auto; never saved)"
    )
    p.add_argument(
        "--precision", default=None, help="auto | fp32 | bf16 (default auto; never saved)"
    )
    p.add_argument(
        "--space",
        default=None,
        help="similarity space: raw | whitened | spline_copula | spline_copula_dct (the "
        "spline-copula latents joined with a low-frequency DCT descriptor of the pixels) "
        "(default spline_copula_dct)",
    )
    p.add_argument("--policy", default=None, help="keep policy: first | density (default density)")
    p.add_argument(
        "--budget-scaling",
        default=None,
        help="what a budget threshold (1%%) resolves to: local (one margin per class, each "
        "pair's cosine threshold raised by how close unrelated images come to its two "
        "images) | uniform (one cosine per class) (default local)",
    )
    p.add_argument(
        "--join",
        default=None,
        help="similarity join of the keep decisions: auto (exact up to --ann-min-class-size "
        "images a class, approximate above) | exact | ann (faiss IVF) (default auto)",
    )
    p.add_argument(
        "--ann-min-class-size",
        type=int,
        default=None,
        help="with --join auto, classes above this many images use the approximate join "
        "(default 200000)",
    )
    p.add_argument(
        "--components",
        type=int,
        default=None,
        help="principal components per class, at most a quarter of its size (default 128)",
    )
    p.add_argument(
        "--kurtosis-tolerance",
        type=float,
        default=None,
        help="how far the kurtosis line may rise above the median before the gate fails, "
        "on top of what random removal does (default 0.1)",
    )
    p.add_argument(
        "--clean-copy-mode",
        default=None,
        help="how clean/<T> holds the kept images: copy (files of their own, the default) | "
        "hardlink | symlink (the source's own files: editing a file in clean/<T> edits the "
        "source)",
    )
    p.add_argument(
        "--max-file-bytes",
        type=int,
        default=None,
        help="files larger than this are skipped unread (default 268435456)",
    )
    p.add_argument(
        "--include-hidden",
        action="store_true",
        help="read hidden files and folders (names starting with '.') like any other; by "
        "default they are skipped and listed in catalog/quarantine.csv",
    )
    p.add_argument(
        "--retrain-new-share",
        type=float,
        default=None,
        help="retrain the autoencoder when this share of the images is new since training "
        "(default 0.25)",
    )
    p.add_argument(
        "--retrain-error-factor",
        type=float,
        default=None,
        help="retrain when new images reconstruct this many times worse than the training "
        "images (default 1.5)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        help="cron of the nightly_refresh and nightly_retraining schedules in the UI "
        "(default '0 2 * * *')",
    )
    p.add_argument(
        "--executor",
        default=None,
        help="where the per-class and per-threshold runs execute: auto | in_process | "
        "processes (a pool of local processes) | dask (the workers of --dask-address) (default "
        "auto: 2 local processes for 20,000 files or more with at most 20,000 a class and 2 "
        "cores, else in_process; never saved; k8s is for the deployment in deploy/k8s)",
    )
    p.add_argument(
        "--dask-address",
        default=None,
        help="dask.distributed scheduler of --executor dask, e.g. tcp://10.0.0.5:8786",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="class (and threshold) runs at once with --executor processes or dask, or when "
        "auto picks processes (default 1; auto: 2)",
    )
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train the autoencoder again even if no retraining rule fires",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="recompute everything from scratch: decode, train, encode and decide again, "
        "ignoring earlier decisions",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="read every file and compare its bytes with what the catalog read: notices a "
        "file rewritten in place with the same size and modification time, which the "
        "default check (paths, sizes and modification times, no file read) cannot see",
    )
    p.add_argument(
        "--verbose", action="store_true", help="Dagster's log and full tracebacks on errors"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dedup", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_options(
        sub.add_parser("demo", help="run everything on the built-in demo dataset"), False
    )
    _add_run_options(sub.add_parser("run", help="run everything on an ImageFolder dataset"), True)
    plant = sub.add_parser(
        "plant", help="copy a dataset and plant near-duplicates with ground truth"
    )
    plant.add_argument("--source", required=True, help="ImageFolder to copy (only read)")
    plant.add_argument("--dest", required=True, help="new folder for the copy with plants")
    plant.add_argument(
        "--fraction", type=float, default=0.05, help="fraction of originals copied per class"
    )
    plant.add_argument(
        "--per-class", type=int, default=None, help="sample this many originals per class"
    )
    plant.add_argument("--seed", type=int, default=0, help="seed of the sampling and transforms")
    plant.add_argument(
        "--proportions", default=None, help="transform weights, e.g. jpeg=1,brightness=1,noise=2"
    )
    plant.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    ui = sub.add_parser("ui", help="open dagster dev on the output folder's instance")
    ui.add_argument("--output", default="dedup_output", help="the output folder of dedup run")
    ui.add_argument("--source", default=None, help="override the saved source folder")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on")
    ui.add_argument("--port", type=int, default=3000, help="port the UI listens on")
    ui.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    return parser


def config_from_args(args: argparse.Namespace):
    """The PipelineConfig of `dedup run`/`demo`: command-line options over the defaults."""
    from dedup_assets.config import ConfigError, PipelineConfig

    method = {
        "epochs": args.epochs,
        "training": args.training,
        "training_images": args.training_images,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "similarity_space": args.space,
        "keep_policy": args.policy,
        "budget_scaling": args.budget_scaling,
        "join": args.join,
        "ann_min_class_size": args.ann_min_class_size,
        "n_components": args.components,
        "kurtosis_tolerance": args.kurtosis_tolerance,
        "clean_copy_mode": args.clean_copy_mode,
        "retrain_new_share": args.retrain_new_share,
        "retrain_error_factor": args.retrain_error_factor,
    }
    values = {
        "source": getattr(args, "source", None) or "",
        "output": args.output,
        "ground_truth": getattr(args, "ground_truth", None) or "",
        "thresholds": args.thresholds,
        "device": args.device,
        "precision": args.precision,
        "max_file_bytes": args.max_file_bytes,
        "include_hidden": args.include_hidden,
        "schedule": args.schedule,
        "executor": args.executor,
        "dask_address": args.dask_address,
        "parallel": args.parallel,
        "verify": args.verify,
        "method": {k: v for k, v in method.items() if v is not None},
    }
    try:
        return PipelineConfig.build(**{k: v for k, v in values.items() if v is not None})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.executor == "k8s":
        raise UsageError(
            "executor k8s is for the code location of a Kubernetes deployment "
            "(deploy/k8s, DEDUP_EXECUTOR=k8s); dedup run uses in_process, processes or dask"
        )
    from dedup_assets.assets.clean_dataset import link_warning
    from dedup_assets.core.layout import OutputInUse, OutputLayout
    from dedup_assets.runner import instance_for, run_pipeline

    output = Path(config.output)
    layout = OutputLayout(output)
    try:
        layout.claim()
    except OutputInUse as exc:
        raise UsageError(str(exc)) from None
    say = lambda text: print(text, flush=True)  # noqa: E731 - progress lines, unbuffered
    say(f"latent-dedup: {config.source or f'demo dataset {config.demo_source}'} -> {output}")
    instance = instance_for(output)
    outcome = run_pipeline(
        config,
        instance,
        retrain=args.retrain,
        full=args.full,
        log=say,
        log_level="INFO" if args.verbose else "CRITICAL",
    )
    warning = link_warning(str(config.method.clean_copy_mode))
    if outcome.nothing_changed:
        say("nothing changed: every output is up to date")
        say(_catalog_line(layout))
        if warning:
            say(f"NOTE  {warning}")
        for line in _demo_lines(config):
            say(line)
        return EXIT_OK
    say("\nstage                                                  runs   seconds")
    for s in outcome.stages:
        say(f"{s.name:<54} {s.runs:>4} {s.seconds:>9.1f}")
    say(f"{'total':<54} {'':>4} {outcome.total_seconds:>9.1f}")
    say(_catalog_line(layout))
    if not outcome.failures and not outcome.skipped:
        for t in outcome.thresholds:
            say(f"keep list T={t}: {layout.keep_list(t)} (+ .csv)")
    if warning:
        say(f"NOTE  {warning}")
    for c in outcome.check_warnings:
        say(f"WARN  check failed, severity WARN (does not block): {c.line()}")
    for c in outcome.check_failures:
        say(f"FAIL  check failed, severity ERROR (clean/{c.partition} not written): {c.line()}")
    for t in outcome.stale_clean:
        say(
            f"STALE clean/{t}: made from an earlier keep list, left as it was "
            f"(see {layout.clean_stale_note(t)})"
        )
    for f in outcome.failures:
        say(f"ERROR {f}")
    for s in outcome.skipped:
        say(f"SKIPPED {s}")
    if outcome.summary_written:
        say(f"\nreport: {layout.summary}")
        say(f"per-threshold reports: {layout.reports_dir}/<T>/report.md")
    say(f"open in the UI: dedup ui --output {shlex.quote(str(output))}")
    for line in _demo_lines(config):
        say(line)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _demo_lines(config) -> list[str]:
    """Where the demo's source is, that it is the user's to add images to, and its state."""
    if config.demo_source is None:
        return []
    from dedup_assets.core.demo_data import demo_state

    again = f"dedup demo --output {shlex.quote(config.output)}"
    return [
        f"demo source: {config.demo_source} ({demo_state(config.demo_source)})",
        "  it is yours and never regenerated: add images to a class folder there and run "
        f"`{again}` again, or turn on new_images_sensor in the UI; only that class is processed",
    ]


def _catalog_line(layout) -> str:
    """What the catalog holds and what it left out, counted by reason (catalog/quarantine.csv
    has every path with its own)."""
    import polars as pl

    from dedup_assets.core.artifacts import read_classes
    from dedup_assets.core.class_catalog import QUARANTINE_SCHEMA, quarantine_counts

    images = int(read_classes(layout)["images"].sum())
    if not layout.quarantine.is_file():
        return f"catalog: {images:,} images"
    counts = quarantine_counts(pl.read_csv(layout.quarantine, schema=QUARANTINE_SCHEMA))
    listed = ", ".join(f"{n:,} {kind}" for kind, n in counts.items())
    return f"catalog: {images:,} images; " + (
        f"listed with the reason in {layout.quarantine}: {listed}" if counts else "nothing skipped"
    )


def _plant(args: argparse.Namespace) -> int:
    from dedup_assets.core.planting import plant_duplicates

    proportions = None
    if args.proportions:
        proportions = {}
        for item in args.proportions.split(","):
            name, _, weight = item.partition("=")
            try:
                proportions[name.strip()] = float(weight or 1)
            except ValueError:
                raise UsageError(f"--proportions: {weight!r} is not a number") from None
    source = Path(args.source).expanduser().resolve()
    if not source.is_dir():
        raise UsageError(f"source {source} does not exist or is not a folder")
    try:
        summary = plant_duplicates(
            Path(args.source),
            Path(args.dest),
            fraction=args.fraction,
            per_class=args.per_class,
            proportions=proportions,
            seed=args.seed,
        )
    except (ValueError, FileExistsError) as exc:  # raised before anything is written
        raise UsageError(str(exc)) from None
    print(
        f"copied {summary.n_originals:,} originals and planted {summary.n_copies:,} near-duplicates "
        f"into {summary.dest}; ground truth: {summary.ground_truth}"
    )
    for path, reason in summary.skipped:
        print(f"skipped {path}: {reason}")
    return EXIT_OK


def _ui(args: argparse.Namespace) -> int:
    """The Dagster webserver and daemon on the output folder's instance (what `dagster dev`
    starts, without its deprecated command): the daemon runs sensors, schedules and
    declarative automation."""
    import signal
    import subprocess

    from dedup_assets.config import PIPELINE_FILE, ConfigError, PipelineConfig

    output = Path(args.output).expanduser().resolve()
    if not (output / PIPELINE_FILE).is_file():  # checked before .dagster is made there
        folder = shlex.quote(str(output))
        what = "holds no finished run of latent-dedup" if output.is_dir() else "does not exist"
        raise UsageError(
            f"{output} {what} (no {PIPELINE_FILE}): make a run there with "
            f"`dedup run --source YOUR_IMAGES --output {folder}` or "
            f"`dedup demo --output {folder}`"
        )
    from dedup_assets.core.layout import DAGSTER_HOME, prepare_dagster_home

    env = dict(os.environ, DEDUP_OUTPUT=str(output))
    env[DAGSTER_HOME] = str(prepare_dagster_home(output))
    if args.source:
        env["DEDUP_SOURCE"] = str(Path(args.source).resolve())
    try:
        config = PipelineConfig.from_environment(env)  # fail here, not inside the UI
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    print(f"thresholds: {', '.join(config.thresholds)}; source: {config.source or 'demo'}")
    module = ["-m", "dedup_assets.definitions"]
    bin_dir = Path(sys.executable).parent
    daemon = [str(bin_dir / "dagster-daemon"), "run", *module]
    webserver = [str(bin_dir / "dagster-webserver"), *module, "-h", args.host, "-p", str(args.port)]
    print(
        f"Dagster UI on http://{args.host}:{args.port} with its daemon (sensors, schedules, "
        f"automation); DAGSTER_HOME={env[DAGSTER_HOME]}; Ctrl-C stops both",
        flush=True,
    )

    def stop(signum, frame):  # SIGTERM stops both children, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    processes = [subprocess.Popen(daemon, env=env), subprocess.Popen(webserver, env=env)]
    try:
        return processes[1].wait()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _early_stop(signum: int, frame: object) -> None:
    """SIGTERM before the run's own handling is in place (Dagster takes seconds to import):
    stop with the same one line and exit status."""
    stop = KeyboardInterrupt()
    stop.exit_status = 128 + signum  # type: ignore[attr-defined]
    raise stop


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"demo": _run, "run": _run, "plant": _plant, "ui": _ui}
    try:
        if args.command in ("demo", "run"):  # SIGINT/SIGTERM stop it: interrupts.Interrupted
            import signal

            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _early_stop)
            from dedup_assets.interrupts import stop_on_signals

            with stop_on_signals():
                return handlers[args.command](args)
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"dedup {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # interrupts.Interrupted says which signal and where
        why = str(exc) or "interrupted; run the same command again to resume"
        print(f"dedup {args.command}: {why}", file=sys.stderr)
        return getattr(exc, "exit_status", 130)  # 128 + SIGINT, as a shell reports it
    except Exception as exc:  # noqa: BLE001 - one line for the user; --verbose for the rest
        if args.verbose:
            traceback.print_exc()
        print(f"dedup {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
