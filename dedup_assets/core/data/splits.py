"""Splits of a dataset: `<root>/<split>/<class>/<image>` beside the plain `<root>/<class>/<image>`.

A source is split when its top folders are split names (`train`; `val`, `valid`,
`validation`; `test`; compared without case), or when the user names its splits
(`--splits train,val,test`). Each split is then an ImageFolder of its own, listed as one is
today (`image_folder.scan_image_folder` on the split's folder), and its classes are matched
across splits by their partition key (`image_folder.class_key` of the folder name), so
`train/cats` and `test/cats` are one class. A source without split folders is one implicit
training split whose classes are the top folders: everything works as before.

Roles: the training split is the one the model is trained on and that evaluation images
are compared against (`core.decision.leakage`); every other split is an evaluation split,
which nothing is trained on and whose images are never removed for a copy in train.

What is refused, with a message saying what to do: split folders mixed with other folders
at the top (`train/`, `test/` and `cats/`: is `cats` a class without a split, or a split?),
two folders for one split (`val/` and `validation/`), named splits that are missing, and a
split layout without a training split. What is accepted and reported (`SplitLayout.notes`):
an empty split, and a class present in some splits only (a test class the model never saw
is worth knowing; a training class without test images is common).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote, unquote_to_bytes

from dedup_assets.core.data.image_folder import (
    FolderScan,
    StrPath,
    _display,
    class_key,
    find_class_folder,
    root_entries,
    scan_class_folder,
    scan_image_folder,
)

TRAIN = "train"
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
"""Folder name (lower case) -> the split's canonical name."""
IMPLICIT = "all"
"""The name of the one split of a source without split folders."""
NO_SPLITS = ("none",)
"""`--splits none`: read the top folders as classes even when they are named like splits."""
AUTO = "auto"
"""`--splits auto` (the default): splits recognised by their folders' names."""
TRAINING_SPLITS = frozenset({TRAIN, IMPLICIT})
"""The names a training split has: `train`, or the implicit split of an unsplit source."""


class SplitRole(StrEnum):
    """train: the model is trained on it and evaluation images are compared with it;
    eval: validation and test images, never trained on, never removed for a leak."""

    train = "train"
    eval = "eval"


class SplitLayoutError(ValueError):
    """The source's top folders do not say unambiguously whether and how it is split."""


@dataclass(frozen=True)
class Split:
    """One split: its canonical name, the folder holding it (display and exact bytes; the
    root itself for the implicit split), its role, and its class folders by key."""

    name: str
    folder: str
    raw_folder: bytes
    role: SplitRole
    classes: dict[str, str] = field(default_factory=dict)  # class key -> display name

    @property
    def is_eval(self) -> bool:
        return self.role == SplitRole.eval


@dataclass(frozen=True)
class SplitLayout:
    """How a source is split: its splits (training first, then the evaluation splits in
    the order val, test, others by name), whether the split is implicit (no split
    folders), and notes on what was accepted but is worth saying."""

    root: str
    splits: tuple[Split, ...]
    implicit: bool
    notes: tuple[str, ...] = ()

    @property
    def train(self) -> Split:
        return next(s for s in self.splits if s.role == SplitRole.train)

    @property
    def eval_splits(self) -> tuple[Split, ...]:
        return tuple(s for s in self.splits if s.is_eval)

    @property
    def classes(self) -> dict[str, str]:
        """Every class key of any split -> its display name (the first split's spelling)."""
        out: dict[str, str] = {}
        for s in self.splits:
            for key, name in s.classes.items():
                out.setdefault(key, name)
        return dict(sorted(out.items()))

    def split(self, name: str) -> Split:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(f"no split {name!r}; the splits are {[s.name for s in self.splits]}")

    def split_root(self, name: str) -> bytes:
        """The folder to list as an ImageFolder for split `name` (exact bytes)."""
        s = self.split(name)
        root = os.fsencode(self.root)
        return root if self.implicit else os.path.join(root, s.raw_folder)

    def classes_only_in(self) -> dict[str, tuple[str, ...]]:
        """Class keys missing from some split -> the splits that hold them (empty when
        every class is in every split, or the split is implicit)."""
        if len(self.splits) < 2:
            return {}
        names = [s.name for s in self.splits]
        out = {}
        for key in self.classes:
            holders = tuple(s.name for s in self.splits if key in s.classes)
            if len(holders) < len(names):
                out[key] = holders
        return out


def split_class_key(split: str, key: str) -> str:
    """A partition key for one class of one split: `<split>.<class key>`. Class keys never
    hold `.` (`image_folder.class_key` encodes it, and the split's name is encoded the same
    way), so the key splits back unambiguously (`key_split`); the implicit split keeps the
    plain class key, so unsplit sources keep their keys."""
    return key if split == IMPLICIT else f"{class_key(split)}.{key}"


