"""``nexus fsck``: one check per invariant of the schema, each able to repair what it finds.

The invariants are listed in :mod:`nexusfs.meta.schema`. Checks run in an order
where each may rely on the ones before (names before link counts, blocks before
refcounts, refcounts before blobs). Without ``repair`` nothing is changed.
"""

from __future__ import annotations

import os
import stat
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from backends import private

from .errors import StoreError
from .meta.engine import ObjectRef, now_ns, parse_blob_key
from .meta.schema import OBJECT_LIVE, OBJECT_PENDING
from .store import Store
from .types import ROOT_INODE

S_IFMT = 0o170000
LOST_FOUND = b"lost+found"

Progress = Callable[[str, int, int | None], None]


@dataclass
class Problem:
    check: str
    message: str
    repaired: bool = False

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}" + (" (repaired)" if self.repaired else "")


@dataclass
class FsckReport:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    #: what ``nexus gc`` will collect, by kind: (how many, bytes). Garbage is no damage:
    #: deleted or replaced content waiting for the grace period, uploads no file
    #: references (replaced before the file was committed, or cut short by a crash),
    #: temporary files of uploads a crash interrupted
    garbage: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    @property
    def exit_code(self) -> int:
        """e2fsck convention: 0 clean, 1 errors corrected, 4 errors left uncorrected."""
        if not self.problems:
            return 0
        return 4 if self.unrepaired else 1


