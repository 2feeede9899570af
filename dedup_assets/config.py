"""The pipeline's configuration: one validated value, built once and passed explicitly.

`PipelineConfig` is built from the command line (`dedup run`), from the environment for
`dagster dev` (`from_environment`: the output folder's saved `pipeline.json`, then the
`DEDUP_*` variables), and handed to `build_definitions(config)`; no module reads
configuration at import time. Pydantic checks every field when the value is built
(thresholds in (0, 1), epochs >= 0, enums for device, precision, space, policy...), and the
paths are checked against each other: the output folder never overlaps the source.

`pipeline.json` is written only after a run succeeds and holds only what that run used;
device and precision describe the machine, not the data, so they are never saved or
inherited (a run with `--device cuda` does not make later runs ask for CUDA).

The user's corrections (`--overrides FILE`, else `<output>/overrides.csv` when it exists;
`core.decision.overrides`) are read and checked by `load_overrides(config)` before any work;
the file given is saved, so the UI's scheduled runs honour it too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dedup_assets.core.data.artifacts import CurrentInputs
from dedup_assets.core.data.image_folder import DEFAULT_MAX_FILE_BYTES
from dedup_assets.core.data.layout import DEFAULT_OUTPUT, OutputLayout
from dedup_assets.core.data.splits import SplitLayoutError, detect_splits, parse_split_names
from dedup_assets.core.data.thresholds import canonical_key, parse_key
from dedup_assets.core.decision.overrides import (
    Overrides,
    OverridesError,
    check_known_in,
    overrides_path,
    read_overrides,
)
from dedup_assets.core.quality.planting import read_ground_truth
from dedup_assets.engines import Executor
from resources.compute_device import DEVICE_PATTERN, Precision
from resources.image_source import GROUND_TRUTH_NAME
from resources.settings import DedupSettings

DEFAULT_THRESHOLDS = ("0.93", "0.95", "0.97", "1%")
"""The paper's three cosines, and a 1% false-removal budget calibrated per class."""
PIPELINE_FILE = "pipeline.json"
FILE_VERSION = 1
SAVED_FIELDS = (
    "source",
    "ground_truth",
    "thresholds",
    "max_file_bytes",
    "include_hidden",
    "schedule",
    "overrides",
    "splits",
    "demo_splits",
    "method",
)
DEFAULT_SCHEDULE = "0 2 * * *"  # nightly at 02:00
_CRON = re.compile(r"^\S+(\s+\S+){4}$")
# scheme://host:port, the scheme optional (dask reads tcp://), an IPv6 host in brackets
_DASK_ADDRESS = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+):(?P<port>\d{1,5})"
)

