"""CLI commands that change content leave the search index current: they index what they
wrote before returning (``--no-index`` skips it), or leave it to a running mount."""

from __future__ import annotations

import re

import pytest

import nexusfs
from nexusfs.search.indexer import Indexer
from tests.mountutil import wait_until
from tests.search_helpers import NOTES, STORE_SETTINGS, NexusCli, semantic_stack  # noqa: F401  (autouse: every test here needs the semantic stack)

FILES = {"bread.md": NOTES["bread.md"], "bikes.md": NOTES["bikes.md"],
         "sub/stars.md": NOTES["stars.md"], "sub/stars-copy.md": NOTES["stars.md"]}


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "local"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def nexus(tmp_path):
    home = str(tmp_path / "store")
    nexusfs.connect(home, **{**STORE_SETTINGS, "semantic": True}).close()
    return NexusCli(home)


def queued(nexus: NexusCli) -> int:
    return int(re.search(r"^queued files: +(\d+)", nexus("index", "--status").stdout, re.M).group(1))


def first_hit(nexus: NexusCli, query: str) -> str:
    result = nexus("search", "-k", "1", query)
    assert result.stderr == ""  # no 'not indexed yet' note
    return result.stdout.split()[1]


def test_put_indexes_what_it_wrote(nexus, local):
    nexus("put", str(local), "/p")
    assert queued(nexus) == 0
    assert first_hit(nexus, "looking at the night sky through a lens").startswith("/p/sub/stars")
    assert first_hit(nexus, "repairing a bike") == "/p/bikes.md:1-3"
    # one file, and a file replaced: the same
    (local / "tea.md").write_text("Steep the green tea leaves for two minutes in hot water.\n")
    nexus("put", str(local / "tea.md"), "/p/bread.md")
    assert queued(nexus) == 0
    assert first_hit(nexus, "brewing a cup of tea") == "/p/bread.md:1-1"


def test_write_cp_and_import_index_what_they_wrote(nexus, tmp_path):
    nexus("write", "/w.md", input=b"Oil the hinges of the squeaky garden gate.\n")
    assert queued(nexus) == 0
    assert first_hit(nexus, "squeaky gate") == "/w.md:1-1"
    nexus("cp", "/w.md", "/gate.md")
    assert queued(nexus) == 0
    export = tmp_path / "tree.jsonl"
    nexus("export", "--with-data", "-o", str(export), "/")
    nexus("import", "--under", "/imported", str(export))
    assert queued(nexus) == 0
    st = nexus("index", "--status").stdout
    assert re.search(r"^indexed files: +4$", st, re.M), st


def test_no_index_leaves_the_work_queued(nexus, local):
    nexus("put", "--no-index", str(local), "/p")
    assert queued(nexus) == 4
    result = nexus("search", "bread", code=1)
    assert "4 file(s) are not indexed yet" in result.stderr
    nexus("index")
    assert queued(nexus) == 0


def test_a_command_indexes_only_what_it_queued(nexus, local):
    """An older backlog (files written by a program without an indexer) stays for `nexus
    index` or a mount: a one-file put must not turn into hours of indexing."""
    nx = nexusfs.connect(nexus.home, background_indexing=False)
    try:
        nx.write_bytes("/backlog.md", b"Water the tomatoes every morning in summer.\n")
    finally:
        nx.close()
    nexus("put", str(local / "bread.md"), "/bread.md")
    assert queued(nexus) == 1
    result = nexus("search", "-k", "1", "baking a loaf of bread")
    assert result.stdout.split()[1] == "/bread.md:1-3"
    assert "1 file(s) are not indexed yet" in result.stderr


def test_read_only_commands_do_not_index(nexus, local):
    nexus("put", "--no-index", str(local), "/p")
    for args in (("ls", "-R", "/"), ("cat", "/p/bread.md"), ("grep", "dough", "/"), ("stat", "/p/bikes.md")):
        nexus(*args)
    assert queued(nexus) == 4


@pytest.mark.mount
def test_with_a_mount_running_the_mount_indexes(mnt, local, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the CLI indexed while a mount of the store runs")

    monkeypatch.setattr(Indexer, "run_until_idle", refuse)
    nexus = NexusCli(mnt.home)
    nexus("put", str(local), "/p")
    assert wait_until(lambda: queued(nexus) == 0, timeout=60, interval=0.2), mnt.log_tail()
    assert first_hit(nexus, "repairing a bike") == "/p/bikes.md:1-3"