def key_split(key: str) -> tuple[str, str]:
    """A class partition key -> (its split's name, its class key): the inverse of
    `split_class_key` (a key without `.` is a class of the implicit split)."""
    split, dot, rest = key.partition(".")
    return (unquote(split), rest) if dot else (IMPLICIT, key)


def class_label(split: str, name: str) -> str:
    """How a class partition is named where classes of every split are listed together (the
    kurtosis report's rows): the class's name, `<split>/<class>` for a split's class."""
    return name if split == IMPLICIT else f"{split}/{name}"


def key_label(key: str) -> str:
    """A class partition key as a user names the class (`class_label` of its split and
    folder name): `class%20with%20space` is `class with space`; a long name's hashed key
    shows its kept prefix and `…`."""
    split, key_of_class = key_split(key)
    prefix, hashed, _ = key_of_class.partition("~")
    name = _display(unquote_to_bytes(prefix)) + ("…" if hashed else "")
    return class_label(split, name)


def is_training_key(key: str) -> bool:
    """Whether a class partition holds training images (the model is trained on them)."""
    return key_split(key)[0] in TRAINING_SPLITS


def parse_split_names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`--splits` as given: None (detect; also `auto`), () for `none` (no splits), or the
    folder names in order (`"train,val,test"`, blanks dropped). Repeated names are refused."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    if [n.lower() for n in names] in ([], list(NO_SPLITS)):
        return ()
    lowered = [n.lower() for n in names]
    repeated = sorted({n for n in lowered if lowered.count(n) > 1})
    if repeated:
        raise SplitLayoutError(f"--splits names {', '.join(repeated)} more than once")
    return tuple(names)


def _top_folders(root: StrPath, include_hidden: bool) -> dict[bytes, str]:
    """The folders (or links to folders) directly in root: exact name -> display name."""
    root_b = os.fsencode(root)
    shown = root_b.decode("utf-8", "backslashreplace")
    if not os.path.isdir(root_b):
        raise NotADirectoryError(f"image source {shown} is not a directory")
    out = {}
    with os.scandir(root_b) as entries:
        for entry in entries:
            if entry.name.startswith(b".") and not include_hidden:
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                continue
            if is_dir:
                out[entry.name] = entry.name.decode("utf-8", "backslashreplace")
    return dict(sorted(out.items()))


def _class_folders(folder: bytes, include_hidden: bool) -> dict[str, str]:
    return {class_key(raw): shown for raw, shown in _top_folders(folder, include_hidden).items()}


def _order(name: str) -> tuple[int, str]:
    return ({"train": 0, "val": 1, "test": 2}.get(name, 3), name)


def detect_splits(
    root: StrPath,
    splits: str | Sequence[str] | None = None,
    *,
    include_hidden: bool = False,
) -> SplitLayout:
    """How `root` is split (module doc): by its top folders' names, or by `splits` (the
    folder names, `--splits`; "none" for no splits).

    Named splits: each must be a top folder (matched exactly, else without case); the one
    named like a training split is the training split, else the first named; every other
    top folder is refused. Raises `SplitLayoutError` for an ambiguous or incomplete layout.
    """
    named = parse_split_names(splits)
    root_s = os.fsdecode(os.fsencode(root))
    top = _top_folders(root, include_hidden)
    root_b = os.fsencode(root)
    if named == ():
        return _implicit(root_s, top)
    if named is None:
        recognised = {
            raw: SPLIT_ALIASES[s.lower()] for raw, s in top.items() if s.lower() in SPLIT_ALIASES
        }
        if not recognised:
            return _implicit(root_s, top)
        others = [s for raw, s in top.items() if raw not in recognised]
        if others:
            raise SplitLayoutError(
                f"{root_s} mixes split folders ({', '.join(top[r] for r in recognised)}) with "
                f"other folders ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}) "
                "at its top: put every class folder inside a split folder, move the other "
                "folders out, or name the splits with --splits (--splits none reads every top "
                "folder as a class)"
            )
        canonical = recognised
    else:
        canonical = _named(root_s, top, named)
    by_split: dict[str, list[bytes]] = {}
    for raw, name in canonical.items():
        by_split.setdefault(name, []).append(raw)
    clashes = {n: f for n, f in by_split.items() if len(f) > 1}
    if clashes:
        name, folders = next(iter(sorted(clashes.items())))
        shown = " and ".join(top[f] for f in folders)
        raise SplitLayoutError(
            f"{root_s}: {shown} are both the {name} split: merge them or rename one "
            "(or name the splits with --splits)"
        )
    if TRAIN not in by_split:
        raise SplitLayoutError(
            f"{root_s} has the split folders {', '.join(top[r] for r in canonical)} but no "
            "training split: add train/ (the model is trained on it and evaluation images are "
            "checked against it), or name the splits with --splits, the training split first"
        )
    out = []
    for name, (raw,) in sorted(by_split.items(), key=lambda kv: _order(kv[0])):
        classes = _class_folders(os.path.join(root_b, raw), include_hidden)
        role = SplitRole.train if name == TRAIN else SplitRole.eval
        out.append(Split(name, top[raw], raw, role, classes))
    layout = SplitLayout(root_s, tuple(out), False)
    return SplitLayout(root_s, tuple(out), False, _notes(layout))


