"""What the last successful `dedup run` of an output folder ran on, so that a rerun with
nothing new can say so without starting the pipeline (issue 23: "a rerun with nothing new:
under 3 s plus listing the source").

A rerun of `dedup run` spends most of its time before it can tell that nothing changed:
importing Dagster and torch (5.5 s of a 9.9 s rerun on EuroSAT's 27,000 images, 2 cores),
opening the instance, reading each stored table's provenance. This module decides from
the file system alone, importing neither Dagster, torch, polars nor matplotlib:

- `RunInputs`: digests of everything a run's results depend on: the command's options as
  written (paths resolved), the source's listing (`image_folder.scan_image_folder`, the
  scan the catalog is built from: path, size and modification time of every image, every
  skipped entry with its reason: one `stat` per file, no file read), the content of the
  overrides and ground-truth files, the project's code and the installed packages.
- `outputs_digest`: size and modification time of every file the run left in the output
  folder, except the instance (`.dagster`), the lock, the user's `overrides.csv` (an input,
  digested by content) and the images of the clean copies (`clean/<T>/<class>/...`: like
  the full check, `artifacts.stale_thresholds`, only each copy's manifest is looked at).
  A run started from the UI, a deleted or rewritten output, changes it.
- `LastRun`: both digests, when the run finished, its exit status and its last screen,
  written atomically by the CLI at the end of a run that finished with exit status 0
  (`runner.run_pipeline` calls it while it still holds the output's lock), and discarded
  by every run as it starts, so a run that fails, is interrupted or is held by a gate
  leaves none.

A rerun whose inputs and outputs digest the same prints the stored last screen and exits
with the stored status; any difference, an unreadable record, or any doubt (an option
abbreviated, `--verify`, `--full`, `--retrain`, `--force`) takes the full path.
What it cannot see is what the full check cannot see either: a file rewritten in place
with the same size and modification time (`--verify` reads every file).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dedup_assets.core.data.image_folder import (
    OWN_ROOT_FILES,
    FolderScan,
    ImageFile,
    scan_image_folder,
)
from dedup_assets.core.data.layout import OVERRIDES_FILE, PREDECODE, WATCH_SOCKET, OutputLayout

FINGERPRINT_FILE = ".latent-dedup-last-run.json"
"""Beside the outputs: what the last successful run ran on (`LastRun`)."""
FILE_VERSION = 1
# Not outputs of a run: the instance, the lock, this record, the user's corrections (an
# input, digested by content) and the demo's source.
_NOT_OUTPUTS = frozenset(
    {".dagster", ".lock", FINGERPRINT_FILE, OVERRIDES_FILE, WATCH_SOCKET, "demo_dataset"}
)
_CLEAN = "clean"
_PROJECT_PACKAGES = ("dedup_assets", "resources")


def fingerprint_path(output: Path | str) -> Path:
    """Where an output folder's `LastRun` is kept."""
    return OutputLayout(Path(output)).root / FINGERPRINT_FILE


def _sha1(parts: Iterable[bytes]) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part)
    return h.hexdigest()


# ---------------------------------------------------------------------------- inputs


def listing_digest(root: Path | str, *, include_hidden: bool = False) -> str:
    """The source as the catalog lists it (`scan_image_folder`): every class folder, every
    image file's path, size and modification time, every skipped entry and its reason."""
    return _listing(root, include_hidden)[0]


def file_lines(files: Iterable[ImageFile]) -> bytes:
    """The listing digest's lines of these image files, in their order (`_listing`); a
    live listing keeps each class folder's (`live_listing`)."""
    return b"".join(b"f\0%s\0%d\0%d\n" % (f.raw_path, f.size, f.mtime_ns) for f in files)


