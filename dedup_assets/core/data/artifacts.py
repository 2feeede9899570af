"""Reading and writing the pipeline's stored tables, and proving they are current.

Every per-class file records its provenance: the inputs it was computed from (the class's
content digest in the catalog, the model file's digest, the settings that shape it, and
the provenance of the file it was computed from). A reader compares that record with what
the current catalog, model and settings would give, so a file left by an earlier run, or
by a run whose upstream stage failed, is refused with the stage to re-run instead of being
silently used. Records chain, so one comparison checks the whole path back to the images.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from dedup_assets.core.data.atomic_io import PROVENANCE_KEY, atomic_path
from dedup_assets.core.data.class_catalog import CATALOG_SCHEMA
from dedup_assets.core.data.image_folder import DEFAULT_MAX_FILE_BYTES
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.data.mapped import take_rows
from dedup_assets.core.data.splits import IMPLICIT, class_label, is_training_key, key_split
from dedup_assets.core.data.thresholds import budget_of

KEEP_LIST_COLUMNS = (
    "image_id",
    "split",
    "class",
    "path",
    "kept",
    "duplicate_of",
    "similarity",
    "match",
    "space",
    "join",
    "cosine",
    "calibrated_on",
    "decided_at",
    "decided_in",
    "decided_by",
)
KEEP_LIST_SCHEMA = {
    name: pl.Boolean
    if name == "kept"
    else pl.Float64
    if name in ("similarity", "cosine")
    else pl.String
    for name in KEEP_LIST_COLUMNS
}
"""Each keep-list column's type: `kept` a boolean, the similarity and the cosine floats (null
or NaN where none), every other column a string."""
DECIDED_BY = ("exact", "model", "override")
"""Who decided a keep-list row: `exact` (a pixel-identical copy removed), `model` (the
similarity decision) or `override` (the row's image is named in the user's overrides,
`core.decision.overrides`)."""


class MissingArtifact(FileNotFoundError):
    """An upstream file does not exist yet."""


class StaleArtifact(RuntimeError):
    """An upstream file was computed from inputs that are no longer current."""


def digest(obj: Any) -> str:
    """A short stable digest of a JSON-able value."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """Digest of a file's bytes (the model). Kept per process for the file's stat (size,
    times, inode: a write changes its change time, which no one sets back): a run's assets
    ask for the model's digest a dozen times across processes, 7.8 MB read each time."""
    st = os.stat(_require(path, "file"))
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    known = _FILE_DIGESTS.get(key)
    if known is not None:
        return known
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if len(_FILE_DIGESTS) >= 64:
        _FILE_DIGESTS.clear()
    _FILE_DIGESTS[key] = h.hexdigest()[:16]
    return _FILE_DIGESTS[key]


_FILE_DIGESTS: dict[tuple, str] = {}


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise MissingArtifact(f"{what} not found at {path}: materialize it first")
    return path


# ---------------------------------------------------------------------------- provenance


class MethodSettings(Protocol):
    n_components: int
    bin_rule: str
    similarity_space: str
    keep_policy: str
    budget_scaling: str
    join: str
    ann_min_class_size: int
    ann_nprobe: int
    clean_copy_mode: str


def latents_provenance(class_digest: str, model_digest: str) -> dict[str, str]:
    return {"kind": "latents", "class": class_digest, "model": model_digest}


def fit_provenance(latents: dict, settings: MethodSettings) -> dict[str, Any]:
    return {
        "kind": "spline_fit",
        "latents": digest(latents),
        "n_components": int(settings.n_components),
        "bin_rule": str(settings.bin_rule),
    }


BUDGET_NULL = (
    "the higher of the class's mirrors and the reference pool if n + 1 >= 1/b, else the pool "
    "raised by the class's median shift; k >= 1 or 1.0; margins capped at a ceiling halfway "
    "from the highest null cosine to 1"
)
"""The rule budgets are read by, recorded with budget keep lists: earlier decisions made by
another rule are not carried into a new run's keep list (before 2026-12-03 a class too
small for b took its highest null value; before 2026-12-07 a margin had no ceiling, so a
pair's own threshold could pass 1 and a near-identical copy in a dense region stayed)."""


def join_setting(settings: MethodSettings) -> str:
    """The join settings a keep decision records (what was asked, not what each class used)."""
    return f"{settings.join} above {settings.ann_min_class_size}, nprobe {settings.ann_nprobe}"


def keep_provenance(
    fit: dict, settings: MethodSettings, threshold: str, pool: str = "", overrides: str = ""
) -> dict[str, Any]:
    """What a class's keep list at `threshold` is decided from; `overrides`: the digest of
    the class's corrections (`core.decision.overrides`), recorded only when it has some, so
    a class without corrections keeps the provenance it had before overrides existed."""
    made = {
        "kind": "keep",
        "fit": digest(fit),
        "space": str(settings.similarity_space),
        "policy": str(settings.keep_policy),
        "threshold": threshold,
        "join": join_setting(settings),
    }
    if budget_of(threshold) is not None:  # how a budget resolves; a cosine key is one cosine
        made["scaling"] = str(settings.budget_scaling)
        made["pool"] = pool  # the reference pool small classes read their budget from
        made["null"] = BUDGET_NULL  # how budgets are read: decisions of another rule don't carry
    if overrides:
        made["overrides"] = overrides
    return made


