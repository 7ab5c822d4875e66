"""What semantic results hold: one hit per distinct content (listing every path that has
it), no version-control internals, no chunks of degenerate text, and one snippet whatever
the output format."""

from __future__ import annotations

import json
import re

import pytest

import nexusfs
from tests.search_helpers import STORE_SETTINGS, NexusCli, indexed_semantic_store, semantic_stack  # noqa: F401  (autouse: every test here needs the semantic stack)

EMAIL = b"Subject: quarterly budget meeting\n\nHi team,\nthe budget review moves to Thursday.\n"
OTHER = {
    "/mail/party.txt": b"Subject: summer party\n\nBring a salad and something to drink.\n",
    "/mail/budget-notes.md": b"# Budget\n\nThe budget for next year grows by four percent.\n",
}


def chunks_of(nx: nexusfs.Nexus, path: str) -> int:
    """search_docs.chunks of a file's content (-1: never cut into chunks)."""
    ino = nx.stat(path).ino
    return nx.meta.db.query_value(
        "SELECT d.chunks FROM search_docs d JOIN search_files f ON f.doc = d.id WHERE f.inode = ?", (ino,))


# ----------------------------------------------------------------- copies
def test_identical_copies_are_one_hit_listing_their_paths(tmp_path):
    files = {"/mail/email": EMAIL, "/mail/old/email.copy": EMAIL, "/archive/email": EMAIL, **OTHER}
    with indexed_semantic_store(str(tmp_path / "s"), files) as nx:
        nx.link("/mail/email", "/mail/email.link")
        hits = nx.search("budget meeting moved to Thursday", k=3)
        assert [h.path for h in hits][:1] == ["/archive/email"]
        assert hits[0].paths == ("/archive/email", "/mail/email", "/mail/email.link", "/mail/old/email.copy")
        assert len({h.paths for h in hits}) == 3 and len(hits) == 3  # three distinct contents
        assert all(h.paths[0] == h.path for h in hits)
        assert str(hits[0]).startswith(f"{hits[0].score:.3f} /archive/email:1-4 (also /mail/email, ")
        # a scope lists the paths inside it only
        scoped = nx.search("budget meeting moved to Thursday", "/mail", k=1)
        assert scoped[0].paths == ("/mail/email", "/mail/email.link", "/mail/old/email.copy")
        nexus = NexusCli(nx.store.config.home)
        nx.close()
        text = nexus("search", "-k", "1", "budget meeting moved to Thursday").stdout
        assert re.fullmatch(r"\d\.\d{3} /archive/email:1-4 \(also /mail/email, /mail/email\.link, "
                            r"/mail/old/email\.copy\)  the budget review moves to Thursday\.\n", text), text
        row = json.loads(nexus("search", "--json", "-k", "1", "budget meeting moved to Thursday").stdout)
        assert row["path"] == "/archive/email"
        assert row["paths"] == ["/archive/email", "/mail/email", "/mail/email.link", "/mail/old/email.copy"]


# ------------------------------------------------------------ VCS internals
REPO = {
    "/repo/budget.md": b"# Budget numbers\n\nFix the budget numbers before the review.\n",
    "/repo/.git/COMMIT_EDITMSG": b"fix the budget numbers for the review\n",
    "/repo/.git/hooks/pre-commit.sample": b"#!/bin/sh\n# An example hook script to check the budget numbers\n",
    "/repo/.git/packed-refs": b"# pack-refs with: peeled fully-peeled sorted\nbudget numbers refs/heads/main\n",
    "/repo/lib/.hg/last-message.txt": b"budget numbers review\n",
    "/repo/deep/er/.svn/entries": b"budget numbers review entries\n",
}


def test_vcs_internals_are_neither_indexed_nor_shown_but_grep_finds_them(tmp_path):
    with indexed_semantic_store(str(tmp_path / "s"), REPO) as nx:
        paths = [p for h in nx.search("fix the budget numbers", k=10) for p in h.paths]
        assert paths == ["/repo/budget.md"]
        for p in REPO:
            if p != "/repo/budget.md":
                assert chunks_of(nx, p) == -1, p  # read for grep, never cut into chunks or embedded
        found = sorted({m.path for m in nx.grep("budget numbers")})
        assert found == sorted(REPO)


def test_a_copy_outside_vcs_dirs_gets_the_chunks_its_vcs_twin_never_had(tmp_path):
    """Subversion keeps a pristine copy of every working file: when the copy is indexed
    first, the working file must still be cut into chunks and found."""
    pristine = "/wc/.svn/pristine/3f/3f2a.svn-base"
    with indexed_semantic_store(str(tmp_path / "s"), {pristine: EMAIL, **OTHER}) as nx:
        assert chunks_of(nx, pristine) == -1
        nx.write_bytes("/wc/email.txt", EMAIL)
        nx.reindex()
        assert chunks_of(nx, "/wc/email.txt") > 0
        hits = nx.search("budget meeting moved to Thursday", k=1)
        assert hits[0].paths == ("/wc/email.txt",)