def _listing(
    root: Path | str,
    include_hidden: bool,
    scan: FolderScan | None = None,
    lines: bytes | None = None,
) -> tuple[str, tuple[int, ...]]:
    """`listing_digest`, and the number of image files of each class folder (of `scan`,
    the root's `scan_image_folder` with `include_hidden`, when given; `lines`: its files'
    `file_lines`, when the caller kept them)."""
    if scan is None:
        scan = scan_image_folder(root, include_hidden=include_hidden)
    sizes = Counter(f.class_key for f in scan.files)

    def parts() -> Iterator[bytes]:
        for key in sorted(scan.raw_classes):
            yield b"c\0%s\0%s\n" % (key.encode(), scan.raw_classes[key])
        yield file_lines(scan.files) if lines is None else lines
        for s in scan.skipped:
            yield b"s\0%s\0%s\n" % (s.raw_path, s.reason.encode("utf-8"))

    return _sha1(parts()), tuple(sizes[key] for key in sorted(scan.classes))


def content_digest(path: Path | str | None) -> str:
    """sha1 of a file's bytes; "absent" when there is no such file (or no path)."""
    if not path:
        return "absent"
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha1").hexdigest()
    except FileNotFoundError:
        return "absent"


def _package_dirs() -> list[Path]:
    """The folders of the project's packages, found without importing them."""
    from importlib.util import find_spec

    dirs = []
    for name in _PROJECT_PACKAGES:
        spec = find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"package {name} not found")
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def code_digest() -> str:
    """The project's code: path and bytes of every file of its packages (caches aside),
    so an edit to any module (a default, a rule) makes earlier results suspect."""

    def parts() -> Iterator[bytes]:
        for folder in _package_dirs():
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                for name in sorted(filenames):
                    if name.endswith((".pyc", ".pyo")):
                        continue
                    path = Path(dirpath, name)
                    yield os.fsencode(path.relative_to(folder.parent)) + b"\0"
                    yield hashlib.sha1(path.read_bytes()).digest()

    return _sha1(parts())


def environment_digest() -> str:
    """The interpreter's version and every installed distribution with its version (the
    `*.dist-info` names of each site-packages folder: one directory listing each)."""
    names = [sys.version]
    for entry in sys.path:
        if os.path.basename(entry) in ("site-packages", "dist-packages") and os.path.isdir(entry):
            names += sorted(n for n in os.listdir(entry) if n.endswith(".dist-info"))
    return _sha1(n.encode() + b"\n" for n in names)


@dataclass(frozen=True)
class RunInputs:
    """Digests of what a run's results depend on, by part; `digest` covers them all."""

    parts: Mapping[str, str]
    # Image files per class folder as listed (not part of the digest): what `dedup run`
    # decides its executor from before anything heavy is imported (`engines.resolve_auto`).
    class_sizes: tuple[int, ...] = field(default=(), compare=False)

    @classmethod
    def of(
        cls,
        options: Mapping[str, Any],
        *,
        source: Path,
        output: Path,
        include_hidden: bool,
        files: Mapping[str, Path | None],
        scan: FolderScan | None = None,
        lines: bytes | None = None,
    ) -> RunInputs:
        """The inputs of `dedup run` with these `options` (as written, paths resolved):
        the source's listing (`scan`: its `scan_image_folder` with `include_hidden`, taken
        already; `lines`: its files' `file_lines`, kept by a live listing) and its own files (`OWN_ROOT_FILES`: its ground truth), the `files` the
        run reads by content (overrides, a ground truth given), the code and the installed
        packages."""
        files = {**files, **{f"source {n}": source / n for n in OWN_ROOT_FILES}}
        listing, sizes = _listing(source, include_hidden, scan, lines)
        return cls(
            {
                "options": _sha1([json.dumps(dict(options), sort_keys=True).encode()]),
                "source": listing,
                **{f"file {name}": content_digest(path) for name, path in sorted(files.items())},
                "code": code_digest(),
                "packages": environment_digest(),
                "output": str(output),
            },
            sizes,
        )

    @property
    def digest(self) -> str:
        return _sha1([json.dumps(dict(self.parts), sort_keys=True).encode()])


# ---------------------------------------------------------------------------- outputs


