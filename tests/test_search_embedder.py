"""The store records its embedding model: a process configured with another one never
resets the index, read-only commands never write, and switching models is one explicit
command (``nexus index --rebuild --embedder NAME``)."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import apsw
import pytest

import nexusfs
from nexusfs.config import Config
from nexusfs.errors import ConfigError
from tests.mountutil import MountedStore, wait_until
from tests.search_helpers import NOTES, STORE_SETTINGS, NexusCli, need_minilm, semantic_stack  # noqa: F401  (autouse: every test here needs the semantic stack)

DOCS = {f"/notes/{name}": text for name, text in NOTES.items()}
SKY = "looking at the night sky through a lens"
MISMATCH = ("nexus: note: this store indexes with wordllama; "
            "run `nexus index --rebuild --embedder minilm` to switch\n")


def make_store(home: str) -> None:
    nx = nexusfs.connect(home, **{**STORE_SETTINGS, "semantic": True, "background_indexing": False})
    try:
        nx.write_many({p: t.encode() for p, t in DOCS.items()})
    finally:
        nx.close()


@pytest.fixture
def fresh(tmp_path):
    """(CLI, path of a nexus.yaml choosing minilm) for a store whose files were never indexed."""
    home = str(tmp_path / "store")
    make_store(home)
    cfg = tmp_path / "minilm.yaml"
    cfg.write_text("embedder: minilm\n")
    return NexusCli(home), str(cfg)


@pytest.fixture
def indexed(fresh):
    """The same store, indexed by a plain `nexus index` (the default model, wordllama)."""
    nexus, cfg = fresh
    nexus("index")
    return nexus, cfg


def status_of(nexus: NexusCli, *args: str) -> dict[str, str]:
    result = nexus(*args, "index", "--status")
    return dict(re.findall(r"^([a-z ]+): +(.*)$", result.stdout, re.M))


def index_state(home: str) -> tuple:
    """What a reset would change: the recorded model, and the index's rows."""
    conn = apsw.Connection(os.path.join(home, "meta.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        one = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        return (one("SELECT key, value FROM meta WHERE key LIKE 'search_embedder%' ORDER BY key"),
                one("SELECT id, digest, kind, chunks FROM search_docs ORDER BY id"),
                one("SELECT inode, doc, data_version FROM search_files ORDER BY inode"),
                one("SELECT id, doc, seq FROM search_chunks ORDER BY id"),
                one("SELECT inode FROM index_jobs ORDER BY inode"))
    finally:
        conn.close()


@contextmanager
def no_writes(home: str):
    """Asserts that nothing was committed to the store's database meanwhile (by anyone)."""
    conn = apsw.Connection(os.path.join(home, "meta.db"))
    try:
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        yield
        assert conn.execute("PRAGMA data_version").fetchone()[0] == version, "meta.db was written"
    finally:
        conn.close()


# ------------------------------------------------------------- the report
def test_a_status_query_with_another_configured_embedder_keeps_the_index(indexed):
    nexus, cfg = indexed
    before = index_state(nexus.home)
    plain = status_of(nexus)
    assert plain["embedder"] == "wordllama" and plain["queued files"] == "0" and plain["indexed files"] == "3"
    with no_writes(nexus.home):
        result = nexus("--config", cfg, "index", "--status")
        assert result.stderr == MISMATCH
        assert dict(re.findall(r"^([a-z ]+): +(.*)$", result.stdout, re.M)) == plain
        result = nexus("index", "--status")
        assert result.stderr == ""
    assert index_state(nexus.home) == before


READ_ONLY = [
    ("index", "--status"),
    ("search", "bread"),
    ("grep", "bread", "/"),
    ("glob", "**"),
    ("info",),
    ("ls", "-R", "/"),
    ("stat", "/notes/bread.md"),
]


@pytest.mark.parametrize("state", ["fresh", "indexed"])
@pytest.mark.parametrize("configured", ["default", "minilm"])
@pytest.mark.parametrize("command", READ_ONLY, ids=[" ".join(c) for c in READ_ONLY])
def test_read_only_commands_never_write(request, state, configured, command):
    nexus, cfg = request.getfixturevalue(state)
    before = index_state(nexus.home)
    config = ("--config", cfg) if configured == "minilm" else ()
    with no_writes(nexus.home):
        result = nexus(*config, *command, code=None)
    assert result.exit_code in (0, 1), result.output
    assert "Traceback" not in result.output
    assert index_state(nexus.home) == before


def test_search_with_another_configured_embedder_uses_the_stores_model(indexed):
    nexus, cfg = indexed
    expected = nexus("search", "-k", "1", SKY).stdout
    assert expected.split()[1].startswith("/notes/stars.md:")
    result = nexus("--config", cfg, "search", "-k", "1", SKY)
    assert result.stdout == expected
    assert result.stderr == MISMATCH


def test_index_with_another_configured_embedder_indexes_with_the_stores_model(indexed):
    nexus, cfg = indexed
    nx = nexusfs.connect(nexus.home, background_indexing=False)
    try:
        nx.write_bytes("/notes/tea.md", b"Steep the green tea leaves for two minutes in hot water.\n")
    finally:
        nx.close()
    result = nexus("--config", cfg, "index")
    assert result.stderr == MISMATCH
    assert result.stdout.startswith("indexed 1 file(s); 4 files, 4 distinct contents")
    st = status_of(nexus)
    assert (st["embedder"], st["queued files"], st["indexed files"]) == ("wordllama", "0", "4")
    assert nexus("search", "-k", "1", "brewing a cup of tea").stdout.split()[1] == "/notes/tea.md:1-1"


def test_switching_the_embedder_is_one_explicit_command(indexed, tmp_path):
    need_minilm()
    nexus, _cfg = indexed
    # without --rebuild, another model is refused with the sentence that says how
    result = nexus("index", "--embedder", "minilm", code=1)
    assert result.stderr == ("nexus: error: this store indexes with wordllama; "
                             "run `nexus index --rebuild --embedder minilm` to switch\n")
    result = nexus("index", "--rebuild", "--embedder", "minilm")
    assert result.stdout.startswith("indexed 3 file(s); 3 files, 3 distinct contents")
    st = status_of(nexus)
    assert (st["embedder"], st["queued files"], st["indexed files"]) == ("minilm", "0", "3")
    # from now on the default configuration uses the store's model (minilm) and resets nothing
    before = index_state(nexus.home)
    with no_writes(nexus.home):
        result = nexus("index", "--status")
        assert result.stderr == ""
        assert nexus("search", "-k", "1", SKY).stdout.split()[1].startswith("/notes/stars.md:")
    assert nexus("index").stdout.startswith("indexed 0 file(s); 3 files")
    assert index_state(nexus.home) == before
    # a configuration that names the old default now gets the note, the other way round
    wl = tmp_path / "wordllama.yaml"
    wl.write_text("embedder: wordllama\n")
    result = nexus("--config", str(wl), "index", "--status")
    assert result.stderr == ("nexus: note: this store indexes with minilm; "
                             "run `nexus index --rebuild --embedder wordllama` to switch\n")


def test_an_unknown_embedder_is_a_config_error(tmp_path, fresh):
    nexus, _cfg = fresh
    bad = tmp_path / "bad.yaml"
    bad.write_text("embedder: nonsense\n")
    with pytest.raises(ConfigError) as err:
        Config.load(str(bad))
    assert str(err.value) == f"{bad}: embedder: unknown embedder 'nonsense': choose one of minilm, wordllama"
    with pytest.raises(ConfigError):
        nexusfs.connect(nexus.home, embedder="nonsense")
    before = index_state(nexus.home)
    result = nexus("--config", str(bad), "index", "--status", code=1)
    assert result.stderr == f"nexus: error: {bad}: embedder: unknown embedder 'nonsense': choose one of minilm, wordllama\n"
    result = nexus("index", "--rebuild", "--embedder", "nonsense", code=1)
    assert result.stderr == "nexus: error: unknown embedder 'nonsense': choose one of minilm, wordllama\n"
    assert index_state(nexus.home) == before
    # names are read as the registry reads them
    assert Config.load(None, embedder=" MiniLM ").embedder == "minilm"


def test_a_background_indexer_configured_otherwise_keeps_the_stores_model(indexed, caplog):
    nexus, _cfg = indexed
    before = index_state(nexus.home)
    with caplog.at_level("WARNING", logger="nexusfs"):
        nx = nexusfs.connect(nexus.home, embedder="minilm")  # background indexing on
        try:
            nx.write_bytes("/notes/tea.md", b"Steep the green tea leaves for two minutes in hot water.\n")
            assert nx.wait_for_index(60)
            st = nx.index_status()
            assert (st.embedder, st.files, st.docs, st.pending) == ("wordllama", 4, 4, 0)
            assert [h.path for h in nx.search("brewing a cup of tea", k=1)] == ["/notes/tea.md"]
        finally:
            nx.close()
    after = index_state(nexus.home)
    assert after[0] == before[0]
    assert set(before[1]) <= set(after[1]) and set(before[3]) <= set(after[3])  # nothing was dropped
    notes = [r.getMessage() for r in caplog.records if "this store indexes with" in r.getMessage()]
    assert notes == ["this store indexes with wordllama; run `nexus index --rebuild --embedder minilm` to switch"]


@pytest.mark.mount
def test_a_mount_configured_otherwise_serves_queries_with_the_stores_model(indexed, tmp_path):
    nexus, _cfg = indexed
    before = index_state(nexus.home)
    m = MountedStore(nexus.home, str(tmp_path / "mnt"), settings={"embedder": "minilm"},
                     allow_log=[r"WARNING nexusfs\.\S+: this store indexes with wordllama"])
    with no_writes(nexus.home), m:
        path = os.path.join(m.mountpoint, "notes", ".search", "semantic", SKY, ".results")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        assert lines and lines[0].split()[1].startswith("stars.md:"), lines
        assert sorted(os.listdir(os.path.join(m.mountpoint, "notes"))) == ["bikes.md", "bread.md", "stars.md"]
        # the mount's indexer started, found nothing to do, and reset nothing
        assert wait_until(lambda: "this store indexes with wordllama" in m.log_tail(), timeout=30)
        assert index_state(nexus.home) == before
    assert index_state(nexus.home) == before
    assert status_of(nexus)["embedder"] == "wordllama"


def test_a_store_model_missing_here_ranks_by_words_and_says_so(indexed, monkeypatch):
    from nexusfs.search import service as service_mod

    nexus, _cfg = indexed
    monkeypatch.setattr(service_mod, "load_embedder",
                        lambda name: (None, f"embedder {name!r} needs the package onnxruntime"))
    result = nexus("search", "-k", "1", "telescope galaxies")
    assert result.stdout.split()[1] == "/notes/stars.md:1-3"
    assert result.stderr == ("nexus: note: ranking by words only: embedder 'wordllama' needs the package "
                             "onnxruntime\n")
