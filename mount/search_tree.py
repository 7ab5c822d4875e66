"""The virtual ``.search/`` directories of the mount.

In every directory ``D``, ``D/.search/`` can be looked up (it is never listed,
so ``find``, ``du``, ``rsync``, ``git`` and ``grep -r`` never walk into it) and
searches ``D``'s subtree::

    D/.search/glob/PATTERN/        files whose path (relative to D) matches PATTERN
    D/.search/grep/REGEX/          files with lines matching REGEX
    D/.search/grep-i/REGEX/        the same, ignoring case
    D/.search/semantic/QUERY/      files ranked by meaning

Looking up a name under a kind directory runs that query. The query directory
lists one symbolic link per matching file (pointing back at the real file, so
editors open and save it) and a ``.results`` file: grep-style
``path:line:text`` lines (semantic: ``score path:start-end  snippet``; glob: one
path per line). A ``/`` inside a query is written ``%2F`` (``%`` itself ``%25``).

Entry names are the matching path relative to ``D`` with ``%`` written ``%25``,
``/`` written ``%2F`` and a leading ``.`` written ``%2E``, so no entry can be
mistaken for ``.results``. Results only include files the caller may read.

Everything here is read-only; nodes live while the kernel references them.
"""

from __future__ import annotations

import hashlib
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from nexusfs import paths
from nexusfs.meta.engine import SEARCH_NAME
from nexusfs.types import Attr

SEARCH_DIR = SEARCH_NAME
RESULTS = b".results"
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
    """A query as typed in a path: %2F for '/', %25 for '%'."""
    return paths.decode(unquote_to_bytes(name))


@dataclass
class Node:
    ino: int
    kind: str  # 'root', 'kind', 'query', 'link', 'results'
    scope: int  # the real directory D searched
    scope_path: str  # its path in the store
    search: bytes = b""  # kind name (glob, grep, ...)
    query: str = ""
    target: bytes = b""  # links
    data: bytes = b""  # .results
    entries: dict[bytes, int] = field(default_factory=dict)  # query dirs: name -> node
    lookups: int = 0
    made: float = field(default_factory=time.monotonic)
    made_ns: int = field(default_factory=time.time_ns)
    key: tuple = ()
    #: query dirs: the store's state the results were computed in (see SearchDirs.generation)
    generation: tuple = ()


@dataclass(frozen=True)
class Match:
    rel: str  # path relative to the scope
    line: str  # its line in .results


class SearchTree:
    """Virtual inodes and what they contain. The caller (the Operations class) runs
    queries in a worker thread through :meth:`run_query` and owns permission checks."""

    def __init__(self, uid_gid_of: Callable[[int], tuple[int, int]]) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple, int] = {}
        self._next = VIRTUAL_BASE
        self._lock = threading.Lock()
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

    def query_dir(self, parent: Node, name: bytes, matches: list[Match], header: str = "",
                  who: tuple = (), generation: tuple = ()) -> Node:
        """The directory of one query's results (replacing older results of the same query).

        Results are filtered by permissions, so each caller (``who``) has their own node.
        """
        query = decode_query(name)
        node = self._node(("query", parent.scope, parent.search, name, who), kind="query", scope=parent.scope,
                          scope_path=parent.scope_path, search=parent.search, query=query)
        data = (header + "".join(m.line + "\n" for m in matches)).encode("utf-8", "surrogateescape")
        entries: dict[bytes, int] = {}
        for m in matches:
            ename = encode_entry(m.rel)
            if ename in entries:
                continue
            target = b"../../../" + paths.encode(m.rel)
            link = self._node(("link", node.ino, ename), kind="link", scope=parent.scope,
                              scope_path=parent.scope_path, target=target)
            link.target = target
            entries[ename] = link.ino
        # Other results are another inode: the kernel keeps a file's size as it first saw it
        # (with the writeback cache it trusts its own), so one inode must never change size.
        tag = hashlib.blake2b(data, digest_size=8).digest()
        res = self._node(("results", node.ino, tag), kind="results", scope=parent.scope,
                         scope_path=parent.scope_path)
        res.data = data
        entries[RESULTS] = res.ino
        old, node.entries = node.entries, entries
        node.made = time.monotonic()
        node.made_ns = time.time_ns()
        node.generation = generation
        self._drop_unused(ino for name, ino in old.items() if entries.get(name) != ino)
        return node

    def _listed(self, node: Node) -> bool:
        """A link or .results still named by its query directory's current results (the
        kernel may forget it and look the name up again: it must still be there; it goes
        when the results change or the query directory goes)."""
        if node.kind not in ("link", "results"):
            return False
        parent = self._nodes.get(node.key[1])
        return parent is not None and parent.entries.get(self._entry_name(node)) == node.ino

    @staticmethod
    def _entry_name(node: Node) -> bytes:
        return RESULTS if node.kind == "results" else node.key[2]

    def _drop_unused(self, inos) -> None:
        """Forget nodes the kernel holds no reference to."""
        with self._lock:
            for ino in list(inos):
                node = self._nodes.get(ino)
                if node is not None and node.lookups <= 0:
                    del self._nodes[ino]
                    if self._by_key.get(node.key) == ino:
                        del self._by_key[node.key]

    def existing_query(self, kind_node: Node, name: bytes, who: tuple = ()) -> Node | None:
        ino = self._by_key.get(("query", kind_node.scope, kind_node.search, name, who))
        return self._nodes.get(ino) if ino is not None else None

    def fresh(self, node: Node, generation: tuple = ()) -> bool:
        """Results can be reused: recent, and nothing in the store changed since."""
        return time.monotonic() - node.made < RESULT_TTL and node.generation == generation

    def child(self, parent: Node, name: bytes) -> Node | None:
        if parent.kind == "root":
            return self.kind_dir(parent, name)
        if parent.kind == "query":
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
            mode, size, nlink = stat.S_IFREG | 0o444, len(node.data), 1
        else:
            mode, size, nlink = stat.S_IFDIR | 0o555, 0, 2
        return Attr(ino=node.ino, mode=mode, uid=uid, gid=gid, nlink=nlink, size=size, rdev=0,
                    atime_ns=t, mtime_ns=t, ctime_ns=t, btime_ns=t, alloc=size, data_version=0)

    # ------------------------------------------------------------- lifetime
    def looked_up(self, node: Node, n: int = 1) -> None:
        node.lookups += n

    def forget(self, ino: int, n: int) -> None:
        with self._lock:
            node = self._nodes.get(ino)
            if node is None:
                return
            node.lookups -= n
            if node.lookups > 0 or self._listed(node):
                return
            del self._nodes[ino]
            if self._by_key.get(node.key) == ino:
                del self._by_key[node.key]
        if node.kind == "query":
            self._drop_unused(node.entries.values())
