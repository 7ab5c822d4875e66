"""Group commit of the metadata database (Database.enable_group_commit, used by the mount).

Deferrable transactions (namespace changes) share one commit; everything else, and
make_durable / close, commit at once. Another connection sees the deferred changes only
after the group commits; a failing operation inside a group is undone alone.
"""

from __future__ import annotations

import errno
import time

import apsw
import pytest

from nexusfs.errors import FsError
from nexusfs.meta.db import Database, SQLiteDatabase

# a delay no test run reaches by accident: commits in these tests come from the
# triggers under test, not from the timer (except in the timer test itself)
LONG = 600.0


@pytest.fixture
def db(tmp_path):
    d = SQLiteDatabase(str(tmp_path / "meta.db"))
    d.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    yield d
    d.close()


def _other(db: SQLiteDatabase) -> apsw.Connection:
    return apsw.Connection(db.path)


def _keys(conn: apsw.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT k FROM t ORDER BY k")]


def _insert(db: Database, k: str, *, deferrable: bool = True) -> None:
    with db.transaction(deferrable=deferrable):
        db.execute("INSERT INTO t (k, v) VALUES (?, 1)", (k,))


def test_without_group_commit_every_transaction_commits_at_once(db):
    other = _other(db)
    _insert(db, "a")
    assert _keys(other) == ["a"]


def test_deferred_changes_are_visible_to_this_connection_at_once_and_to_others_after_the_commit(db):
    db.enable_group_commit(LONG)
    other = _other(db)
    _insert(db, "a")
    _insert(db, "b")
    assert [r[0] for r in db.query("SELECT k FROM t ORDER BY k")] == ["a", "b"]
    assert _keys(other) == []
    db.commit_pending()
    assert _keys(other) == ["a", "b"]


def test_the_group_commits_by_itself_after_the_delay(db):
    db.enable_group_commit(0.01)
    other = _other(db)
    _insert(db, "a")
    deadline = time.monotonic() + 30
    while _keys(other) != ["a"]:
        assert time.monotonic() < deadline, "the deferred change was never committed"
        time.sleep(0.005)


def test_a_failing_operation_in_a_group_is_undone_alone(db):
    db.enable_group_commit(LONG)
    _insert(db, "a")
    with pytest.raises(FsError) as ei:
        with db.transaction(deferrable=True):
            db.execute("INSERT INTO t (k, v) VALUES ('half', 1)")
            raise FsError(errno.EEXIST, "refused halfway")
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(apsw.ConstraintError):
        _insert(db, "a")  # duplicate key: the statement fails inside the group
    _insert(db, "b")
    db.commit_pending()
    assert _keys(_other(db)) == ["a", "b"]


def test_a_non_deferrable_transaction_commits_the_open_group_with_it(db):
    db.enable_group_commit(LONG)
    other = _other(db)
    _insert(db, "a")
    _insert(db, "blob-reservation", deferrable=False)
    assert _keys(other) == ["a", "blob-reservation"]


def test_make_durable_and_close_commit_the_open_group(tmp_path, db):
    db.enable_group_commit(LONG)
    other = _other(db)
    _insert(db, "a")
    db.make_durable()
    assert _keys(other) == ["a"]
    _insert(db, "b")
    db.close()
    assert _keys(other) == ["a", "b"]


def test_after_commit_callbacks_run_when_the_group_commits_and_not_for_undone_operations(db):
    db.enable_group_commit(LONG)
    ran: list[str] = []
    with db.transaction(deferrable=True):
        db.execute("INSERT INTO t (k, v) VALUES ('a', 1)")
        db.after_commit(lambda: ran.append("a"))
    with pytest.raises(RuntimeError):
        with db.transaction(deferrable=True):
            db.after_commit(lambda: ran.append("undone"))
            raise RuntimeError("fails")
    db.after_commit(lambda: ran.append("outside"))  # outside a transaction, but a group is open
    assert ran == []
    db.commit_pending()
    assert ran == ["a", "outside"]


def test_a_full_group_commits_without_waiting(db):
    db.enable_group_commit(LONG)
    other = _other(db)
    for i in range(Database.GROUP_MAX_OPS + 1):
        _insert(db, f"k{i:04d}")
    assert len(_keys(other)) >= Database.GROUP_MAX_OPS


def test_nested_transactions_inside_a_group_commit_once_with_the_group(db):
    db.enable_group_commit(LONG)
    other = _other(db)
    with db.transaction(deferrable=True):
        _insert(db, "a", deferrable=False)  # nested: joins the outer transaction
        _insert(db, "b")
    assert _keys(other) == []
    db.commit_pending()
    assert _keys(other) == ["a", "b"]


def test_turning_group_commit_off_commits_what_is_pending(db):
    db.enable_group_commit(LONG)
    other = _other(db)
    _insert(db, "a")
    db.enable_group_commit(0)
    assert _keys(other) == ["a"]
    _insert(db, "b")
    assert _keys(other) == ["a", "b"]


def test_metadata_namespace_changes_are_deferrable_and_reach_other_connections(tmp_path):
    import nexusfs

    with nexusfs.connect(str(tmp_path / "store")) as nx:
        db = nx.store.db
        db.enable_group_commit(LONG)
        meta = nx.store.meta
        d = meta.create(1, b"dir", 0o40755, 0, 0)
        f = meta.create(d.ino, b"file", 0o100644, 0, 0)
        meta.rename(d.ino, b"file", d.ino, b"renamed", 0, lambda _ino: False)
        meta.setattr(f.ino, mode=0o600)
        other = apsw.Connection(db.path)
        assert other.execute("SELECT count(*) FROM dentries WHERE name = ?", (b"renamed",)).fetchall() == [(0,)]
        db.commit_pending()
        assert other.execute("SELECT count(*) FROM dentries WHERE name = ?", (b"renamed",)).fetchall() == [(1,)]
        assert nx.stat("/dir/renamed").mode & 0o777 == 0o600
