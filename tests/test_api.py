"""The Python API: ``nexusfs.connect`` and the path-based ``Nexus`` object."""

from __future__ import annotations

import errno
import io
import os
import random
import re
import stat
import subprocess
import threading

import pytest

import nexusfs
from nexusfs import ConfigError, FsError, NexusError
from tests.oracles import assert_fsck_clean, gnu_grep, pattern
from tests.search_helpers import py_glob

BS = 64 * 1024


# ================================================================== connect & config
def test_connect_without_arguments_uses_nexus_home(tmp_path):
    home = tmp_path / "default-home"  # set by conftest's autouse fixture
    with nexusfs.connect() as nx:
        nx.write_bytes("/hello.txt", b"hi")
        assert nx.config.home == str(home)
    assert (home / "meta.db").exists()
    assert (home / "blobs").is_dir()
    with nexusfs.connect() as nx:
        assert nx.read_bytes("/hello.txt") == b"hi"


def test_connect_without_nexus_home_uses_the_xdg_data_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXUS_HOME")
    with nexusfs.connect() as nx:
        assert nx.config.home == str(tmp_path / "xdg" / "nexus")


def test_connect_with_a_path_creates_the_store_there(tmp_path):
    where = tmp_path / "somewhere" / "store"
    with nexusfs.connect(str(where)) as nx:
        nx.write_text("/a.txt", "text")
    assert (where / "meta.db").exists()
    assert not (tmp_path / "default-home").exists()
    with nexusfs.connect(str(where)) as nx:
        assert nx.read_text("/a.txt") == "text"


def test_connect_with_create_false_refuses_a_missing_store(tmp_path):
    with pytest.raises(NexusError, match="no nexusfs store"):
        nexusfs.connect(str(tmp_path / "absent"), create=False)
    assert not (tmp_path / "absent" / "meta.db").exists()


def test_connect_with_a_config_file(tmp_path):
    cfg = tmp_path / "conf" / "nexus.yaml"
    cfg.parent.mkdir()
    cfg.write_text(
        "home: data/store\n"
        "block_size: 128KiB\n"
        "inline_max: 2KiB\n"
        "compression: none\n"
        "cache_size: 8MiB\n"
        "dirty_limit: 4MiB\n"
        "threads: 3\n"
        "gc_grace: 10m\n"
        "verify_reads: no\n"
    )
    with nexusfs.connect(config_file=str(cfg)) as nx:
        c = nx.config
        assert c.home == str(tmp_path / "conf" / "data" / "store")  # relative to the file
        assert c.block_size == 128 * 1024 and nx.meta.block_size == 128 * 1024
        assert c.inline_max == 2048 and nx.meta.inline_max == 2048
        assert c.cache_size == 8 << 20 and c.dirty_limit == 4 << 20
        assert c.threads == 3 and c.gc_grace == 600.0 and c.verify_reads is False
        assert c.source == str(cfg)
        nx.write_bytes("/f", b"a" * 5000)
        info = nx.info()
        assert info.compression == "none" and info.block_size == 128 * 1024
        assert info.stored_bytes == 5000  # stored raw: compression is off
    assert (tmp_path / "conf" / "data" / "store" / "meta.db").exists()


def test_keyword_settings_override_the_config_file(tmp_path):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("home: s\nthreads: 2\n")
    with nexusfs.connect(config_file=str(cfg), threads=5) as nx:
        assert nx.config.threads == 5
        assert nx.config.home == str(tmp_path / "s")


def test_empty_config_file_means_defaults(tmp_path):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("# nothing here\n")
    with nexusfs.connect(config_file=str(cfg)) as nx:
        assert nx.config.home == str(tmp_path / "default-home")
        assert nx.config.block_size == 4 << 20


def test_config_file_with_invalid_yaml_is_a_config_error(tmp_path):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("home: ok\nblock_size: [unclosed\nthreads: 2\n")
    with pytest.raises(ConfigError) as ei:
        nexusfs.connect(config_file=str(cfg))
    msg = str(ei.value)
    assert str(cfg) in msg and "not valid YAML" in msg and "line" in msg
    assert "\n" not in msg  # one line, no traceback text


def test_config_file_with_an_unknown_setting_is_a_config_error(tmp_path):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("blok_size: 1MiB\n")
    with pytest.raises(ConfigError) as ei:
        nexusfs.connect(config_file=str(cfg))
    assert "unknown setting" in str(ei.value) and "blok_size" in str(ei.value)
    assert str(cfg) in str(ei.value)


def test_unknown_keyword_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown setting 'frobnicate'"):
        nexusfs.connect(frobnicate=1)


@pytest.mark.parametrize(
    "body, words",
    [
        ("block_size: huge\n", ["block_size", "huge"]),
        ("block_size: 3MiB\n", ["block_size", "power of two"]),
        ("threads: many\n", ["threads", "many"]),
        ("gc_grace: soon\n", ["gc_grace", "soon"]),
        ("verify_reads: maybe\n", ["verify_reads", "maybe"]),
        ("compression: lz4\n", ["compression", "lz4"]),
        ("- a\n- b\n", ["mapping"]),
    ],
)
def test_bad_setting_values_are_config_errors_naming_the_setting(tmp_path, body, words):
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text(body)
    with pytest.raises(ConfigError) as ei:
        nexusfs.connect(config_file=str(cfg))
    for w in words:
        assert w in str(ei.value)


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        nexusfs.connect(config_file=str(tmp_path / "nope.yaml"))


def test_block_size_is_fixed_when_the_store_is_created(tmp_path):
    where = str(tmp_path / "s")
    with nexusfs.connect(where, block_size=128 * 1024) as nx:
        nx.write_bytes("/f", pattern(300_000))
    with nexusfs.connect(where, block_size=1 << 20) as nx:
        assert nx.meta.block_size == 128 * 1024
        assert nx.read_bytes("/f") == pattern(300_000)


def test_dirty_limit_is_checked_against_the_stores_own_block_size(tmp_path):
    where = str(tmp_path / "s")
    with nexusfs.connect(where, block_size=64 * 1024) as nx:
        nx.write_bytes("/f", b"x")
    # the default block_size (4 MiB) only applies to new stores: a small dirty limit is fine here
    with nexusfs.connect(where, dirty_limit=256 * 1024) as nx:
        assert nx.read_bytes("/f") == b"x"
    with pytest.raises(ConfigError, match="dirty_limit"):
        nexusfs.connect(str(tmp_path / "new"), block_size=1 << 20, dirty_limit=512 * 1024)
    with nexusfs.connect(str(tmp_path / "new"), block_size=1 << 20) as nx:  # nothing was created
        assert nx.meta.block_size == 1 << 20
    with pytest.raises(ConfigError, match="dirty_limit"):
        nexusfs.connect(where, dirty_limit=1024)


