"""The search index follows every change, and its state never changes a result.

Most tests use a store without a background indexer (``ix`` fixture): changes stay
queued until the test runs ``nx.reindex()``, so each step is deterministic. Each
step checks the index's own tables (what a doc holds, which file points where) as
well as what grep answers, and fsck stays clean throughout.
"""

from __future__ import annotations

import os
import time

import pytest

import nexusfs
from nexusfs.search import indexer as indexer_mod
from nexusfs.search.grep import GrepOptions
from nexusfs.search.indexer import Indexer
from nexusfs.search.literals import fts5_expression, required_query
from tests.oracles import assert_fsck_clean
from tests.search_helpers import STORE_SETTINGS, open_store


@pytest.fixture
def ix(store_dir):
    nx = open_store(store_dir, background_indexing=False)
    try:
        yield nx
    finally:
        nx.close()


def grep_paths(nx, pattern, root="/", **kw) -> list[str]:
    return sorted({m.path for m in nx.grep(pattern, root, **kw)})


def index_hits(nx, literal: str) -> set[int]:
    """Docs the trigram index returns for a literal (no verification)."""
    searcher = nx.store.searcher
    searcher.prepare()
    return searcher.index.trigram_docs(fts5_expression(required_query(literal)))


def candidates(nx, pattern, root="/"):
    """(path, doc or None) the grep of ``pattern`` would read."""
    s = nx.store.searcher
    attr = nx.stat(root)
    return sorted((p, d) for _i, p, d in s._grep_candidates(pattern, attr.ino, root, GrepOptions()))


def files_row(nx, path) -> tuple | None:
    ino = nx.stat(path).ino
    return nx.meta.db.query_one("SELECT doc, data_version FROM search_files WHERE inode = ?", (ino,))


def test_writes_are_queued_then_indexed(ix):
    nx = ix
    nx.write_many({"/d/a.txt": b"alpha content\n", "/d/b.txt": b"beta content\n", "/d/c.py": b"gamma = 1\n"})
    st = nx.index_status()
    assert (st.pending, st.files, st.docs, st.failing) == (3, 0, 0, 0)
    # queued files are read directly, and found
    assert grep_paths(nx, "content") == ["/d/a.txt", "/d/b.txt"]
    assert all(doc is None for _p, doc in candidates(nx, "content"))
    assert nx.reindex() == 3
    st = nx.index_status()
    assert (st.pending, st.files, st.docs, st.failing, st.errors) == (0, 3, 3, 0, [])
    assert st.by_kind == {"text": 3}
    # now answered from the index: only the files holding the trigrams are candidates
    assert candidates(nx, "alpha content") == [("/d/a.txt", files_row(nx, "/d/a.txt")[0])]
    assert grep_paths(nx, "content") == ["/d/a.txt", "/d/b.txt"]
    assert_fsck_clean(nx)


def test_overwrite_replaces_old_content(ix):
    nx = ix
    nx.write_many({"/f.txt": b"the old wording\n", "/g.txt": b"unrelated\n"})
    nx.reindex()
    old_doc = files_row(nx, "/f.txt")[0]
    assert index_hits(nx, "old wording") == {old_doc}
    nx.write_bytes("/f.txt", b"the new wording\n")
    # before the indexer runs: the stale entry is ignored, the new content is read
    assert nx.index_status().pending == 1
    assert grep_paths(nx, "old wording") == []
    assert grep_paths(nx, "new wording") == ["/f.txt"]
    nx.reindex()
    row = files_row(nx, "/f.txt")
    assert row[0] != old_doc
    assert index_hits(nx, "old wording") == set()  # the unused doc was dropped
    assert index_hits(nx, "new wording") == {row[0]}
    st = nx.index_status()
    assert (st.pending, st.files, st.docs) == (0, 2, 2)
    assert grep_paths(nx, "wording") == ["/f.txt"]
    # through a file object, several writes and a partial overwrite
    with nx.open("/f.txt", "r+b") as f:
        f.seek(4)
        f.write(b"NEW")
    assert grep_paths(nx, "the NEW wording") == ["/f.txt"]
    nx.reindex()
    assert grep_paths(nx, "the NEW wording") == ["/f.txt"]
    assert grep_paths(nx, "the new wording") == []
    assert_fsck_clean(nx)


