"""Answering grep and semantic queries with the index, always checked against real content.

grep: the pattern's required trigrams select candidate docs from the trigram
index; files whose index entry is not current (queued jobs), and content the
index cannot represent, are added; every candidate is then matched line by line
on its committed content. Results are therefore exactly those of a full scan,
whatever state the index is in — the index only makes them fast.

semantic: nearest chunks by embedding and best chunks by BM25 are fused by
reciprocal rank; only files whose indexed version is their current one are
reported, and the result says how many files are still waiting to be indexed.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import stat
import threading
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import paths
from ..blocks import BlockLayer
from ..errors import FsError
from ..meta.engine import MetadataEngine
from ..types import ROOT_INODE, Caller
from .content import read_committed
from .grep import GrepMatch, GrepOptions, compile_pattern, is_binary, translate_gnu
from .index import EmbedderRecord, IndexStatus, SearchIndex
from .indexer import embedder_note, load_embedder
from .literals import fts5_expression, required_query
from .matcher import MatcherPool, QueryGuard, process_gone
from .pattern import GlobPattern
from .vectors import VectorMatrix

#: grep keeps the lines of a content for its other paths (copies, hard links) when the
#: content is at most this large, up to this much content per query; larger ones are read again
KEEP_CONTENT_MAX = 4 << 20
KEEP_TOTAL_MAX = 64 << 20
#: grep matches a file larger than this (and than a block) in pieces of whole lines
PIECE_MAX = 8 << 20

#: reciprocal-rank-fusion constant
RRF_K = 60

_WORD = re.compile(r"\w+", re.UNICODE)

#: English function words: left out of BM25 queries. They match most chunks, so FTS5 would
#: rank tens of thousands of rows for nothing (measured: 3x the query time) while their IDF
#: makes them count for almost nothing in the ranking anyway.
STOPWORDS = frozenset(
    "a an and are as at be been but by can could do does for from had has have how i if in into is it "
    "its me my no not of on or our should so some such than that the their them then there these they "
    "this those to was we were what when where which while who whom why will with would you your".split()
)
#: a query word found in more than this share of all chunks is left out of BM25 queries too
#: (unless it is the query's only word): same reason, for a corpus's own common words
BM25_MAX_DOC_SHARE = 0.10
#: at most this many chunks (summed over the words kept) are ranked by BM25 per query
BM25_POSTINGS = 12_000


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One semantic result: a piece of a content, ranked. Identical files (copies, hard
    links) are one hit: ``path`` is the first of their ``paths``."""

    score: float  # 0..1, higher is better
    path: str
    start_line: int
    end_line: int
    snippet: str  # one line of the piece, control characters taken out: the same in every output
    paths: tuple[str, ...] = ()  # every path with this content in the searched scope, sorted

    def location(self, shown: Sequence[str] | None = None) -> str:
        """``score path:start-end``, then ``(also p2, p3)`` for the other paths; ``shown``
        replaces the paths (the mount writes them relative, and only those a caller may read)."""
        names = list(shown if shown is not None else (self.paths or (self.path,)))
        also = f" (also {', '.join(names[1:])})" if len(names) > 1 else ""
        return f"{self.score:.3f} {names[0]}:{self.start_line}-{self.end_line}{also}"

    def line(self, shown: Sequence[str] | None = None) -> str:
        """The hit as ``nexus search`` and ``.results`` print it: location, two spaces, snippet."""
        return f"{self.location(shown)}  {self.snippet}"

    def __str__(self) -> str:
        return self.location()


class SearchResults(list):
    """Ranked hits; ``pending`` files were not indexed yet when the query ran; ``note``
    says why the configured embedder was not used (the store has another), if it was not."""

    pending: int = 0
    note: str | None = None


def _content_key(ino: int, doc: int | None) -> tuple[str, int]:
    """What grep matches once: an indexed content (shared by copies and links), else a file."""
    return ("doc", doc) if doc is not None else ("ino", ino)