# Environment variables read by `from_environment` (the `dagster dev` path), by field.
ENVIRONMENT = {
    "DEDUP_SOURCE": "source",
    "DEDUP_GROUND_TRUTH": "ground_truth",
    "DEDUP_THRESHOLDS": "thresholds",
    "DEDUP_DEVICE": "device",
    "DEDUP_PRECISION": "precision",
    "DEDUP_MAX_FILE_BYTES": "max_file_bytes",
    "DEDUP_INCLUDE_HIDDEN": "include_hidden",
    "DEDUP_VERIFY": "verify",
    "DEDUP_SCHEDULE": "schedule",
    "DEDUP_EXECUTOR": "executor",
    "DEDUP_DASK_ADDRESS": "dask_address",
    "DEDUP_PARALLEL": "parallel",
    "DEDUP_OVERRIDES": "overrides",
    "DEDUP_SPLITS": "splits",
}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the setting or file at fault."""


def parse_thresholds(value: str | float | Iterable[str | float] | None) -> tuple[str, ...]:
    """Threshold keys from 'a,b,c', one number or a list, each in its one spelling
    (`thresholds.canonical_key`: "0.950" is "0.95", "1.0%" is "1%"): cosines sorted by value,
    then false-removal budgets ("1%") sorted by value.

    A cosine must lie strictly between 0 and 1 (the similarity above which two images are
    duplicates), a budget strictly between 0% and 100% (`core.data.thresholds`); two keys with
    the same value are refused.
    """
    if value is None:
        return DEFAULT_THRESHOLDS
    if isinstance(value, int | float):  # one number (`thresholds=0.95` in Python)
        value = [value]
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    keys = [t.strip() for t in items if t.strip()]
    if not keys:
        raise ValueError("at least one threshold is needed, e.g. 0.95 or 1%")
    by_value: dict[tuple[str, float], str] = {}
    for key in keys:
        kind, number = parse_key(key)
        if (kind, number) in by_value and by_value[(kind, number)] != key:
            raise ValueError(f"thresholds {by_value[(kind, number)]} and {key} are the same value")
        by_value[(kind, number)] = key
    order = sorted(by_value, key=lambda kv: (kv[0] == "budget", kv[1]))
    return tuple(canonical_key(by_value[kv]) for kv in order)


def _resolve(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


class PipelineConfig(BaseModel):
    """Everything a run needs to know; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        default="",
        description="ImageFolder root, <source>/<class>/<image>, only read; empty (dedup demo): "
        "the built-in demo dataset",
    )
    output: str = Field(
        default=DEFAULT_OUTPUT,
        description="output folder, new or made by latent-dedup, outside the source",
    )
    ground_truth: str = Field(
        default="",
        description="CSV with columns class,original,copy of known duplicates, for the "
        "evaluation; none given: <source>/ground_truth.csv where there is one",
    )
    thresholds: tuple[str, ...] = Field(
        default=DEFAULT_THRESHOLDS,
        description="comma-separated thresholds, one keep list each: cosines in (0, 1), the "
        "same in every class, or false-removal budgets like 1% (at most that share of the "
        "images with no duplicate removed, calibrated per class)",
    )
    device: str = Field(
        default="auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda or cuda:N; never saved"
    )
    precision: Precision = Field(
        default=Precision.auto,
        description="auto: bf16 where the device has fast bf16, else fp32; never saved",
    )
    max_file_bytes: int = Field(
        default=DEFAULT_MAX_FILE_BYTES,
        ge=1,
        description="files larger than this are skipped unread",
    )
    include_hidden: bool = Field(
        default=False,
        description="read hidden files and folders (names starting with '.') like any other; "
        "otherwise they are skipped and listed in catalog/quarantine.csv",
    )
    verify: bool = Field(
        default=False,
        description="read every file and compare its bytes with what the catalog read: notices "
        "a file rewritten in place with the same size and modification time, which the default "
        "check (paths, sizes and modification times, no file read) cannot see, and reads again "
        "a file it could not read before (its permissions fixed since); the clean copies' "
        "files are checked too, as with --force; never saved",
    )
    schedule: str = Field(
        default=DEFAULT_SCHEDULE,
        description="cron of the nightly_refresh and nightly_retraining schedules in the UI",
    )
    overrides: str = Field(
        default="",
        json_schema_extra={"metavar": "FILE"},
        description="CSV of corrections from the review page, columns path,decision,other "
        "(paths relative to the source; keep, remove, or not_duplicate with the pair's other "
        "image), honoured at every threshold by this run (a later run given no file reads "
        "<output>/overrides.csv: save it there to keep the corrections); only the classes "
        "it touches are decided again; none given: <output>/overrides.csv where there is one",
    )
    splits: str = Field(
        default="auto",
        json_schema_extra={"metavar": "NAMES"},
        description="the split folders of <source>/<split>/<class>/<image>, comma-separated, "
        "training split first (e.g. train,val,test); auto: top folders named train, val, "
        "valid, validation or test are splits, any other layout is <class>/<image>; none: the "
        "top folders are classes whatever their names",
    )
    demo_splits: bool = Field(
        default=False,
        description="the demo's split variant (dedup demo --splits): <output>/demo_dataset_splits, "
        "train/ and test/ with planted leaks (leaks.csv), instead of the plain demo",
    )
    method: DedupSettings = Field(default_factory=DedupSettings)
    # Where steps run (`dedup_assets.engines`): the machine's, never saved, like device.
    executor: Executor = Field(
        default=Executor.auto,
        description="where the per-class and per-threshold runs execute: in_process, processes "
        "(a pool of local processes), dask (the workers of --dask-address), or auto: 2 local "
        "processes for 20,000 files or 500 classes or more with at most 20,000 a class and 2 "
        "cores, else in_process; never saved; k8s is for the deployment in deploy/k8s",
    )
    dask_address: str = Field(
        default="",
        description="dask.distributed scheduler of --executor dask, e.g. tcp://10.0.0.5:8786",
    )
    parallel: int = Field(
        default=1,
        ge=1,
        le=256,
        description="class (and threshold) runs at once with --executor processes or dask, or "
        "when auto picks processes (then 2)",
    )

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds(cls, value: Any) -> tuple[str, ...]:
        return parse_thresholds(value)

    @field_validator("splits")
    @classmethod
    def _splits(cls, value: str) -> str:
        try:
            parse_split_names(value)
        except SplitLayoutError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    def _check_ground_truth(self) -> None:
        """The ground truth the evaluation will score against (--ground-truth, else the
        source's ground_truth.csv), read now: a wrong file failed the evaluation after all
        the work, exit 1, where a wrong overrides file is refused before any."""
        if self.ground_truth:
            truth = Path(self.ground_truth)
            if not truth.is_file():
                raise ValueError(f"ground truth file {truth} does not exist")
        elif self.source:
            truth = Path(self.source) / GROUND_TRUTH_NAME
            if not truth.is_file():
                return
        else:
            return
        try:
            pairs = read_ground_truth(truth)
        except UnicodeDecodeError:
            raise ValueError(f"{truth}: not a ground-truth file: not UTF-8 text") from None
        except (OSError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        if self.source and pairs and not any(_names_two_files(Path(self.source), p) for p in pairs):
            raise ValueError(
                f"{truth}: none of its {len(pairs):,} rows names two files of the source "
                f"{self.source}: `class` is the class folder (`train/cats` in a split source) "
                "and `original`, `copy` are file names inside it (e.g. cats,a.jpg,b.jpg)"
            )

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str) -> str:
        value = value.strip()
        found = _DASK_ADDRESS.fullmatch(value)
        if value and not (found and 0 < int(found.group("port")) < 65536):
            raise ValueError(
                f"{value!r} is not a scheduler address: give host and port, e.g. "
                "tcp://10.0.0.5:8786"
            )
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not _CRON.match(value.strip()):
            raise ValueError(f"{value!r} is not a cron expression of five fields, e.g. 0 2 * * *")
        import dagster as dg  # loaded already (resources.settings): its own check of the fields

        try:
            dg.ScheduleDefinition(name="check", cron_schedule=value.strip(), job_name="check")
        except dg.DagsterInvalidDefinitionError:
            raise ValueError(
                f"{value!r} is not a cron schedule Dagster runs: minute 0-59, hour 0-23, day "
                "1-31, month 1-12, weekday 0-6 (e.g. 0 2 * * *)"
            ) from None
        return value.strip()

    @field_validator("source", "output", "ground_truth", "overrides")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _resolve(value)

    @model_validator(mode="after")
    def _paths(self) -> PipelineConfig:
        out = Path(self.output)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output {out} exists and is not a folder")
        escaped = re.search(r"%[0-9A-Fa-f]{2}", str(out))
        if escaped:  # SQLAlchemy unquotes the database path of a sqlite:/// address
            raise ValueError(
                f"output {out} holds {escaped.group()!r}, which the run history's SQLite "
                "address reads as an escaped character (its databases would go to another "
                "folder); choose a folder without '%' followed by two hex digits"
            )
        if self.source:
            src = Path(self.source)
            if not src.is_dir():
                raise ValueError(f"source {src} does not exist or is not a folder")
            if src == out:
                raise ValueError(
                    f"output {out} is the source folder: outputs would be written among "
                    "the images and folders such as evaluation/ replaced; choose another folder"
                )
            if out.is_relative_to(src):
                raise ValueError(
                    f"output {out} is inside the source {src}: the next run would read the "
                    "outputs as images; choose a folder outside the source"
                )
            if src.is_relative_to(out):
                raise ValueError(
                    f"source {src} is inside the output {out}: the pipeline replaces folders "
                    "under its output and could delete source images; choose another output"
                )
            try:  # checked before anything is written: a layout it refuses stops here
                detect_splits(src, self.splits, include_hidden=self.include_hidden)
            except SplitLayoutError as exc:
                raise ValueError(str(exc)) from None
            if self.demo_splits:
                raise ValueError("the demo's split variant is the demo's source: no --source")
        self._check_ground_truth()
        if self.executor == Executor.dask and not self.dask_address:
            raise ValueError(
                "executor dask needs the scheduler's address (--dask-address tcp://host:8786)"
            )
        if self.executor == Executor.k8s and self.parallel > 1:
            raise ValueError("with executor k8s, Kubernetes places the steps: no --parallel")
        if self.dask_address and self.executor != Executor.dask:
            raise ValueError("a dask address is only used with --executor dask")
        if self.parallel > 1 and self.executor == Executor.in_process:  # auto may use it
            raise ValueError(
                "parallel class runs need steps outside this process: --executor processes or dask"
            )
        if self.ground_truth and not Path(self.ground_truth).is_file():
            raise ValueError(f"ground truth file {self.ground_truth} does not exist")
        if self.overrides and not Path(self.overrides).is_file():
            raise ValueError(f"overrides file {self.overrides} does not exist")
        return self

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(cls, **values: Any) -> PipelineConfig:
        """Construct and validate; errors become one ConfigError naming each bad setting."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> PipelineConfig:
        """The `dagster dev` configuration: DEDUP_OUTPUT (default ./dedup_output), the
        settings its last successful run saved, then any DEDUP_* variable on top."""
        env = os.environ if environ is None else environ
        output = env.get("DEDUP_OUTPUT") or DEFAULT_OUTPUT
        values = read_saved(Path(output))
        values["output"] = output
        for variable, field in ENVIRONMENT.items():
            if env.get(variable):
                values[field] = env[variable]
        return cls.build(**values)

    # ------------------------------------------------------------------ use

    def saved(self) -> dict[str, Any]:
        """What `pipeline.json` records: the data and method settings, not the machine's."""
        data = self.model_dump(mode="json", include=set(SAVED_FIELDS))
        if self.demo_source is not None:  # where to add images; derived, never read back
            data["demo_source"] = str(self.demo_source)
        return {"version": FILE_VERSION, **data}

    @property
    def demo_source(self) -> Path | None:
        """The demo dataset's folder when no source is given (made on first use, then the
        user's: never regenerated), else None."""
        if self.source:
            return None
        layout = OutputLayout(Path(self.output))
        return layout.demo_dataset_splits if self.demo_splits else layout.demo_dataset

    def resources(self) -> dict[str, Any]:
        """The Dagster resources of this configuration."""
        from resources import ComputeDevice, DedupStorage, ImageSource

        layout = OutputLayout(Path(self.output))
        demo = layout.demo_dataset_splits if self.demo_splits else layout.demo_dataset
        return {
            "image_source": ImageSource(
                root=self.source,
                ground_truth=self.ground_truth,
                demo_dir=str(demo),
                max_file_bytes=self.max_file_bytes,
                include_hidden=self.include_hidden,
                verify=self.verify,
                splits=self.splits,
                demo_splits=self.demo_splits,
            ),
            "storage": DedupStorage(base_dir=self.output, overrides=self.overrides),
            "compute": ComputeDevice(device=self.device, precision=self.precision),
            "settings": self.method,
        }