def test_truncate_and_append(ix):
    nx = ix
    nx.write_bytes("/t.txt", b"keep this line\ndrop this line\n")
    nx.reindex()
    nx.truncate("/t.txt", 15)
    assert grep_paths(nx, "drop") == []
    assert grep_paths(nx, "keep") == ["/t.txt"]
    nx.reindex()
    assert grep_paths(nx, "drop") == [] and index_hits(nx, "drop this") == set()
    nx.truncate("/t.txt", 0)
    assert grep_paths(nx, "keep") == []
    nx.reindex()
    assert nx.index_status().by_kind == {"text": 1}
    nx.append_bytes("/t.txt", b"appended\n")
    assert grep_paths(nx, "appended") == ["/t.txt"]
    nx.reindex()
    assert grep_paths(nx, "appended") == ["/t.txt"] and grep_paths(nx, "keep") == []
    # growing with a hole: zeros make it binary
    nx.truncate("/t.txt", 200_000)
    assert grep_paths(nx, "appended") == []
    nx.reindex()
    assert nx.index_status().by_kind == {"binary": 1}
    assert_fsck_clean(nx)


def test_rename_needs_no_reindexing(ix):
    nx = ix
    nx.write_many({"/a/one.txt": b"moving text\n", "/a/two.txt": b"staying text\n"})
    nx.reindex()
    before = files_row(nx, "/a/one.txt")
    nx.mkdir("/b")
    nx.rename("/a/one.txt", "/b/moved.txt")
    assert nx.index_status().pending == 0  # a rename changes no content
    assert files_row(nx, "/b/moved.txt") == before
    assert grep_paths(nx, "moving") == ["/b/moved.txt"]
    # a whole directory
    nx.rename("/b", "/c")
    assert grep_paths(nx, "text") == ["/a/two.txt", "/c/moved.txt"]
    assert grep_paths(nx, "text", "/c") == ["/c/moved.txt"]
    # replacing a file by renaming another over it
    nx.rename("/a/two.txt", "/c/moved.txt")
    assert grep_paths(nx, "text") == ["/c/moved.txt"]
    assert grep_paths(nx, "moving") == []
    nx.reindex()
    st = nx.index_status()
    assert (st.pending, st.files, st.docs) == (0, 1, 1)
    assert_fsck_clean(nx)


def test_delete_is_immediate(ix):
    nx = ix
    nx.write_many({f"/del/{i}.txt": f"file number {i}\n".encode() for i in range(5)})
    nx.reindex()
    nx.delete("/del/3.txt")
    # gone at once, although its doc is still in the trigram index
    assert index_hits(nx, "number 3")
    assert grep_paths(nx, "number") == [f"/del/{i}.txt" for i in (0, 1, 2, 4)]
    st = nx.index_status()
    assert (st.pending, st.files) == (0, 4)
    # deleted while still queued
    nx.write_bytes("/del/new.txt", b"number new\n")
    nx.delete("/del/new.txt")
    assert nx.index_status().pending == 0
    assert grep_paths(nx, "new") == []
    # a directory tree
    nx.delete("/del", recursive=True)
    assert grep_paths(nx, "number") == []
    nx.reindex()
    st = nx.index_status()
    assert (st.pending, st.files, st.docs) == (0, 0, 0)
    assert index_hits(nx, "number 3") == set()
    assert_fsck_clean(nx)


def test_delete_while_open(ix):
    """An unlinked file that is still open has no path: it is never reported."""
    nx = ix
    nx.write_bytes("/open.txt", b"still open text\n")
    nx.reindex()
    f = nx.open("/open.txt", "rb")
    try:
        nx.delete("/open.txt")
        assert grep_paths(nx, "still open") == []
    finally:
        f.close()
    assert grep_paths(nx, "still open") == []
    assert_fsck_clean(nx)