class View:
    """What one caller may see of a subtree (None as a view: everything, e.g. the owner).

    A name shows only if the caller could list (read and search) every directory from
    the searched one down to it, as ``find`` would need; content shows only if the
    caller may also read the file. Answers are remembered for the query's lifetime."""

    def __init__(self, meta: MetadataEngine, caller: Caller, scope: int) -> None:
        self.meta = meta
        self.caller = caller
        self.scope = scope
        self._dirs: dict[int, bool] = {}

    def can_list(self, dino: int) -> bool:
        """May the caller list ``dino`` and every directory between the scope and it?"""
        chain: list[int] = []  # dino and its parents up to one whose answer is known
        cur = dino
        while (ok := self._dirs.get(cur)) is None:
            chain.append(cur)
            try:
                if not self.caller.permits(self.meta.getattr(cur), 0o5):
                    ok = False
                elif cur in (self.scope, ROOT_INODE):
                    ok = True
                else:
                    cur = self.meta.parent_of(cur)
                    continue
            except OSError:
                ok = False
            break
        for d in chain:  # below a directory that cannot be listed, nothing can be seen
            self._dirs[d] = ok
        return ok

    def can_read(self, ino: int) -> bool:
        try:
            return self.caller.permits(self.meta.getattr(ino), 0o4)
        except OSError:
            return False


def visible(view: View | None, parent: int) -> bool:
    return view is None or view.can_list(parent)


@dataclass
class _Plan:
    """One file grep matches: read and matched (``units``), or given the lines of an
    earlier path with the same content (``reuse``)."""

    ino: int
    path: str
    key: Any
    loc: Any
    reuse: bool = False
    #: keep the lines for later paths with the same content
    keep: bool = False


class _Unit:
    """Which plan entry a unit of matching belongs to, and whether it is that file's last."""

    __slots__ = ("plan", "last", "binary")

    def __init__(self, plan: int, last: bool, binary: bool) -> None:
        self.plan, self.last, self.binary = plan, last, binary


class _ReadAhead:
    """The blocks of the contents grep will read, fetched by the I/O threads a window
    ahead of the matching (a quarter of the block cache), so reading, decompressing and
    checking blocks overlap the matching however many files there are."""

    def __init__(self, blocks: BlockLayer, plan: list[Any]) -> None:
        self.blocks = blocks
        self.window = blocks.cache_bytes // 4
        self.plan = plan  # content_location of each content read, in the order grep reads them
        self.read = 0  # contents handed out
        self.fetched = 0  # contents whose blocks were asked for
        self.in_flight = 0  # bytes asked for and not yet handed out
        self._fill()

    @staticmethod
    def _size(loc: Any) -> int:
        return sum(r.size for r in loc[2].values()) if loc is not None and loc[2] else 0

    def _fill(self) -> None:
        while self.fetched < len(self.plan) and (self.in_flight < self.window or self.fetched <= self.read):
            loc = self.plan[self.fetched]
            if loc is not None and loc[2]:
                self.blocks.prefetch(list(loc[2].values()))
                self.in_flight += self._size(loc)
            self.fetched += 1

    def advance(self) -> None:
        """The next content in the plan is being read."""
        self.in_flight -= self._size(self.plan[self.read])
        self.read += 1
        self._fill()


