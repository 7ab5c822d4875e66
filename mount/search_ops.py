"""Kernel requests on the virtual ``.search/`` tree (see :mod:`mount.search_tree`).

Queries run in a worker thread (a grep may read many files; its lines are matched in
worker processes, see :mod:`nexusfs.search.matcher`), end after ``search_timeout`` or
as soon as the process that asked has gone away, and are filtered by what the caller
may see: a ``.search`` directory never shows a name in a directory its user could not
list, nor a line of a file they could not read — such files are not even read.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from typing import Any

import trio

from nexusfs import paths
from nexusfs.errors import FsError, NexusError
from nexusfs.search.grep import GrepOptions
from nexusfs.search.pattern import compile_glob
from nexusfs.types import NAME_MAX, Attr, Caller
from nexusfs.vfs import VFS

from .search_tree import (
    SEARCH_DIR,
    SEMANTIC_K,
    VIRTUAL_BASE,
    Node,
    ResultsFile,
    SearchTree,
    decode_query,
)

log = logging.getLogger("nexusfs.mount")

#: a query's .results may hold this much by default (search_results_max)
RESULTS_MAX = 256 << 20


class SearchDirs:
    def __init__(self, vfs: VFS, searcher: Any, *, spill_dir: str | None = None,
                 results_max: int = RESULTS_MAX) -> None:
        self.vfs = vfs
        self.searcher = searcher
        self.spill_dir = spill_dir
        self.results_max = results_max
        self.tree = SearchTree(self._owner)
        self._fh = itertools.count(VIRTUAL_BASE)
        self._open: dict[int, Node] = {}

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
        """A name in the tree, with the kernel's reference taken. A name under a kind
        directory is a query's directory (not run yet); looking inside it runs the query
        (unless recent results can be reused)."""
        pnode = self.node(parent)
        if name in (b".", b".."):
            raise FsError(errno.ENOENT)
        if pnode.kind == "kind":
            if len(name) > NAME_MAX:
                raise FsError(errno.ENAMETOOLONG, f"a query is a file name: at most {NAME_MAX} bytes")
            return self.tree.query_node(pnode, name, caller.key)
        if pnode.kind == "query":
            await self.ensure(pnode, caller)
        node = self.tree.child(pnode, name)
        if node is None:
            raise FsError(errno.ENOENT)
        self.tree.looked_up(node)
        return node

    async def ensure(self, qnode: Node, caller: Caller) -> None:
        """Run a query directory's query now unless its results are current (in a worker
        thread: the kernel meanwhile holds only this directory's lock)."""
        if caller.uid != 0 and caller.key != qnode.key[-1]:
            raise FsError(errno.EACCES, "these are another user's search results")
        if self.tree.current(qnode, self.generation()):
            return
        await trio.to_thread.run_sync(self._run, qnode, caller)

    def listing(self, ino: int) -> list[tuple[bytes, Node]]:
        node = self.node(ino)
        if node.kind == "query" and node.error is not None:
            raise FsError(*node.error)
        return self.tree.listing(node)

    async def opendir(self, ino: int, caller: Caller) -> int:
        node = self.node(ino)
        if not self.tree.attr(node).is_dir:
            raise FsError(errno.ENOTDIR)
        if node.kind == "query":
            await self.ensure(node, caller)
            if node.error is not None:
                raise FsError(*node.error)
        return ino

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if node.kind != "link":
            raise FsError(errno.EINVAL)
        return node.target

    # --------------------------------------------------------------- files
    def open(self, ino: int, flags: int) -> int:
        node = self.node(ino)
        if node.kind not in ("results", "error"):
            raise FsError(errno.EISDIR if node.kind != "link" else errno.ELOOP)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FsError(errno.EROFS)
        if node.kind == "results":
            self.tree.opened(node)
        fh = next(self._fh)
        self._open[fh] = node
        return fh

    def is_virtual_fh(self, fh: int) -> bool:
        return fh in self._open

    def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._open[fh]
        if node.kind == "error":
            return node.message[off : off + size]
        if node.results is None:
            raise FsError(errno.ESTALE)
        return node.results.read(off, size)

    def release(self, fh: int) -> None:
        node = self._open.pop(fh, None)
        if node is not None and node.kind == "results":
            self.tree.closed(node)

    def forget(self, ino: int, n: int) -> None:
        self.tree.forget(ino, n)

    # ------------------------------------------------------------- queries
    def _run(self, qnode: Node, caller: Caller) -> None:
        """Run a query directory's query and fill it with the results (worker thread)."""
        with qnode.running:  # a second look inside waits for the first run, then reuses it
            generation = self.generation()
            if self.tree.current(qnode, generation):
                return
            results = ResultsFile(self.spill_dir, self.results_max)
            try:
                rels = self.query(qnode, caller, results)
            except NexusError as exc:  # FsError, or the query stopped (time limit, memory)
                results.close()
                log.info("%s query %r in %s failed: %s", qnode.search.decode(), paths.decode(qnode.key[3]),
                         qnode.scope_path, exc.message)
                self.tree.fail(qnode, exc.errno, exc.message, generation)
                return
            except BaseException:
                results.close()
                raise
            self.tree.fill(qnode, rels, results, generation)

    def generation(self) -> tuple:
        """Changes whenever anything is committed to the store, by this process or another."""
        return self.vfs.meta.db.generation()

    def query(self, qnode: Node, caller: Caller, out: ResultsFile) -> list[str]:
        """Run a query directory's query, writing its ``.results`` text to ``out``; the
        matching paths relative to the scope, in order (a NexusError when it fails)."""
        q = decode_query(qnode.key[3])
        if not q:
            raise FsError(errno.EINVAL, "an empty query")
        scope, scope_path = qnode.scope, qnode.scope_path
        skip = 0 if scope_path == "/" else len(scope_path)
        who = None if caller.uid == 0 else caller

        def rel(p: str) -> str:
            return p[skip:].lstrip("/")

        def line(text: str) -> None:
            out.write((text + "\n").encode("utf-8", "surrogateescape"))

        kind = qnode.search
        rels: dict[str, None] = {}
        if kind == b"glob":
            try:
                g = compile_glob(q)
            except ValueError as exc:
                raise FsError(errno.EINVAL, str(exc)) from None
            view = self.searcher.view(who, scope)
            guard = self.searcher.guard(caller, "glob")
            start, start_ino = scope_path, scope
            for comp in g.literal_prefix:
                if view is not None and not view.can_list(start_ino):
                    return []
                child = self.vfs.meta.lookup_inode(start_ino, paths.encode(comp))
                if child is None:
                    return []
                start, start_ino = paths.join(start, comp), child
            for p, _ino in self.searcher.glob_walk(g, scope_path, start, start_ino, view=view, guard=guard):
                r = rel(p)
                rels[r] = None
                line(r)
        elif kind in (b"grep", b"grep-i"):
            opts = GrepOptions(ignore_case=kind == b"grep-i")
            self.vfs.sync_open_files()
            try:
                for m in self.searcher.iter_grep(q, scope, scope_path, opts, caller=who,
                                                 guard=self.searcher.guard(caller, "grep")):
                    r = rel(m.path)
                    rels[r] = None
                    line(f"{r}:{m.line_no}:{m.line}")
            except ValueError as exc:
                raise FsError(errno.EINVAL, str(exc)) from None
        elif kind == b"semantic":
            results = self.searcher.search(q, scope_path, SEMANTIC_K * 2)
            if results.pending:
                line(f"# {results.pending} file(s) not indexed yet; results may miss them")
            view = self.searcher.view(who, scope)
            shown = 0
            for hit in results:  # one per distinct content: its copies are listed on its line
                seen = [r for r in map(rel, hit.paths) if view is None or self._may_read(scope, r, view)]
                if seen:
                    rels[seen[0]] = None
                    line(hit.line(seen))
                    shown += 1
                if shown >= SEMANTIC_K:
                    break
        else:
            raise FsError(errno.ENOENT)
        return list(rels)

    def _may_read(self, scope: int, rel: str, view: Any) -> bool:
        """Could the caller list every directory down to ``scope/rel`` and read it?"""
        cur = scope
        for name in [paths.encode(c) for c in rel.split("/") if c]:
            if not view.can_list(cur):
                return False
            child = self.vfs.meta.lookup_inode(cur, name)
            if child is None:
                return False
            cur = child
        return view.can_read(cur)


__all__ = ["SEARCH_DIR", "SearchDirs"]