def test_hard_links_and_copies_share_docs(ix):
    nx = ix
    nx.write_bytes("/h/orig.txt", b"shared text " * 200 + b"\n", parents=True)  # blocks, not inline
    nx.write_bytes("/h/small.txt", b"small shared text\n")  # inline
    nx.reindex()
    st0 = nx.index_status()
    nx.link("/h/orig.txt", "/h/link.txt")
    assert nx.index_status().pending == 0
    nx.copy("/h/orig.txt", "/h/copy.txt")
    nx.copy("/h/small.txt", "/h/small-copy.txt")
    nx.mkdir("/h2")
    nx.copy("/h", "/h2/tree")
    nx.reindex()
    st = nx.index_status()
    assert st.docs == st0.docs == 2  # copies share their source's doc
    assert st.files == 4 + 5  # every inode: the hard link is one, its copy in the tree another
    assert grep_paths(nx, "shared text") == [
        "/h/copy.txt", "/h/link.txt", "/h/orig.txt", "/h/small-copy.txt", "/h/small.txt",
        "/h2/tree/copy.txt", "/h2/tree/link.txt", "/h2/tree/orig.txt", "/h2/tree/small-copy.txt",
        "/h2/tree/small.txt",
    ]
    # identical content written independently is one doc too
    nx.write_bytes("/h/again.txt", b"small shared text\n")
    nx.reindex()
    assert nx.index_status().docs == 2
    # a change through one hard link shows under both names
    nx.write_bytes("/h/link.txt", b"changed\n")
    assert grep_paths(nx, "changed") == ["/h/link.txt", "/h/orig.txt"]
    nx.reindex()
    assert grep_paths(nx, "changed") == ["/h/link.txt", "/h/orig.txt"]
    assert nx.index_status().docs == 3
    assert_fsck_clean(nx)


def test_rebuild_reproduces_results(ix):
    nx = ix
    files = {f"/r/{i:02d}.py": f"def function_{i}():\n    return {i} * {i % 7}\n".encode() for i in range(40)}
    files["/r/bin.dat"] = b"\0binary function_1"
    files["/r/latin.txt"] = "function_3 caf\xe9\n".encode("latin-1")
    nx.write_many(files)
    nx.reindex()
    patterns = ["function_1", "return [0-9]+ \\* 3", "def", "caf", "\\w+_[0-9]\\(\\)"]
    before = {p: nx.grep(p, "/") for p in patterns}
    st0 = nx.index_status()
    assert st0.by_kind == {"text": 40, "binary": 1, "nonutf8": 1}
    n = nx.reindex(rebuild=True)
    assert n == 42
    st = nx.index_status()
    assert (st.pending, st.files, st.docs, st.by_kind) == (0, st0.files, st0.docs, st0.by_kind)
    assert {p: nx.grep(p, "/") for p in patterns} == before
    # while a rebuild is queued (nothing indexed), the results are the same too
    nx.store.searcher.index.rebuild()
    assert nx.index_status().pending == 42 and nx.index_status().files == 0
    assert {p: nx.grep(p, "/") for p in patterns} == before
    nx.reindex()
    assert_fsck_clean(nx)


def test_status_fields(ix, monkeypatch):
    nx = ix
    monkeypatch.setattr(indexer_mod, "MAX_INDEX_BYTES", 4096)
    nx.write_many({
        "/s/a.txt": b"text\n",
        "/s/b.txt": b"text\n",  # same as a.txt
        "/s/empty.txt": b"",
        "/s/bin.dat": b"\x00\x01\x02",
        "/s/raw.txt": b"\xff\xfe not utf-8 \xe9\n",
        "/s/big.txt": b"a large file line\n" * 1000,
    })
    nx.mkdir("/s/dir")
    nx.symlink("a.txt", "/s/link")
    st = nx.index_status()
    assert (st.pending, st.failing, st.files, st.docs, st.chunks) == (6, 0, 0, 0, 0)
    assert st.embedder is None
    nx.reindex()
    st = nx.index_status()
    assert (st.pending, st.failing, st.files, st.docs) == (0, 0, 6, 5)
    assert st.by_kind == {"text": 2, "binary": 1, "nonutf8": 1, "large": 1}
    assert st.errors == []
    # too large to index: still searched, by reading it
    assert len(nx.grep("large file", "/")) == 1000
    assert candidates(nx, "large file", "/s") == [("/s/big.txt", None)]
    # not UTF-8: its UTF-8 parts are in the trigram index
    raw_doc = files_row(nx, "/s/raw.txt")[0]
    assert candidates(nx, "not utf-8", "/s") == [("/s/big.txt", None), ("/s/raw.txt", raw_doc)]
    assert grep_paths(nx, "not utf-8") == ["/s/raw.txt"]
    assert grep_paths(nx, "\udcff\udcfe not") == ["/s/raw.txt"]  # raw bytes in the pattern