def test_context_manager_closes_and_commits_open_files(tmp_path):
    where = str(tmp_path / "s")
    with nexusfs.connect(where) as nx:
        f = nx.open("/left-open", "wb", buffering=0)
        f.write(b"committed by close")
    assert nx.store._closed  # noqa: SLF001
    with nexusfs.connect(where) as nx2:
        assert nx2.read_bytes("/left-open") == b"committed by close"
        assert_fsck_clean(nx2)


def test_using_a_closed_connection_is_a_clear_store_error(tmp_path):
    with nexusfs.connect(str(tmp_path / "s")) as nx:
        nx.write_bytes("/f", b"x")
    for op in (lambda: nx.read_bytes("/f"), lambda: nx.mkdir("/d"), lambda: nx.list("/"),
               lambda: nx.write_bytes("/g", b"y")):
        with pytest.raises(nexusfs.StoreError, match="closed"):
            op()


def test_close_is_idempotent(tmp_path):
    nx = nexusfs.connect(str(tmp_path / "s"))
    nx.close()
    nx.close()


# ================================================================== bytes & text
def test_write_and_read_bytes_and_text(nx):
    assert nx.write_bytes("/b", b"\x00\x01binary") == 8
    assert nx.read_bytes("/b") == b"\x00\x01binary"
    nx.write_text("/t", "héllo wörld\n")
    assert nx.read_text("/t") == "héllo wörld\n"
    assert nx.read_bytes("/t") == "héllo wörld\n".encode()
    nx.write_text("/latin", "héllo", encoding="latin-1")
    assert nx.read_bytes("/latin") == b"h\xe9llo"
    assert nx.read_text("/latin", encoding="latin-1") == "héllo"


def test_write_bytes_replaces_the_whole_content(nx):
    nx.write_bytes("/f", pattern(3 * BS))
    nx.write_bytes("/f", b"short")
    assert nx.read_bytes("/f") == b"short"


def test_write_bytes_with_parents_creates_directories(nx):
    nx.write_bytes("/a/b/c/file", b"deep", parents=True)
    assert nx.read_bytes("/a/b/c/file") == b"deep"
    assert nx.is_dir("/a/b")


def test_write_bytes_without_parent_is_enoent(nx):
    with pytest.raises(FsError) as ei:
        nx.write_bytes("/missing/file", b"x")
    assert ei.value.errno == errno.ENOENT
    assert "/missing/file" in str(ei.value)


def test_read_bytes_of_missing_file_is_enoent(nx):
    with pytest.raises(FsError) as ei:
        nx.read_bytes("/nope")
    assert ei.value.errno == errno.ENOENT
    assert isinstance(ei.value, OSError)


def test_read_bytes_of_a_directory_is_eisdir(nx):
    nx.mkdir("/d")
    with pytest.raises(FsError) as ei:
        nx.read_bytes("/d")
    assert ei.value.errno == errno.EISDIR


def test_append_bytes(nx):
    nx.append_bytes("/log", b"one\n")
    nx.append_bytes("/log", b"two\n")
    assert nx.read_bytes("/log") == b"one\ntwo\n"


def test_paths_are_normalized(nx):
    nx.mkdir("/d")
    nx.mkdir("/d/x")
    nx.write_bytes("d//x/../f", b"data")  # relative, doubled slash, '..'
    assert nx.read_bytes("/d/f") == b"data"
    with pytest.raises(FsError) as exc:  # '..' is walked, not cut out: a missing name stays missing
        nx.read_bytes("/d/nope/../f")
    assert exc.value.errno == errno.ENOENT
    assert nx.read_bytes(b"/d/./f") == b"data"
    assert nx.list("/d") == ["/d/f", "/d/x"]


def test_non_utf8_names_round_trip(nx):
    name = b"/caf\xe9"  # latin-1 bytes
    nx.write_bytes(name, b"x")
    assert nx.read_bytes(name) == b"x"
    listed = nx.listdir("/")
    assert len(listed) == 1
    assert listed[0].encode("utf-8", "surrogateescape") == b"caf\xe9"


# ================================================================== open modes
def test_open_rb_reads_and_refuses_writes(nx):
    nx.write_bytes("/f", b"content")
    with nx.open("/f", "rb") as f:
        assert f.read() == b"content"
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")


def test_open_wb_creates_and_truncates(nx):
    with nx.open("/f", "wb") as f:
        f.write(b"first version, long")
    with nx.open("/f", "wb") as f:
        f.write(b"second")
    assert nx.read_bytes("/f") == b"second"


def test_open_ab_appends_even_after_seek(nx):
    nx.write_bytes("/f", b"start")
    with nx.open("/f", "ab") as f:
        f.seek(0)
        f.write(b"+end")
    assert nx.read_bytes("/f") == b"start+end"


def test_open_ab_creates_missing_file(nx):
    with nx.open("/new", "ab") as f:
        f.write(b"x")
    assert nx.read_bytes("/new") == b"x"


def test_open_r_plus_b_reads_and_writes_without_truncating(nx):
    nx.write_bytes("/f", b"0123456789")
    with nx.open("/f", "r+b") as f:
        assert f.read(3) == b"012"
        f.write(b"abc")
        f.seek(0)
        assert f.read() == b"012abc6789"
    assert nx.read_bytes("/f") == b"012abc6789"


def test_open_r_plus_b_of_missing_file_is_enoent(nx):
    with pytest.raises(FsError) as ei:
        nx.open("/nope", "r+b")
    assert ei.value.errno == errno.ENOENT


def test_open_xb_creates_only_new_files(nx):
    with nx.open("/f", "xb") as f:
        f.write(b"exclusive")
    with pytest.raises(FsError) as ei:
        nx.open("/f", "xb")
    assert ei.value.errno == errno.EEXIST
    assert nx.read_bytes("/f") == b"exclusive"


def test_open_w_plus_b_truncates_and_reads_back(nx):
    nx.write_bytes("/f", b"old")
    with nx.open("/f", "w+b") as f:
        f.write(b"new data")
        f.seek(0)
        assert f.read() == b"new data"


def test_open_text_modes(nx):
    with nx.open("/t", "w", encoding="utf-8") as f:
        f.write("line one\nline twö\n")
    with nx.open("/t", "a") as f:
        f.write("line three\n")
    with nx.open("/t", "r") as f:
        assert f.readlines() == ["line one\n", "line twö\n", "line three\n"]
    with nx.open("/t", "rt") as f:
        assert f.readline() == "line one\n"


def test_open_with_invalid_mode_is_value_error(nx):
    for mode in ("", "rw", "z", "rbb", "r+w"):
        with pytest.raises(ValueError):
            nx.open("/f", mode)


def test_open_of_a_directory_is_eisdir(nx):
    nx.mkdir("/d")
    for mode in ("rb", "wb", "ab"):
        with pytest.raises(FsError) as ei:
            nx.open("/d", mode)
        assert ei.value.errno == errno.EISDIR