def load_overrides(config: PipelineConfig) -> Overrides | None:
    """The run's overrides (`--overrides`, else `<output>/overrides.csv` when it exists),
    read and checked before any work: columns, decisions, paths inside the source (a link
    out of it too), no contradiction; None without a file. A bad file raises ConfigError
    naming the file and the line. The images are checked against the catalog once it is
    built (`core.decision.overrides.check_known`)."""
    try:
        path = overrides_path(Path(config.output), config.overrides)
        if path is None:
            return None
        root = Path(config.source or config.demo_source)
        return read_overrides(path, root)
    except OverridesError as exc:
        raise ConfigError(str(exc)) from None


def known_overrides(config: PipelineConfig) -> Overrides | None:
    """`load_overrides`, with every image checked against the output's catalog and given
    its class (ConfigError, with the line, for an image the catalog does not hold)."""
    overrides = load_overrides(config)
    if overrides is None:
        return None
    try:
        return check_known_in(overrides, OutputLayout(Path(config.output)))
    except OverridesError as exc:
        raise ConfigError(str(exc)) from None


def current_inputs(config: PipelineConfig) -> CurrentInputs:
    """What the output's per-class files should be computed from now, the run's overrides
    included (`known_overrides`): `CurrentInputs.of` for the runner."""
    overrides = known_overrides(config)
    layout = OutputLayout(Path(config.output))
    if overrides is None:
        return CurrentInputs.of(layout, config.method)
    return CurrentInputs.of(
        layout, config.method, overrides.digests(), overrides.cross_class_pairs()
    )