def test_non_utf8_docs_of_earlier_builds_are_always_scanned(ix):
    """Earlier builds recorded non-UTF-8 text as kind 'raw' without trigrams: such docs
    must still be read by every grep, or their matches would be lost."""
    nx = ix
    nx.write_bytes("/old/latin.txt", "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"), parents=True)
    nx.reindex()
    doc = files_row(nx, "/old/latin.txt")[0]
    db = nx.meta.db
    with db.transaction():
        db.execute("UPDATE search_docs SET kind = 'raw' WHERE id = ?", (doc,))
        db.execute("DELETE FROM search_trigrams WHERE rowid = ?", (doc,))
    assert candidates(nx, "zzz_absent", "/old") == [("/old/latin.txt", None)]
    assert grep_paths(nx, "cr.me") == ["/old/latin.txt"]


def test_failing_job_is_retried_and_reported(ix, analyse_fails):
    nx = ix
    nx.write_many({"/e/good.txt": b"fine content\n", "/e/bad.txt": b"poison content\n"})
    bad_ino = nx.stat("/e/bad.txt").ino
    poison = RuntimeError("simulated extraction failure")
    analyse_fails(b"poison", poison)
    nx.reindex()
    st = nx.index_status()
    assert (st.pending, st.failing, st.files) == (1, 1, 1)
    assert st.errors == [(bad_ino, "RuntimeError: simulated extraction failure")]
    # a failing file is still found (it is read, like any queued file)
    assert grep_paths(nx, "content") == ["/e/bad.txt", "/e/good.txt"]
    # retried later (not at once: it backs off), and still failing
    assert nx.reindex() == 0
    not_before = nx.meta.db.query_value("SELECT not_before_ns FROM index_jobs WHERE inode = ?", (bad_ino,))
    assert not_before > time.time_ns(), "a failed job must back off"
    deadline = time.monotonic() + (not_before - time.time_ns()) / 1e9 + 30
    while (done := nx.reindex()) == 0:  # retried once its backoff is over
        assert time.monotonic() < deadline, "the failed job was never retried"
        time.sleep(0.05)
    assert done == 1 and time.time_ns() >= not_before
    st = nx.index_status()
    assert st.failing == 1 and st.pending == 1
    attempts = nx.meta.db.query_value("SELECT attempts FROM index_jobs WHERE inode = ?", (bad_ino,))
    assert attempts == 2
    # the cause goes away: the next retry succeeds and the error is gone
    analyse_fails(None)
    nx.meta.db.execute("UPDATE index_jobs SET not_before_ns = 0")
    nx.reindex()
    st = nx.index_status()
    assert (st.pending, st.failing, st.files, st.errors) == (0, 0, 2, [])
    # a new change resets the attempts: a file that was failing is indexed at once
    analyse_fails(b"poison", poison)
    nx.write_bytes("/e/good.txt", b"poison now\n")
    nx.reindex()
    assert nx.index_status().failing == 1
    analyse_fails(None)
    nx.write_bytes("/e/good.txt", b"healed\n")
    nx.reindex()
    st = nx.index_status()
    assert (st.pending, st.failing) == (0, 0)
    assert grep_paths(nx, "healed") == ["/e/good.txt"]
    assert_fsck_clean(nx)


def test_change_during_indexing(ix, monkeypatch):
    """A file that changes while the indexer reads it is indexed again; the old
    version never answers for the new one."""
    nx = ix
    nx.write_bytes("/race.txt", b"version one\n")
    real = Indexer.analyse
    calls = []

    def analyse(self, data, ino):
        calls.append(data)
        if len(calls) == 1:
            nx.write_bytes("/race.txt", b"version two\n")  # committed by the other connection
        return real(self, data, ino)

    monkeypatch.setattr(Indexer, "analyse", analyse)
    nx.reindex()
    assert calls == [b"version one\n", b"version two\n"]
    assert nx.index_status().pending == 0
    assert grep_paths(nx, "version two") == ["/race.txt"]
    assert grep_paths(nx, "version one") == []
    row = files_row(nx, "/race.txt")
    assert row[1] == nx.meta.db.query_value("SELECT data_version FROM inodes WHERE id = ?",
                                            (nx.stat("/race.txt").ino,))
    assert candidates(nx, "version two") == [("/race.txt", row[0])]
    assert_fsck_clean(nx)


