"""``nexus glob``, ``nexus grep``, ``nexus search`` and ``nexus index``: output, exit codes, errors.

grep's output formats are compared with GNU grep's (``LC_ALL=C grep -r...I``) on the
same small tree on local disk.
"""

from __future__ import annotations

import json
import os
import re

import pytest

import nexusfs
from tests import needs
from tests.search_helpers import C_ENV, NOTES, STORE_SETTINGS, NexusCli

TREE = {
    "src/app.py": b"import os\nimport sys\n\ndef main():\n    print('TODO: hello')\n",
    "src/util.py": b"def helper():\n    return 42  # todo later\n",
    "src/empty.py": b"",
    "docs/readme.md": b"# Readme\n\nTODO write the docs\nmain entry point: app.py\n",
    "docs/notes.txt": b"nothing to see\n",
    "bin/tool.dat": b"\0\x01TODO binary\n",
    "latin.txt": "caf\xe9 TODO\n".encode("latin-1"),
}


@pytest.fixture
def tree(tmp_path):
    """(nexus runner, local copy) of TREE, the store created by the API and closed again."""
    home = str(tmp_path / "store")
    local = tmp_path / "local"
    nx = nexusfs.connect(home, **{**STORE_SETTINGS, "background_indexing": False})
    try:
        nx.write_many({f"/{p}": d for p, d in TREE.items()})
    finally:
        nx.close()
    for p, d in TREE.items():
        os.makedirs(local / os.path.dirname(p), exist_ok=True)
        (local / p).write_bytes(d)
    return NexusCli(home), str(local)


def gnu(local: str, *args: str) -> tuple[int, list[bytes], list[str]]:
    """GNU grep -r's exit status, output lines and binary files that matched (its stderr)."""
    import subprocess

    res = subprocess.run(["grep", "-r", *args], cwd=local, env=C_ENV, capture_output=True)
    lines = [ln[2:] if ln.startswith(b"./") else ln for ln in res.stdout.splitlines()]
    binary = re.findall(r"^grep: \./(.*): binary file matches$", res.stderr.decode(), re.M)
    return res.returncode, sorted(lines), sorted(binary)


def ours(result) -> list[bytes]:
    return sorted(ln[1:] if ln.startswith(b"/") else ln for ln in result.stdout_bytes.splitlines())


def ours_binary(result) -> list[str]:
    return sorted(re.findall(r"^nexus: /(.*): binary file matches$", result.stderr, re.M))


@pytest.mark.parametrize("args", [
    ("-n", "TODO"),
    ("TODO",),
    ("-i", "todo"),
    ("-in", "todo"),
    ("-l", "TODO"),
    ("-c", "TODO"),
    ("-c", "-i", "todo"),
    ("-v", "-n", "o"),
    ("-w", "-n", "main"),
    ("-F", "-n", "42  # t"),
    ("-n", "^$"),
    ("-n", "no such text"),
    ("-c", "no such text"),
    ("-l", "-v", "TODO"),
    ("binary",),
    ("-c", "binary"),
    ("-l", "binary"),
    ("-c", "-v", "zzz"),
])
def test_grep_formats_equal_gnu_grep(tree, args):
    """Output, exit status, and binary files as GNU grep -r has them: -c counts their
    matching lines, -l lists them, otherwise they get one line on stderr."""
    nexus, local = tree
    rc, theirs, binary = gnu(local, *args[:-1], "-e", args[-1], ".")
    result = nexus("grep", *args[:-1], "--", args[-1], "/", code=rc)
    assert ours(result) == theirs
    assert ours_binary(result) == binary
    assert len(result.stderr.splitlines()) == len(binary)


def test_grep_single_file_and_subdirectory(tree):
    nexus, local = tree
    # one file: no file name in front, like grep
    result = nexus("grep", "-n", "import", "/src/app.py")
    assert result.stdout == "1:import os\n2:import sys\n"
    assert nexus("grep", "-c", "import", "/src/app.py").stdout == "2\n"
    assert nexus("grep", "-c", "zzz", "/src/app.py", code=1).stdout == "0\n"
    result = nexus("grep", "-n", "TODO", "/docs")
    assert result.stdout == "/docs/readme.md:3:TODO write the docs\n"
    # lines that are not UTF-8 come out as their bytes
    assert nexus("grep", "caf", "/").stdout_bytes == "/latin.txt:caf\xe9 TODO\n".encode("latin-1")


def test_grep_errors(tree):
    nexus, _local = tree
    result = nexus("grep", "(unclosed", "/", code=2)
    assert result.stderr.startswith("nexus: error: ") and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    result = nexus("grep", "x", "/missing", code=2)
    assert result.stderr.startswith("nexus: error: /missing") and len(result.stderr.splitlines()) == 1
    assert nexus("grep", "-F", "(unclosed", "/", code=1).stdout == ""


def test_glob(tree):
    nexus, _local = tree
    assert nexus("glob", "**/*.py").stdout == "/src/app.py\n/src/empty.py\n/src/util.py\n"
    assert nexus("glob", "*.md", "/docs").stdout == "/docs/readme.md\n"
    assert nexus("glob", "*/", "/").stdout == "/bin\n/docs\n/src\n"
    assert nexus("glob", "*.nothing", code=1).stdout == ""


