"""Power loss: what fsync acknowledged survives when the page cache is gone too.

The crash tests kill processes, so everything written survives in the kernel's page cache,
synced or not. Here the store lives on :mod:`tests.lossyfs`, a FUSE filesystem that keeps
only what was synced (file content by fsync/fdatasync, directory entries by an fsync of the
directory): a writer process creates the store, writes through the API, acknowledges what
fsync/sync made durable, and is killed (the store is new, or made earlier and all on disk);
then the power is "cut" (the lossy filesystem keeps only its synced state) and mounted again,
and the store must open, hold every acknowledged byte, and fsck clean. What nobody synced may
be lost, but never half. The same through a nexusfs mount whose process dies with the power.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import nexusfs
from tests.mountutil import MountedStore, force_unmount
from tests.needs import need_mount

pytestmark = pytest.mark.mount

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(block_size=64 * 1024, inline_max=1024, cache_size=1 << 20, dirty_limit=1 << 20,
                semantic=False, background_indexing=False)
def content(name: str, size: int) -> bytes:
    """Incompressible bytes that differ per name (blobs are not shared between files)."""
    out = bytearray()
    seed = name.encode()
    while len(out) < size:
        seed = hashlib.blake2b(seed, digest_size=64).digest()
        out += seed
    return bytes(out[:size])


#: (path, size): sizes cross block boundaries; the small one lives inline in the metadata
FILES = {
    "fsynced": ("/fsynced", 200_000),
    "fsynced-inline": ("/fsynced-inline", 300),
    "synced": ("/synced", 150_000),
    "renamed": ("/dir/renamed", 100_000),
    "closed": ("/closed", 120_000),
    "open": ("/open", 90_000),
}

WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, sys.argv[2])
    import nexusfs
    from tests.test_power_loss import FILES, SETTINGS, content

    def say(word):
        sys.stdout.write(word + "\\n")
        sys.stdout.flush()

    def data(key):
        return content(key, FILES[key][1])

    nx = nexusfs.connect(sys.argv[1], **SETTINGS)
    nx.write_bytes(FILES["synced"][0], data("synced"))
    nx.mkdir("/dir")
    nx.write_bytes("/dir/tmp", data("renamed"))
    nx.rename("/dir/tmp", FILES["renamed"][0])
    nx.sync()
    say("ack synced")
    say("ack renamed")
    # last of the synced ones: no later sync may make up for what their fsync left out
    for key in ("fsynced", "fsynced-inline"):
        f = nx.open(FILES[key][0], "wb", buffering=0)
        f.write(data(key))
        f.fsync()
        say("ack " + key)        # fsync returned: durable from here on
        f.close()
    nx.write_bytes(FILES["closed"][0], data("closed"))  # closed, never synced
    f = nx.open(FILES["open"][0], "wb")                  # written, never closed
    f.write(data("open"))
    say("done")
    time.sleep(600)
    """
)