@dataclass(frozen=True)
class CurrentInputs:
    """What every per-class file should have been computed from, right now.

    override_digests: {class key: digest of its corrections} for the classes the user's
    overrides touch (`core.decision.overrides.Overrides.digests`); their keep lists are
    decided with them. not_duplicate: the pairs of images of two classes the user marked
    "not a duplicate" (`Overrides.cross_class_pairs`), left out of the cross-class tables."""

    class_digests: dict[str, str]
    model_digest: str
    settings: MethodSettings
    pool_digest: str = ""
    override_digests: Mapping[str, str] = field(default_factory=dict)
    not_duplicate: tuple[tuple[str, str], ...] = ()
    # Records and digests already made, by what they are of: the threshold stage asks for
    # every class's keep record several times (a JSON dump each, 0.3 s at 1,000 classes).
    _made: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _once(self, what: tuple, make: Callable[[], Any]) -> Any:
        if what not in self._made:
            self._made[what] = make()
        return self._made[what]

    @classmethod
    def of(
        cls,
        layout: OutputLayout,
        settings: MethodSettings,
        override_digests: Mapping[str, str] | None = None,
        not_duplicate: Iterable[tuple[str, str]] = (),
    ) -> CurrentInputs:
        pool = layout.reference_pool
        return cls(
            class_digests(layout),
            file_digest(layout.model),
            settings,
            file_digest(pool) if pool.exists() else "",
            dict(override_digests or {}),
            tuple(sorted(tuple(p) for p in not_duplicate)),
        )

    def latents(self, key: str) -> dict:
        return latents_provenance(self.class_digests[key], self.model_digest)

    def fit(self, key: str) -> dict:
        return dict(
            self._once(("fit", key), lambda: fit_provenance(self.latents(key), self.settings))
        )

    def keep(self, key: str, threshold: str) -> dict:
        return dict(
            self._once(
                ("keep", key, threshold),
                lambda: keep_provenance(
                    self.fit(key),
                    self.settings,
                    threshold,
                    self.pool_digest,
                    self.override_digests.get(key, ""),
                ),
            )
        )

    def require_every_class(
        self, path_of: Callable[[str], Path], expected: Callable[[str], dict], what: str, asset: str
    ) -> None:
        """Refuse unless every class's file is current (see `require_current`)."""
        for key in sorted(self.class_digests):
            require_current(
                path_of(key),
                expected(key),
                f"{what} of class {key}",
                f"materialize {asset} for this class first",
            )

    def require_keep_list(self, layout: OutputLayout, threshold: str) -> Path:
        """The combined keep list of a threshold, refused unless it is current."""
        return require_current(
            layout.keep_list(threshold),
            self.keep_list(threshold),
            f"keep list T={threshold}",
            "materialize keep_list for this threshold first",
        )

    def cross_class(self, threshold: str) -> dict:
        """Cross-class pairs: computed from every class's latents, less the pairs marked
        not a duplicate (recorded only when there are some)."""
        keys = sorted(self.class_digests)
        made = {
            "kind": "cross_class",
            "threshold": threshold,
            "latents": {
                k: self._once(("latents digest", k), lambda k=k: digest(self.latents(k)))
                for k in keys
            },
        }
        if self.not_duplicate:
            made["not_duplicate"] = digest([list(p) for p in self.not_duplicate])
        return made

    def keep_list(self, threshold: str) -> dict:
        """The combined keep list: one record over every class with images."""
        keys = sorted(self.class_digests)
        return {
            "kind": "keep_list",
            "threshold": threshold,
            "classes": {
                k: self._once(
                    ("keep digest", k, threshold), lambda k=k: digest(self.keep(k, threshold))
                )
                for k in keys
            },
        }


def is_current(path: Path, expected: dict) -> bool:
    """True when `path` exists and records exactly `expected` as its provenance."""
    try:
        return path.exists() and read_provenance(path) == expected
    except Exception:  # noqa: BLE001 - an unreadable file is not current
        return False


def stale_classes(layout: OutputLayout, current: CurrentInputs, thresholds: list[str]) -> list[str]:
    """Classes with images whose latents, fit or keep decisions are not current."""
    stale = []
    for key in sorted(current.class_digests):
        files = [
            (layout.latents(key), current.latents(key)),
            (layout.spline_fit(key), current.fit(key)),
            *((layout.class_keep_list(t, key), current.keep(key, t)) for t in thresholds),
        ]
        if not all(is_current(path, expected) for path, expected in files):
            stale.append(key)
    return stale


def stale_thresholds(
    layout: OutputLayout, current: CurrentInputs, thresholds: list[str]
) -> list[str]:
    """Thresholds whose keep list, cross-class table, report or clean copy does not match
    the current data (a clean copy also when it was made in another mode than
    `settings.clean_copy_mode`; a keep list also when its .csv or .json export is gone);
    see `ThresholdVerdict.current`."""
    stale = []
    for t in thresholds:
        expected = current.keep_list(t)
        verdict = threshold_verdict(layout, t, digest(expected))
        if not (
            is_current(layout.keep_list(t), expected)
            and layout.keep_list(t, "csv").exists()
            and layout.keep_list(t, "json").exists()
            and is_current(layout.cross_class(t), current.cross_class(t))
            and verdict.current(str(current.settings.clean_copy_mode))
        ):
            stale.append(t)
    return stale


# ---------------------------------------------------------------------------- one threshold


def clean_copy_inputs(keep_list_digest: str, mode: str) -> dict[str, str]:
    """What a clean copy is made from, as its manifest records it: the keep list and the
    copy mode (a copy made by linking holds the source's own files, so a mode change makes
    it stale)."""
    return {"keep_list": keep_list_digest, "mode": str(mode)}


def _read_object(path: Path) -> dict | None:
    """The JSON object stored at `path`; None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_clean_manifest(layout: OutputLayout, threshold: str) -> dict | None:
    """What `clean/<T>` records it was made from (`clean_copy_inputs`, ...), or None."""
    return _read_object(layout.clean_manifest(threshold))


def _made_from(manifest: dict | None, keep_list_digest: str, mode: str) -> bool:
    wanted = clean_copy_inputs(keep_list_digest, mode)
    return manifest is not None and all(manifest.get(k) == v for k, v in wanted.items())


def clean_copy_is_current(
    layout: OutputLayout, threshold: str, keep_list_digest: str, mode: str
) -> bool:
    """True when `clean/<T>`'s manifest records this keep list and this copy mode."""
    return _made_from(read_clean_manifest(layout, threshold), keep_list_digest, mode)


