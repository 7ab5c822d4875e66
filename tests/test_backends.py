"""The local blob store and the retry helper (backends/)."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
import time

import pytest

from backends import (
    BlobNotFound,
    BlobStoreError,
    LocalBlobStore,
    TemporaryStoreError,
    open_blob_store,
    retry,
)
from backends.local import DIRECT_MIN
from tests import needs

KEY = "0123456789abcdef-1"


@pytest.fixture
def blobs(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(str(tmp_path / "blobs"), fsync=False)


def o_direct_works(directory: str) -> bool:
    """Whether the filesystem under ``directory`` takes an O_DIRECT write (tmpfs and some
    others refuse it with EINVAL): what the store must find out for itself."""
    path = os.path.join(directory, "o-direct-probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError as exc:
        assert exc.errno == errno.EINVAL, exc
        return False
    try:
        with mmap.mmap(-1, 4096) as page:  # anonymous maps are page-aligned
            os.write(fd, page)
        return True
    except OSError as exc:
        assert exc.errno == errno.EINVAL, exc
        return False
    finally:
        os.close(fd)
        os.unlink(path)


def need_o_direct(directory: str) -> None:
    if not o_direct_works(directory):
        pytest.skip(f"the filesystem under {directory} refuses O_DIRECT: this test needs one that takes it")


def _files_under(root: str) -> list[str]:
    out = []
    for d, _dirs, files in os.walk(root):
        out.extend(os.path.relpath(os.path.join(d, f), root) for f in files)
    return sorted(out)


# ---------------------------------------------------------------- put / get
def test_put_then_get_returns_the_same_bytes(blobs):
    blobs.put(KEY, b"hello world")
    assert blobs.get(KEY) == b"hello world"


def test_put_accepts_bytearray_and_memoryview(blobs):
    blobs.put("aaaa-1", bytearray(b"from bytearray"))
    blobs.put("bbbb-2", memoryview(b"xxfrom viewxx")[2:-2])
    assert blobs.get("aaaa-1") == b"from bytearray"
    assert blobs.get("bbbb-2") == b"from view"


def test_empty_blob_round_trips(blobs):
    blobs.put("empty-1", b"")
    assert blobs.exists("empty-1")
    assert blobs.get("empty-1") == b""
    assert blobs.stat("empty-1").size == 0


def test_large_blob_round_trips(blobs):
    data = os.urandom(3 << 20)
    blobs.put(KEY, data)
    assert blobs.get(KEY) == data


def test_get_of_missing_key_raises_blob_not_found(blobs):
    with pytest.raises(BlobNotFound) as ei:
        blobs.get("nope-1")
    assert ei.value.key == "nope-1"
    # BlobNotFound is also a KeyError and a BlobStoreError
    assert isinstance(ei.value, KeyError)
    assert isinstance(ei.value, BlobStoreError)


def test_fsync_enabled_store_round_trips(tmp_path):
    s = LocalBlobStore(str(tmp_path / "b"), fsync=True)
    s.put(KEY, b"durable")
    assert s.get(KEY) == b"durable"


# ------------------------------------------------------- O_DIRECT (large blobs)
def _aligned(data: bytes) -> memoryview:
    m = mmap.mmap(-1, max(len(data), 1))
    m[: len(data)] = data
    return memoryview(m)[: len(data)]


@pytest.mark.parametrize("size", [DIRECT_MIN, DIRECT_MIN + 1, (4 << 20) - 4095, 4 << 20, (1 << 20) + 4096 + 17])
@pytest.mark.parametrize("kind", ["bytes", "aligned", "misaligned"])
def test_large_blobs_of_any_length_and_alignment_round_trip(tmp_path, size, kind):
    s = LocalBlobStore(str(tmp_path / "b"), fsync=True)
    data = os.urandom(size)
    src = {"bytes": data, "aligned": _aligned(data), "misaligned": _aligned(b"x" + data)[1:]}[kind]
    s.put(KEY, src)
    assert s.stat(KEY).size == size
    assert s.get(KEY) == data
    # direct writes where the temp dir's filesystem takes them, buffered ones where it refuses
    assert s.direct is o_direct_works(str(tmp_path))
    assert not list(s.list_temporary())


def test_a_filesystem_without_o_direct_gets_buffered_writes(tmp_path, monkeypatch):
    import backends.local as local

    real = local.fcntl.fcntl

    def refuse_direct(fd, cmd, arg=0):
        if cmd == local.fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(local.fcntl, "fcntl", refuse_direct)
    s = LocalBlobStore(str(tmp_path / "b"), fsync=True)
    big, small = os.urandom(DIRECT_MIN * 3 + 5), os.urandom(1000)
    s.put("big-1", _aligned(big))
    assert s.direct is False  # found out once, then buffered writes without trying again
    s.put("big-2", big)
    s.put("small-1", small)
    assert (s.get("big-1"), s.get("big-2"), s.get("small-1")) == (big, big, small)
    assert not list(s.list_temporary())


def test_a_direct_write_error_after_o_direct_worked_fails_the_put_and_keeps_the_old_blob(tmp_path, monkeypatch):
    import backends.local as local

    need_o_direct(str(tmp_path))
    s = LocalBlobStore(str(tmp_path / "b"), fsync=False)
    old = os.urandom(DIRECT_MIN)
    s.put(KEY, old)
    assert s.direct is True

    def fail(fd, view):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(local, "_write_all", fail)
    with pytest.raises(OSError) as ei:
        s.put(KEY, os.urandom(DIRECT_MIN))
    assert ei.value.errno == errno.EIO
    assert s.get(KEY) == old
    assert s.direct is True
    assert not list(s.list_temporary())


# ---------------------------------------------------------------- get_range
def test_get_range_returns_the_requested_slice(blobs):
    data = bytes(range(256)) * 4
    blobs.put(KEY, data)
    assert blobs.get_range(KEY, 0, 10) == data[:10]
    assert blobs.get_range(KEY, 100, 50) == data[100:150]


def test_get_range_is_short_at_the_end_of_the_blob(blobs):
    blobs.put(KEY, b"0123456789")
    assert blobs.get_range(KEY, 7, 100) == b"789"
    assert blobs.get_range(KEY, 10, 5) == b""
    assert blobs.get_range(KEY, 50, 5) == b""


def test_get_range_of_missing_key_raises_blob_not_found(blobs):
    with pytest.raises(BlobNotFound):
        blobs.get_range("nope-1", 0, 1)


# ------------------------------------------------------------ delete/exists
def test_delete_removes_the_blob_and_reports_whether_it_existed(blobs):
    blobs.put(KEY, b"x")
    assert blobs.exists(KEY)
    assert blobs.delete(KEY) is True
    assert not blobs.exists(KEY)
    assert blobs.delete(KEY) is False
    with pytest.raises(BlobNotFound):
        blobs.get(KEY)


def test_exists_is_false_for_never_written_key(blobs):
    assert blobs.exists("abcdef-9") is False


# -------------------------------------------------------------------- stat
def test_stat_reports_size_and_mtime(blobs):
    blobs.put(KEY, b"12345")
    info = blobs.stat(KEY)
    assert info.key == KEY
    assert info.size == 5
    path = os.path.join(blobs.root, KEY[:2], KEY[2:4], KEY)
    assert info.mtime == pytest.approx(os.stat(path).st_mtime)


def test_stat_of_missing_key_raises_blob_not_found(blobs):
    with pytest.raises(BlobNotFound):
        blobs.stat("nope-1")


# -------------------------------------------------------------------- list
def test_list_yields_every_blob_with_its_size(blobs):
    want = {f"{i:04x}cafe-{i}": os.urandom(i * 3) for i in range(1, 40)}
    for k, v in want.items():
        blobs.put(k, v)
    got = {info.key: info.size for info in blobs.list()}
    assert got == {k: len(v) for k, v in want.items()}


def test_list_with_prefix_yields_only_matching_keys(blobs):
    keys = ["ab01-1", "ab02-2", "abcd-3", "abce-4", "ba00-5", "a-6"]
    for k in keys:
        blobs.put(k, b"x")
    for prefix in ["", "a", "ab", "ab0", "abc", "abcd", "abcd-", "b", "zz"]:
        got = sorted(i.key for i in blobs.list(prefix))
        assert got == sorted(k for k in keys if k.startswith(prefix)), prefix


def test_list_of_empty_store_is_empty(blobs):
    assert list(blobs.list()) == []


# ---------------------------------------------------------------- layout
def test_blobs_land_in_two_level_fan_out_directories(blobs):
    blobs.put("abcdef0123-7", b"data")
    assert _files_under(blobs.root) == [os.path.join("ab", "cd", "abcdef0123-7")]


def test_short_keys_are_padded_into_fan_out_directories(blobs):
    blobs.put("a", b"1")
    blobs.put("abc", b"2")
    assert blobs.get("a") == b"1"
    assert blobs.get("abc") == b"2"
    for rel in _files_under(blobs.root):
        assert rel.count(os.sep) == 2  # ROOT/xx/yy/KEY
    assert sorted(i.key for i in blobs.list()) == ["a", "abc"]


# ------------------------------------------------------------ overwrite
def test_put_over_an_existing_key_replaces_it_whole(blobs):
    blobs.put(KEY, b"A" * 100_000)
    blobs.put(KEY, b"short")
    assert blobs.get(KEY) == b"short"
    assert blobs.stat(KEY).size == 5
    assert len(list(blobs.list())) == 1
    assert list(blobs.list_temporary()) == []


def test_concurrent_overwrites_never_expose_a_torn_blob(blobs):
    a, b = b"a" * (1 << 20), b"b" * (1 << 20)
    blobs.put(KEY, a)
    writing = threading.Event()
    stop = threading.Event()
    seen: set[bytes] = set()
    reads_while_writing = 0
    errors: list[BaseException] = []

    def reader():
        nonlocal reads_while_writing
        try:
            while not stop.is_set():
                data = blobs.get(KEY)
                seen.add(data[:1] + data[-1:] + bytes([len(set(data))]) + len(data).to_bytes(4, "big"))
                reads_while_writing += writing.is_set()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    writing.set()
    try:
        # at least 30 overwrites, and on until the reader has read during 20 of them
        deadline = time.monotonic() + 120
        i = 0
        while i < 30 or reads_while_writing < 20:
            assert time.monotonic() < deadline, f"the reader read only {reads_while_writing} times"
            blobs.put(KEY, a if i % 2 else b)
            i += 1
    finally:
        stop.set()
        t.join()
    assert not errors
    n = (1 << 20).to_bytes(4, "big")
    assert seen, "the reader never read the blob"
    assert seen <= {b"aa\x01" + n, b"bb\x01" + n}


def test_a_failed_put_keeps_the_old_blob_and_leaves_no_temp_file(blobs):
    blobs.put(KEY, b"old content")

    class BadBuffer:
        """Something memoryview() accepts nothing of: the write fails midway."""

    with pytest.raises(TypeError):
        blobs.put(KEY, BadBuffer())  # type: ignore[arg-type]
    assert blobs.get(KEY) == b"old content"
    assert list(blobs.list_temporary()) == []


# ------------------------------------------------------------ invalid keys
@pytest.mark.parametrize(
    "key",
    ["", ".", "..", ".tmp-abc", ".hidden-1", "a/b", "../escape", "with space", "nul\0byte", "ü-1", "x" * 201, "a\\b", "k\n"],
)
def test_invalid_keys_are_rejected(blobs, key):
    with pytest.raises(ValueError):
        blobs.put(key, b"x")
    with pytest.raises(ValueError):
        blobs.get(key)
    with pytest.raises(ValueError):
        blobs.exists(key)
    with pytest.raises(ValueError):
        blobs.delete(key)
    assert _files_under(blobs.root) == []


def test_keys_of_allowed_characters_are_accepted(blobs):
    key = "Az09._-" + "x" * 193  # 200 characters, the maximum
    blobs.put(key, b"ok")
    assert blobs.get(key) == b"ok"


# ------------------------------------------------------------ temp files
def test_temp_files_of_an_interrupted_put_are_not_listed_as_blobs(blobs):
    blobs.put("abcd0000-1", b"real")
    d = os.path.join(blobs.root, "ab", "cd")
    leftover = os.path.join(d, ".tmp-interrupted")
    with open(leftover, "wb") as f:
        f.write(b"half a blob")
    assert [i.key for i in blobs.list()] == ["abcd0000-1"]
    assert [i.key for i in blobs.list("abcd")] == ["abcd0000-1"]
    assert list(blobs.list_temporary()) == [leftover]


def test_list_temporary_finds_temp_files_in_every_fan_out_directory(blobs):
    for key in ("aaaa-1", "bbbb-2"):
        blobs.put(key, b"x")
    made = set()
    for sub in (("aa", "aa"), ("bb", "bb")):
        p = os.path.join(blobs.root, *sub, ".tmp-x" + sub[0])
        open(p, "wb").close()
        made.add(p)
    assert set(blobs.list_temporary()) == made


# ------------------------------------------------------------ misc
def test_open_blob_store_understands_file_urls_and_plain_paths(tmp_path):
    a = open_blob_store("file://" + str(tmp_path / "a"))
    b = open_blob_store(str(tmp_path / "b"))
    assert isinstance(a, LocalBlobStore) and a.root == str(tmp_path / "a")
    assert isinstance(b, LocalBlobStore) and b.root == str(tmp_path / "b")
    with pytest.raises(BlobStoreError, match="unsupported"):
        open_blob_store("gopher://x/y")


def test_capacity_reports_total_and_free_bytes(blobs):
    cap = blobs.capacity()
    assert cap is not None
    total, free = cap
    assert total > 0 and 0 <= free <= total


# ------------------------------------------------------------------- retry
def test_retry_returns_the_result_after_temporary_failures():
    calls = []

    def op():
        calls.append(1)
        if len(calls) < 3:
            raise TemporaryStoreError("try again")
        return "done"

    assert retry(op, base_delay=0) == "done"
    assert len(calls) == 3


def test_retry_gives_up_after_the_last_attempt():
    calls = []

    def op():
        calls.append(1)
        raise TemporaryStoreError("still failing")

    with pytest.raises(TemporaryStoreError):
        retry(op, attempts=4, base_delay=0)
    assert len(calls) == 4


@pytest.mark.parametrize("exc", [BlobStoreError("fatal"), BlobNotFound("k"), ValueError("bug"), OSError(5, "io")])
def test_retry_does_not_retry_other_errors(exc):
    calls = []

    def op():
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        retry(op, base_delay=0)
    assert len(calls) == 1


def test_retry_uses_a_custom_temporary_predicate():
    calls = []

    def op():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("flaky")
        return 42

    assert retry(op, base_delay=0, is_temporary=lambda e: isinstance(e, ConnectionError)) == 42
    assert len(calls) == 2


def test_retry_of_a_successful_call_runs_it_once():
    calls = []
    assert retry(lambda: calls.append(1) or "x") == "x"
    assert calls == [1]


# ------------------------------------------------------------ privacy
@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_directories_blobs_and_temp_files_are_private_whatever_the_umask(tmp_path, monkeypatch, umask):
    import backends.local as local

    seen = []
    real_rename = os.rename

    def rename(src, dst):  # the temporary file, just before it becomes the blob
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return real_rename(src, dst)

    monkeypatch.setattr(local.os, "rename", rename)
    old = os.umask(umask)
    try:
        s = LocalBlobStore(str(tmp_path / "new" / "blobs"), fsync=False)
        s.put(KEY, b"private")
        s.put("abcd0000-2", os.urandom(DIRECT_MIN + 5))
    finally:
        os.umask(old)
    assert seen == [0o600, 0o600]
    modes = {os.path.relpath(d, s.root): stat.S_IMODE(os.stat(d).st_mode) for d, _s, _f in os.walk(s.root)}
    assert modes == {".": 0o700, "01": 0o700, "01/23": 0o700, "ab": 0o700, "ab/cd": 0o700}
    for f in _files_under(s.root):
        assert stat.S_IMODE(os.stat(os.path.join(s.root, f)).st_mode) == 0o600


@needs.root_only("giving files away needs root")
def test_root_gives_what_it_creates_to_the_owner_of_the_blob_directory(tmp_path):
    root = tmp_path / "blobs"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    s = LocalBlobStore(str(root), fsync=False)
    s.put(KEY, b"for nobody")
    for d, _dirs, files in os.walk(root):
        for p in [d] + [os.path.join(d, f) for f in files]:
            assert (os.stat(p).st_uid, os.stat(p).st_gid) == (65534, 65534), p


def test_a_filesystem_without_locks_still_stores_blobs_and_keeps_its_temp_files(blobs, monkeypatch):
    import backends.local as local

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(local.fcntl, "flock", no_locks)
    blobs.put(KEY, b"stored anyway")
    assert blobs.get(KEY) == b"stored anyway"
    leftover = os.path.join(blobs.root, "01", "23", ".tmp-unknown")
    open(leftover, "wb").close()
    assert list(blobs.stale_temporary()) == []  # no telling whether a put is writing it
    assert blobs.remove_stale_temporary() == (0, 0)
    assert os.path.exists(leftover)