def test_index_commands(tree, analyse_fails):
    nexus, _local = tree
    status = nexus("index", "--status").stdout
    assert re.search(r"^queued files: +7$", status, re.M), status
    assert re.search(r"^indexed files: +0$", status, re.M)
    assert re.search(r"^distinct content: +0$", status, re.M)
    assert re.search(r"^semantic chunks: +0$", status, re.M)
    assert re.search(r"^embedder: +\S+", status, re.M)
    out = nexus("index").stdout
    assert re.fullmatch(r"indexed 7 file\(s\); 7 files, 7 distinct contents, \d+ chunks in the index\n", out), out
    status = nexus("index", "--status").stdout
    assert re.search(r"^queued files: +0$", status, re.M)
    assert re.search(r"^indexed files: +7$", status, re.M)
    assert re.search(r"^distinct content: +7 \(1 binary, 1 nonutf8, 5 text\)$", status, re.M), status
    assert "failing" not in status
    out = nexus("index", "--rebuild").stdout
    assert out.startswith("indexed 7 file(s); 7 files, 7 distinct contents"), out
    assert nexus("index").stdout.startswith("indexed 0 file(s); 7 files")
    # a failing file is reported, with its error, and keeps its job
    analyse_fails(b"helper", ValueError("cannot read this one"))
    nx = nexusfs.connect(nexus.home, background_indexing=False)
    try:
        nx.write_bytes("/src/util.py", b"def helper():\n    return 43\n")
        ino = nx.stat("/src/util.py").ino
    finally:
        nx.close()
    out = nexus("index").stdout
    assert out.rstrip().endswith("; 1 still queued"), out
    status = nexus("index", "--status").stdout
    assert re.search(r"^queued files: +1 \(1 failing\)$", status, re.M), status
    assert f"failing: inode {ino}: ValueError: cannot read this one" in status
    # the failing file is still found by grep (read directly)
    assert nexus("grep", "-n", "43", "/src").stdout == "/src/util.py:2:    return 43\n"


# ------------------------------------------------------------------ semantic
SEM_DOCS = {
    **{f"/notes/{name}": text for name, text in NOTES.items()},
    "/notes/taxes.md": "# Taxes\n\nFile the annual return before the deadline and keep receipts for deductions.\n",
}


@pytest.fixture
def semantic_home(tmp_path):
    needs.need_semantic()
    home = str(tmp_path / "sem")
    nx = nexusfs.connect(home, **{**STORE_SETTINGS, "semantic": True, "background_indexing": False})
    try:
        nx.write_many({p: t.encode() for p, t in SEM_DOCS.items()})
    finally:
        nx.close()
    return NexusCli(home)


HIT = re.compile(r"^(\d\.\d{3}) (/\S+):(\d+)-(\d+)  (.+)$")


def test_search_output(semantic_home):
    nexus = semantic_home
    # nothing indexed yet: no results, a note on stderr, exit 1
    result = nexus("search", "looking at the night sky", code=1)
    assert result.stdout == ""
    assert "4 file(s) are not indexed yet" in result.stderr
    nexus("index")
    status = nexus("index", "--status").stdout
    assert re.search(r"^semantic chunks: +[1-9]\d*$", status, re.M), f"semantic indexing made nothing:\n{status}"
    result = nexus("search", "looking at the night sky through a lens")
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert 1 <= len(lines) <= 10
    m = HIT.match(lines[0])
    assert m, lines[0]
    assert m.group(2) == "/notes/stars.md"
    assert m.group(5) == "A telescope on a dark night shows nebulae, clusters and distant galaxies."
    assert int(m.group(3)) <= 3 <= int(m.group(4))
    scores = [float(HIT.match(ln).group(1)) for ln in lines]
    assert scores == sorted(scores, reverse=True)
    # -k
    assert len(nexus("search", "-k", "1", "repairing a bike").stdout.splitlines()) == 1
    assert HIT.match(nexus("search", "-k", "1", "repairing a bike").stdout).group(2) == "/notes/bikes.md"
    # --json
    out = nexus("search", "--json", "-k", "2", "money owed to the government").stdout.splitlines()
    assert len(out) == 2
    rows = [json.loads(x) for x in out]
    assert set(rows[0]) == {"score", "path", "start_line", "end_line", "snippet", "paths"}
    assert rows[0]["path"] == "/notes/taxes.md"
    # scoped to a directory
    assert nexus("search", "bread", "/notes").stdout.startswith(
        nexus("search", "-k", "1", "bread").stdout.split(" ")[0])
    nexus("search", "bread", "/missing", code=1)
    # a new file, not indexed yet: results plus a note
    nx = nexusfs.connect(nexus.home, background_indexing=False)
    try:
        nx.write_bytes("/notes/new.md", b"fresh text about baking bread\n")
    finally:
        nx.close()
    result = nexus("search", "bread")
    assert result.stdout and "1 file(s) are not indexed yet" in result.stderr
