"""A thin, thread-safe database wrapper and the SQL dialects.

The metadata engine writes portable SQL with ``?`` placeholders; a dialect
supplies the DDL type names, connects, and maps driver errors. Everything else
(the shared logic) lives in :mod:`nexusfs.meta.engine`.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import StoreError

Row = tuple[Any, ...]


class Database(ABC):
    """One connection, shared by threads under a re-entrant lock.

    ``transaction()`` nests: only the outermost level begins and commits, so a
    batch operation can wrap many single-operation transactions into one.
    """

    dialect_name: str = ""
    #: DDL substitutions for :data:`nexusfs.meta.schema.DDL`
    ddl_types: dict[str, str] = {}

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._depth = 0
        #: time.monotonic() of this connection's last committed write transaction
        self.last_write = 0.0
        self._after_commit: list = []

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
    def close(self) -> None: ...

    def make_durable(self) -> None:  # noqa: B027 - dialects with lazy sync override
        """Force every committed transaction to stable storage."""

    def executescript(self, sql: str) -> None:
        for stmt in split_statements(sql):
            self.execute(stmt)

    def table_exists(self, name: str) -> bool:
        raise NotImplementedError

    # -- shared API --------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Database]:
        with self.lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._begin()
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                self._after_commit = []
                self._rollback()
                raise
            else:
                self._depth = 0
                self._commit()
                callbacks, self._after_commit = self._after_commit, []
                for fn in callbacks:
                    fn()

    def after_commit(self, fn) -> None:
        """Call ``fn`` once the current transaction commits (at once outside one)."""
        if self._depth:
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
        self.vector_search = self._load_sqlite_vec()

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

    def _load_sqlite_vec(self) -> bool:
        """Load the sqlite-vec extension (vector tables for semantic search) if installed."""
        try:
            import sqlite_vec
        except ImportError:
            return False
        try:
            self.conn.enable_load_extension(True)
            self.conn.load_extension(sqlite_vec.loadable_path())
        except self._apsw.Error:
            return False
        finally:
            self.conn.enable_load_extension(False)
        return True

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

    def table_exists(self, name: str) -> bool:
        return (
            self.query_one("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
            is not None
        )

    def make_durable(self) -> None:
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

    def close(self) -> None:
        with self.lock:
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
