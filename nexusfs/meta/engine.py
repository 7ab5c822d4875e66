"""The metadata engine: POSIX namespace rules over any SQL dialect.

Everything here is inode based, like the kernel, and each public method is one
transaction. File *content* is handled by :mod:`nexusfs.vfs`; this module only
records which objects make up a file (``blocks``) and keeps object refcounts.

Nothing in this module knows which database is underneath: the dialect lives in
:mod:`nexusfs.meta.db`.
"""

from __future__ import annotations

import errno
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import FsError, StoreError, fs_error
from ..types import (
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INODE,
    SYMLINK_MAX,
    TIME_NOW,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    Attr,
    DirEntry,
    TimeNow,
    clamp_time_ns,
)
from . import schema
from .db import Database

INODE_COLS = (
    "id, mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, btime_ns, "
    "alloc, data_version"
)
_INODE_COLS_I = ", ".join("i." + c.strip() for c in INODE_COLS.split(","))

#: In every directory of a mount this name leads to the search tree; no file may take it.
SEARCH_NAME = b".search"

#: Called with an inode number: is it still open or known to the kernel? Such
#: inodes survive losing their last name until they are released.
PinCheck = Callable[[int], bool]


def now_ns() -> int:
    return time.time_ns()


def bits_a_change_clears(mode: int, writer_in_group: Callable[[], bool]) -> int:
    """The setuid/setgid bits a write or truncate by a process without CAP_FSETID clears
    (Linux's rule): setuid always; setgid if group execute is set (it then means "run as
    that group") or if the writer is not in the file's group. ``writer_in_group`` is
    asked only when it matters (looking up groups costs a read of /proc)."""
    if not stat.S_ISREG(mode):
        return 0
    bits = mode & stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not writer_in_group()):
        bits |= stat.S_ISGID
    return bits


def check_name(name: bytes) -> None:
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")
    if name in (b".", b".."):
        raise FsError(errno.EINVAL, f"{name.decode()} is not a valid name here")
    if name == SEARCH_NAME:
        raise FsError(errno.EPERM, "'.search' is reserved: it searches the directory it is in")
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG, name[:40] + b"...")


@dataclass(slots=True, frozen=True)
class ObjectRef:
    """A stored block: enough to fetch and decode its blob."""

    id: int
    hash: bytes
    size: int
    stored_size: int
    codec: int

    @property
    def key(self) -> str:
        return blob_key(self.hash, self.id)


def blob_key(digest: bytes, object_id: int) -> str:
    return f"{digest.hex()}-{object_id}"


def parse_blob_key(key: str) -> tuple[bytes, int] | None:
    digest, sep, oid = key.partition("-")
    if not sep or len(digest) != 64 or not oid.isdigit():
        return None
    try:
        return bytes.fromhex(digest), int(oid)
    except ValueError:
        return None


def _attr(row: Sequence) -> Attr:
    return Attr(*row)


