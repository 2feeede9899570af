"""A user's corrections of the keep decisions: `overrides.csv`, read, checked, and given to
the decision of each class it touches.

The file (written by the review page, or by hand) has the header `path,decision,other` and
one correction a line, UTF-8, quoted as CSV quotes (a path may hold commas, quotes or line
breaks). `path` and `other` are paths relative to the source folder, exactly as the keep
lists write them (`cats/img 1.png`). Decisions:

- `keep` X: X is kept at every threshold. It is kept where the greedy visits it, so images
  visited before it keep their decisions and images visited after it may be removed naming
  X (`core.decision.class_decision`); images that named X before still do.
- `remove` X: X is removed at every threshold (`match` is `override`). It is never kept, so
  no image names it: an image that named X is decided again, and names another kept image
  above the threshold or is kept. X names its most similar kept image when that pair is
  above the threshold (an identical copy first), else nothing (`duplicate_of` empty).
- `not_duplicate` X, Y (`other` = Y): the pair is no duplicate edge, in either direction and
  at any threshold, even for pixel-identical files; each is decided without it (it may still
  be removed naming another kept image, or be kept). A pair of two classes is accepted and
  changes no keep list (cross-class pairs never remove an image); `cross_class_pairs` lists
  them for the cross-class table.

An exact-copy group keeps one member unless an override says otherwise. Every row an
override names has `decided_by = override` in the keep list (`exact` for a pixel-identical
copy removed, `model` for the rest). Whenever its class is decided, such a row is decided
again, never carried from the earlier keep list (`class_keep_lists.prior_decisions`), and so
is every image that named it: no earlier decision outweighs an override, and an override
taken out of the file is undone by the next run of its class (its images are decided
against the decisions carried, which may differ from those before the override).

Refused, with the file and the line (the first line of a record that spans several): a
header other than `path,decision,other`, a line without exactly three fields, text that is
not UTF-8, an unknown decision, `not_duplicate` without `other` or `other` with another
decision, a path that is empty, absolute, holds `..`, `.` or an empty part, is not
`<class>/<image>`, or resolves outside the source (a link inside the source pointing out),
an image marked not a duplicate of itself, and one path given `keep` on one line and
`remove` on another (the same line twice is fine). `read_overrides` checks all this before
any work; `check_known` refuses a path that is no image of the catalog, or a file that was
catalogued but not read as an image, once the catalog is built.

Recomputation. Each class with corrections gets a digest of its own corrections (order and
line numbers aside) in its keep lists' provenance (`core.data.artifacts.keep_provenance`), so
exactly the classes whose corrections changed are stale; a class without any keeps the
provenance it had before overrides existed. Nothing upstream (latents, fits, the model)
depends on the overrides.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from dedup_assets.core.data.artifacts import digest, read_catalog, read_classes
from dedup_assets.core.data.layout import OVERRIDES_FILE as OVERRIDES_FILE  # re-exported
from dedup_assets.core.data.layout import OutputLayout
from dedup_assets.core.decision.class_decision import Corrections

COLUMNS = ("path", "decision", "other")
DECISIONS = ("keep", "remove", "not_duplicate")
KEEP, REMOVE, NOT_DUPLICATE = DECISIONS


class OverridesError(ValueError):
    """An overrides file that cannot be used; the message names the file and the line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        more = len(self.problems) - 1
        super().__init__(self.problems[0] + (f" (and {more} more problems)" if more > 0 else ""))


@dataclass(frozen=True)
class Override:
    """One line of the file: where it is, the image, the decision, the pair's other image."""

    line: int
    path: str
    decision: str
    other: str = ""


@dataclass(frozen=True)
class ClassOverrides:
    """The corrections of one class: what its decision needs, and their digest."""

    keep: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    not_duplicate: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keep or self.remove or self.not_duplicate)

    @property
    def digest(self) -> str:
        """What the class's keep lists record they were decided with ("" for none)."""
        if not self:
            return ""
        return digest(
            {
                "keep": list(self.keep),
                "remove": list(self.remove),
                "not_duplicate": [list(p) for p in self.not_duplicate],
            }
        )

    def named(self) -> set[str]:
        """Every path a correction of the class names."""
        return {*self.keep, *self.remove, *(p for pair in self.not_duplicate for p in pair)}

    def corrections(self, paths: Sequence[str]) -> Corrections:
        """The corrections as indices of the class's images, given in `paths` order."""
        at = {p: i for i, p in enumerate(paths)}
        missing = sorted(self.named() - set(at))
        if missing:
            raise ValueError(
                f"overrides name {len(missing)} images the class's latents do not hold "
                f"(e.g. {missing[0]}): materialize class_latents for this class first"
            )
        return Corrections.of(
            [at[p] for p in self.keep],
            [at[p] for p in self.remove],
            [(at[a], at[b]) for a, b in self.not_duplicate],
        )