class Searcher:
    def __init__(self, meta: MetadataEngine, blocks: BlockLayer, *, embedder: str | None = None,
                 semantic: bool = True, skip_dirs: Iterable[str] = (), timeout: float | None = None) -> None:
        """``embedder``: the model this process is configured with; queries always use the
        store's own (see ``note``). ``skip_dirs``: directory names (.git ...) whose files
        semantic results leave out. ``timeout``: how long a grep or semantic query may run
        (None: no limit)."""
        self.meta = meta
        self.blocks = blocks
        self.index = SearchIndex(meta.db)
        self.embedder_name = embedder
        self.semantic = semantic
        self.skip_dirs = frozenset(skip_dirs)
        self.timeout = timeout
        self.vectors = VectorMatrix(self.index)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._matchers: MatcherPool | None = None
        self._record: EmbedderRecord | None = None
        self._model: Any = None  # the store's model; False: it cannot be had here
        self._model_error: str | None = None

    def prepare(self, *, semantic: bool = True) -> None:
        """Find the index tables and the store's model. Reads only: a store that was
        never indexed has no tables yet, and its queries find nothing (grep then reads the
        queued files). Only semantic search needs the model itself (its first load costs a
        second of CPU): that is ``_embedder``, so ``semantic`` changes nothing here."""
        record = self.index.attach()
        if record != self._record:
            self._record, self._model, self._model_error = record, None, None

    def note(self) -> str | None:
        """Why this process's configured model is not the one used (see ``embedder_note``),
        or why the store's model cannot rank here."""
        self.prepare()
        return self._note()

    def _note(self) -> str | None:
        if self.semantic and self.index.vector_problem:
            return f"semantic search is off: {self.index.vector_problem}"
        return embedder_note(self._record, self.embedder_name) or self._model_error

    def status(self) -> IndexStatus:
        """The index's state, with ``note``; reads only."""
        self.prepare()
        return dataclasses.replace(self.index.status(), note=self._note())

    def _embedder(self) -> Any:
        """The store's model, loaded on first use; None if the store has none, semantic
        search is off here, or the model cannot be had in this process (then the words alone
        rank: BM25)."""
        if not self.semantic or not self.index.vector_search or self._record is None:
            return None
        if self._model is None:
            model, why = load_embedder(self._record.name)
            if model is not None and model.model_id != self._record.model_id:
                model, why = None, (f"this version's {self._record.name} does not make the vectors this "
                                    f"store holds ({self._record.model_id}); run `nexus index --rebuild`")
            self._model = model if model is not None else False
            if why:
                self._model_error = f"ranking by words only: {why}"
        return self._model or None

    def guard(self, caller: Caller | None = None, what: str = "the query") -> QueryGuard:
        """A query's limits: this searcher's time limit, and an end when the caller's
        process (if known) has gone away."""
        pid = caller.pid if caller is not None else 0
        return QueryGuard(self.timeout, (lambda: process_gone(pid)) if pid else None, what=what)

    def view(self, caller: Caller | None, scope: int) -> View | None:
        """What ``caller`` may see under ``scope`` (None: no filtering, for root or the owner)."""
        return None if caller is None or caller.uid == 0 else View(self.meta, caller, scope)

    # ---------------------------------------------------------------- scope
    def paths_in_scope(self, ino: int, root: str, view: View | None = None) -> list[str]:
        """Every path of ``ino`` that lies under directory ``root`` (and that ``view`` shows)."""
        out = []
        prefix = "" if root == "/" else root
        for parent, name in self.meta.names_of(ino):
            if not visible(view, parent):
                continue
            try:
                p = paths.join(paths.decode(self.meta.path_of(parent)) if parent != ROOT_INODE else "/", name)
            except OSError:
                continue
            if root == "/" or p.startswith(prefix + "/"):
                out.append(p)
        return out

    def files_under(self, root_ino: int, root: str, view: View | None = None,
                    guard: QueryGuard | None = None) -> list[tuple[int, str]]:
        """(inode, path) of every regular file below a directory (that ``view`` shows)."""
        out: list[tuple[int, str]] = []
        stack = [(root_ino, root)]
        while stack:
            dino, dpath = stack.pop()
            if guard is not None:
                guard.check()
            if not visible(view, dino):
                continue
            for name, child, mode in self.meta.list_names(dino):
                p = paths.join(dpath, name)
                if stat.S_ISDIR(mode):
                    stack.append((child, p))
                elif stat.S_ISREG(mode):
                    out.append((child, p))
        return out

    # ----------------------------------------------------------------- glob
    def glob_walk(self, g: GlobPattern, base: str, start: str, start_ino: int, *,
                  view: View | None = None, guard: QueryGuard | None = None) -> list[tuple[str, int]]:
        """(path, inode) of the entries under ``start`` whose path relative to ``base``
        matches ``g``, sorted; ``start`` is ``base`` plus the pattern's literal prefix."""
        out: list[tuple[str, int]] = []
        skip = len(base) + (0 if base == "/" else 1)
        if g.literal_prefix and g.match(start[skip:], True) and visible(view, self.meta.parent_of(start_ino)):
            out.append((start, start_ino))  # 'a/**' matches 'a' itself
        stack = [(start, start_ino, len(g.literal_prefix))]
        while stack:
            dpath, dino, depth = stack.pop()
            if guard is not None:
                guard.check()
            if not visible(view, dino):
                continue
            for name, child, mode in self.meta.list_names(dino):
                p = paths.join(dpath, name)
                is_dir = stat.S_ISDIR(mode)
                if g.match(p[skip:], is_dir):
                    out.append((p, child))
                if is_dir and g.may_enter(depth, p[p.rfind("/") + 1 :]):
                    if name.startswith(b".") and not g.hidden:
                        continue
                    stack.append((p, child, depth + 1))
        out.sort()
        return out

    # ----------------------------------------------------------------- grep
    def grep(self, pattern: str, root_ino: int, root: str, opts: GrepOptions,
             max_count: int | None = None, **kw: Any) -> list[GrepMatch]:
        """Every match of :meth:`iter_grep`, as a list."""
        return list(self.iter_grep(pattern, root_ino, root, opts, max_count=max_count, **kw))

    def iter_grep(self, pattern: str, root_ino: int, root: str, opts: GrepOptions, *,
                  max_count: int | None = None, caller: Caller | None = None,
                  guard: QueryGuard | None = None, binary: bool = False) -> Iterator[GrepMatch]:
        """The lines matching ``pattern`` in the files under ``root`` (or in the file
        ``root``), sorted by path and line, as they are found.

        Binary files (a NUL byte) are skipped; with ``binary``, their matching lines are
        reported with ``binary=True`` and no text (for ``grep -c``/``-l``). With ``caller``,
        only files it may read, in directories it may list, are read at all. The lines are
        matched in worker processes (see :mod:`.matcher`); ``guard`` (default: this
        searcher's time limit, and the caller's process going away) can stop the query
        with SearchStopped. Memory stays bounded: large files are matched in pieces of
        whole lines, and lines are kept only for copies of small contents."""
        compile_pattern(pattern, opts)  # a bad pattern is a ValueError here, not in a worker
        guard = guard or self.guard(caller, "grep")
        view = self.view(caller, root_ino)
        attr = self.meta.getattr(root_ino)
        if attr.is_reg:
            targets: list[tuple[int, str, int | None]] = [(root_ino, root, None)]
            scans_all = False
        else:
            expr = self._narrowing_query(pattern, opts)
            targets = self._candidates(expr, root_ino, root, view, guard)
            scans_all = expr is None
        if view is not None:
            targets = [t for t in targets if view.can_read(t[0])]
        targets.sort(key=lambda t: t[1])
        plan = self._grep_plan(targets, guard)
        if not plan:
            return
        units: deque[_Unit] = deque()
        ahead = _ReadAhead(self.blocks, [p.loc for p in plan if not p.reuse]) if len(plan) > 1 else None
        pool = self._matcher_pool()
        results = pool.match(pattern, opts, self._grep_units(plan, units, ahead, binary, guard), guard,
                             prefilter=scans_all, max_count=max_count)
        kept: dict[Any, list[GrepMatch]] = {}
        done = 0  # plan entries before this one are reported
        count = 0  # lines reported for the current plan entry
        for lines in results:
            unit = units.popleft()
            # entries between the last one matched and this one reuse earlier lines
            for i in range(done, unit.plan):
                yield from self._reused(plan[i], kept)
            if done < unit.plan:
                done, count = unit.plan, 0
            entry = plan[unit.plan]
            if max_count is not None:
                lines = lines[: max(0, max_count - count)]
            count += len(lines)
            found = [GrepMatch(entry.path, n, "" if unit.binary else paths.decode(text), unit.binary)
                     for n, text in lines]
            if entry.keep:
                kept.setdefault(entry.key, []).extend(found)
            yield from found
            if unit.last:
                done, count = unit.plan + 1, 0
        for i in range(done, len(plan)):
            yield from self._reused(plan[i], kept)

    @staticmethod
    def _reused(entry: _Plan, kept: dict[Any, list[GrepMatch]]) -> Iterator[GrepMatch]:
        if entry.reuse:
            for m in kept.get(entry.key, ()):
                yield GrepMatch(entry.path, m.line_no, m.line, m.binary)

    def _grep_plan(self, targets: list[tuple[int, str, int | None]], guard: QueryGuard) -> list[_Plan]:
        """What grep reads (each distinct content once where its lines can be kept for
        the other paths, small contents up to a budget; larger ones are read again)."""
        plan: list[_Plan] = []
        first: dict[Any, _Plan] = {}
        kept_bytes = 0
        locations: dict[Any, Any] = {}
        for ino, path, doc in targets:
            guard.check()
            key = _content_key(ino, doc)
            if key not in locations:
                locations[key] = self.meta.content_location(ino)
            loc = locations[key]
            if loc is None:
                continue
            earlier = first.get(key)
            if earlier is not None and (earlier.keep or (loc[0] <= KEEP_CONTENT_MAX
                                                          and kept_bytes + loc[0] <= KEEP_TOTAL_MAX)):
                if not earlier.keep:
                    earlier.keep = True
                    kept_bytes += loc[0]
                plan.append(_Plan(ino, path, key, loc, reuse=True))
                continue
            entry = _Plan(ino, path, key, loc)
            first[key] = entry
            plan.append(entry)
        return plan

    def _grep_units(self, plan: list[_Plan], units: deque[_Unit], ahead: _ReadAhead | None,
                    binary: bool, guard: QueryGuard) -> Iterator[tuple[bytes, int]]:
        """The pieces of content to match, (bytes, first line number), in plan order; the
        matching ``_Unit`` of each is appended to ``units`` before it is handed out."""
        for i, entry in enumerate(plan):
            if entry.reuse:
                continue
            guard.check()
            if ahead is not None:
                ahead.advance()
            pieces = self._content_pieces(entry.ino, entry.loc)
            try:
                is_bin, first_piece = next(pieces)
            except StopIteration:
                continue
            except OSError:
                continue  # unreadable content (a missing blob) is left out, as before
            if is_bin and not binary:
                pieces.close()
                continue
            line = 1
            piece = first_piece
            while piece is not None:
                try:
                    nxt = next(pieces)[1]
                except StopIteration:
                    nxt = None
                except OSError:
                    nxt = None
                units.append(_Unit(i, nxt is None, is_bin))
                # in a binary file GNU grep ends lines at NUL bytes too (what -c counts)
                yield (piece.replace(b"\0", b"\n") if is_bin else piece), line
                if nxt is not None:
                    line += piece.count(b"\n")
                piece = nxt

    def _content_pieces(self, ino: int, loc: Any) -> Iterator[tuple[bool, bytes]]:
        """(binary, piece) for the committed content of a file: one piece for a small
        file; for a large one, pieces of whole lines (about a block each), after one pass
        that looks for a NUL byte (a hole reads as NULs) so ``binary`` is known first."""
        size, inline, block_map = loc
        bs = self.meta.block_size
        if inline is not None or size <= PIECE_MAX or size <= bs:
            data = read_committed(self.meta, self.blocks, ino, size, inline, block_map)
            yield is_binary(data), data
            return
        nblocks = (size + bs - 1) // bs

        def block(i: int) -> bytes:  # a hole reads as zeros
            n = min(bs, size - i * bs)
            return bytes(memoryview(self.blocks.fetch(block_map[i]))[:n]) if i in block_map else bytes(n)

        binary = any(is_binary(block(i)) for i in range(nblocks))
        carry = b""
        for i in range(nblocks):
            data = block(i)
            buf = carry + data if carry else data
            cut = buf.rfind(b"\n") + 1 if i < nblocks - 1 else len(buf)
            carry = buf[cut:]
            if cut:
                yield binary, buf[:cut]
        if carry:
            yield binary, carry

    def _matcher_pool(self) -> MatcherPool:
        with self._pool_lock:
            if self._matchers is None:
                self._matchers = MatcherPool()
            return self._matchers

    @staticmethod
    def _narrowing_query(pattern: str, opts: GrepOptions) -> str | None:
        """The trigram index query that finds every file that may match, or None if the
        pattern requires no literal text (then every file is a candidate)."""
        if opts.invert:
            return None
        body = pattern if opts.fixed else translate_gnu(pattern)
        return fts5_expression(required_query(body, ignore_case=opts.ignore_case, fixed=opts.fixed))

    def _grep_candidates(self, pattern: str, root_ino: int, root: str,
                         opts: GrepOptions) -> list[tuple[int, str, int | None]]:
        """(inode, path, doc or None) of the files that may match, each path once."""
        return self._candidates(self._narrowing_query(pattern, opts), root_ino, root)

    def _candidates(self, expr: str | None, root_ino: int, root: str, view: View | None = None,
                    guard: QueryGuard | None = None) -> list[tuple[int, str, int | None]]:
        """The files under ``root`` the trigram query ``expr`` selects (None: all of them)."""
        self.prepare(semantic=False)
        if expr is None:
            # nothing to narrow by: every file, but each distinct content read once
            files = self.files_under(root_ino, root, view, guard)
            docs = dict(self.index.files_of_docs_for_inodes([i for i, _p in files]))
            return [(i, p, docs.get(i)) for i, p in files]
        # The queue first: a file whose job an indexer finishes meanwhile is then found in
        # the index. (Read after the index, the job could be gone while the index was read
        # before its new entry existed, and the file would be missed.)
        pending = self.index.pending_inodes()
        cands: dict[int, int | None] = {}
        for ino, doc in self.index.files_of_docs(self.index.trigram_docs(expr)):
            cands[ino] = doc
        for ino in pending:
            cands[ino] = None
        for ino in self.index.always_scan_files():
            cands.setdefault(ino, None)
        out: list[tuple[int, str, int | None]] = []
        for ino, doc in cands.items():
            if guard is not None:
                guard.check()
            for p in self.paths_in_scope(ino, root, view):
                out.append((ino, p, doc))
        return out

    # ------------------------------------------------------------- semantic
    def search(self, query: str, root: str, k: int = 10) -> SearchResults:
        check_query(query)
        self.prepare()
        results = SearchResults()
        results.pending = self.index.pending_count()
        emb = self._embedder()
        results.note = self._note()
        want = max(50, k * 10)
        ranked: dict[int, float] = defaultdict(float)
        qv = None
        ranking = None
        if emb is not None:
            qv = emb.embed([query])[0].astype("float32")
            if self.vectors.sync():
                # numpy's scan of the vectors runs in a worker thread while SQLite ranks by
                # BM25 here: both release the GIL, so the two take the time of the slower one
                ranking = self._knn_pool().submit(self.vectors.rank, qv, want)
        bm25 = self.index.bm25_chunks(self._bm25_expression(query), want)
        if qv is not None:
            if ranking is not None:
                nearest = ranking.result()
            else:  # too many vectors to hold in memory: sqlite-vec scans them
                nearest = self.index.nearest_chunks(qv.tobytes(), want)
            for rank, (cid, _dist) in enumerate(nearest):
                ranked[cid] += 1.0 / (RRF_K + rank + 1)
        for rank, (cid, _score) in enumerate(bm25):
            ranked[cid] += 1.0 / (RRF_K + rank + 1)
        hits = self._hits(ranked, root, k, query)
        if len(hits) < k and root != "/":
            hits = self._scoped_search(query, qv, root, k)
        results.extend(hits)
        return results

    def _hits(self, ranked: dict[int, float], root: str, k: int, query: str) -> list[SearchHit]:
        """The ``k`` best chunks as hits, one per piece of a distinct content: identical
        files share their chunks, and their hit lists every path they have under ``root``."""
        best = 2.0 / (RRF_K + 1)
        order = sorted(ranked.items(), key=lambda kv: -kv[1])
        rows = self.index.chunk_rows(c for c, _s in order)
        paths_of: dict[int, list[str]] = {}
        seen: set[tuple[int, int]] = set()
        hits: list[SearchHit] = []
        for cid, score in order:
            row = rows.get(cid)
            if row is None or (row.doc, row.seq) in seen:
                continue
            seen.add((row.doc, row.seq))
            if row.doc not in paths_of:
                paths_of[row.doc] = self._result_paths(row.doc, root)
            found = paths_of[row.doc]
            if not found:
                continue  # out of scope, or only in skipped directories
            hits.append(SearchHit(min(1.0, score / best), found[0], row.start_line, row.end_line,
                                  _snippet(row.text, query), tuple(found)))
            if len(hits) >= k:
                break
        return hits

    def _result_paths(self, doc: int, root: str) -> list[str]:
        """The paths under ``root`` of the files whose current content is ``doc``, sorted;
        those inside skipped directories (.git ...) left out."""
        found = sorted(p for ino, _d in self.index.files_of_docs([doc]) for p in self.paths_in_scope(ino, root))
        if self.skip_dirs:
            found = [p for p in found if self.skip_dirs.isdisjoint(p.split("/"))]
        return found

    def _scoped_search(self, query: str, qv: Any, root: str, k: int) -> list[SearchHit]:
        """Rank every chunk of the files under a small scope directly (the global lists missed them)."""
        import numpy as np

        root_attr = self._resolve_dir(root)
        if root_attr is None:
            return []
        inos = [i for i, _p in self.files_under(root_attr, root)]
        docs = {d for _i, d in self.index.files_of_docs_for_inodes(inos)}
        scored: dict[int, float] = defaultdict(float)
        if qv is not None and docs:
            rows = self.index.chunk_vectors_of_docs(docs)
            if rows:
                mat = np.frombuffer(b"".join(v for _c, v in rows), dtype="float32").reshape(len(rows), -1)
                sims = mat @ qv
                for rank, i in enumerate(np.argsort(-sims)[: k * 10]):
                    scored[rows[int(i)][0]] += 1.0 / (RRF_K + rank + 1)
        # the words, as in the global ranking: BM25 ranks fused by reciprocal rank (raw
        # term counts would swamp the vector ranks, and count 'the' and 'a' as matches)
        for rank, (cid, _s) in enumerate(self.index.bm25_chunks_of_docs(self._bm25_expression(query), docs, k * 10)):
            scored[cid] += 1.0 / (RRF_K + rank + 1)
        return self._hits(scored, root, k, query)

    def _bm25_expression(self, query: str) -> str:
        """An FTS5 OR-query of the query's words that say something about this corpus: words
        in more than BM25_MAX_DOC_SHARE of the chunks are left out, and the rest are taken
        rarest first while their chunks add up to at most BM25_POSTINGS (FTS5 scores every
        chunk of every word, so this bounds the cost on a large store). The rarest word always
        stays (of equally rare words, the one said first)."""
        words = bm25_words(query)
        total = self.vectors.rows or self.index.chunk_count_estimate()
        if len(words) > 1 and total:
            counts = self.index.term_doc_counts(words)
            by_rarity = sorted(words, key=lambda w: counts.get(w, 0))
            keep = {by_rarity[0]}
            postings = counts.get(by_rarity[0], 0)
            for w in by_rarity[1:]:
                n = counts.get(w, 0)
                if n > BM25_MAX_DOC_SHARE * total or postings + n > BM25_POSTINGS:
                    break
                keep.add(w)
                postings += n
            words = [w for w in words if w in keep]
        return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)

    def _knn_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nexus-knn")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._matchers is not None:
            self._matchers.close()
            self._matchers = None

    def _resolve_dir(self, root: str) -> int | None:
        ino = ROOT_INODE
        for name in paths.split(root):
            child = self.meta.lookup_inode(ino, name)
            if child is None:
                return None
            ino = child
        return ino