@dataclass(frozen=True)
class ThresholdVerdict:
    """Is threshold T's output current for one keep list, and what did its gates say.

    `threshold_verdict` reads it once from what the threshold's assets stored: the keep
    list's summary (with the integrity problems found when it was written, the only time
    `keep_list_problems` runs), the kurtosis report's summary (with the kurtosis gate) and
    the clean copy's manifest. Everyone who asks reads it here: the runner (which thresholds
    are stale), the clean copy (may it be made), the summary across thresholds (its
    reports) and the keep list (is the clean copy an older one's). Each stored file is
    held whichever keep list wrote it; the properties say what holds for this one.
    """

    threshold: str
    keep_digest: str  # the keep list asked about: digest(CurrentInputs.keep_list(T))
    keep_summary: dict | None  # keep_lists/<T>.json
    report_summary: dict | None  # reports/<T>/summary.json
    clean_manifest: dict | None  # clean/<T>/.latent-dedup-clean.json

    @property
    def report(self) -> dict | None:
        """The kurtosis report's summary, when it was made from this keep list."""
        summary = self.report_summary
        return summary if summary and summary.get("keep_list") == self.keep_digest else None

    @property
    def gate(self) -> str:
        """The kurtosis gate's severity (pass, warn, error); "" without a current report."""
        return self.report["gate"]["severity"] if self.report else ""

    @property
    def problems(self) -> list[str] | None:
        """This keep list's integrity problems as found when it was written (none: []);
        None when its summary was not written with this keep list."""
        summary = self.keep_summary
        if not summary or summary.get("keep_list") != self.keep_digest:
            return None
        problems = summary.get("problems")
        return list(problems) if isinstance(problems, list) else None

    @property
    def clean_keep_list(self) -> str | None:
        """The digest of the keep list the clean copy was made from, if any."""
        return self.clean_manifest.get("keep_list") if self.clean_manifest else None

    def clean_copy_current(self, mode: str) -> bool:
        """True when the clean copy was made from this keep list in this copy mode."""
        return _made_from(self.clean_manifest, self.keep_digest, mode)

    def current(self, mode: str) -> bool:
        """The report is this keep list's, and so is the clean copy in this mode, unless
        the kurtosis gate blocked it (running again cannot change that)."""
        return self.report is not None and (self.clean_copy_current(mode) or self.gate == "error")

    def blocked(self) -> str:
        """Why no clean copy may be made from this keep list now ("" when it may)."""
        t = self.threshold
        if self.report_summary is None:
            return f"no kurtosis report for T={t}: materialize kurtosis_report"
        if self.report is None:
            return (
                f"the kurtosis report for T={t} is older than its keep list: "
                "materialize kurtosis_report first"
            )
        if self.gate == "error":
            return f"the kurtosis gate failed for T={t}: " + "; ".join(
                self.report["gate"]["reasons"]
            )
        if self.problems is None:
            return f"no integrity verdict recorded with the keep list T={t}: materialize keep_list"
        if self.problems:
            return f"the keep list T={t} fails its integrity check: {self.problems}"
        return ""


def threshold_verdict(layout: OutputLayout, threshold: str, keep_digest: str) -> ThresholdVerdict:
    """What threshold T's stored outputs say about the keep list `keep_digest`."""
    return ThresholdVerdict(
        threshold,
        keep_digest,
        keep_summary=_read_object(layout.keep_list(threshold, "json")),
        report_summary=_read_object(layout.report_summary(threshold)),
        clean_manifest=read_clean_manifest(layout, threshold),
    )


def read_provenance(path: Path) -> dict | None:
    """The provenance record stored in a parquet or npz file, or None.

    Its text is reused while the file is the same (`_StoredReads`): every stage checks
    every class's inputs (8,000 reads, 1.8 s, in the threshold stage of a 1,000-class run);
    each call gets its own dict."""
    text = STORED_READS.get(Path(path), "provenance", _provenance_text, lambda t: len(t) + 64)
    return json.loads(text) if text else None


def _provenance_text(path: Path) -> str:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return str(z[PROVENANCE_KEY]) if PROVENANCE_KEY in z.files else ""
    return read_table_metadata(path).get(PROVENANCE_KEY) or ""


def require_current(path: Path, expected: dict, what: str, fix: str) -> Path:
    """Refuse a missing file or one whose provenance differs from `expected`."""
    _require(path, what)
    found = read_provenance(path)
    if found != expected:
        raise StaleArtifact(
            f"{what} at {path} is stale: it was computed from other inputs than the current "
            f"catalog, model and settings; {fix}"
        )
    return path


# ---------------------------------------------------------------------------- tables


def write_table(
    df: pl.DataFrame,
    path: Path | str,
    provenance: dict | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write parquet atomically, with its provenance record when given and more key-value
    `metadata`; both are kept for this process's later reads of the file as written
    (`read_provenance`, `read_table_metadata`: the next steps of a class check it, 0.3 ms a
    read)."""
    _write_table(df, path, provenance, metadata)
    return Path(path)


def _write_table(
    df: pl.DataFrame,
    path: Path | str,
    provenance: dict | None = None,
    metadata: Mapping[str, str] | None = None,
) -> os.stat_result:
    """`write_table`, giving the written file's stat (for a caller handing more over)."""
    meta = dict(metadata or {})
    if provenance:
        meta[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True)
    with atomic_path(path) as tmp:
        # zstd at its fastest level: a class's latents (3,135 x 1,024) written in 0.027 s
        # against 0.032-0.045 s at polars' default level, 2.5% larger (1.95 MB, 12.7 MB raw).
        df.write_parquet(tmp, metadata=meta or None, compression="zstd", compression_level=1)
        written = os.stat(tmp)
    text = meta.get(PROVENANCE_KEY, "")
    STORED_READS.put(Path(path), written, "provenance", text, len(text) + 64)
    STORED_READS.put(Path(path), written, "metadata", meta, _metadata_bytes(meta))
    return written


def read_table_metadata(path: Path) -> dict[str, str]:
    """A parquet table's key-value metadata (its provenance among them), reused while the
    file is the same (`_StoredReads`); each call gets its own dict."""
    return dict(
        STORED_READS.get(_require(path, "table"), "metadata", _table_metadata, _metadata_bytes)
    )


def _table_metadata(path: Path) -> dict[str, str]:
    return dict(pl.read_parquet_metadata(path))


def _metadata_bytes(meta: Mapping[str, str]) -> int:
    return sum(len(k) + len(v) for k, v in meta.items()) + 64


CLASS_SUMMARY_KEY = "latent_dedup_class"


def read_index(layout: OutputLayout) -> pl.DataFrame:
    """One row per class folder of the source: class_key, class, raw_name, files, digest."""
    return pl.read_parquet(_require(layout.index, "image catalog (class index)"), glob=False)


def class_summary(layout: OutputLayout, key: str) -> dict | None:
    """What a class's catalog records of itself (images, digests), or None if never built.

    Its text is reused while the catalog file is the same (`_StoredReads`): the stages list
    the classes through it again and again (25,000 reads, 2.8 s, in the threshold stage of
    a 1,000-class run); each call gets its own dict."""
    path = layout.class_images(key)
    if not path.exists():
        return None
    text = STORED_READS.get(path, "class summary", _summary_text, lambda t: len(t) + 64)
    return json.loads(text) if text else None


def _summary_text(path: Path) -> str:
    return pl.read_parquet_metadata(path).get(CLASS_SUMMARY_KEY) or ""


def catalogued_keys(layout: OutputLayout) -> list[str]:
    """Keys of the classes that have a catalog (whatever their number of images), sorted.

    A class being written elsewhere sits in `.<key>.<random>.tmp` (`atomic_io`) until it is
    swapped in; class keys never start with "." (`image_folder.class_key` encodes it), so
    such a folder is never taken for a class (a worker listing the classes while another
    wrote one read its half-made quarantine.csv as it was swapped away: FileNotFoundError)."""
    if not layout.classes_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in layout.classes_dir.iterdir()
        if not p.name.startswith(".") and (p / "images.parquet").is_file()
    )