@dataclass(frozen=True)
class Overrides:
    """A checked overrides file. `check_known` gives each path its class (from the catalog);
    `for_class` and `digests` need it."""

    file: Path
    rows: tuple[Override, ...]
    class_of: Mapping[str, str] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.rows)

    def paths(self) -> set[str]:
        """Every path the file names (`path` and `other`)."""
        return {p for r in self.rows for p in (r.path, r.other) if p}

    def _classes(self) -> Mapping[str, str]:
        if self.class_of is None:
            raise ValueError(f"{self.file}: check the overrides against the catalog first")
        return self.class_of

    def for_class(self, class_key: str) -> ClassOverrides:
        """The corrections of one class (partition key); empty when it has none."""
        of = self._classes()
        keep, remove, pairs = set(), set(), set()
        for r in self.rows:
            if of[r.path] != class_key:
                continue
            if r.decision == KEEP:
                keep.add(r.path)
            elif r.decision == REMOVE:
                remove.add(r.path)
            elif of[r.other] == class_key:
                pairs.add((min(r.path, r.other), max(r.path, r.other)))
        return ClassOverrides(tuple(sorted(keep)), tuple(sorted(remove)), tuple(sorted(pairs)))

    def classes(self) -> list[str]:
        """The classes whose decisions the file changes, sorted."""
        of = self._classes()
        keys = {
            of[r.path]
            for r in self.rows
            if r.decision != NOT_DUPLICATE or of[r.path] == of[r.other]
        }
        return sorted(keys)

    def digests(self) -> dict[str, str]:
        """{class key: digest of its corrections} for every class with corrections: what
        `CurrentInputs.of(..., override_digests=...)` takes."""
        return {k: self.for_class(k).digest for k in self.classes()}

    def cross_class_pairs(self) -> list[tuple[str, str]]:
        """`not_duplicate` pairs of two classes (they change no keep list), sorted pairs."""
        of = self._classes()
        pairs = {
            (min(r.path, r.other), max(r.path, r.other))
            for r in self.rows
            if r.decision == NOT_DUPLICATE and of[r.path] != of[r.other]
        }
        return sorted(pairs)


def without_pairs(
    table: pl.DataFrame, pairs: Sequence[tuple[str, str]], a: str = "path_a", b: str = "path_b"
) -> pl.DataFrame:
    """`table` less its rows whose paths (columns `a`, `b`, either order) form one of
    `pairs`: the cross-class pairs marked not a duplicate."""
    if not pairs or table.is_empty():
        return table
    lo, hi = pl.min_horizontal(a, b), pl.max_horizontal(a, b)
    marked = pl.DataFrame(
        {"_lo": [p[0] for p in pairs], "_hi": [p[1] for p in pairs]},
        schema={"_lo": pl.String, "_hi": pl.String},
    )
    return (
        table.with_columns(lo.alias("_lo"), hi.alias("_hi"))
        .join(marked, on=["_lo", "_hi"], how="anti", maintain_order="left")
        .drop("_lo", "_hi")
    )


def overrides_path(output: Path, given: str | Path | None = None) -> Path | None:
    """The overrides a run honours: the file given (which must exist), else
    `<output>/overrides.csv` when there is one, else None."""
    if given:
        path = Path(given).expanduser().resolve()
        if not path.is_file():
            raise OverridesError([f"overrides file {path} does not exist"])
        return path
    default = OutputLayout(Path(output)).overrides
    return default if default.is_file() else None


# ---------------------------------------------------------------------------- reading


def _path_problem(text: str, root: Path | None) -> str:
    """Why `text` cannot name an image below `root` ("" when it can; without `root`, the
    links are not followed)."""
    if not text:
        return "no path"
    if "\x00" in text:
        return f"{text!r} holds a NUL character"
    if text.startswith("/") or PurePosixPath(text).is_absolute():
        return f"{text!r} is absolute: give the path relative to the source, as the keep list does"
    parts = text.split("/")
    if ".." in parts:
        return f"{text!r} holds '..': give the path relative to the source, as the keep list does"
    if "." in parts or "" in parts:
        return f"{text!r} is not written as the keep list writes it (a '.' or an empty part)"
    if len(parts) < 2:
        return f"{text!r} is not <class>/<image>"
    if root is None:
        return ""
    top = root.resolve()
    try:
        inside = (top / text).resolve().is_relative_to(top)
    except (OSError, RuntimeError):  # a link loop
        inside = False
    if not inside:
        return f"{text!r} resolves outside the source {top} (a link out of it)"
    return ""


