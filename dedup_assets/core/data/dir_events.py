"""What changed in watched folders, from the kernel's change events (Linux inotify, through
ctypes: no dependency), for `live_listing` to look again only there.

A folder's watch reports what happens to the entries directly in it (created, removed,
renamed, written, closed after writing, attributes changed) and to the folder itself. A
folder is trusted to report its changes only on a local filesystem (`LOCAL_FILESYSTEMS`):
a network one (NFS, SMB, FUSE) does not see another machine's writes. Everything is
answered conservatively: an overflowed event queue, an unreadable queue or a watch the
kernel refused means "list again", never "unchanged".
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import sys
from collections.abc import Iterable

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x1000000
WATCHED = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, name length (name bytes follow)
_READ = 1 << 16

LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "jfs"}
    | {"reiserfs", "bcachefs", "ramfs", "hfsplus", "apfs", "vfat", "exfat", "ntfs3"}
)
"""Filesystems whose folders report every change made to them to a watch on this machine."""


def filesystem_types(mountinfo: str = "/proc/self/mountinfo") -> dict[int, str]:
    """Device number -> filesystem type of every mount this process sees ({} if unreadable)."""
    types: dict[int, str] = {}
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields, _, rest = line.partition(" - ")
                parts = fields.split()
                if len(parts) < 3 or not rest:
                    continue
                major, _, minor = parts[2].partition(":")
                try:
                    types[os.makedev(int(major), int(minor))] = rest.split()[0]
                except (ValueError, IndexError):
                    continue
    except OSError:
        return {}
    return types


class DirEvents:
    """Watches on folders, each for a set of owners (any hashable: `live_listing` uses a
    class folder's name); `read()` gives what happened since it was last asked, event by
    event, or None for "assume everything" (the queue overflowed, or could not be read)."""

    def __init__(self, fd: int, libc: ctypes.CDLL) -> None:
        self._fd, self._libc = fd, libc
        self._owners: dict[int, set] = {}  # watch descriptor -> its owners
        self._types = filesystem_types()

    @classmethod
    def open(cls) -> DirEvents | None:
        """A new event queue, or None where there is none (not Linux, no inotify, none left)."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init = libc.inotify_init1
        except (OSError, AttributeError):
            return None
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        return None if fd < 0 else cls(fd, libc)

    def trusted(self, device: int) -> bool:
        """Whether folders on `device` (a stat's st_dev) report every change to a watch."""
        return self._types.get(device) in LOCAL_FILESYSTEMS

    def watch(self, folder: bytes, owner: object) -> int | None:
        """Watch `folder` for `owner`: its watch descriptor, or None when the kernel refused
        (no such folder, no permission, the user's watches used up: ENOSPC)."""
        wd = self._libc.inotify_add_watch(self._fd, folder, WATCHED | IN_ONLYDIR)
        if wd < 0:
            return None
        self._owners.setdefault(wd, set()).add(owner)
        return wd

    def unwatch(self, wds: Iterable[int], owner: object) -> None:
        """Drop `owner` from these watches; a watch no owner holds any more is removed."""
        for wd in wds:
            owners = self._owners.get(wd)
            if owners is None:
                continue
            owners.discard(owner)
            if not owners:
                del self._owners[wd]
                self._libc.inotify_rm_watch(self._fd, wd)  # gone already: EINVAL, ignored

    def read(self) -> list[tuple[frozenset, int, int, bytes]] | None:
        """The events since the last call, each (its folder's owners, watch descriptor,
        mask, the entry's name: b"" for the folder itself); None: assume everything."""
        events: list[tuple[frozenset, int, int, bytes]] = []
        while True:
            try:
                buf = os.read(self._fd, _READ)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return None
            if not buf:
                return events
            if (more := self.parse(buf)) is None:
                self.drain()
                return None
            events += more

    def parse(self, buf: bytes) -> list[tuple[frozenset, int, int, bytes]] | None:
        """The events of a buffer read from the queue (see `read`); None when it overflowed."""
        events = []
        at = 0
        while at + _EVENT.size <= len(buf):
            wd, mask, _, length = _EVENT.unpack_from(buf, at)
            name = buf[at + _EVENT.size : at + _EVENT.size + length].rstrip(b"\0")
            at += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                return None
            events.append((frozenset(self._owners.get(wd, ())), wd, mask, name))
            if mask & IN_IGNORED:  # the folder is gone (or unwatched): forget its watch
                self._owners.pop(wd, None)
        return events

    def readable(self) -> bool:
        """Whether events are queued (without reading them)."""
        if self._fd < 0:
            return False
        try:
            return bool(select.select([self._fd], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def drain(self) -> None:
        """Read and drop whatever is queued (after an overflow: everything is listed again)."""
        while True:
            try:
                if not os.read(self._fd, _READ):
                    return
            except OSError:
                return

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