class MetadataEngine:
    """Shared logic of the namespace: lookups, creation, links, renames, attributes."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.settings: dict[str, str] = {}
        #: called after a transaction that queued files for indexing commits
        self.on_index_enqueued: Callable[[], None] | None = None

    # ------------------------------------------------------------------ setup
    def is_initialised(self) -> bool:
        return self.db.table_exists("meta")

    def initialise(self, *, block_size: int, inline_max: int, compression: str, uid: int, gid: int) -> None:
        ddl = schema.DDL
        for k, v in self.db.ddl_types.items():
            ddl = ddl.replace("{" + k + "}", v)
        with self.db.transaction():
            self.db.executescript(ddl)
            t = now_ns()
            settings = {
                "schema_version": "1",
                "block_size": str(block_size),
                "inline_max": str(inline_max),
                "compression": compression,
                "uuid": str(uuid.uuid4()),
                "created_ns": str(t),
            }
            for k, v in settings.items():
                self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (k, v))
            self.db.execute(
                "INSERT INTO inodes (id, mode, uid, gid, nlink, atime_ns, mtime_ns, ctime_ns, btime_ns) "
                "VALUES (?, ?, ?, ?, 2, ?, ?, ?, ?)",
                (ROOT_INODE, stat.S_IFDIR | 0o755, uid, gid, t, t, t, t),
            )
        self.load_settings()

    def load_settings(self) -> None:
        if not self.is_initialised():
            raise StoreError("the metadata database holds no nexusfs store (run `nexus init`)")
        self.settings = dict(self.db.query("SELECT key, value FROM meta"))
        version = int(self.settings.get("schema_version", "0"))
        if version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"the store has schema version {version}, newer than this nexusfs supports "
                f"({schema.SCHEMA_VERSION}); upgrade nexusfs"
            )
        while version < schema.SCHEMA_VERSION:
            self._migrate(version)
            version += 1
        self.settings = dict(self.db.query("SELECT key, value FROM meta"))

    def _migrate(self, from_version: int) -> None:
        ddl = schema.MIGRATIONS[from_version]
        for k, v in self.db.ddl_types.items():
            ddl = ddl.replace("{" + k + "}", v)
        with self.db.transaction():
            self.db.executescript(ddl)
            self.db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(from_version + 1),)
            )

    @property
    def block_size(self) -> int:
        return int(self.settings["block_size"])

    @property
    def inline_max(self) -> int:
        return int(self.settings["inline_max"])

    # ---------------------------------------------------------------- reading
    def getattr(self, ino: int) -> Attr:
        row = self.db.query_one(f"SELECT {INODE_COLS} FROM inodes WHERE id = ?", (ino,))
        if row is None:
            raise fs_error(errno.ENOENT, f"inode {ino}")
        return _attr(row)

    def getattr_many(self, inos: Iterable[int]) -> dict[int, Attr]:
        rows = self.db.query_in(f"SELECT {INODE_COLS} FROM inodes WHERE id IN ({{ids}})", inos)
        return {row[0]: _attr(row) for row in rows}

    def lookup(self, parent: int, name: bytes) -> Attr:
        if name == b".":
            return self.getattr(parent)
        if name == b"..":
            return self.getattr(self.parent_of(parent))
        # (a sub-select, not a join: SQLite here prepares a two-table join with bound
        # parameters again at every run, 20 us instead of 3)
        row = self.db.query_one(
            f"SELECT {INODE_COLS} FROM inodes WHERE id = "
            "(SELECT inode FROM dentries WHERE parent = ? AND name = ?)",
            (parent, name),
        )
        if row is None:
            if len(name) > NAME_MAX:
                raise fs_error(errno.ENAMETOOLONG, name[:40] + b"...")
            self._require_dir(parent)
            raise fs_error(errno.ENOENT, name)
        return _attr(row)

    def lookup_inode(self, parent: int, name: bytes) -> int | None:
        return self.db.query_value(
            "SELECT inode FROM dentries WHERE parent = ? AND name = ?", (parent, name)
        )

    def parent_of(self, ino: int) -> int:
        """The directory holding ``ino`` (the root is its own parent)."""
        if ino == ROOT_INODE:
            return ROOT_INODE
        parent = self.db.query_value("SELECT parent FROM dentries WHERE inode = ? LIMIT 1", (ino,))
        if parent is None:
            raise fs_error(errno.ENOENT, f"inode {ino} has no name")
        return parent

    def names_of(self, ino: int) -> list[tuple[int, bytes]]:
        return self.db.query("SELECT parent, name FROM dentries WHERE inode = ? ORDER BY id", (ino,))

    def path_of(self, ino: int) -> bytes:
        """One path of ``ino`` from the root (for messages, search results)."""
        parts: list[bytes] = []
        seen = 0
        while ino != ROOT_INODE:
            row = self.db.query_one("SELECT parent, name FROM dentries WHERE inode = ? LIMIT 1", (ino,))
            if row is None:
                raise fs_error(errno.ENOENT, f"inode {ino} has no name")
            ino, name = row
            parts.append(name)
            seen += 1
            if seen > 4096:
                raise StoreError("directory cycle found while building a path (run nexus fsck)")
        return b"/" + b"/".join(reversed(parts))

    def readdir(self, ino: int, after: int = 0, limit: int = 1000) -> list[DirEntry]:
        """Entries of a directory after cookie ``after`` ('.' is cookie 1, '..' cookie 2)."""
        d = self._require_dir(ino)
        out: list[DirEntry] = []
        if after < 1:
            out.append(DirEntry(b".", d, 1))
        if after < 2:
            out.append(DirEntry(b"..", self.getattr(self.parent_of(ino)), 2))
        rows = self.db.query(
            f"SELECT d.id, d.name, {_INODE_COLS_I} FROM dentries d JOIN inodes i ON i.id = d.inode "
            "WHERE d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
            (ino, max(after - 2, 0), limit),
        )
        out.extend(DirEntry(r[1], _attr(r[2:]), r[0] + 2) for r in rows)
        return out

    def list_names(self, ino: int) -> list[tuple[bytes, int, int]]:
        """(name, inode, mode) of every entry of a directory, in cookie order."""
        self._require_dir(ino)
        return self.db.query(
            "SELECT d.name, d.inode, i.mode FROM dentries d JOIN inodes i ON i.id = d.inode "
            "WHERE d.parent = ? ORDER BY d.id",
            (ino,),
        )

    def readlink(self, ino: int) -> bytes:
        target = self.db.query_value("SELECT target FROM symlinks WHERE inode = ?", (ino,))
        if target is None:
            attr = self.getattr(ino)
            if not attr.is_symlink:
                raise fs_error(errno.EINVAL, f"inode {ino} is not a symbolic link")
            raise StoreError(f"symlink inode {ino} has no target (run nexus fsck)")
        return bytes(target)

    def read_inline(self, ino: int) -> bytes | None:
        row = self.db.query_one("SELECT inline FROM inodes WHERE id = ?", (ino,))
        if row is None:
            raise fs_error(errno.ENOENT, f"inode {ino}")
        return None if row[0] is None else bytes(row[0])

    def _require_dir(self, ino: int) -> Attr:
        attr = self.getattr(ino)
        if not attr.is_dir:
            raise fs_error(errno.ENOTDIR, f"inode {ino}")
        return attr

    def _live_dir(self, ino: int) -> Attr:
        """A directory that can receive new entries (not removed while still open)."""
        attr = self._require_dir(ino)
        if attr.nlink == 0:
            raise fs_error(errno.ENOENT, "directory has been removed")
        return attr

    # --------------------------------------------------------------- creating
    def create(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        *,
        rdev: int = 0,
        target: bytes | None = None,
        times_ns: tuple[int, int, int] | None = None,
    ) -> Attr:
        """Make a new inode of any type (file, dir, symlink, fifo, socket, device) named ``name``.

        ``mode`` includes the file type bits; the caller has applied the umask.
        In a setgid directory the new inode takes the directory's group, and a
        new sub-directory inherits the setgid bit.
        """
        check_name(name)
        fmt = stat.S_IFMT(mode)
        if fmt == 0:
            mode |= stat.S_IFREG
            fmt = stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL, f"unsupported file type {oct(fmt)}")
        if fmt == stat.S_IFLNK:
            if target is None or not target:
                raise FsError(errno.ENOENT, "empty symlink target")
            if len(target) > SYMLINK_MAX:
                raise fs_error(errno.ENAMETOOLONG, "symlink target")
            mode = stat.S_IFLNK | 0o777
        if fmt not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        with self.db.transaction(deferrable=True):
            p, existing = self._entry(parent, name)
            if p.nlink == 0:
                raise fs_error(errno.ENOENT, "directory has been removed")
            if existing is not None:
                raise fs_error(errno.EEXIST, name)
            if p.mode & stat.S_ISGID:
                gid = p.gid
                if fmt == stat.S_IFDIR:
                    mode |= stat.S_ISGID
            t = now_ns()
            at, mt, ct = times_ns or (t, t, t)
            nlink = 2 if fmt == stat.S_IFDIR else 1
            size = len(target) if target is not None else 0
            ino = self.db.query_value(
                "INSERT INTO inodes (mode, uid, gid, nlink, size, rdev, atime_ns, mtime_ns, ctime_ns, btime_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (mode, uid, gid, nlink, size, rdev, at, mt, ct, t),
            )
            self.db.execute(
                "INSERT INTO dentries (parent, name, inode) VALUES (?, ?, ?)", (parent, name, ino)
            )
            if target is not None:
                self.db.execute("INSERT INTO symlinks (inode, target) VALUES (?, ?)", (ino, target))
            self._touch_dir(parent, t, nlink_delta=1 if fmt == stat.S_IFDIR else 0)
            return Attr(ino, mode, uid, gid, nlink, size, rdev, at, mt, ct, t, 0, 0)

    def _touch_dir(self, ino: int, t: int, nlink_delta: int = 0) -> None:
        self.db.execute(
            "UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? WHERE id = ?",
            (t, t, nlink_delta, ino),
        )

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        check_name(new_name)
        with self.db.transaction(deferrable=True):
            attr = self.getattr(ino)
            if attr.is_dir:
                raise fs_error(errno.EPERM, "hard links to directories are not allowed")
            if attr.nlink == 0:
                raise fs_error(errno.ENOENT, "the file has been removed")
            self._live_dir(new_parent)
            if self.lookup_inode(new_parent, new_name) is not None:
                raise fs_error(errno.EEXIST, new_name)
            t = now_ns()
            self.db.execute(
                "INSERT INTO dentries (parent, name, inode) VALUES (?, ?, ?)", (new_parent, new_name, ino)
            )
            self.db.execute("UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? WHERE id = ?", (t, ino))
            self._touch_dir(new_parent, t)
            attr.nlink += 1
            attr.ctime_ns = t
            return attr

    # --------------------------------------------------------------- removing
    def _entry(self, parent: int, name: bytes) -> tuple[Attr, Attr | None]:
        """(the directory ``parent``, the inode named ``name`` in it or None), in one query;
        ENOENT / ENOTDIR when ``parent`` is missing or not a directory."""
        # both inodes in one statement without a join (see lookup); a directory's entry
        # never names the directory itself, so the other row, if any, is the entry's
        p = child = None
        for row in self.db.query(
            f"SELECT {INODE_COLS} FROM inodes WHERE id IN "
            "(?, (SELECT inode FROM dentries WHERE parent = ? AND name = ?))",
            (parent, parent, name),
        ):
            if row[0] == parent:
                p = _attr(row)
            else:
                child = _attr(row)
        if p is None:
            raise fs_error(errno.ENOENT, f"inode {parent}")
        if not p.is_dir:
            raise fs_error(errno.ENOTDIR, f"inode {parent}")
        return p, child

    def unlink(self, parent: int, name: bytes, pinned: PinCheck) -> int:
        """Remove a non-directory name; return its inode. The inode goes once unnamed and unpinned."""
        with self.db.transaction(deferrable=True):
            attr = self._entry(parent, name)[1]
            if attr is None:
                raise fs_error(errno.ENOENT, name)
            ino = attr.ino
            if attr.is_dir:
                raise fs_error(errno.EISDIR, name)
            t = now_ns()
            self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
            self._drop_link(ino, attr, t, pinned)
            self._touch_dir(parent, t)
            return ino

    def rmdir(self, parent: int, name: bytes, pinned: PinCheck) -> int:
        if name == b".":
            raise FsError(errno.EINVAL, "cannot remove '.'")
        if name == b"..":
            raise fs_error(errno.ENOTEMPTY, name)
        with self.db.transaction(deferrable=True):
            self._require_dir(parent)
            ino = self.lookup_inode(parent, name)
            if ino is None:
                raise fs_error(errno.ENOENT, name)
            attr = self.getattr(ino)
            if not attr.is_dir:
                raise fs_error(errno.ENOTDIR, name)
            if self._has_children(ino):
                raise fs_error(errno.ENOTEMPTY, name)
            t = now_ns()
            self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (parent, name))
            self._drop_dir(ino, t, pinned)
            self._touch_dir(parent, t, nlink_delta=-1)
            return ino

    def _has_children(self, ino: int) -> bool:
        return self.db.query_one("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", (ino,)) is not None

    def _drop_link(self, ino: int, attr: Attr, t: int, pinned: PinCheck) -> None:
        if attr.nlink <= 1 and not pinned(ino):
            self.purge_inode(ino, attr.mode)
        else:
            self.db.execute("UPDATE inodes SET nlink = nlink - 1, ctime_ns = ? WHERE id = ?", (t, ino))

    def _drop_dir(self, ino: int, t: int, pinned: PinCheck) -> None:
        self.db.execute("UPDATE inodes SET nlink = 0, ctime_ns = ? WHERE id = ?", (t, ino))
        if not pinned(ino):
            self.purge_inode(ino)

    def purge_inode(self, ino: int, mode: int | None = None) -> None:
        """Delete an inode with no names left, with its blocks, xattrs and symlink target.

        ``mode`` (if the caller knows it) skips the tables that cannot hold rows for it.
        """
        with self.db.transaction():
            if mode is None or stat.S_ISREG(mode):
                self.release_blocks(ino, 0)
            if mode is None or stat.S_ISLNK(mode):
                self.db.execute("DELETE FROM symlinks WHERE inode = ?", (ino,))
            self.db.execute("DELETE FROM xattrs WHERE inode = ?", (ino,))
            self.db.execute("DELETE FROM inodes WHERE id = ?", (ino,))
            if mode is None or stat.S_ISREG(mode):
                # search results must never show a file that is gone
                self.db.execute("DELETE FROM search_files WHERE inode = ?", (ino,))
                self.db.execute("DELETE FROM index_jobs WHERE inode = ?", (ino,))

    def purge_if_orphan(self, ino: int) -> bool:
        """Delete ``ino`` if it has no names left (called when its last user lets go)."""
        if self.db.query_value("SELECT nlink FROM inodes WHERE id = ?", (ino,)) != 0:
            return False  # the common case, answered without a write transaction
        with self.db.transaction(deferrable=True):
            nlink = self.db.query_value("SELECT nlink FROM inodes WHERE id = ?", (ino,))
            if nlink is None or nlink > 0:
                return False
            self.purge_inode(ino)
            return True

    def purge_orphans(self, inos: list[int]) -> int:
        """Delete those of ``inos`` that have no names left (one transaction); returns how many."""
        found = self.db.query_in("SELECT id, mode FROM inodes WHERE nlink = 0 AND id IN ({ids})", inos)
        if found:
            with self.db.transaction(deferrable=True):
                for ino, mode in found:
                    if self.db.query_value("SELECT nlink FROM inodes WHERE id = ?", (ino,)) == 0:
                        self.purge_inode(ino, mode)
        return len(found)

    def orphans(self) -> list[int]:
        """Inodes with no names (left behind by a crash while they were open)."""
        return [
            r[0]
            for r in self.db.query(
                "SELECT id FROM inodes WHERE nlink = 0 AND id <> ? ORDER BY id", (ROOT_INODE,)
            )
        ]

    # ---------------------------------------------------------------- renaming
    def rename(
        self,
        old_parent: int,
        old_name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int,
        pinned: PinCheck,
    ) -> int | None:
        """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE; returns the replaced inode, if any."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "invalid rename flags")
        if old_name in (b".", b"..") or new_name in (b".", b".."):
            raise FsError(errno.EINVAL if old_name == b"." or new_name == b"." else errno.EBUSY,
                          "cannot rename '.' or '..'")
        check_name(new_name)
        with self.db.transaction(deferrable=True):
            self._require_dir(old_parent)
            src_ino = self.lookup_inode(old_parent, old_name)
            if src_ino is None:
                raise fs_error(errno.ENOENT, old_name)
            self._live_dir(new_parent)
            src = self.getattr(src_ino)
            dst_ino = self.lookup_inode(new_parent, new_name)
            t = now_ns()

            if flags & RENAME_EXCHANGE:
                if dst_ino is None:
                    raise fs_error(errno.ENOENT, new_name)
                dst = self.getattr(dst_ino)
                if src.is_dir and old_parent != new_parent:
                    self._check_not_inside(src_ino, new_parent)
                if dst.is_dir and old_parent != new_parent:
                    self._check_not_inside(dst_ino, old_parent)
                self.db.execute(
                    "UPDATE dentries SET inode = ? WHERE parent = ? AND name = ?", (dst_ino, old_parent, old_name)
                )
                self.db.execute(
                    "UPDATE dentries SET inode = ? WHERE parent = ? AND name = ?", (src_ino, new_parent, new_name)
                )
                if old_parent != new_parent and src.is_dir != dst.is_dir:
                    delta = 1 if src.is_dir else -1
                    self._touch_dir(new_parent, t, delta)
                    self._touch_dir(old_parent, t, -delta)
                else:
                    self._touch_dir(old_parent, t)
                    if new_parent != old_parent:
                        self._touch_dir(new_parent, t)
                self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE id IN (?, ?)", (t, src_ino, dst_ino))
                return None

            if dst_ino is not None and flags & RENAME_NOREPLACE:
                raise fs_error(errno.EEXIST, new_name)
            if src.is_dir:
                self._check_not_inside(src_ino, new_parent)
            if dst_ino == src_ino:
                return None  # two names of one inode: POSIX says do nothing
            replaced = None
            if dst_ino is not None:
                dst = self.getattr(dst_ino)
                if src.is_dir and not dst.is_dir:
                    raise fs_error(errno.ENOTDIR, new_name)
                if dst.is_dir and not src.is_dir:
                    raise fs_error(errno.EISDIR, new_name)
                if dst.is_dir and self._has_children(dst_ino):
                    raise fs_error(errno.ENOTEMPTY, new_name)
                self.db.execute("DELETE FROM dentries WHERE parent = ? AND name = ?", (new_parent, new_name))
                if dst.is_dir:
                    self._drop_dir(dst_ino, t, pinned)
                    self._touch_dir(new_parent, t, -1)
                else:
                    self._drop_link(dst_ino, dst, t, pinned)
                replaced = dst_ino
            self.db.execute(
                "UPDATE dentries SET parent = ?, name = ? WHERE parent = ? AND name = ?",
                (new_parent, new_name, old_parent, old_name),
            )
            moved_dir = 1 if src.is_dir and old_parent != new_parent else 0
            self._touch_dir(old_parent, t, -moved_dir)
            if new_parent != old_parent:
                self._touch_dir(new_parent, t, moved_dir)
            self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE id = ?", (t, src_ino))
            return replaced

    def _check_not_inside(self, dir_ino: int, target_parent: int) -> None:
        """EINVAL if ``target_parent`` is ``dir_ino`` or lies below it."""
        cur = target_parent
        for _ in range(100000):
            if cur == dir_ino:
                raise FsError(errno.EINVAL, "cannot move a directory into itself or its subtree")
            if cur == ROOT_INODE:
                return
            cur = self.parent_of(cur)
        raise StoreError("directory cycle found (run nexus fsck)")

    # -------------------------------------------------------------- attributes
    def setattr(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | TimeNow | None = None,
        mtime_ns: int | TimeNow | None = None,
        ctime_ns: int | None = None,
    ) -> Attr:
        """chmod / chown / utimens. ``TIME_NOW`` for atime/mtime means now; times beyond
        what an inode holds are clamped (see ``TIME_NS_MAX``). Size is vfs's job."""
        with self.db.transaction(deferrable=True):
            attr = self.getattr(ino)
            t = now_ns()
            if mode is not None:
                attr.mode = stat.S_IFMT(attr.mode) | (mode & 0o7777)
            if (uid is not None and uid != -1) or (gid is not None and gid != -1):
                if mode is None and not attr.is_dir:
                    # Linux clears setuid always, and setgid where it means "group executable"
                    attr.mode &= ~stat.S_ISUID
                    if attr.mode & stat.S_IXGRP:
                        attr.mode &= ~stat.S_ISGID
                if uid is not None and uid != -1:
                    attr.uid = uid
                if gid is not None and gid != -1:
                    attr.gid = gid
            if atime_ns is not None:
                attr.atime_ns = t if atime_ns is TIME_NOW else clamp_time_ns(atime_ns)
            if mtime_ns is not None:
                attr.mtime_ns = t if mtime_ns is TIME_NOW else clamp_time_ns(mtime_ns)
            attr.ctime_ns = t if ctime_ns is None else clamp_time_ns(ctime_ns)
            self.db.execute(
                "UPDATE inodes SET mode = ?, uid = ?, gid = ?, atime_ns = ?, mtime_ns = ?, ctime_ns = ? "
                "WHERE id = ?",
                (attr.mode, attr.uid, attr.gid, attr.atime_ns, attr.mtime_ns, attr.ctime_ns, ino),
            )
            return attr

    def touch_atime(self, ino: int, t: int) -> None:
        self.db.execute("UPDATE inodes SET atime_ns = ? WHERE id = ?", (t, ino))

    # ----------------------------------------------------------------- xattrs
    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        _check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise fs_error(errno.E2BIG, "extended attribute value is larger than 64 KiB")
        with self.db.transaction(deferrable=True):
            self.getattr(ino)
            exists = self.db.query_one("SELECT 1 FROM xattrs WHERE inode = ? AND name = ?", (ino, name))
            if flags & XATTR_CREATE and exists:
                raise fs_error(errno.EEXIST, name)
            if flags & XATTR_REPLACE and not exists:
                raise fs_error(errno.ENODATA, name)
            self.db.execute(
                "INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (inode, name) DO UPDATE SET value = excluded.value",
                (ino, name, value),
            )
            self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE id = ?", (now_ns(), ino))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        # one query answers both "no such inode" and "no such attribute": the kernel
        # asks for security.capability before every write, so misses are the hot path
        row = self.db.query_one(
            "SELECT (SELECT value FROM xattrs WHERE inode = ? AND name = ?) FROM inodes WHERE id = ?",
            (ino, name, ino),
        )
        if row is None:
            raise fs_error(errno.ENOENT, f"inode {ino}")
        if row[0] is None:
            if len(name) > XATTR_NAME_MAX:
                raise fs_error(errno.ERANGE, "extended attribute name is too long")
            raise fs_error(errno.ENODATA, name)
        return bytes(row[0])

    def listxattr(self, ino: int) -> list[bytes]:
        rows = self.db.query("SELECT name FROM xattrs WHERE inode = ? ORDER BY name", (ino,))
        if not rows:
            self.getattr(ino)
        return [bytes(r[0]) for r in rows]

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return {bytes(n): bytes(v) for n, v in self.db.query(
            "SELECT name, value FROM xattrs WHERE inode = ? ORDER BY name", (ino,))}

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.db.transaction(deferrable=True):
            if not self.db.execute("DELETE FROM xattrs WHERE inode = ? AND name = ?", (ino, name)):
                self.getattr(ino)
                raise fs_error(errno.ENODATA, name)
            self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE id = ?", (now_ns(), ino))

    # ------------------------------------------------------- objects and blocks
    def take_live_object(self, digest: bytes, size: int) -> ObjectRef | None:
        """Find a live object with this content for a writer to reuse (a dedup hit).

        An unreferenced object found this way gets a fresh ``unref_ns``: garbage
        collection then leaves it alone for a whole grace period, long enough for
        the writer to commit the reference. A referenced one needs no write: should
        its last reference go before the writer commits, that too restarts the period.
        """
        row = self.db.query_one(
            "SELECT id, hash, size, stored_size, codec, refcount FROM objects "
            "WHERE hash = ? AND size = ? AND state = ? ORDER BY refcount DESC LIMIT 1",
            (digest, size, schema.OBJECT_LIVE),
        )
        if row is None or (row[5] == 0 and not self.touch_object(row[0])):
            return None
        return ObjectRef(row[0], bytes(row[1]), row[2], row[3], row[4])

    def touch_object(self, oid: int) -> bool:
        """Before a writer reuses an uploaded object: restart its gc grace period if it is
        unreferenced. False if the object no longer exists."""
        with self.db.transaction():
            if self.db.query_value("SELECT 1 FROM objects WHERE id = ?", (oid,)) is None:
                return False
            self.db.execute("UPDATE objects SET unref_ns = ? WHERE id = ? AND refcount = 0", (now_ns(), oid))
            return True

    def reserve_object(self, digest: bytes, size: int, stored_size: int, codec: int) -> ObjectRef:
        """Record a pending object before its blob is uploaded (so its key is fixed and gc knows it)."""
        with self.db.transaction():
            oid = self.db.query_value(
                "INSERT INTO objects (hash, size, stored_size, codec, refcount, state, unref_ns) "
                "VALUES (?, ?, ?, ?, 0, ?, ?) RETURNING id",
                (digest, size, stored_size, codec, schema.OBJECT_PENDING, now_ns()),
            )
        return ObjectRef(oid, digest, size, stored_size, codec)

    def get_object(self, oid: int) -> ObjectRef | None:
        row = self.db.query_one("SELECT id, hash, size, stored_size, codec FROM objects WHERE id = ?", (oid,))
        return ObjectRef(row[0], bytes(row[1]), row[2], row[3], row[4]) if row else None

    def content_location(self, ino: int) -> tuple[int, bytes | None, dict[int, ObjectRef]] | None:
        """(size, inline content or None, block map) of a file, read in one statement so the
        three agree; None if the inode does not exist."""
        rows = self.db.query(
            "SELECT i.size, i.inline, b.idx, o.id, o.hash, o.size, o.stored_size, o.codec FROM inodes i "
            "LEFT JOIN blocks b ON b.inode = i.id LEFT JOIN objects o ON o.id = b.object "
            "WHERE i.id = ? ORDER BY b.idx",
            (ino,),
        )
        if not rows:
            return None
        inline = None if rows[0][1] is None else bytes(rows[0][1])
        blocks = {r[2]: ObjectRef(r[3], bytes(r[4]), r[5], r[6], r[7]) for r in rows if r[3] is not None}
        return rows[0][0], inline, blocks

    def block_map(self, ino: int) -> dict[int, ObjectRef]:
        rows = self.db.query(
            "SELECT b.idx, o.id, o.hash, o.size, o.stored_size, o.codec FROM blocks b "
            "JOIN objects o ON o.id = b.object WHERE b.inode = ? ORDER BY b.idx",
            (ino,),
        )
        return {r[0]: ObjectRef(r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows}

    def _incref(self, oid: int) -> None:
        if not self.db.execute(
            "UPDATE objects SET refcount = refcount + 1, state = ?, unref_ns = NULL WHERE id = ?",
            (schema.OBJECT_LIVE, oid),
        ):
            raise StoreError(
                f"object {oid} was garbage-collected before the write that uses it was committed "
                "(a file stayed uncommitted for longer than the gc grace period)"
            )

    def _decref(self, oid: int, count: int = 1) -> None:
        self.db.execute(
            "UPDATE objects SET refcount = refcount - ?, "
            "unref_ns = CASE WHEN refcount - ? <= 0 THEN ? ELSE unref_ns END WHERE id = ?",
            (count, count, now_ns(), oid),
        )

    def release_blocks(self, ino: int, from_idx: int) -> None:
        """Drop the blocks of ``ino`` from ``from_idx`` on, releasing their objects."""
        rows = self.db.query(
            "SELECT object, COUNT(*) FROM blocks WHERE inode = ? AND idx >= ? GROUP BY object",
            (ino, from_idx),
        )
        for oid, count in rows:
            self._decref(oid, count)
        if rows:
            self.db.execute("DELETE FROM blocks WHERE inode = ? AND idx >= ?", (ino, from_idx))

    def commit_content(
        self,
        ino: int,
        *,
        size: int,
        changed: dict[int, int | None],
        keep_blocks: int | None,
        inline: bytes | None,
        mtime_ns: int | None,
        ctime_ns: int | None,
    ) -> int:
        """Record new content of a regular file in one transaction; returns the new data_version.

        ``changed`` maps block index -> object id (or None for a hole). Blocks at
        ``keep_blocks`` and beyond are dropped first (a truncation). With ``inline``
        set, all blocks go and the content lives in the inode row.
        """
        with self.db.transaction():
            row = self.db.query_one("SELECT mode, data_version FROM inodes WHERE id = ?", (ino,))
            if row is None:
                raise fs_error(errno.ENOENT, f"inode {ino}")
            mode, version = row
            if inline is not None:
                self.release_blocks(ino, 0)
            else:
                if keep_blocks is not None:
                    self.release_blocks(ino, keep_blocks)
                for idx, oid in changed.items():
                    old = self.db.query_value("SELECT object FROM blocks WHERE inode = ? AND idx = ?", (ino, idx))
                    if oid is not None:
                        self._incref(oid)
                    if old is not None:
                        self._decref(old)
                    if oid is None:
                        self.db.execute("DELETE FROM blocks WHERE inode = ? AND idx = ?", (ino, idx))
                    else:
                        self.db.execute(
                            "INSERT INTO blocks (inode, idx, object) VALUES (?, ?, ?) "
                            "ON CONFLICT (inode, idx) DO UPDATE SET object = excluded.object",
                            (ino, idx, oid),
                        )
            if inline is not None:
                alloc = len(inline)
            else:
                alloc = self.db.query_value(
                    "SELECT SUM(o.size) FROM blocks b JOIN objects o ON o.id = b.object WHERE b.inode = ?",
                    (ino,),
                    0,
                )
            self.db.execute(
                "UPDATE inodes SET size = ?, inline = ?, alloc = ?, data_version = ?, "
                "mtime_ns = COALESCE(?, mtime_ns), ctime_ns = COALESCE(?, ctime_ns) WHERE id = ?",
                (size, inline, alloc, version + 1, mtime_ns, ctime_ns, ino),
            )
            self.enqueue_index(ino)
            return version + 1

    def clone_content(self, src: int, dst: int) -> None:
        """Give ``dst`` the same content as ``src`` by reference (copy without copying data)."""
        with self.db.transaction():
            row = self.db.query_one("SELECT size, inline, alloc FROM inodes WHERE id = ?", (src,))
            if row is None:
                raise fs_error(errno.ENOENT, f"inode {src}")
            self.release_blocks(dst, 0)
            self.db.execute(
                "INSERT INTO blocks (inode, idx, object) SELECT ?, idx, object FROM blocks WHERE inode = ?",
                (dst, src),
            )
            self.db.execute(
                "UPDATE objects SET refcount = refcount + (SELECT COUNT(*) FROM blocks b "
                "WHERE b.inode = ? AND b.object = objects.id), unref_ns = NULL "
                "WHERE id IN (SELECT object FROM blocks WHERE inode = ?)",
                (dst, dst),
            )
            version = self.db.query_value("SELECT data_version FROM inodes WHERE id = ?", (dst,), 0)
            t = now_ns()
            self.db.execute(
                "UPDATE inodes SET size = ?, inline = ?, alloc = ?, data_version = ?, mtime_ns = ?, "
                "ctime_ns = ? WHERE id = ?",
                (row[0], row[1], row[2], version + 1, t, t, dst),
            )
            self.enqueue_index(dst)

    # ------------------------------------------------------------- search index
    def enqueue_index(self, ino: int) -> None:
        """Queue ``ino`` for (re)indexing; part of the caller's transaction."""
        self.db.execute(
            "INSERT INTO index_jobs (inode, queued_ns) VALUES (?, ?) ON CONFLICT (inode) DO UPDATE "
            "SET queued_ns = excluded.queued_ns, attempts = 0, not_before_ns = 0, "
            "claimed_until_ns = 0, last_error = NULL",
            (ino, now_ns()),
        )
        if self.on_index_enqueued is not None:
            self.db.after_commit(self.on_index_enqueued)

    # ------------------------------------------------------------------- gc
    def garbage_objects(self, older_than_ns: int, limit: int = 1000) -> list[ObjectRef]:
        rows = self.db.query(
            "SELECT id, hash, size, stored_size, codec FROM objects "
            "WHERE refcount = 0 AND unref_ns < ? ORDER BY unref_ns LIMIT ?",
            (older_than_ns, limit),
        )
        return [ObjectRef(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def unreferenced_summary(self) -> tuple[int, int, int, int]:
        """(how many, stored bytes, oldest and newest ``unref_ns``) of the objects no block
        references: garbage that gc frees once its grace period has passed."""
        row = self.db.query_one(
            "SELECT COUNT(*), COALESCE(SUM(stored_size), 0), COALESCE(MIN(unref_ns), 0), "
            "COALESCE(MAX(unref_ns), 0) FROM objects WHERE refcount = 0")
        return row if row is not None else (0, 0, 0, 0)

    def collectable_summary(self, older_than_ns: int) -> tuple[int, int]:
        """(how many, stored bytes) of the unreferenced objects whose ``unref_ns`` is older
        than ``older_than_ns``: what gc may free now (a range of the unreferenced index)."""
        row = self.db.query_one(
            "SELECT COUNT(*), COALESCE(SUM(stored_size), 0) FROM objects WHERE refcount = 0 AND unref_ns < ?",
            (older_than_ns,))
        return row if row is not None else (0, 0)

    def forget_object(self, oid: int, older_than_ns: int) -> bool:
        """Delete an unreferenced object row; True if it was still garbage (then delete its blob)."""
        with self.db.transaction():
            return bool(
                self.db.execute(
                    "DELETE FROM objects WHERE id = ? AND refcount = 0 AND unref_ns < ?",
                    (oid, older_than_ns),
                )
            )

    def object_ids(self, ids: Sequence[int]) -> set[int]:
        return {r[0] for r in self.db.query_in("SELECT id FROM objects WHERE id IN ({ids})", ids)}

    def statfs_usage(self) -> tuple[int, int]:
        """(stored bytes, number of inodes)."""
        stored = self.db.query_value("SELECT SUM(stored_size) FROM objects", (), 0)
        inline = self.db.query_value("SELECT SUM(LENGTH(inline)) FROM inodes WHERE inline IS NOT NULL", (), 0)
        inodes = self.db.query_value("SELECT COUNT(*) FROM inodes", (), 0)
        return stored + inline, inodes


def _check_xattr_name(name: bytes) -> None:
    if not name:
        raise FsError(errno.EINVAL, "empty extended attribute name")
    if len(name) > XATTR_NAME_MAX:
        raise fs_error(errno.ERANGE, "extended attribute name is too long")
    if b"." not in name or name.split(b".", 1)[0] not in (b"user", b"trusted", b"security"):
        raise fs_error(errno.EOPNOTSUPP, name)