class _SourceFiles:
    """The files of a source by their path from it, as the catalog names them: a path with
    `.` or `..` in it names none (the evaluation matches paths as text)."""

    def __init__(self, source: Path):
        self.source = source

    def __contains__(self, path: object) -> bool:
        text = str(path)
        parts = text.split("/")
        if not text or "." in parts or ".." in parts or "" in parts:
            return False
        return (self.source / text).is_file()


def _names_two_files(source: Path, pair: Any) -> bool:
    """Whether a ground-truth row names two existing files of the source, as the
    evaluation resolves its paths (`evaluation.source_path_of`)."""
    from dedup_assets.core.quality.evaluation import source_path_of

    files = _SourceFiles(source)
    return all(source_path_of(pair, name, files) in files for name in (pair.original, pair.copy))


def threshold_summaries_now(config: PipelineConfig, layout: OutputLayout) -> list:
    """Each threshold's counts and stored verdicts against the output's current inputs
    (`run_summary.threshold_summaries`; nothing current without a catalog or model yet):
    what the last screen and the API's result both say, a clean copy a gate holds back
    included, also on a run that found nothing to do."""
    from dedup_assets.core.data.artifacts import MissingArtifact
    from dedup_assets.core.quality.run_summary import threshold_summaries

    try:
        current = current_inputs(config)
    except (MissingArtifact, ConfigError, OSError):
        current = None
    return threshold_summaries(layout, current, list(config.thresholds))


def read_saved(output: Path) -> dict[str, Any]:
    """The settings a successful run saved in `output/pipeline.json`, or {} if none."""
    path = Path(output) / PIPELINE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc}); fix it or delete it to start from defaults"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a settings object; fix it or delete it")
    data.pop("version", None)
    if "settings" in data:  # written by versions before the configuration object
        data.setdefault("method", data.pop("settings"))
    data.pop("demo_source", None)  # written for the user, derived from the output
    for machine in ("device", "precision", "output", "executor", "dask_address", "parallel"):
        data.pop(machine, None)
    unknown = sorted(set(data) - set(SAVED_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; fix it or delete it")
    return data


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if error["loc"] else message)
    return "; ".join(parts)
