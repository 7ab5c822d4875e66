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
import re
import stat
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import paths
from ..blocks import BlockLayer
from ..meta.engine import MetadataEngine
from ..types import ROOT_INODE
from .content import read_committed
from .grep import GrepMatch, GrepOptions, is_binary, line_matcher, translate_gnu
from .index import EmbedderRecord, IndexStatus, SearchIndex
from .indexer import embedder_note, load_embedder
from .literals import fts5_expression, required_query
from .pattern import GlobPattern
from .vectors import VectorMatrix

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


class _ReadAhead:
    """Where each distinct content of a grep lies, with its blocks fetched by the I/O
    threads a window ahead of the matching (a quarter of the block cache), so reading,
    decompressing and checking blocks overlap the matching however many files there are."""

    def __init__(self, meta: MetadataEngine, blocks: BlockLayer, targets: list[tuple[int, str, int | None]]) -> None:
        self.blocks = blocks
        self.window = blocks.cache_bytes // 4
        self.plan: list[Any] = []  # content_location of each distinct content, in the order grep reads them
        seen: set[Any] = set()
        for ino, _path, doc in targets:
            key = _content_key(ino, doc)
            if key not in seen:
                seen.add(key)
                self.plan.append(meta.content_location(ino))
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

    def next_content(self) -> Any:
        """The location of the next distinct content (grep reads them in target order)."""
        loc = self.plan[self.read]
        self.read += 1
        self.in_flight -= self._size(loc)
        self._fill()
        return loc


class Searcher:
    def __init__(self, meta: MetadataEngine, blocks: BlockLayer, *, embedder: str | None = None,
                 semantic: bool = True, skip_dirs: Iterable[str] = ()) -> None:
        """``embedder``: the model this process is configured with; queries always use the
        store's own (see ``note``). ``skip_dirs``: directory names (.git ...) whose files
        semantic results leave out."""
        self.meta = meta
        self.blocks = blocks
        self.index = SearchIndex(meta.db)
        self.embedder_name = embedder
        self.semantic = semantic
        self.skip_dirs = frozenset(skip_dirs)
        self.vectors = VectorMatrix(self.index)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
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

    # ---------------------------------------------------------------- scope
    def paths_in_scope(self, ino: int, root: str) -> list[str]:
        """Every path of ``ino`` that lies under directory ``root``."""
        out = []
        prefix = "" if root == "/" else root
        for parent, name in self.meta.names_of(ino):
            try:
                p = paths.join(paths.decode(self.meta.path_of(parent)) if parent != ROOT_INODE else "/", name)
            except OSError:
                continue
            if root == "/" or p.startswith(prefix + "/"):
                out.append(p)
        return out

    def files_under(self, root_ino: int, root: str) -> list[tuple[int, str]]:
        """(inode, path) of every regular file below a directory."""
        out: list[tuple[int, str]] = []
        stack = [(root_ino, root)]
        while stack:
            dino, dpath = stack.pop()
            for name, child, mode in self.meta.list_names(dino):
                p = paths.join(dpath, name)
                if stat.S_ISDIR(mode):
                    stack.append((child, p))
                elif stat.S_ISREG(mode):
                    out.append((child, p))
        return out

    # ----------------------------------------------------------------- glob
    def glob_walk(self, g: GlobPattern, base: str, start: str, start_ino: int) -> list[tuple[str, int]]:
        """(path, inode) of the entries under ``start`` whose path relative to ``base``
        matches ``g``, sorted; ``start`` is ``base`` plus the pattern's literal prefix."""
        out: list[tuple[str, int]] = []
        skip = len(base) + (0 if base == "/" else 1)
        if g.literal_prefix and g.match(start[skip:], True):
            out.append((start, start_ino))  # 'a/**' matches 'a' itself
        stack = [(start, start_ino, len(g.literal_prefix))]
        while stack:
            dpath, dino, depth = stack.pop()
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
             max_count: int | None = None) -> list[GrepMatch]:
        attr = self.meta.getattr(root_ino)
        if attr.is_reg:
            targets: list[tuple[int, str, int | None]] = [(root_ino, root, None)]
            scans_all = False
        else:
            expr = self._narrowing_query(pattern, opts)
            targets = self._candidates(expr, root_ino, root)
            scans_all = expr is None
        # when every file gets scanned, a fast RE2 pass first rules out the contents
        # without any match
        matching_lines = line_matcher(pattern, opts, prefilter=scans_all)
        # the lines of each distinct content, matched once: copies and hard links share them
        found: dict[Any, list[tuple[int, str]]] = {}
        ahead = _ReadAhead(self.meta, self.blocks, targets) if len(targets) > 1 else None
        out: list[GrepMatch] = []
        for ino, path, doc in targets:
            key = _content_key(ino, doc)
            lines = found.get(key)
            if lines is None:
                data = self._read(ino, ahead.next_content() if ahead is not None else None)
                if data is None or is_binary(data):
                    lines = []
                else:
                    hits = matching_lines(data)
                    if max_count is not None:
                        hits = hits[:max_count]
                    lines = [(n, paths.decode(line)) for n, line in hits]
                found[key] = lines
            out.extend(GrepMatch(path, n, text) for n, text in lines)
        out.sort(key=lambda m: (m.path, m.line_no))
        return out

    @staticmethod
    def _narrowing_query(pattern: str, opts: GrepOptions) -> str | None:
        """The trigram index query that finds every file that may match, or None if the
        pattern requires no literal text (then every file is a candidate)."""
        if opts.invert:
            return None
        body = pattern if opts.fixed else translate_gnu(pattern)
        return fts5_expression(required_query(body, ignore_case=opts.ignore_case, fixed=opts.fixed))

    def _read(self, ino: int, located: Any = None) -> bytes | None:
        loc = located if located is not None else self.meta.content_location(ino)
        if loc is None:
            return None
        size, inline, block_map = loc
        try:
            return read_committed(self.meta, self.blocks, ino, size, inline, block_map)
        except OSError:
            return None

    def _grep_candidates(self, pattern: str, root_ino: int, root: str,
                         opts: GrepOptions) -> list[tuple[int, str, int | None]]:
        """(inode, path, doc or None) of the files that may match, each path once."""
        return self._candidates(self._narrowing_query(pattern, opts), root_ino, root)

    def _candidates(self, expr: str | None, root_ino: int, root: str) -> list[tuple[int, str, int | None]]:
        """The files under ``root`` the trigram query ``expr`` selects (None: all of them)."""
        if expr is None:
            # nothing to narrow by: every file, but each distinct content read once
            self.prepare(semantic=False)
            files = self.files_under(root_ino, root)
            docs = dict(self.index.files_of_docs_for_inodes([i for i, _p in files]))
            return [(i, p, docs.get(i)) for i, p in files]
        self.prepare(semantic=False)
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
            for p in self.paths_in_scope(ino, root):
                out.append((ino, p, doc))
        return out

    # ------------------------------------------------------------- semantic
    def search(self, query: str, root: str, k: int = 10) -> SearchResults:
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

    def _resolve_dir(self, root: str) -> int | None:
        ino = ROOT_INODE
        for name in paths.split(root):
            child = self.meta.lookup_inode(ino, name)
            if child is None:
                return None
            ino = child
        return ino


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
