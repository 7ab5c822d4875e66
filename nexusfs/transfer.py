"""Export a tree to a JSON Lines stream, and import such a stream into a store.

``nexus export`` / ``nexus import`` and :func:`export_tree` / :func:`import_stream`.

Stream format (version 1)
=========================

One JSON object per line (UTF-8). Every record is self-contained: an importer
reads the stream once, front to back, and never seeks, so the same stream can
be piped between processes or POSTed to a server.

``header`` (always first)::

    {"type": "header", "format": "nexusfs-export", "version": 1,
     "block_size": 4194304, "inline_max": 8192, "compression": "zstd",
     "with_data": false, "root": "/exported/dir", "store": "<uuid>",
     "created_ns": ..., "nexusfs": "0.1.0"}

Entries follow, parents before children (depth first). Entry paths are
relative to the exported directory and written ``/a/b``; the exported
directory itself is ``/`` (when a single non-directory is exported it is
``/<its name>``). Common fields of every entry::

    "type":  "dir" | "file" | "symlink" | "fifo" | "socket" | "char" | "block"
    "path":  "/a/b"
    "mode":  permission bits (incl. setuid/setgid/sticky), the type is in "type"
    "uid", "gid"
    "atime_ns", "mtime_ns": restored exactly
    "ctime_ns":  informational (an import is a change: ctime is the import time)
    "xattrs":    {"user.name": "<base64 value>", ...}

``file`` adds ``size`` and either ``inline`` (the base64 content of a small
file) or ``blocks``: a list of ``[idx, object id, hash hex, size, stored_size,
codec]`` (a missing index is a hole, so sparse files stay sparse). ``symlink``
adds ``target``; ``char`` and ``block`` add ``rdev``. A non-directory with
several names (hard links) is written once, with ``nlink``; each further name
is a ``{"type": "link", "path": ..., "target": <path of the first name>}``.

Names that are not valid UTF-8: any path or symlink target that does not decode
as UTF-8 is written as ``path_b64`` / ``target_b64`` (base64 of the raw bytes)
instead of ``path`` / ``target``; extended attributes whose name is not UTF-8
go to ``"xattrs_b64": [[name base64, value base64], ...]``.

With ``--with-data`` the raw (uncompressed) content of each distinct object is
written once, before the first file that uses it::

    {"type": "object", "id": 17, "hash": "<hex>", "size": 65536, "data": "<base64>"}

so the stream moves between stores that share nothing. Without it, only object
ids and hashes travel: the target store must reach the same blobs (the
migration case: a new metadata database over the same blob directory or
bucket). The import then registers the same object ids and blob keys, and
refuses an object id that the target holds with other content, or whose blob
is missing from the target's blob store. Note that two stores sharing blobs
must not both collect garbage: retire the old one after the migration.

Between stores of different block sizes (only possible with data), the
importer keeps the objects in a temporary file and writes each file's content
anew in the target's block size.

The last record is ``{"type": "end", "entries": N, "objects": M}``; an import
that does not see it reports the stream as cut short.

Import restores modes, owners (by default only when running as root, like
``tar``; otherwise files belong to the importing user and lose setuid/setgid),
atime/mtime, xattrs, symlinks, hard links and special files. An existing
directory is merged into; an existing non-directory name is an error.

An import is all or nothing. It is applied in batches (one transaction each, so
a long import does not hold the database for its whole length), and one that
fails (a stream cut short or damaged, a name that exists, Ctrl-C) is taken back:
the names it added go, directories it merged into (and the one it imports under,
if it made it) get their attributes back, objects it registered for a migration
are forgotten; uploaded blocks are garbage for ``nexus gc``. Only a crash of the
importing process can leave part of an import behind.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

from . import __version__ as _version
from . import paths
from .blocks import digest
from .errors import FsError, StoreError, fs_error
from .meta.engine import blob_key, now_ns
from .meta.schema import OBJECT_PENDING
from .types import Attr

FORMAT = "nexusfs-export"
VERSION = 1

log = logging.getLogger("nexusfs.transfer")

Progress = Callable[[str, int, "int | None"], None]

_TYPES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}
_FORMATS = {v: k for k, v in _TYPES.items()}

#: object data held in memory by an import before it is staged (bytes)
_IMPORT_BATCH_BYTES = 64 << 20
#: entries applied in one metadata transaction
_IMPORT_BATCH_RECORDS = 2000


@dataclass
class ExportStats:
    entries: int = 0
    objects: int = 0
    object_bytes: int = 0


@dataclass
class ImportStats:
    entries: int = 0
    dirs: int = 0
    files: int = 0
    symlinks: int = 0
    links: int = 0
    specials: int = 0
    objects: int = 0
    bytes_read: int = 0


# ----------------------------------------------------------------- helpers
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: not valid base64") from None


def _put_bytes(rec: dict[str, Any], key: str, raw: bytes) -> None:
    """``rec[key] = text`` if ``raw`` is UTF-8, else ``rec[key + '_b64'] = base64``."""
    try:
        rec[key] = raw.decode("utf-8")
    except UnicodeDecodeError:
        rec[key + "_b64"] = _b64(raw)


def _get_bytes(rec: dict[str, Any], key: str) -> bytes:
    if key + "_b64" in rec:
        return _unb64(rec[key + "_b64"], key + "_b64")
    value = rec[key]
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    return value.encode("utf-8", "surrogateescape")


def _split_rel(raw: bytes) -> list[bytes]:
    """Components of an entry path (relative to the import base); no '.', '..' or empty names."""
    if not raw.startswith(b"/"):
        raise ValueError(f"entry path {paths.decode(raw)!r} does not start with '/'")
    comps = [c for c in raw.split(b"/") if c]
    for c in comps:
        if c in (b".", b"..") or b"\0" in c:
            raise ValueError(f"entry path {paths.decode(raw)!r} has a '.', '..' or NUL component")
    return comps


def _dumps(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


# ------------------------------------------------------------------ export
def export_records(nx: Any, root: paths.PathLike = "/", *, with_data: bool = False,
                   stats: ExportStats | None = None, fetch_threads: int = 4) -> Iterator[dict[str, Any]]:
    """Yield the records of an export of ``root`` (a directory or a single entry), header to end."""
    stats = stats if stats is not None else ExportStats()
    meta = nx.meta
    nx.sync()
    info = nx.stat(root)  # follows a symlink given as the root, like tar's argument
    top = meta.getattr(info.ino)
    root_norm = paths.normalize(root)
    header: dict[str, Any] = {
        "type": "header",
        "format": FORMAT,
        "version": VERSION,
        "block_size": meta.block_size,
        "inline_max": meta.inline_max,
        "compression": meta.settings.get("compression", "zstd"),
        "with_data": with_data,
        "store": meta.settings.get("uuid", ""),
        "created_ns": time.time_ns(),
        "nexusfs": _version,
    }
    _put_bytes(header, "root", paths.encode(root_norm))
    yield header

    emitted: set[int] = set()  # object ids already written (with_data)
    first_name: dict[int, bytes] = {}  # inode -> first exported path, for hard links
    pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="nexus-export") if with_data else None
    try:
        def entry(rel: bytes, attr: Attr) -> Iterator[dict[str, Any]]:
            if not attr.is_dir and attr.nlink > 1:
                first = first_name.get(attr.ino)
                if first is not None:
                    rec: dict[str, Any] = {"type": "link"}
                    _put_bytes(rec, "path", rel)
                    _put_bytes(rec, "target", first)
                    stats.entries += 1
                    yield rec
                    return
                first_name[attr.ino] = rel
            yield from _entry_records(nx, rel, attr, pool, emitted, stats)

        if not top.is_dir:
            yield from entry(b"/" + paths.split(root_norm)[-1], top)
        else:
            yield from entry(b"/", top)
            stack: list[tuple[bytes, int]] = [(b"", top.ino)]
            while stack:
                rel_dir, dino = stack.pop()
                names = meta.list_names(dino)
                attrs = meta.getattr_many([ino for _n, ino, _m in names])
                subdirs: list[tuple[bytes, int]] = []
                for name, ino, _mode in names:
                    attr = attrs.get(ino)
                    if attr is None:  # removed while we were listing
                        continue
                    rel = rel_dir + b"/" + bytes(name)
                    yield from entry(rel, attr)
                    if attr.is_dir:
                        subdirs.append((rel, ino))
                stack.extend(reversed(subdirs))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    yield {"type": "end", "entries": stats.entries, "objects": stats.objects}


def _entry_records(nx: Any, rel: bytes, attr: Attr, pool: ThreadPoolExecutor | None,
                   emitted: set[int], stats: ExportStats) -> Iterator[dict[str, Any]]:
    meta = nx.meta
    fmt = stat.S_IFMT(attr.mode)
    kind = _TYPES.get(fmt)
    if kind is None:
        raise StoreError(f"{paths.decode(rel)}: inode {attr.ino} has unknown file type {oct(fmt)}")
    rec: dict[str, Any] = {"type": kind}
    _put_bytes(rec, "path", rel)
    rec.update(mode=stat.S_IMODE(attr.mode), uid=attr.uid, gid=attr.gid,
               atime_ns=attr.atime_ns, mtime_ns=attr.mtime_ns, ctime_ns=attr.ctime_ns)
    xattrs: dict[str, str] = {}
    odd: list[list[str]] = []
    for name, value in meta.xattrs(attr.ino).items():
        try:
            xattrs[name.decode("utf-8")] = _b64(value)
        except UnicodeDecodeError:
            odd.append([_b64(name), _b64(value)])
    rec["xattrs"] = xattrs
    if odd:
        rec["xattrs_b64"] = odd
    if not attr.is_dir and attr.nlink > 1:
        rec["nlink"] = attr.nlink
    if kind == "symlink":
        _put_bytes(rec, "target", meta.readlink(attr.ino))
    elif kind in ("char", "block"):
        rec["rdev"] = attr.rdev
    elif kind == "file":
        rec["size"] = attr.size
        inline = meta.read_inline(attr.ino)
        if inline is not None:
            rec["inline"] = _b64(inline)
        else:
            bmap = meta.block_map(attr.ino)
            rec["blocks"] = [[i, r.id, r.hash.hex(), r.size, r.stored_size, r.codec] for i, r in bmap.items()]
            if pool is not None:
                todo = []
                for r in bmap.values():
                    if r.id not in emitted:
                        emitted.add(r.id)
                        todo.append(r)
                yield from _object_records(nx, todo, pool, stats)
    stats.entries += 1
    yield rec


def _object_records(nx: Any, refs: list[Any], pool: ThreadPoolExecutor,
                    stats: ExportStats, window: int = 8) -> Iterator[dict[str, Any]]:
    """Object records for ``refs``, fetched a few at a time in parallel, in order."""
    fetch = nx.vfs.blocks.fetch
    futures: list[tuple[Any, Future]] = []
    it = iter(refs)
    for r in it:
        futures.append((r, pool.submit(fetch, r)))
        if len(futures) >= window:
            break
    while futures:
        r, fut = futures.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            futures.append((nxt, pool.submit(fetch, nxt)))
        data = bytes(fut.result())
        stats.objects += 1
        stats.object_bytes += len(data)
        yield {"type": "object", "id": r.id, "hash": r.hash.hex(), "size": r.size, "data": _b64(data)}


def export_tree(nx: Any, out: IO[bytes], root: paths.PathLike = "/", *, with_data: bool = False,
                progress: Progress | None = None) -> ExportStats:
    """Write an export of ``root`` to the binary stream ``out``; return what was written."""
    stats = ExportStats()
    total = None
    if paths.normalize(root) == "/":
        total = nx.meta.db.query_value("SELECT COUNT(*) FROM inodes", (), 0)
    last = 0
    for rec in export_records(nx, root, with_data=with_data, stats=stats):
        out.write(_dumps(rec))
        if progress and stats.entries != last:
            last = stats.entries
            progress("entries", last, total)
    out.flush()
    return stats


# ------------------------------------------------------------------ import
class Importer:
    """Applies export records to a store, in stream order. Feed records with :meth:`add`, then :meth:`finish`.

    Object data is staged (hashed, compressed, uploaded) in the block layer's
    threads; metadata is applied in batches, one transaction per batch.
    """

    def __init__(self, nx: Any, under: paths.PathLike = "/", *, same_owner: bool | None = None) -> None:
        self.nx = nx
        self.store = nx.store
        self.meta = nx.meta
        self.vfs = nx.vfs
        self.db = nx.meta.db
        self.blobs = nx.store.blobs
        self.same_owner = os.geteuid() == 0 if same_owner is None else same_owner
        self.stats = ImportStats()
        # what to take back if the import fails: names added to directories that were there
        # before (parent, name), those directories' attributes before it changed them, the
        # directories it made (what it puts in them goes with them), objects it registered
        self.added: list[tuple[int, bytes]] = []
        self.saved_dirs: dict[int, tuple[Attr, dict[bytes, bytes]]] = {}
        self.made_dirs: set[int] = set()
        self.registered: set[int] = set()
        self.base = self._make_base(under)
        self.header: dict[str, Any] | None = None
        self.ended = False
        self.line = 0
        #: directories created or merged: relative path -> inode
        self.dirs: dict[bytes, int] = {b"": self.base}
        #: non-directories with several names: relative path -> inode
        self.multi: dict[bytes, int] = {}
        #: source object id -> target object id (None: all zeros, a hole)
        self.objects: dict[int, int | None] = {}
        #: migration (no data): object ids known to be registered in the target
        self.adopted: set[int] = set()
        self.dir_times: list[tuple[int, int, int]] = []
        self._batch: list[tuple[int, dict[str, Any]]] = []
        self._staging: dict[int, Future] = {}
        self._staged_bytes = 0
        self._by_hash: dict[tuple[str, int], int] = {}
        self._spool: IO[bytes] | None = None
        self._spooled: dict[int, tuple[int, int]] = {}
        self.reblock = False

    def _make_base(self, under: paths.PathLike) -> int:
        """The directory to import into, made with its missing parents if need be."""
        try:
            base = self.nx.stat(under)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            prefix = "/"
            for name in paths.split(under):  # the first missing one: taken back on failure
                path = paths.join(prefix, name)
                if not self.nx.exists(path):
                    self._adding(self.nx.stat(prefix).ino, name)
                    break
                prefix = path
            self.nx.mkdir(under, parents=True, exist_ok=True)
            base = self.nx.stat(under)
            self.made_dirs.add(base.ino)
        if not base.is_dir:
            raise fs_error(errno.ENOTDIR, paths.normalize(under))
        return base.ino

    # -- taking it back -------------------------------------------------------
    def _adding(self, parent: int, name: bytes) -> None:
        """About to add ``name`` to directory ``parent``."""
        if parent not in self.made_dirs:
            self._changing(parent)
            self.added.append((parent, name))

    def _changing(self, ino: int) -> None:
        """About to change the attributes (or entries) of directory ``ino``."""
        if ino not in self.made_dirs and ino not in self.saved_dirs:
            self.saved_dirs[ino] = (self.meta.getattr(ino), self.meta.xattrs(ino))

    def abort(self) -> None:
        """Take back everything this import did (see the module docstring), then let go."""
        self.close()
        try:
            with self.db.transaction():
                self._take_back()
        except Exception:  # noqa: BLE001 - the error that made the import fail is the one to raise
            log.exception("a failed import could not be taken back completely")

    def _take_back(self) -> None:
        for parent, name in reversed(self.added):
            child = self.meta.lookup_inode(parent, name)
            if child is None:
                continue  # its batch was rolled back
            if stat.S_ISDIR(self.meta.getattr(child).mode):
                self.nx._delete_tree(child)  # noqa: SLF001 - the API's own tree removal
                self.vfs.rmdir(parent, name)
            else:
                self.vfs.unlink(parent, name)
        for ino, (attr, xattrs) in self.saved_dirs.items():
            now = self.meta.xattrs(ino)
            for name in now.keys() - xattrs.keys():
                self.meta.removexattr(ino, name)
            for name, value in xattrs.items():
                if now.get(name) != value:
                    self.meta.setxattr(ino, name, value)
            self.meta.setattr(ino, mode=stat.S_IMODE(attr.mode), uid=attr.uid, gid=attr.gid,
                              atime_ns=attr.atime_ns, mtime_ns=attr.mtime_ns, ctime_ns=attr.ctime_ns)
        if self.registered:
            self.db.query_in("DELETE FROM objects WHERE refcount = 0 AND id IN ({ids})", self.registered)
        self.added.clear()
        self.saved_dirs.clear()
        self.registered.clear()

    # -- intake ---------------------------------------------------------------
    def add(self, rec: Any, line: int | None = None) -> None:
        self.line = line if line is not None else self.line + 1
        try:
            self._add(rec)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"line {self.line}: malformed record ({type(exc).__name__}: {exc})") from None

    def _add(self, rec: Any) -> None:
        if not isinstance(rec, dict):
            raise ValueError(f"line {self.line}: a record must be a JSON object")
        kind = rec.get("type")
        if self.header is None:
            self._start(rec)
            return
        if self.ended:
            raise ValueError(f"line {self.line}: records after the end record")
        if kind == "object":
            self._object(rec)
        elif kind == "end":
            self.ended = True
            self._flush()
            if rec.get("entries") not in (None, self.stats.entries):
                raise ValueError(
                    f"the stream announces {rec['entries']} entries but carried {self.stats.entries}")
        elif kind in _FORMATS or kind == "link":
            self._batch.append((self.line, rec))
            if len(self._batch) >= _IMPORT_BATCH_RECORDS:
                self._flush()
        elif kind == "header":
            raise ValueError(f"line {self.line}: a second header")
        else:
            raise ValueError(f"line {self.line}: unknown record type {kind!r}")

    def _start(self, rec: dict[str, Any]) -> None:
        if rec.get("type") != "header" or rec.get("format") != FORMAT:
            raise ValueError("not a nexusfs export (the first line is not a nexusfs-export header)")
        version = rec.get("version")
        if version != VERSION:
            raise ValueError(f"export format version {version} is not supported (this nexusfs reads {VERSION})")
        bs = rec["block_size"]
        if not isinstance(bs, int) or bs <= 0:
            raise ValueError("header: bad block_size")
        if bs != self.meta.block_size:
            if not rec.get("with_data"):
                raise StoreError(
                    f"the export uses block size {bs} but this store uses {self.meta.block_size}; "
                    "an export without data can only go to a store with the same block size "
                    "(export with --with-data instead)")
            self.reblock = True
            self._spool = tempfile.TemporaryFile(prefix="nexus-import-")
        self.header = rec

    def _object(self, rec: dict[str, Any]) -> None:
        if not self.header or not self.header.get("with_data"):
            raise ValueError(f"line {self.line}: object record in an export made without data")
        oid = rec["id"]
        data = _unb64(rec["data"], f"line {self.line}: data")
        if len(data) != rec["size"] or digest(data).hex() != rec["hash"]:
            raise ValueError(f"line {self.line}: object {oid} does not match its hash or size (corrupt export)")
        self.stats.objects += 1
        # identical content under several ids (the source did not deduplicate): store it once
        key = (rec["hash"], len(data))
        first = self._by_hash.get(key)
        if first is not None:
            if self.reblock:
                self._spooled[oid] = self._spooled[first]
            elif first in self._staging:
                self._staging[oid] = self._staging[first]
            else:
                self.objects[oid] = self.objects[first]
            return
        self._by_hash[key] = oid
        if self.reblock:
            assert self._spool is not None
            self._spool.seek(0, os.SEEK_END)
            self._spooled[oid] = (self._spool.tell(), len(data))
            self._spool.write(data)
            return
        self._staging[oid] = self.vfs.blocks.submit_stage(data)
        self._staged_bytes += len(data)
        if self._staged_bytes >= _IMPORT_BATCH_BYTES:
            self._flush()

    def finish(self) -> ImportStats:
        """Apply what is left and check the stream was complete; on any failure, take the
        whole import back."""
        try:
            if self.header is None:
                raise ValueError("the stream is empty (no nexusfs-export header)")
            self._flush()
            if not self.ended:
                raise ValueError("the stream ended before its end record: the export is incomplete "
                                 "(nothing was imported)")
            if self.dir_times:
                with self.db.transaction():
                    for ino, at, mt in self.dir_times:
                        self.meta.setattr(ino, atime_ns=at, mtime_ns=mt)
                self.dir_times.clear()
        except BaseException:
            self.abort()
            raise
        self.close()
        return self.stats

    def close(self) -> None:
        for fut in self._staging.values():
            fut.cancel()
        self._staging.clear()
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    # -- applying -------------------------------------------------------------
    def _flush(self) -> None:
        staging, self._staging, self._staged_bytes = self._staging, {}, 0
        for oid, fut in staging.items():
            ref = fut.result()
            self.objects[oid] = ref.id if ref is not None else None
        batch, self._batch = self._batch, []
        late: list[tuple[int, int, dict[str, Any]]] = []
        with self.db.transaction():
            for line, rec in batch:
                self.line = line
                try:
                    self._apply(rec, late)
                except (KeyError, TypeError, IndexError, AttributeError) as exc:
                    raise ValueError(f"line {line}: malformed record ({type(exc).__name__}: {exc})") from None
                except FsError as exc:
                    raise FsError(exc.errno, f"line {line}: {exc}") from None
        for line, ino, rec in late:
            self.line = line
            self._write_content(ino, rec)

    def _parent(self, comps: list[bytes]) -> int:
        rel = b"/" + b"/".join(comps[:-1]) if len(comps) > 1 else b""
        ino = self.dirs.get(rel)
        if ino is not None:
            return ino
        ino = self.base
        for c in comps[:-1]:
            attr = self.meta.lookup(ino, c)
            if not attr.is_dir:
                raise fs_error(errno.ENOTDIR, paths.decode(rel))
            ino = attr.ino
        self.dirs[rel] = ino
        return ino

    def _owner(self, rec: dict[str, Any]) -> tuple[int, int, int]:
        mode = int(rec["mode"]) & 0o7777
        if self.same_owner:
            return mode, int(rec["uid"]), int(rec["gid"])
        if rec["type"] != "dir":
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        else:
            mode &= ~stat.S_ISUID
        return mode, self.nx.uid, self.nx.gid

    def _apply(self, rec: dict[str, Any], late: list[tuple[int, int, dict[str, Any]]]) -> None:
        kind = rec["type"]
        raw = _get_bytes(rec, "path")
        comps = _split_rel(raw)
        rel = b"/" + b"/".join(comps) if comps else b""
        shown = paths.decode(raw)
        self.stats.entries += 1
        if kind == "link":
            target = _get_bytes(rec, "target")
            tcomps = _split_rel(target)
            trel = b"/" + b"/".join(tcomps)
            ino = self.multi.get(trel)
            if ino is None:
                ino = self.meta.lookup(self._parent(tcomps), tcomps[-1]).ino if tcomps else self.base
            if not comps:
                raise ValueError(f"line {self.line}: a link cannot replace the import directory")
            parent = self._parent(comps)
            self._adding(parent, comps[-1])
            self.meta.link(ino, parent, comps[-1])
            self.stats.links += 1
            return
        mode, uid, gid = self._owner(rec)
        at, mt = int(rec["atime_ns"]), int(rec["mtime_ns"])
        fmt = _FORMATS[kind]
        if kind == "dir":
            if comps:
                parent = self._parent(comps)
                existing = self.meta.lookup_inode(parent, comps[-1])
                if existing is None:
                    self._adding(parent, comps[-1])
                    attr = self.meta.create(parent, comps[-1], fmt | mode, uid, gid)
                    self.made_dirs.add(attr.ino)
                else:
                    attr = self.meta.getattr(existing)
                    if not attr.is_dir:
                        raise fs_error(errno.EEXIST, f"{shown} exists and is not a directory")
                ino = attr.ino
            else:
                ino = self.base
            self._changing(ino)
            self.meta.setattr(ino, mode=mode, uid=uid, gid=gid)
            self._xattrs(ino, rec)
            self.dirs[rel] = ino
            self.dir_times.append((ino, at, mt))
            self.stats.dirs += 1
            return
        if not comps:
            raise ValueError(f"line {self.line}: the root entry of an export must be a directory")
        parent = self._parent(comps)
        if self.meta.lookup_inode(parent, comps[-1]) is not None:
            raise fs_error(errno.EEXIST, f"cannot import {shown}")
        target = _get_bytes(rec, "target") if kind == "symlink" else None
        rdev = int(rec.get("rdev", 0)) if kind in ("char", "block") else 0
        self._adding(parent, comps[-1])
        attr = self.meta.create(parent, comps[-1], fmt | mode, uid, gid, rdev=rdev, target=target,
                                times_ns=(at, mt, now_ns()))
        ino = attr.ino
        if kind != "symlink" and (stat.S_IMODE(attr.mode) != mode or attr.gid != gid):
            self.meta.setattr(ino, mode=mode, gid=gid)  # a setgid directory changed them
        self._xattrs(ino, rec)
        if rec.get("nlink", 1) > 1:
            self.multi[rel] = ino
        if kind == "file":
            self._content(ino, rec, late)
            self.stats.files += 1
        elif kind == "symlink":
            self.stats.symlinks += 1
        else:
            self.stats.specials += 1

    def _xattrs(self, ino: int, rec: dict[str, Any]) -> None:
        for name, value in (rec.get("xattrs") or {}).items():
            self.meta.setxattr(ino, name.encode("utf-8", "surrogateescape"), _unb64(value, f"xattr {name}"))
        for name, value in rec.get("xattrs_b64") or ():
            self.meta.setxattr(ino, _unb64(name, "xattr name"), _unb64(value, "xattr value"))

    def _content(self, ino: int, rec: dict[str, Any], late: list[tuple[int, int, dict[str, Any]]]) -> None:
        size = int(rec["size"])
        mt = int(rec["mtime_ns"])
        if "inline" in rec:
            data = _unb64(rec["inline"], f"line {self.line}: inline")
            if len(data) > size:
                raise ValueError(f"line {self.line}: inline content is longer than the file size")
            if len(data) > self.vfs.inline_max:
                late.append((self.line, ino, rec))  # too big to be inline here: write it as blocks
                return
            self.meta.commit_content(ino, size=size, changed={}, keep_blocks=0, inline=data,
                                     mtime_ns=mt, ctime_ns=None)
            return
        blocks = rec["blocks"]
        if self.reblock:
            late.append((self.line, ino, rec))
            return
        changed: dict[int, int | None] = {}
        bs = self.meta.block_size
        for entry in blocks:
            idx, oid, hash_hex, bsize = int(entry[0]), int(entry[1]), str(entry[2]), int(entry[3])
            if idx < 0 or idx * bs >= size or bsize > bs:
                raise ValueError(f"line {self.line}: block {idx} does not fit a file of {size} bytes")
            if self.header and self.header.get("with_data"):
                if oid not in self.objects:
                    raise ValueError(f"line {self.line}: object {oid} was not in the stream before its first use")
                target = self.objects[oid]
            else:
                self._adopt(oid, bytes.fromhex(hash_hex), bsize, int(entry[4]), int(entry[5]))
                target = oid
            if target is not None:
                changed[idx] = target
        self.meta.commit_content(ino, size=size, changed=changed, keep_blocks=None, inline=None,
                                 mtime_ns=mt, ctime_ns=None)

    def _adopt(self, oid: int, h: bytes, size: int, stored_size: int, codec: int) -> None:
        """Register object ``oid`` (whose blob the target blob store already holds) in the target."""
        if oid in self.adopted:
            return
        row = self.db.query_one("SELECT hash, size FROM objects WHERE id = ?", (oid,))
        key = blob_key(h, oid)
        if row is not None:
            if bytes(row[0]) != h or row[1] != size:
                raise StoreError(
                    f"object {oid} already exists in this store with other content "
                    f"(hash {bytes(row[0]).hex()[:16]}..., not {h.hex()[:16]}...): this export must be "
                    "imported with its data (export --with-data) or into a store of its own")
        else:
            if not self.blobs.exists(key):
                raise StoreError(
                    f"blob {key} (object {oid}) is missing from the blob store {self.blobs.url}: an export "
                    "without data needs the source store's blobs (or export --with-data)")
            self.db.execute(
                "INSERT INTO objects (id, hash, size, stored_size, codec, refcount, state, unref_ns) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                (oid, h, size, stored_size, codec, OBJECT_PENDING, now_ns()),
            )
            self.registered.add(oid)
        self.adopted.add(oid)

    def _write_content(self, ino: int, rec: dict[str, Any]) -> None:
        """Write a file's content through the VFS (re-blocked to this store's block size)."""
        size = int(rec["size"])
        fh = self.vfs.open(ino, os.O_WRONLY, update_atime=False)
        try:
            if "inline" in rec:
                self.vfs.write(fh, 0, _unb64(rec["inline"], "inline"))
            else:
                assert self.header is not None and self._spool is not None
                sbs = int(self.header["block_size"])
                for entry in rec["blocks"]:
                    idx, oid = int(entry[0]), int(entry[1])
                    where = self._spooled.get(oid)
                    if where is None:
                        raise ValueError(f"line {self.line}: object {oid} was not in the stream before its first use")
                    self._spool.seek(where[0])
                    data = self._spool.read(where[1])
                    if idx * sbs + len(data) > size:
                        raise ValueError(f"line {self.line}: block {idx} does not fit a file of {size} bytes")
                    self.vfs.write(fh, idx * sbs, data)
            self.vfs.truncate(ino, size)
        finally:
            self.vfs.release(fh)
        self.vfs.setattr(ino, atime_ns=int(rec["atime_ns"]), mtime_ns=int(rec["mtime_ns"]))


def read_records(stream: IO[bytes], stats: ImportStats | None = None,
                 progress: Progress | None = None, total: int | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, record) of each non-empty line of a JSON Lines stream."""
    n = 0
    done = 0
    last_tick = 0
    for line in stream:
        n += 1
        done += len(line)
        if stats is not None:
            stats.bytes_read = done
        if progress and done - last_tick >= 1 << 20:
            last_tick = done
            progress("bytes", done, total)
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"line {n}: not a JSON record ({exc})") from None
        yield n, rec
    if progress:
        progress("bytes", done, total)


def import_records(nx: Any, records: Iterable[Any], under: paths.PathLike = "/", *,
                   same_owner: bool | None = None) -> ImportStats:
    """Import already-parsed records (e.g. from a server request) below ``under``."""
    imp = Importer(nx, under, same_owner=same_owner)
    try:
        for rec in records:
            imp.add(rec)
    except BaseException:
        imp.abort()
        raise
    return imp.finish()


def import_stream(nx: Any, stream: IO[bytes], under: paths.PathLike = "/", *,
                  same_owner: bool | None = None, progress: Progress | None = None,
                  total: int | None = None) -> ImportStats:
    """Import a JSON Lines export read from the binary stream ``stream`` below ``under``."""
    imp = Importer(nx, under, same_owner=same_owner)
    try:
        for n, rec in read_records(stream, imp.stats, progress, total):
            imp.add(rec, n)
    except BaseException:
        imp.abort()
        raise
    return imp.finish()


__all__ = [
    "ExportStats",
    "ImportStats",
    "Importer",
    "export_records",
    "export_tree",
    "import_records",
    "import_stream",
    "read_records",
]