def _catalog_stamps(layout: OutputLayout) -> tuple[tuple[str, int, int, int], ...]:
    """(key, inode, size, mtime) of every class catalog, sorted by key: the classes of
    `catalogued_keys` with what says whether their files are the ones read before."""
    try:
        entries = os.scandir(layout.classes_dir)
    except (FileNotFoundError, NotADirectoryError):
        return ()
    stamps = []
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                st = os.stat(os.path.join(entry.path, "images.parquet"))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                stamps.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(sorted(stamps))


_CLASSES_READ: dict[str, tuple[tuple, pl.DataFrame]] = {}


def read_classes(layout: OutputLayout) -> pl.DataFrame:
    """One row per catalogued class (of each split): key, split, name, images, quarantined,
    content digest and the listing digest of the folder it was built from.

    The table is reused while every catalog file is the one read (a stage asks for it about
    25 times a run: 38 ms each for 1,000 classes, against 12 ms to look at their files).
    Callers read it; none changes it in place."""
    stamps = _catalog_stamps(layout)
    kept = _CLASSES_READ.get(os.fspath(layout.classes_dir))
    if kept is not None and kept[0] == stamps:
        return kept[1]
    rows = []
    for key, *_ in stamps:
        summary = class_summary(layout, key) or {}
        rows.append(
            {
                "class_key": key,
                "split": key_split(key)[0],
                "class": summary.get("class", key),
                "images": summary.get("images", 0),
                "quarantined": summary.get("quarantined", 0),
                "digest": summary.get("digest"),
                "built_from": summary.get("listing"),
                # the size limit it was read with (a catalog from before it was recorded:
                # the default, which is what nearly every run used)
                "max_file_bytes": summary.get("max_file_bytes", DEFAULT_MAX_FILE_BYTES),
            }
        )
    schema = {
        "class_key": pl.String,
        "split": pl.String,
        "class": pl.String,
        "images": pl.Int64,
        "quarantined": pl.Int64,
        "digest": pl.String,
        "built_from": pl.String,
        "max_file_bytes": pl.Int64,
    }
    table = pl.DataFrame(rows, schema=schema)
    _CLASSES_READ[os.fspath(layout.classes_dir)] = (stamps, table)
    return table


def recorded_listings(layout: OutputLayout, max_file_bytes: int | None = None) -> dict[str, str]:
    """The listing digest each catalogued class was last built from, by key. Given the
    size limit files are read with now (`--max-file-bytes`), a class read with another
    limit has a digest no listing has: it is catalogued again (a file the old limit
    skipped is read, one the new limit excludes is skipped)."""
    classes = read_classes(layout)
    out = {}
    for key, built, limit in zip(
        classes["class_key"], classes["built_from"], classes["max_file_bytes"], strict=True
    ):
        if not built:
            continue
        stale = max_file_bytes is not None and int(limit) != int(max_file_bytes)
        out[key] = f"{built} read with max_file_bytes={limit}" if stale else built
    return out


def class_digests(layout: OutputLayout) -> dict[str, str]:
    """Content digest of every class with decoded images, by partition key."""
    classes = read_classes(layout).filter(pl.col("images") > 0)
    return dict(zip(classes["class_key"].to_list(), classes["digest"].to_list(), strict=True))


def class_names(layout: OutputLayout) -> dict[str, str]:
    """Partition key -> class folder name (keys are length-bounded, names are not)."""
    classes = read_classes(layout)
    return dict(zip(classes["class_key"].to_list(), classes["class"].to_list(), strict=True))


def class_labels(layout: OutputLayout) -> dict[str, str]:
    """Partition key -> the class's label where every split's classes are listed together:
    its folder name, `<split>/<class>` for a split's class (`splits.class_label`)."""
    classes = read_classes(layout)
    return {
        key: class_label(split, name)
        for key, split, name in classes.select("class_key", "split", "class").iter_rows()
    }


def labelled_by_partition(table: pl.DataFrame) -> pl.DataFrame:
    """A table with `split` and `class` columns (a keep list) whose `class` is each row's
    class label (`class_labels`), for what groups rows by class partition."""
    if "split" not in table.columns:
        return table
    label = (
        pl.when(pl.col("split") == IMPLICIT)
        .then(pl.col("class"))
        .otherwise(pl.concat_str("split", pl.lit("/"), "class"))
    )
    return table.with_columns(label.alias("class"))


def class_name(layout: OutputLayout, key: str) -> str:
    """One class's folder name (its own catalog's record; the key when it has none): what a
    per-class step reads, where `class_names` would read every class's catalog."""
    return (class_summary(layout, key) or {}).get("class", key)