def read_overrides(path: Path | str, source_root: Path | str | None) -> Overrides:
    """Read and check an overrides file (see the module docstring); raises OverridesError
    naming the file and the line of every problem (the first in the message). Without
    `source_root` the paths are checked as text only (no link followed): for readers that
    need the digests, not the decision."""
    path = Path(path)
    root = Path(source_root) if source_root is not None else None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OverridesError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise OverridesError([f"{path}, line {line}: not UTF-8 text"]) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    problems: list[str] = []
    rows: list[Override] = []
    seen: dict[str, Override] = {}
    start = 1  # the first line of the record read next
    header = False
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            at = f"{path}, line {line}"
            if not header:
                if tuple(fields) != COLUMNS:
                    shown = ",".join(fields) or "(empty)"
                    raise OverridesError(
                        [f"{at}: the header is {shown}; it must be exactly path,decision,other"]
                    )
                header = True
                continue
            problem = _row_problem(fields, root)
            if problem:
                problems.append(f"{at}: {problem}")
                continue
            if not fields:
                continue  # a blank line
            name, decision, other = fields
            if decision != NOT_DUPLICATE:
                before = seen.setdefault(name, Override(line, name, decision))
                if before.decision != decision:
                    problems.append(
                        f"{at}: {name!r} is given {decision} here and {before.decision} on "
                        f"line {before.line}"
                    )
                    continue
            rows.append(Override(line, name, decision, other))
    except csv.Error as exc:
        problems.append(f"{path}, line {reader.line_num}: malformed CSV ({exc})")
    if not header and not problems:
        raise OverridesError([f"{path}, line 1: empty; the first line must be path,decision,other"])
    if problems:
        raise OverridesError(problems)
    return Overrides(path, tuple(rows))


def _row_problem(fields: list[str], root: Path | None) -> str:
    """What is wrong with one record after the header ("" when nothing)."""
    if not fields:
        return ""
    if len(fields) != len(COLUMNS):
        return (
            f"{len(fields)} fields, expected 3 (path,decision,other; quote a path that holds "
            "a comma)"
        )
    name, decision, other = fields
    if decision not in DECISIONS:
        return f"unknown decision {decision!r}; use keep, remove or not_duplicate"
    if decision == NOT_DUPLICATE and not other:
        return "not_duplicate needs the pair's other image in 'other'"
    if decision != NOT_DUPLICATE and other:
        return f"'other' is only for not_duplicate, not for {decision}"
    for p in (name, other) if decision == NOT_DUPLICATE else (name,):
        wrong = _path_problem(p, root)
        if wrong:
            return wrong
    if name == other:
        return f"{name!r} is marked not a duplicate of itself"
    return ""


def check_known(overrides: Overrides, catalog: pl.DataFrame) -> Overrides:
    """The overrides with each path's class, refused (OverridesError, with the line) when a
    path is no image of `catalog` (columns path, class_key, status, reason) or a file the
    catalog did not read as an image."""
    table = catalog.filter(pl.col("path").is_in(sorted(overrides.paths())))
    entries = {
        p: (key, status, reason)
        for p, key, status, reason in table.select(
            "path", "class_key", "status", "reason"
        ).iter_rows()
    }
    problems = []
    for r in overrides.rows:
        for p in (r.path, r.other):
            if not p:
                continue
            at = f"{overrides.file}, line {r.line}"
            if p not in entries:
                problems.append(f"{at}: {p!r} is no image of the source's catalog")
            elif entries[p][1] != "ok":
                problems.append(
                    f"{at}: {p!r} was not read as an image ({entries[p][2] or entries[p][1]}), "
                    "so it has no decision to correct"
                )
    if problems:
        raise OverridesError(problems)
    return Overrides(overrides.file, overrides.rows, {p: e[0] for p, e in entries.items()})


def check_known_in(overrides: Overrides, layout: OutputLayout) -> Overrides:
    """`check_known` against the catalogs of the output folder, reading only the classes the
    paths can lie in (an image's class is its top folder)."""
    keys = read_classes(layout).select("class", "class_key")
    if any("." in k for k in keys["class_key"].to_list()):  # <split>/<class>/<image> paths
        return check_known(overrides, read_catalog(layout))
    wanted = {p.split("/", 1)[0] for p in overrides.paths()}
    by_name = keys.filter(pl.col("class").is_in(sorted(wanted)))["class_key"].to_list()
    return check_known(overrides, read_catalog(layout, sorted(by_name)))


def load_known_overrides(
    output: Path, source_root: Path | None, given: str | Path | None = None
) -> Overrides | None:
    """The overrides of a run (`overrides_path`), read, checked and bound to the catalog's
    classes; None without a file. What an asset calls before deciding or reading keep lists."""
    path = overrides_path(output, given)
    if path is None:
        return None
    return check_known_in(read_overrides(path, source_root), OutputLayout(output))
