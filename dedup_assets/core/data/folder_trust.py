"""Folders known to hold exactly a given set of files without looking at the files again:
verified once (every entry stat'ed), then kept known unchanged by the kernel's change events
(`dir_events`), for `dedup watch`, whose next update would otherwise stat every file of
every clean copy before reusing its folders (27,000 stats, about 0.1 s of a EuroSAT update).

A record is trusted only while nothing happened in its folder: any event there (a file
created, written, renamed, removed, its attributes changed; the folder removed) drops it, and
drops every record holding one of the same files through another hard link. A folder is not
trusted at all where a write could come without an event: on a filesystem that may not
report every change (`DirEvents.trusted`), or holding a file with a hard link outside the
verified folders (a write through that name reports nothing here). An overflowed event queue
drops everything. What events cannot show (a hard link made later elsewhere and written
through, a write through a shared memory map) is bounded by verifying each record again
when it is older than `REVERIFY_EVERY` seconds, as the watch lists its source in full once a
minute.

Only the process that opened the trust uses it (`active`): a process forked from it holds a
copy of its records and its event queue, and reading events there would take them from it.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from dedup_assets.core.data.dir_events import DirEvents

REVERIFY_EVERY = 60.0
"""Seconds after which a record is due to be verified again even though no event came from
its folder; one not verified again within twice that is no longer trusted."""

Expected = dict[bytes, tuple[int, int]]
"""A folder's expected files: name -> (size, modification time in ns)."""


@dataclass
class _Record:
    folder: tuple[int, int]  # the folder's (device, inode) when verified
    wd: int
    files: list[tuple[int, int]]  # each file's (device, inode)
    links: list[int]  # each file's link count
    at: float
    checked: bool = False  # its files' links counted (`link_check`)
    linked: set[Hashable] = field(default_factory=set)  # records sharing a file with it


