"""The background indexer: follows content changes into the search index.

Every content commit queues its file in ``index_jobs`` (same transaction). An
indexer claims jobs (with a lease, so several processes can share the work and a
crashed one's claims expire), names each file's content by a digest of its block
hashes, and indexes each distinct content once: trigrams for grep, chunks with
BM25 text and embeddings for semantic search. Files with identical content
share the work. Failures are retried with growing delays and shown by
``nexus index --status``.

It uses its own database connection, so a long indexing step never holds the
connection that serves the mount.
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import paths
from ..background import BackgroundThread, yield_to_foreground
from ..blocks import BlockLayer
from ..config import Config
from ..errors import NexusError
from ..meta.db import open_database
from ..meta.engine import MetadataEngine
from .content import content_digest, read_committed
from .embed import normalise_name
from .grep import is_binary
from .index import NOT_CHUNKED, EmbedderRecord, SearchIndex

log = logging.getLogger("nexusfs.index")

#: text larger than this is not put in the grep index (grep scans it instead)
MAX_TRIGRAM_BYTES = 16 << 20
#: files larger than this are not read for indexing at all
MAX_INDEX_BYTES = 16 << 20

Progress = Callable[[int, int | None], None]

#: the background indexer starts a file only after the store's own work (reads, committed
#: writes) has paused this long: indexing competes for the SQLite write lock, the GIL and
#: the CPU, and a burst of file system work (tar -xf, git checkout) should not wait for it
QUIET_S = 0.25
#: under work that never pauses, it still indexes for INDEX_SLICE_S after every
#: DEFER_MAX_S of waiting (about a tenth of the time), so the index does not fall behind forever
DEFER_MAX_S = 5.0
INDEX_SLICE_S = 0.5
#: jobs claimed at a time by the background loop: BACKGROUND_BATCH * DEFER_MAX_S < LEASE_S
BACKGROUND_BATCH = 8


@dataclass
class IndexedContent:
    kind: str
    trigram_text: str | None
    #: None: not cut into chunks (semantic indexing off here, or the file is in a skipped directory)
    chunks: list[tuple[int, int, int, str]] | None


class Indexer(BackgroundThread):
    thread_name = "nexus-indexer"

    def __init__(self, config: Config, blocks: BlockLayer, *, semantic: bool = True,
                 embedder: str | None = None, last_activity: Callable[[], float] | None = None) -> None:
        """``embedder``: the model this process is configured with. It is used only for a
        store that has none yet; a store keeps the model it records (see ``prepare``).
        ``last_activity``: time.monotonic() of the store's last foreground work in this
        process; the background loop yields to it (see QUIET_S). Foreground calls
        (``run_until_idle``) never wait."""
        super().__init__()
        self.config = config
        self.last_activity = last_activity
        self._slice_until = 0.0
        self.blocks = blocks
        self.db = open_database(config.metadata)
        self.meta = MetadataEngine(self.db)
        self.meta.load_settings()
        self.index = SearchIndex(self.db)
        self.semantic = semantic and self.index.vector_search
        self.configured = normalise_name(embedder) if embedder else None
        #: the model in use: the store's, or (before it has one) the configured one
        self.embedder_name: str | None = self.configured
        self.skip_dirs = frozenset(paths.encode(d) for d in config.semantic_skip_dirs)
        self._record: EmbedderRecord | None = None
        self._prepared = False
        self._log_note = False
        self._embedder: Any = None
        self._embedder_error: str | None = None
        self._identity: tuple[str, int] | None = None
        self.indexed = 0

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._log_note = True  # nobody else tells this process's user about its configuration
        super().start()

    def notify(self) -> None:
        """Content changed in this process: look at the queue now."""
        self._wake.set()

    def stop(self) -> None:
        self._end_thread()
        self.db.close()

    # ------------------------------------------------------------- embedding
    def embedder(self) -> Any:
        """The embedding model (loaded on first use), or None if semantic search is off."""
        return self._semantic("_embedder", load_embedder)

    def identity(self) -> tuple[str, int] | None:
        """(model_id, dim) of the embedding model without loading it, or None if semantic
        indexing is off. The model itself loads when a file first has text to embed: binary
        and large files, and an idle mount, never pay for it."""
        return self._semantic("_identity", embedder_identity)

    def _semantic(self, attr: str, get: Callable[[str | None], tuple[Any, str | None]]) -> Any:
        """``self.<attr>``, made by ``get`` on first use; None once semantic indexing is off
        (switched off, or the store's model could not be had: logged once)."""
        if not self.semantic or self._embedder_error is not None:
            return None
        if getattr(self, attr) is None:
            value, self._embedder_error = get(self.embedder_name)
            if value is not None and self._record is not None:
                model_id = value[0] if isinstance(value, tuple) else value.model_id
                if model_id != self._record.model_id:
                    value, self._embedder_error = None, (
                        f"this store's vectors were made by {self._record.model_id}, which this "
                        f"version's {self.embedder_name} does not make; run `nexus index --rebuild`")
            setattr(self, attr, value)
            if value is None:
                log.warning("semantic indexing is off: %s", self._embedder_error)
        return getattr(self, attr)

    def prepare(self) -> None:
        """Use the store's model (recording the configured one on a store without any).
        Looked up before every batch: another process may have switched it meanwhile."""
        record = self.index.attach()
        if record is None or not self._prepared:
            wanted = None
            ident = self.identity() if record is None else None
            if ident is not None:
                wanted = EmbedderRecord(normalise_name(self.embedder_name), *ident)
            record = self.index.ensure_tables(wanted)
            self._prepared = True
        if record != self._record:
            self._use(record)

    def _use(self, record: EmbedderRecord | None) -> None:
        """Index with ``record``'s model from now on."""
        self._record = record
        name = record.name if record is not None else self.configured
        if name != self.embedder_name or record is not None:
            self._embedder = self._identity = self._embedder_error = None
        self.embedder_name = name
        note = embedder_note(record, self.configured)
        if note and self._log_note:
            log.warning("%s", note)
            self._log_note = False

    # ------------------------------------------------------------------ work
    def _loop(self) -> None:
        idle_rounds = 0
        while not self._stop.is_set():
            try:
                # few jobs per claim: waiting for quiet between files must not outlast the lease
                done = self.run_batch(BACKGROUND_BATCH, background=True)
            except Exception:  # noqa: BLE001 - the indexer must survive anything
                log.exception("indexing failed; retrying shortly")
                done = 0
                self._stop.wait(5)
            if done:
                idle_rounds = 0
                continue
            idle_rounds += 1
            if idle_rounds % 30 == 1:
                try:
                    self.index.collect_docs()
                except Exception:  # noqa: BLE001
                    log.exception("collecting unused index entries failed")
            self._wake.wait(timeout=2.0)
            self._wake.clear()

    def _yield_to_foreground(self) -> None:
        """Wait until the store has been quiet for QUIET_S, or give up waiting after
        DEFER_MAX_S and then index without waiting for INDEX_SLICE_S."""
        self._slice_until = yield_to_foreground(self.last_activity, self._stop, self._slice_until,
                                                quiet=QUIET_S, defer_max=DEFER_MAX_S, slice_s=INDEX_SLICE_S)

    def run_batch(self, limit: int = 32, background: bool = False, since_ns: int = 0) -> int:
        """Index up to ``limit`` queued files (queued at ``since_ns`` or later); returns
        how many jobs were handled."""
        self.prepare()
        if background:
            self._yield_to_foreground()
        jobs = self.index.claim_jobs(limit, since_ns=since_ns)
        for n, job in enumerate(jobs):
            if background:
                self._yield_to_foreground()
            if self._stop.is_set():
                self.index.release_jobs(jobs[n:])  # stopping: others may take them at once
                break
            try:
                self.index_file(job.inode)
            except Exception as exc:  # noqa: BLE001 - recorded and retried later
                log.warning("indexing inode %d failed: %s", job.inode, exc)
                self.index.fail_job(job, f"{type(exc).__name__}: {exc}")
                continue
            self.index.finish_job(job)
            self.indexed += 1
        return len(jobs)

    def run_until_idle(self, progress: Progress | None = None, since_ns: int = 0) -> int:
        """Work through the queue in the calling thread (``nexus index``): all of it, or the
        files queued at ``since_ns`` or later (what one command wrote)."""
        self.prepare()
        total = self.index.pending_count(since_ns)
        done = 0
        while not self._stop.is_set():
            n = self.run_batch(64, since_ns=since_ns)
            if n == 0:
                break
            done += n
            if progress:
                progress(done, max(total, done))
        if not since_ns:  # a whole run also clears out what no file uses any more
            self.index.collect_docs(limit=1 << 30)
        return done

    def index_file(self, ino: int) -> None:
        row = self.db.query_one("SELECT mode, size, data_version FROM inodes WHERE id = ?", (ino,))
        if row is None or not stat.S_ISREG(row[0]):
            self.index.drop_file(ino)
            return
        _mode, size, version = row
        for _attempt in range(5):
            inline = self.meta.read_inline(ino)
            block_map = {} if inline is not None else self.meta.block_map(ino)
            row = self.db.query_one("SELECT size, data_version FROM inodes WHERE id = ?", (ino,))
            if row is None:
                self.index.drop_file(ino)
                return
            if (row[0], row[1]) == (size, version):
                break
            size, version = row  # changed while we looked: look again
        else:
            raise NexusError(f"inode {ino} keeps changing; will index it later")
        digest = content_digest(size, inline, block_map)
        found = self.index.doc_by_digest(digest)
        if found is None:
            doc = self._index_content(ino, digest, size, inline, block_map)
        else:
            doc = found[0]
            if self.index.doc_chunks(doc) == NOT_CHUNKED and self._wants_chunks(ino):
                # indexed before without semantic search: this file needs its chunks
                data = read_committed(self.meta, self.blocks, ino, size, inline, block_map)
                kind, chunks = self._chunks_of(data, ino, found[1])
                vectors, model_id = self._embed(chunks)
                if vectors is not None or not chunks:
                    self.index.add_chunks(doc, kind, chunks, vectors, model_id)
        self.index.set_file(ino, doc, version)

    def _index_content(self, ino: int, digest: bytes, size: int, inline: bytes | None,
                       block_map: dict) -> int:
        if size > MAX_INDEX_BYTES:
            return self.index.add_doc(digest, "large", size, trigram_text=None)
        data = read_committed(self.meta, self.blocks, ino, size, inline, block_map)
        content = self.analyse(data, ino)
        chunks = content.chunks
        vectors, model_id = self._embed(chunks or [])
        if chunks and vectors is None:
            chunks = None  # the model failed to load: leave the chunks to a process that has it
        return self.index.add_doc(
            digest, content.kind, size, trigram_text=content.trigram_text,
            chunks=chunks, vectors=vectors, model_id=model_id,
        )

    def _embed(self, chunks: list[tuple[int, int, int, str]]) -> tuple[list[bytes] | None, str | None]:
        """(the chunks' vectors, the model that made them), or (None, None) without a model."""
        emb = self.embedder() if chunks else None
        if emb is None:
            return None, None
        vecs = emb.embed([c[3] for c in chunks])
        return [v.astype("float32").tobytes() for v in vecs], emb.model_id

    def analyse(self, data: bytes, ino: int) -> IndexedContent:
        """Kind, grep text and semantic chunks of one content."""
        kind = "text"
        trigram_text: str | None = None
        if is_binary(data):
            kind = "binary"
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                # text in another encoding, or with stray bytes: its UTF-8 parts go into the
                # grep index (each invalid byte becomes U+FFFD, which no pattern's trigram
                # requires: literals of raw bytes are left out of trigram queries)
                kind = "nonutf8"
                text = data.decode("utf-8", "replace")
            if len(data) > MAX_TRIGRAM_BYTES:
                kind = "large"
            else:
                trigram_text = text
        chunks = None
        if self._wants_chunks(ino):
            kind, chunks = self._chunks_of(data, ino, kind)
        return IndexedContent(kind, trigram_text, chunks)

    def _chunks_of(self, data: bytes, ino: int, kind: str) -> tuple[str, list[tuple[int, int, int, str]]]:
        """(kind, semantic chunks) of a content: a 'binary' one may turn out a PDF or DOCX."""
        if not data:
            return kind, []
        from .chunk import chunk_text, meaningful_chunks
        from .extract import extract_text

        extracted = extract_text(data, self._name_of(ino))
        if extracted is None or not extracted.text.strip():
            return kind, []
        if kind == "binary" and extracted.kind in ("pdf", "docx"):
            kind = extracted.kind
        chunks = meaningful_chunks(chunk_text(extracted.text))
        return kind, [(c.seq, c.start_line, c.end_line, c.text) for c in chunks]

    def _wants_chunks(self, ino: int) -> bool:
        """Whether a file's text is to be cut into chunks and embedded: semantic indexing
        runs here, and the file has a name outside the skipped directories (.git ...)."""
        return self.semantic and self.identity() is not None and not self._only_in_skipped_dirs(ino)

    def _only_in_skipped_dirs(self, ino: int) -> bool:
        if not self.skip_dirs:
            return False
        for parent, _name in self.meta.names_of(ino):
            try:
                where = self.meta.path_of(parent)
            except OSError:
                continue
            if not self.skip_dirs.intersection(where.split(b"/")):
                return False
        return True

    def _name_of(self, ino: int) -> str:
        name = self.db.query_value("SELECT name FROM dentries WHERE inode = ? LIMIT 1", (ino,))
        return bytes(name).decode("utf-8", "surrogateescape") if name is not None else ""


def load_embedder(name: str | None) -> tuple[Any, str | None]:
    """(the embedding model, None), or (None, why not) when it cannot be used here."""
    try:
        from .embed import get_embedder

        return get_embedder(name), None
    except (NexusError, ImportError, OSError) as exc:
        return None, str(exc)


def embedder_identity(name: str | None) -> tuple[tuple[str, int] | None, str | None]:
    """((model_id, dim), None) without loading the model, or (None, why not)."""
    try:
        from .embed import embedder_identity as identity

        return identity(name), None
    except (NexusError, ImportError, OSError) as exc:
        return None, str(exc)


def embedder_note(record: EmbedderRecord | None, configured: str | None) -> str | None:
    """The sentence telling a process configured with another model than its store's
    what is going on (None when they agree, or nothing was configured)."""
    if record is None or not configured or normalise_name(configured) == record.name:
        return None
    return (f"this store indexes with {record.name}; "
            f"run `nexus index --rebuild --embedder {normalise_name(configured)}` to switch")


def wait_for_index(index: SearchIndex, timeout: float) -> bool:
    """Block until the queue is empty (tests, ``--wait``); False on timeout."""
    deadline = time.monotonic() + timeout
    while index.pending_count():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
