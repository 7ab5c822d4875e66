"""Opening and creating a store: the metadata database, the blob store and the VFS over them."""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from backends import BlobStoreError, LocalBlobStore, open_blob_store

from .config import Config
from .errors import ConfigError, StoreError
from .meta.db import Database, open_database
from .meta.engine import MetadataEngine
from .vfs import VFS


class Store:
    """An open store. Close it (or use it as a context manager) to flush everything."""

    def __init__(self, config: Config, db: Database, meta: MetadataEngine, vfs: VFS) -> None:
        self.config = config
        self.db = db
        self.meta = meta
        self.vfs = vfs
        self.blobs = vfs.store
        self._closed = False
        self._searcher = None
        self.indexer = None
        if config.background_indexing:
            self.start_indexer()

    # ---------------------------------------------------------------- search
    @property
    def searcher(self):
        """Answers glob/grep/semantic queries (created on first use)."""
        if self._searcher is None:
            from .search.service import Searcher

            self._searcher = Searcher(self.meta, self.vfs.blocks, embedder=self.config.embedder or None,
                                      semantic=self.config.semantic, skip_dirs=self.config.semantic_skip_dirs)
        return self._searcher

    def start_indexer(self):
        """Run the background indexer in this process (idempotent); returns it."""
        if self.indexer is None:
            from .search.indexer import Indexer

            self.indexer = Indexer(self.config, self.vfs.blocks, semantic=self.config.semantic,
                                   embedder=self.config.embedder or None,
                                   last_activity=lambda: max(self.db.last_write, self.vfs.last_use))
            self.meta.on_index_enqueued = self.indexer.notify
            self.indexer.start()
        return self.indexer

    @classmethod
    def open(cls, config: Config, *, create: bool = True) -> Store:
        if not create and not _looks_initialised(config):
            raise StoreError(f"no nexusfs store at {config.home} (run `nexus init` first)")
        try:
            os.makedirs(config.home, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {config.home}: {exc.strerror}") from None
        db = open_database(config.metadata)
        try:
            meta = MetadataEngine(db)
            if not meta.is_initialised():
                if not create:
                    raise StoreError(f"no nexusfs store at {config.home} (run `nexus init` first)")
                _check_dirty_limit(config, config.block_size)
                meta.initialise(
                    block_size=config.block_size,
                    inline_max=config.inline_max,
                    compression=config.compression,
                    uid=os.getuid(),
                    gid=os.getgid(),
                )
            else:
                meta.load_settings()
                _check_dirty_limit(config, meta.block_size)
            try:
                blobs = open_blob_store(config.blobs, fsync=config.fsync_blobs)
            except BlobStoreError as exc:
                raise StoreError(str(exc)) from None
            vfs = VFS(
                meta,
                blobs,
                compression=meta.settings.get("compression"),
                cache_bytes=config.cache_size,
                dirty_limit=config.dirty_limit,
                threads=config.threads,
                readahead_blocks=config.readahead_blocks,
                verify_reads=config.verify_reads,
            )
        except BaseException:
            db.close()
            raise
        return cls(config, db, meta, vfs)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.indexer is not None:
                self.meta.on_index_enqueued = None
                self.indexer.stop()
            if self._searcher is not None:
                self._searcher.close()
            self.vfs.close()
            self.db.make_durable()
        finally:
            self.blobs.close()
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def exclusive(self, purpose: str = "mount") -> Iterator[None]:
        """Hold the store's mount lock (one mount per store); StoreError if it is held."""
        path = os.path.join(self.config.home, "mount.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                    raise StoreError(
                        f"the store at {self.config.home} is already mounted"
                        + (f" ({holder})" if holder else "")
                    ) from None
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{purpose} by pid {os.getpid()}".encode(), 0)
            yield
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def mounted_by(self) -> int | None:
        """The process id of a live mount of this store (from its lock file), or None."""
        try:
            with open(os.path.join(self.config.home, "mount.lock"), "rb") as f:
                holder = f.read(4096).decode(errors="replace")
        except OSError:
            return None
        m = re.search(r"\bpid (\d+)", holder)
        if m is None:
            return None
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a mount that died without unmounting
        except PermissionError:
            pass  # alive, another user's
        return pid

    def blob_temp_files(self) -> list[str]:
        if isinstance(self.blobs, LocalBlobStore):
            return list(self.blobs.list_temporary())
        return []


def _check_dirty_limit(config: Config, block_size: int) -> None:
    if config.dirty_limit < block_size:
        raise ConfigError(f"dirty_limit ({config.dirty_limit}) must be at least one block ({block_size})")


def _looks_initialised(config: Config) -> bool:
    if config.metadata.startswith("sqlite://"):
        return os.path.exists(config.metadata[len("sqlite://") :])
    return True
