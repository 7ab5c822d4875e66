"""Shared fixtures. Every test gets its own store in a temporary directory."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading

import pytest

import nexusfs
from nexusfs.store import Store


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test may touch the real ~/.local/share/nexus."""
    monkeypatch.setenv("NEXUS_HOME", str(tmp_path / "default-home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


class _BackgroundErrors(logging.Handler):
    """Collects log records at ERROR or above made by threads other than the test's own: the
    in-process indexer, the group-commit timer, the grep spawner ... log what goes wrong there
    (nobody to raise to), so an exception in them is otherwise never seen by the test."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.test_thread = threading.get_ident()
        self.entries: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s [%(threadName)s]: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.test_thread:
            self.entries.append(self.format(record))


@pytest.fixture(autouse=True)
def _no_errors_in_background_threads(request):
    """Fail a test whose background threads logged an error (allow what it provokes on
    purpose with ``@pytest.mark.allow_log(regex, ...)``). Uncaught exceptions in threads are
    errors through pyproject's filterwarnings; this catches the caught-and-logged ones."""
    handler = _BackgroundErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    allowed = _allowed_log(request)
    wrong = [e for e in handler.entries if not any(re.search(a, e) for a in allowed)]
    if wrong:
        pytest.fail(f"{len(wrong)} error(s) logged by background threads during the test "
                    "(allow those it provokes with @pytest.mark.allow_log(regex)):\n"
                    + "\n---\n".join(wrong), pytrace=False)


def _allowed_log(request) -> list[str]:
    """The log entries a test provokes on purpose: ``@pytest.mark.allow_log(regex, ...)``
    (on the test, its class or module), for its mounts' logs and its background threads."""
    return [a for m in request.node.iter_markers("allow_log") for a in m.args]


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
from tests import needs  # noqa: E402
from tests.mountutil import MountedStore  # noqa: E402

#: the fixtures that give a test a mount: such a test is a mount test even without the marker
MOUNT_FIXTURES = frozenset({"mnt", "shared_mount", "mdir", "start_mount"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MOUNT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.mount)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Every mount test passes the one guard (tests/needs.py need_mount) before its fixtures
    start anything: a missing FUSE fails it (skips it only if opted out)."""
    if item.get_closest_marker("mount") is not None:
        needs.need_mount()


def _start_mount(tmp_path_factory, name: str, **kw) -> MountedStore:
    needs.need_mount()
    base = tmp_path_factory.mktemp(name)
    # world-readable so permission tests that drop to `nobody` can reach the mountpoint
    os.chmod(base, 0o755)
    m = MountedStore(str(base / "store"), str(base / "mnt"), **kw)
    m.start()
    os.chmod(m.mountpoint, 0o777)
    return m


@pytest.fixture
def mnt(tmp_path_factory, request):
    """A fresh store mounted in a temp dir; always unmounted afterwards, even on failure, and
    then checked to have ended cleanly (MountedStore.check_end: status 0, a log without
    warnings, errors or tracebacks but those allowed by the test's ``allow_log`` marker)."""
    m = _start_mount(tmp_path_factory, "mnt", allow_log=_allowed_log(request))
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory, request):
    """One mount per test module (cheaper); use ``mdir`` for a private directory in it.
    Checked at the end of the module like ``mnt`` (an ``allow_log`` marker on the module
    allows log entries)."""
    m = _start_mount(tmp_path_factory, "shared", allow_log=_allowed_log(request))
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def start_mount(tmp_path_factory, request):
    """Start further mounts in a test: ``start_mount(home=None, mountpoint=None, **kw)``
    (MountedStore's keywords; fresh temp dirs by default). Each passes the mount guard, is
    unmounted at the end of the test and checked to have ended cleanly, as ``mnt`` is."""
    started: list[MountedStore] = []

    def start(home: str | None = None, mountpoint: str | None = None, **kw) -> MountedStore:
        needs.need_mount()
        if home is None or mountpoint is None:
            base = tmp_path_factory.mktemp("mount")
            os.chmod(base, 0o755)
            home = home or str(base / "store")
            mountpoint = mountpoint or str(base / "mnt")
        kw.setdefault("allow_log", _allowed_log(request))
        m = MountedStore(home, mountpoint, **kw)
        started.append(m)
        return m.start()

    try:
        yield start
    finally:
        errors = []
        for m in reversed(started):
            try:
                m.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others first, then report
                errors.append(str(exc))
        assert not errors, "\n\n".join(errors)


@pytest.fixture
def mdir(shared_mount, request):
    """A fresh, world-writable directory on the module's shared mount."""
    path = shared_mount.path(request.node.name.replace("/", "_")[:200])
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


# ------------------------------------------------------------------ skips in CI
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
