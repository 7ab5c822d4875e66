"""A thin, thread-safe database wrapper and the SQL dialects.

The metadata engine writes portable SQL with ``?`` placeholders; a dialect
supplies the DDL type names, connects, and maps driver errors. Everything else
(the shared logic) lives in :mod:`nexusfs.meta.engine`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import StoreError

Row = tuple[Any, ...]

log = logging.getLogger(__name__)


class Database(ABC):
    """One connection, shared by threads under a re-entrant lock.

    ``transaction()`` nests: only the outermost level begins and commits, so a
    batch operation can wrap many single-operation transactions into one.

    Group commit (:meth:`enable_group_commit`, used by the mount): a transaction
    marked ``deferrable`` (namespace changes: create, unlink, rename, chmod…) does
    not commit on its own; it stays in an open batch, each operation inside a
    savepoint so that a failing one is undone alone, and the batch commits at
    most ``delay`` seconds after its first operation (a background thread), after
    ``GROUP_MAX_OPS`` operations, or at once when any other transaction ends
    (block commits, object reservations, gc), on :meth:`make_durable` (fsync)
    and on close. A commit costs ~55 µs here (the WAL frames of ~8 pages), a
    create's statements ~30 µs. What a crash can lose is what was changed in the
    last ``delay`` seconds and never synced, as with a journalling filesystem.
    """

    dialect_name: str = ""
    #: DDL substitutions for :data:`nexusfs.meta.schema.DDL`
    ddl_types: dict[str, str] = {}
    #: a batch of deferred operations commits once it holds this many
    GROUP_MAX_OPS = 256

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._depth = 0
        #: time.monotonic() of this connection's last committed write transaction
        self.last_write = 0.0
        self._after_commit: list = []
        #: group commit: 0 = every transaction commits at its end
        self.commit_delay = 0.0
        #: deferred operations in the open batch (0: no batch open)
        self._batch_ops = 0
        self._batch_since = 0.0
        self._batch_cond = threading.Condition(self.lock)
        self._committer: threading.Thread | None = None
        self._closing = False

    # -- primitives a dialect implements ---------------------------------
    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any]) -> Iterator[Row]: ...

    @abstractmethod
    def _changes(self) -> int: ...

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def _in_transaction(self) -> bool:
        """Whether the connection has a transaction open (some errors end it by themselves)."""

    @abstractmethod
    def _close(self) -> None: ...

    def _sync(self) -> None:  # noqa: B027 - dialects with lazy sync override
        """Force every committed transaction to stable storage."""

    def make_durable(self) -> None:
        """Commit any deferred operations, then force everything committed to stable storage."""
        self.commit_pending()
        self._sync()

    def generation(self) -> tuple:
        """A value that changes whenever anything is committed to the database, by this
        connection or another (cached query results are reused only while it stays).
        The default changes every time: never reuse."""
        return (time.monotonic_ns(),)

    def close(self) -> None:
        with self.lock:
            self._closing = True
            self._batch_cond.notify_all()
            try:
                self.commit_pending()
            finally:
                self._close()
        if self._committer is not None and self._committer is not threading.current_thread():
            self._committer.join(5)

    def executescript(self, sql: str) -> None:
        for stmt in split_statements(sql):
            self.execute(stmt)

    def table_exists(self, name: str) -> bool:
        raise NotImplementedError

    # -- shared API --------------------------------------------------------
    @contextmanager
    def transaction(self, *, deferrable: bool = False) -> Iterator[Database]:
        """A transaction; ``deferrable`` ones may wait for a group commit (see the class)."""
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            in_batch = self._batch_open
            if in_batch:
                self._execute("SAVEPOINT nexus_op", ())
            else:
                self._begin()
            self._depth = 1
            mark = len(self._after_commit)
            try:
                yield self
            except BaseException:
                self._depth = 0
                if in_batch and self._in_transaction():
                    del self._after_commit[mark:]
                    self._execute("ROLLBACK TO nexus_op", ())
                    self._execute("RELEASE nexus_op", ())
                else:
                    if in_batch:
                        log.error("the database ended the open group commit on an error: the last "
                                  "%d namespace changes are lost", self._batch_ops)
                    self._batch_ops = 0
                    self._after_commit = []
                    self._rollback()
                raise
            self._depth = 0
            if in_batch:
                self._execute("RELEASE nexus_op", ())
            if deferrable and self.commit_delay > 0 and self._batch_ops < self.GROUP_MAX_OPS:
                if not in_batch:
                    self._batch_since = time.monotonic()
                    self._batch_cond.notify_all()
                self._batch_ops += 1
                return
            self._finish()

    @property
    def _batch_open(self) -> bool:
        return self._batch_ops > 0

    def _finish(self) -> None:
        """Commit the open transaction (a whole batch, if one is open) and run its callbacks."""
        self._batch_ops = 0
        try:
            self._commit()
        except BaseException:
            self._after_commit = []
            self._rollback()
            raise
        callbacks, self._after_commit = self._after_commit, []
        for fn in callbacks:
            fn()

    def commit_pending(self) -> None:
        """Commit the deferred operations of an open group commit, if any."""
        with self.lock:
            if self._batch_open and not self._depth:
                self._finish()

    def enable_group_commit(self, delay: float) -> None:
        """Let deferrable transactions wait up to ``delay`` seconds for a shared commit."""
        with self.lock:
            self.commit_delay = max(0.0, delay)
            if self.commit_delay and self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, name="nexus-commit", daemon=True)
                self._committer.start()
            elif not self.commit_delay:
                self.commit_pending()

    def _commit_loop(self) -> None:
        with self.lock:
            while not self._closing:
                if not self._batch_open:
                    self._batch_cond.wait()
                    continue
                due = self._batch_since + self.commit_delay - time.monotonic()
                if due > 0:
                    self._batch_cond.wait(due)
                    continue
                try:
                    self.commit_pending()
                except Exception as exc:  # noqa: BLE001 - nobody to raise to: log it loudly
                    log.error("group commit failed, the last %.0f ms of namespace changes are lost: %s",
                              self.commit_delay * 1000, exc)

    def after_commit(self, fn) -> None:
        """Call ``fn`` once the current transaction commits (at once outside one)."""
        if self._depth or self._batch_open:
            if fn not in self._after_commit:
                self._after_commit.append(fn)
        else:
            fn()

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the number of rows it changed."""
        with self.lock:
            for _ in self._execute(sql, params):
                pass
            return self._changes()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.lock:
            return list(self._execute(sql, params))

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self.lock:
            for row in self._execute(sql, params):
                return row
            return None

    def query_value(self, sql: str, params: Sequence[Any] = (), default: Any = None) -> Any:
        row = self.query_one(sql, params)
        return default if row is None or row[0] is None else row[0]

    def query_in(self, sql: str, ids: Iterable[Any], *, before: Sequence[Any] = (),
                 after: Sequence[Any] = (), batch: int = 500) -> list[Row]:
        """Run ``sql`` once per batch of ``ids``, its ``{ids}`` marker becoming ``?, ?, ...``;
        ``before``/``after`` are the parameters around the list. Returns all rows."""
        idl = list(ids)
        out: list[Row] = []
        for i in range(0, len(idl), batch):
            part = idl[i : i + batch]
            out += self.query(sql.replace("{ids}", ",".join("?" * len(part))), (*before, *part, *after))
        return out


