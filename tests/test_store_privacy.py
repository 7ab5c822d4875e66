"""A store is private to its owner: every directory it makes is 0700 and every file 0600,
whatever the umask; other users get one sentence instead of its contents; root may use
any store without leaving files behind that lock the owner out.

Commands run in child processes (``nexus`` or a short Python script) so that each can
have its own umask and user; switching users needs root.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import nexusfs
from nexusfs.cli import cli
from tests import needs
from tests.mount_helpers import NOBODY, as_user
from tests.mountutil import assert_clean_log, force_unmount

NEXUS = os.path.join(os.path.dirname(sys.executable), "nexus")
SECRET = b"SECRET-4711 the launch codes"

needs_root = needs.root_only("switching to another user needs root")


def run_nexus(*args: str, umask: int | None = None, env: dict[str, str] | None = None,
              input: bytes | None = None) -> subprocess.CompletedProcess:
    """``nexus ARGS`` in a child process (with ``umask``, if given)."""
    def preexec() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run([NEXUS, *args], capture_output=True, input=input, preexec_fn=preexec,
                          env=dict(os.environ, **(env or {})), timeout=300)


#: the commands the tests run as nobody, with the arguments that reach their deepest code
WARM_UP = (["put", "{src}", "/n.txt"], ["ls", "/"], ["cat", "/n.txt"], ["grep", "note", "/"],
           ["search", "a note"], ["info"], ["fsck"])


@pytest.fixture(scope="module", autouse=True)
def _modules_loaded(tmp_path_factory):
    """Run each command nobody will run once as root first, on a scratch store: the forked
    child imports nothing then (nobody cannot read this Python's files in root's home: a
    module imported lazily, such as email.parser by importlib.metadata, made the child
    fail depending on which tests had run before)."""
    d = tmp_path_factory.mktemp("warm-up")
    src = d / "n.txt"
    src.write_bytes(b"a note\n")
    for args in WARM_UP:
        res = CliRunner().invoke(cli, ["--home", str(d / "store"), *(a.format(src=src) for a in args)])
        assert res.exit_code == 0, (args, res.output)


def nexus_as_nobody(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``nexus ARGS`` run by the user nobody: (exit status, stdout, stderr). It runs in a
    forked child (nobody cannot start this Python: it lives in root's home directory)."""
    def child() -> tuple[int, str, str]:
        res = CliRunner().invoke(cli, list(args), env=env)
        return res.exit_code, res.stdout, res.stderr

    return as_user(child, cwd="/")  # (modules it needs are imported here, above: nobody cannot read them)


def loose_paths(top: str, owner: int | None = None) -> list[str]:
    """Everything below (and including) ``top`` that another user could use, or that
    belongs to someone other than ``owner``."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(top):
        for p in [dirpath] + [os.path.join(dirpath, n) for n in filenames]:
            st = os.lstat(p)
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want or (owner is not None and st.st_uid != owner):
                found.append(f"{os.path.relpath(p, top)} {stat.S_IMODE(st.st_mode):04o} uid {st.st_uid}")
    return found


WRITE_EVERYTHING = textwrap.dedent("""
    import os, sys
    os.umask(int(sys.argv[2], 8))
    import nexusfs
    with nexusfs.connect(sys.argv[1], block_size=65536, inline_max=1024, semantic=False) as nx:
        nx.write_bytes("/small", b"tiny")
        nx.write_bytes("/dir/big", os.urandom(300_000), parents=True)
        nx.reindex()
        with nx.store.exclusive("test"):
            pass
        print("\\n".join(sorted(os.listdir(sys.argv[1]))))