def _implicit(root: str, top: dict[bytes, str]) -> SplitLayout:
    classes = {class_key(raw): shown for raw, shown in top.items()}
    split = Split(IMPLICIT, root, os.fsencode(root), SplitRole.train, classes)
    return SplitLayout(root, (split,), True)


def _named(root: str, top: dict[bytes, str], named: tuple[str, ...]) -> dict[bytes, str]:
    """Named split folders -> canonical split names (module doc of `detect_splits`)."""
    found: dict[bytes, str] = {}
    missing = []
    for name in named:
        exact = [raw for raw, shown in top.items() if shown == name]
        loose = [raw for raw, shown in top.items() if shown.lower() == name.lower()]
        pick = exact or loose
        if len(pick) != 1:
            missing.append(name if not pick else f"{name} (several folders differ only in case)")
            continue
        found[pick[0]] = name
    if missing:
        raise SplitLayoutError(
            f"{root}: --splits names {', '.join(missing)}, not a folder at its top "
            f"(its folders: {', '.join(top.values()) or 'none'})"
        )
    others = [shown for raw, shown in top.items() if raw not in found]
    if others:
        raise SplitLayoutError(
            f"{root}: the folders {', '.join(others[:5])} at its top are not among the splits "
            f"named ({', '.join(named)}): name them too, or move them out"
        )
    trains = [raw for raw, n in found.items() if SPLIT_ALIASES.get(n.lower()) == TRAIN]
    train_raw = trains[0] if trains else next(iter(found))  # else the first named
    out = {}
    for raw, name in found.items():
        if raw == train_raw:
            out[raw] = TRAIN
        else:
            canon = SPLIT_ALIASES.get(name.lower(), name.lower())
            out[raw] = name.lower() if canon == TRAIN else canon
    return out


def _notes(layout: SplitLayout) -> tuple[str, ...]:
    notes = []
    for s in layout.splits:
        if not s.classes:
            notes.append(f"split {s.name} ({s.folder}) holds no class folder")
    for key, holders in layout.classes_only_in().items():
        notes.append(f"class {layout.classes[key]} is only in {', '.join(holders)}")
    return tuple(notes)


def scan_source(root: StrPath, layout: SplitLayout, *, include_hidden: bool = False) -> FolderScan:
    """The whole source as one scan, every path relative to `root` (the split's folder
    included) and each (split, class) its own class partition (`split_class_key`); entries
    of the root that are not split folders are skipped with their reason. An unsplit source
    is scanned exactly as before (`image_folder.scan_image_folder`). The layout's notes
    travel with the scan."""
    if layout.implicit:
        scan = scan_image_folder(root, include_hidden=include_hidden)
        return FolderScan(scan.files, scan.skipped, scan.classes, scan.raw_classes, layout.notes)
    files, skipped = [], root_entries(root, include_hidden=include_hidden)
    classes: dict[str, str] = {}
    raw_classes: dict[str, bytes] = {}
    for s in layout.splits:
        part = scan_image_folder(
            root,
            include_hidden=include_hidden,
            within=s.raw_folder,
            key_of=lambda key, name=s.name: split_class_key(name, key),
        )
        files += part.files
        skipped += part.skipped
        classes |= part.classes
        raw_classes |= part.raw_classes
    files.sort(key=lambda f: f.raw_path)
    skipped.sort(key=lambda s: s.raw_path)
    order = sorted(classes)
    return FolderScan(
        files,
        skipped,
        {k: classes[k] for k in order},
        {k: raw_classes[k] for k in order},
        layout.notes,
    )


def scan_class(
    root: StrPath, layout: SplitLayout, key: str, *, include_hidden: bool = False
) -> FolderScan | None:
    """One class partition's folder listed again (`scan_source`'s listing of it), or None
    when no folder of the source has that key now."""
    split_name, own_key = key_split(key)
    if layout.implicit:
        if split_name != IMPLICIT:
            return None
        within = b""
    else:
        try:
            split = layout.split(split_name)
        except KeyError:
            return None
        if split_class_key(split.name, own_key) != key:  # not the key this split's class has
            return None
        within = split.raw_folder
    raw = find_class_folder(root, own_key, include_hidden=include_hidden, within=within)
    if raw is None:
        return None
    return scan_class_folder(root, raw, include_hidden=include_hidden, within=within, key=key)


def scan_splits(layout: SplitLayout, *, include_hidden: bool = False) -> dict[str, FolderScan]:
    """Each split listed as the ImageFolder it is (`image_folder.scan_image_folder` on its
    folder): split name -> its scan, file paths relative to the split's folder."""
    return {
        s.name: scan_image_folder(layout.split_root(s.name), include_hidden=include_hidden)
        for s in layout.splits
    }
