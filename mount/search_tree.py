"""The virtual ``.search/`` directories of the mount.

In every directory ``D``, ``D/.search/`` can be looked up (it is never listed,
so ``find``, ``du``, ``rsync``, ``git`` and ``grep -r`` never walk into it) and
searches ``D``'s subtree::

    D/.search/glob/PATTERN/        files whose path (relative to D) matches PATTERN
    D/.search/grep/REGEX/          files with lines matching REGEX
    D/.search/grep-i/REGEX/        the same, ignoring case
    D/.search/semantic/QUERY/      files ranked by meaning

A name under a kind directory is that query's directory; the first look inside it
(listing it, or looking up ``.results``) runs the query. It lists one symbolic link per
matching file (pointing back at the real file, so
editors open and save it) and a ``.results`` file: grep-style
``path:line:text`` lines (semantic: ``score path:start-end  snippet``; glob: one
path per line). A ``/`` inside a query is written ``%2F`` (``%`` itself ``%25``).

Entry names are the matching path relative to ``D`` with ``%`` written ``%25``,
``/`` written ``%2F`` and a leading ``.`` written ``%2E``, so no entry can be
mistaken for ``.results``. Results only include files the caller may read.

A query that fails (an invalid pattern, a time limit, results too large) still has
its directory: it holds only ``.error``, one line saying why, and listing the
directory or looking up ``.results`` fails with the error's errno (EINVAL,
ETIMEDOUT, EFBIG...).

Everything here is read-only; nodes live while the kernel references them, and a
query's results (in memory while small, else in an unnamed temporary file) are freed
when their last reader closes them: the next lookup of the query runs it again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from nexusfs import paths
from nexusfs.errors import FsError
from nexusfs.meta.engine import SEARCH_NAME
from nexusfs.types import Attr

SEARCH_DIR = SEARCH_NAME
RESULTS = b".results"
ERROR = b".error"
KINDS = (b"glob", b"grep", b"grep-i", b"semantic")

#: virtual inode numbers start here (the engine's never get close)
VIRTUAL_BASE = 1 << 56
#: a query's results are reused for this long (ls, then cat, then open...)
RESULT_TTL = 2.0
#: semantic queries return this many ranked files
SEMANTIC_K = 20


def encode_entry(rel: str) -> bytes:
    name = rel.replace("%", "%25").replace("/", "%2F")
    if name.startswith("."):
        name = "%2E" + name[1:]
    raw = paths.encode(name)
    if len(raw) > 255:  # keep it a valid name: the end of the path, plus a tag
        tag = hashlib.blake2b(raw, digest_size=6).hexdigest()
        raw = b"~" + tag.encode() + b"~" + raw[-(255 - len(tag) - 2) :]
    return raw


def decode_query(name: bytes) -> str:
    """A query as typed in a path: %2F for '/', %25 for '%' (no NUL, which no text line
    can hold)."""
    raw = unquote_to_bytes(name)
    if b"\0" in raw:
        raise FsError(errno.EINVAL, "a query cannot contain a NUL byte (%00)")
    return paths.decode(raw)


class ResultsFile:
    """The text of a query's ``.results``: kept in memory while small, then written to an
    unnamed temporary file in ``spill_dir`` (it disappears when closed), and never more
    than ``limit`` bytes (FsError EFBIG beyond)."""

    def __init__(self, spill_dir: str | None, limit: int, memory_max: int | None = None) -> None:
        self.spill_dir = spill_dir
        self.limit = limit
        self.memory_max = memory_max if memory_max is not None else min(1 << 20, limit // 4)
        self.size = 0
        self._mem: bytearray | None = bytearray()
        self._file: int | None = None
        self._hash = hashlib.blake2b(digest_size=8)

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            raise FsError(errno.EFBIG, f"the results exceed {self.limit >> 20} MiB (search_results_max): "
                                       "search a smaller directory, or use `nexus grep`")
        self._hash.update(data)
        if self._mem is not None and self.size + len(data) > self.memory_max:
            self._spill()
        if self._mem is not None:
            self._mem += data
        else:
            assert self._file is not None
            os.pwrite(self._file, data, self.size)
        self.size += len(data)

    def _spill(self) -> None:
        # unnamed (O_TMPFILE where the filesystem has it) and private to this process
        f = tempfile.TemporaryFile(prefix=".search-results-", dir=self.spill_dir, buffering=0)
        fd = os.dup(f.fileno())
        f.close()
        assert self._mem is not None
        os.pwrite(fd, self._mem, 0)
        self._file, self._mem = fd, None

    @property
    def tag(self) -> bytes:
        """A digest of the content (other results are another inode)."""
        return self._hash.digest()

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        if self._mem is not None:
            return bytes(self._mem[offset : offset + size])
        if self._file is None:
            raise FsError(errno.ESTALE, "these search results were freed: look the query up again")
        return os.pread(self._file, size, offset)

    def close(self) -> None:
        self._mem = None
        if self._file is not None:
            os.close(self._file)
            self._file = None


@dataclass
class Node:
    ino: int
    kind: str  # 'root', 'kind', 'query', 'link', 'results', 'error'
    scope: int  # the real directory D searched
    scope_path: str  # its path in the store
    search: bytes = b""  # kind name (glob, grep, ...)
    target: bytes = b""  # links
    results: ResultsFile | None = None  # .results
    message: bytes = b""  # .error
    #: query dirs of a failed query: (errno, reason)
    error: tuple[int, str] | None = None
    entries: dict[bytes, int] = field(default_factory=dict)  # query dirs: name -> node
    lookups: int = 0
    opens: int = 0  # .results: open handles
    made: float = field(default_factory=time.monotonic)
    made_ns: int = field(default_factory=time.time_ns)
    key: tuple = ()
    #: query dirs: the store's state the results were computed in (see SearchDirs.generation)
    generation: tuple = ()
    #: query dirs: held while the query runs, so concurrent lookups inside wait for it
    running: threading.Lock = field(default_factory=threading.Lock)


class SearchTree:
    """Virtual inodes and what they contain. The caller (the Operations class) runs
    queries in a worker thread and owns permission checks.

    Lookup counts change under the tree's lock together with the nodes they keep alive:
    a query run in a worker thread takes its reference before the trio thread can
    process a FORGET that would otherwise drop the node it is about to return."""

    def __init__(self, uid_gid_of: Callable[[int], tuple[int, int]]) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple, int] = {}
        self._next = VIRTUAL_BASE
        self._lock = threading.RLock()
        self._owner = uid_gid_of

    @staticmethod
    def is_virtual(ino: int) -> bool:
        return ino >= VIRTUAL_BASE

    def get(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def _node(self, key: tuple, **kw) -> Node:
        with self._lock:
            ino = self._by_key.get(key)
            if ino is not None and ino in self._nodes:
                return self._nodes[ino]
            ino = self._next
            self._next += 1
            node = Node(ino=ino, key=key, **kw)
            self._nodes[ino] = node
            self._by_key[key] = ino
            return node

    # -------------------------------------------------------------- nodes
    def root(self, scope: int, scope_path: str) -> Node:
        return self._node(("root", scope), kind="root", scope=scope, scope_path=scope_path)

    def kind_dir(self, parent: Node, name: bytes) -> Node | None:
        if name not in KINDS:
            return None
        return self._node(("kind", parent.scope, name), kind="kind", scope=parent.scope,
                          scope_path=parent.scope_path, search=name)

    def query_node(self, parent: Node, name: bytes, who: tuple = ()) -> Node:
        """The directory of query ``name`` under kind directory ``parent`` for callers with
        key ``who`` (results are filtered by permissions, so each caller key has its own),
        with the kernel's reference taken. Looking it up does not run the query: the
        kernel holds the kind directory's lock during a lookup, so a slow query there would
        hold up every other query of that directory; it runs on the first look inside."""
        with self._lock:
            node = self._node(("query", parent.scope, parent.search, name, who), kind="query",
                              scope=parent.scope, scope_path=parent.scope_path, search=parent.search)
            node.lookups += 1
            return node

    def current(self, node: Node, generation: tuple) -> bool:
        """Whether a query directory's contents can be used as they are: recent, nothing
        in the store changed since they were made, and its results not freed."""
        with self._lock:
            if not node.entries or not self.fresh(node, generation):  # (no entries: never run)
                return False
            if node.error is not None:
                return True
            res = self._nodes.get(node.entries.get(RESULTS, 0))
            return res is not None and res.results is not None

    def fill(self, node: Node, rels: list[str], results: ResultsFile, generation: tuple = ()) -> Node:
        """Give a query directory its results: a link for each path in ``rels`` (relative to
        the scope) and ``.results`` (replacing older results)."""
        with self._lock:
            entries: dict[bytes, int] = {}
            for rel in rels:
                ename = encode_entry(rel)
                if ename in entries:
                    continue
                target = b"../../../" + paths.encode(rel)
                link = self._node(("link", node.ino, ename), kind="link", scope=node.scope,
                                  scope_path=node.scope_path, target=target)
                link.target = target
                entries[ename] = link.ino
            # Other results are another inode: the kernel keeps a file's size as it first saw
            # it (with the writeback cache it trusts its own), so one inode must never change size.
            res = self._node(("results", node.ino, results.tag, results.size), kind="results",
                             scope=node.scope, scope_path=node.scope_path)
            if res.results is not None and res.results is not results:
                if res.opens:
                    results.close()  # the same text is open already: keep that copy
                    results = res.results
                else:
                    res.results.close()
            res.results = results
            entries[RESULTS] = res.ino
            return self._set_entries(node, entries, generation, None)

    def fail(self, node: Node, err: int, reason: str, generation: tuple = ()) -> Node:
        """A query that failed: its directory holds only ``.error`` (the reason, one line)."""
        with self._lock:
            message = reason.encode("utf-8", "surrogateescape") + b"\n"
            enode = self._node(("error", node.ino, message), kind="error", scope=node.scope,
                               scope_path=node.scope_path, message=message)
            return self._set_entries(node, {ERROR: enode.ino}, generation, (err, reason))

    def _set_entries(self, node: Node, entries: dict[bytes, int], generation: tuple,
                     error: tuple[int, str] | None) -> Node:
        old, node.entries = node.entries, entries
        node.error = error
        node.made = time.monotonic()
        node.made_ns = time.time_ns()
        node.generation = generation
        self._drop_unused(ino for name, ino in old.items() if entries.get(name) != ino)
        return node

    def _listed(self, node: Node) -> bool:
        """A link or .results still named by its query directory's current results (the
        kernel may forget it and look the name up again: it must still be there; it goes
        when the results change or the query directory goes)."""
        if node.kind not in ("link", "results", "error"):
            return False
        parent = self._nodes.get(node.key[1])
        return parent is not None and parent.entries.get(self._entry_name(node)) == node.ino

    @staticmethod
    def _entry_name(node: Node) -> bytes:
        return {"results": RESULTS, "error": ERROR}.get(node.kind, node.key[2])

    def _drop_unused(self, inos) -> None:
        """Forget nodes the kernel holds no reference to (and free results nobody reads)."""
        with self._lock:
            for ino in list(inos):
                node = self._nodes.get(ino)
                if node is not None and node.lookups <= 0:
                    self._remove(node)

    def _remove(self, node: Node) -> None:
        del self._nodes[node.ino]
        if self._by_key.get(node.key) == node.ino:
            del self._by_key[node.key]
        if node.results is not None and not node.opens:
            node.results.close()
            node.results = None

    def fresh(self, node: Node, generation: tuple = ()) -> bool:
        """Results can be reused: recent, and nothing in the store changed since."""
        return time.monotonic() - node.made < RESULT_TTL and node.generation == generation

    # ------------------------------------------------------------- .results
    def opened(self, node: Node) -> ResultsFile:
        with self._lock:
            if node.results is None:
                raise FsError(errno.ESTALE, "these search results were freed: look the query up again")
            node.opens += 1
            return node.results

    def closed(self, node: Node) -> None:
        """A reader closed ``.results``: the last one frees them (the next lookup of the
        query runs it again)."""
        with self._lock:
            node.opens -= 1
            if node.opens > 0 or node.results is None:
                return
            node.results.close()
            node.results = None
            if node.ino not in self._nodes:
                return
            if node.lookups <= 0 and not self._listed(node):
                self._remove(node)

    def child(self, parent: Node, name: bytes) -> Node | None:
        if parent.kind == "root":
            return self.kind_dir(parent, name)
        if parent.kind == "query":
            if parent.error is not None and name == RESULTS:
                raise FsError(*parent.error)
            ino = parent.entries.get(name)
            return self._nodes.get(ino) if ino is not None else None
        return None

    def listing(self, node: Node) -> list[tuple[bytes, Node]]:
        if node.kind == "root":
            return [(k, self.kind_dir(node, k)) for k in KINDS]  # type: ignore[misc]
        if node.kind == "query":
            return [(name, self._nodes[ino]) for name, ino in node.entries.items() if ino in self._nodes]
        return []

    # ------------------------------------------------------------- attributes
    def attr(self, node: Node) -> Attr:
        uid, gid = self._owner(node.scope)
        t = node.made_ns
        if node.kind == "link":
            mode, size, nlink = stat.S_IFLNK | 0o777, len(node.target), 1
        elif node.kind == "results":
            mode, size, nlink = stat.S_IFREG | 0o444, node.results.size if node.results else 0, 1
        elif node.kind == "error":
            mode, size, nlink = stat.S_IFREG | 0o444, len(node.message), 1
        else:
            mode, size, nlink = stat.S_IFDIR | 0o555, 0, 2
        return Attr(ino=node.ino, mode=mode, uid=uid, gid=gid, nlink=nlink, size=size, rdev=0,
                    atime_ns=t, mtime_ns=t, ctime_ns=t, btime_ns=t, alloc=size, data_version=0)

    # ------------------------------------------------------------- lifetime
    def looked_up(self, node: Node, n: int = 1) -> None:
        with self._lock:
            node.lookups += n

    def forget(self, ino: int, n: int) -> None:
        with self._lock:
            node = self._nodes.get(ino)
            if node is None:
                return
            node.lookups -= n
            if node.lookups > 0 or self._listed(node):
                return
            self._remove(node)
            if node.kind == "query":
                self._drop_unused(node.entries.values())