def test_skipped_directories_are_configurable(tmp_path):
    with indexed_semantic_store(str(tmp_path / "s"), REPO, semantic_skip_dirs=[]) as nx:
        paths = {p for h in nx.search("fix the budget numbers", k=10) for p in h.paths}
        assert "/repo/.git/COMMIT_EDITMSG" in paths and "/repo/budget.md" in paths
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("semantic_skip_dirs: [.git, node_modules]\n")
    assert nexusfs.Config.load(str(cfg)).semantic_skip_dirs == (".git", "node_modules")
    cfg.write_text("semantic_skip_dirs: a/b\n")
    with pytest.raises(nexusfs.ConfigError, match="'a/b' is not a directory name"):
        nexusfs.Config.load(str(cfg))


# ------------------------------------------------------------ degenerate text
def test_degenerate_text_is_not_cut_into_thousands_of_chunks(tmp_path):
    text = b"# Sourdough\n\nFeed the starter with flour and water every day.\n"
    files = {
        "/big.txt": b"a" * (8 << 20),
        "/ruled.md": text + (b"=" * 79 + b"\n") * 300 + b"\nBake at a high temperature with steam.\n",
        "/repeated.log": b"connection reset by peer, retrying in 5 seconds\n" * 4000,
    }
    with indexed_semantic_store(str(tmp_path / "s"), files) as nx:
        assert chunks_of(nx, "/big.txt") == 0
        assert 1 <= chunks_of(nx, "/ruled.md") <= 3
        assert 1 <= chunks_of(nx, "/repeated.log") <= 2  # identical pieces are indexed once
        assert nx.search("feeding a sourdough starter", k=1)[0].path == "/ruled.md"
        assert [m.path for m in nx.grep("aaaa", "/")] == ["/big.txt"]  # grep still reads it


# ------------------------------------------------------------ snippets
def test_the_snippet_is_one_clean_line_in_every_format(tmp_path):
    files = {"/term.txt": b"x\x1b[31mred budget\x1b[0m review\tmoves to\x0bThursday\r\n"}
    with indexed_semantic_store(str(tmp_path / "s"), files) as nx:
        hit = nx.search("budget review", k=1)[0]
        assert hit.snippet == "xred budget review moves to Thursday"
        nexus = NexusCli(nx.store.config.home)
        nx.close()
        text = nexus("search", "-k", "1", "budget review").stdout
        row = json.loads(nexus("search", "--json", "-k", "1", "budget review").stdout)
        assert text.split("  ", 1)[1] == row["snippet"] + "\n"
        assert row["snippet"] == "xred budget review moves to Thursday"


def test_settings_reach_the_store(tmp_path):
    nx = nexusfs.connect(str(tmp_path / "s"), **{**STORE_SETTINGS, "semantic_skip_dirs": ".git, .bzr"})
    try:
        assert nx.store.searcher.skip_dirs == frozenset({".git", ".bzr"})
    finally:
        nx.close()


# ------------------------------------------------------------ the mount
@pytest.mark.mount
def test_the_mounts_results_list_one_line_per_distinct_content(mnt):
    import os
    import time

    from tests.mount_helpers import as_user
    from tests.mountutil import wait_until

    base = mnt.path("m")
    for rel, data, mode in (("email", EMAIL, 0o600), ("old/email.copy", EMAIL, 0o644),
                            ("party.txt", OTHER["/mail/party.txt"], 0o644)):
        os.makedirs(os.path.dirname(os.path.join(base, rel)), mode=0o755, exist_ok=True)
        with open(os.path.join(base, rel), "wb") as f:
            f.write(data)
        os.chmod(os.path.join(base, rel), mode)
    os.chmod(base, 0o755)
    query = "budget meeting moved to Thursday"

    def results(q: str, where: str = base) -> str:
        with open(os.path.join(where, ".search", "semantic", q, ".results"), encoding="utf-8") as f:
            return f.read()

    # a new query name each time: results of an earlier lookup are kept for a moment
    assert wait_until(lambda: not results(query + " " * int(time.monotonic() * 10 % 7)).startswith("#"),
                      timeout=60, interval=0.3), mnt.log_tail()
    lines = results(query).splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\d\.\d{3} email:1-4 \(also old/email\.copy\)  the budget review moves to Thursday\.",
                        lines[0]), lines
    # a caller who may not read `email` sees the copy, alone (a query name root never used)
    theirs = as_user(results, query + "?", ".", cwd=base).splitlines()
    assert re.fullmatch(r"\d\.\d{3} old/email\.copy:1-4  the budget review moves to Thursday\.", theirs[0]), theirs
    assert len(theirs) == 2
