"""Kernel requests on the virtual ``.search/`` tree (see :mod:`mount.search_tree`).

Queries run in a worker thread (a grep may read many files) and their results
are filtered by what the caller may read: a ``.search`` directory never shows
a path, or a line of a file, that its user could not reach themselves.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from typing import Any

import trio

from nexusfs import paths
from nexusfs.errors import FsError
from nexusfs.search.grep import GrepOptions
from nexusfs.search.pattern import compile_glob
from nexusfs.types import Attr
from nexusfs.vfs import VFS

from .search_tree import SEARCH_DIR, SEMANTIC_K, VIRTUAL_BASE, Match, Node, SearchTree, decode_query


class Caller:
    """Who asked (uid, gid, supplementary groups), for permission filtering."""

    def __init__(self, uid: int, gid: int, groups: set[int]) -> None:
        self.uid, self.gid, self.groups = uid, gid, groups

    @property
    def key(self) -> tuple:
        """Callers with the same key may see the same (filtered) results."""
        return ("root",) if self.uid == 0 else (self.uid, self.gid, frozenset(self.groups))


class SearchDirs:
    def __init__(self, vfs: VFS, searcher: Any) -> None:
        self.vfs = vfs
        self.searcher = searcher
        self.tree = SearchTree(self._owner)
        self._fh = itertools.count(VIRTUAL_BASE)
        self._open: dict[int, bytes] = {}

    def _owner(self, scope: int) -> tuple[int, int]:
        try:
            a = self.vfs.getattr(scope)
            return a.uid, a.gid
        except FsError:
            return 0, 0

    @staticmethod
    def is_virtual(ino: int) -> bool:
        return ino >= VIRTUAL_BASE

    def node(self, ino: int) -> Node:
        node = self.tree.get(ino)
        if node is None:
            raise FsError(errno.ENOENT, "search result is gone")
        return node

    def attr(self, ino: int) -> Attr:
        return self.tree.attr(self.node(ino))

    # ------------------------------------------------------------ lookups
    def lookup_search_dir(self, parent: int) -> Node:
        """``D/.search`` for a real directory D."""
        attr = self.vfs.getattr(parent)
        if not attr.is_dir:
            raise FsError(errno.ENOTDIR)
        scope_path = paths.decode(self.vfs.meta.path_of(parent))
        node = self.tree.root(parent, scope_path)
        self.tree.looked_up(node)
        return node

    async def lookup(self, parent: int, name: bytes, caller: Caller) -> Node:
        pnode = self.node(parent)
        if name in (b".", b".."):
            raise FsError(errno.ENOENT)
        if pnode.kind == "kind":
            node = await trio.to_thread.run_sync(self._run, pnode, name, caller)
        else:
            node = self.tree.child(pnode, name)
            if node is None:
                raise FsError(errno.ENOENT)
        self.tree.looked_up(node)
        return node

    def listing(self, ino: int) -> list[tuple[bytes, Node]]:
        return self.tree.listing(self.node(ino))

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if node.kind != "link":
            raise FsError(errno.EINVAL)
        return node.target

    # --------------------------------------------------------------- files
    def open(self, ino: int, flags: int) -> int:
        node = self.node(ino)
        if node.kind != "results":
            raise FsError(errno.EISDIR if node.kind != "link" else errno.ELOOP)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FsError(errno.EROFS)
        fh = next(self._fh)
        self._open[fh] = node.data
        return fh

    def is_virtual_fh(self, fh: int) -> bool:
        return fh in self._open

    def read(self, fh: int, off: int, size: int) -> bytes:
        return self._open[fh][off : off + size]

    def release(self, fh: int) -> None:
        self._open.pop(fh, None)

    def forget(self, ino: int, n: int) -> None:
        self.tree.forget(ino, n)

    # ------------------------------------------------------------- queries
    def _run(self, kind_node: Node, name: bytes, caller: Caller) -> Node:
        """Run the query named ``name`` and build its directory (worker thread)."""
        generation = self.generation()
        node = self.tree.existing_query(kind_node, name, caller.key)
        if node is not None and self.tree.fresh(node, generation):
            return node
        matches, header = self.query(kind_node, name, caller)
        return self.tree.query_dir(kind_node, name, matches, header, caller.key, generation)

    def generation(self) -> tuple:
        """Changes whenever anything is committed to the store, by this process or another."""
        db = self.vfs.meta.db
        conn = getattr(db, "conn", None)
        if conn is None or not hasattr(conn, "total_changes"):
            return (time.monotonic_ns(),)  # cannot tell: never reuse results
        with db.lock:
            # total_changes: this connection's writes; data_version: other connections' commits
            return (conn.total_changes(), db.query_value("PRAGMA data_version"))

    def query(self, kind_node: Node, name: bytes, caller: Caller) -> tuple[list[Match], str]:
        q = decode_query(name)
        if not q:
            raise FsError(errno.ENOENT)
        scope, scope_path = kind_node.scope, kind_node.scope_path
        skip = 0 if scope_path == "/" else len(scope_path)

        def rel(p: str) -> str:
            return p[skip:].lstrip("/")

        kind = kind_node.search
        matches: list[Match] = []
        header = ""
        if kind == b"glob":
            try:
                g = compile_glob(q)
            except ValueError as exc:
                raise FsError(errno.EINVAL, str(exc)) from None
            start, start_ino = scope_path, scope
            for comp in g.literal_prefix:
                child = self.vfs.meta.lookup_inode(start_ino, paths.encode(comp))
                if child is None:
                    return [], ""
                start, start_ino = paths.join(start, comp), child
            for p, ino in self.searcher.glob_walk(g, scope_path, start, start_ino):
                r = rel(p)
                if self._may_see(scope, r, ino, caller, need_read=False):
                    matches.append(Match(r, r))
        elif kind in (b"grep", b"grep-i"):
            opts = GrepOptions(ignore_case=kind == b"grep-i")
            self.vfs.sync_open_files()
            try:
                found = self.searcher.grep(q, scope, scope_path, opts)
            except ValueError as exc:
                raise FsError(errno.EINVAL, str(exc)) from None
            allowed: dict[str, bool] = {}
            for m in found:
                r = rel(m.path)
                if r not in allowed:
                    allowed[r] = self._may_see(scope, r, None, caller, need_read=True)
                if allowed[r]:
                    matches.append(Match(r, f"{r}:{m.line_no}:{m.line}"))
        elif kind == b"semantic":
            results = self.searcher.search(q, scope_path, SEMANTIC_K * 2)
            for hit in results:  # one per distinct content: its copies are listed on its line
                seen = [r for r in map(rel, hit.paths) if self._may_see(scope, r, None, caller, need_read=True)]
                if seen:
                    matches.append(Match(seen[0], hit.line(seen)))
                if len(matches) >= SEMANTIC_K:
                    break
            if results.pending:
                header = f"# {results.pending} file(s) not indexed yet; results may miss them\n"
        else:
            raise FsError(errno.ENOENT)
        return matches, header

    def _may_see(self, scope: int, rel: str, ino: int | None, caller: Caller, *, need_read: bool) -> bool:
        """Could the caller reach (and read) ``scope/rel`` on their own?"""
        if caller.uid == 0:
            return True
        cur = scope
        parts = [paths.encode(c) for c in rel.split("/") if c]
        for i, name in enumerate(parts):
            if not self.vfs.access(cur, os.X_OK, caller.uid, caller.gid, caller.groups):
                return False
            child = self.vfs.meta.lookup_inode(cur, name)
            if child is None:
                return False
            cur = child
            if i < len(parts) - 1:
                a = self.vfs.getattr(cur)
                if not stat.S_ISDIR(a.mode):
                    return False
        return not need_read or self.vfs.access(cur, os.R_OK, caller.uid, caller.gid, caller.groups)


__all__ = ["Caller", "SEARCH_DIR", "SearchDirs"]