def test_open_unbuffered_returns_the_raw_file(nx):
    with nx.open("/f", "wb", buffering=0) as f:
        assert isinstance(f, nexusfs.NexusFile)
        assert f.write(b"raw") == 3
    with pytest.raises(ValueError):
        nx.open("/f", "r", buffering=0)


def test_open_mode_bits_and_umask(nx):
    with nx.open("/f", "wb", mode_bits=0o640):
        pass
    assert nx.stat("/f").permissions == 0o640 & ~nx.umask
    nx.write_bytes("/g", b"x", mode=0o600)
    assert nx.stat("/g").permissions == 0o600


def test_operations_on_a_closed_file_fail(nx):
    f = nx.open("/f", "wb", buffering=0)
    f.close()
    with pytest.raises(ValueError):
        f.write(b"x")
    f.close()  # closing twice is fine


# ================================================================== seek/tell/truncate
def test_seek_and_tell(nx):
    nx.write_bytes("/f", b"0123456789")
    with nx.open("/f", "rb") as f:
        assert f.seek(4) == 4 and f.tell() == 4
        assert f.read(2) == b"45"
        assert f.seek(-3, io.SEEK_END) == 7
        assert f.read() == b"789"
        f.seek(2)
        assert f.seek(3, io.SEEK_CUR) == 5
        assert f.read(1) == b"5"
        assert f.seek(100) == 100
        assert f.read() == b""


def test_seek_to_a_negative_position_fails(nx):
    nx.write_bytes("/f", b"abc")
    with nx.open("/f", "rb", buffering=0) as f:
        with pytest.raises(OSError) as ei:
            f.seek(-1)
        assert ei.value.errno == errno.EINVAL


def test_write_after_seek_past_the_end_fills_with_zeros(nx):
    with nx.open("/f", "wb") as f:
        f.write(b"ab")
        f.seek(BS + 10)
        f.write(b"cd")
    assert nx.read_bytes("/f") == b"ab" + bytes(BS + 8) + b"cd"


def test_file_truncate_at_position_and_to_size(nx):
    nx.write_bytes("/f", pattern(3 * BS))
    with nx.open("/f", "r+b") as f:
        f.seek(BS + 7)
        assert f.truncate() == BS + 7
        assert f.seek(0, io.SEEK_END) == BS + 7
        assert f.truncate(5) == 5
        f.seek(0)
        assert f.read() == pattern(3 * BS)[:5]
        f.truncate(20)
        f.seek(0)
        assert f.read() == pattern(3 * BS)[:5] + bytes(15)
    assert nx.stat("/f").size == 20


def test_truncate_through_the_api(nx):
    nx.write_bytes("/f", b"0123456789")
    nx.truncate("/f", 4)
    assert nx.read_bytes("/f") == b"0123"
    nx.truncate("/f", 6)
    assert nx.read_bytes("/f") == b"0123\0\0"


def test_buffered_reads_in_small_pieces(nx):
    data = pattern(3 * BS + 99)
    nx.write_bytes("/f", data)
    out = bytearray()
    with nx.open("/f", "rb") as f:
        while chunk := f.read(1000):
            out += chunk
    assert bytes(out) == data
    with nx.open("/f", "rb") as f:
        buf = bytearray(5000)
        f.seek(BS - 2500)
        assert f.readinto(buf) == 5000
        assert bytes(buf) == data[BS - 2500 : BS + 2500]


# ================================================================== directories
def test_mkdir_and_exist_ok(nx):
    nx.mkdir("/d")
    assert nx.is_dir("/d")
    with pytest.raises(FsError) as ei:
        nx.mkdir("/d")
    assert ei.value.errno == errno.EEXIST
    nx.mkdir("/d", exist_ok=True)


def test_mkdir_exist_ok_still_fails_on_a_file(nx):
    nx.write_bytes("/f", b"x")
    with pytest.raises(FsError) as ei:
        nx.mkdir("/f", exist_ok=True)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(FsError) as ei:
        nx.mkdir("/f/sub", parents=True)
    assert ei.value.errno == errno.ENOTDIR
    assert nx.is_file("/f")


# the kernel's limits (linux/limits.h): a name of at most 255 bytes, a path of at most
# 4095 (4096 with its final NUL); beyond them ENAMETOOLONG, before anything is created
LONG_PATH = "/" + "/".join(["d" * 200] * 25)  # 5,025 bytes of names no longer than 200


@pytest.mark.parametrize("op", ["write_bytes", "mkdir", "stat", "read_bytes", "rename", "symlink"])
def test_a_path_longer_than_path_max_is_enametoolong(nx, op):
    nx.write_bytes("/f", b"x")
    calls = {
        "write_bytes": lambda: nx.write_bytes(LONG_PATH, b"x", parents=True),
        "mkdir": lambda: nx.mkdir(LONG_PATH, parents=True),
        "stat": lambda: nx.stat(LONG_PATH),
        "read_bytes": lambda: nx.read_bytes(LONG_PATH),
        "rename": lambda: nx.rename("/f", LONG_PATH),
        "symlink": lambda: nx.symlink("/f", LONG_PATH),
    }
    with pytest.raises(FsError) as ei:
        calls[op]()
    assert ei.value.errno == errno.ENAMETOOLONG
    assert nx.list("/", recursive=True) == ["/f"]


def test_a_name_longer_than_name_max_is_enametoolong(nx):
    for call in (lambda: nx.write_bytes("/" + "n" * 256, b"x"), lambda: nx.mkdir("/d/" + "n" * 256, parents=True),
                 lambda: nx.stat("/" + "n" * 256)):
        with pytest.raises(FsError) as ei:
            call()
        assert ei.value.errno == errno.ENAMETOOLONG
    assert nx.list("/", recursive=True) == []
    nx.write_bytes("/" + "n" * 255, b"x")  # the longest name there may be
    assert nx.read_bytes("/" + "n" * 255) == b"x"


def test_the_longest_path_there_may_be(nx):
    longest = "/" + "/".join(["p" * 255] * 15) + "/" + "f" * 254
    assert len(longest.encode()) == 4095
    nx.write_bytes(longest, b"deep", parents=True)
    assert nx.read_bytes(longest) == b"deep"
    with pytest.raises(FsError) as ei:
        nx.write_bytes(longest + "x", b"one byte too long")
    assert ei.value.errno == errno.ENAMETOOLONG
    assert not nx.exists(longest[:-1])


def test_mkdir_without_parents_is_enoent(nx):
    with pytest.raises(FsError) as ei:
        nx.mkdir("/a/b")
    assert ei.value.errno == errno.ENOENT
    assert not nx.exists("/a")


def test_mkdir_parents_creates_every_level(nx):
    nx.mkdir("/a/b/c/d", parents=True)
    assert nx.is_dir("/a/b/c/d")
    nx.mkdir("/a/b/c/d", parents=True)  # existing: fine with parents
    assert nx.stat("/a").nlink == 3


