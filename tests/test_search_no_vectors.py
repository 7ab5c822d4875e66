"""Semantic search configured on, sqlite-vec missing or not loading: the store still opens
(grep and glob work; nothing is embedded) but says so: a WARNING once per process, and a
note in ``index_status()``, in each search's results and in ``nexus index --status``.

These tests hide sqlite-vec on purpose, so they do not need the semantic stack.
"""

from __future__ import annotations

import logging
import sys

import pytest

import nexusfs
import nexusfs.store
from tests.search_helpers import NOTES, STORE_SETTINGS, NexusCli

FILES = {f"/n/{name}": text.encode() for name, text in NOTES.items()}


def hide_sqlite_vec(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlite_vec", None)  # `import sqlite_vec` raises ImportError


def break_sqlite_vec(monkeypatch) -> None:
    import types

    broken = types.ModuleType("sqlite_vec")
    broken.loadable_path = lambda: "/nonexistent/vec0"
    monkeypatch.setitem(sys.modules, "sqlite_vec", broken)


@pytest.fixture
def fresh_warnings(monkeypatch, caplog):
    """This process has logged no sqlite-vec warning yet; the records, as caplog has them."""
    monkeypatch.setattr(nexusfs.store, "_VECTOR_WARNINGS", set())
    caplog.set_level(logging.WARNING, logger="nexusfs.store")
    return lambda: [r for r in caplog.records if "semantic search is off" in r.getMessage()]


@pytest.mark.parametrize("fault,reason", [
    (hide_sqlite_vec, "the sqlite-vec package is not installed (pip install sqlite-vec)"),
    (break_sqlite_vec, "sqlite-vec does not load into SQLite: "),
], ids=["missing", "not-loading"])
def test_semantic_search_without_sqlite_vec_says_so(tmp_path, monkeypatch, fresh_warnings, fault, reason):
    fault(monkeypatch)
    home = str(tmp_path / "store")
    settings = {**STORE_SETTINGS, "semantic": True, "background_indexing": False}
    for _ in range(2):  # the warning comes once per process, however many opens
        nx = nexusfs.connect(home, **settings)
        try:
            nx.write_many(FILES)
            nx.reindex()
            st = nx.index_status()
            assert not st.vector_search and st.chunks == 0 and st.embedder is None
            assert st.note is not None and st.note.startswith(f"semantic search is off: {reason}"), st.note
            # degraded, not broken: grep works, and a semantic query says why it finds nothing
            results = nx.search("knead the dough and bake it", k=3)
            assert results.note == st.note
            assert [h.path for h in results] == []  # no chunks without vectors: nothing to rank
            assert [m.path for m in nx.grep("telescope", "/")] == ["/n/stars.md"]
        finally:
            nx.close()
    warnings = fresh_warnings()
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].levelno == logging.WARNING
    assert reason in warnings[0].getMessage()
    status = NexusCli(home)("index", "--status")
    assert "embedder:         none yet (sqlite-vec missing)" in status.stdout
    assert f"note: semantic search is off: {reason}" in status.stderr, status.stderr


def test_no_warning_when_semantic_search_is_off(tmp_path, monkeypatch, fresh_warnings):
    hide_sqlite_vec(monkeypatch)
    nx = nexusfs.connect(str(tmp_path / "store"), **{**STORE_SETTINGS, "semantic": False})
    try:
        assert nx.index_status().note is None
    finally:
        nx.close()
    assert fresh_warnings() == []
