"""Opening and creating a store: the metadata database, the blob store and the VFS over them.

A store is private to its owner, the user who owns its directory: everything in it is
created 0700 (directories) or 0600 (files) whatever the umask, and opening a store
takes group and other access away from its top level (the directory itself, the
database and its -wal/-shm/-journal files, the lock, the mount log and the blob
directory) if an older version left it there. ``nexus fsck`` checks every file and
directory of it, ``--repair`` tightens them. Another user gets one sentence; root may
open any store, and whatever it creates there is given to the store's owner (SQLite
does this for the files it makes beside a database, the blob store and this module
for theirs), so root's use never locks the owner out.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pwd
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from backends import BlobStoreError, LocalBlobStore, open_blob_store, private
from backends.local import fsync_dir

from .config import Config
from .errors import ConfigError, StoreError
from .meta.db import Database, open_database
from .meta.engine import MetadataEngine
from .vfs import VFS

log = logging.getLogger("nexusfs.store")

#: files SQLite keeps beside the database
DB_COMPANIONS = ("-wal", "-shm", "-journal")


class Store:
    """An open store. Close it (or use it as a context manager) to flush everything."""

    def __init__(self, config: Config, db: Database, meta: MetadataEngine, vfs: VFS, *,
                 created: bool = False) -> None:
        self.config = config
        self.db = db
        self.meta = meta
        self.vfs = vfs
        self.blobs = vfs.store
        #: this open created the store
        self.created = created
        self._closed = False
        self._searcher = None
        self.indexer = None
        #: the background garbage collector of this process (None: off)
        self.collector = None
        if config.background_indexing:
            self.start_indexer()
            if config.gc_auto:
                self.start_collector()

    # ---------------------------------------------------------------- search
    @property
    def searcher(self):
        """Answers glob/grep/semantic queries (created on first use)."""
        if self._searcher is None:
            from .search.service import Searcher

            self._searcher = Searcher(self.meta, self.vfs.blocks, embedder=self.config.embedder or None,
                                      semantic=self.config.semantic,
                                      timeout=self.config.search_timeout or None,
                                      skip_dirs=self.config.semantic_skip_dirs)
        return self._searcher

    def last_activity(self) -> float:
        """time.monotonic() of this process's last foreground work on the store (a write to the
        database or a VFS call): what the background threads give way to."""
        return max(self.db.last_write, self.vfs.last_use)

    def start_indexer(self):
        """Run the background indexer in this process (idempotent); returns it."""
        if self.indexer is None:
            from .search.indexer import Indexer

            self.indexer = Indexer(self.config, self.vfs.blocks, semantic=self.config.semantic,
                                   embedder=self.config.embedder or None,
                                   last_activity=self.last_activity)
            self.meta.on_index_enqueued = self.indexer.notify
            self.indexer.start()
        return self.indexer

    def start_collector(self):
        """Run the background garbage collector in this process (idempotent); returns it.
        It collects only while no other process's collector holds the store's gc lock."""
        if self.collector is None:
            from .autogc import Collector

            self.collector = Collector(
                home=self.config.home, metadata=self.config.metadata, blobs=self.blobs,
                blocks=self.vfs.blocks, grace=self.config.gc_grace, interval=self.config.gc_interval,
                threshold=self.config.gc_threshold,
                last_activity=self.last_activity)
            self.collector.start()
        return self.collector

    @classmethod
    def open(cls, config: Config, *, create: bool = True) -> Store:
        """Open the store of ``config``; ``create``: make it if there is none."""
        prepare_home(config, create=create)
        if not create and not _looks_initialised(config):
            raise StoreError(missing_store_message(config.home))
        _create_database_file(config)
        make_top_level_private(config)
        db = open_database(config.metadata)
        created = False
        try:
            meta = MetadataEngine(db)
            if not meta.is_initialised():
                if not create:
                    raise StoreError(missing_store_message(config.home))
                created = True
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
            if created:
                _make_skeleton_durable(config)
        except BaseException:
            db.close()
            raise
        warn_without_vectors(config, db)
        return cls(config, db, meta, vfs, created=created)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.collector is not None:
                self.collector.stop()
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
        fd = private.open_file(path, os.O_RDWR, private.owner_for(self.config.home))
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
        """Every temporary file of the blob store (of puts under way, and interrupted ones)."""
        if isinstance(self.blobs, LocalBlobStore):
            return list(self.blobs.list_temporary())
        return []

    def stale_temp_files(self) -> list[tuple[str, int]]:
        """(path, size) of the blob store's temporary files that no put is writing."""
        if isinstance(self.blobs, LocalBlobStore):
            return list(self.blobs.stale_temporary())
        return []

    def remove_stale_temp_files(self) -> tuple[int, int]:
        """Delete the temporary files of interrupted puts: (files, bytes)."""
        if isinstance(self.blobs, LocalBlobStore):
            return self.blobs.remove_stale_temporary()
        return 0, 0

    def owner(self) -> tuple[int, int]:
        """(uid, gid) of the store's owner: whoever owns its directory."""
        st = os.stat(self.config.home)
        return st.st_uid, st.st_gid

    def private_paths(self) -> Iterator[tuple[str, os.stat_result]]:
        """(path, status) of every file and directory that belongs to the store on this
        machine: its top level (symlinks followed: the store directory may be one), and
        everything below a local blob directory."""
        for path in _top_level_paths(self.config):
            try:
                yield path, os.stat(path)
            except FileNotFoundError:
                continue
        if isinstance(self.blobs, LocalBlobStore):
            root = os.path.realpath(self.blobs.root)
            yield from ((path, st) for path, st in private.walk(root) if path != root)