def test_mkdir_mode_applies_the_umask(nx):
    nx.mkdir("/d", mode=0o777)
    assert nx.stat("/d").permissions == 0o777 & ~nx.umask


def test_mkdir_of_root(nx):
    with pytest.raises(FsError) as ei:
        nx.mkdir("/")
    assert ei.value.errno == errno.EEXIST
    nx.mkdir("/", exist_ok=True)


def test_rmdir(nx):
    nx.mkdir("/d/sub", parents=True)
    with pytest.raises(FsError) as ei:
        nx.rmdir("/d")
    assert ei.value.errno == errno.ENOTEMPTY
    nx.rmdir("/d/sub")
    nx.rmdir("/d")
    assert not nx.exists("/d")
    nx.write_bytes("/f", b"x")
    with pytest.raises(FsError) as ei:
        nx.rmdir("/f")
    assert ei.value.errno == errno.ENOTDIR


def test_delete_of_a_file_and_missing_ok(nx):
    nx.write_bytes("/f", b"x")
    nx.delete("/f")
    assert not nx.exists("/f")
    with pytest.raises(FsError) as ei:
        nx.delete("/f")
    assert ei.value.errno == errno.ENOENT
    nx.delete("/f", missing_ok=True)


def test_delete_of_a_directory_needs_recursive(nx):
    nx.write_bytes("/d/f", b"x", parents=True)
    with pytest.raises(FsError) as ei:
        nx.delete("/d")
    assert ei.value.errno == errno.EISDIR
    assert nx.exists("/d/f")


def test_delete_recursive_removes_a_whole_tree(nx, store):
    for i in range(5):
        nx.write_bytes(f"/t/a{i}/b/file{i}", pattern(BS + i, i), parents=True)
    nx.symlink("/t/a0", "/t/link")
    nx.write_bytes("/keep", b"keep")
    nx.delete("/t", recursive=True)
    assert nx.list("/", recursive=True) == ["/keep"]
    assert nx.stat("/").nlink == 2
    assert nx.info().unreferenced_objects == nx.info().objects
    assert_fsck_clean(nx)


def test_delete_recursive_of_the_root_empties_the_store(nx):
    nx.write_bytes("/a/b", b"x", parents=True)
    nx.write_bytes("/c", b"y")
    nx.delete("/", recursive=True)
    assert nx.list("/") == []
    assert nx.exists("/")


def test_delete_of_a_symlink_to_a_directory_keeps_the_directory(nx):
    nx.write_bytes("/real/f", b"x", parents=True)
    nx.symlink("/real", "/link")
    nx.delete("/link", recursive=True)
    assert not nx.exists("/link")
    assert nx.read_bytes("/real/f") == b"x"


# ================================================================== list & stat
def test_list_is_sorted_and_optionally_recursive(nx):
    for p in ["/b/y", "/a/x", "/a/sub/z", "/c"]:
        nx.write_bytes(p, b"", parents=True)
    assert nx.list("/") == ["/a", "/b", "/c"]
    assert nx.list("/a") == ["/a/sub", "/a/x"]
    assert nx.list("/", recursive=True) == ["/a", "/a/sub", "/a/sub/z", "/a/x", "/b", "/b/y", "/c"]
    assert sorted(nx.listdir("/a")) == ["sub", "x"]


def test_list_with_attrs(nx):
    nx.write_bytes("/d/f", b"12345", parents=True)
    nx.symlink("f", "/d/s")
    infos = nx.list("/d", attrs=True)
    assert [i.path for i in infos] == ["/d/f", "/d/s"]
    f, s = infos
    assert f.type == "file" and f.size == 5 and f.is_file
    assert s.type == "symlink" and s.target == "f"


def test_list_of_a_file_is_enotdir_and_of_missing_is_enoent(nx):
    nx.write_bytes("/f", b"")
    with pytest.raises(FsError) as ei:
        nx.list("/f")
    assert ei.value.errno == errno.ENOTDIR
    with pytest.raises(FsError) as ei:
        nx.list("/missing")
    assert ei.value.errno == errno.ENOENT


def test_list_of_a_large_directory_returns_every_entry(nx):
    names = {f"/big/f{i:04d}" for i in range(2500)}
    nx.write_many({p: b"" for p in names})
    assert set(nx.list("/big")) == names


def test_stat_fields(nx):
    nx.write_bytes("/f", pattern(BS + 10), mode=0o640)
    st = nx.stat("/f")
    assert st.path == "/f"
    assert st.type == "file" and st.is_file and not st.is_dir
    assert st.size == BS + 10
    assert stat.S_ISREG(st.mode) and st.permissions == 0o640 & ~nx.umask
    assert st.uid == os.getuid() and st.gid == os.getgid()
    assert st.nlink == 1
    assert st.ino > 1
    assert st.blocks == (BS + 10 + 511) // 512
    assert st.btime_ns <= st.mtime_ns <= st.ctime_ns
    assert st.mtime == st.mtime_ns / 1e9
    assert st.target is None
    d = nx.stat("/")
    assert d.type == "dir" and d.is_dir and d.ino == 1 and d.nlink == 2


def test_stat_of_a_symlink_with_and_without_following(nx):
    nx.write_bytes("/target", b"12345")
    nx.symlink("target", "/link")
    st = nx.stat("/link")
    assert st.type == "file" and st.size == 5
    lst = nx.stat("/link", follow_symlinks=False)
    assert lst.type == "symlink" and lst.target == "target" and lst.size == len("target")


def test_stat_of_missing_path_names_it(nx):
    with pytest.raises(FsError) as ei:
        nx.stat("/no/such/path")
    assert ei.value.errno == errno.ENOENT
    assert "/no/such/path" in str(ei.value)


def test_stat_through_a_file_is_enotdir(nx):
    nx.write_bytes("/f", b"x")
    with pytest.raises(FsError) as ei:
        nx.stat("/f/child")
    assert ei.value.errno == errno.ENOTDIR