def check_query(query: str) -> None:
    """A semantic query must say something: a blank one is EINVAL (API, CLI and mount alike)."""
    if not query.strip():
        raise FsError(errno.EINVAL, "empty search query")


def bm25_words(query: str) -> list[str]:
    """The query's distinct words for BM25: lower case, no stopwords, no single letters
    (all of them if that leaves none), at most 32."""
    words = list(dict.fromkeys(w for w in _WORD.findall(query.lower()) if len(w) > 1))
    content = [w for w in words if w not in STOPWORDS]
    return (content or words)[:32]


#: terminal escape sequences (colours, cursor movement): taken out of snippets
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
#: other control characters (tabs, form feeds, C1 controls): a run of them becomes one space
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def _clean_line(line: str) -> str:
    """A line as a snippet shows it: no escape sequences or control characters (they would
    act on a terminal, and JSON escapes them), no surrounding whitespace."""
    return _CONTROLS.sub(" ", _ESCAPE.sub("", line)).strip()


def _snippet(text: str, query: str, width: int = 160) -> str:
    """The line of a chunk with most of the query's words (lines as grep counts them)."""
    terms = set(_WORD.findall(query.lower()))
    best, best_score = "", -1
    for line in text.split("\n"):
        s = _clean_line(line)
        if not s:
            continue
        score = sum(1 for w in _WORD.findall(s.lower()) if w in terms)
        if score > best_score:
            best, best_score = s, score
    return best[:width]
