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
#: ``search_docs.chunks`` of a doc that was not cut into chunks for semantic search
NOT_CHUNKED = -1
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
    embedder: str | None  # the store's embedding model (registry name), None before any
    vector_search: bool
    #: why this process's configuration is not followed (it names another model), if it is not
    note: str | None = None


#: settings (``meta`` rows) naming the store's embedding model: "model_id:dim", and the
#: embedder's registry name (stores indexed before it was recorded have only the first)
EMBEDDER_KEY = "search_embedder"
EMBEDDER_NAME_KEY = "search_embedder_name"


@dataclass(frozen=True)
class EmbedderRecord:
    """An embedding model as a store records it."""

    name: str  # the embedder's registry name ('wordllama'), as configuration writes it
    model_id: str  # exactly which model and settings made the vectors
    dim: int


def _registry_name(model_id: str) -> str | None:
    from .embed import embedder_for_model

    return embedder_for_model(model_id)


def _now() -> int:
    return time.time_ns()


class SearchIndex:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.vector_search = bool(getattr(db, "vector_search", False))
        #: why there is no vector search (sqlite-vec missing or not loading), if there is none
        self.vector_problem: str | None = (
            None if self.vector_search else getattr(db, "vector_search_problem", None) or "no vector search")
        self._dim: int | None = None
        self._tables_seen = False  # the full-text tables exist (they are never dropped)
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

    def recorded_embedder(self) -> EmbedderRecord | None:
        """The model whose vectors this store holds (recorded by the first indexer that
        embedded anything, changed only by ``rebuild(embedder=...)``), or None."""
        value = self.setting(EMBEDDER_KEY)
        if not value or ":" not in value:
            return None
        model_id, dim = value.rsplit(":", 1)
        name = self.setting(EMBEDDER_NAME_KEY) or _registry_name(model_id) or model_id
        return EmbedderRecord(name, model_id, int(dim))

    def attach(self) -> EmbedderRecord | None:
        """Find the tables other processes made, without writing anything: queries of a
        store that was never indexed simply find nothing. Returns the recorded model."""
        self.has_tables()
        record = self.recorded_embedder()
        has_vectors = record is not None and self.vector_search and self.db.table_exists("search_vectors")
        self._dim = record.dim if has_vectors else None
        return record

    def ensure_tables(self, wanted: EmbedderRecord | None) -> EmbedderRecord | None:
        """Create the full-text tables, and the vector table for ``wanted`` if the store
        has no model yet. A store that has one keeps it, whatever ``wanted`` says (see
        ``rebuild`` for switching): the recorded model is returned, and only vectors of
        that model may be added. Writes nothing when everything exists already."""
        if self.db.dialect_name != "sqlite":
            raise StoreError(f"search indexing is not available for {self.db.dialect_name} yet")
        record = self.attach()
        vectors_needed = self.vector_search and (record or wanted) is not None
        if self._tables_seen and (self._dim is not None or not vectors_needed):
            return record
        with self.db.transaction():
            if not self.tables_exist():
                self.db.execute(
                    "CREATE VIRTUAL TABLE search_trigrams USING fts5(content, content='', "
                    "contentless_delete=1, tokenize='trigram', detail='none')"
                )
                self.db.execute(
                    "CREATE VIRTUAL TABLE search_chunk_text USING fts5(text, content='search_chunks', "
                    "content_rowid='id', tokenize='porter unicode61')"
                )
            record = self.recorded_embedder()  # again, in the transaction: another process may have won
            if vectors_needed and record is None:
                assert wanted is not None
                self._make_vector_table(wanted)
                record = wanted
            elif vectors_needed and not self.db.table_exists("search_vectors"):
                self._make_vector_table(record)
        return self.attach()

    def _make_vector_table(self, record: EmbedderRecord) -> None:
        """(In a transaction) an empty vector table for ``record``'s model, recorded as the store's."""
        if self.db.table_exists("search_vectors"):
            self.db.execute("DROP TABLE search_vectors")
        self.db.execute(f"CREATE VIRTUAL TABLE search_vectors USING vec0(embedding float[{int(record.dim)}])")
        self._set(EMBEDDER_KEY, f"{record.model_id}:{record.dim}")
        self._set(EMBEDDER_NAME_KEY, record.name)

    def tables_exist(self) -> bool:
        """Whether ``ensure_tables`` ran on this store before (in any process)."""
        return self.db.table_exists("search_trigrams")

    def has_tables(self) -> bool:
        """``tables_exist``, remembered once true (the tables are never dropped)."""
        if not self._tables_seen:
            self._tables_seen = self.tables_exist()
        return self._tables_seen

    @property
    def vector_dim(self) -> int | None:
        """Dimensions of the vector table, once ``attach`` or ``ensure_tables`` found it."""
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

    def rebuild(self, embedder: EmbedderRecord | None = None) -> int:
        """Forget the whole index and queue every file; returns how many. ``embedder``
        (if given) becomes the store's model: the only way the model ever changes."""
        self.ensure_tables(embedder)
        with self.db.transaction():
            self._clear_docs()
            if embedder is not None and self.vector_search:
                self._make_vector_table(embedder)
            elif self.db.table_exists("search_vectors"):
                self.db.execute("DELETE FROM search_vectors")
            self.db.execute(
                "INSERT INTO index_jobs (inode, queued_ns) SELECT id, ? FROM inodes WHERE (mode & 61440) = 32768 "
                "ON CONFLICT (inode) DO UPDATE SET queued_ns = excluded.queued_ns, attempts = 0, "
                "not_before_ns = 0, claimed_until_ns = 0, last_error = NULL",
                (_now(),),
            )
            count = self.db.query_value("SELECT COUNT(*) FROM index_jobs", (), 0)
        self.attach()
        return count

    # ------------------------------------------------------------------ jobs
    def claim_jobs(self, limit: int = 32, lease_s: float = LEASE_S, since_ns: int = 0) -> list[Job]:
        """Up to ``limit`` jobs due now (queued at ``since_ns`` or later), oldest first,
        claimed for ``lease_s``."""
        t = _now()
        with self.db.transaction():
            rows = self.db.query(
                "SELECT inode, queued_ns, attempts FROM index_jobs "
                "WHERE not_before_ns <= ? AND claimed_until_ns <= ? AND queued_ns >= ? ORDER BY queued_ns LIMIT ?",
                (t, t, since_ns, limit),
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

    def pending_count(self, since_ns: int = 0) -> int:
        """Files waiting to be indexed (queued at ``since_ns`` or later)."""
        if since_ns:
            return self.db.query_value("SELECT COUNT(*) FROM index_jobs WHERE queued_ns >= ?", (since_ns,), 0)
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
        chunks: Sequence[tuple[int, int, int, str]] | None = (),
        vectors: Sequence[bytes] | None = None,
        model_id: str | None = None,
    ) -> int:
        """Record one distinct content: its trigrams, chunks (seq, start, end, text) and
        vectors (made by ``model_id``). ``chunks`` None: not cut into chunks (semantic
        indexing was off, or the file lies in a skipped directory); ``add_chunks`` may
        complete it later."""
        with self.db.transaction():
            existing = self.doc_by_digest(digest)
            if existing is not None:
                return existing[0]
            doc = self.db.query_value(
                "INSERT INTO search_docs (digest, kind, size, chunks, indexed_ns) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                (digest, kind, size, NOT_CHUNKED if chunks is None else len(chunks), _now()),
            )
            if trigram_text is not None:
                self.db.execute("INSERT INTO search_trigrams (rowid, content) VALUES (?, ?)", (doc, trigram_text))
            self._insert_chunks(doc, chunks or (), vectors, model_id)
            return doc

    def add_chunks(self, doc: int, kind: str, chunks: Sequence[tuple[int, int, int, str]],
                   vectors: Sequence[bytes] | None, model_id: str | None) -> None:
        """Complete a doc recorded without chunks (see ``add_doc``); ``kind`` may say now
        that a 'binary' doc is a PDF or DOCX file."""
        with self.db.transaction():
            if self.doc_chunks(doc) != NOT_CHUNKED:
                return  # gone, or another indexer was first
            self.db.execute("UPDATE search_docs SET chunks = ?, kind = ? WHERE id = ?", (len(chunks), kind, doc))
            self._insert_chunks(doc, chunks, vectors, model_id)

    def doc_chunks(self, doc: int) -> int | None:
        """A doc's chunk count (NOT_CHUNKED if it was never cut into chunks), None if gone."""
        return self.db.query_value("SELECT chunks FROM search_docs WHERE id = ?", (doc,))

    def _insert_chunks(self, doc: int, chunks: Sequence[tuple[int, int, int, str]],
                       vectors: Sequence[bytes] | None, model_id: str | None) -> None:
        use_vectors = vectors is not None and self._dim is not None
        if use_vectors:
            record = self.recorded_embedder()
            if record is None or record.model_id != model_id:
                # the store switched models while these vectors were made: the job is retried
                raise StoreError(f"the store's embedding model changed to "
                                 f"{record.name if record else 'none'} while indexing")
        for i, (seq, start, end, text) in enumerate(chunks):
            cid = self.db.query_value(
                "INSERT INTO search_chunks (doc, seq, start_line, end_line, text) VALUES (?, ?, ?, ?, ?) "
                "RETURNING id",
                (doc, seq, start, end, text),
            )
            self.db.execute("INSERT INTO search_chunk_text (rowid, text) VALUES (?, ?)", (cid, text))
            if use_vectors:
                self.db.execute("INSERT INTO search_vectors (rowid, embedding) VALUES (?, ?)", (cid, vectors[i]))

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
        if expression == "" or not self.has_tables():
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
        if not expression or not self.has_tables():
            return []
        return self.db.query(
            "SELECT rowid, bm25(search_chunk_text) FROM search_chunk_text WHERE search_chunk_text MATCH ? "
            "ORDER BY rank LIMIT ?",
            (expression, k),
        )

    def bm25_chunks_of_docs(self, expression: str, docs: Iterable[int], k: int) -> list[tuple[int, float]]:
        """The best ``k`` chunks of ``docs`` by BM25 (with the whole index's statistics), best first."""
        if not expression or not self.has_tables():
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
        if conn is None or not words or not self.has_tables():
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
        record = self.recorded_embedder()
        return IndexStatus(
            pending=self.pending_count(),
            failing=self.db.query_value("SELECT COUNT(*) FROM index_jobs WHERE attempts > 0", (), 0),
            files=self.db.query_value("SELECT COUNT(*) FROM search_files", (), 0),
            docs=sum(by_kind.values()),
            chunks=self.db.query_value("SELECT COUNT(*) FROM search_chunks", (), 0),
            by_kind=by_kind,
            errors=[(r[0], r[1]) for r in errors],
            embedder=record.name if record else None,
            vector_search=self.vector_search,
        )
