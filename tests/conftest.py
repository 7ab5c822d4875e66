"""Shared fixtures. Every test gets its own store in a temporary directory."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

import nexusfs
from nexusfs.store import Store


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test may touch the real ~/.local/share/nexus."""
    monkeypatch.setenv("NEXUS_HOME", str(tmp_path / "default-home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def public_tmp():
    """A temporary directory every user can reach (pytest's own are 0700), for tests that
    act as another user."""
    d = tempfile.mkdtemp(prefix="nexus-public-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def store_dir(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def nx(store_dir):
    """A fresh store through the Python API (small blocks so tests cross block boundaries)."""
    conn = nexusfs.connect(store_dir, block_size=64 * 1024, inline_max=1024, cache_size=1 << 20,
                           dirty_limit=1 << 20, semantic=False)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def analyse_fails(monkeypatch):
    """Make the search indexer fail on contents holding a marker, as a broken extractor would:
    ``analyse_fails(b"poison", RuntimeError("..."))``; ``analyse_fails(None)`` heals it."""
    from nexusfs.search.indexer import Indexer

    real = Indexer.analyse

    def fail_on(marker: bytes | None, error: Exception | None = None) -> None:
        def analyse(self, data, ino):
            if marker in data:
                raise error
            return real(self, data, ino)

        monkeypatch.setattr(Indexer, "analyse", real if marker is None else analyse)

    return fail_on


@pytest.fixture
def store(nx) -> Store:
    """The Store behind ``nx`` (metadata engine, VFS, blob store)."""
    return nx.store


def pytest_report_header(config):
    return f"nexusfs {nexusfs.__version__}, uid {os.getuid()}"


# ---------------------------------------------------------------- mounted tests
from tests.mountutil import MountedStore, fuse_usable  # noqa: E402

_FUSE_PROBLEM = fuse_usable()


def _start_mount(tmp_path_factory, name: str, **kw) -> MountedStore:
    if _FUSE_PROBLEM:
        pytest.skip(f"no FUSE here: {_FUSE_PROBLEM}")
    base = tmp_path_factory.mktemp(name)
    # world-readable so permission tests that drop to `nobody` can reach the mountpoint
    os.chmod(base, 0o755)
    m = MountedStore(str(base / "store"), str(base / "mnt"), **kw)
    m.start()
    os.chmod(m.mountpoint, 0o777)
    return m


@pytest.fixture
def mnt(tmp_path_factory):
    """A fresh store mounted in a temp dir; always unmounted afterwards, even on failure."""
    m = _start_mount(tmp_path_factory, "mnt")
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    """One mount per test module (cheaper); use ``mdir`` for a private directory in it."""
    m = _start_mount(tmp_path_factory, "shared")
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def mdir(shared_mount, request):
    """A fresh, world-writable directory on the module's shared mount."""
    path = shared_mount.path(request.node.name.replace("/", "_")[:200])
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


# ------------------------------------------------------------------ skips in CI
from tests import needs  # noqa: E402

_unexpected_skips: list[str] = []


def pytest_runtest_logreport(report):
    """Remember every skip that is not allowed in CI (see tests/needs.py)."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(needs.ALLOWED_SKIPS):
        _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if needs.strict() and _unexpected_skips and exitstatus in (0, 5):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if needs.strict() and _unexpected_skips:
        terminalreporter.section("unexpected skips (CI is set: each part the tests need must be there)")
        for line in _unexpected_skips:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"{len(_unexpected_skips)} unexpected skip(s): the run fails")