def test_chmod_chown_utime(nx):
    nx.write_bytes("/f", b"x")
    nx.chmod("/f", 0o600)
    assert nx.stat("/f").permissions == 0o600
    nx.utime("/f", (1_000_000_000_123, 2_000_000_000_456))
    st = nx.stat("/f")
    assert (st.atime_ns, st.mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
    nx.utime("/f")
    assert nx.stat("/f").mtime_ns > 2_000_000_000_456
    nx.chown("/f", gid=os.getgid())
    assert nx.stat("/f").gid == os.getgid()


def test_xattrs_through_the_api(nx):
    nx.write_bytes("/f", b"x")
    nx.setxattr("/f", "user.tag", b"blue")
    assert nx.getxattr("/f", "user.tag") == b"blue"
    assert nx.listxattr("/f") == ["user.tag"]
    nx.removexattr("/f", "user.tag")
    assert nx.listxattr("/f") == []


def test_exists_is_file_is_dir(nx):
    nx.write_bytes("/d/f", b"x", parents=True)
    nx.symlink("/nowhere", "/dangling")
    assert nx.exists("/d") and nx.exists("/d/f") and nx.exists("/")
    assert not nx.exists("/nope") and not nx.exists("/d/f/under-a-file")
    assert not nx.exists("/dangling")  # follows the link, like os.path.exists
    assert nx.stat("/dangling", follow_symlinks=False).type == "symlink"
    assert nx.is_dir("/d") and not nx.is_dir("/d/f")
    assert nx.is_file("/d/f") and not nx.is_file("/d") and not nx.is_file("/nope")


# ================================================================== rename
def test_rename_moves_and_overwrites(nx):
    nx.write_bytes("/a", b"A")
    nx.write_bytes("/b", b"B")
    nx.rename("/a", "/b")
    assert not nx.exists("/a")
    assert nx.read_bytes("/b") == b"A"


def test_rename_without_overwrite_refuses_an_existing_target(nx):
    nx.write_bytes("/a", b"A")
    nx.write_bytes("/b", b"B")
    with pytest.raises(FsError) as ei:
        nx.rename("/a", "/b", overwrite=False)
    assert ei.value.errno == errno.EEXIST
    assert "/a" in str(ei.value) and "/b" in str(ei.value)
    assert nx.read_bytes("/a") == b"A" and nx.read_bytes("/b") == b"B"
    nx.rename("/a", "/c", overwrite=False)
    assert nx.read_bytes("/c") == b"A"


def test_rename_a_directory_into_another(nx):
    nx.write_bytes("/src/deep/f", b"x", parents=True)
    nx.mkdir("/dst")
    nx.rename("/src", "/dst/moved")
    assert nx.read_bytes("/dst/moved/deep/f") == b"x"
    assert nx.stat("/dst").nlink == 3


def test_rename_a_directory_into_itself_is_einval(nx):
    nx.mkdir("/a/b", parents=True)
    with pytest.raises(FsError) as ei:
        nx.rename("/a", "/a/b/c")
    assert ei.value.errno == errno.EINVAL


def test_rename_of_missing_source_is_enoent(nx):
    with pytest.raises(FsError) as ei:
        nx.rename("/nope", "/x")
    assert ei.value.errno == errno.ENOENT


# ================================================================== copy
def test_copy_of_a_file_shares_blocks_and_creates_no_objects(nx, store):
    data = pattern(5 * BS + 123)
    nx.write_bytes("/orig", data)
    objects_before = nx.info().objects
    blobs_before = sorted(i.key for i in store.blobs.list())
    nx.copy("/orig", "/copy")
    assert nx.read_bytes("/copy") == data
    assert nx.info().objects == objects_before
    assert sorted(i.key for i in store.blobs.list()) == blobs_before
    assert nx.stat("/copy").ino != nx.stat("/orig").ino
    info = nx.info()
    assert info.referenced_bytes == 2 * len(data)
    assert info.unique_bytes == len(data)


def test_modifying_a_copy_leaves_the_original_alone(nx):
    data = pattern(3 * BS)
    nx.write_bytes("/orig", data)
    nx.copy("/orig", "/copy")
    with nx.open("/copy", "r+b") as f:
        f.seek(BS + 5)
        f.write(b"CHANGED")
    nx.append_bytes("/copy", b"tail")
    assert nx.read_bytes("/orig") == data
    assert nx.read_bytes("/copy")[BS + 5 : BS + 12] == b"CHANGED"
    nx.delete("/orig")
    want = bytearray(data)
    want[BS + 5 : BS + 12] = b"CHANGED"
    assert nx.read_bytes("/copy") == bytes(want) + b"tail"
    assert_fsck_clean(nx)


def test_copy_of_a_small_inline_file(nx):
    nx.write_bytes("/small", b"tiny")
    nx.copy("/small", "/small2")
    nx.write_bytes("/small2", b"changed")
    assert nx.read_bytes("/small") == b"tiny"
    assert nx.read_bytes("/small2") == b"changed"


def test_copy_over_an_existing_file_replaces_it(nx):
    nx.write_bytes("/a", pattern(2 * BS, 1))
    nx.write_bytes("/b", pattern(3 * BS, 2))
    nx.copy("/a", "/b")
    assert nx.read_bytes("/b") == pattern(2 * BS, 1)
    assert_fsck_clean(nx)


def test_copy_into_a_directory_keeps_the_name(nx):
    nx.write_bytes("/f", b"x")
    nx.mkdir("/d")
    nx.copy("/f", "/d")
    assert nx.read_bytes("/d/f") == b"x"


def test_copy_sees_unflushed_writes_of_the_source(nx):
    f = nx.open("/f", "wb", buffering=0)
    try:
        f.write(b"not yet committed" * 100)
        nx.copy("/f", "/g")
    finally:
        f.close()
    assert nx.read_bytes("/g") == b"not yet committed" * 100


def test_copy_of_a_tree(nx, store):
    files = {
        "/src/a.txt": b"a",
        "/src/sub/b.bin": pattern(2 * BS, 3),
        "/src/sub/deeper/c": pattern(BS + 1, 4),
        "/src/empty/.keep": b"",
    }
    for p, d in files.items():
        nx.write_bytes(p, d, parents=True)
    nx.symlink("a.txt", "/src/link")
    objects_before = nx.info().objects
    nx.copy("/src", "/dst")
    for p, d in files.items():
        assert nx.read_bytes(p.replace("/src", "/dst", 1)) == d
    assert nx.readlink("/dst/link") == "a.txt"
    assert [p.replace("/dst", "/src", 1) for p in nx.list("/dst", recursive=True)] == nx.list(
        "/src", recursive=True
    )
    assert nx.info().objects == objects_before
    nx.write_bytes("/dst/sub/b.bin", b"different")
    assert nx.read_bytes("/src/sub/b.bin") == pattern(2 * BS, 3)
    assert_fsck_clean(nx)


def test_copy_of_a_tree_into_itself_is_einval(nx):
    nx.mkdir("/src/sub", parents=True)
    with pytest.raises(FsError) as ei:
        nx.copy("/src", "/src/sub/again")
    assert ei.value.errno == errno.EINVAL


def test_copy_of_a_file_onto_itself_is_einval(nx):
    nx.write_bytes("/f", b"keep")
    with pytest.raises(FsError) as ei:
        nx.copy("/f", "/f")
    assert ei.value.errno == errno.EINVAL
    assert nx.read_bytes("/f") == b"keep"


# ================================================================== symlinks
def test_symlink_with_relative_target(nx):
    nx.write_bytes("/a/b/target.txt", b"relative", parents=True)
    nx.mkdir("/c")
    nx.symlink("../a/b/target.txt", "/c/link")
    assert nx.read_bytes("/c/link") == b"relative"
    assert nx.readlink("/c/link") == "../a/b/target.txt"


def test_symlink_with_absolute_target(nx):
    nx.write_bytes("/a/target.txt", b"absolute", parents=True)
    nx.mkdir("/deep/er", parents=True)
    nx.symlink("/a/target.txt", "/deep/er/link")
    assert nx.read_bytes("/deep/er/link") == b"absolute"


def test_symlink_to_a_directory_in_the_middle_of_a_path(nx):
    nx.write_bytes("/real/dir/file", b"through", parents=True)
    nx.symlink("real/dir", "/shortcut")
    assert nx.read_bytes("/shortcut/file") == b"through"
    nx.write_bytes("/shortcut/new", b"created via link")
    assert nx.read_bytes("/real/dir/new") == b"created via link"
    assert nx.list("/shortcut") == ["/shortcut/file", "/shortcut/new"]


def test_chain_of_symlinks_is_followed(nx):
    nx.write_bytes("/end", b"end of chain")
    prev = "/end"
    for i in range(10):
        nx.symlink(prev, f"/l{i}")
        prev = f"/l{i}"
    assert nx.read_bytes("/l9") == b"end of chain"


def test_symlink_loop_is_eloop(nx):
    nx.symlink("/b", "/a")
    nx.symlink("/a", "/b")
    nx.symlink("self", "/self")
    for p in ("/a", "/self", "/a/child"):
        with pytest.raises(FsError) as ei:
            nx.read_bytes(p)
        assert ei.value.errno == errno.ELOOP, p
    assert not nx.exists("/a")


def test_dangling_symlink_read_is_enoent(nx):
    nx.symlink("/nowhere", "/dangling")
    with pytest.raises(FsError) as ei:
        nx.read_bytes("/dangling")
    assert ei.value.errno == errno.ENOENT


def test_readlink_of_a_non_symlink_is_einval(nx):
    nx.write_bytes("/f", b"x")
    with pytest.raises(FsError) as ei:
        nx.readlink("/f")
    assert ei.value.errno == errno.EINVAL


def test_hard_link_through_the_api(nx):
    nx.write_bytes("/f", b"x")
    nx.link("/f", "/g")
    assert nx.stat("/g").ino == nx.stat("/f").ino
    assert nx.stat("/f").nlink == 2


# ================================================================== glob
GLOB_TREE = [
    "top.txt", "top.py", "README", ".hidden", ".config/settings.yaml", ".config/sub/x.txt",
    "a/f.txt", "a/g.py", "a/.dot.txt", "a/b/h.txt", "a/b/c/i.txt", "a/b/c/j.md", "a/b/c/d/k.txt",
    "b/x1.txt", "b/x2.txt", "b/y1.txt", "b/[br].txt", "b/sub/deep/z.txt",
    "docs/guide.md", "docs/api/index.md", "docs/api/.draft.md", "empty/", "a/b/emptydir/",
    "weird name/with space.txt", "caps/UPPER.TXT",
]

GLOB_PATTERNS = [
    "*", "*/", "**", "**/", "**/*", "*.txt", "**/*.txt", "a/**", "a/**/", "a/**/*.txt", "**/b/**",
    "**/c/*", "a/*/*", "a/*/*/*", "?op.*", "[ab]/*", "[!a]*", "b/x?.txt", "b/[xy]1.txt", "b/[!x]*",
    "**/.*", ".*", ".*/**", ".config/**", "*/.*", "docs/**/*.md", "**/api/*", "**/**", "a/**/**/i.txt",
    "**/*.md", "*/*/", "a/b/c/*.txt", "**/d/**", "nothing/**", "**/nothing", "weird name/*",
    "caps/*.TXT", "caps/*.txt", "[a-c]/**/[hi].txt", "b/sub/**/*.txt", "**/emptydir", "a/b/c/d",
]


def _materialize(nx, root, entries):
    for rel in entries:
        if rel.endswith("/"):
            nx.mkdir("/" + rel.rstrip("/"), parents=True, exist_ok=True)
            os.makedirs(os.path.join(root, rel), exist_ok=True)
        else:
            data = f"content of {rel}\n".encode()
            nx.write_bytes("/" + rel, data, parents=True)
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            with open(os.path.join(root, rel), "wb") as f:
                f.write(data)


@pytest.fixture
def glob_tree(nx, tmp_path):
    root = str(tmp_path / "local-tree")
    os.makedirs(root)
    _materialize(nx, root, GLOB_TREE)
    return root


@pytest.mark.parametrize("pat", GLOB_PATTERNS)
def test_glob_matches_python_glob_on_the_same_tree(nx, glob_tree, pat):
    want = py_glob(glob_tree, pat)
    got = [p[1:] for p in nx.glob(pat)]
    assert got == want


@pytest.mark.parametrize("pat", ["*", "**/*.txt", "**", "c/*", "*/i.txt", "**/", "c/**"])
def test_glob_under_a_root_matches_python_glob_in_that_directory(nx, glob_tree, pat):
    want = py_glob(os.path.join(glob_tree, "a", "b"), pat)
    got = [p[len("/a/b/") :] for p in nx.glob(pat, "/a/b")]
    assert got == want
    assert all(p.startswith("/a/b/") for p in nx.glob(pat, "/a/b"))


def test_glob_random_patterns_matchpy_glob(nx, glob_tree):
    atoms = ["*", "?", "**", "a", "b", "c", "[ab]", "[!a]*", ".*", "*.txt", "x?.txt", "*.md", "sub",
             "d*", "?*", "[a-c]", ".config", "*[0-9]*", "[[]br]*", "api"]
    rng = random.Random(5)
    for _ in range(300):
        pat = "/".join(rng.choice(atoms) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.2:
            pat += "/"
        assert [p[1:] for p in nx.glob(pat)] == py_glob(glob_tree, pat), pat


def test_glob_with_attrs_returns_file_info(nx, glob_tree):
    infos = nx.glob("b/*.txt", attrs=True)
    assert [i.path for i in infos] == ["/b/[br].txt", "/b/x1.txt", "/b/x2.txt", "/b/y1.txt"]
    assert all(i.type == "file" and i.size == len(f"content of {i.path[1:]}\n") for i in infos)


def test_glob_of_missing_root_or_file_root_is_empty(nx, glob_tree):
    assert nx.glob("*", "/does-not-exist") == []
    assert nx.glob("*", "/top.txt") == []


def test_glob_empty_pattern_is_einval(nx):
    with pytest.raises(FsError) as ei:
        nx.glob("")
    assert ei.value.errno == errno.EINVAL


# ================================================================== grep
GREP_FILES = {
    "src/main.py": b"import os\nimport sys\n\ndef main():\n    # TODO: parse args\n    print('hello world')\n"
                   b"    return 0\n",
    "src/util.py": b"def foo(x):\n    return x.foo + foobar(x)\n# FIXME foo-bar\nversion = '1.2.3'\n",
    "docs/readme.md": b"Hello World\nhello there\nThe word is THE word.\nthe end",  # no final newline
    "docs/crlf.txt": b"windows line\r\nanother abc line\r\n\r\nend abc\r\n",
    ".hidden/secret.txt": b"TODO hidden todo\nnothing\n",
    "data/numbers.txt": b"1\n22\n333\n4444\n55555\n3.14 and 2.71\nx=1.0e10\n",
    "data/binary.bin": b"\x00\x01\x02TODO inside binary\nhello world\n",
    "data/latin1.txt": b"caf\xe9 au lait\nna\xefve TODO\n",
    "data/empty.txt": b"",
    "data/blank-lines.txt": b"\n\n\nthird blank above\n\n",
    "deep/a/b/c/d.txt": b"a.c abc a-c aXc\n[x] (paren) a|b\nfoo.bar foo bar\n",
    "words.txt": b"foofoo foo\nfood\nthe_foo\nfoo_bar\nbarfoo\n-foo-\n",
}

# (pattern, ignore_case, word, fixed)
GREP_CASES = [
    ("TODO", False, False, False),
    ("todo", True, False, False),
    ("^import", False, False, False),
    ("foo|bar", False, False, False),
    ("[0-9]+\\.[0-9]+", False, False, False),
    ("d$", False, False, False),
    ("^$", False, False, False),
    ("a.c", False, False, False),
    ("(ab)+c", False, False, False),
    ("[[:digit:]]{3}", False, False, False),
    ("o{2,}", False, False, False),
    ("^[^#d]", False, False, False),
    ("hello world", True, False, False),
    ("foo", False, True, False),
    ("foo", True, True, False),
    ("the", True, True, False),
    ("a.c", False, False, True),
    ("[x]", False, False, True),
    ("a|b", False, False, True),
    ("(paren)", False, False, True),
    ("FOO", True, False, True),
    ("\\<the\\>", True, False, False),
    ("", False, False, False),
    ("abc", False, False, False),
]


@pytest.fixture
def grep_tree(nx, tmp_path):
    root = tmp_path / "grep-tree"
    for rel, data in GREP_FILES.items():
        nx.write_bytes("/" + rel, data, parents=True)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    # symlinks met while recursing are skipped (grep -r, not -R)
    nx.symlink("main.py", "/src/link.py")
    os.symlink("main.py", root / "src" / "link.py")
    return str(root)


def _line_scan(pat: str, ignore_case: bool, word: bool, fixed: bool) -> list[tuple[str, int, bytes]]:
    """The straightforward oracle: split each text file into lines and test each."""
    body = re.escape(pat) if fixed else pat.replace("[[:digit:]]", "[0-9]").replace(
        "\\<", "\\b(?=\\w)").replace("\\>", "\\b(?<=\\w)")
    if word:
        body = rf"(?<![A-Za-z0-9_])(?:{body})(?![A-Za-z0-9_])"
    rx = re.compile(body.encode(), re.IGNORECASE if ignore_case else 0)
    out = []
    for rel, data in GREP_FILES.items():
        if b"\0" in data:
            continue
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for n, line in enumerate(lines, 1):
            if rx.search(line):
                out.append(("/" + rel, n, line))
    return sorted(out)


def _nx_grep(nx, pat, ignore_case, word, fixed, root="/"):
    return sorted(
        (m.path, m.line_no, m.line.encode("utf-8", "surrogateescape"))
        for m in nx.grep(pat, root, ignore_case=ignore_case, word=word, fixed=fixed)
    )


@pytest.mark.parametrize("case", GREP_CASES, ids=[repr(c) for c in GREP_CASES])
def test_grep_matches_a_line_by_line_scan(nx, grep_tree, case):
    assert _nx_grep(nx, *case) == _line_scan(*case)


@pytest.mark.parametrize("case", GREP_CASES, ids=[repr(c) for c in GREP_CASES])
def test_grep_matches_gnu_grep(nx, grep_tree, case):
    pat, ignore_case, word, fixed = case
    args = [gnu_grep(), "-rnI", "-F" if fixed else "-E"]
    if ignore_case:
        args.append("-i")
    if word:
        args.append("-w")
    args += ["-e", pat, "."]
    res = subprocess.run(args, cwd=grep_tree, capture_output=True, env={**os.environ, "LC_ALL": "C"})
    assert res.returncode in (0, 1), res.stderr
    want = []
    for line in res.stdout.split(b"\n")[:-1]:  # not splitlines(): lines may end in '\r'
        path, n, text = line.split(b":", 2)
        want.append(("/" + path.decode()[2:], int(n), text))
    assert _nx_grep(nx, *case) == sorted(want)


@pytest.mark.parametrize("pat, flags", [("foo", ()), ("^$", ()), ("e$", ("-i",)), ("the", ("-w", "-i"))])
def test_grep_invert_matches_gnu_grep(nx, grep_tree, pat, flags):
    res = subprocess.run([gnu_grep(), "-rnIvE", *flags, "-e", pat, "."], cwd=grep_tree, capture_output=True,
                         env={**os.environ, "LC_ALL": "C"})
    assert res.returncode == 0, res.stderr
    want = []
    for line in res.stdout.split(b"\n")[:-1]:
        path, n, text = line.split(b":", 2)
        want.append(("/" + path.decode()[2:], int(n), text))
    got = [(m.path, m.line_no, m.line.encode("utf-8", "surrogateescape"))
           for m in nx.grep(pat, invert=True, ignore_case="-i" in flags, word="-w" in flags)]
    assert sorted(got) == sorted(want)
    assert len(want) > 0


def test_grep_skips_binary_files(nx, grep_tree):
    hits = nx.grep("TODO")
    assert all(not m.path.endswith(".bin") for m in hits)
    assert {m.path for m in hits} == {"/src/main.py", "/.hidden/secret.txt", "/data/latin1.txt"}


def test_grep_result_format_and_scope(nx, grep_tree):
    hits = nx.grep("import", "/src")
    assert [str(m) for m in hits] == ["/src/main.py:1:import os", "/src/main.py:2:import sys"]
    assert nx.grep("import", "/docs") == []
    # a file as the root searches just that file
    assert [m.line_no for m in nx.grep("foo", "/words.txt")] == [1, 2, 3, 4, 5, 6]


def test_grep_invert_and_max_count(nx, grep_tree):
    inv = nx.grep("foo", "/words.txt", invert=True)
    assert inv == []
    lines = [m.line for m in nx.grep("x", "/src/util.py", invert=True)]
    assert lines == ["# FIXME foo-bar", "version = '1.2.3'"]
    assert len(nx.grep("foo", "/words.txt", max_count=2)) == 2


def test_grep_invalid_regex_is_einval(nx):
    with pytest.raises(FsError) as ei:
        nx.grep("(unclosed")
    assert ei.value.errno == errno.EINVAL


def test_grep_sees_the_latest_content(nx):
    nx.write_bytes("/f.txt", b"old needle\n")
    assert len(nx.grep("needle")) == 1
    nx.write_bytes("/f.txt", b"nothing here\n")
    assert nx.grep("needle") == []


# ================================================================== batches
def test_write_many_writes_every_file(nx):
    files = {f"/batch/d{i % 3}/f{i}": pattern(i * 900, i) for i in range(20)}
    nx.write_many(files)
    assert nx.read_many(files) == files
    assert_fsck_clean(nx)


def test_write_many_overwrites_existing_files(nx):
    nx.write_bytes("/f", pattern(3 * BS))
    nx.write_many({"/f": b"small now", "/g": pattern(2 * BS, 5)})
    assert nx.read_bytes("/f") == b"small now"
    assert nx.read_bytes("/g") == pattern(2 * BS, 5)
    assert_fsck_clean(nx)


def test_write_many_is_all_or_nothing(nx):
    nx.write_bytes("/plainfile", b"a file, not a directory")
    files = {
        "/ok/one": pattern(2 * BS, 1),
        "/ok/two": b"small",
        "/plainfile/child": b"cannot exist: parent is a file",
        "/ok/three": pattern(BS, 3),
    }
    with pytest.raises(FsError) as ei:
        nx.write_many(files)
    assert ei.value.errno == errno.ENOTDIR
    assert not nx.exists("/ok")
    assert nx.list("/", recursive=True) == ["/plainfile"]
    assert nx.read_bytes("/plainfile") == b"a file, not a directory"
    # uploads that were not committed are just garbage
    report = nx.fsck(verify_data=True)
    assert report.clean, [str(p) for p in report.problems]
    nx.gc(grace=0)
    assert nx.info().objects == 0


def test_write_many_onto_a_directory_is_all_or_nothing(nx):
    nx.mkdir("/dir")
    with pytest.raises(FsError) as ei:
        nx.write_many({"/a": b"x", "/dir": b"y"})
    assert ei.value.errno == errno.EISDIR
    assert not nx.exists("/a")


def test_read_many(nx):
    nx.write_bytes("/a", b"A")
    nx.write_bytes("/b", pattern(BS * 2))
    assert nx.read_many(["/a", "b"]) == {"/a": b"A", "/b": pattern(BS * 2)}
    with pytest.raises(FsError) as ei:
        nx.read_many(["/a", "/missing"])
    assert ei.value.errno == errno.ENOENT


def test_delete_many_is_all_or_nothing(nx):
    for p in ("/a", "/b", "/c"):
        nx.write_bytes(p, p.encode())
    with pytest.raises(FsError) as ei:
        nx.delete_many(["/a", "/b", "/missing", "/c"])
    assert ei.value.errno == errno.ENOENT
    assert nx.list("/") == ["/a", "/b", "/c"]
    assert nx.read_bytes("/a") == b"/a"
    nx.delete_many(["/a", "/b", "/missing"], missing_ok=True)
    assert nx.list("/") == ["/c"]
    assert_fsck_clean(nx)


def test_delete_many_recursive(nx):
    nx.write_bytes("/d1/x/y", pattern(BS, 1), parents=True)
    nx.write_bytes("/d2/z", b"z", parents=True)
    nx.delete_many(["/d1", "/d2"], recursive=True)
    assert nx.list("/") == []
    assert_fsck_clean(nx)


# ================================================================== threads
def test_threads_share_one_connection_safely(nx):
    n_threads = 6
    region = BS + 333  # regions of the shared file straddle blocks, so threads share blocks
    shared_size = n_threads * region
    nx.write_bytes("/shared", bytes(shared_size))
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(4):
                data = pattern(BS // 2 + t * 1000 + i * 7, t * 100 + i)
                nx.write_bytes(f"/t{t}/file{i}", data, parents=True)
                assert nx.read_bytes(f"/t{t}/file{i}") == data
            with nx.open("/shared", "r+b") as f:
                f.seek(t * region)
                f.write(bytes([65 + t]) * region)
            for _ in range(3):
                got = nx.read_bytes("/shared")
                assert len(got) == shared_size
                assert got[t * region : (t + 1) * region] == bytes([65 + t]) * region
            nx.write_bytes(f"/t{t}/scratch", b"x")
            nx.delete(f"/t{t}/scratch")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for t in range(n_threads):
        for i in range(4):
            assert nx.read_bytes(f"/t{t}/file{i}") == pattern(BS // 2 + t * 1000 + i * 7, t * 100 + i)
        assert not nx.exists(f"/t{t}/scratch")
    assert nx.read_bytes("/shared") == b"".join(bytes([65 + t]) * region for t in range(n_threads))
    assert_fsck_clean(nx)


def test_threads_appending_to_one_file_lose_nothing(nx):
    n_threads, per_thread = 4, 50
    nx.write_bytes("/log", b"")
    handles = [nx.open("/log", "ab", buffering=0) for _ in range(n_threads)]

    def work(t: int) -> None:
        for i in range(per_thread):
            handles[t].write(f"thread {t} line {i:03d}\n".encode())

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for h in handles:
        h.close()
    lines = nx.read_text("/log").splitlines()
    assert sorted(lines) == sorted(
        f"thread {t} line {i:03d}" for t in range(n_threads) for i in range(per_thread)
    )


# ================================================================== info
def test_info_counts(nx):
    nx.write_bytes("/d/f", pattern(2 * BS + 5), parents=True)
    nx.write_bytes("/small", b"tiny")
    nx.symlink("/d/f", "/s")
    info = nx.info()
    assert (info.files, info.directories, info.symlinks) == (2, 2, 1)
    assert info.logical_bytes == 2 * BS + 5 + 4
    assert info.inline_bytes == 4
    assert info.objects == 3
    assert info.block_size == BS and info.inline_max == 1024


@pytest.mark.parametrize("mode", ["wb", "r+b", "w"])
def test_flush_of_a_buffered_file_commits_and_fsync_makes_it_durable(nx, store_dir, mode):
    """``flush()`` commits what was written so far: another connection sees it at once
    (io's buffered classes never call the raw file's flush on their own)."""
    nx.write_bytes("/f", b"")
    other = nexusfs.connect(store_dir, semantic=False)
    try:
        with nx.open("/f", mode) as f:
            f.write("hello" if mode == "w" else b"hello")
            assert other.stat("/f").size == 0  # still in the buffer
            f.flush()
            assert other.stat("/f").size == 5
            f.write(" world" if mode == "w" else b" world")
            if mode == "w":
                f.flush()  # text waits in the TextIOWrapper until then, as with os.fsync
                f.buffer.fsync()
            else:
                f.fsync()
            assert other.stat("/f").size == 11
            assert other.read_bytes("/f") == b"hello world"
    finally:
        other.close()
