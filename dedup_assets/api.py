"""`deduplicate`: the pipeline as one Python call, for notebooks and scripts.

    from dedup_assets import deduplicate
    result = deduplicate("/data/my_images", output="/data/dedup_out", thresholds=["0.95", "1%"])
    result                      # in Jupyter: the counts per threshold, the paths, the checks
    result.keep_lists["1%"]     # the keep list as a polars DataFrame

It runs what `dedup run` runs (`runner.run_pipeline`, the same jobs, stages and checks, on
the output folder's own Dagster instance) and takes the same options, as keyword arguments:
each option of `dedup run --help` by its setting's name or by the option's name with `_`
for `-` (`similarity_space="raw"` or `space="raw"`, `n_components=64` or `components=64`);
a value of None leaves the default, as an option not given does. `source=None` runs on the
built-in demo dataset, made in `<output>/demo_dataset` on first use, as `dedup demo` does.

What `dedup run` reports by its exit status the call reports by what it raises or returns:

- a bad option, value or setting, an unknown option, or an output folder that holds files
  latent-dedup did not write: `ConfigError` (a `ValueError`), before any work is done;
- Ctrl-C (in Jupyter: interrupt the kernel) or SIGTERM: `KeyboardInterrupt` (the
  project's `Interrupted`), once the run has stopped; what finished is kept and the same
  call resumes;
- another run writing to the same output: `runner.OutputLocked` (a `RuntimeError`);
- a failed stage or a blocking gate: no exception; `DedupResult.ok` is False and its
  `failures`, `checks` and `skipped` say which and why, `held_back` which clean copies a
  gate holds back, also on a later call with nothing to do (exit status 1 or 3 of
  `dedup run`).

Quiet by default: `log=print` (or any callable taking a line) receives the progress lines
`dedup run` prints; `verbose=True` prints them and Dagster's own log. A keep list is
returned only when it is current (made from this source, model and settings): after a
failed stage a threshold whose keep list is older is left out rather than shown as this
run's.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from dedup_assets.core.data.artifacts import (
    MissingArtifact,
    digest,
    is_current,
    read_classes,
    read_keep_list,
    read_provenance,
)
from dedup_assets.core.data.class_catalog import QUARANTINE_SCHEMA, quarantine_counts
from dedup_assets.core.data.layout import DAGSTER_HOME, OutputInUse, OutputLayout
from dedup_assets.core.quality.run_summary import ThresholdCounts
from dedup_assets.interrupts import stop_on_signals

if TYPE_CHECKING:
    from dedup_assets.config import PipelineConfig
    from dedup_assets.dispatch import CheckOutcome
    from dedup_assets.runner import PipelineOutcome, StageTiming

COUNT_COLUMNS = (
    "threshold",
    "images",
    "kept",
    "removed",
    "exact_copies",
    "near_duplicates",
    "removed_by_override",
    "overrides",
    "allowed_false",
)
"""`DedupResult.counts`, one row per threshold: removed = exact_copies + near_duplicates +
removed_by_override (the removals an override made, as the last screen's "by your
overrides"); `overrides`: images whose decision an override made (kept or removed);
`allowed_false`: for a budget, the removals it allows to be false (b x images,
summed over classes), else null."""
_COUNT_HEADERS = (
    "T",
    "images",
    "kept",
    "removed",
    "exact",
    "near",
    "by override",
    "overrides",
    "allowed false",
)


@dataclass(frozen=True, eq=False)
class DedupResult:
    """What one `deduplicate` call did and where its outputs are.

    keep_lists: {threshold: keep list} as `dedup run` writes it (`keep_lists/<T>.parquet`),
    for the thresholds whose keep list is current; counts: one row per threshold (see
    `COUNT_COLUMNS`); keep_list_paths / clean_copies: the parquet files and the clean
    copies (`clean/<T>`, made from the current keep list; a copy a gate left stale is in
    `stale_clean` instead; held_back: the thresholds whose clean copy a blocking gate holds
    back, this call's or an earlier one's); quarantined: files the catalog left out or used with a note,
    by reason (`catalog/quarantine.csv` has each path); outcome: the runner's
    `PipelineOutcome` (stage timings, failures, checks, what was skipped).
    """

    output: Path
    source: Path
    config: PipelineConfig
    outcome: PipelineOutcome
    keep_lists: Mapping[str, pl.DataFrame] = field(default_factory=dict)
    counts: pl.DataFrame = field(default_factory=pl.DataFrame)
    keep_list_paths: Mapping[str, Path] = field(default_factory=dict)
    clean_copies: Mapping[str, Path] = field(default_factory=dict)
    stale_clean: tuple[str, ...] = ()
    summary_report: Path | None = None
    review_page: Path | None = None
    images: int = 0
    quarantined: Mapping[str, int] = field(default_factory=dict)
    held_back: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every stage ran, no blocking gate failed and none still holds a clean copy back
        (exit status 0 of `dedup run`; a call that found nothing to do is not ok while a
        gate of an earlier one holds a copy back: `held_back`)."""
        return self.outcome.ok and not self.held_back

    @property
    def nothing_changed(self) -> bool:
        """The source and settings were those of the outputs: nothing was computed."""
        return self.outcome.nothing_changed

    @property
    def thresholds(self) -> tuple[str, ...]:
        return tuple(self.config.thresholds)

    @property
    def failures(self) -> list[str]:
        return self.outcome.failures

    @property
    def skipped(self) -> list[str]:
        return self.outcome.skipped

    @property
    def checks(self) -> list[CheckOutcome]:
        """This call's checks that did not pass (severity ERROR blocks a clean copy, WARN
        does not); a call that found nothing changed ran none."""
        return self.outcome.checks

    @property
    def stages(self) -> list[StageTiming]:
        return self.outcome.stages

    @property
    def timings(self) -> pl.DataFrame:
        """Seconds and runs per stage, in the order they ran."""
        return pl.DataFrame(
            [(s.name, s.runs, s.seconds) for s in self.stages],
            schema={"stage": pl.String, "runs": pl.Int64, "seconds": pl.Float64},
            orient="row",
        )

    # ------------------------------------------------------------------ display

    def _headline(self) -> str:
        state = "ok" if self.ok else "NOT ok"
        if self.nothing_changed:
            state += ", nothing changed: every output was up to date"
        else:
            state += f", {self.outcome.total_seconds:.1f} s"
        return f"latent-dedup {self.source} -> {self.output}: {state}"

    def _count_rows(self) -> list[tuple[str, ...]]:
        def shown(value: Any) -> str:
            if value is None:
                return "-"
            if isinstance(value, str):
                return value
            return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"

        return [tuple(shown(v) for v in row) for row in self.counts.select(COUNT_COLUMNS).rows()]

    def _notes(self) -> list[str]:
        """The lines under the table: paths, then what needs the user's attention."""
        lines = [f"{self.images:,} images catalogued"]
        if self.quarantined:
            listed = ", ".join(f"{n:,} {kind}" for kind, n in self.quarantined.items())
            lines[0] += f"; left out or noted (catalog/quarantine.csv): {listed}"
        if self.keep_list_paths:
            lines.append(f"keep lists: {self.output / 'keep_lists'}/<T>.parquet (+ .csv, .json)")
        if self.clean_copies:
            lines.append(f"clean copies: {', '.join(map(str, self.clean_copies.values()))}")
        if self.summary_report:
            lines.append(f"report: {self.summary_report}")
        if self.review_page:
            lines.append(f"review page: {self.review_page}")
        missing = [t for t in self.thresholds if t not in self.keep_lists]
        if missing:
            lines.append(f"no current keep list for T={', '.join(missing)}")
        lines += [f"STALE clean/{t}: made from an earlier keep list" for t in self.stale_clean]
        lines += [
            f"HELD BACK clean/{t}: a blocking gate failed on its keep list (see the reports)"
            for t in self.held_back
        ]
        layout = OutputLayout(self.output)
        lines += [  # as the command's last screen says it
            f"NOTE  {layout.unlisted_words(t)} not updated: {t} is not among the thresholds"
            for t in getattr(self.outcome, "unlisted_clean", [])
        ]
        lines += [f"{c.severity} {c.line()}" for c in self.checks]
        lines += [f"FAILED {f}" for f in self.failures]
        lines += [f"SKIPPED {s}" for s in self.skipped]
        return lines

    def __repr__(self) -> str:
        rows = [_COUNT_HEADERS, *self._count_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COUNT_HEADERS))]
        table = [
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        return "\n".join([self._headline(), *table, *(f"  {line}" for line in self._notes())])

    def _repr_markdown_(self) -> str:
        """Jupyter's view: the headline, the counts as a table, then the notes."""
        rows = [_COUNT_HEADERS, ("---",) * len(_COUNT_HEADERS), *self._count_rows()]
        table = ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
        notes = [f"- {_md(line)}" for line in self._notes()]
        return "\n".join([f"**{_md(self._headline())}**", "", *table, "", *notes])


def _md(text: str) -> str:
    """Text shown as itself in markdown (file and class names may hold any character)."""
    for char in "\\`*_[]<>|#":
        text = text.replace(char, "\\" + char)
    return text


def deduplicate(
    source: str | os.PathLike[str] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    full: bool = False,
    force: bool = False,
    verbose: bool = False,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> DedupResult:
    """Run `dedup run` on `source` into `output` and return what it did (`DedupResult`).

    source: the ImageFolder root (`<source>/<class>/<image>`), only read; None: the
    built-in demo dataset, as `dedup demo`. output: the output folder, new or made by
    latent-dedup (default `./dedup_output`). retrain, full, force: as `--retrain`,
    `--full`, `--force` (a call always checks every stage; force also looks at every file
    of the copy-mode clean copies).
    options: any option of `dedup run --help`, by its setting's name or its option's
    (`thresholds=["0.95", "1%"]`, `epochs=5`, `device="cpu"`, `space="raw"`...).
    log: a callable given each progress line (`log=print`); verbose: print them, with
    Dagster's log. Raises `ConfigError` (a ValueError) for a bad option or an output
    folder not ours, `KeyboardInterrupt` when interrupted; see the module docstring.
    """
    _not_in_a_starting_worker()
    # Dagster and torch load here, when a run starts, not when the package is imported.
    from dedup_assets.config import ConfigError
    from dedup_assets.runner import instance_for, run_pipeline

    for name, flag in (
        ("retrain", retrain),
        ("full", full),
        ("force", force),
        ("verbose", verbose),
    ):
        if not isinstance(flag, bool):  # "no" is truthy: it retrained
            raise ConfigError(f"{name} must be True or False, got {flag!r}")
    if log is not None and not callable(log):  # found after the output was claimed
        raise ConfigError(f"log must be a callable taking a line (log=print), got {log!r}")
    config = _config(source, output, options)
    if config.executor == "k8s":
        raise ConfigError(
            "executor k8s is for the code location of a Kubernetes deployment "
            "(deploy/k8s, DEDUP_EXECUTOR=k8s); deduplicate uses in_process, processes or dask"
        )
    layout = OutputLayout(Path(config.output))
    try:
        layout.claim()
    except OutputInUse as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # as the command refuses it (exit 2): a setting, before any work
        raise ConfigError(
            f"output {layout.root} cannot be written: {exc.strerror or exc}"
        ) from None
    say = log if log is not None else print if verbose else _quiet
    say(f"latent-dedup: {config.source or f'demo dataset {config.demo_source}'} -> {layout.root}")
    with _instance_folder_for_this_call(), stop_on_signals(), warnings.catch_warnings():
        # Called from a running event loop (Jupyter, asyncio.run), Dagster's cleanup of its
        # own loop cannot run and drops the coroutine: a RuntimeWarning per step, nothing
        # wrong (dagster/_core/execution/context_creation_job.py ignores the RuntimeError).
        warnings.filterwarnings(
            "ignore", "coroutine 'BaseEventLoop.shutdown_asyncgens' was never awaited"
        )
        instance = instance_for(layout.root)
        try:
            outcome = run_pipeline(
                config,
                instance,
                retrain=retrain,
                full=full,
                check_clean_files=force,
                log=say,
                log_level="INFO" if verbose else "CRITICAL",
            )
        except BrokenProcessPool as exc:
            raise RuntimeError(_broken_pool_words()) from exc
        finally:
            instance.dispose()
    return _result(config, layout, outcome)


def _not_in_a_starting_worker() -> None:
    """Refuse a call made while this process starts as a worker of another's pool: Python
    starts a worker (`executor="processes"`, or `auto` on a big dataset) by running the
    caller's script again, so a call at a script's top level ran again in every worker,
    found the output locked by the first, and broke the pool with a long traceback.
    (`_inheriting` is how multiprocessing itself tells, for the same mistake with a pool of
    the script's own.)"""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "deduplicate() was called while a worker process started: in a script, call it "
            'under `if __name__ == "__main__":` (each worker runs the script again to start), '
            'or pass executor="in_process"'
        )


def _broken_pool_words() -> str:
    """Why a worker of the local pool may have ended as it started, for the caller."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    words = "a worker process of the run ended abruptly (its own message, if any, is above)"
    if script and not os.path.isfile(script):  # `python - < script.py`: "<stdin>"
        return words + (
            f"; a worker starts by running the caller's script again, and {script} is no "
            "file it can run (a script read from standard input): save it to a file and run "
            'that, or pass executor="in_process"'
        )
    return words + (
        f"; if {script} calls deduplicate() at its top level, call it under "
        '`if __name__ == "__main__":` (each worker runs the script again to start)'
        if script
        else ""
    )


def _quiet(line: str) -> None:
    """The progress lines nobody asked for."""


SHORT_NAMES = {"space": "similarity_space", "policy": "keep_policy", "components": "n_components"}
"""The names `dedup run` gives these settings (`--space`, `--policy`, `--components`: the
CLI's RENAMED), taken as keywords beside the settings' own."""


def option_names() -> dict[str, tuple[str | None, str]]:
    """Every keyword `deduplicate` takes as a setting, to where it goes in PipelineConfig:
    (None, field) or ("method", field). These are the fields `dedup run` generates its
    options from (with the three tuning settings it leaves at their defaults), and the
    short names of SHORT_NAMES."""
    from pydantic import BaseModel

    from dedup_assets.config import PipelineConfig

    names: dict[str, tuple[str | None, str]] = {}
    for name, info in PipelineConfig.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names.update({inner: (name, inner) for inner in nested.model_fields})
        elif name != "source":  # deduplicate's first argument
            names[name] = (None, name)
    for short, name in SHORT_NAMES.items():
        names.setdefault(short, names[name])
    return names


def _config(
    source: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None,
    options: Mapping[str, Any],
) -> PipelineConfig:
    """The PipelineConfig of a call: its options over the defaults, as `dedup run` builds
    it from the command line (`cli.config_from_args`); ConfigError for a bad one."""
    from dedup_assets.config import ConfigError, PipelineConfig

    for what, value in (("source", source), ("output", output)):
        if value is not None and not isinstance(value, str | os.PathLike):
            raise ConfigError(f"{what} must be a path (str or os.PathLike), got {value!r}")
    if source is not None and not os.fspath(source):
        raise ConfigError("source is empty: give an ImageFolder, or None for the demo dataset")
    values: dict[str, Any] = {"source": "" if source is None else os.fspath(source)}
    if output is not None:
        values["output"] = os.fspath(output)
    known = option_names()
    named: dict[tuple[str | None, str], str] = {}
    for name, value in options.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"unknown option {name!r}{hint}: deduplicate takes the options of "
                "`dedup run --help`, by name (epochs=5, space='raw', thresholds=['0.95', '1%'])"
            )
        group, setting = known[name]
        if (group, setting) in named:
            raise ConfigError(f"{named[group, setting]} and {name} are the same option; give one")
        named[group, setting] = name
        if value is None:  # as an option not given: the default
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        (values.setdefault(group, {}) if group else values)[setting] = value
    return PipelineConfig.build(**values)


@contextmanager
def _instance_folder_for_this_call() -> Iterator[None]:
    """$DAGSTER_HOME as it was before the call: the runner sets it to the output's instance
    folder for the process (`layout.resolve_dagster_home`), which would send a later call
    with another output to this one's instance."""
    before = os.environ.get(DAGSTER_HOME)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DAGSTER_HOME, None)
        else:
            os.environ[DAGSTER_HOME] = before


class ByThreshold(dict):
    """{threshold key: value}, looked up by any spelling of a threshold (`"0.950"`, `"1.0%"`
    find `"0.95"`, `"1%"`: `thresholds.canonical_key`), as the call accepted them."""

    @staticmethod
    def _spelled(key: object) -> object:
        from dedup_assets.core.data.thresholds import canonical_key

        try:
            return canonical_key(str(key))
        except ValueError:
            return key

    def __missing__(self, key: object) -> Any:
        spelled = self._spelled(key)
        if spelled != key and dict.__contains__(self, spelled):
            return self[spelled]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or dict.__contains__(self, self._spelled(key))

    def get(self, key: object, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def _result(config: PipelineConfig, layout: OutputLayout, outcome: PipelineOutcome) -> DedupResult:
    """The call's result, read from what the run left in the output folder."""
    from dedup_assets.config import threshold_summaries_now

    thresholds = list(config.thresholds)
    current = thresholds if outcome.ok else _current_keep_lists(config, layout, thresholds)
    held_back = tuple(s.threshold for s in threshold_summaries_now(config, layout) if s.blocked)
    keep_lists = ByThreshold({t: read_keep_list(layout.keep_list(t)) for t in current})
    stale = tuple(t for t in thresholds if layout.clean_stale_note(t).exists())
    clean = ByThreshold(
        {
            t: layout.clean_dir(t)
            for t in current
            if t not in stale and layout.clean_manifest(t).is_file()
        }
    )
    return DedupResult(
        output=layout.root,
        source=Path(config.source) if config.source else Path(config.demo_source or ""),
        config=config,
        outcome=outcome,
        keep_lists=keep_lists,
        counts=pl.DataFrame(
            [_counts(layout, t, keep) for t, keep in keep_lists.items()],
            schema=dict(zip(COUNT_COLUMNS, _COUNT_TYPES, strict=True)),
            orient="row",
        ),
        keep_list_paths=ByThreshold({t: layout.keep_list(t) for t in keep_lists}),
        clean_copies=clean,
        stale_clean=stale,
        summary_report=layout.summary if layout.summary.is_file() else None,
        review_page=layout.review_index if layout.review_index.is_file() else None,
        images=_catalogued(layout),
        quarantined=_quarantined(layout),
        held_back=held_back,
    )


_COUNT_TYPES = (pl.String, *(pl.Int64,) * 7, pl.Float64)


def _current_keep_lists(
    config: PipelineConfig, layout: OutputLayout, thresholds: list[str]
) -> list[str]:
    """The thresholds whose keep list was made from the output's current catalog, model,
    settings and overrides (after a failed stage, an older one may be on disk)."""
    from dedup_assets.config import ConfigError, current_inputs

    try:
        inputs = current_inputs(config)
    except (MissingArtifact, ConfigError, OSError):  # no model yet, or no catalog
        return []
    return [t for t in thresholds if is_current(layout.keep_list(t), inputs.keep_list(t))]


def _counts(layout: OutputLayout, threshold: str, keep: pl.DataFrame) -> tuple:
    """One row of `counts` (`core.quality.run_summary.ThresholdCounts`, as the last screen of
    `dedup run` counts): the budget's numbers from the keep list's summary
    (`keep_lists/<T>.json`) when it was written with this keep list."""
    summary = _read_json(layout.keep_list(threshold, "json"))
    provenance = read_provenance(layout.keep_list(threshold))
    if summary is not None and (
        provenance is None or summary.get("keep_list") != digest(provenance)
    ):
        summary = None
    c = ThresholdCounts.of(threshold, keep, summary)
    return (
        threshold,
        c.images,
        c.kept,
        c.removed,
        c.exact,
        c.near,
        c.by_override,
        c.overrides,
        c.allowed_false,
    )


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _catalogued(layout: OutputLayout) -> int:
    try:
        return int(read_classes(layout)["images"].sum())
    except (OSError, MissingArtifact, pl.exceptions.PolarsError):
        return 0


def _quarantined(layout: OutputLayout) -> dict[str, int]:
    if not layout.quarantine.is_file():
        return {}
    return quarantine_counts(pl.read_csv(layout.quarantine, schema=QUARANTINE_SCHEMA, glob=False))
