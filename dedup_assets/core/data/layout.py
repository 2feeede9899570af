"""Where each asset's files live under the output folder, and where the Dagster instance
of that folder is (one place, so nothing guesses)."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUTPUT = "dedup_output"  # the output folder when none is given
MARKER = ".latent-dedup"
# Files and folders an output made by earlier versions holds (accepted without the marker).
LEGACY_SIGNS = ("pipeline.json", "catalog", ".dagster")
OVERRIDES_FILE = "overrides.csv"
"""The user's corrections every run of an output folder honours (`core.decision.overrides`):
a new output folder may hold it before the first run."""
WATCH_SOCKET = ".watch.sock"
"""The socket on which a `dedup watch` serving the output takes `dedup run` commands
(`watch_handoff`); there only while such a watch runs."""
PREDECODE = ".predecode-"
"""A first run's decoding cache in the output (`core.data.predecode`): PREDECODE + the
command's process id, removed once the classes are decoded."""


class OutputInUse(RuntimeError):
    """The output folder holds something latent-dedup did not make."""


@dataclass(frozen=True)
class OutputLayout:
    """Paths of every stored artefact; thresholds appear in names exactly as configured."""

    root: Path

    # ------------------------------------------------------------------ ownership

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    def claim(self) -> None:
        """Make the output folder ours, or refuse one that holds other files.

        The pipeline replaces whole folders under its output (`clean/<T>`, `evaluation`,
        ...), so a folder that already holds someone else's files is never written into. A
        folder holding only `overrides.csv` is accepted: corrections put there before the
        first run.
        """
        if self.marker.is_file():
            if not os.access(self.root, os.W_OK | os.X_OK):  # refused now, not mid-run
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.root))
            return
        if self.root.exists():
            entries = [p.name for p in self.root.iterdir()]
            # A first run's decoder (`predecode`) may have made its cache folder already.
            foreign = [e for e in entries if e != OVERRIDES_FILE and not e.startswith(PREDECODE)]
            if foreign and not any(sign in entries for sign in LEGACY_SIGNS):
                shown = ", ".join(sorted(entries)[:3])
                raise OutputInUse(
                    f"output {self.root} is not empty and was not made by latent-dedup "
                    f"(it holds {shown}{', ...' if len(entries) > 3 else ''}); "
                    "choose a new or empty folder"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        self.marker.write_text("This folder is written by latent-dedup.\n")

    @property
    def overrides(self) -> Path:
        """The user's corrections, `overrides.csv` (honoured when present; `--overrides`
        names another file)."""
        return self.root / OVERRIDES_FILE

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def watch_socket(self) -> Path:
        return self.root / WATCH_SOCKET

    def writer_lock(self, name: str) -> Path:
        """The lock file of one output's writers (`core.data.atomic_io.writing`), kept out of
        the folders users list."""
        return self.root / ".locks" / f"{name}.lock"

    @property
    def pipeline_file(self) -> Path:
        return self.root / "pipeline.json"

    @property
    def dagster_home(self) -> Path:
        """The instance of this folder (`resolve_dagster_home` says which one a run uses)."""
        return self.root / ".dagster"

    # ------------------------------------------------------------------ catalog and model

    @property
    def catalog_dir(self) -> Path:
        return self.root / "catalog"

    @property
    def index(self) -> Path:
        """One row per class folder: key, name, file count, listing digest."""
        return self.catalog_dir / "index.parquet"

    @property
    def root_skipped(self) -> Path:
        """Entries of the source root that are not class folders, with the reason."""
        return self.catalog_dir / "root_skipped.csv"

    @property
    def quarantine(self) -> Path:
        """Every skipped or noted path of the source, root and classes together."""
        return self.catalog_dir / "quarantine.csv"

    @property
    def classes_dir(self) -> Path:
        return self.catalog_dir / "classes"

    def class_dir(self, class_key: str) -> Path:
        """One class's decoded images: table, pixel store and quarantine, swapped in whole."""
        return self.classes_dir / class_key

    def class_images(self, class_key: str) -> Path:
        return self.class_dir(class_key) / "images.parquet"

    def class_pixels(self, class_key: str) -> Path:
        return self.class_dir(class_key) / "pixels.npy"

    def class_quarantine(self, class_key: str) -> Path:
        return self.class_dir(class_key) / "quarantine.csv"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def model(self) -> Path:
        return self.model_dir / "autoencoder.pt"

    @property
    def training_log(self) -> Path:
        return self.model_dir / "training.json"

    @property
    def reference_pool(self) -> Path:
        """The run's reference images as vectors (`core.decision.reference_pool`), kept
        with the model."""
        return self.model_dir / "reference_pool.npz"

    @property
    def trained_images(self) -> Path:
        """The images the model was trained on (class key, image id)."""
        return self.model_dir / "trained_images.parquet"

    # ------------------------------------------------------------------ per class

    def latents(self, class_key: str) -> Path:
        return self.root / "latents" / f"{class_key}.parquet"

    def new_image_errors(self, class_key: str) -> Path:
        """The reconstruction errors of the class's images that are new since the model was
        trained (`core.model.new_image_errors`), computed once as they are encoded."""
        return self.root / "latents" / f"{class_key}.new_errors.npz"

    def mirror_latents(self, class_key: str) -> Path:
        """The latents of the class's mirrored images (calibration decoys), in the order
        of its latents table: encoded once, read by every budget calibration."""
        return self.root / "latents" / f"{class_key}.mirrors.npz"

    def class_dct(self, class_key: str) -> Path:
        """The DCT descriptors of the class's images by pixel hash (`core.decision.dct_store`),
        kept so that an update computes those of its new images only."""
        return self.root / "latents" / f"{class_key}.dct.npz"

    def spline_fit(self, class_key: str) -> Path:
        return self.root / "spline_fits" / f"{class_key}.npz"

    def spline_scores(self, class_key: str) -> Path:
        return self.root / "spline_fits" / f"{class_key}.parquet"

    def class_keep_list(self, threshold: str, class_key: str) -> Path:
        return self.root / "keep_lists" / "by_class" / threshold / f"{class_key}.parquet"

    # ------------------------------------------------------------------ per threshold

    def keep_list(self, threshold: str, suffix: str = "parquet") -> Path:
        return self.root / "keep_lists" / f"{threshold}.{suffix}"

    def keep_list_unlisted_note(self, threshold: str) -> Path:
        """Written beside a keep list whose threshold is not among the run's thresholds, as
        `clean_unlisted_note` is into its clean copy."""
        return self.root / "keep_lists" / f"{threshold}.NOT_UPDATED.txt"

    def threshold_paths(self, threshold: str) -> list[Path]:
        """Everything stored under one threshold's name, its per-class keep lists (the
        decisions) first (`adopt_spelling` renames it whole)."""
        return [
            self.root / "keep_lists" / "by_class" / threshold,
            *(self.keep_list(threshold, suffix) for suffix in ("parquet", "csv", "json")),
            self.keep_list_unlisted_note(threshold),
            self.duplicate_pairs_image(threshold),
            self.report_dir(threshold),
            self.clean_dir(threshold),
            self.cross_class(threshold),
        ]

    def adopt_spelling(self, old: str, new: str) -> bool:
        """Rename what is stored under threshold name `old` to `new` (the same value in its
        one spelling, `thresholds.canonical_key`); whether anything was renamed. Nothing is
        renamed where both names hold decisions (per-class keep lists): `new`'s are the
        current ones. Path by path, decisions first, so a rename cut short is finished by
        the next call."""
        paths = list(zip(self.threshold_paths(old), self.threshold_paths(new), strict=True))
        if paths[0][0].exists() and paths[0][1].exists():
            return False
        moved = False
        for was, now in paths:
            if was.exists() and not now.exists():
                now.parent.mkdir(parents=True, exist_ok=True)
                os.replace(was, now)
                moved = True
        self.clean_unlisted_note(new).unlink(missing_ok=True)
        self.keep_list_unlisted_note(new).unlink(missing_ok=True)
        return moved

    def unlisted_words(self, threshold: str) -> str:
        """What a run that does not list `threshold` left not updated, as the last screen and
        the API's result name it: `keep_lists/<T> and clean/<T>` (those that exist)."""
        held = [
            f"{what}/{threshold}"
            for what, path in (
                ("keep_lists", self.keep_list(threshold)),
                ("clean", self.clean_dir(threshold)),
            )
            if path.exists()
        ]
        return " and ".join(held) or threshold

    def duplicate_pairs_image(self, threshold: str) -> Path:
        return self.root / "keep_lists" / f"{threshold}_pairs.png"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def report_dir(self, threshold: str) -> Path:
        return self.reports_dir / threshold

    def report_summary(self, threshold: str) -> Path:
        return self.report_dir(threshold) / "summary.json"

    @property
    def summary(self) -> Path:
        return self.reports_dir / "summary.md"

    def summary_record(self, asset: str) -> Path:
        """What an output across thresholds (the summary, the evaluation, the review page)
        was made from (`core.quality.summary_inputs`)."""
        return self.reports_dir / f".{asset}.made_from.json"

    @property
    def timings(self) -> Path:
        """Where the last `dedup run`'s time went, per kind of work (`timings.WorkTimes`)."""
        return self.reports_dir / "timings.json"

    @property
    def clean_root(self) -> Path:
        """Where the clean copies lie, one folder per threshold."""
        return self.root / "clean"

    def clean_dir(self, threshold: str) -> Path:
        return self.clean_root / threshold

    def clean_manifest(self, threshold: str) -> Path:
        """Which keep list a clean copy was made from (inside the copy, hidden)."""
        return self.clean_dir(threshold) / ".latent-dedup-clean.json"

    def clean_unlisted_note(self, threshold: str) -> Path:
        """Written into a clean copy whose threshold is not among the run's thresholds: no
        run keeps it up to date until it is again (`runner._note_unlisted_clean_copies`)."""
        return self.clean_dir(threshold) / "NOT_UPDATED.txt"

    def clean_stale_note(self, threshold: str) -> Path:
        """Written into a clean copy that no longer matches its threshold's keep list."""
        return self.clean_dir(threshold) / "STALE.txt"

    # ------------------------------------------------------------------ whole run

    @property
    def cross_class_dir(self) -> Path:
        return self.root / "cross_class"

    def cross_class(self, threshold: str) -> Path:
        """Pairs of near-identical images in different classes at one threshold."""
        return self.cross_class_dir / f"{threshold}.parquet"

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    @property
    def leakage(self) -> Path:
        """Evaluation images with a copy in train (`core.decision.leakage.leakage_rows`):
        split, class, image, train class, train image, similarity, kind, threshold."""
        return self.root / "leakage.csv"

    @property
    def review_dir(self) -> Path:
        """The review page (`core.quality.review_page`): open `review_index` in a browser."""
        return self.root / "review"

    @property
    def review_index(self) -> Path:
        return self.review_dir / "index.html"

    @property
    def review_thumbs(self) -> Path:
        """Thumbnails of reviewed images, named by pixel hash, kept across runs (a cache)."""
        return self.review_dir / "thumbs"

    @property
    def review_pages(self) -> Path:
        """The page data of each written review page, one folder per build."""
        return self.review_dir / "pages"

    @property
    def demo_dataset(self) -> Path:
        return self.root / "demo_dataset"

    @property
    def demo_dataset_splits(self) -> Path:
        """The demo's split variant (`dedup demo --splits`): train/ and test/ with leaks."""
        return self.root / "demo_dataset_splits"


# ---------------------------------------------------------------------------- the instance

DAGSTER_HOME = "DAGSTER_HOME"  # the variable Dagster reads its instance folder from
INSTANCE_FILE = "dagster.yaml"  # the instance's settings: the UI's, where sensors log
# `dedup run`'s instance file beside dagster.yaml: the same storage without Dagster's
# capture of each run's stdout and stderr. Nothing here writes there (assets log to the
# event log), and the capture starts a `tail` and a Python watcher per stream and run,
# which print a traceback each when Ctrl-C reaches the process group.
RUN_INSTANCE_FILE = "dedup-run.yaml"
_TELEMETRY_OFF = "telemetry:\n  enabled: false\n"
_NO_CAPTURE = (
    "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager"
    "\n  class: NoOpComputeLogManager\n"
)


# ... and with Dagster's own SQLite files written a batch of asset events at a time
# (`dedup_assets.event_storage`; the directory is the one Dagster's default storage uses).
_BATCHED_EVENTS = (
    "event_log_storage:\n  module: dedup_assets.event_storage\n"
    "  class: BatchedSqliteEventLogStorage\n  config:\n    base_dir: {events}\n"
)


# ... and its runs kept on one open SQLite connection (`dedup_assets.run_storage`; the
# directory is the one Dagster's default storage uses).
_KEPT_RUNS = (
    "run_storage:\n  module: dedup_assets.run_storage\n"
    "  class: KeptSqliteRunStorage\n  config:\n    base_dir: {runs}\n"
)


def run_instance_text(home: Path) -> str:
    """RUN_INSTANCE_FILE's content for the instance folder `home`. Its paths are quoted (a
    JSON string is a YAML one): unquoted, an output named `x #2` was read as `x` and a
    comment, so the run history went to a folder beside the output."""
    events = json.dumps(str((home / "history" / "runs").resolve()))
    runs = json.dumps(str((home / "history").resolve()) + os.sep)
    return (
        _TELEMETRY_OFF
        + _NO_CAPTURE
        + _BATCHED_EVENTS.format(events=events)
        + _KEPT_RUNS.format(runs=runs)
    )


def prepare_dagster_home(output: Path | str) -> Path:
    """<output>/.dagster, made if needed, with telemetry off: the instance of that folder
    (INSTANCE_FILE for the UI; RUN_INSTANCE_FILE, the same files without step output
    capture and with batched event writes, for `dedup run`, rewritten when an older version
    wrote it otherwise)."""
    home = OutputLayout(Path(output).resolve()).dagster_home
    home.mkdir(parents=True, exist_ok=True)
    if not (home / INSTANCE_FILE).exists():
        (home / INSTANCE_FILE).write_text(_TELEMETRY_OFF)
    run_file, text = home / RUN_INSTANCE_FILE, run_instance_text(home)
    if not run_file.exists() or run_file.read_text() != text:
        run_file.write_text(text)
    return home


def resolve_dagster_home(output: Path | str) -> Path:
    """The instance folder of a run writing to `output`: $DAGSTER_HOME when set (a
    deployment's), else <output>/.dagster, prepared and then set as $DAGSTER_HOME, so that
    this process and Dagster itself agree on it from then on."""
    if not os.environ.get(DAGSTER_HOME):
        use_dagster_home(prepare_dagster_home(output))
    return Path(os.environ[DAGSTER_HOME])


def use_dagster_home(home: Path | str) -> None:
    """Make `home` this process's instance folder (a worker adopting its caller's)."""
    os.environ[DAGSTER_HOME] = str(home)


def instance_file(home: Path | str) -> str:
    """The settings file `dedup run` opens in `home`: RUN_INSTANCE_FILE where it is, else
    INSTANCE_FILE (an instance that `prepare_dagster_home` did not make)."""
    return RUN_INSTANCE_FILE if (Path(home) / RUN_INSTANCE_FILE).exists() else INSTANCE_FILE