def test_index_survives_reopening(store_dir):
    nx = open_store(store_dir, background_indexing=False)
    nx.write_many({f"/keep/{i}.txt": f"persistent line {i}\n".encode() for i in range(20)})
    nx.write_bytes("/keep/dup.txt", b"persistent line 3\n")
    nx.reindex()
    st0 = nx.index_status()
    res0 = nx.grep("persistent line 1", "/")
    nx.write_bytes("/keep/queued.txt", b"persistent but queued\n")
    nx.close()
    nx = open_store(store_dir, background_indexing=False)
    try:
        st = nx.index_status()
        assert (st.files, st.docs, st.by_kind, st.pending) == (st0.files, st0.docs, st0.by_kind, 1)
        assert nx.grep("persistent line 1", "/") == res0
        assert candidates(nx, "persistent line 19") == [("/keep/19.txt", files_row(nx, "/keep/19.txt")[0]),
                                                        ("/keep/queued.txt", None)]
        nx.reindex()
        assert nx.index_status().pending == 0
        assert_fsck_clean(nx)
    finally:
        nx.close()


def test_background_indexer(store_dir):
    """With the default settings a store indexes in the background; wait_for_index waits."""
    nx = nexusfs.connect(store_dir, **{**STORE_SETTINGS, "background_indexing": True})
    try:
        nx.write_many({f"/bg/{i}.txt": f"background {i}\n".encode() for i in range(50)})
        with nx.open("/bg/streamed.txt", "wb") as f:
            for i in range(100):
                f.write(b"streamed line %d\n" % i)
        assert nx.wait_for_index(30)
        st = nx.index_status()
        assert (st.pending, st.files, st.docs) == (0, 51, 51)
        assert len(nx.grep("background", "/")) == 50
        assert all(d is not None for _p, d in candidates(nx, "streamed line"))
        # deletes and overwrites while the indexer is running
        for i in range(0, 50, 2):
            nx.delete(f"/bg/{i}.txt")
        for i in range(1, 50, 2):
            nx.write_bytes(f"/bg/{i}.txt", f"rewritten {i}\n".encode())
        assert grep_paths(nx, "background") == []
        assert len(nx.grep("rewritten", "/")) == 25
        assert nx.wait_for_index(30)
        assert grep_paths(nx, "background") == []
        assert len(nx.grep("rewritten", "/")) == 25
        assert_fsck_clean(nx)
    finally:
        nx.close()


def test_two_connections(store_dir):
    """Another process's (connection's) writes are visible to this one's grep at once."""
    a = open_store(store_dir, background_indexing=False)
    b = open_store(store_dir, background_indexing=False)
    try:
        a.write_bytes("/x.txt", b"from connection a\n")
        a.reindex()
        b.write_bytes("/x.txt", b"from connection b\n")
        assert grep_paths(a, "connection a") == []
        assert grep_paths(a, "connection b") == ["/x.txt"]
        a.reindex()
        assert grep_paths(b, "connection b") == ["/x.txt"]
        assert os.path.exists(store_dir)
    finally:
        b.close()
        a.close()


def test_indexer_finishing_during_a_grep(ix, monkeypatch):
    """The indexer finishes a file's job while a grep is reading the index: the file is
    found either as queued or as indexed, never lost in between."""
    nx = ix
    nx.write_many({"/race/a.txt": b"racing text\n", "/race/b.txt": b"other racing text\n"})
    index = nx.store.searcher.index
    real = index.trigram_docs

    def trigram_docs(expr):
        found = real(expr)  # the index as it was before...
        nx.reindex()  # ...then another indexer finishes every job
        return found

    monkeypatch.setattr(index, "trigram_docs", trigram_docs)
    assert grep_paths(nx, "racing text") == ["/race/a.txt", "/race/b.txt"]
    assert nx.index_status().pending == 0