def _output_stats(root: Path) -> Iterator[bytes]:
    """(relative path, size, modification time) of every output file, in path order."""
    root_b = os.fsencode(root)

    def walk(folder: bytes, rel: bytes, depth: int) -> Iterator[bytes]:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            if depth == 0 and (
                os.fsdecode(name) in _NOT_OUTPUTS or name.startswith(PREDECODE.encode())
            ):
                continue
            path_rel = rel + b"/" + name if rel else name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                # clean/<T>/<class>/...: the copied images, not looked at (see the docstring)
                if not (depth == 2 and rel.startswith(_CLEAN.encode() + b"/")):
                    yield from walk(entry.path, path_rel, depth + 1)
            else:
                yield b"%s\0%d\0%d\n" % (path_rel, st.st_size, st.st_mtime_ns)

    yield from walk(root_b, b"", 0)


def outputs_digest(output: Path | str) -> str:
    """Size and modification time of every file a run left in `output` (see the module
    docstring for what is left out); a file added, removed, rewritten or touched changes it."""
    return _sha1(_output_stats(Path(output)))


# ---------------------------------------------------------------------------- the record


@dataclass
class LastRun:
    """What the last successful run of an output folder ran on, and its last screen."""

    inputs: str
    parts: dict[str, str]
    outputs: str
    finished_at: str
    exit_status: int
    report: list[str] = field(default_factory=list)
    version: int = FILE_VERSION

    @classmethod
    def read(cls, output: Path | str) -> LastRun | None:
        """The record of `output`, or None when there is none or it cannot be read."""
        try:
            data = json.loads(fingerprint_path(output).read_text(encoding="utf-8"))
            if data.get("version") != FILE_VERSION:
                return None
            return cls(**data)
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def differs(self, inputs: RunInputs, output: Path | str) -> str | None:
        """Why a run with `inputs` could compute something else than this one left in
        `output` (the first difference found, in words), or None when nothing could."""
        if inputs.digest != self.inputs:
            return "changed since the last run: " + changed_parts(inputs.parts, self.parts)
        try:
            now = outputs_digest(output)
        except OSError:  # a file went while it was listed: a run or a user at work there
            now = None
        if now != self.outputs:
            return "an output was added, removed or rewritten since the last run"
        return None

    @property
    def finished(self) -> str:
        """When the run finished, for a person."""
        try:
            return datetime.fromisoformat(self.finished_at).strftime("%Y-%m-%d %H:%M:%S")
        except ValueError:
            return self.finished_at


_WORDS = {
    "options": "the options",
    "source": "the source's files",
    "file overrides": "the overrides file",
    "file output overrides": "the output's overrides.csv",
    "file ground_truth": "the ground truth file",
    **{f"file source {n}": f"the source's {n}" for n in OWN_ROOT_FILES},
    "code": "latent-dedup's code",
    "inputs recorded": "what a run records (an earlier version's record)",
    "packages": "the installed packages",
    "output": "the output folder",
}


def changed_parts(now: Mapping[str, str], before: Mapping[str, str]) -> str:
    """Which inputs differ between two `RunInputs.parts`, in words ("the source's files")."""
    changed = [k for k, v in now.items() if k in before and before[k] != v]
    if set(now) != set(before):  # a record of another version's inputs
        changed.append("inputs recorded")
    return ", ".join(_WORDS.get(k, k) for k in changed)


def record_run(
    inputs: RunInputs, output: Path | str, exit_status: int, report: list[str]
) -> LastRun:
    """Write the record of a run that has written every output (atomically: a reader sees
    the old record or the new one)."""
    # atomic_io imports polars and numpy for its table writers (0.3 s): deferred so that
    # reading a record, the fast path, does not pay for it.
    from dedup_assets.core.data.atomic_io import write_json

    last = LastRun(
        inputs=inputs.digest,
        parts=dict(inputs.parts),
        outputs=outputs_digest(output),
        finished_at=datetime.now().astimezone().isoformat(timespec="seconds"),
        exit_status=exit_status,
        report=list(report),
    )
    write_json(asdict(last), fingerprint_path(output))
    return last


def output_in_use(output: Path | str) -> bool:
    """Whether a run holds the output folder's lock now (`runner.output_lock`)."""
    try:
        fd = os.open(OutputLayout(Path(output)).lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released as it is closed
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def discard_record(output: Path | str) -> None:
    """Forget the last run's record: a run is starting and may change the outputs."""
    fingerprint_path(output).unlink(missing_ok=True)