class Lossy:
    """A :mod:`tests.lossyfs` mount on ``backing``; always unmounted and reaped."""

    def __init__(self, backing: str, mountpoint: str) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.proc: subprocess.Popen | None = None

    def start(self) -> Lossy:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.lossyfs", self.backing, self.mountpoint],
                                     cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"lossyfs did not start: {line!r} {err[-2000:]}")
        return self

    def cut_power(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0 and "power cut" in out, (self.proc.returncode, out, err[-2000:])
        self.proc = None
        force_unmount(self.mountpoint)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
            self.proc = None
        force_unmount(self.mountpoint)


@pytest.fixture
def lossy(tmp_path):
    need_mount()
    backing, mountpoint = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    mounts = []

    def mount() -> Lossy:
        m = Lossy(str(backing), str(mountpoint)).start()
        mounts.append(m)
        return m

    try:
        yield mount
    finally:
        for m in mounts:
            m.stop()


@pytest.mark.parametrize("store", ["new", "existing"])
def test_power_cut_keeps_what_fsync_and_sync_acknowledged(lossy, tmp_path, store):
    fs = lossy()
    home = store_home(fs, store)
    script = tmp_path / "power_loss_writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), home, ROOT_DIR], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in writer.stdout:
            if line.startswith("ack "):
                acked.append(line.split()[1])
            if line.strip() == "done":
                break
    finally:
        writer.kill()
        _, err = writer.communicate()
    assert sorted(acked) == sorted(["fsynced", "fsynced-inline", "synced", "renamed"]), err[-3000:]

    fs.cut_power()
    lossy()
    check_after_power_cut(home, {k: FILES[k] for k in acked}, {k: FILES[k] for k in ("closed", "open")})


def check_after_power_cut(home: str, acked: dict[str, tuple[str, int]], unsynced: dict[str, tuple[str, int]]) -> None:
    """Every acknowledged file has its content; an unsynced one is absent, empty or whole;
    fsck finds nothing but orphan blobs, gc removes those, and the store works."""
    with nexusfs.connect(home, create=False, **SETTINGS) as nx:
        for key, (path, size) in acked.items():
            assert nx.exists(path), f"{path} was acknowledged durable (fsync/sync returned) but is gone"
            assert nx.read_bytes(path) == content(key, size), f"{path} lost its content"
        for key, (path, size) in unsynced.items():
            if nx.exists(path):  # not synced: may be lost, but not torn
                assert nx.read_bytes(path) in (b"", content(key, size)), f"{path} is torn"
        report = nx.fsck(verify_data=True)
        # Blobs of the unsynced files are durable (fsync'd as uploaded) while the metadata
        # that reserved their objects was lost: uploaded-but-unreferenced blobs, harmless
        # (README), which fsck lists as orphan blobs and gc removes. Nothing else may be wrong.
        assert all(p.check == "orphan-blobs" for p in report.problems), [str(p) for p in report.problems]
        nx.gc(grace=0)
        report = nx.fsck(verify_data=True)
        assert report.clean, [str(p) for p in report.problems]
        nx.write_bytes("/after", b"the store still works")
        assert nx.read_bytes("/after") == b"the store still works"


def store_home(fs: Lossy, store: str) -> str:
    """Where the store lives on the lossy filesystem; made there first if ``store`` is existing."""
    home = os.path.join(fs.mountpoint, "store")
    if store == "existing":
        make_durable_store(home)
    return home


def make_durable_store(home: str) -> None:
    """A store made earlier, all of it on disk whatever the product syncs (the test syncs
    every file and directory itself): the power cut then tests only what comes after."""
    nexusfs.connect(home, **SETTINGS).close()
    for d, _dirs, files in os.walk(os.path.dirname(home), topdown=False):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)


def write_through_mount(path: str, data: bytes, *, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("store", ["new", "existing"])
def test_power_cut_under_a_mount_keeps_what_fsync_acknowledged(lossy, tmp_path, store):
    fs = lossy()
    home = store_home(fs, store)
    config = tmp_path / "nexus.yaml"  # outside the lossy filesystem: it is no part of the test
    config.write_text("".join(f"{k}: {v}\n" for k, v in SETTINGS.items()))
    m = MountedStore(home, str(tmp_path / "nexus-mnt"), log_path=str(tmp_path / "mount.log"),
                     args=["--config", str(config)])
    acked = {}
    m.start()
    try:
        # a new name made durable by an fsync of its directory (after a rename into place)
        os.mkdir(m.path("dir"))
        write_through_mount(m.path("dir", "tmp"), content("renamed", FILES["renamed"][1]), fsync=True)
        os.rename(m.path("dir", "tmp"), m.path(FILES["renamed"][0].lstrip("/")))
        dfd = os.open(m.path("dir"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        acked["renamed"] = FILES["renamed"]
        # last of the synced ones: no later sync may make up for what their fsync left out
        for key in ("fsynced", "fsynced-inline"):
            path, size = FILES[key]
            write_through_mount(m.path(path.lstrip("/")), content(key, size), fsync=True)
            acked[key] = FILES[key]
        write_through_mount(m.path(FILES["closed"][0].lstrip("/")), content("closed", FILES["closed"][1]), fsync=False)
    finally:
        m.kill()  # the mount dies with the machine
    fs.cut_power()
    lossy()
    check_after_power_cut(home, acked, {"closed": FILES["closed"]})
