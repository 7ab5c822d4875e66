"""The search index tables: jobs, docs, and the dialect's full-text and vector tables.

The portable tables (``index_jobs``, ``search_docs``, ``search_files``,
``search_chunks``) are part of the store's schema (see :mod:`nexusfs.meta.schema`).
This module adds SQLite's own machinery beside them:

* ``search_trigrams`` — FTS5 with the trigram tokenizer, contentless, ``detail=none``:
  which docs contain which (case-folded) trigrams. grep asks it for candidates.
* ``search_chunk_text`` — FTS5 (porter + unicode61) over ``search_chunks.text``: BM25.
* ``search_vectors`` — a sqlite-vec ``vec0`` table of chunk embeddings: nearest neighbours.

Every method is one short transaction, so an indexer never holds the database
for long while a mount is serving requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apsw

from ..errors import StoreError
from ..meta.db import Database

#: a failed job is retried after 2**attempts seconds, at most this long
MAX_BACKOFF_S = 3600
#: how long a claimed job stays claimed if its indexer dies
LEASE_S = 120

TEXT_KINDS = ("text",)
#: docs grep cannot rule out from the trigram index: always scanned ('raw': text that is
#: not UTF-8, as earlier builds indexed it; now it is 'nonutf8', in the trigram index)
ALWAYS_SCAN_KINDS = ("raw", "large")


@dataclass(frozen=True, slots=True)
class Job:
    inode: int
    queued_ns: int
    attempts: int


@dataclass(frozen=True, slots=True)
class ChunkRow:
    id: int
    doc: int
    seq: int
    start_line: int
    end_line: int
    text: str


@dataclass(frozen=True)
class IndexStatus:
    pending: int  # files waiting to be (re)indexed
    failing: int  # of which have failed at least once
    files: int  # files with an index entry
    docs: int  # distinct contents indexed
    chunks: int  # semantic pieces
    by_kind: dict[str, int]
    errors: list[tuple[int, str]]  # (inode, last error) of failing jobs
    embedder: str | None
    vector_search: bool


def _now() -> int:
    return time.time_ns()


class SearchIndex:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.vector_search = bool(getattr(db, "vector_search", False))
        self._dim: int | None = None
        self._vocab_ready = False
        self._stemmer: Any = None

    # ----------------------------------------------------------------- setup
    def setting(self, key: str) -> str | None:
        return self.db.query_value("SELECT value FROM meta WHERE key = ?", (key,))

    def _set(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def ensure_tables(self, embedder: str | None, dim: int | None) -> bool:
        """Create the full-text tables, and the vector table for ``embedder`` (a model id).

        Returns True when the embedder changed (or vectors were added), so every
        doc must be indexed again for semantic search.
        """
        if self.db.dialect_name != "sqlite":
            raise StoreError(f"search indexing is not available for {self.db.dialect_name} yet")
        with self.db.transaction():
            if not self.db.table_exists("search_trigrams"):
                self.db.execute(
                    "CREATE VIRTUAL TABLE search_trigrams USING fts5(content, content='', "
                    "contentless_delete=1, tokenize='trigram', detail='none')"
                )
                self.db.execute(
                    "CREATE VIRTUAL TABLE search_chunk_text USING fts5(text, content='search_chunks', "
                    "content_rowid='id', tokenize='porter unicode61')"
                )
            if embedder is None or dim is None or not self.vector_search:
                return False
            current = self.setting("search_embedder")
            want = f"{embedder}:{dim}"
            if current == want and self.db.table_exists("search_vectors"):
                self._dim = dim
                return False
            if self.db.table_exists("search_vectors"):
                self.db.execute("DROP TABLE search_vectors")
            self.db.execute(f"CREATE VIRTUAL TABLE search_vectors USING vec0(embedding float[{int(dim)}])")
            self._set("search_embedder", want)
            self._dim = dim
            if current is None and not self.db.query_value("SELECT COUNT(*) FROM search_docs"):
                return False
            # vectors of another model are useless: index everything again
            self._clear_docs()
            self.db.execute(
                "INSERT INTO index_jobs (inode, queued_ns) SELECT id, ? FROM inodes WHERE (mode & 61440) = 32768 "
                "ON CONFLICT (inode) DO NOTHING",
                (_now(),),
            )
            return True

    def tables_exist(self) -> bool:
        """Whether ``ensure_tables`` ran on this store before (in any process)."""
        return self.db.table_exists("search_trigrams")

    @property
    def vector_dim(self) -> int | None:
        """Dimensions of the vector table, once ``ensure_tables`` made or found it."""
        return self._dim

    def _vectors_removed(self) -> None:
        """Tell in-memory copies of the vectors (``VectorMatrix``) that rows went away."""
        epoch = int(self.setting("search_vector_epoch") or 0)
        self._set("search_vector_epoch", str(epoch + 1))

    def _clear_docs(self) -> None:
        self._vectors_removed()
        self.db.execute("DELETE FROM search_trigrams")
        self.db.execute("INSERT INTO search_chunk_text (search_chunk_text) VALUES ('delete-all')")
        self.db.execute("DELETE FROM search_chunks")
        self.db.execute("DELETE FROM search_files")
        self.db.execute("DELETE FROM search_docs")

    def rebuild(self) -> int:
        """Forget the whole index and queue every file; returns how many."""
        with self.db.transaction():
            self._clear_docs()
            if self.db.table_exists("search_vectors"):
                self.db.execute("DELETE FROM search_vectors")
            self.db.execute(
                "INSERT INTO index_jobs (inode, queued_ns) SELECT id, ? FROM inodes WHERE (mode & 61440) = 32768 "
                "ON CONFLICT (inode) DO UPDATE SET queued_ns = excluded.queued_ns, attempts = 0, "
                "not_before_ns = 0, claimed_until_ns = 0, last_error = NULL",
                (_now(),),
            )
            return self.db.query_value("SELECT COUNT(*) FROM index_jobs", (), 0)

    # ------------------------------------------------------------------ jobs
    def claim_jobs(self, limit: int = 32, lease_s: float = LEASE_S) -> list[Job]:
        t = _now()
        with self.db.transaction():
            rows = self.db.query(
                "SELECT inode, queued_ns, attempts FROM index_jobs "
                "WHERE not_before_ns <= ? AND claimed_until_ns <= ? ORDER BY queued_ns LIMIT ?",
                (t, t, limit),
            )
            if rows:
                until = t + int(lease_s * 1e9)
                marks = ",".join("?" * len(rows))
                self.db.execute(
                    f"UPDATE index_jobs SET claimed_until_ns = ? WHERE inode IN ({marks})",
                    (until, *[r[0] for r in rows]),
                )
        return [Job(*r) for r in rows]

    def finish_job(self, job: Job) -> None:
        """Done with the version claimed; a newer change keeps its job (released)."""
        with self.db.transaction():
            if not self.db.execute(
                "DELETE FROM index_jobs WHERE inode = ? AND queued_ns = ?", (job.inode, job.queued_ns)
            ):
                self.db.execute("UPDATE index_jobs SET claimed_until_ns = 0 WHERE inode = ?", (job.inode,))

    def release_jobs(self, jobs: Sequence[Job]) -> None:
        """Give claimed jobs back unworked (a clean stop): the next indexer takes them at once
        instead of waiting for the lease to run out."""
        if jobs:
            with self.db.transaction():
                self.db.query_in("UPDATE index_jobs SET claimed_until_ns = 0 WHERE inode IN ({ids})",
                                 [job.inode for job in jobs])

    def fail_job(self, job: Job, error: str) -> None:
        delay = min(2 ** (job.attempts + 1), MAX_BACKOFF_S)
        self.db.execute(
            "UPDATE index_jobs SET attempts = attempts + 1, not_before_ns = ?, claimed_until_ns = 0, "
            "last_error = ? WHERE inode = ?",
            (_now() + int(delay * 1e9), error[:500], job.inode),
        )

    def pending_count(self) -> int:
        return self.db.query_value("SELECT COUNT(*) FROM index_jobs", (), 0)

    def pending_inodes(self) -> list[int]:
        return [r[0] for r in self.db.query("SELECT inode FROM index_jobs")]

    # ------------------------------------------------------------------ docs
    def doc_by_digest(self, digest: bytes) -> tuple[int, str] | None:
        row = self.db.query_one("SELECT id, kind FROM search_docs WHERE digest = ?", (digest,))
        return (row[0], row[1]) if row else None

    def add_doc(
        self,
        digest: bytes,
        kind: str,
        size: int,
        *,
        trigram_text: str | None,
        chunks: Sequence[tuple[int, int, int, str]] = (),
        vectors: Sequence[bytes] | None = None,
    ) -> int:
        """Record one distinct content: its trigrams, chunks (seq, start, end, text) and vectors."""
        with self.db.transaction():
            existing = self.doc_by_digest(digest)
            if existing is not None:
                return existing[0]
            doc = self.db.query_value(
                "INSERT INTO search_docs (digest, kind, size, chunks, indexed_ns) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                (digest, kind, size, len(chunks), _now()),
            )
            if trigram_text is not None:
                self.db.execute("INSERT INTO search_trigrams (rowid, content) VALUES (?, ?)", (doc, trigram_text))
            use_vectors = vectors is not None and self._dim is not None
            for i, (seq, start, end, text) in enumerate(chunks):
                cid = self.db.query_value(
                    "INSERT INTO search_chunks (doc, seq, start_line, end_line, text) VALUES (?, ?, ?, ?, ?) "
                    "RETURNING id",
                    (doc, seq, start, end, text),
                )
                self.db.execute("INSERT INTO search_chunk_text (rowid, text) VALUES (?, ?)", (cid, text))
                if use_vectors:
                    self.db.execute("INSERT INTO search_vectors (rowid, embedding) VALUES (?, ?)", (cid, vectors[i]))
            return doc

    def set_file(self, inode: int, doc: int, data_version: int) -> None:
        """Point a file at its doc, unless a newer version was recorded meanwhile."""
        self.db.execute(
            "INSERT INTO search_files (inode, doc, data_version) VALUES (?, ?, ?) ON CONFLICT (inode) "
            "DO UPDATE SET doc = excluded.doc, data_version = excluded.data_version "
            "WHERE excluded.data_version >= search_files.data_version",
            (inode, doc, data_version),
        )

    def drop_file(self, inode: int) -> None:
        self.db.execute("DELETE FROM search_files WHERE inode = ?", (inode,))

    def collect_docs(self, limit: int = 200) -> int:
        """Delete docs no file uses any more (with their trigrams, chunks, vectors)."""
        rows = self.db.query(
            "SELECT d.id FROM search_docs d WHERE NOT EXISTS "
            "(SELECT 1 FROM search_files f WHERE f.doc = d.id) LIMIT ?",
            (limit,),
        )
        for (doc,) in rows:
            with self.db.transaction():
                if self.db.query_one("SELECT 1 FROM search_files WHERE doc = ? LIMIT 1", (doc,)):
                    continue
                self.db.execute("DELETE FROM search_trigrams WHERE rowid = ?", (doc,))
                chunks = self.db.query("SELECT id, text FROM search_chunks WHERE doc = ?", (doc,))
                for cid, text in chunks:
                    self.db.execute(
                        "INSERT INTO search_chunk_text (search_chunk_text, rowid, text) VALUES ('delete', ?, ?)",
                        (cid, text),
                    )
                    if self._dim is not None:
                        self.db.execute("DELETE FROM search_vectors WHERE rowid = ?", (cid,))
                self.db.execute("DELETE FROM search_chunks WHERE doc = ?", (doc,))
                self.db.execute("DELETE FROM search_docs WHERE id = ?", (doc,))
                if chunks:
                    self._vectors_removed()
        return len(rows)

    # --------------------------------------------------------------- queries
    def trigram_docs(self, expression: str) -> set[int]:
        """Docs whose text may contain what the FTS5 trigram expression requires."""
        if expression == "":
            return set()
        return {r[0] for r in self.db.query(
            "SELECT rowid FROM search_trigrams WHERE search_trigrams MATCH ?", (expression,))}

    def files_of_docs(self, docs: Iterable[int]) -> list[tuple[int, int]]:
        """(inode, doc) of the files whose current content is one of ``docs``."""
        return self.db.query_in(
            "SELECT f.inode, f.doc FROM search_files f JOIN inodes i ON i.id = f.inode "
            "WHERE f.doc IN ({ids}) AND i.data_version = f.data_version",
            docs,
        )

    def files_of_docs_for_inodes(self, inodes: Iterable[int]) -> list[tuple[int, int]]:
        """(inode, doc) of those ``inodes`` whose index entry is current."""
        return self.db.query_in(
            "SELECT f.inode, f.doc FROM search_files f JOIN inodes i ON i.id = f.inode "
            "WHERE f.inode IN ({ids}) AND i.data_version = f.data_version",
            inodes,
        )

    def always_scan_files(self) -> list[int]:
        marks = ",".join("?" * len(ALWAYS_SCAN_KINDS))
        return [r[0] for r in self.db.query(
            f"SELECT f.inode FROM search_files f JOIN search_docs d ON d.id = f.doc WHERE d.kind IN ({marks})",
            ALWAYS_SCAN_KINDS,
        )]

    def nearest_chunks(self, vector: bytes, k: int) -> list[tuple[int, float]]:
        if self._dim is None:
            return []
        return self.db.query(
            "SELECT rowid, distance FROM search_vectors WHERE embedding MATCH ? AND k = ? ORDER BY distance",
            (vector, k),
        )

    def bm25_chunks(self, expression: str, k: int) -> list[tuple[int, float]]:
        if not expression:
            return []
        return self.db.query(
            "SELECT rowid, bm25(search_chunk_text) FROM search_chunk_text WHERE search_chunk_text MATCH ? "
            "ORDER BY rank LIMIT ?",
            (expression, k),
        )

    def bm25_chunks_of_docs(self, expression: str, docs: Iterable[int], k: int) -> list[tuple[int, float]]:
        """The best ``k`` chunks of ``docs`` by BM25 (with the whole index's statistics), best first."""
        if not expression:
            return []
        out = self.db.query_in(
            "SELECT rowid, bm25(search_chunk_text) FROM search_chunk_text WHERE search_chunk_text MATCH ? "
            "AND rowid IN (SELECT id FROM search_chunks WHERE doc IN ({ids})) ORDER BY rank LIMIT ?",
            docs, before=(expression,), after=(k,),
        )
        out.sort(key=lambda r: r[1])  # bm25(): lower is better
        return out[:k]

    def term_doc_counts(self, words: Sequence[str]) -> dict[str, int]:
        """How many chunks contain each word (after the BM25 table's porter stemming)."""
        conn = getattr(self.db, "conn", None)
        if conn is None or not words:
            return {}
        if not self._vocab_ready:
            self.db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.search_chunk_vocab "
                            "USING fts5vocab(main, search_chunk_text, row)")
            self._stemmer = conn.fts5_tokenizer("porter", ["unicode61"])
            self._vocab_ready = True
        out: dict[str, int] = {}
        for w in words:
            stems = [t[2] for t in self._stemmer(w.encode(), apsw.FTS5_TOKENIZE_QUERY, None)]
            if len(stems) != 1:
                continue
            out[w] = self.db.query_value("SELECT doc FROM temp.search_chunk_vocab WHERE term = ?", (stems[0],), 0)
        return out

    def chunk_count_estimate(self) -> int:
        """The largest chunk id: an upper bound of the chunk count, read in O(log n)."""
        return self.db.query_value("SELECT MAX(id) FROM search_chunks", (), 0) or 0

    def chunk_rows(self, ids: Iterable[int]) -> dict[int, ChunkRow]:
        rows = self.db.query_in(
            "SELECT id, doc, seq, start_line, end_line, text FROM search_chunks WHERE id IN ({ids})", ids)
        return {r[0]: ChunkRow(*r) for r in rows}

    def chunk_vectors_of_docs(self, docs: Iterable[int]) -> list[tuple[int, bytes]]:
        """(chunk id, embedding) of every chunk of ``docs`` (for searches scoped to few files)."""
        if self._dim is None:
            return []
        return self.db.query_in(
            "SELECT v.rowid, v.embedding FROM search_chunks c JOIN search_vectors v ON v.rowid = c.id "
            "WHERE c.doc IN ({ids})",
            docs, batch=200,
        )

    def vectors_after(self, chunk_id: int) -> list[tuple[int, bytes]]:
        """(chunk id, embedding) of the chunks with an id above ``chunk_id``, in id order."""
        if self._dim is None:
            return []
        return self.db.query(
            "SELECT c.id, v.embedding FROM search_chunks c JOIN search_vectors v ON v.rowid = c.id "
            "WHERE c.id > ? ORDER BY c.id",
            (chunk_id,),
        )

    def chunk_ids(self) -> list[int]:
        return [r[0] for r in self.db.query("SELECT id FROM search_chunks")]

    def status(self) -> IndexStatus:
        by_kind = dict(self.db.query("SELECT kind, COUNT(*) FROM search_docs GROUP BY kind"))
        errors = self.db.query(
            "SELECT inode, last_error FROM index_jobs WHERE last_error IS NOT NULL ORDER BY inode LIMIT 20")
        emb = self.setting("search_embedder")
        return IndexStatus(
            pending=self.pending_count(),
            failing=self.db.query_value("SELECT COUNT(*) FROM index_jobs WHERE attempts > 0", (), 0),
            files=self.db.query_value("SELECT COUNT(*) FROM search_files", (), 0),
            docs=sum(by_kind.values()),
            chunks=self.db.query_value("SELECT COUNT(*) FROM search_chunks", (), 0),
            by_kind=by_kind,
            errors=[(r[0], r[1]) for r in errors],
            embedder=emb.rsplit(":", 1)[0] if emb else None,  # the model id
            vector_search=self.vector_search,
        )