""")


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_a_new_store_is_private_whatever_the_umask(tmp_path, umask):
    home = str(tmp_path / "store")
    res = subprocess.run([sys.executable, "-c", WRITE_EVERYTHING, home, f"{umask:o}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    # seen while open: the database's -wal and -shm files, and mount.lock
    assert {"meta.db", "meta.db-wal", "meta.db-shm", "mount.lock", "blobs"} <= set(res.stdout.split())
    assert loose_paths(home) == []
    assert os.listdir(os.path.join(home, "blobs"))  # blob directories were made, privately


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_the_cli_makes_a_private_store_whatever_the_umask(tmp_path, umask):
    home = str(tmp_path / "store")
    local = tmp_path / "big"
    local.write_bytes(os.urandom(300_000))
    assert run_nexus("--home", home, "init", "--block-size", "64KiB", umask=umask).returncode == 0
    assert run_nexus("--home", home, "put", str(local), "/big", umask=umask).returncode == 0
    assert loose_paths(home) == []


def loosen(home: str) -> None:
    """Give a store the modes that stores made before privacy had (umask 022)."""
    for dirpath, _dirs, files in os.walk(home):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def test_opening_a_loose_store_makes_its_top_level_private(store_dir):
    with nexusfs.connect(store_dir) as nx:
        nx.write_bytes("/f", os.urandom(100_000))
    loosen(store_dir)
    with nexusfs.connect(store_dir):
        for name in ("", "meta.db", "blobs", "mount.lock"):
            path = os.path.join(store_dir, name)
            if os.path.exists(path):
                want = 0o700 if os.path.isdir(path) else 0o600
                assert stat.S_IMODE(os.stat(path).st_mode) == want, name


def test_fsck_reports_loose_modes_and_repair_tightens_them(store_dir):
    nx = nexusfs.connect(store_dir, block_size=65536)
    try:
        nx.write_bytes("/f", os.urandom(100_000))
        loosen(store_dir)  # while open (opening tightens the top level)
        report = nx.fsck()
        modes = [p for p in report.problems if p.check == "modes"]
        assert modes and len(modes) == len(report.problems), [str(p) for p in report.problems]
        assert any("meta.db" in p.message and "0644" in p.message for p in modes)
        assert report.exit_code == 4
        fixed = nx.fsck(repair=True)
        assert all(p.repaired for p in fixed.problems) and fixed.exit_code == 1
        assert loose_paths(store_dir) == []
        assert nx.fsck().clean
    finally:
        nx.close()


def test_fsck_cli_names_the_modes_check(tmp_path):
    home = str(tmp_path / "store")
    assert run_nexus("--home", home, "init").returncode == 0
    os.chmod(os.path.join(home, "meta.db"), 0o644)
    res = run_nexus("--home", home, "fsck")
    # the CLI's own open already made the top level private again; fsck then finds nothing
    assert res.returncode == 0, res.stdout
    os.chmod(os.path.join(home, "blobs"), 0o777)
    os.makedirs(os.path.join(home, "blobs", "ab", "cd"), mode=0o755)
    os.chmod(os.path.join(home, "blobs", "ab"), 0o755)
    res = run_nexus("--home", home, "fsck")
    assert res.returncode == 4
    assert "[modes] blobs/ab is 0755, should be 0700" in res.stdout.decode()
    assert run_nexus("--home", home, "fsck", "--repair").returncode == 1
    assert run_nexus("--home", home, "fsck").returncode == 0
    assert loose_paths(home) == []


# ------------------------------------------------------------------ other users
@needs_root
def test_another_user_gets_one_sentence_and_no_content(public_tmp):
    home = os.path.join(public_tmp, "store")
    with nexusfs.connect(home, semantic=False) as nx:
        nx.write_bytes("/root-only.txt", SECRET)
        nx.chmod("/root-only.txt", 0o600)
        nx.reindex()
    loosen(home)  # even a store left with loose modes by an older version
    for args in (["grep", "SECRET", "/"], ["search", "launch codes"], ["cat", "/root-only.txt"],
                 ["ls", "/"], ["info"]):
        code, out, err = nexus_as_nobody("--home", home, *args)
        assert "SECRET" not in out + err
        assert err == (f"nexus: error: the store at {home} belongs to root (uid 0); "
                       "only its owner can use it\n"), (args, err)
        assert code == (2 if args[0] == "grep" else 1)
    # the loose store was made private by its owner's next use, so the file is closed too
    with nexusfs.connect(home):
        pass
    assert as_user(_can_read, os.path.join(home, "meta.db"), cwd="/") is False


def _can_read(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return True
    except PermissionError:
        return False


@needs_root
def test_a_store_behind_a_closed_directory_says_permission_denied(tmp_path):
    home = str(tmp_path / "store")  # pytest's directories are 0700: nobody cannot get there
    with nexusfs.connect(home):
        pass
    code, _out, err = nexus_as_nobody("--home", home, "ls")
    assert code == 1
    assert err == f"nexus: error: cannot open the store at {home}: Permission denied\n"


@needs_root
def test_an_ordinary_users_default_store_works_and_root_does_not_lock_them_out(public_tmp, tmp_path):
    user_home = os.path.join(public_tmp, "home-of-nobody")
    os.mkdir(user_home)
    os.chown(user_home, NOBODY, NOBODY)
    env = {"HOME": user_home, "NEXUS_HOME": "", "XDG_DATA_HOME": ""}
    note = os.path.join(public_tmp, "note.txt")
    with open(note, "wb") as f:
        f.write(b"a note by nobody\n")
    os.chmod(note, 0o644)
    code, _out, err = nexus_as_nobody("put", note, "/note.txt", env=env)
    assert code == 0, err
    store = os.path.join(user_home, ".local", "share", "nexus")
    assert loose_paths(store, owner=NOBODY) == []
    # root uses the user's store: a new blob directory, a temp file and a blob, the database's
    # -wal and -shm files, mount.lock -- all must stay usable by their owner
    with nexusfs.connect(store, block_size=65536) as nx:
        nx.write_bytes("/by-root.bin", os.urandom(500_000))
        with nx.store.exclusive("test by root"):
            pass
    assert loose_paths(store, owner=NOBODY) == []
    code, out, err = nexus_as_nobody("ls", "/", env=env)
    assert (code, out) == (0, "by-root.bin\nnote.txt\n"), err
    code, out, err = nexus_as_nobody("grep", "note", "/", env=env)
    assert (code, out) == (0, "/note.txt:a note by nobody\n"), err
    code, _out, err = nexus_as_nobody("fsck", env=env)
    assert code == 0, err


@needs_root
def test_root_may_open_another_users_store(public_tmp):
    home = os.path.join(public_tmp, "store")
    os.mkdir(home, 0o700)
    os.chown(home, NOBODY, NOBODY)
    with nexusfs.connect(home) as nx:  # root creates the store inside nobody's directory
        nx.write_bytes("/x", b"x" * 20000)
    assert loose_paths(home, owner=NOBODY) == []


# ------------------------------------------------------------------ the mount
@pytest.mark.mount  # guarded by tests/needs.py need_mount (conftest)
def test_a_mounted_store_is_private_whatever_the_umask(tmp_path):
    home, mnt = str(tmp_path / "store"), tmp_path / "mnt"
    mnt.mkdir()
    res = run_nexus("--home", home, "mount", "-d", str(mnt), umask=0)
    assert res.returncode == 0, res.stderr
    try:
        (mnt / "big").write_bytes(os.urandom(5 << 20))
        (mnt / "small").write_bytes(b"small")
        assert {"mount.log", "mount.lock", "meta.db", "blobs"} <= set(os.listdir(home))
        assert loose_paths(home) == []
    finally:
        res = run_nexus("umount", str(mnt))
        force_unmount(str(mnt))
    assert res.returncode == 0, res.stderr
    assert_clean_log(os.path.join(home, "mount.log"))
    assert loose_paths(home) == []


@pytest.mark.mount  # guarded by tests/needs.py need_mount (conftest)
@pytest.mark.parametrize("background", [True, False], ids=["background", "foreground"])
def test_mount_with_nexus_home_naming_a_file_is_one_sentence(tmp_path, background):
    a_file, mnt = tmp_path / "not-a-dir", tmp_path / "mnt"
    a_file.write_text("x")
    mnt.mkdir()
    try:
        res = run_nexus("mount", *(["-d"] if background else []), str(mnt), env={"NEXUS_HOME": str(a_file)})
    finally:
        force_unmount(str(mnt))
    assert res.returncode == 1
    assert res.stderr.decode() == (f"nexus: error: cannot use {a_file} as the store directory "
                                   "(set by NEXUS_HOME): it is a file\n")
    assert a_file.read_text() == "x"