class Fsck:
    def __init__(self, store: Store, progress: Progress | None = None) -> None:
        self.store = store
        self.db = store.db
        self.meta = store.meta
        self.blobs = store.blobs
        self.progress = progress
        self.report = FsckReport()
        self.repair = False

    def _problem(self, check: str, message: str, fixed: bool) -> None:
        self.report.problems.append(Problem(check, message, fixed and self.repair))

    def _tick(self, phase: str, n: int, total: int | None = None) -> None:
        if self.progress:
            self.progress(phase, n, total)

    def run(self, *, repair: bool = False, verify_data: bool = True) -> FsckReport:
        self.repair = repair
        self.store.vfs.sync()
        self._tick("check_modes", 0)
        self.check_modes()
        checks = [
            self.check_root,
            self.check_dentries,
            self.check_directory_names,
            self.check_reachability,
            self.check_nameless_inodes,
            self.check_link_counts,
            self.check_symlinks,
            self.check_xattrs,
            self.check_blocks,
            self.check_inline,
            self.check_refcounts,
            self.check_unreferenced_objects,
        ]
        for check in checks:
            self._tick(check.__name__, 0)
            if repair:
                with self.db.transaction():
                    check()
            else:
                check()
        self.check_blobs(verify_data)
        self.check_orphan_blobs()
        return self.report

    # ---------------------------------------------------------------- modes
    def check_modes(self) -> None:
        """Every file and directory of the store is its owner's alone (0700 / 0600 at most):
        the database holds small files and the text of indexed ones, the blobs the rest."""
        uid, gid = self.store.owner()
        may_chown = os.geteuid() == 0
        n = 0
        for path, st in self.store.private_paths():
            n += 1
            why = private.exposure(st, uid)
            if why is None:
                continue
            fixable = may_chown or st.st_uid == uid
            if self.repair and fixable:
                private.make_private(path, st, uid, gid)
            rel = os.path.relpath(path, self.store.config.home)
            name = "the store directory" if rel == "." else rel if not rel.startswith("..") else path
            hint = "" if fixable else " (only root can give it back: run `nexus fsck --repair` as root)"
            self._problem("modes", f"{name} {why}{hint}", fixable)
        self.report.checked["private files"] = n

    # ---------------------------------------------------------------- names
    def check_root(self) -> None:
        row = self.db.query_one("SELECT mode FROM inodes WHERE id = ?", (ROOT_INODE,))
        if row is None:
            if self.repair:
                t = now_ns()
                self.db.execute(
                    "INSERT INTO inodes (id, mode, uid, gid, nlink, atime_ns, mtime_ns, ctime_ns, btime_ns) "
                    "VALUES (?, ?, 0, 0, 2, ?, ?, ?, ?)",
                    (ROOT_INODE, stat.S_IFDIR | 0o755, t, t, t, t),
                )
            self._problem("root", "the root directory is missing", True)
        elif not stat.S_ISDIR(row[0]):
            if self.repair:
                self.db.execute("UPDATE inodes SET mode = ? WHERE id = ?", (stat.S_IFDIR | 0o755, ROOT_INODE))
            self._problem("root", "the root inode is not a directory", True)
        if self.db.query_one("SELECT 1 FROM dentries WHERE inode = ?", (ROOT_INODE,)):
            if self.repair:
                self.db.execute("DELETE FROM dentries WHERE inode = ?", (ROOT_INODE,))
            self._problem("root", "the root directory has a name inside the tree", True)

    def check_dentries(self) -> None:
        """Every name points to an existing inode, inside an existing directory."""
        rows = self.db.query(
            "SELECT d.id, d.parent, d.name, d.inode, i.id, p.mode FROM dentries d "
            "LEFT JOIN inodes i ON i.id = d.inode LEFT JOIN inodes p ON p.id = d.parent"
        )
        self.report.checked["names"] = len(rows)
        for did, parent, name, ino, found, pmode in rows:
            if found is None:
                msg = f"name {name!r} in directory {parent} points to missing inode {ino}"
            elif pmode is None:
                msg = f"name {name!r} (inode {ino}) is in missing directory {parent}"
            elif not stat.S_ISDIR(pmode):
                msg = f"name {name!r} (inode {ino}) is inside non-directory {parent}"
            else:
                continue
            if self.repair:
                self.db.execute("DELETE FROM dentries WHERE id = ?", (did,))
            self._problem("names", msg, True)

    def check_directory_names(self) -> None:
        """A directory other than the root has exactly one name (no directory hard links)."""
        rows = self.db.query(
            "SELECT d.inode, COUNT(*), MIN(d.id) FROM dentries d JOIN inodes i ON i.id = d.inode "
            "WHERE (i.mode & ?) = ? GROUP BY d.inode HAVING COUNT(*) > 1",
            (S_IFMT, stat.S_IFDIR),
        )
        for ino, count, keep in rows:
            if self.repair:
                self.db.execute("DELETE FROM dentries WHERE inode = ? AND id <> ?", (ino, keep))
            self._problem("directory-names", f"directory inode {ino} has {count} names", True)

    def check_reachability(self) -> None:
        """Every named inode is reachable from the root (no detached directory cycles)."""
        children: dict[int, list[int]] = defaultdict(list)
        for parent, ino in self.db.query("SELECT parent, inode FROM dentries"):
            children[parent].append(ino)
        seen = {ROOT_INODE}
        stack = [ROOT_INODE]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        self.report.checked["reachable inodes"] = len(seen)
        detached_dirs = [
            p for p in children if p not in seen
            and stat.S_ISDIR(self.db.query_value("SELECT mode FROM inodes WHERE id = ?", (p,), 0))
        ]
        # the top of each detached part is a directory whose parent is itself detached
        for d in detached_dirs:
            if self.repair:
                self._move_to_lost_found(d, keep_name=False)
            self._problem("reachability", f"directory inode {d} is not reachable from the root", True)
            if self.repair:
                break  # moving one may reconnect the others: the next run re-checks

    def check_nameless_inodes(self) -> None:
        """An inode without names is an orphan (nlink 0, left by a crash) or lost (nlink > 0)."""
        rows = self.db.query(
            "SELECT i.id, i.nlink, i.mode FROM inodes i WHERE i.id <> ? AND NOT EXISTS "
            "(SELECT 1 FROM dentries d WHERE d.inode = i.id)",
            (ROOT_INODE,),
        )
        for ino, nlink, _mode in rows:
            if nlink == 0:
                if self.store.vfs.is_pinned(ino):
                    continue
                if self.repair:
                    self.meta.purge_inode(ino)
                self._problem("orphans", f"inode {ino} was unlinked while open and never released", True)
            else:
                if self.repair:
                    self._move_to_lost_found(ino, keep_name=False)
                self._problem("orphans", f"inode {ino} has {nlink} links but no name", True)

    def _lost_found(self) -> int:
        ino = self.meta.lookup_inode(ROOT_INODE, LOST_FOUND)
        if ino is None:
            ino = self.meta.create(ROOT_INODE, LOST_FOUND, stat.S_IFDIR | 0o700, 0, 0).ino
        return ino

    def _move_to_lost_found(self, ino: int, keep_name: bool) -> None:
        lf = self._lost_found()
        name = f"inode-{ino}".encode()
        self.db.execute("DELETE FROM dentries WHERE inode = ?", (ino,))
        self.db.execute("INSERT INTO dentries (parent, name, inode) VALUES (?, ?, ?)", (lf, name, ino))

    def check_link_counts(self) -> None:
        """nlink = number of names (files); 2 + sub-directories (directories)."""
        names = Counter(dict(self.db.query("SELECT inode, COUNT(*) FROM dentries GROUP BY inode")))
        subdirs = Counter(dict(self.db.query(
            "SELECT d.parent, COUNT(*) FROM dentries d JOIN inodes i ON i.id = d.inode "
            "WHERE (i.mode & ?) = ? GROUP BY d.parent", (S_IFMT, stat.S_IFDIR))))
        rows = self.db.query("SELECT id, mode, nlink FROM inodes")
        self.report.checked["inodes"] = len(rows)
        for ino, mode, nlink in rows:
            if stat.S_ISDIR(mode):
                if names[ino] == 0 and ino != ROOT_INODE:
                    continue  # removed but still open: nlink 0 is right
                want = 2 + subdirs[ino]
            else:
                want = names[ino]
                if want == 0:
                    continue  # handled by check_nameless_inodes
            if nlink != want:
                if self.repair:
                    self.db.execute("UPDATE inodes SET nlink = ? WHERE id = ?", (want, ino))
                self._problem("link-counts", f"inode {ino} has nlink {nlink}, should be {want}", True)

    def check_symlinks(self) -> None:
        rows = self.db.query(
            "SELECT i.id FROM inodes i LEFT JOIN symlinks s ON s.inode = i.id "
            "WHERE (i.mode & ?) = ? AND s.inode IS NULL", (S_IFMT, stat.S_IFLNK))
        for (ino,) in rows:
            if self.repair:
                self.db.execute("INSERT INTO symlinks (inode, target) VALUES (?, ?)", (ino, b"(lost)"))
            self._problem("symlinks", f"symlink inode {ino} has no target", True)
        rows = self.db.query(
            "SELECT s.inode FROM symlinks s LEFT JOIN inodes i ON i.id = s.inode "
            "WHERE i.id IS NULL OR (i.mode & ?) <> ?", (S_IFMT, stat.S_IFLNK))
        for (ino,) in rows:
            if self.repair:
                self.db.execute("DELETE FROM symlinks WHERE inode = ?", (ino,))
            self._problem("symlinks", f"symlink target recorded for non-symlink inode {ino}", True)

    def check_xattrs(self) -> None:
        rows = self.db.query(
            "SELECT DISTINCT x.inode FROM xattrs x LEFT JOIN inodes i ON i.id = x.inode WHERE i.id IS NULL")
        for (ino,) in rows:
            if self.repair:
                self.db.execute("DELETE FROM xattrs WHERE inode = ?", (ino,))
            self._problem("xattrs", f"extended attributes of missing inode {ino}", True)

    # ---------------------------------------------------------------- data
    def check_blocks(self) -> None:
        """Blocks belong to existing regular files, lie within the file, and name existing objects."""
        bs = self.meta.block_size
        rows = self.db.query(
            "SELECT b.inode, b.idx, b.object, i.mode, i.size, o.id FROM blocks b "
            "LEFT JOIN inodes i ON i.id = b.inode LEFT JOIN objects o ON o.id = b.object"
        )
        self.report.checked["blocks"] = len(rows)
        for ino, idx, oid, mode, size, found in rows:
            if mode is None or not stat.S_ISREG(mode):
                msg = f"block {idx} of {'missing' if mode is None else 'non-file'} inode {ino}"
            elif found is None:
                msg = f"block {idx} of inode {ino} names missing object {oid} (now a hole)"
            elif idx * bs >= size:
                msg = f"block {idx} of inode {ino} lies beyond its size {size}"
            else:
                continue
            if self.repair:
                self.db.execute("DELETE FROM blocks WHERE inode = ? AND idx = ?", (ino, idx))
                if found is not None:
                    self.meta._decref(oid)  # noqa: SLF001 - keep the refcount right
            self._problem("blocks", msg, True)

    def check_inline(self) -> None:
        rows = self.db.query(
            "SELECT i.id, i.mode, LENGTH(i.inline), i.size, "
            "(SELECT COUNT(*) FROM blocks b WHERE b.inode = i.id) FROM inodes i WHERE i.inline IS NOT NULL"
        )
        for ino, mode, length, size, nblocks in rows:
            if not stat.S_ISREG(mode):
                msg = f"inline content on non-file inode {ino}"
                fix = "UPDATE inodes SET inline = NULL WHERE id = ?"
            elif nblocks:
                msg = f"inode {ino} has both inline content and blocks"
                fix = "DELETE FROM blocks WHERE inode = ?"
            elif length > size:
                msg = f"inline content of inode {ino} is longer than the file"
                fix = "UPDATE inodes SET inline = SUBSTR(inline, 1, size) WHERE id = ?"
            else:
                continue
            if self.repair:
                self.db.execute(fix, (ino,))
            self._problem("inline", msg, True)

    def check_refcounts(self) -> None:
        """objects.refcount = number of blocks naming the object; referenced objects are live."""
        actual = Counter(dict(self.db.query("SELECT object, COUNT(*) FROM blocks GROUP BY object")))
        rows = self.db.query("SELECT id, refcount, state FROM objects")
        self.report.checked["objects"] = len(rows)
        t = now_ns()
        for oid, refcount, state in rows:
            want = actual.get(oid, 0)
            if refcount != want:
                if self.repair:
                    self.db.execute(
                        "UPDATE objects SET refcount = ?, unref_ns = CASE WHEN ? = 0 THEN ? ELSE NULL END "
                        "WHERE id = ?", (want, want, t, oid))
                self._problem("refcounts", f"object {oid} has refcount {refcount}, should be {want}", True)
            if want and state != OBJECT_LIVE:
                if self.repair:
                    self.db.execute("UPDATE objects SET state = ? WHERE id = ?", (OBJECT_LIVE, oid))
                self._problem("refcounts", f"object {oid} is referenced but not marked live", True)

    def check_unreferenced_objects(self) -> None:
        """Objects no block references are garbage, not damage: content of deleted or
        replaced files waiting for gc's grace period, and uploads no file came to
        reference (a block replaced before its file was committed; a crash before the
        commit). gc collects them."""
        n, size, _oldest, _newest = self.meta.unreferenced_summary()
        if n:
            self.report.garbage["unreferenced objects"] = (n, size)

    def check_blobs(self, verify_data: bool) -> None:
        """Every object's blob exists, has its recorded size and (verify_data) hashes right."""
        rows = self.db.query(
            "SELECT id, hash, size, stored_size, codec, refcount, state FROM objects ORDER BY id")
        total = len(rows)
        bad: list[tuple[ObjectRef, str, int]] = []
        for n, (oid, h, size, stored, codec, refcount, state) in enumerate(rows, 1):
            ref = ObjectRef(oid, bytes(h), size, stored, codec)
            if verify_data:
                problem = self.store.vfs.blocks.verify_object(ref)
            else:
                try:
                    info = self.blobs.stat(ref.key)
                    problem = None if info.size == stored else f"stored size {info.size} != recorded {stored}"
                except KeyError:
                    problem = "missing"
            if problem == "missing" and state == OBJECT_PENDING and refcount == 0:
                problem = None  # an upload under way or interrupted: garbage for gc, not damage
            if problem is not None:
                bad.append((ref, problem, refcount))
            if n % 200 == 0 or n == total:
                self._tick("blobs", n, total)
        for ref, problem, refcount in bad:
            users = self._files_using(ref.id)
            what = f"blob of object {ref.id} ({ref.key}): {problem}"
            if refcount == 0:
                if self.repair:
                    with self.db.transaction():
                        self.db.execute("DELETE FROM objects WHERE id = ? AND refcount = 0", (ref.id,))
                    self.blobs.delete(ref.key)  # a damaged blob is of no use
                self._problem("blobs", what + "; the object was unreferenced", True)
                continue
            twin = self.db.query_value(
                "SELECT id FROM objects WHERE hash = ? AND size = ? AND id <> ? AND state = ?",
                (ref.hash, ref.size, ref.id, OBJECT_LIVE),
            )
            if twin is not None and self.store.vfs.blocks.verify_object(self.meta.get_object(twin)) is None:
                fix = f"; blocks now use identical object {twin}"
            else:
                twin = None
                fix = "; affected blocks now read as zeros: " + ", ".join(users[:10])
            if self.repair:
                with self.db.transaction():
                    if twin is not None:
                        self.db.execute("UPDATE blocks SET object = ? WHERE object = ?", (twin, ref.id))
                        self.db.execute("UPDATE objects SET refcount = refcount + ? WHERE id = ?", (refcount, twin))
                    else:
                        self.db.execute("DELETE FROM blocks WHERE object = ?", (ref.id,))
                    self.db.execute("DELETE FROM objects WHERE id = ?", (ref.id,))
                self.blobs.delete(ref.key)  # a damaged blob is of no use
                self.store.vfs.blocks.forget_cached(ref.id)
            self._problem("blobs", what + fix, True)

    def _files_using(self, oid: int) -> list[str]:
        out = []
        for (ino,) in self.db.query("SELECT DISTINCT inode FROM blocks WHERE object = ?", (oid,)):
            try:
                out.append(self.meta.path_of(ino).decode("utf-8", "surrogateescape"))
            except (StoreError, OSError):
                out.append(f"inode {ino}")
        return out

    def check_orphan_blobs(self) -> None:
        """Blobs that no object names (an interrupted gc). Temporary files of uploads a crash
        interrupted are counted as garbage (gc removes them)."""
        keys: list[tuple[str, int]] = []
        orphans: list[str] = []

        def flush() -> None:
            known = self.meta.object_ids([oid for _k, oid in keys])
            orphans.extend(k for k, oid in keys if oid not in known)
            keys.clear()

        n = 0
        for info in self.blobs.list():
            n += 1
            parsed = parse_blob_key(info.key)
            if parsed is None:
                orphans.append(info.key)
                continue
            keys.append((info.key, parsed[1]))
            if len(keys) >= 500:
                flush()
        flush()
        self.report.checked["blobs"] = n
        for key in orphans:
            if self.repair:
                self.blobs.delete(key)
            self._problem("orphan-blobs", f"blob {key} belongs to no object", True)
        stale = self.store.stale_temp_files()
        if stale:
            self.report.garbage["temporary files of interrupted uploads"] = (
                len(stale), sum(size for _p, size in stale))
