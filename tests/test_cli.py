"""The ``nexus`` command line: every command, its output, its exit status and its error lines."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from importlib.metadata import EntryPoint

import click
import pytest
from click.testing import CliRunner

import nexusfs
from nexusfs import cli as cli_mod
from nexusfs.cli import cli
from tests.mount_helpers import diff_snapshots, snapshot
from tests.oracles import nexus_bin
from tests.search_helpers import NexusCli

BS = 64 * 1024


@pytest.fixture
def home(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def nexus(home) -> NexusCli:
    run = NexusCli(home)
    run("init", "--block-size", "64KiB", "--inline-max", "1KiB")
    return run


@pytest.fixture(autouse=True)
def _fresh_plugins():
    cli._loaded.clear()
    yield
    cli._loaded.clear()


def connect(home: str) -> nexusfs.Nexus:
    return nexusfs.connect(home, create=False)


# ------------------------------------------------------------------ help/init
def test_help_lists_every_command(home):
    run = NexusCli(home)
    out = run("--help").stdout
    for name in ("init", "info", "ls", "cat", "put", "get", "write", "rm", "mkdir", "mv", "cp", "stat",
                 "glob", "grep", "fsck", "gc", "export", "import"):
        assert re.search(rf"^  {name}\b", out, re.M), name
        sub = run(name, "--help").stdout
        assert sub.startswith(f"Usage: nexus {name}")
    assert not os.path.exists(home)  # --help opens nothing


def test_init_creates_once(home):
    run = NexusCli(home)
    out = run("init", "--block-size", "128KiB", "--inline-max", "2KiB", "--compression", "none").stdout
    assert f"created a nexusfs store in {home}" in out
    assert "block size 128.0 KiB" in out
    for same in ([], ["--block-size", "128KiB"], ["--compression", "none", "--inline-max", "2048"]):
        again = run("init", *same).stdout
        assert "already exists" in again and "nothing changed" in again
    with connect(home) as nx:
        assert nx.meta.block_size == 128 * 1024
        assert nx.meta.inline_max == 2048
        assert nx.meta.settings["compression"] == "none"


def test_init_with_other_options_on_an_existing_store_says_which_differ(home):
    run = NexusCli(home)
    run("init", "--block-size", "128KiB", "--compression", "none")
    line = run.error("init", "--block-size", "1MiB", "--compression", "zstd", "--inline-max", "8KiB")
    assert line == (f"nexus: error: a store already exists in {home} with other settings: "
                    "block size 128.0 KiB (not 1.0 MiB), compression none (not zstd); "
                    "they are fixed when a store is created (nothing changed)")
    with connect(home) as nx:
        assert nx.meta.block_size == 128 * 1024


def test_init_uses_nexus_home_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXUS_HOME", str(tmp_path / "from-env"))
    run = NexusCli("unused")
    assert str(tmp_path / "from-env") in run("init", home=False).stdout
    assert os.path.exists(tmp_path / "from-env" / "meta.db")
    run("ls", home=False)


def test_init_rejects_bad_settings(home):
    line = NexusCli(home).error("init", "--block-size", "3000")
    assert "block_size must be a power of two" in line
    assert "twelve" in NexusCli(home).error("init", "--block-size", "twelve")


MISSING = ("no nexusfs store at {} (commands that write to a store create it: "
           "`nexus init`, put, write, mkdir, import, mount)")


@pytest.mark.parametrize("args", [
    ["info"], ["ls"], ["cat", "/x"], ["stat", "/"], ["fsck"], ["gc"], ["export"], ["rm", "/x"],
    ["mv", "/x", "/y"], ["cp", "/x", "/y"], ["get", "/x", "-"], ["search", "x"],
    ["index", "--status"],
])
def test_commands_that_only_read_refuse_a_missing_store_and_create_nothing(home, args):
    line = NexusCli(home).error(*args, input=b"")
    assert line == "nexus: error: " + MISSING.format(home)
    assert not os.path.exists(home)


@pytest.mark.parametrize("args", [["grep", "x"], ["glob", "*"]])
def test_grep_and_glob_on_missing_store_exit_2(home, args):
    assert NexusCli(home).error(*args, code=2) == "nexus: error: " + MISSING.format(home)
    assert not os.path.exists(home)


@pytest.mark.parametrize("args, stdin", [
    (["put", "/etc/hostname", "/x"], None), (["write", "/x"], b"data"), (["mkdir", "/x"], None),
    (["import"], "export"),
])
def test_commands_that_write_create_the_store_and_say_so(home, tmp_path, args, stdin):
    if stdin == "export":
        source = NexusCli(str(tmp_path / "source"))
        source("mkdir", "/from-source")
        stdin = source("export").stdout_bytes
    res = NexusCli(home)(*args, input=stdin)
    assert res.stderr == f"nexus: note: created a new store in {home}\n"
    assert os.path.exists(os.path.join(home, "meta.db"))
    res = NexusCli(home)("write", "/again", input=b"x")
    assert res.stderr == ""  # only the first use creates


def test_put_into_the_default_store_just_works(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXUS_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    run = NexusCli("unused")
    local = tmp_path / "hello.txt"
    local.write_bytes(b"hello\n")
    run("put", str(local), "/hello.txt", home=False)
    assert run("cat", "/hello.txt", home=False).stdout == "hello\n"
    assert os.path.exists(tmp_path / "xdg" / "nexus" / "meta.db")


@pytest.mark.parametrize("args", [["init"], ["ls"], ["put", "/etc/hostname", "/x"], ["info"]])
def test_nexus_home_naming_a_file_is_one_sentence(tmp_path, monkeypatch, args):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    monkeypatch.setenv("NEXUS_HOME", str(a_file))
    line = NexusCli("unused").error(*args, home=False)
    assert line == (f"nexus: error: cannot use {a_file} as the store directory (set by NEXUS_HOME): "
                    "it is a file")
    monkeypatch.delenv("NEXUS_HOME")
    assert NexusCli(str(a_file)).error(*args) == (
        f"nexus: error: cannot use {a_file} as the store directory: it is a file")
    assert a_file.read_text() == "x"


# ----------------------------------------------------------------- info
def test_info_text_and_json(nexus, home):
    # compressible, and no two 64 KiB blocks alike (so only the copy deduplicates)
    payload = b"".join(b"%06d" % i + b"abc" * 30 for i in range(3200))[:300000]
    nexus("write", "/a", input=payload)
    nexus("cp", "/a", "/b")
    nexus("mkdir", "/d")
    nexus("write", "/d/small", input=b"tiny")
    text = nexus("info").stdout
    assert re.search(r"^block size:\s+64\.0 KiB$", text, re.M)
    assert re.search(r"^files:\s+3$", text, re.M)
    assert re.search(r"^directories:\s+2$", text, re.M)
    assert re.search(r"^dedup ratio:\s+2\.00x$", text, re.M)  # /b shares /a's blocks
    assert re.search(r"^compression ratio:\s+\d+\.\d\dx$", text, re.M)
    assert "KiB" in re.search(r"^logical size:.*$", text, re.M).group(0)
    data = json.loads(nexus("info", "--json").stdout)
    assert data["files"] == 3 and data["directories"] == 2 and data["symlinks"] == 0
    assert data["logical_bytes"] == 2 * 300000 + 4
    assert data["block_size"] == BS
    assert data["dedup_ratio"] == 2.0
    assert data["compression_ratio"] > 10


# ------------------------------------------------------------- write / cat
def test_write_and_cat_stream_stdin(nexus):
    payload = os.urandom(5 * BS + 123)
    nexus("write", "/blob", input=payload)
    assert nexus("cat", "/blob").stdout_bytes == payload
    nexus("write", "--append", "/blob", input=b"more")
    assert nexus("cat", "/blob").stdout_bytes == payload + b"more"
    nexus("write", "/blob", input=b"replaced")
    nexus("write", "/two", input=b"second\n")
    assert nexus("cat", "/blob", "/two").stdout_bytes == b"replacedsecond\n"
    nexus("write", "-p", "/new/dirs/f", input=b"deep")
    assert nexus("cat", "/new/dirs/f").stdout_bytes == b"deep"


def test_write_needs_the_parent(nexus):
    assert "No such file or directory" in nexus.error("write", "/no/such/f", input=b"x")


def test_cat_reports_each_bad_path_and_goes_on(nexus):
    nexus("write", "/ok", input=b"fine\n")
    nexus("mkdir", "/dir")
    result = nexus("cat", "/missing", "/ok", "/dir", code=1)
    assert result.stdout_bytes == b"fine\n"
    assert result.stderr.splitlines() == [
        "nexus: error: /missing: No such file or directory",
        "nexus: error: /dir: Is a directory",
    ]


# ---------------------------------------------------------------------- ls
def test_ls_short_long_recursive(nexus, home):
    nexus("mkdir", "-p", "/top/sub")
    nexus("write", "/top/b.txt", input=b"12345")
    nexus("write", "/top/a.txt", input=b"")
    nexus("write", "/top/.hidden", input=b"")
    nexus("write", "/top/sub/deep", input=b"x")
    with connect(home) as nx:
        nx.symlink("a.txt", "/top/link")
        nx.chmod("/top/b.txt", 0o640)
        nx.utime("/top/b.txt", (0, 1_000_000_000 * 86400 * 365 * 30))
    assert nexus("ls", "/top").stdout.splitlines() == ["a.txt", "b.txt", "link", "sub"]
    assert ".hidden" in nexus("ls", "-a", "/top").stdout.splitlines()
    long = nexus("ls", "-l", "/top").stdout.splitlines()
    uid, gid = cli_mod.owner_name(os.getuid()), cli_mod.owner_name(os.getgid(), group=True)
    assert re.fullmatch(rf"-rw-r-----\s+1 {uid}\s+{gid}\s+5 1999-12-\d\d \d\d:\d\d b\.txt", long[1]) or \
        re.fullmatch(rf"-rw-r-----\s+1 {uid}\s+{gid}\s+5 2000-01-0\d \d\d:\d\d b\.txt", long[1])
    assert re.fullmatch(r"lrwxrwxrwx\s+1 .* link -> a\.txt", long[2])
    assert re.fullmatch(r"drwxr-xr-x\s+2 .* sub", long[3])
    rec = nexus("ls", "-R", "/top").stdout
    assert rec == "/top:\na.txt\nb.txt\nlink\nsub\n\n/top/sub:\ndeep\n"
    assert nexus("ls", "/top/b.txt").stdout == "/top/b.txt\n"
    assert nexus("ls", "/top/link").stdout == "/top/link\n"
    assert nexus("ls", "/").stdout.splitlines() == ["top"]


def test_ls_errors_are_one_line(nexus):
    nexus("write", "/file", input=b"x")
    assert nexus.error("ls", "/nope") == "nexus: error: /nope: No such file or directory"
    assert nexus.error("ls", "/file/x") == "nexus: error: /file/x: Not a directory"


def test_ls_special_files_and_odd_names(nexus, home):
    with connect(home) as nx:
        nx.vfs.create_node(1, b"null", stat.S_IFCHR | 0o666, 0, 0, rdev=os.makedev(1, 3))
        nx.vfs.create_node(1, b"pipe", stat.S_IFIFO | 0o600, 0, 0)
        nx.write_bytes(b"/caf\xe9", b"")
    lines = nexus("ls", "-l", "/").stdout_bytes.splitlines()
    assert any(re.match(rb"crw-rw-rw-\s+1 .* 1, 3 .* null$", ln) for ln in lines)
    assert any(re.match(rb"prw-------\s+1 .* pipe$", ln) for ln in lines)
    assert b"caf\xe9" in nexus("ls", "/").stdout_bytes.splitlines()  # raw bytes, like ls


def test_ls_long_shows_owner_and_group_names(nexus, home):
    import grp
    import pwd

    nexus("write", "/rootfile", input=b"x")
    nexus("write", "/nobodys", input=b"x")
    nexus("write", "/nameless", input=b"x")
    nobody = pwd.getpwnam("nobody")
    unused = _unnamed_id()
    with connect(home) as nx:
        nx.chown("/rootfile", 0, 0)
        nx.chown("/nobodys", nobody.pw_uid, nobody.pw_gid)
        nx.chown("/nameless", unused, unused)
    lines = {ln.rsplit(" ", 1)[1]: ln.split() for ln in nexus("ls", "-l", "/").stdout.splitlines()}
    assert lines["rootfile"][2:4] == [pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name]
    assert lines["nobodys"][2:4] == ["nobody", grp.getgrgid(nobody.pw_gid).gr_name]
    assert lines["nameless"][2:4] == [str(unused), str(unused)]  # no name: the number, as ls does


def _unnamed_id() -> int:
    """A number that is neither a user's nor a group's id."""
    import grp
    import pwd

    for i in range(54321, 60000):
        for lookup in (pwd.getpwuid, grp.getgrgid):
            try:
                lookup(i)
                break
            except KeyError:
                pass
        else:
            return i
    raise AssertionError("no unused id")


@pytest.mark.parametrize(("args", "line"), [
    (["cat", "/dir/file/"], "/dir/file/: Not a directory"),
    (["ls", "/dir/file/.."], "/dir/file/..: Not a directory"),
    (["ls", "/dir/file/"], "/dir/file/: Not a directory"),
    (["stat", ""], "'': No such file or directory"),
    (["stat", "/dir/nope/.."], "/dir/nope/..: No such file or directory"),
    (["get", "/dir/file/", "-"], "/dir/file/: Not a directory"),
    (["rm", "/dir/file/"], "/dir/file/: Not a directory"),
])
def test_paths_resolve_like_the_kernel(nexus, args, line):
    nexus("mkdir", "/dir")
    nexus("write", "/dir/file", input=b"x")
    assert nexus.error(*args) == f"nexus: error: {line}"


def test_ls_of_dot_dot_after_a_symlink_lists_the_targets_parent(nexus, home):
    nexus("mkdir", "-p", "/a/b/c")
    nexus("write", "/a/b/inner", input=b"")
    with connect(home) as nx:
        nx.symlink("a/b/c", "/link")
    assert nexus("ls", "/link/..").stdout.splitlines() == ["c", "inner"]  # as ls does: /a/b, not /


# ----------------------------------------------------------------- put/get
def make_put_tree(root: str) -> None:
    """A small tree whose every name, mode, link and time the put/get tests assert on
    (tests/test_mount_tools.make_tree makes random trees for tools instead)."""
    os.makedirs(os.path.join(root, "sub", "deeper"))
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(os.urandom(3 * BS + 77))
    with open(os.path.join(root, "sub", "script.sh"), "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(root, "sub", "script.sh"), 0o751)
    with open(os.path.join(root, "sub", "deeper", "secret"), "w") as f:
        f.write("private")
    os.chmod(os.path.join(root, "sub", "deeper", "secret"), 0o600)
    open(os.path.join(root, "empty"), "w").close()
    os.makedirs(os.path.join(root, "emptydir"))
    os.chmod(os.path.join(root, "emptydir"), 0o700)
    os.symlink("sub/script.sh", os.path.join(root, "link"))
    os.symlink("/does/not/exist", os.path.join(root, "dangling"))
    os.link(os.path.join(root, "big.bin"), os.path.join(root, "sub", "hardlink"))
    for k, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root))):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.utime(p, ns=(1_600_000_000_000_000_123 + k, 1_500_000_000_000_000_456 + k))
    os.utime(root, ns=(1_600_000_000_000_000_999, 1_500_000_000_000_000_999))


def test_put_and_get_a_tree_round_trip(nexus, home, tmp_path):
    src = str(tmp_path / "src")
    make_put_tree(src)
    result = nexus("put", src, "/dest")
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    with connect(home) as nx:
        assert nx.read_bytes("/dest/sub/script.sh") == b"#!/bin/sh\necho hi\n"
        assert stat.S_IMODE(nx.stat("/dest/sub/script.sh").mode) == 0o751
        assert nx.readlink("/dest/link") == "sub/script.sh"
        assert nx.readlink("/dest/dangling") == "/does/not/exist"
        assert nx.stat("/dest/big.bin").nlink == 2
        assert nx.stat("/dest/big.bin").ino == nx.stat("/dest/sub/hardlink").ino
        assert nx.stat("/dest/big.bin").mtime_ns == os.stat(os.path.join(src, "big.bin")).st_mtime_ns
        assert nx.stat("/dest").mtime_ns == 1_500_000_000_000_000_999
        assert stat.S_IMODE(nx.stat("/dest/emptydir").mode) == 0o700
    out = str(tmp_path / "out")
    nexus("get", "/dest", out)
    assert diff_snapshots(snapshot(out, mtimes=True, dir_mtimes=True), snapshot(src, mtimes=True, dir_mtimes=True)) == []
    assert os.stat(out).st_mtime_ns == 1_500_000_000_000_000_999
    # into an existing directory: like cp, the tree goes inside it
    nexus("mkdir", "/into")
    nexus("put", src, "/into")
    with connect(home) as nx:
        assert nx.read_bytes("/into/src/sub/deeper/secret") == b"private"
    os.makedirs(tmp_path / "existing")
    nexus("get", "/into/src", str(tmp_path / "existing"))
    assert diff_snapshots(snapshot(str(tmp_path / "existing" / "src"), mtimes=True, dir_mtimes=True),
                          snapshot(src, mtimes=True, dir_mtimes=True)) == []


def test_put_and_get_single_files(nexus, tmp_path):
    local = tmp_path / "one.txt"
    local.write_bytes(b"one file\n")
    os.chmod(local, 0o604)
    nexus("put", str(local), "/a/b/renamed.txt")  # parents are created
    nexus("mkdir", "/box")
    nexus("put", str(local), "/box")
    assert nexus("cat", "/box/one.txt").stdout_bytes == b"one file\n"
    nexus("get", "/a/b/renamed.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_bytes() == b"one file\n"
    assert stat.S_IMODE(os.stat(tmp_path / "back.txt").st_mode) == 0o604
    nexus("get", "/box/one.txt", str(tmp_path))
    assert nexus("get", "/box/one.txt", "-").stdout_bytes == b"one file\n"


def test_put_get_errors(nexus, tmp_path):
    nexus("write", "/file", input=b"x")
    missing = str(tmp_path / "missing")
    assert nexus.error("put", missing, "/x") == f"nexus: error: {missing}: No such file or directory"
    local = tmp_path / "f"
    local.write_bytes(b"data")
    assert "/file" in nexus.error("put", str(local), "/file/sub/f")
    assert nexus.error("get", "/nope", str(tmp_path / "n")) == "nexus: error: /nope: No such file or directory"
    assert "No such file or directory" in nexus.error("get", "/file", str(tmp_path / "no" / "dir" / "f"))
    assert "is a directory" in nexus.error("get", "/", "-")


# -------------------------------------------------------------- namespace
def test_rm_mkdir_mv_cp(nexus, home):
    nexus("mkdir", "/a")
    assert "File exists" in nexus.error("mkdir", "/a")
    nexus("mkdir", "-p", "/a/b/c", "/x/y")
    nexus("mkdir", "-m", "700", "/private")
    nexus("write", "/a/b/c/f", input=b"content" * 20000)
    assert "Is a directory" in nexus.error("rm", "/a")
    assert "No such file or directory" in nexus.error("rm", "/ghost")
    nexus("rm", "-f", "/ghost")
    assert "refusing to remove '/'" in nexus.error("rm", "-r", "/")
    nexus("cp", "/a/b/c/f", "/copy")
    assert "is a directory (use -r)" in nexus.error("cp", "/a", "/a2")
    nexus("cp", "-r", "/a", "/a2")
    nexus("mkdir", "/into")
    nexus("cp", "-r", "/a", "/into")
    nexus("mv", "/copy", "/x/y")
    nexus("mv", "/a2", "/renamed")
    nexus("rm", "/x/y/copy")
    nexus("rm", "-r", "/a")
    assert "No such file or directory" in nexus.error("mv", "/nope", "/x")
    with connect(home) as nx:
        assert sorted(nx.listdir("/")) == ["into", "private", "renamed", "x"]
        assert nx.read_bytes("/renamed/b/c/f") == b"content" * 20000
        assert nx.read_bytes("/into/a/b/c/f") == b"content" * 20000
        assert stat.S_IMODE(nx.stat("/private").mode) == 0o700 & ~nx.umask
        a = nx.meta.block_map(nx.stat("/renamed/b/c/f").ino)
        b = nx.meta.block_map(nx.stat("/into/a/b/c/f").ino)
        assert a and {i: r.id for i, r in a.items()} == {i: r.id for i, r in b.items()}  # cp shares blocks
        assert nx.listdir("/x/y") == []


def test_stat(nexus, home):
    nexus("write", "/f", input=b"hello")
    with connect(home) as nx:
        nx.utime("/f", (1_234_567_890_123_456_789, 987_654_321_000_000_001))
        nx.setxattr("/f", "user.tag", b"v")
        nx.symlink("f", "/l")
    text = nexus("stat", "/f").stdout
    assert re.search(r"^type:\s+file$", text, re.M)
    assert re.search(r"^size:\s+5$", text, re.M)
    assert re.search(r"^mode:\s+0644 \(-rw-r--r--\)$", text, re.M)
    assert re.search(r"^atime:\s+1234567890123456789 \(2009-02-1\d \d\d:\d\d:\d\d\.123456789\)$", text, re.M)
    assert re.search(r"^mtime:\s+987654321000000001 ", text, re.M)
    assert re.search(r"^xattrs:\s+user\.tag$", text, re.M)
    link = json.loads(nexus("stat", "--json", "/l").stdout)
    assert link["type"] == "symlink" and link["target"] == "f"
    followed = json.loads(nexus("stat", "-L", "--json", "/l").stdout)
    assert followed["type"] == "file" and followed["mtime_ns"] == 987_654_321_000_000_001
    assert followed["xattrs"] == ["user.tag"]
    assert nexus.error("stat", "/missing") == "nexus: error: /missing: No such file or directory"


# ----------------------------------------------------------------- search
def test_glob(nexus):
    for p in ("/src/a.py", "/src/pkg/b.py", "/src/c.txt", "/d.py"):
        nexus("write", "-p", p, input=b"")
    assert nexus("glob", "**/*.py").stdout.splitlines() == ["/d.py", "/src/a.py", "/src/pkg/b.py"]
    assert nexus("glob", "*.py", "/src").stdout.splitlines() == ["/src/a.py"]
    assert nexus("glob", "*.rs", code=1).stdout == ""


def test_grep_output_and_exit_codes(nexus):
    nexus("write", "-p", "/src/a.txt", input=b"alpha\nTODO: one\nbeta todo\n")
    nexus("write", "-p", "/src/b.txt", input=b"nothing here\n")
    nexus("write", "-p", "/src/sub/c.txt", input=b"TODOS\nx TODO\n")
    nexus("write", "/bin.dat", input=b"TODO\x00binary")
    assert nexus("grep", "-n", "TODO").stdout.splitlines() == [
        "/src/a.txt:2:TODO: one", "/src/sub/c.txt:1:TODOS", "/src/sub/c.txt:2:x TODO"]
    assert nexus("grep", "TODO", "/src/sub").stdout.splitlines() == ["/src/sub/c.txt:TODOS", "/src/sub/c.txt:x TODO"]
    assert nexus("grep", "-n", "-w", "TODO", "/src").stdout.splitlines() == [
        "/src/a.txt:2:TODO: one", "/src/sub/c.txt:2:x TODO"]
    assert nexus("grep", "-i", "-l", "todo").stdout.splitlines() == ["/src/a.txt", "/src/sub/c.txt"]
    assert nexus("grep", "-c", "TODO", "/src").stdout.splitlines() == [
        "/src/a.txt:1", "/src/b.txt:0", "/src/sub/c.txt:2"]
    assert nexus("grep", "-F", "TODO:", "/src").stdout == "/src/a.txt:TODO: one\n"
    assert nexus("grep", "-n", "one", "/src/a.txt").stdout == "2:TODO: one\n"  # one file: no name
    assert nexus("grep", "-c", "TODO", "/src/sub/c.txt").stdout == "2\n"
    assert nexus("grep", "-v", "-n", "TODO", "/src").stdout.splitlines() == [
        "/src/a.txt:1:alpha", "/src/a.txt:3:beta todo", "/src/b.txt:1:nothing here"]
    assert nexus("grep", "-v", "TODO", "/src/sub", code=1).stdout == ""
    assert nexus("grep", "absent", code=1).stdout == ""
    assert "invalid regular expression" in nexus.error("grep", "(", code=2)
    assert nexus.error("grep", "x", "/missing", code=2) == "nexus: error: /missing: No such file or directory"


def test_glob_reports_a_missing_directory(nexus):
    nexus("write", "/file", input=b"")
    assert nexus.error("glob", "*", "/nope", code=2) == "nexus: error: /nope: No such file or directory"
    assert nexus.error("glob", "*", "/file", code=2) == "nexus: error: /file: Not a directory"
    assert nexus("glob", "*.none", "/", code=1).stderr == ""  # no match: exit 1, quietly


def test_grep_accepts_and_ignores_r(nexus):
    nexus("write", "-p", "/src/sub/a.txt", input=b"needle\n")
    for flag in ("-r", "-R", "--recursive", "-rn"):
        out = nexus("grep", flag, "needle", "/src").stdout
        assert out == ("/src/sub/a.txt:1:needle\n" if flag == "-rn" else "/src/sub/a.txt:needle\n")


def test_grep_fixed_strings_are_not_regexps(nexus):
    nexus("write", "/f", input=b"a.b\naxb\n")
    assert nexus("grep", "-F", "a.b", "/").stdout == "/f:a.b\n"
    assert nexus("grep", "a.b", "/").stdout == "/f:a.b\n/f:axb\n"


# ------------------------------------------------------------- maintenance
def _blob_files(home: str) -> list[str]:
    found = []
    for dirpath, _dirs, files in os.walk(os.path.join(home, "blobs")):
        found.extend(os.path.join(dirpath, f) for f in files if not f.startswith("."))
    return found


def test_fsck_clean_then_broken_then_repaired(nexus, home):
    nexus("write", "/data", input=os.urandom(2 * BS))
    nexus("write", "/small", input=b"inline")
    result = nexus("fsck")
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("checked ") and "2 blocks" in summary and "no problems" in summary
    assert "verified" in summary
    assert "verified" not in nexus("fsck", "--no-verify-data").stdout
    os.unlink(_blob_files(home)[0])
    broken = nexus("fsck", code=4).stdout.splitlines()
    assert any(line.startswith("[blobs]") and "missing" in line for line in broken)
    assert "1 problem(s), 0 repaired" in broken[-1]
    repaired = nexus("fsck", "--repair", code=1).stdout
    assert "(repaired)" in repaired
    assert "no problems" in nexus("fsck").stdout


def test_a_leftover_temp_file_is_garbage_for_fsck_and_gone_after_gc(nexus, home):
    # what a kill -9 in the middle of a blob write leaves behind
    nexus("write", "/data", input=os.urandom(2 * BS))
    tmp = os.path.join(os.path.dirname(_blob_files(home)[0]), ".tmp-killed")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * 3000)
    os.close(fd)
    out = nexus("fsck").stdout.splitlines()  # exit 0: no damage
    assert out[-2].endswith(": no problems")
    assert out[-1] == ("garbage for `nexus gc` (no damage): "
                       "1 temporary files of interrupted uploads (2.9 KiB)")
    assert nexus("gc").stdout == "freed 2.9 KiB: 0 objects, 0 orphan blobs, 1 temporary files\n"
    assert not os.path.exists(tmp)
    assert nexus("fsck").stdout.splitlines()[-1].endswith(": no problems")


def test_gc_frees_unreferenced_blobs(nexus, home):
    nexus("write", "/a", input=os.urandom(3 * BS))
    nexus("write", "/keep", input=os.urandom(BS))
    nexus("rm", "/a")
    kept = nexus("gc").stdout.splitlines()  # default grace (1h): nothing is old enough
    assert kept[0] == "freed 0 B: 0 objects, 0 orphan blobs, 0 temporary files"
    assert re.fullmatch(r"192\.0 KiB in 3 unreferenced objects is waiting for the grace period \(1h\): "
                        r"gc can free it from \d\d\d\d-\d\d-\d\d \d\d:\d\d(:\d\d)? on", kept[1]), kept
    assert len(kept) == 2
    assert len(_blob_files(home)) == 4
    out = nexus("gc", "--grace", "0s").stdout
    assert out == "freed 192.0 KiB: 3 objects, 0 orphan blobs, 0 temporary files\n"
    assert len(_blob_files(home)) == 1
    assert "cannot read 'soon' as a duration" in nexus.error("gc", "--grace", "soon")


# ------------------------------------------------------------ export/import
def test_export_import_through_the_cli(nexus, home, tmp_path):
    nexus("mkdir", "-p", "/proj/docs")
    nexus("write", "/proj/docs/readme", input=b"read me\n")
    nexus("write", "/proj/big", input=os.urandom(4 * BS + 1))
    with connect(home) as nx:
        nx.symlink("docs/readme", "/proj/link")
        nx.link("/proj/big", "/proj/big-again")
        nx.utime("/proj/docs/readme", (111, 222))
        nx.setxattr("/proj/big", "user.k", b"v")
    dump = tmp_path / "dump.jsonl"
    result = nexus("export", "--with-data", "-o", str(dump), "/proj")
    assert "exported 6 entries" in result.stderr
    lines = dump.read_bytes().splitlines()
    assert json.loads(lines[0])["type"] == "header" and json.loads(lines[-1])["type"] == "end"
    assert nexus("export", "/proj").stdout_bytes.splitlines()[1:-1] == [
        ln for ln in lines[1:-1] if json.loads(ln)["type"] != "object"]

    other = NexusCli(str(tmp_path / "other"))
    other("init", "--block-size", "128KiB")
    out = other("import", "--under", "/restored", str(dump)).stdout
    assert "imported 6 entries" in out and "1 hard links" in out and "1 symlinks" in out
    with connect(str(tmp_path / "other")) as nx, connect(home) as src:
        assert nx.read_bytes("/restored/big") == src.read_bytes("/proj/big")
        assert nx.stat("/restored/big").nlink == 2
        assert nx.getxattr("/restored/big", "user.k") == b"v"
        assert nx.readlink("/restored/link") == "docs/readme"
        fi = nx.stat("/restored/docs/readme")
        assert (fi.atime_ns, fi.mtime_ns) == (111, 222)
    assert "no problems" in other("fsck").stdout

    # from stdin, into the root of a third store
    third = NexusCli(str(tmp_path / "third"))
    third("init", "--block-size", "64KiB")
    third("import", input=dump.read_bytes())
    assert third("cat", "/docs/readme").stdout_bytes == b"read me\n"
    # an export without data cannot go to a store with other blobs
    plain = nexus("export", "/proj").stdout_bytes
    fourth = NexusCli(str(tmp_path / "fourth"))
    fourth("init", "--block-size", "64KiB")
    assert "missing from the blob store" in fourth.error("import", input=plain)


def test_import_errors_are_one_line(nexus, tmp_path):
    dump = nexus("export", "--with-data").stdout_bytes
    assert "incomplete" in nexus.error("import", "--under", "/t", input=dump.splitlines(keepends=True)[0])
    assert "not a nexusfs export" in nexus.error("import", input=b'{"hello": 1}\n')
    assert "line 1: not a JSON record" in nexus.error("import", input=b"garbage\n")
    missing = str(tmp_path / "nope.jsonl")
    assert nexus.error("import", missing) == f"nexus: error: {missing}: No such file or directory"
    assert nexus.error("export", "/nope") == "nexus: error: /nope: No such file or directory"


@pytest.mark.parametrize("failure", ["header only", "garbage", "block size without data"])
def test_a_failed_import_leaves_nothing_behind(nexus, tmp_path, failure):
    nexus("write", "/f", input=b"x")
    if failure == "header only":
        stream = nexus("export", "--with-data").stdout_bytes.splitlines(keepends=True)[0]
    elif failure == "garbage":
        stream = b"garbage\n"
    else:
        wide = NexusCli(str(tmp_path / "wide"))
        wide("init", "--block-size", "128KiB")
        wide("write", "/w", input=os.urandom(200_000))
        stream = wide("export").stdout_bytes
    nexus.error("import", "--under", "/x/y", input=stream)
    assert nexus("ls", "/").stdout == "f\n"


# ------------------------------------------------------------------ errors
def test_bad_config_yaml(home, tmp_path):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("block_size: [unclosed\n")
    line = NexusCli(home).error("--config", str(cfg), "info")
    assert line == f"nexus: error: config file {cfg} is not valid YAML (line 2)"
    cfg.write_text("no_such_setting: 1\n")
    assert "unknown setting 'no_such_setting'" in NexusCli(home).error("--config", str(cfg), "init")
    assert "does not exist" in NexusCli(home).error("--config", str(tmp_path / "absent.yaml"), "ls")


@pytest.mark.parametrize(("content", "problem"), [
    (b"threads: 4\n\xff\xfe\x00binary", "config file {cfg} is not UTF-8 text (byte 0xff at offset 11)"),
    (b"threads: 4\n\x07bell\n", "config file {cfg} is not valid YAML (line 2: control character 0x07)"),
    (b"threads: -3\n", "{cfg}: threads must be at least 1, not -3"),
    (b"block_size: 3MiB\n", "{cfg}: block_size must be a power of two between 64KiB and 64MiB, not 3MiB"),
    (b"block_size: 1MiB\ninline_max: 2MiB\n", "{cfg}: inline_max must be between 0 and 1MiB, not 2MiB"),
    (b"threads: many\n", "{cfg}: threads: expected a whole number, got 'many'"),
    (b"1: x\n", "{cfg}: unknown setting '1'"),
])
def test_config_errors_name_the_file_and_the_setting(home, tmp_path, content, problem):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_bytes(content)
    assert NexusCli(home).error("--config", str(cfg), "init") == "nexus: error: " + problem.format(cfg=cfg)
    assert not os.path.exists(home)


def test_init_answers_in_the_units_it_was_given(home):
    assert NexusCli(home).error("init", "--block-size", "3MiB") == \
        "nexus: error: block_size must be a power of two between 64KiB and 64MiB, not 3MiB"
    assert NexusCli(home).error("init", "--block-size", "100000") == \
        "nexus: error: block_size must be a power of two between 64KiB and 64MiB, not 100000 bytes"
    assert NexusCli(home).error("init", "--block-size", "128MiB") == \
        "nexus: error: block_size must be a power of two between 64KiB and 64MiB, not 128MiB"


def test_config_file_names_the_store(tmp_path):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("home: via-config\nblock_size: 256KiB\n")
    run = NexusCli("unused")
    assert "block size 256.0 KiB" in run("--config", str(cfg), "init", home=False).stdout
    assert os.path.exists(tmp_path / "via-config" / "meta.db")


def test_corrupt_metadata_database(nexus, home):
    nexus("write", "/f", input=b"x")
    for suffix in ("-wal", "-shm"):
        if os.path.exists(os.path.join(home, "meta.db" + suffix)):
            os.unlink(os.path.join(home, "meta.db" + suffix))
    with open(os.path.join(home, "meta.db"), "wb") as f:
        f.write(b"this is not a database at all" * 100)
    line = nexus.error("ls")
    assert "is not a nexusfs metadata database" in line
    assert "is not a nexusfs metadata database" in nexus.error("init")
    assert "not a nexusfs metadata database" in nexus.error("grep", "x", code=2)


def test_debug_env_shows_the_exception(home):
    result = CliRunner().invoke(cli, ["--home", home, "ls"], env={"NEXUS_DEBUG": "1"})
    assert isinstance(result.exception, nexusfs.StoreError)


def test_usage_errors_are_one_line_with_click_status(nexus):
    assert nexus.error("ls", "--bogus", code=2) == \
        "nexus: error: ls: No such option '--bogus' (see `nexus ls --help`)"
    assert nexus.error("frobnicate", code=2) == \
        "nexus: error: No such command 'frobnicate' (see `nexus --help`)"
    assert nexus.error("--bogus", "ls", code=2) == "nexus: error: No such option '--bogus' (see `nexus --help`)"
    assert nexus.error("grep", code=2) == \
        "nexus: error: grep: Missing argument 'PATTERN' (see `nexus grep --help`)"
    assert nexus.error("search", "q", "/", "-k", "0", code=2).startswith("nexus: error: search: Invalid value")
    assert nexus("--help").stdout.startswith("Usage: nexus")  # help is still help
    assert nexus("ls", "--help").stdout.startswith("Usage: nexus ls")


def test_mount_usage_errors_are_one_line(nexus, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = nexus.error("mount", "-d", str(tmp_path / "afile"))
    assert line == f"nexus: error: mountpoint {tmp_path / 'afile'} is not a directory"
    assert nexus.error("mount", "--bogus", code=2) == \
        "nexus: error: mount: No such option '--bogus' (see `nexus mount --help`)"
    assert nexus.error("mount", "-o", "frob", str(tmp_path), code=1) == "nexus: error: unknown mount option 'frob'"


@pytest.mark.parametrize(("args", "line"), [
    (["mkdir", "/x/y/z"], "/x/y/z: No such file or directory"),
    (["mkdir", "-p", "/file/y/z"], "/file/y/z: Not a directory"),
    (["mkdir", "/file"], "/file: File exists"),
    (["write", "/x/y"], "/x/y: No such file or directory"),
    (["write", "-p", "/file/y"], "/file/y: Not a directory"),
    (["cat", "/x/y"], "/x/y: No such file or directory"),
    (["ls", "/file/y"], "/file/y: Not a directory"),
    (["stat", "/x/y"], "/x/y: No such file or directory"),
    (["rm", "/x/y"], "/x/y: No such file or directory"),
    (["rm", "-r", "/file/y"], "/file/y: Not a directory"),
    (["mv", "/x/y", "/z"], "/x/y: No such file or directory"),
    (["mv", "/file", "/x/y/z"], "/x/y/z: No such file or directory"),
    (["cp", "/x/y", "/z"], "/x/y: No such file or directory"),
    (["cp", "/file", "/x/y/z"], "/x/y/z: No such file or directory"),
    (["get", "/x/y", "-"], "/x/y: No such file or directory"),
    (["export", "/x/y"], "/x/y: No such file or directory"),
    (["import", "--under", "/file/y"], "/file/y: Not a directory"),
])
def test_errors_name_the_whole_path(nexus, args, line):
    nexus("write", "/file", input=b"x")
    assert nexus.error(*args, input=b"") == f"nexus: error: {line}"


@pytest.mark.parametrize(("args", "line"), [
    (["grep", "a", "/x/y"], "/x/y: No such file or directory"),
    (["grep", "a", "/file/y"], "/file/y: Not a directory"),
    (["glob", "*", "/x/y"], "/x/y: No such file or directory"),
])
def test_search_errors_name_the_whole_path(nexus, args, line):
    nexus("write", "/file", input=b"x")
    assert nexus.error(*args, code=2) == f"nexus: error: {line}"


def test_put_names_the_whole_store_path(nexus, tmp_path):
    nexus("write", "/file", input=b"x")
    (tmp_path / "f").write_bytes(b"data")
    assert nexus.error("put", str(tmp_path / "f"), "/file/sub/f") == "nexus: error: /file/sub/f: Not a directory"


# ----------------------------------------------------------------- plugins
@click.command("hello")
@click.argument("name")
def hello_plugin(name: str) -> None:
    """Say hello (a test plugin)."""
    nx = cli_mod.open_store()
    click.echo(f"hello {name} from {nx.store.config.home}")


def test_plugins_are_loaded_lazily_and_broken_ones_do_not_break_the_cli(nexus, monkeypatch):
    eps = [
        EntryPoint("broken", "no_such_module_for_nexus_tests:command", cli_mod.PLUGIN_GROUP),
        EntryPoint("notcmd", "os:getcwd", cli_mod.PLUGIN_GROUP),
        EntryPoint("hello", "tests.test_cli:hello_plugin", cli_mod.PLUGIN_GROUP),
    ]
    monkeypatch.setattr(cli_mod, "entry_points", lambda group: [e for e in eps if e.group == group])
    listing = nexus("--help").stdout
    assert re.search(r"^  hello\s+Say hello", listing, re.M)
    assert re.search(r"^  broken\s+\(unavailable: ModuleNotFoundError", listing, re.M)
    assert re.search(r"^  notcmd\s+\(unavailable: TypeError", listing, re.M)
    assert nexus("hello", "world").stdout == f"hello world from {nexus.home}\n"
    line = nexus.error("broken", "--some", "args")
    assert "the broken command is unavailable" in line and "no_such_module_for_nexus_tests" in line


def test_failing_entry_point_metadata(nexus, monkeypatch):
    def boom(group):
        raise RuntimeError("broken metadata")

    monkeypatch.setattr(cli_mod, "entry_points", boom)
    assert "init" in nexus("--help").stdout


# -------------------------------------------------------------- end to end
def _nexus_argv() -> list[str]:
    return [nexus_bin()]


def test_console_script_end_to_end(tmp_path):
    home = str(tmp_path / "e2e")
    env = {**os.environ, "NEXUS_HOME": str(tmp_path / "unused")}
    env.pop("NEXUS_DEBUG", None)

    def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(_nexus_argv() + ["--home", home, *args], input=input, capture_output=True,
                              env=env, timeout=120)

    missing = run("ls")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == "nexus: error: " + MISSING.format(home)
    assert run("init").returncode == 0
    assert run("write", "/hello", input=b"hi there\n").returncode == 0
    assert run("cat", "/hello").stdout == b"hi there\n"
    grep = run("grep", "-n", "there")
    assert (grep.returncode, grep.stdout) == (0, b"/hello:1:hi there\n")
    assert run("grep", "absent").returncode == 1
    bad = run("cat", "/hello/x")
    assert bad.returncode == 1 and bad.stderr == b"nexus: error: /hello/x: Not a directory\n"
    assert run("--help").returncode == 0
    dump = run("export", "--with-data").stdout
    other = str(tmp_path / "e2e-other")
    imp = subprocess.run(_nexus_argv() + ["--home", other, "init"], capture_output=True, env=env, timeout=120)
    assert imp.returncode == 0
    imp = subprocess.run(_nexus_argv() + ["--home", other, "import"], input=dump, capture_output=True,
                         env=env, timeout=120)
    assert imp.returncode == 0, imp.stderr
    cat = subprocess.run(_nexus_argv() + ["--home", other, "cat", "/hello"], capture_output=True, env=env,
                         timeout=120)
    assert cat.stdout == b"hi there\n"


def test_put_copies_a_symlink_given_as_local_and_follows_it_with_L(nexus, tmp_path):
    (tmp_path / "real.txt").write_bytes(b"real content")
    os.symlink("real.txt", tmp_path / "alias")
    nexus("put", str(tmp_path / "alias"), "/copied")  # like cp -r and rsync -a: the link itself
    link = json.loads(nexus("stat", "--json", "/copied").stdout)
    assert (link["type"], link["target"]) == ("symlink", "real.txt")
    nexus("put", "-L", str(tmp_path / "alias"), "/followed")
    assert nexus("cat", "/followed").stdout_bytes == b"real content"
    assert json.loads(nexus("stat", "--json", "/followed").stdout)["type"] == "file"


@pytest.mark.parametrize("args", [["grep", "line"], ["cat", "/many"], ["get", "/many", "-"], ["export", "--with-data"]])
def test_a_closed_pipe_ends_the_command_quietly(tmp_path, args):
    """`nexus grep ... | head`: the command ends as grep does, by SIGPIPE, with nothing on stderr."""
    home = str(tmp_path / "store")
    env = {**os.environ}
    env.pop("NEXUS_DEBUG", None)
    subprocess.run(_nexus_argv() + ["--home", home, "init"], check=True, capture_output=True, env=env, timeout=120)
    many = b"".join(b"line %d\n" % i for i in range(100_000))  # far more than a pipe holds
    subprocess.run(_nexus_argv() + ["--home", home, "write", "/many"], input=many, check=True, env=env, timeout=120)
    proc = subprocess.Popen(_nexus_argv() + ["--home", home, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(10)
    proc.stdout.close()  # `head` has what it wanted and exits
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == -signal.SIGPIPE
    assert err == b""


def _store_with_many_lines(tmp_path) -> tuple[str, dict[str, str]]:
    home = str(tmp_path / "store")
    env = {**os.environ}
    env.pop("NEXUS_DEBUG", None)
    subprocess.run([nexus_bin(), "--home", home, "init"], check=True, capture_output=True, env=env, timeout=120)
    many = b"".join(b"line %d\n" % i for i in range(100_000))  # far more than a pipe holds
    subprocess.run([nexus_bin(), "--home", home, "write", "/many"], input=many, check=True, env=env, timeout=120)
    return home, env


@pytest.mark.parametrize("args", [["grep", "line"], ["cat", "/many"]])
def test_head_in_a_shell_pipeline_ends_the_command_as_coreutils_would(tmp_path, args):
    """`nexus cat /many | head -c1` in a shell: head's byte, nothing on stderr, and the
    shell sees the status SIGPIPE gives (141), as for `cat`."""
    home, env = _store_with_many_lines(tmp_path)
    cmd = " ".join(map(shlex.quote, [nexus_bin(), "--home", home, *args]))
    res = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c1; echo \" ${{PIPESTATUS[*]}}\""],
                         capture_output=True, env=env, timeout=120)
    assert res.stdout in (b"/ 141 0\n", b"l 141 0\n"), res.stdout
    assert res.stderr == b""


@pytest.mark.parametrize("args", [["grep", "line"], ["cat", "/many"]])
def test_ctrl_c_ends_a_running_command_in_one_line_with_130(tmp_path, args):
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) while the
    command is writing: one line on stderr, no traceback, exit status 130."""
    home, env = _store_with_many_lines(tmp_path)
    proc = subprocess.Popen([nexus_bin(), "--home", home, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        assert proc.stdout.read(10)  # running: its output has started (and fills the pipe)
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, err) == (130, b"nexus: interrupted\n")

    def group_gone() -> bool:  # grep's worker processes too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    deadline = time.monotonic() + 60
    while not group_gone():
        assert time.monotonic() < deadline, "a process of the interrupted command is still running"
        time.sleep(0.05)


def test_the_mount_process_on_its_own_reports_usage_errors_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mount", "--bogus"], capture_output=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2
    assert proc.stderr == b"nexus: error: mount: No such option '--bogus' (see `nexus mount --help`)\n"
