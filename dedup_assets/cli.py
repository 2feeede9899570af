"""`dedup`: the pipeline as one command, for the demo dataset or any ImageFolder.

dedup demo [--splits]           # built-in demo dataset (--splits: train/test, with leaks)
dedup run --source DIR --output DIR [--thresholds 0.93,0.95,0.97,1%] [--epochs N] [--device auto]
dedup plant --source DIR --dest DIR [--fraction 0.05]   # planted near-duplicates + ground truth
dedup watch --source DIR --output DIR [run options] [--interval 2] [--settle 1]
                                # run, then again whenever the source changes
dedup ui --output DIR           # dagster dev on the same instance and data

Exit status: 0 when every stage ran and no blocking gate held back a clean copy, 1 when a
stage failed, 2 for bad arguments, settings or overrides, 3 when a blocking gate held back a
clean copy, 130 or 143 when SIGINT or SIGTERM stopped it. Errors are one line naming the
cause; `--verbose` adds tracebacks and Dagster's own log. The last lines of `run` and `demo`
say what the run did, in counts and words (`core.quality.run_summary`).

The options of `run` and `demo` are generated from `PipelineConfig`'s fields (name, type,
default, choices and the description as help), so a default is written once, in the model.

A rerun of `run` or `demo` with nothing new (the same options, source listing, corrections, code and
outputs as the last run that ended with exit 0: `core.data.run_fingerprint`) prints that
run's last screen and exits before Dagster, torch or polars are imported (about 1 s plus
listing the source, against 10 s on EuroSAT's 27,000 images); `--force` checks every stage
instead. This module therefore imports nothing heavy at its top: each command imports what
it needs when it runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import shutil
import signal
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, get_args, get_origin

if TYPE_CHECKING:
    import dagster as dg
    from pydantic.fields import FieldInfo

    from dedup_assets.config import PipelineConfig
    from dedup_assets.core.data.folder_trust import FolderTrust
    from dedup_assets.core.data.image_folder import FolderScan
    from dedup_assets.core.data.layout import OutputLayout
    from dedup_assets.core.data.live_listing import LiveListing
    from dedup_assets.core.data.run_fingerprint import RunInputs
    from dedup_assets.runner import PipelineOutcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments or settings: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one line per usage error (what is wrong, and where help is), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The option of a setting is its field's name (`--kurtosis-tolerance`), except these.
RENAMED = {"similarity_space": "--space", "keep_policy": "--policy", "n_components": "--components"}
NOT_OPTIONS = frozenset({"bin_rule", "block_size", "ann_nprobe", "demo_splits"})
"""Settings with no option of their own: tuning settings, as before (`dedup run` uses their
defaults, `dagster dev` what `pipeline.json` says), and `demo_splits`, which `dedup demo
--splits` (DEMO_SPLITS) sets."""
RUN_ONLY = frozenset({"source", "ground_truth", "splits"})  # `dedup demo` makes its own source
DEMO_SPLITS = (
    "--splits",
    "run on the demo's split variant instead: <output>/demo_dataset_splits, train/ and test/ "
    "with training copies of a few test images planted (leaks.csv lists them)",
)
"""`dedup demo --splits`: a flag (the split layout is the demo's own); `dedup run --splits
NAMES` names a source's split folders."""

RUN_ABOUT = (
    "Find and remove duplicate and near-duplicate images in an ImageFolder dataset "
    "(<source>/<class>/<image>, or <source>/<split>/<class>/<image> with split folders "
    "train, val, test), only reading it: train a convolutional autoencoder on the "
    "images, compare their latent vectors within each class, and write under --output, for "
    "each threshold, a keep list, a cleaned copy of the dataset and a report, and a review "
    "page (review/index.html) where a removal can be corrected (overrides.csv). The last "
    "lines say what it did. Run the same command again after adding images or corrections: "
    "only what changed is computed again."
)
DEMO_ABOUT = (
    "Run everything, as `dedup run` does, on the built-in demo dataset: six classes of "
    "synthetic aerial-like images with planted near-duplicates, made in <output>/demo_dataset "
    "on first use and never regenerated, so you can add images to a class folder there and "
    "run again. With --splits, its split variant: train/ and test/ folders of the same "
    "classes, with training copies of a few test images (leaks.csv)."
)
WATCH_ABOUT = (
    "Keep an output up to date with its source: run as `dedup run` does with the same "
    "options, then list the source every --interval seconds and, when an image is added, "
    "changed or removed (or the overrides file changes), run again in this same process "
    "once the listing has stayed the same for --settle seconds (files still being copied "
    "are not read half-written). Each update is a `dedup run` of what changed, with its last "
    "screen; it skips the 1-2 s of imports a new command pays, so a few new images take "
    "seconds. While it runs, a `dedup run` with the same options (and DEDUP_* environment) "
    "is answered by an update of the watch at once, which the command prints as its own; "
    "after it stops, such a run answers from the last update. Ctrl-C stops it; an update it "
    "interrupts resumes with the same command."
)
WATCH_OPTIONS = {
    "--interval": (
        2.0,
        "seconds between two looks at the source while nothing changes (on Linux a change "
        "the kernel reports is looked at sooner)",
    ),
    "--settle": (
        1.0,
        "seconds a changed listing must stay the same before an update starts (0: at once)",
    ),
    "--updates": (None, "stop after this many updates, the first included"),
}
"""The options of `dedup watch` beside those of `run`: when to look and when to stop, not
what a run computes (left out of the run's record, `_probe`)."""
EXIT_STATUSES = """exit status:
  0    done: every stage ran and no blocking gate failed
  1    an error: a stage failed, later stages were skipped (the last lines say which)
  2    a bad option, setting or overrides file (one line saying what is wrong)
  3    a blocking gate failed: it held back a clean copy (kurtosis raised beyond chance,
       or a keep list that fails its integrity check; the keep lists are written), or
       evaluation images have copies in train (the leakage gate; clean copies are made)
  130  stopped by Ctrl-C (SIGINT); the same command resumes
  143  stopped by SIGTERM; the same command resumes"""


@dataclass(frozen=True)
class ConfigOption:
    """One option of `dedup run`/`demo`: a field of PipelineConfig or of its `method`."""

    name: str
    field: FieldInfo
    group: str | None = None  # "method" for the method's settings

    @property
    def flag(self) -> str:
        """`--field-name`, or its name of earlier versions (RENAMED)."""
        if self.field.annotation is bool and self.field.default is True:
            return f"--no-{self.name.replace('_', '-')}"
        return RENAMED.get(self.name, f"--{self.name.replace('_', '-')}")

    @property
    def choices(self) -> tuple[str, ...]:
        """The values of a Literal or Enum field (PipelineConfig checks them), else ()."""
        kind = self.field.annotation
        if get_origin(kind) is Literal:
            return tuple(str(c) for c in get_args(kind))
        if isinstance(kind, type) and issubclass(kind, Enum):
            return tuple(str(c.value) for c in kind)
        return ()

    def help(self, required: bool = False) -> str:
        """The field's description, its choices and its default, for `--help`."""
        text = self.field.description or self.name.replace("_", " ")
        default = self.field.get_default(call_default_factory=True)
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, Enum):
            shown = str(default.value)
        elif isinstance(default, tuple):
            shown = ",".join(map(str, default))
        else:
            shown = shlex.quote(str(default)) if default != "" else "none"
        choices = f"{' | '.join(self.choices)}; " if self.choices else ""
        text += " (required)" if required else f" ({choices}default {shown})"
        return text.replace("%", "%%")  # argparse formats help with %

    def add_to(self, parser: argparse.ArgumentParser, required: bool = False) -> None:
        """Add the option; absent, it is None and the field keeps PipelineConfig's default."""
        common = {"dest": self.name, "default": None, "help": self.help(required)}
        if self.field.annotation is bool:  # a flag that turns the default around
            store = "store_false" if self.field.default is True else "store_true"
            parser.add_argument(self.flag, action=store, **common)
            return
        kind = self.field.annotation if self.field.annotation in (int, float) else str
        extra = self.field.json_schema_extra
        metavar = (extra.get("metavar") if isinstance(extra, dict) else None) or (
            self.flag.removeprefix("--").replace("-", "_").upper()
        )
        parser.add_argument(self.flag, type=kind, required=required, metavar=metavar, **common)


def config_options(command: str = "run") -> list[ConfigOption]:
    """The options of `dedup run` (or `demo`), generated from PipelineConfig's fields."""
    from pydantic import BaseModel

    from dedup_assets.config import PipelineConfig

    options = []
    for name, field in PipelineConfig.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            for inner, info in nested.model_fields.items():
                if inner not in NOT_OPTIONS:
                    options.append(ConfigOption(inner, info, name))
        elif name not in NOT_OPTIONS and (command == "run" or name not in RUN_ONLY):
            options.append(ConfigOption(name, field))
    return options


RUN_FLAGS = {
    "--retrain": "train the autoencoder again even if no retraining rule fires",
    "--full": "recompute everything from scratch: decode, train, encode and decide again, "
    "ignoring earlier decisions",
    "--force": "check every stage against the source and the settings even when nothing "
    "changed since the last run, and every file of the clean copies (a copy with a file "
    "deleted, added or rewritten in it is made again; by default a rerun whose options, "
    "source listing (paths, sizes, modification times), overrides, code and outputs are "
    "those of the last run that ended with exit 0 repeats that run's last lines and exits "
    "at once, and a clean copy is judged by its manifest)",
    "--verbose": "Dagster's log and full tracebacks on errors",
}
"""The options of `run` and `demo` that are not settings: flags, off by default."""
NO_QUICK_RERUN = ("--force", "--full", "--retrain", "--verify")
"""Options that ask for work or checks: a command with one of them takes the full path."""
NOT_IN_RESULTS = ("--verbose", *NO_QUICK_RERUN)
"""Options that do not change what a successful run leaves in its output."""
PATH_OPTIONS = ("--source", "--output", "--ground-truth", "--overrides")


def _add_run_options(p: argparse.ArgumentParser, command: str) -> None:
    for option in config_options(command):
        option.add_to(p, required=option.name == "source")
    if command == "demo":
        flag, text = DEMO_SPLITS
        p.add_argument(flag, dest="demo_splits", action="store_true", help=text)
    for flag, text in RUN_FLAGS.items():
        p.add_argument(flag, action="store_true", help=text)


def _run_parser(
    sub: argparse._SubParsersAction, command: str, summary: str, about: str
) -> argparse.ArgumentParser:
    """`dedup run`, `demo` or `watch`: what it does, its options, its exit statuses."""
    takes = "demo" if command == "demo" else "run"  # watch takes run's options
    p = sub.add_parser(
        command,
        help=summary,
        # One line of usage, so that what the command does is the first paragraph.
        usage=f"%(prog)s {'--source DIR ' if takes == 'run' else ''}[--output DIR] [options]",
        description="\n".join(textwrap.wrap(about, shutil.get_terminal_size().columns - 2)),
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(p, takes)
    return p


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: not a positive number of seconds")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: not a number of seconds >= 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: not a count >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from dedup_assets.core.data.layout import DEFAULT_OUTPUT

    parser = _Parser(prog="dedup", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub, "demo", "run everything on the built-in demo dataset", DEMO_ABOUT)
    _run_parser(sub, "run", "run everything on an ImageFolder dataset", RUN_ABOUT)
    watch = _run_parser(
        sub, "watch", "run, then again in the same process whenever the source changes", WATCH_ABOUT
    )
    for flag, kind in zip(WATCH_OPTIONS, (_positive_seconds, _seconds, _count), strict=True):
        default, text = WATCH_OPTIONS[flag]
        shown = "until stopped" if default is None else f"{default:g}"
        watch.add_argument(flag, type=kind, default=default, help=f"{text} (default: {shown})")
    plant = sub.add_parser(
        "plant", help="copy a dataset and plant near-duplicates with ground truth"
    )
    plant.add_argument("--source", required=True, help="ImageFolder to copy (only read)")
    plant.add_argument("--dest", required=True, help="new folder for the copy with plants")
    plant.add_argument(
        "--fraction",
        type=float,
        default=0.05,
        help="share of each class's originals that get a planted copy (every original is copied)",
    )
    plant.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="copy only this many originals of each class (a seeded sample; the rest of the "
        "class, its unreadable files included, is left out unread)",
    )
    plant.add_argument("--seed", type=int, default=0, help="seed of the sampling and transforms")
    plant.add_argument(
        "--proportions", default=None, help="transform weights, e.g. jpeg=1,brightness=1,noise=2"
    )
    plant.add_argument(
        "--verbose",
        action="store_true",
        help="full tracebacks on errors; every skipped source entry with its reason",
    )
    ui = sub.add_parser("ui", help="open dagster dev on the output folder's instance")
    ui.add_argument("--output", default=DEFAULT_OUTPUT, help="the output folder of dedup run")
    ui.add_argument("--source", default=None, help="override the saved source folder")
    ui.add_argument("--host", default="127.0.0.1", help="address the UI listens on")
    ui.add_argument("--port", type=int, default=3000, help="port the UI listens on")
    ui.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The PipelineConfig of `dedup run`/`demo`: the options given, over the defaults."""
    from dedup_assets.config import ConfigError, PipelineConfig

    values: dict[str, Any] = {}
    for option in config_options():  # `demo` has no source: None, as if not given
        value = getattr(args, option.name, None)
        if value is not None:
            (values.setdefault(option.group, {}) if option.group else values)[option.name] = value
    if getattr(args, "demo_splits", False):
        values["demo_splits"] = True
    try:
        return PipelineConfig.build(**values)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _run(
    args: argparse.Namespace,
    config: PipelineConfig,
    probe: _Probe | None = None,
    instance: dg.DagsterInstance | None = None,
) -> int:
    """`dedup run` (or `demo`) with `config` (`config_from_args`), in the output's instance
    (`instance`: one the caller keeps open, `dedup watch` for its later updates; else one
    opened and closed here)."""
    if config.executor == "k8s":
        raise UsageError(
            "executor k8s is for the code location of a Kubernetes deployment "
            "(deploy/k8s, DEDUP_EXECUTOR=k8s); dedup run uses in_process, processes or dask"
        )
    from dedup_assets.config import ConfigError
    from dedup_assets.core.data.layout import OutputInUse, OutputLayout
    from dedup_assets.runner import instance_for, run_pipeline

    _prefork(args.verbose)  # before this process opens a database or starts a thread pool

    output = Path(config.output)
    layout = OutputLayout(output)
    try:
        layout.claim()
    except OutputInUse as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:  # a folder it may not write: one line, exit 2, nothing done
        raise UsageError(f"output {output} cannot be written: {exc.strerror or exc}") from None
    say = lambda text: print(text, flush=True)  # noqa: E731 - progress lines, unbuffered
    say(f"latent-dedup: {config.source or f'demo dataset {config.demo_source}'} -> {output}")
    if probe is not None and probe.differs:
        say(f"quick check: {probe.differs}; checking every stage")
    own = instance is None
    if instance is None:
        instance = instance_for(output)
    reported: list[int] = []

    def finished(outcome: PipelineOutcome) -> None:
        """Every stage ran to its end (called holding the output's lock): the last screen,
        and with exit 0 the record a rerun with nothing new answers from."""
        again: list[str] = []
        reported.append(_report(outcome, config, layout, say, again))
        if probe is not None and reported[0] == EXIT_OK:
            from dedup_assets.core.data.run_fingerprint import record_run

            record_run(probe.inputs, output, EXIT_OK, again)

    try:
        outcome = run_pipeline(
            config,
            instance,
            retrain=args.retrain,
            full=args.full,
            log=say,
            log_level="INFO" if args.verbose else "CRITICAL",
            on_success=finished,
            scanned=probe.take_scan() if probe is not None else None,
            check_clean_files=bool(getattr(args, "force", False)),
        )
    except ConfigError as exc:  # the overrides file: one line naming the file and the line
        raise UsageError(str(exc)) from None
    finally:
        if own:
            instance.dispose()  # its databases closed (the files a UI reads complete)
    return reported[0] if reported else _report(outcome, config, layout, say)


@dataclass
class _Probe:
    """What a `dedup run`/`demo` command line runs on (`RunInputs`), read before anything heavy is
    imported, and why the output's last run does not answer for it ("" when it does, or
    when there is no record to compare with)."""

    inputs: RunInputs
    output: Path
    header: str  # the first line `_run` says
    quick: bool
    differs: str = ""
    options: dict[str, str | None] = dataclass_field(default_factory=dict)  # as written, last wins
    source: Path | None = None
    # (source, include_hidden, its scan): the run's listing when its settings read the same
    # (`one_listing_per_run`); handed over once (`take_scan`), not held for the whole run
    # (about 460 MB at a million images).
    scanned: tuple[Path, bool, FolderScan] | None = None

    def take_scan(self) -> tuple[Path, bool, FolderScan] | None:
        scanned, self.scanned = self.scanned, None
        return scanned

    def option(self, flag: str) -> str | None:
        """The value of `flag` as written, or of an abbreviation argparse would take for it."""
        for name in (flag, *(n for n in self.options if len(n) > 2 and flag.startswith(n))):
            if self.options.get(name):
                return self.options[name]
        return None

    def flag(self, flag: str) -> bool:
        """Whether `flag` (or an abbreviation argparse would take for it) is given."""
        return any(_is_option(name, (flag,)) for name in self.options)


def _is_option(name: str, flags: Iterable[str]) -> bool:
    """Whether `name` as written is one of `flags` or an abbreviation argparse takes for one."""
    return any(name == flag or (len(name) > 2 and flag.startswith(name)) for flag in flags)


def _options_as_written(words: list[str]) -> list[tuple[str, str | None]]:
    """The options of a command line as (name, value) pairs in order: `--name value`,
    `--name=value`, `--flag` (value None); a stray word is a pair with no name."""
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            pairs.append((name, value if eq else None))
        elif pairs and pairs[-1][0] and pairs[-1][1] is None:
            pairs[-1] = (pairs[-1][0], word)
        else:
            pairs.append(("", word))  # argparse refuses it: no record ever matches
    return pairs


def _probe(
    argv: list[str], listing: LiveListing | None = None, *, full: bool = False
) -> _Probe | None:
    """The inputs of a `dedup run` or `dedup demo` command line (`RunInputs`): its options
    as written (path options resolved, the order of different options ignored, as argparse
    does), the working folder (an abbreviated path option is not resolved here), the
    source's listing and the files it reads; None for another command, for `run` without
    `--source`, before the demo dataset is made, or when the source cannot be listed (the
    full path says why). `listing`: the watch's live listing of the source, which lists
    again only what changed (`full`: everything), used when it lists this source."""
    from dedup_assets.core.data.image_folder import scan_image_folder
    from dedup_assets.core.data.layout import DEFAULT_OUTPUT, OVERRIDES_FILE, OutputLayout
    from dedup_assets.core.data.run_fingerprint import RunInputs

    command = argv[0] if argv else ""
    if command not in ("run", "demo", "watch"):
        return None
    pairs = _options_as_written(argv[1:])
    if command == "watch":  # its updates are runs: the same record, without when to look
        command = "run"
        pairs = [(n, v) for n, v in pairs if not _is_option(n, WATCH_OPTIONS)]
    given = dict(pairs)  # the last of a repeated option counts, as in argparse

    def resolved(path: str) -> Path:
        return Path(path).expanduser().resolve()

    output = resolved(given.get("--output") or DEFAULT_OUTPUT)
    if command == "run":
        if not given.get("--source"):
            return None
        source = resolved(given["--source"])
        header = f"latent-dedup: {source} -> {output}"
    else:
        demo = OutputLayout(output)
        split = any(len(name) > 2 and DEMO_SPLITS[0].startswith(name) for name in given)
        source = demo.demo_dataset_splits if split else demo.demo_dataset
        if not source.is_dir():
            return None
        header = f"latent-dedup: demo dataset {source} -> {output}"
    options = sorted(
        (
            (name, str(resolved(value)) if name in PATH_OPTIONS and value else value)
            for name, value in pairs
            if name not in NOT_IN_RESULTS
        ),
        key=lambda pair: pair[0],  # stable: a repeated option keeps its order
    )
    # An abbreviation of an option that asks for work (`--forc`) counts as that option.
    quick = not any(_is_option(name, NO_QUICK_RERUN) for name, _ in pairs)
    overrides, truth = given.get("--overrides"), given.get("--ground-truth")
    hidden = "--include-hidden" in given
    try:
        lines = None  # the listing digest's lines of its files, kept by the live listing
        if listing is not None and listing.lists(source, hidden):
            scan, lines = listing.scan(full=full), listing.lines
        else:
            scan = scan_image_folder(source, include_hidden=hidden)
        inputs = RunInputs.of(
            {"command": command, "cwd": str(Path.cwd()), "options": options},
            source=source,
            output=output,
            include_hidden=hidden,
            files={
                "overrides": resolved(overrides) if overrides else None,
                "output overrides": output / OVERRIDES_FILE,
                "ground_truth": resolved(truth) if truth else None,
            },
            scan=scan,
            lines=lines,
        )
    except (OSError, LookupError, ValueError):
        return None
    return _Probe(
        inputs, output, header, quick, options=given, scanned=(source, hidden, scan), source=source
    )


def _handoff_settings(argv: list[str], cwd: str, env: dict[str, str]) -> dict | None:
    """What a `dedup run` (or `dedup watch`) command line, run in `cwd` with `env`, runs
    with, for handing it to a watch (`watch_handoff`): its options as written without the
    watch's own and those that change no result, path options resolved in `cwd`, and the
    DEDUP_* environment; None for a command line a watch never runs (another command, no
    `--source`, an option that asks for work or checks, or none the parser takes)."""
    from dedup_assets.core.data.layout import DEFAULT_OUTPUT
    from dedup_assets.watch_handoff import settings_environment

    if not argv or argv[0] not in ("run", "watch"):
        return None
    pairs = _options_as_written(argv[1:])
    if any(not name or _is_option(name, ("--help", *NO_QUICK_RERUN)) for name, _ in pairs):
        return None
    if argv[0] == "watch":
        pairs = [(n, v) for n, v in pairs if not _is_option(n, WATCH_OPTIONS)]

    def resolved(name: str, value: str | None) -> str | None:
        if value is None or not _is_option(name, PATH_OPTIONS):
            return value
        return str((Path(cwd) / Path(value).expanduser()).resolve())

    outputs = [resolved(n, v) for n, v in pairs if _is_option(n, ("--output",))]
    options = dict(
        sorted(
            (
                (name, resolved(name, value))
                for name, value in pairs
                if name not in NOT_IN_RESULTS and not _is_option(name, ("--output",))
            ),
            key=lambda pair: pair[0],
        )
    )
    sources = [value for name, value in pairs if _is_option(name, ("--source",))]
    if not sources or not sources[-1]:
        return None
    options["--output"] = outputs[-1] if outputs else resolved("--output", DEFAULT_OUTPUT)
    if options["--output"] is None:
        return None  # argparse says what is wrong
    return {"options": options, "env": settings_environment(env)}


def _handoff_refusal(own: dict, request: dict) -> str | None:
    """Why a watch whose settings are `own` (`_handoff_settings`) does not run the update
    `request` asks for; None when it does."""
    asked = _handoff_settings(
        list(request.get("argv") or []), str(request.get("cwd") or "/"), request.get("env") or {}
    )
    if asked is None:
        return "not a dedup run it runs"
    for part, words in (("options", "other options"), ("env", "another environment")):
        ours, theirs = own[part], asked[part]
        if differ := sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k)):
            return f"{words}: {', '.join(differ)}"
    return None


def _hand_to_watch(argv: list[str]) -> int | None:
    """`dedup run` answered by a `dedup watch` serving its output with its settings: the
    watch's exit status, None when this command runs the update itself (`watch_handoff`)."""
    from dedup_assets.watch_handoff import hand_over

    settings = _handoff_settings(argv, os.getcwd(), dict(os.environ))
    if settings is None:
        return None
    return hand_over(
        Path(settings["options"]["--output"]), argv, lambda text: print(text, file=sys.stderr)
    )


_PLANNED_POOL: int | None = None
"""The local pool's size when `dedup run` will use it (`_prestart_workers`), for `_run` to
fork it once its imports are done (`dispatch.prefork_pool`)."""


def _prestart_workers(probe: _Probe | None) -> None:
    """When the listing says `dedup run` will use its pool of local processes (`--executor
    processes`, or `auto` for these class sizes: `engines.resolve_auto`), plan the pool
    (forked from this process once its imports are done: `_run`) and, for a first run,
    start decoding beside those imports (`_start_decoding`). A wrong guess costs nothing
    but an unused pool or decoder, never a result: the run chooses its executor again from
    its listing and reads decoded files only where they are what its settings would read."""
    global _PLANNED_POOL
    parallel = _planned_pool(probe)
    if parallel is not None:
        from dedup_assets.engines import threads_per_process

        threads = threads_per_process(parallel)
        _PLANNED_POOL = parallel
        _start_decoding(probe, parallel)
        # This process runs beside its workers too (the threshold stage's first threshold):
        # polars's pool, which starts at its first parallel operation (after this), takes
        # the workers' share of the cores, as the workers' own do (`engines._THREAD_VARS`).
        os.environ.setdefault("POLARS_MAX_THREADS", str(threads))


def _planned_pool(probe: _Probe | None) -> int | None:
    """The size of the pool of local processes `dedup run` with these options will use on
    this listing (`--executor processes`, or `auto` for these class sizes:
    `engines.resolve_auto`), None when it will use none (or the options are wrong)."""
    if probe is None or not probe.inputs.class_sizes:
        return None
    from dedup_assets.engines import Executor, resolve_auto

    try:
        executor = Executor(probe.option("--executor") or Executor.auto)
        parallel = int(probe.option("--parallel") or 1)
    except ValueError:  # argparse says what is wrong
        return None
    executor, parallel, _ = resolve_auto(executor, parallel, probe.inputs.class_sizes)
    return parallel if executor == Executor.processes else None


_OWN_PROCESS = False
"""Set by `entry`: this process is the `dedup` command, nothing else ran in it. Only then is
the pool forked from it; `main` called in another program (a test, a notebook) whose
threads and pools a fork would copy half-way uses the workers' server as before."""


_RAN = False
"""Set once this process has run a pipeline (`dedup watch`'s first update): polars's and
torch's thread pools may be running then, not Python threads, and a child forked from it
inherits their locks held and hangs at its first parallel read (seen: both workers of a
second update stopped in `read_parquet`). Later updates use the workers' server instead."""


def _imports_done() -> None:
    """The garbage collector back on, after the command's imports (`entry` paused it), with
    every object made so far frozen (`gc.freeze`): later collections skip them, and a worker
    forked from here shares their pages. Those imports make few cycles, yet the collector
    ran six full collections during them, each walking every object torch and Dagster had
    made so far: 0.55-0.6 s of the 1.85 s that `import dedup_assets.runner` takes on 2
    cores. A no-op where the collector was on (`main` called in another program)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _prefork(verbose: bool) -> None:
    """The planned pool forked now (`dispatch.prefork_pool`), with the storage modules the
    instance imports when it opens loaded first, so that the workers have them too."""
    import threading

    import dedup_assets.instance_imports  # noqa: F401 - loaded before the fork, for both sides

    _imports_done()
    if _PLANNED_POOL is None or not _OWN_PROCESS or _RAN or threading.active_count() > 1:
        return
    from dedup_assets.dispatch import prefork_pool

    prefork_pool(_PLANNED_POOL, verbose)


def _start_decoding(probe: _Probe, parallel: int) -> None:
    """A first run's classes decoded beside the imports (`core.data.predecode`): for `dedup
    run` into an output with no catalog yet that `OutputLayout.claim` would accept, without
    --full. The reading options go as written; where the run resolves them otherwise
    (another environment variable, say), its workers just decode as they would have.
    DEDUP_NO_PREDECODE=1 turns it off."""
    from dedup_assets.core.data import predecode
    from dedup_assets.core.data.image_folder import DEFAULT_MAX_FILE_BYTES
    from dedup_assets.core.data.layout import OVERRIDES_FILE, OutputLayout

    source, layout = probe.option("--source"), OutputLayout(probe.output)
    if os.environ.get(predecode.ENV_OFF) == "1" or not source or probe.flag("--full"):
        return
    if layout.catalog_dir.exists():
        return
    if (
        layout.root.exists()
        and not layout.marker.is_file()
        and any(entry.name != OVERRIDES_FILE for entry in layout.root.iterdir())
    ):
        return  # not ours (yet): `claim` decides, nothing is written into it first
    try:
        max_bytes = int(
            probe.option("--max-file-bytes")
            or os.environ.get("DEDUP_MAX_FILE_BYTES")
            or DEFAULT_MAX_FILE_BYTES
        )
    except ValueError:  # argparse says what is wrong
        return
    predecode.start(
        Path(source).expanduser().resolve(),
        probe.output,
        max_file_bytes=max_bytes,
        include_hidden=probe.flag("--include-hidden"),
        splits=probe.option("--splits") or os.environ.get("DEDUP_SPLITS") or "auto",
        parts=parallel,
    )


def _stop_decoding() -> None:
    """A first run's decoder stopped and its cache removed (with the output folder it made)
    when the command ends before its run: a refused command line, --help, an interrupt."""
    predecode = sys.modules.get("dedup_assets.core.data.predecode")
    if predecode is not None:
        predecode.finish()


def _quick_rerun(probe: _Probe) -> int | None:
    """A rerun with nothing new: the last run's last screen after one line saying so, and
    its exit status; None (and `probe.differs` says why, when there was a record) when the
    full path must run."""
    from dedup_assets.core.data.run_fingerprint import LastRun, output_in_use

    last = LastRun.read(probe.output)
    if last is None or not probe.quick or output_in_use(probe.output):
        return None
    probe.differs = last.differs(probe.inputs, probe.output) or ""
    if probe.differs:
        return None
    print(probe.header)
    print(
        f"nothing changed: every output is up to date: the source, options, overrides, code "
        f"and outputs are those of the run that finished {last.finished}, so nothing was "
        "recomputed (--force checks every stage)"
    )
    for line in last.report:
        print(line)
    return last.exit_status


def _report(
    outcome: PipelineOutcome,
    config: PipelineConfig,
    layout: OutputLayout,
    say_now: Callable[[str], None],
    again: list[str] | None = None,
) -> int:
    """The run's last screen and its exit status: the stage table and where the time went,
    the paths and problems, then, as the last lines, what the run did in counts and words
    (per threshold: kept and removed, exact copies and near-duplicates apart, overrides,
    what a budget allows to be false, each gate's verdict, cross-class pairs, the clean
    copy), what was left out of the catalog, where to look next, and the outcome.

    `again` receives the lines after the time tables as a rerun with nothing new repeats
    them (saying what the outputs hold, not what this run did)."""
    from dedup_assets.assets.clean_dataset import link_warning

    kept: list[str] = []

    def say(text: str, instead: str | None = None) -> None:
        say_now(text)
        kept.append(text if instead is None else instead)

    output = layout.root
    warning = link_warning(str(config.method.clean_copy_mode))
    if outcome.nothing_changed:
        say_now("nothing changed: every output is up to date")
    else:
        say_now("\nstage                                                  runs   seconds")
        for s in outcome.stages:
            say_now(f"{s.name:<54} {s.runs:>4} {s.seconds:>9.1f}")
        say_now(f"{'total':<54} {'':>4} {outcome.total_seconds:>9.1f}")
        if outcome.work.seconds:
            say_now("\nwhere the time went (step seconds, summed over workers):")
            for line in outcome.work.lines():
                say_now(f"  {line}")
        say_now("")
    finished = not outcome.failures and not outcome.skipped
    if finished:
        for t in outcome.thresholds:
            say(f"keep list T={t}: {layout.keep_list(t)} (+ .csv, .json)")
    if warning:
        say(f"NOTE  {warning}")
    for c in outcome.checks:  # the threshold gates are said in words below
        if c.check not in WORDED_CHECKS:
            kind = "FAIL  (blocks)" if c.severity == "ERROR" else "WARN  (does not block)"
            say(f"{kind} {c.line()}")
    for t in outcome.stale_clean:
        say(
            f"STALE clean/{t}: made from an earlier keep list, left as it was "
            f"(see {layout.clean_stale_note(t)})"
        )
    for t in outcome.unlisted_clean:
        note = layout.clean_unlisted_note(t)
        note = note if note.exists() else layout.keep_list_unlisted_note(t)
        say(
            f"NOTE  {layout.unlisted_words(t)} not updated: {t} is not among --thresholds "
            f"(see {note})"
        )
    for f in outcome.failures:
        say(f"ERROR {f}")
    for s in outcome.skipped:
        say(f"SKIPPED {s}")
    if outcome.summary_written:
        say(f"report: {layout.summary}")
        say(f"per-threshold reports: {layout.reports_dir}/<T>/report.md")
    say(f"open in the UI: dedup ui --output {shlex.quote(str(output))}")
    for line in _demo_lines(config):
        say(line)
    from dedup_assets.config import threshold_summaries_now

    summaries = threshold_summaries_now(config, layout)
    held = "\nwhat the outputs hold (nothing was computed):"
    say(held if outcome.nothing_changed else "\nwhat the run did:", held)
    say(_catalog_line(layout))
    for line in _leakage_lines(config, layout):
        say(line)
    for line in _evaluation_lines(config, layout):
        say(line)
    for summary in summaries:
        for line in summary.lines(layout):
            say(line)
    if (finished or outcome.nothing_changed) and layout.review_index.is_file():
        say(
            f"next: review the removals on {layout.review_index.resolve().as_uri()} (each beside the "
            "image it duplicates, borderline first); mark mistakes there, save the downloaded "
            f"overrides.csv as {layout.overrides} and run the same command again"
        )
    clean = [s.threshold for s in summaries if s.verdict.clean_copy_current(s.clean_mode)]
    if clean:
        say(f"train on: {', '.join(str(layout.clean_dir(t)) for t in clean)}")
    blocked = [s.threshold for s in summaries if s.blocked]
    if outcome.failures or outcome.skipped:
        say(
            f"exit {EXIT_FAILED}: a stage failed (ERROR above), later stages were skipped; "
            "fix the cause and run the same command again: what finished is kept"
        )
        return EXIT_FAILED
    if blocked or outcome.check_failures:
        leaks = sorted({c.check for c in outcome.check_failures if c.check.startswith("no_leak_")})
        if leaks and not blocked:
            splits = ", ".join(c.removeprefix("no_leak_") for c in leaks)
            say(
                f"exit {EXIT_GATE}: the leakage gate failed: {splits} images have copies in "
                f"train beyond the tolerance (see the leakage line above and {layout.leakage})"
            )
            return EXIT_GATE
        which = ", ".join(f"T={t}" for t in blocked) or "a check"
        say(
            f"exit {EXIT_GATE}: a blocking gate held back the clean copy of {which}; the keep "
            "lists are written (see the kurtosis line above and the reports)"
        )
        return EXIT_GATE
    say(f"done: every stage ran and no gate held back a clean copy (exit {EXIT_OK})")
    if again is not None:
        again.extend(kept)
    return EXIT_OK


WORDED_CHECKS = frozenset(
    {"kurtosis_reduction", "keep_list_integrity", "no_cross_class_duplicates"}
)
"""Checks the last screen says in words per threshold (from what the assets stored)."""


def _demo_lines(config) -> list[str]:
    """Where the demo's source is, that it is the user's to add images to, and its state."""
    if config.demo_source is None:
        return []
    from dedup_assets.core.quality.demo_data import demo_state

    again = f"dedup demo {'--splits ' if config.demo_splits else ''}--output {shlex.quote(config.output)}"
    return [
        f"demo source: {config.demo_source} ({demo_state(config.demo_source)})",
        "  it is yours and never regenerated: add images to a class folder there and run "
        f"`{again}` again, or turn on new_images_sensor in the UI; only that class is processed",
    ]


def _evaluation_lines(config: PipelineConfig, layout: OutputLayout) -> list[str]:
    """What the ground truth says of the keep lists (`evaluation/keep_lists.csv`): the
    share of its known pairs each listed threshold resolved, and the rows that named no
    image, which were not scored (a file naming paths another way scored nothing, silently)."""
    import polars as pl

    scores = layout.evaluation_dir / "keep_lists.csv"
    if not scores.is_file():
        return []
    table = pl.read_csv(scores, schema_overrides={"threshold": pl.String}, glob=False)
    table = table.filter(pl.col("threshold").is_in(list(config.thresholds)))
    if not table.height:
        return []
    known = int(table["known_pairs"].max())
    recalls = ", ".join(
        f"T={t} {r:.3f}" if r == r else f"T={t} -"
        for t, r in zip(table["threshold"], table["recall"], strict=True)
    )
    lines = [f"  evaluation: share of the {known:,} known pairs resolved: {recalls} (see {scores})"]
    unmatched = int(table["ground_truth_rows_unmatched"].max())
    if unmatched:
        lines.append(
            f"  evaluation: {unmatched:,} ground-truth row(s) name no catalogued image and were "
            "not scored: `class` is the class folder (`train/cats` in a split source), "
            "`original` and `copy` file names in it or paths from the source"
        )
    return lines


def _empty_evaluation_splits(config: PipelineConfig, classes) -> list[str]:
    """The evaluation splits of the source's layout with no catalogued image (an empty
    `test/`): the leakage check has nothing of them to judge, which a clean verdict must
    not hide."""
    from dedup_assets.core.data.splits import SplitLayoutError, SplitRole, detect_splits

    root = config.source or config.demo_source
    if root is None:
        return []
    try:
        layout = detect_splits(root, config.splits, include_hidden=config.include_hidden)
    except (SplitLayoutError, OSError):
        return []
    with_images = set(classes.filter(classes["images"] > 0)["split"].to_list())
    return [s.name for s in layout.splits if s.role == SplitRole.eval and s.name not in with_images]


def _leakage_lines(config: PipelineConfig, layout: OutputLayout) -> list[str]:
    """Per evaluation split, how many of its images have a copy in train (`leakage.csv`),
    in the last screen's words; nothing for a source without evaluation splits."""
    import polars as pl

    from dedup_assets.core.data.artifacts import read_classes
    from dedup_assets.core.data.splits import IMPLICIT, TRAIN
    from dedup_assets.core.decision.leakage import budget_note, read_record
    from dedup_assets.core.quality.run_summary import leakage_words

    empty = _empty_evaluation_splits(config, read_classes(layout))
    lines = [
        f"  leakage: the {name} split holds no image: nothing of it was compared with train"
        for name in empty
    ]
    if not layout.leakage.is_file():
        return lines
    splits = sorted(set(read_classes(layout)["split"].to_list()) - {IMPLICIT, TRAIN, *empty})
    if not splits:
        return lines
    rows = pl.read_csv(layout.leakage, infer_schema_length=0, glob=False)
    facts = (read_record(layout) or {}).get("splits") or {}
    for split in splits:
        mine = rows.filter(pl.col("split") == split) if rows.height else rows
        flagged = mine["image"].n_unique() if mine.height else 0
        exact = mine.filter(pl.col("kind") == "exact")["image"].n_unique() if mine.height else 0
        note = budget_note(split, facts.get(split))
        tolerance = config.method.leakage_tolerance
        words = leakage_words(split, flagged, exact, tolerance, layout, note)
        lines.append(f"  leakage: {words}")
    return lines


def _catalog_line(layout) -> str:
    """What the catalog holds and what it left out, counted by reason (catalog/quarantine.csv
    has every path with its own)."""
    import polars as pl

    from dedup_assets.core.data.artifacts import read_classes
    from dedup_assets.core.data.class_catalog import QUARANTINE_SCHEMA, quarantine_counts

    images = int(read_classes(layout)["images"].sum())
    if not layout.quarantine.is_file():
        return f"catalog: {images:,} images"
    counts = quarantine_counts(pl.read_csv(layout.quarantine, schema=QUARANTINE_SCHEMA, glob=False))
    listed = ", ".join(f"{n:,} {kind}" for kind, n in counts.items())
    return f"catalog: {images:,} images; " + (
        f"listed with the reason in {layout.quarantine}: {listed}" if counts else "nothing skipped"
    )


def _plant(args: argparse.Namespace) -> int:
    from dedup_assets.core.quality.planting import (
        DestNotEmptyError,
        PlantSettingError,
        describe_left_out,
        plant_duplicates,
    )

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
    except (PlantSettingError, DestNotEmptyError) as exc:  # raised before anything is written
        raise UsageError(str(exc)) from None
    print(
        f"copied {summary.n_originals:,} originals and planted {summary.n_copies:,} near-duplicates "
        f"into {summary.dest}; ground truth: {summary.ground_truth}"
    )
    left_out = summary.skipped + summary.left_out  # what dedup run would not read either
    if left_out:
        how = "each with its reason" if args.verbose else "--verbose lists each with its reason"
        print(f"left out of the copy: {len(left_out):,} source entries ({how})")
        if args.verbose:
            lines = [f"{path}: {reason}" for path, reason in left_out]
        else:
            lines = describe_left_out(left_out)
        for line in lines:
            print(f"  {line}")
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
    from dedup_assets.core.data.layout import DAGSTER_HOME, prepare_dagster_home

    env = dict(os.environ, DEDUP_OUTPUT=str(output))
    env[DAGSTER_HOME] = str(prepare_dagster_home(output))
    if args.source:
        env["DEDUP_SOURCE"] = str(Path(args.source).resolve())
    try:
        config = PipelineConfig.from_environment(env)  # fail here, not inside the UI
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    print(f"thresholds: {', '.join(config.thresholds)}; source: {config.source or 'demo'}")
    workspace = ["-w", str(_workspace_file(Path(env[DAGSTER_HOME])))]
    bin_dir = Path(sys.executable).parent
    daemon = [str(bin_dir / "dagster-daemon"), "run", *workspace]
    webserver = [
        str(bin_dir / "dagster-webserver"),
        *workspace,
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
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


def _workspace_file(home: Path) -> Path:
    """The workspace `dedup ui` loads: the code location of the repository's workspace.yaml
    (module `dedup_assets.definitions`, location `names.CODE_LOCATION`), written into the
    instance folder, so the runs `dedup run` tags with that location are listed on their
    jobs' pages whichever way the UI was started."""
    from dedup_assets.core.data.atomic_io import write_text
    from dedup_assets.names import CODE_LOCATION

    path = home / "workspace.yaml"
    write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: dedup_assets.definitions\n"
        f"      location_name: {CODE_LOCATION}\n",
        path,
    )
    return path


def _run_stoppable(
    args: argparse.Namespace, probe: _Probe | None, instance: dg.DagsterInstance | None = None
) -> int:
    """`_run`, which SIGINT and SIGTERM stop (`interrupts.Interrupted`), and what it may
    have started beside it (a first run's decoder, a forked pool) ended after."""
    from dedup_assets.core.data import predecode
    from dedup_assets.interrupts import stop_on_signals

    global _RAN
    try:
        # Settings are checked before the run's modules are imported: a refused setting
        # says so in about a second on 2 cores, not two.
        config = config_from_args(args)
        with stop_on_signals():
            return _run(args, config, probe, instance)
    finally:
        _RAN = True
        predecode.finish()  # normally done after the images stage already
        dispatch = sys.modules.get("dedup_assets.dispatch")
        if dispatch is not None:  # a pool is forked only once it is imported (`_prefork`)
            dispatch.release_preforked()  # a pool the run did not take (another executor)


def _watch(args: argparse.Namespace, argv: list[str], probe: _Probe | None) -> int:
    """`dedup watch`: an update as `dedup run` with the same options would do it (a quick
    answer when nothing changed), then another each time the source's listing (or a file
    the run reads: overrides, ground truth) differs from what the last update ran on and
    has stayed so for --settle seconds. A later update that fails says why in one line and
    the watch goes on (an overrides file saved half-edited, say); one that finds another
    `dedup run` writing to the output waits for it. A `dedup run` with the watch's settings
    is answered by an update at once, which it prints as its own (`watch_handoff`). It
    returns the last update's exit status when --updates is reached, 128 + the signal when
    stopped."""
    import functools
    import time

    config_from_args(args)  # a refused setting said before the run's modules are imported
    from dedup_assets.core.data import folder_trust
    from dedup_assets.core.data.live_listing import LiveListing
    from dedup_assets.dispatch import keep_pools
    from dedup_assets.runner import OutputLocked
    from dedup_assets.watch_handoff import Handoff, WatchServer, relayed

    updates, status, updating, waiting = 0, EXIT_OK, False, False
    server: WatchServer | None = None
    serving: list[Handoff] = []  # the commands the update running now answers
    say = lambda text: print(text, flush=True)  # noqa: E731
    keep_pools(True)  # an update's local workers serve the next one
    # The first update opens its own instance, after the pool it may fork (`_prefork`);
    # the later ones share one, opened once.
    instance: dg.DagsterInstance | None = None
    # The source as listed, kept current by change events: each later look lists again
    # only the class folders that changed (`live_listing`).
    listing: LiveListing | None = None
    if probe is not None and probe.source is not None and probe.scanned is not None:
        listing = LiveListing(probe.source, include_hidden=probe.scanned[1])
        try:
            listing.scan()  # its watches in place before the first update reads the source
            say(listing.describe())
        except OSError:
            listing.close()
            listing = None
    # The clean copies' folders it verified, known unchanged since by change events: the
    # next update moves them into its copy without stat'ing each file (`folder_trust`).
    trust = folder_trust.FolderTrust.open() if probe is not None else None
    folder_trust.install(trust)
    tick = _TrustRefresh(trust, probe.output) if trust is not None and probe is not None else None
    try:
        while True:
            if server is None and probe is not None and _owned(probe.output):
                server = _serve_commands(argv, probe.output, say)
            seen = probe.inputs if probe is not None else None  # what this update runs on
            looking = (
                _SourceWatch(argv, probe, time.monotonic, listing) if probe is not None else None
            )
            updating = True
            try:
                with relayed(serving):
                    status = _update(args, probe, instance)
            except OutputLocked as exc:
                if not updates or probe is None:
                    raise
                # Another `dedup run` writes there now: this update waits for it, listing
                # the source again each time, and is not counted until it has run.
                if not waiting:
                    print(
                        f"dedup watch: update {updates + 1} waits: {exc} (trying again every "
                        f"{args.interval:g}s)",
                        file=sys.stderr,
                    )
                updating, waiting = False, True
                _sleep(args.interval)
                probe = _probe(argv, listing) or probe
                continue
            except Exception as exc:  # noqa: BLE001 - said, and the watch goes on
                if not updates or probe is None:
                    raise  # the first: the command line or the source is at fault
                if args.verbose:
                    with relayed(serving):
                        traceback.print_exc()
                status = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED
                print(f"dedup watch: update {updates + 1} failed: {exc}", file=sys.stderr)
                for handoff in serving:  # what `dedup run` says of the same failure
                    handoff.send({"err": f"dedup run: error: {exc}\n"})
            updating, waiting = False, False
            updates += 1
            for handoff in serving:
                handoff.finish(status)
            serving = []
            if instance is None and probe is not None:
                from dedup_assets.runner import instance_for

                instance = instance_for(probe.output)
            if server is None and probe is not None and _owned(probe.output):
                server = _serve_commands(argv, probe.output, say)
            if probe is None or (args.updates is not None and updates >= args.updates):
                return status
            if (parallel := _planned_pool(probe)) is not None:
                # Later updates start their pool from the workers' server (`_RAN`): start it
                # now, while nothing is to do, not in the next update (2-3 s on 2 cores;
                # after an update that answered "nothing changed" no pool was planned).
                from dedup_assets.engines import threads_per_process, worker_context

                worker_context(threads_per_process(parallel))
            say(
                f"update {updates} ended with exit {status}; watching {probe.source} for new, "
                f"changed or removed images every {args.interval:g}s (Ctrl-C stops)"
            )
            if tick is not None:  # after the update's last line: the next one's head start
                tick(force=True)
            wake = server.wake if server is not None else None
            asked = server.requested if server is not None else None
            sleep = functools.partial(_sleep, wake=wake, tick=tick)
            # Between looks it also wakes when the kernel reports a change in the source.
            ready = listing.readable if listing is not None else None
            wait = functools.partial(_sleep, wake=wake, ready=ready, tick=tick)
            probe = _next_change(looking, args.interval, args.settle, sleep, asked, wait)
            serving = server.take() if server is not None else []
            why = _what_changed(seen, probe)
            if serving:
                pids = ", ".join(str(h.pid) for h in serving)
                why = f"asked by dedup run (pid {pids}); {why}"
            say(f"\n{time.strftime('%H:%M:%S')} update {updates + 1}: {why}")
    except KeyboardInterrupt as exc:
        if updating:
            raise  # `interrupts.Interrupted` says during which stage; the same command resumes
        print(
            f"dedup watch: stopped after {updates} update(s); the outputs are those of the last, "
            f"which ended with exit {status}",
            file=sys.stderr,
        )
        return getattr(exc, "exit_status", 130)
    finally:
        for handoff in serving:  # stopped during their update: each runs it itself
            handoff.close()
        if server is not None:
            server.close()
        keep_pools(False)
        folder_trust.install(None)
        if trust is not None:
            trust.close()
        if listing is not None:
            listing.close()
        if instance is not None:
            instance.dispose()


def _owned(output: Path) -> bool:
    """Whether `output` is an output folder latent-dedup made (its marker is there)."""
    from dedup_assets.core.data.layout import OutputLayout

    return OutputLayout(output).marker.is_file()


def _serve_commands(argv: list[str], output: Path, say: Callable[[str], None]):
    """Listen for `dedup run` commands the watch runs for them (`watch_handoff`), with its
    own settings; None, said in one line, where it cannot."""
    from dedup_assets.watch_handoff import WatchServer

    own = _handoff_settings(argv, os.getcwd(), dict(os.environ))
    if own is None:
        return None
    server = WatchServer(output, lambda request: _handoff_refusal(own, request))
    why = server.start()
    if why is not None:
        say(f"dedup run on {output} runs on its own, not through this watch: {why}")
        return None
    say(f"a dedup run with these options is answered by this watch (through {server.path})")
    return server


SLEEP_SLICE = 0.1
EARLIEST_LOOK = 0.5
"""Seconds a wait between looks lasts at least when the kernel reports changes (`_sleep`'s
`ready`): a file written again and again in the source is listed twice a second, not at
every slice."""
"""Seconds `dedup watch` sleeps at a time while it waits (`_sleep`)."""


def _sleep(
    seconds: float,
    wake: threading.Event | None = None,
    ready: Callable[[], bool] | None = None,
    tick: Callable[[], None] | None = None,
) -> None:
    """`time.sleep` in slices of SLEEP_SLICE, ended early once `wake` is set (a `dedup run`
    asks the watch for an update) or `ready()` says so (the kernel reported a change in the
    source: the watch looks at once, not at the end of its --interval). A signal sent to the process may be taken by any of its
    threads (Dagster's, SQLAlchemy's); Python then runs the handler in the main thread only
    once that thread's sleep returns: with one 30 s sleep a SIGTERM stopped the watch up to
    30 s late (seen in a test, 34.5 s where 14 s is usual). `tick`: called at each slice
    (the watch's upkeep of what it trusts, which returns at once when nothing is due)."""
    import time

    start = time.monotonic()
    deadline = start + seconds
    while (left := deadline - time.monotonic()) > 0:
        if tick is not None:
            tick()
        if ready is not None and time.monotonic() - start >= EARLIEST_LOOK and ready():
            return
        if wake is None:
            time.sleep(min(left, SLEEP_SLICE))
        elif wake.wait(min(left, SLEEP_SLICE)):
            return


class _TrustRefresh:
    """The watch's upkeep of the clean copies' folders it trusts (`folder_trust`): verify
    what is not trusted, after each update and whenever events come (what an update wrote
    or moved, an edit in a clean copy), and at least every half `REVERIFY_EVERY`; a call
    between those returns at once."""

    def __init__(self, trust: FolderTrust, output: Path) -> None:
        self.trust, self.output, self.next = trust, output, 0.0

    def __call__(self, force: bool = False) -> None:
        import time

        from dedup_assets.core.data.folder_trust import REVERIFY_EVERY

        now = time.monotonic()
        if not force and now < self.next and not self.trust.pending():
            return
        from dedup_assets.assets.clean_dataset import trust_clean_copies
        from dedup_assets.core.data.layout import OutputLayout

        try:
            trust_clean_copies(OutputLayout(self.output), self.trust)
        except Exception:  # noqa: BLE001 - nothing trusted: each update checks every file
            self.trust.keep_only(set())
        self.next = time.monotonic() + REVERIFY_EVERY / 2


def _update(
    args: argparse.Namespace, probe: _Probe | None, instance: dg.DagsterInstance | None
) -> int:
    """One update of `dedup watch`: what `dedup run` with its options does."""
    if probe is not None and (status := _quick_rerun(probe)) is not None:
        return status
    _prestart_workers(probe)
    return _run_stoppable(args, probe, instance)


FULL_LISTING_EVERY = 60.0
"""Seconds after which `dedup watch` lists the source in full even though no folder
changed: an image rewritten in place under its name changes no folder's time."""


class _SourceWatch:
    """When to list the source again: each look stats the folders the last listing found
    images in, the source and what it holds directly, and the files the run reads by
    content (a few hundred stats for EuroSAT, against 0.3-0.4 s to list its 27,000 files);
    only when one of them changed, or FULL_LISTING_EVERY seconds passed, is it listed in
    full (`_probe`) and compared with what the last update ran on, as is the first look.
    With the watch's `listing` (change events at hand) a look also asks it whether a
    class folder changed (an image rewritten in place is seen at once), and a listing
    lists again only what changed, except each FULL_LISTING_EVERY seconds."""

    def __init__(
        self,
        argv: list[str],
        probe: _Probe,
        clock: Callable[[], float],
        listing: LiveListing | None = None,
    ) -> None:
        self.argv, self.clock, self.listing = argv, clock, listing
        self.seen = probe.inputs.digest
        self.root = os.fsencode(probe.source or "")
        # The folders images lie in, found at the first look (after the update, not before
        # it: 27,000 paths split on the critical path of a command the watch answers).
        self._scan = probe.scanned[2] if probe.scanned is not None else None
        self._folders: list[bytes] | None = None
        self.files = [probe.output / "overrides.csv"] + [
            Path(value).expanduser().resolve()
            for flag in ("--overrides", "--ground-truth")
            if (value := probe.option(flag))
        ]
        # None: the first look lists in full, which sees what changed since `probe` was
        # listed, before any signature was taken (during the update).
        self.signature: tuple | None = None
        self.listed = clock()

    def folders(self) -> list[bytes]:
        """The folders the listing the watch was made from found images in."""
        if self._folders is None:
            scan, self._scan = self._scan, None
            found = {os.path.dirname(f.raw_path) for f in scan.files} if scan else set()
            self._folders = sorted(os.path.join(self.root, f) for f in found)
        return self._folders

    def look(self) -> tuple:
        """The times and sizes of everything `__init__` names (None where gone)."""

        def stat_of(path: bytes | Path) -> tuple[int, int, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return st.st_mtime_ns, st.st_ino, st.st_size

        try:
            with os.scandir(self.root) as it:
                top = sorted(e.path for e in it)
        except OSError:
            top = []
        paths = [self.root, *top, *self.folders(), *self.files]
        return tuple(stat_of(p) for p in paths)

    def probe(self) -> _Probe | None:
        """The source's listing now, through the live listing where there is one."""
        return _probe(self.argv, self.listing)

    def changed(self) -> _Probe | None:
        """The source's listing when it differs from what the last update ran on."""
        signature = self.look()
        events = self.listing is not None and self.listing.pending()
        due = self.clock() - self.listed >= FULL_LISTING_EVERY
        if signature == self.signature and not events and not due:
            return None
        probe = _probe(self.argv, self.listing, full=due)
        self.signature = signature
        if due or self.listing is None or not self.listing.live:  # a full listing it was
            self.listed = self.clock()
        return probe if probe is not None and probe.inputs.digest != self.seen else None


def _next_change(
    watch: _SourceWatch,
    interval: float,
    settle: float,
    sleep: Callable[[float], None],
    asked: Callable[[], bool] | None = None,
    wait: Callable[[float], None] | None = None,
) -> _Probe:
    """The first listing, one look each `interval`, whose inputs differ from what the last
    update ran on and that a listing `settle` seconds later finds the same (files still
    arriving wait); a source that cannot be listed for now (a folder being moved) is
    looked at again. Once `asked` (a `dedup run` waits for an update), the listing of the
    source as it is then, changed or not, without waiting for it to settle. `wait`: the wait
    between looks (default `sleep`), which may end early (a change reported by the kernel);
    the wait for the listing to settle is always whole."""

    def now_asked() -> _Probe | None:
        return watch.probe() if asked is not None and asked() else None

    wait = sleep if wait is None else wait
    while True:
        wait(interval)
        if (probe := now_asked()) is not None:
            return probe
        probe = watch.changed()
        while probe is not None:
            if not settle:
                return probe
            sleep(settle)
            if (asked_now := now_asked()) is not None:
                return asked_now
            again = watch.probe()
            if again is not None and again.inputs.digest == probe.inputs.digest:
                return again
            probe = again if again is not None and again.inputs.digest != watch.seen else None


def _what_changed(before: RunInputs, now: _Probe) -> str:
    """What differs between the inputs of the last update and those of the next, in words."""
    from dedup_assets.core.data.run_fingerprint import changed_parts

    images = f"{sum(before.class_sizes):,} -> {sum(now.inputs.class_sizes):,} images listed"
    if not (changed := changed_parts(now.inputs.parts, before.parts)):
        return f"nothing changed ({sum(now.inputs.class_sizes):,} images listed)"
    return f"{changed} changed ({images})"


def _early_stop(signum: int, frame: object) -> None:
    """SIGTERM before the run's own handling is in place (Dagster takes seconds to import):
    stop with the same one line and exit status."""
    stop = KeyboardInterrupt()
    stop.exit_status = 128 + signum  # type: ignore[attr-defined]
    raise stop


def main(argv: list[str] | None = None) -> int:
    # Until the run's own handling is in place: building the parser imports the settings
    # (and Dagster), about a second in which a SIGTERM must still end with the one line.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _early_stop)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # A `dedup watch` serving the output with these settings runs the update; else a
        # rerun with nothing new is answered before the parser (which imports the
        # settings, and with them Dagster) is built.
        if argv and argv[0] == "run" and (status := _hand_to_watch(argv)) is not None:
            return status
        probe = _probe(argv)
        watch = bool(argv) and argv[0] == "watch"  # its first update does this: `_watch`
        if not watch and probe is not None and (status := _quick_rerun(probe)) is not None:
            return status
        if not watch:
            _prestart_workers(probe)
        args = build_parser().parse_args(argv)
    except BaseException as exc:  # a usage error or --help exits here too (SystemExit)
        _stop_decoding()
        if not isinstance(exc, KeyboardInterrupt):
            raise
        print("dedup: interrupted before it started; nothing was done", file=sys.stderr)
        return getattr(exc, "exit_status", 130)
    handlers = {"demo": _run, "run": _run, "plant": _plant, "ui": _ui}
    try:
        if args.command in ("demo", "run"):  # SIGINT/SIGTERM stop it: interrupts.Interrupted
            return _run_stoppable(args, probe)
        if args.command == "watch":
            return _watch(args, argv, probe)
        _imports_done()  # `dedup ui` runs for hours
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


def entry() -> NoReturn:
    """The `dedup` command: `main`, then the exit handlers, and an exit that skips the
    interpreter's teardown of torch, Dagster and polars, 1-2 s of every process on 2 cores
    (a run's outputs are all written and closed by then). Only with no other thread left
    (a thread is joined as Python would); called in-process, `main` returns as usual."""
    import atexit
    import contextlib
    import threading

    global _OWN_PROCESS
    _OWN_PROCESS = True
    gc.disable()  # while the command imports: `_imports_done`
    status = main()
    if threading.active_count() > 1:
        sys.exit(status)
    atexit._run_exitfuncs()  # logging's flush, multiprocessing's children, torch's
    for stream in (sys.stdout, sys.stderr):
        # a reader gone (`dedup ... | head`): nothing left to say
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