class FolderTrust:
    """Records of verified folders, each under a key the caller chooses (what the folder
    was verified against: `unchanged` must be asked with the same key)."""

    def __init__(self, events: DirEvents, clock: Callable[[], float] = time.monotonic) -> None:
        self._events = events
        self._clock = clock
        self._records: dict[Hashable, _Record] = {}
        self._spoiled: set[Hashable] = set()  # records an event dropped, until verified again
        self._dirty = False  # a record dropped by an event since the last round (`pending`)
        self._pid = os.getpid()
        self.answered = 0  # folders `unchanged` vouched for, in all

    @classmethod
    def open(cls) -> FolderTrust | None:
        """A trust with an event queue of its own, or None where there is none."""
        events = DirEvents.open()
        return None if events is None else cls(events)

    def close(self) -> None:
        self._records.clear()
        self._spoiled.clear()
        self._events.close()

    def __len__(self) -> int:
        return len(self._records)

    def unchanged(self, folder: bytes, key: Hashable) -> bool:
        """Whether `folder` is the folder verified under `key` and nothing happened in it
        (or to a file it shares with another verified folder) since."""
        return self.vouch(folder, key) is True

    def vouch(self, folder: bytes, key: Hashable) -> bool | None:
        """True: `folder` is unchanged since it was verified under `key` (`unchanged`);
        False: something happened in it since (an event, even one a stat of its files would
        not show: other bytes of the same size with the time set back); None: not known."""
        if os.getpid() != self._pid:
            return None
        self._apply_events()
        if key in self._spoiled:
            return False
        record = self._records.get(key)
        if record is None or not record.checked:
            return None
        if self._clock() - record.at >= 2 * REVERIFY_EVERY:
            return None
        try:
            st = os.stat(folder, follow_symlinks=False)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != record.folder:
            return None
        self.answered += 1
        return True

    def verify(self, folder: bytes, key: Hashable, expected: Expected) -> bool:
        """Watch `folder`, then check that it holds exactly the `expected` regular files
        (names, sizes, times); True when it does. It is recorded under `key` (in place of
        what was) when it does and its changes can be seen; `link_check` must follow a
        round of `verify` calls before any record is trusted."""
        self.forget(key, tied=False)  # records tied to it were verified in this round, or will be
        self._spoiled.discard(key)
        if os.getpid() != self._pid:
            return holds_exactly(folder, expected) is not None
        try:
            st = os.stat(folder, follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        watchable = self._events.trusted(st.st_dev)
        # The watch first: a change made while the files are checked is an event, not lost.
        wd = self._events.watch(folder, key) if watchable else None
        found = holds_exactly(folder, expected)
        try:
            again = os.stat(folder, follow_symlinks=False)
        except OSError:
            again = None
        same = again is not None and (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino)
        if found is None or wd is None or not same:
            if wd is not None:
                self._events.unwatch([wd], key)
            return found is not None and same
        files, links = found
        self._records[key] = _Record((st.st_dev, st.st_ino), wd, files, links, self._clock())
        return True

    def link_check(self) -> None:
        """Drop each record holding a file with more hard links than the verified folders
        hold (one elsewhere can be written through without an event here); tie the others
        that share a file, so that an event in one drops them all."""
        held: dict[tuple[int, int], list[Hashable]] = {}
        for key, record in self._records.items():
            for inode in record.files:
                held.setdefault(inode, []).append(key)
        for key, record in list(self._records.items()):
            if any(n > len(held[i]) for i, n in zip(record.files, record.links, strict=True)):
                self.forget(key, tied=False)
        for record in self._records.values():
            record.linked.clear()
            record.checked = True
        for keys in held.values():
            if len(keys) > 1:
                for key in keys:
                    if key in self._records:
                        self._records[key].linked.update(k for k in keys if k != key)

    def due(self, key: Hashable) -> bool:
        """Whether `key` needs verifying: no record, or one older than REVERIFY_EVERY."""
        self._apply_events()
        record = self._records.get(key)
        return record is None or self._clock() - record.at >= REVERIFY_EVERY

    def pending(self) -> bool:
        """Whether an event dropped a record since the last `verify` round (`refresh_done`):
        one to verify again. Events of no record (a watch this trust removed, a folder that
        failed its check) are not: a folder that keeps failing is not checked at every
        slice of the watch's wait."""
        if self._events.readable():
            self._apply_events()
        return self._dirty

    def refresh_done(self) -> None:
        """A round of `verify` calls has ended: nothing pending until another event."""
        self._dirty = False

    def keep_only(self, keys: set) -> None:
        """Forget every record whose key is not in `keys` (folders gone, manifests replaced)."""
        for key in [k for k in self._records if k not in keys]:
            self.forget(key)
        self._spoiled &= keys

    def forget(self, key: Hashable, *, tied: bool = True) -> None:
        """Drop the record under `key`, and with it (`tied`) the records tied to it."""
        record = self._records.pop(key, None)
        if record is None:
            return
        self._events.unwatch([record.wd], key)
        if tied:
            for other in record.linked:
                self.forget(other)

    def _apply_events(self) -> None:
        events = self._events.read()
        if events is None:  # overflowed or unreadable: nothing is known
            self._dirty = self._dirty or bool(self._records)
            for key in list(self._records):
                self.forget(key)
            return
        for owners, _wd, _mask, _name in events:
            for key in owners:
                self._spoil(key)

    def _spoil(self, key: Hashable) -> None:
        """An event in the folder of `key`: its record, and those tied to it, dropped as
        changed."""
        record = self._records.get(key)
        if record is None:
            return
        self._spoiled.add(key)
        self._dirty = True
        self.forget(key, tied=False)
        for other in record.linked:
            self._spoil(other)


def holds_exactly(
    folder: bytes, expected: Expected, subfolders: frozenset[bytes] | set[bytes] = frozenset()
) -> tuple[list[tuple[int, int]], list[int]] | None:
    """Whether `folder` holds exactly the named regular files, each of its (size, time),
    beside the named `subfolders`: their (device, inode) and link counts when it does, else
    None."""
    files: list[tuple[int, int]] = []
    links: list[int] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in subfolders and entry.is_dir(follow_symlinks=False):
                    continue
                want = expected.get(entry.name)
                if want is None or not entry.is_file(follow_symlinks=False):
                    return None
                st = entry.stat(follow_symlinks=False)
                if (st.st_size, st.st_mtime_ns) != want:
                    return None
                files.append((st.st_dev, st.st_ino))
                links.append(st.st_nlink)
    except OSError:
        return None
    return (files, links) if len(files) == len(expected) else None


_ACTIVE: FolderTrust | None = None


def install(trust: FolderTrust | None) -> None:
    """Make `trust` the one `active` gives this process (None: none)."""
    global _ACTIVE
    _ACTIVE = trust


def active() -> FolderTrust | None:
    """The trust this process installed (never one inherited through a fork)."""
    trust = _ACTIVE
    return trust if trust is not None and trust._pid == os.getpid() else None
