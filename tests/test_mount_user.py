"""A mount by an ordinary user, as the README promises: no root, through fusermount3.

The user (``nobody``) mounts a store in a home-like directory of its own, writes and reads
files through the mount, unmounts with ``fusermount3 -u``, mounts again and reads them back;
the store's files are the user's, with private modes. Every other mount in the suite runs
as root.

/dev/fuse is opened up for the test (0666, as stock Debian ships it; some machines have
0600) and its mode is put back afterwards, also when the test fails.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import shutil
import site
import stat
import subprocess
import sys

import pytest

from tests import needs
from tests.mount_helpers import NOBODY, as_user
from tests.mountutil import _is_mounted, force_unmount

pytestmark = pytest.mark.mount

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def dev_fuse_open():
    """/dev/fuse usable by every user for the test's length; its mode is restored after."""
    before = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", before | 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)
        assert stat.S_IMODE(os.stat("/dev/fuse").st_mode) == before


def user_python(setpriv: str, env: dict[str, str]) -> list[str]:
    """A command that starts this project's Python as ``nobody``.

    The test's own interpreter, if the user can run it; a virtual environment made from an
    interpreter under /root (pyenv's, 0700) cannot be, and then the system's Python of the
    same version runs with this environment's packages on its path (compiled packages are
    built for the version, not for one installation of it)."""
    drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    probe = "import pyfuse3, trio, apsw, nexusfs, mount.runner"
    candidates = [sys.executable]
    system = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/local/bin:/usr/bin:/bin")
    if system:
        candidates.append(system)
    tried = []
    for python in candidates:
        res = subprocess.run([*drop, python, "-c", probe], env=env, cwd="/", capture_output=True, text=True, timeout=60)
        if res.returncode == 0:
            return [*drop, python]
        tried.append(f"{python}: {res.stderr.strip().splitlines()[-1:] or res.returncode}")
    needs.need("mount", f"no Python with this project's packages runs as an ordinary user ({'; '.join(tried)})")
    raise AssertionError("unreachable")


class UserMount:
    """``python -m mount`` started as an ordinary user (no root: fusermount3 mounts it)."""

    def __init__(self, python: list[str], env: dict[str, str], home: str, store: str, mnt: str, log: str) -> None:
        self.python, self.env, self.home, self.store, self.mnt, self.log = python, env, home, store, mnt, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        r, w = os.pipe()
        cmd = [*self.python, "-m", "mount", "--home", self.store, self.mnt, "--foreground", "--ready-fd", str(w)]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, cwd=self.home, env=self.env, pass_fds=(w,), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], 60)
            line = os.read(r, 4096).decode(errors="replace").strip() if ready else "timeout"
        finally:
            os.close(r)
        assert line == "OK", f"the user's mount did not start: {line}\n{self.log_text()}"

    def unmount(self, setpriv_drop: list[str], fusermount: str) -> int:
        """``fusermount3 -u`` as the user; the mount process's exit status."""
        res = subprocess.run([*setpriv_drop, fusermount, "-u", self.mnt], env=self.env, cwd=self.home,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"fusermount3 -u as the user: {res.stderr}"
        assert self.proc is not None
        rc = self.proc.wait(timeout=120)
        self.proc = None
        return rc

    def cleanup(self) -> None:
        """Whatever happened: no mount and no process left behind."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
        force_unmount(self.mnt)

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()


def write_files(mnt: str, files: dict[str, bytes]) -> dict[str, str]:
    """As the user: write ``files`` in the mount; their sha256s as read back. (Into the mount
    after dropping root: without allow_other, only its user may enter it, root included.)"""
    os.chdir(mnt)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(rel) or ".", exist_ok=True)
        with open(rel, "wb") as f:
            f.write(data)
    return read_files(mnt, list(files))


def read_files(mnt: str, names: list[str]) -> dict[str, str]:
    os.chdir(mnt)
    out = {}
    for rel in names:
        with open(rel, "rb") as f:
            out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_an_ordinary_user_mounts_with_fusermount3(public_tmp, dev_fuse_open):
    needs.need_mount()
    needs.need_root("to act as another user and open up /dev/fuse")
    fusermount = needs.need_tool("fusermount3")
    setpriv = needs.need_tool("setpriv")
    home = os.path.join(public_tmp, "home")  # the user's home-like directory
    os.mkdir(home, 0o700)
    os.chown(home, NOBODY, NOBODY)
    store, mnt = os.path.join(home, "store"), os.path.join(home, "mnt")
    as_user(os.mkdir, mnt, cwd=home)
    paths = os.pathsep.join([ROOT, *site.getsitepackages()])
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "NEXUS_HOME": store, "PYTHONPATH": paths,
           "LANG": "C.UTF-8"}
    python = user_python(setpriv, env)
    drop = python[:-1]
    rng = random.Random(5)
    files = {"hello.txt": b"hello from nobody\n", "deep/er/blob.bin": rng.randbytes(5 * (1 << 20) + 3)}
    want = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    m = UserMount(python, env, home, store, mnt, os.path.join(public_tmp, "mount.log"))
    try:
        m.start()
        with open("/proc/mounts", encoding="utf-8") as f:
            entry = [line.split() for line in f if line.split()[1] == mnt]
        assert len(entry) == 1 and entry[0][2] == "fuse.nexus", entry
        assert f"user_id={NOBODY}" in entry[0][3].split(","), entry  # mounted by the user, not root
        assert as_user(write_files, mnt, files, cwd=home) == want
        assert m.unmount(drop, fusermount) == 0, m.log_text()
        assert not _is_mounted(mnt)
        m.start()  # again: what was written is there
        assert as_user(read_files, mnt, list(files), cwd=home) == want
        assert m.unmount(drop, fusermount) == 0, m.log_text()
    finally:
        m.cleanup()
    assert "Traceback" not in m.log_text(), m.log_text()
    # the store is the user's, and private
    seen = 0
    for d, _dirs, names in os.walk(store):
        for p in [d] + [os.path.join(d, n) for n in names]:
            st = os.lstat(p)
            assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), (p, st.st_uid, st.st_gid)
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (p, oct(st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                assert stat.S_IMODE(st.st_mode) == 0o700, (p, oct(st.st_mode))
            seen += 1
    assert seen > 5  # the database and the blobs, not an empty directory