def _check_dirty_limit(config: Config, block_size: int) -> None:
    if config.dirty_limit < block_size:
        raise ConfigError(f"dirty_limit ({config.dirty_limit}) must be at least one block ({block_size})")


def _database_path(config: Config) -> str | None:
    """The SQLite database file of a store (None for a database that is not a file)."""
    url = config.metadata
    if url.startswith("sqlite://"):
        return url[len("sqlite://") :]
    return None if "://" in url else url


#: the reasons already logged by ``warn_without_vectors`` in this process
_VECTOR_WARNINGS: set[str] = set()


def warn_without_vectors(config: Config, db: Database) -> None:
    """Semantic search is configured but sqlite-vec cannot be had: the store still opens
    (grep and glob work; nothing is embedded, so semantic queries find nothing) but says so,
    once per process and reason, as a WARNING; ``index_status().note`` and every semantic
    query's ``note`` say it too."""
    problem = getattr(db, "vector_search_problem", None)
    if config.semantic and problem and problem not in _VECTOR_WARNINGS:
        _VECTOR_WARNINGS.add(problem)
        log.warning("semantic search is off: %s (grep and glob still work)", problem)


def _looks_initialised(config: Config) -> bool:
    path = _database_path(config)
    return path is None or os.path.exists(path)


def missing_store_message(home: str) -> str:
    return (f"no nexusfs store at {home} (commands that write to a store create it: "
            "`nexus init`, put, write, mkdir, import, mount)")


def _home_origin(home: str) -> str:
    """Where the store directory was named, when the user may not see it on the command line."""
    env = os.environ.get("NEXUS_HOME")
    if env and os.path.abspath(os.path.expanduser(env)) == home:
        return " (set by NEXUS_HOME)"
    return ""


def prepare_home(config: Config, *, create: bool) -> os.stat_result:
    """Check the store directory (and with ``create``, make it, private, if it is missing):
    it must be a directory, and the caller its owner or root. One-sentence StoreErrors."""
    home = config.home
    try:
        st = os.stat(home)
    except FileNotFoundError:
        if not create:
            raise StoreError(missing_store_message(home)) from None
        _create_home(home)
        st = os.stat(home)
    except NotADirectoryError:
        raise StoreError(f"cannot use {home} as the store directory{_home_origin(home)}: "
                         "a part of that path is a file") from None
    except OSError as exc:
        raise StoreError(f"cannot open the store at {home}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"cannot use {home} as the store directory{_home_origin(home)}: "
                         "it is a file")
    euid = os.geteuid()
    if euid != 0 and st.st_uid != euid:
        raise StoreError(f"the store at {home} belongs to {_user_name(st.st_uid)}; "
                         "only its owner can use it")
    return st


def _create_home(home: str) -> None:
    try:
        os.makedirs(os.path.dirname(home), exist_ok=True)  # the parents, like mkdir -p
        private.make_dir(home)
    except FileExistsError:
        pass  # made by another process in between
    except OSError as exc:
        raise StoreError(f"cannot create store directory {home}: {exc.strerror}") from None


def _make_skeleton_durable(config: Config) -> None:
    """A new store's directory and the database file in it survive a power cut: sync the
    directories holding their names (the first fsync then makes what it promises durable;
    the blob store makes its own directories durable)."""
    dirs = [os.path.dirname(config.home), config.home]
    db = _database_path(config)
    if db is not None:
        dirs.append(os.path.dirname(db))
    for d in dict.fromkeys(os.path.abspath(d) for d in dirs):
        try:
            fsync_dir(d)
        except OSError as exc:
            raise StoreError(f"cannot sync directory {d}: {exc.strerror}") from None


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _create_database_file(config: Config) -> None:
    """Create the database file private (0600, the store owner's) before SQLite opens it:
    SQLite gives its -wal, -shm and -journal files the database's mode and, when it runs
    as root, its owner."""
    path = _database_path(config)
    if path is None or os.path.exists(path):
        return
    try:
        os.close(private.create_file(path, private.owner_for(os.path.dirname(path) or ".")))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create metadata database {path}: {exc.strerror}") from None


def _top_level_paths(config: Config) -> list[str]:
    """The store's own files and directories outside the blob directory's inside."""
    out = [config.home]
    db = _database_path(config)
    if db is not None:
        out += [db] + [db + suffix for suffix in DB_COMPANIONS]
    out += [os.path.join(config.home, name) for name in ("mount.lock", "mount.log", "gc.lock")]
    if config.blobs.startswith("file://") or "://" not in config.blobs:
        out.append(os.path.realpath(config.blobs.removeprefix("file://")))
    return out


def make_top_level_private(config: Config) -> None:
    """Take group and other access away from the store's top level (stores made by older
    versions had 0755 directories and 0644 files); what lies below a private directory
    is out of other users' reach. fsck checks (and --repair fixes) everything."""
    home = os.stat(config.home)
    uid, gid = home.st_uid, home.st_gid
    for path in _top_level_paths(config):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if private.exposure(st, uid) is None:
            continue
        if st.st_uid != uid and os.geteuid() != 0:
            continue  # not ours to change: fsck reports it
        try:
            private.make_private(path, st, uid, gid)
        except OSError as exc:
            log.warning("cannot make %s private: %s", path, exc.strerror)
            continue
        log.info("made %s private (it was %04o, uid %d)", path, stat.S_IMODE(st.st_mode), st.st_uid)
