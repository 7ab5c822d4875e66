"""Plain data types shared by the engine, the API and the mount."""

from __future__ import annotations

import stat as _stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

ROOT_INODE = 1
NAME_MAX = 255
PATH_MAX = 4096  # bytes, the final NUL included (linux/limits.h)
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
SYMLINK_MAX = 4095

# rename(2) flags (linux/fs.h)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# setxattr(2) flags
XATTR_CREATE = 1
XATTR_REPLACE = 2


class TimeNow:
    """The type of :data:`TIME_NOW` (a sentinel, so that every integer stays a real time)."""

    def __repr__(self) -> str:
        return "TIME_NOW"


#: setattr: use the current time for atime/mtime
TIME_NOW = TimeNow()

#: the times an inode can hold: signed 64-bit nanoseconds since the epoch
#: (years 1677 to 2262); setattr clamps times outside this range to its ends, as
#: Linux clamps to the range of the filesystem's on-disk format
TIME_NS_MIN = -(2**63)
TIME_NS_MAX = 2**63 - 1


def clamp_time_ns(t: int) -> int:
    return min(max(t, TIME_NS_MIN), TIME_NS_MAX)


@dataclass(slots=True)
class Attr:
    """The attributes of an inode, as ``stat(2)`` reports them (times in ns)."""

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    rdev: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    btime_ns: int
    alloc: int = 0
    data_version: int = 0

    @property
    def is_dir(self) -> bool:
        return _stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return _stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self.mode)

    @property
    def blocks(self) -> int:
        """st_blocks: 512-byte units actually stored."""
        return (self.alloc + 511) // 512


@dataclass(slots=True)
class DirEntry:
    name: bytes
    attr: Attr
    cookie: int  # pass as ``after`` to continue a listing after this entry


@dataclass(slots=True)
class StatFs:
    block_size: int  # f_bsize / f_frsize
    total_blocks: int
    free_blocks: int
    avail_blocks: int
    total_inodes: int
    free_inodes: int
    name_max: int = NAME_MAX


@dataclass(slots=True)
class GarbageInfo:
    """Unreferenced objects waiting for the grace period, and the background collector."""

    objects: int = 0
    #: their stored bytes
    bytes: int = 0
    #: when the first and the last of them become collectable (ns since the epoch; 0: none)
    first_ns: int = 0
    last_ns: int = 0
    #: of them, collectable now
    ready_objects: int = 0
    ready_bytes: int = 0
    #: the grace period (seconds)
    grace: float = 0.0
    #: background collection is configured (gc_auto)
    auto: bool = False
    #: the process whose background collector runs now (None: none)
    collector_pid: int | None = None


@dataclass(slots=True)
class StoreInfo:
    """Figures for ``nexus info``."""

    home: str
    metadata: str
    blobs: str
    block_size: int
    compression: str
    inline_max: int
    schema_version: int
    files: int
    directories: int
    symlinks: int
    other_inodes: int
    logical_bytes: int  # sum of file sizes
    referenced_bytes: int  # sum over block references of raw size (before dedup)
    unique_bytes: int  # sum over live objects of raw size (after dedup)
    stored_bytes: int  # sum over objects of stored size (after compression) + inline bytes
    inline_bytes: int
    objects: int
    pending_objects: int
    unreferenced_objects: int
    extra: dict[str, str] = field(default_factory=dict)
    garbage: GarbageInfo = field(default_factory=lambda: GarbageInfo())

    @property
    def dedup_ratio(self) -> float:
        return self.referenced_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        stored = self.stored_bytes - self.inline_bytes
        return self.unique_bytes / stored if stored > 0 else 1.0


class Caller:
    """Who asks: uid, primary gid, supplementary groups and, where known, the process
    (``pid``, 0 if unknown). Permission checks, Linux's setuid/setgid rule on writes and
    query cancellation use it. The groups can be looked up lazily (``lookup_groups``):
    the mount then reads them from /proc only when a check needs them."""

    __slots__ = ("uid", "gid", "pid", "_groups", "_lookup")

    def __init__(self, uid: int, gid: int, groups: Iterable[int] = (), pid: int = 0, *,
                 lookup_groups: Callable[[], Iterable[int]] | None = None) -> None:
        self.uid, self.gid, self.pid = uid, gid, pid
        self._groups: frozenset[int] | None = None if lookup_groups is not None else frozenset(groups)
        self._lookup = lookup_groups

    @property
    def groups(self) -> frozenset[int]:
        if self._groups is None:
            assert self._lookup is not None
            self._groups = frozenset(self._lookup())
        return self._groups

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    @property
    def key(self) -> tuple:
        """Callers with the same key may see the same (permission-filtered) results."""
        return ("root",) if self.uid == 0 else (self.uid, self.gid, self.groups)

    def permits(self, attr: Attr, mask: int) -> bool:
        """access(2) by mode bits: may this caller read (4), write (2), search/execute (1)?
        Root may do anything but execute a file that has no execute bit at all."""
        mask &= 0o7
        if not mask:
            return True
        if self.uid == 0:
            return not (mask & 1 and not _stat.S_ISDIR(attr.mode) and not attr.mode & 0o111)
        if self.uid == attr.uid:
            bits = attr.mode >> 6
        elif self.in_group(attr.gid):
            bits = attr.mode >> 3
        else:
            bits = attr.mode
        return bits & mask == mask

    def __repr__(self) -> str:
        return f"Caller(uid={self.uid}, gid={self.gid}, pid={self.pid})"