class _StoredReads:
    """What a run read from its stored tables, kept while the file is the same one.

    A run reads each class's catalog and latents several times (the stages, then every
    threshold's reports): 8 and 6 reads a class, 15 s of a 1,000-class run on 2 cores. A
    read is reused while the file's inode, size and modification time are those it was read
    at; every stored table is replaced whole (`atomic_io`: a new inode), never edited, so a
    rewritten file is read again and its older read is let go. At most MAX_BYTES are kept,
    a read of more than a quarter of it never: small classes, where a read costs more than
    its bytes, are the ones reused, and a run of big classes holds no more memory than before.

    When full, a new read is not kept (the kept ones stay): the stages read the classes in
    the same order again and again, and a least-recently-used cache smaller than one pass
    evicts each class just before its next read (EuroSAT's ten classes of latents, 110 MB,
    were read 6 times each under a 64 MB cap: 2.8 s of reads, all misses). Arrays are
    handed out read-only, so no caller can change what another one reads."""

    MAX_BYTES = 256 * 2**20

    def __init__(self) -> None:
        # (path, what) -> ((inode, size, mtime) read at, bytes, value)
        self._kept: dict[tuple[str, str], tuple[tuple[int, int, int], int, Any]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: Path, what: str, read: Callable[[Path], Any], size: Callable[[Any], int]):
        try:
            st = os.stat(path)
        except OSError:
            return read(path)  # missing: the reader says so
        name, stamp = (os.fspath(path), what), (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            kept = self._kept.get(name)
            if kept is not None and kept[0] == stamp:
                return kept[2]
        value = read(path)
        n = size(value)
        with self._lock:
            older = self._kept.pop(name, None)  # a version of the file read before
            if older is not None:
                self._bytes -= older[1]
            if n <= self.MAX_BYTES // 4 and self._bytes + n <= self.MAX_BYTES:
                self._kept[name] = (stamp, n, value)
                self._bytes += n
        return value

    def put(self, path: Path, written: os.stat_result, what: str, value: Any, n: int) -> None:
        """Keep `value` as what reading `path` as `what` gives, for the file as it was
        written (`written`: its stat before it replaced `path`, so a later replacement by
        anyone is read again): a writer whose process reads the file next hands over what
        it wrote."""
        name = (os.fspath(path), what)
        stamp = (written.st_ino, written.st_size, written.st_mtime_ns)
        with self._lock:
            older = self._kept.pop(name, None)
            if older is not None:
                self._bytes -= older[1]
            if n <= self.MAX_BYTES // 4 and self._bytes + n <= self.MAX_BYTES:
                self._kept[name] = (stamp, n, value)
                self._bytes += n

    def peek(self, path: Path, what: str) -> Any | None:
        """The value kept for `path` read as `what` while the file is the same, else None
        (nothing is read)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        with self._lock:
            kept = self._kept.get((os.fspath(path), what))
        if kept is None or kept[0] != (st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        return kept[2]

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._bytes = 0


STORED_READS = _StoredReads()

HANDOVER_MAX_BYTES = 4 * 2**20
"""The largest value a writer hands over to later reads of what it wrote when no read of it
would have been kept before (a class's catalog in the process that decoded it, its mirror
latents): the small classes', whose reads cost more than their bytes; a big class's read
is cheap beside its work, and holding it would take memory the process did not hold before
(a million images: 10 classes of 100,000, their catalogs and mirrors)."""


def hand_over(path: Path, written: os.stat_result, what: str, value: Any, size: int) -> None:
    """Keep `value`, just written to `path` by this process (`written`: the file's stat
    before it replaced `path`), for this process's later reads of it as `what`, when it is
    at most HANDOVER_MAX_BYTES."""
    if size <= HANDOVER_MAX_BYTES:
        STORED_READS.put(Path(path), written, what, value, size)


def read_class_images(layout: OutputLayout, key: str) -> pl.DataFrame:
    """One class's catalog: every file of the class, decoded or quarantined (one written
    before catalogs carried the split gets its split, read from the key). Reused while the
    file is unchanged (`_StoredReads`)."""
    path = _require(layout.class_images(key), f"catalog of class {key}")
    return STORED_READS.get(
        path, f"catalog {key}", lambda p: _class_images(p, key), lambda t: t.estimated_size()
    )


def _class_images(path: Path, key: str) -> pl.DataFrame:
    table = pl.read_parquet(path, glob=False)
    if "split" not in table.columns:
        table = table.with_columns(pl.lit(key_split(key)[0], pl.String).alias("split"))
        table = table.select([c for c in CATALOG_SCHEMA if c in table.columns])
    return table


def read_decoded_images(layout: OutputLayout, key: str) -> pl.DataFrame:
    """One class's decoded images (`catalog_images` of its catalog), reused while the
    catalog file is the same (`_StoredReads`): the latents, the keep decisions and the
    cross-class pairs each ask for them (a filter and a sort, 1 ms a class of 20)."""
    path = _require(layout.class_images(key), f"catalog of class {key}")
    return STORED_READS.get(
        path,
        f"decoded {key}",
        lambda _: catalog_images(read_class_images(layout, key), key),
        lambda t: t.estimated_size(),
    )


HELD_CLASS_IMAGES = 1_024
"""Classes of fewer images than this have their catalogs read together (`hold_class_images`)."""


def hold_class_images(layout: OutputLayout, keys: Sequence[str]) -> int:
    """Read the catalogs of `keys` that this process does not hold yet in one read
    (`read_tables`) and keep each class's table and its decoded images for
    `read_class_images` and `read_decoded_images`: a range's latents and keep decisions ask
    for them class by class, a parquet read, two filters and a sort each (1.6 ms a class of
    20 in a worker, measured with py-spy --idle). How many classes it read; none below
    BATCHED_READ_MIN, or for files of an older schema (read one by one as before). Only
    classes under HELD_CLASS_IMAGES images: a big class's read is a small part of its work,
    and a range of big ones read at once would hold all of them in memory."""
    todo = []
    for key in keys:
        if (class_summary(layout, key) or {}).get("images", HELD_CLASS_IMAGES) >= HELD_CLASS_IMAGES:
            continue
        path = layout.class_images(key)
        if STORED_READS.peek(path, f"decoded {key}") is not None:
            continue
        try:
            # Before the read: a file replaced meanwhile is read again on its next use.
            todo.append((key, path, os.stat(path)))
        except OSError:
            continue  # not catalogued: its own read says so
    together = read_tables([path for _, path, _ in todo], source="__source")
    if together is None or "split" not in together.columns:
        return 0
    keys_of = {str(path): key for key, path, _ in todo}
    together = together.with_columns(
        pl.Series("__key", by_file(together, "__source", keys_of), dtype=pl.String)
    )
    # What `catalog_images(table, key)` keeps of each, for all of them at once.
    decoded = (
        together.filter((pl.col("status") == "ok") & (pl.col("class_key") == pl.col("__key")))
        .sort("__key", "class_key", "row", maintain_order=True)
        .drop("__source")
        .partition_by("__key", as_dict=True, include_key=False, maintain_order=True)
    )
    tables = together.drop("__key").partition_by(
        "__source", as_dict=True, include_key=False, maintain_order=True
    )
    empty = together.clear().drop("__source", "__key")
    for key, path, st in todo:
        table = tables.get((str(path),), empty)
        ok = decoded.get((key,), empty)
        STORED_READS.put(path, st, f"catalog {key}", table, table.estimated_size())
        STORED_READS.put(path, st, f"decoded {key}", ok, ok.estimated_size())
    return len(todo)


def read_catalog(layout: OutputLayout, keys: list[str] | None = None) -> pl.DataFrame:
    """The catalogs of the given classes (default: every catalogued class) together.

    `row` indexes each class's own pixel store (`open_pixels(layout, key)`).
    """
    if keys is None:
        keys = catalogued_keys(layout)
    if not keys:
        return pl.DataFrame(schema=CATALOG_SCHEMA)
    paths = [_require(layout.class_images(k), f"catalog of class {k}") for k in keys]
    kept = _held(paths, [f"catalog {k}" for k in keys])
    if kept is None:
        stamps = _file_stamps(paths)  # before the read: a file replaced meanwhile is read again
        last = _CATALOG_READ.get(os.fspath(layout.classes_dir))
        if last is not None and stamps is not None and last[0] == stamps:
            return last[1]
        together = read_tables(paths)
        # A catalog written before catalogs carried the split is upgraded one by one.
        if together is not None and "split" in together.columns:
            if stamps is not None and together.estimated_size() <= CATALOG_KEPT_MAX_BYTES:
                _CATALOG_READ[os.fspath(layout.classes_dir)] = (stamps, together)
            return together
        kept = [read_class_images(layout, k) for k in keys]
    return pl.concat(kept, how="vertical_relaxed")


_CATALOG_READ: dict[str, tuple[tuple, pl.DataFrame]] = {}
CATALOG_KEPT_MAX_BYTES = 64 * 2**20
"""The largest catalog read of many classes (`read_tables`) a process keeps for its next read
of the same files (the last one read, while each file is the one read: `_file_stamps`): the
main process of a run read 1,000 classes' catalogs in four stages, 0.15 s each. Callers read
it; none changes it in place."""


def _file_stamps(paths: list[Path]) -> tuple | None:
    """(path, inode, size, mtime) of each file, or None if one is missing."""
    try:
        return tuple(
            (os.fspath(p), st.st_ino, st.st_size, st.st_mtime_ns)
            for p, st in ((p, os.stat(p)) for p in paths)
        )
    except OSError:
        return None


BATCHED_READ_MIN = 8
"""From this many files, a stage's read of every class's table is one polars read."""


def _held(paths: list[Path], whats: list[str]) -> list | None:
    """What this process holds for every one of `paths` read as `whats` (`_StoredReads`),
    or None when it lacks any: then one read of them all (`read_tables`) is cheaper."""
    held = [STORED_READS.peek(p, w) for p, w in zip(paths, whats, strict=True)]
    return None if any(h is None for h in held) else held


def _read_parquet(path: Path) -> pl.DataFrame:
    """One parquet file; its path is a path, never a pattern (polars globs by default, and
    an output folder named `out [1]` matched nothing)."""
    return pl.read_parquet(path, glob=False)


def read_tables(
    paths: list[Path], source: str | None = None, columns: list[str] | None = None
) -> pl.DataFrame | None:
    """Many class tables of one schema, concatenated in order, in one polars read: a small
    parquet read costs its call's fixed cost (about 0.6 ms), so 1,000 classes' keep lists,
    catalogs or scores took 0.59-0.67 s one by one and take 0.09-0.16 s together
    (`benchmarks/bench_batched_reads.py`, one polars thread). None below BATCHED_READ_MIN files, or when their schemas differ
    (a file written by an earlier version): the caller then reads them one by one, with its
    upgrades of older files. With `source`, a column of that name holds each row's file;
    with `columns`, those alone are read."""
    if len(paths) < BATCHED_READ_MIN:
        return None
    try:
        if columns is not None and source is not None:
            columns = [*columns, source]  # else polars leaves the file column out
        # glob=False: a path is a path, never a pattern (`_read_parquet`).
        return pl.read_parquet(paths, columns=columns, include_file_paths=source, glob=False)
    except pl.exceptions.PolarsError:
        return None


def by_file(together: pl.DataFrame, source: str, values: Mapping[str, object]) -> np.ndarray:
    """Each row's value of its file (`values`, by path as `read_tables` names it in its
    `source` column), from the runs of that column (a file's rows are contiguous): a
    polars `replace_strict` of 1,000 paths on 20,000 rows took 0.11 s, this 6 ms."""
    runs = together.get_column(source).rle()
    files, lengths = runs.struct.field("value").to_list(), runs.struct.field("len").to_numpy()
    return np.repeat(np.array([values[f] for f in files], dtype=object), lengths)


def catalog_images(catalog: pl.DataFrame, class_key: str | None = None) -> pl.DataFrame:
    """Decoded (status ok) images, optionally of one class, in pixel-store row order."""
    if class_key is not None and _one_class_decoded_in_order(catalog, class_key):
        return catalog  # the usual class catalog: two filters and a sort, 0.7 ms, find it so
    ok = catalog.filter(pl.col("status") == "ok")
    if class_key is not None:
        ok = ok.filter(pl.col("class_key") == class_key)
    return ok.sort("class_key", "row")


def _one_class_decoded_in_order(catalog: pl.DataFrame, class_key: str) -> bool:
    """Every row of `catalog` decoded (status ok), of `class_key`, in increasing store row."""
    if catalog.height > 4_096:  # a whole catalog: the query is cheaper than this look
        return False
    rows = catalog.get_column("row")
    if rows.null_count():
        return False
    rows = rows.to_numpy()
    return bool(
        (catalog.get_column("status").to_numpy() == "ok").all()
        and (catalog.get_column("class_key").to_numpy() == class_key).all()
        and (rows[1:] > rows[:-1]).all()
    )


def column_by_class(images: pl.DataFrame, column: str, keys: Sequence[str]) -> list[np.ndarray]:
    """Each class's values of `column` in `keys`' order (empty for a class with none), from a
    table sorted by class_key (`catalog_images`): one pass over the sorted keys, where a
    filter a class cost 0.23 s of CPU at 1,000 classes (0.012 s this way)."""
    values = images[column].to_numpy()
    classes = images["class_key"].to_numpy()
    cuts = np.flatnonzero(classes[1:] != classes[:-1]) + 1
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    ends = np.concatenate([cuts, [len(classes)]]).astype(np.int64)
    spans = {classes[a]: (a, b) for a, b in zip(starts, ends, strict=True) if b > a}
    if len(spans) != len(starts) and len(classes):
        raise ValueError("column_by_class needs a table sorted by class_key")
    return [values[slice(*spans[k])] if k in spans else values[:0] for k in keys]


def catalog_class_keys(layout: OutputLayout) -> list[str]:
    """Partition keys of the classes that have decoded images, sorted."""
    return sorted(class_digests(layout))


def training_class_keys(layout: OutputLayout) -> list[str]:
    """Partition keys of the training split's classes that have decoded images, sorted:
    what the model and the reference pool are made from, so evaluation images (val, test)
    never shape the space (every class of an unsplit source)."""
    return [k for k in catalog_class_keys(layout) if is_training_key(k)]


def open_pixels(layout: OutputLayout, key: str) -> np.ndarray:
    """One class's uint8 pixel store (N, 64, 64, 3), memory-mapped read-only."""
    return np.load(_require(layout.class_pixels(key), f"pixel store of class {key}"), mmap_mode="r")


def pixels_of_rows(layout: OutputLayout, key: str, rows: np.ndarray) -> np.ndarray:
    """A class's pixels at its store's `rows`, in that order: the memory-mapped store itself
    when the rows are all of it in order (the usual case), so large classes are read in
    chunks by whoever uses them; a copy of those rows otherwise."""
    store = open_pixels(layout, key)
    same = len(rows) == len(store) and np.array_equal(rows, np.arange(len(store)))
    return store if same else take_rows(store, rows)


def gather_pixels(layout: OutputLayout, images: pl.DataFrame) -> np.ndarray:
    """Pixels of the given catalog rows (any classes), in the rows' order."""
    out = np.empty((images.height, 64, 64, 3), dtype=np.uint8)
    position = np.arange(images.height)
    for (key,), group in images.with_columns(pl.Series("_at", position)).group_by(
        "class_key", maintain_order=True
    ):
        store = open_pixels(layout, key)
        take_rows(store, group["row"].to_numpy(), out=out, at=group["_at"].to_numpy())
    return out


def write_latents(
    path: Path,
    image_ids: list[str],
    paths: list[str],
    latents: np.ndarray,
    provenance: dict,
) -> Path:
    """Store one class's latents with their provenance, and hand the table and matrix as
    written to this process's later reads of the file (`read_latents`): the class's check,
    fit and keep decisions read them next in the same run, a read of 1-2 ms a small class
    (a tenth of its latents step at 1,000 classes of 20)."""
    # A copy of its own (as the read's is): the caller's array stays the caller's.
    matrix = np.array(latents, dtype=np.float32, order="C").reshape(
        len(image_ids), latents.shape[1]
    )
    matrix.setflags(write=False)
    df = pl.DataFrame(
        {
            "image_id": pl.Series(image_ids, dtype=pl.String),
            "path": pl.Series(paths, dtype=pl.String),
            "latent": pl.Series("latent", matrix, dtype=pl.Array(pl.Float32, matrix.shape[1])),
        }
    )
    written = _write_table(df, path, provenance)
    table = pl.DataFrame([df.get_column("image_id"), df.get_column("path")])  # no query
    STORED_READS.put(
        Path(path), written, "latents", (table, matrix), table.estimated_size() + matrix.nbytes
    )
    return Path(path)


def read_latents(path: Path) -> tuple[pl.DataFrame, np.ndarray]:
    """(image_id, path) table and the (n, 1024) float32 latent matrix of one class; the
    matrix read-only, reused while the file is unchanged (`_StoredReads`)."""
    return STORED_READS.get(
        _require(path, "class latents"),
        "latents",
        _latents,
        lambda v: v[0].estimated_size() + v[1].nbytes,
    )


LATENT_GROUP_ROWS = 16_384
"""Rows of latents read together by `class_latent_groups` (64 MB of 1,024 float32s)."""


def class_latent_groups(
    layout: OutputLayout, keys: list[str], sizes: list[int], max_rows: int = LATENT_GROUP_ROWS
) -> Iterator[list[np.ndarray]]:
    """The given classes' latent matrices (read-only), in key order, a group of consecutive
    classes of at most `max_rows` rows at a time (a bigger class alone): each group in one
    read of its files (`read_tables`), where reading 1,000 classes one by one cost most of a
    second in calls. `sizes` are the classes' row counts (`read_class_latent_ids`)."""
    start, rows = 0, 0
    for end, n in enumerate(sizes):
        if end > start and rows + n > max_rows:
            yield _latent_group(layout, keys[start:end], sizes[start:end])
            start, rows = end, 0
        rows += n
    if len(keys) > start:
        yield _latent_group(layout, keys[start:], sizes[start:])


def _latent_group(layout: OutputLayout, keys: list[str], sizes: list[int]) -> list[np.ndarray]:
    paths = [_require(layout.latents(k), "class latents") for k in keys]
    if _held(paths, ["latents"] * len(paths)) is None:
        together = read_tables(paths, columns=["latent"])
        if together is not None and together.height == sum(sizes):
            width = together.schema["latent"].size
            flat = together["latent"].to_numpy().astype(np.float32, copy=False)
            flat = np.ascontiguousarray(flat.reshape(together.height, width))
            flat.setflags(write=False)
            return np.split(flat, np.cumsum(sizes)[:-1])
    return [read_latents(p)[1] for p in paths]


def _latents(path: Path) -> tuple[pl.DataFrame, np.ndarray]:
    df = pl.read_parquet(path, glob=False)
    width = df.schema["latent"].size if df.height == 0 else None
    latents = df["latent"].to_numpy().astype(np.float32, copy=False).reshape(len(df), width or -1)
    latents = np.ascontiguousarray(latents)
    latents.setflags(write=False)
    return df.drop("latent"), latents


def read_latent_ids(path: Path) -> pl.DataFrame:
    """The (image_id, path) table of one class's latents, without the latents: the table of
    the latents already read (`read_latents`) while the file is the same, else those two
    columns alone, kept too (the threshold stage asks for them per class and threshold)."""
    path = _require(path, "class latents")
    kept = STORED_READS.peek(path, "latents")
    if kept is not None:
        return kept[0]
    return STORED_READS.get(
        path,
        "latent ids",
        lambda p: pl.read_parquet(p, columns=["image_id", "path"], glob=False),
        lambda t: t.estimated_size(),
    )


def read_class_latent_ids(layout: OutputLayout, keys: list[str]) -> tuple[pl.DataFrame, list[int]]:
    """The (image_id, path) rows of the given classes' latents, in class order, and each
    class's row count: this process's reads where it holds every class's (`read_latent_ids`),
    else one read of all the files (`read_tables`)."""
    paths = [_require(layout.latents(k), "class latents") for k in keys]
    if _held(paths, ["latents"] * len(paths)) is None:
        together = read_tables(paths, source="__source", columns=["image_id", "path"])
        if together is not None:
            runs = together.get_column("__source").rle()
            files, lengths = runs.struct.field("value"), runs.struct.field("len")
            counts = dict(zip(files.to_list(), lengths.to_list(), strict=True))
            return together.drop("__source"), [counts.get(os.fspath(p), 0) for p in paths]
    tables = [read_latent_ids(p).select("image_id", "path") for p in paths]
    if not tables:
        return pl.DataFrame(schema={"image_id": pl.String, "path": pl.String}), []
    return pl.concat(tables), [t.height for t in tables]


def read_keep_list(path: Path) -> pl.DataFrame:
    """A keep list in today's columns: one written before a column existed gets it
    (`calibrated_on` empty, 2026-12-03: a cosine key's decisions are still current without
    it; `decided_by` from `match`, 2026-12: no override existed before it; `split`, the
    implicit split's name: splits came after, and a split source's keys are new ones)."""
    return _keep_list_columns(pl.read_parquet(_require(path, "keep list"), glob=False))


def _keep_list_columns(keep: pl.DataFrame) -> pl.DataFrame:
    """`keep` with today's columns (`read_keep_list`): row by row, so a concatenation of
    keep lists of one schema is upgraded as each of them would be."""
    added = []
    if "split" not in keep.columns and "class" in keep.columns:
        added.append(pl.lit(IMPLICIT, pl.String).alias("split"))
    if "calibrated_on" not in keep.columns and "cosine" in keep.columns:
        added.append(pl.lit(None, pl.String).alias("calibrated_on"))
    if "decided_by" not in keep.columns and "match" in keep.columns:
        exact = pl.col("match") == "exact"
        added.append(
            pl.when(exact).then(pl.lit("exact")).otherwise(pl.lit("model")).alias("decided_by")
        )
    if added:
        keep = keep.with_columns(added)
        keep = keep.select([c for c in KEEP_LIST_COLUMNS if c in keep.columns])
    return keep


def read_scores(layout: OutputLayout, class_keys: list[str]) -> pl.DataFrame:
    """Per-image leading component scores and log-density of the given classes, with each
    class's label (`class_labels`: one per class partition, a split's classes apart)."""
    if not class_keys:
        return pl.DataFrame()
    names = class_labels(layout)
    paths = [_require(layout.spline_scores(k), "spline fit scores") for k in class_keys]
    kept = _held(paths, ["scores"] * len(paths))
    if kept is None:
        together = read_tables(paths, source="__source")
        if together is not None:
            label = {os.fspath(p): names[k] for p, k in zip(paths, class_keys, strict=True)}
            labels = pl.Series("class", by_file(together, "__source", label), dtype=pl.String)
            return together.drop("__source").with_columns(labels)
        kept = [
            STORED_READS.get(p, "scores", _read_parquet, lambda t: t.estimated_size())
            for p in paths
        ]
    labels = pl.Series("class", np.repeat([names[k] for k in class_keys], [f.height for f in kept]))
    return pl.concat(kept, how="vertical_relaxed").with_columns(labels.cast(pl.String))


def written_fit(path: Path, written: os.stat_result, provenance: dict, components: int) -> None:
    """A spline fit just written by this process (`class_density.write_class_density`):
    its provenance record and component count kept for this process's later reads of the
    file as written (`read_provenance`, `fit_components`)."""
    text = json.dumps(provenance, sort_keys=True)
    STORED_READS.put(path, written, "provenance", text, len(text) + 64)
    STORED_READS.put(path, written, "components", int(components), 64)


def written_catalog(
    layout: OutputLayout, key: str, written: os.stat_result, table: pl.DataFrame, summary: str
) -> None:
    """A class's catalog just written by this process (the class_images asset): its table
    and summary text kept for this process's later reads of the file as written
    (`read_class_images`, `class_summary`); `written` is the file's stat before its folder
    was swapped in (a folder's rename keeps its files' inodes). The class's latents read it
    next in the same run (a read of about 1 ms a small class); a table of more than
    HANDOVER_MAX_BYTES is left to be read."""
    path = layout.class_images(key)
    hand_over(path, written, f"catalog {key}", table, table.estimated_size())
    STORED_READS.put(path, written, "class summary", summary, len(summary) + 64)


def fit_components(layout: OutputLayout, key: str) -> int:
    """How many principal components a class's spline fit kept (each threshold's report
    asks for every class's: read once while the fit's file is the same)."""
    return STORED_READS.get(
        _require(layout.spline_fit(key), "spline fit"), "components", _components, lambda _: 64
    )


def _components(path: Path) -> int:
    with np.load(path) as fit:
        return int(fit["pca_variances"].shape[0])


def read_class_keep_lists(
    layout: OutputLayout, threshold: str, class_keys: list[str]
) -> pl.DataFrame:
    """The per-class keep lists of one threshold, concatenated in class order."""
    paths = [_require(layout.class_keep_list(threshold, k), "keep list") for k in class_keys]
    together = read_tables(paths)
    if together is not None:
        return _keep_list_columns(together)
    frames = [read_keep_list(p) for p in paths]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