def split_statements(sql: str) -> list[str]:
    """Statements of a DDL script (comment lines, which may hold ';', are dropped first)."""
    code = "\n".join(ln for ln in sql.splitlines() if not ln.strip().startswith("--"))
    return [stmt.strip() for stmt in code.split(";") if stmt.strip()]


class SQLiteDatabase(Database):
    """SQLite through apsw: WAL journal, one transaction per operation.

    ``synchronous=NORMAL`` in WAL mode makes each commit safe against a crash of
    the process at once, and against power loss once the WAL is synced, which
    :meth:`make_durable` does (fsync of files, ``nexus sync``).
    """

    dialect_name = "sqlite"
    ddl_types = {
        "ID": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BLOB": "BLOB",
        "NOROWID": " WITHOUT ROWID",
    }

    def __init__(self, path: str, *, busy_timeout_ms: int = 30000) -> None:
        super().__init__()
        import apsw

        self._apsw = apsw
        self.path = path
        try:
            self.conn = apsw.Connection(path)
        except apsw.CantOpenError as exc:
            raise StoreError(f"cannot open metadata database {path}: {exc}") from None
        self._busy_timeout_s = busy_timeout_ms / 1000
        self._busy_since = 0.0
        self.conn.setbusyhandler(self._busy)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=OFF")
            self.conn.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
        except apsw.NotADBError:
            raise StoreError(f"{path} is not a nexusfs metadata database") from None
        #: why vector search is not available here (None: sqlite-vec is loaded)
        self.vector_search_problem = self._load_sqlite_vec()
        self.vector_search = self.vector_search_problem is None

    def _busy(self, prior_calls: int) -> bool:
        """Another connection holds the write lock: wait a little and try again (until the
        timeout). SQLite's own timeout handler sleeps 1, 2, 5, 10… up to 100 ms between tries;
        a mount's transactions take well under a millisecond, so short naps waste far less."""
        now = time.monotonic()
        if prior_calls == 0:
            self._busy_since = now
        elif now - self._busy_since > self._busy_timeout_s:
            return False
        time.sleep(0.0002 if prior_calls < 50 else 0.002)
        return True

    def _load_sqlite_vec(self) -> str | None:
        """Load the sqlite-vec extension (vector tables for semantic search); None once
        loaded, else why it could not be (semantic queries are then ranked by their words
        alone, and the store says so: see ``Store.open`` and ``IndexStatus.note``)."""
        try:
            import sqlite_vec
        except ImportError as exc:
            return f"the sqlite-vec package is not installed (pip install sqlite-vec): {exc}"
        try:
            self.conn.enable_load_extension(True)
            self.conn.load_extension(sqlite_vec.loadable_path())
        except self._apsw.Error as exc:
            return f"sqlite-vec does not load into SQLite: {exc}"
        finally:
            self.conn.enable_load_extension(False)
        return None

    def _execute(self, sql: str, params: Sequence[Any]) -> Iterator[Row]:
        try:
            return self.conn.execute(sql, params)
        except self._apsw.CorruptError as exc:
            raise StoreError(f"metadata database {self.path} is corrupt: {exc}") from None
        except self._apsw.ConnectionClosedError:
            raise StoreError("the store has been closed") from None

    def _changes(self) -> int:
        return self.conn.changes()

    def _begin(self) -> None:
        self._execute("BEGIN IMMEDIATE", ())

    def _commit(self) -> None:
        self.conn.execute("COMMIT")
        self.last_write = time.monotonic()

    def _rollback(self) -> None:
        if not self.conn.getautocommit():
            self.conn.execute("ROLLBACK")

    def _in_transaction(self) -> bool:
        return not self.conn.getautocommit()

    def generation(self) -> tuple:
        with self.lock:
            # total_changes: this connection's writes; data_version: other connections' commits
            return (self.conn.total_changes(), self.query_value("PRAGMA data_version"))

    def table_exists(self, name: str) -> bool:
        return (
            self.query_one("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
            is not None
        )

    def _sync(self) -> None:
        # All committed transactions are in the WAL (or already checkpointed into the
        # main file, which checkpointing syncs): syncing the WAL makes them durable.
        wal = self.path + "-wal"
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def open_database(url: str) -> Database:
    """``sqlite:///path`` (or a plain path). PostgreSQL comes as a later dialect."""
    if url.startswith("sqlite://"):
        return SQLiteDatabase(url[len("sqlite://") :])
    if "://" in url:
        raise StoreError(f"unsupported metadata URL {url!r} (supported: sqlite:///PATH)")
    return SQLiteDatabase(url)
