"""Export to JSON Lines and import into another store: every attribute must survive."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import stat

import pytest

import nexusfs
from nexusfs import FsError, StoreError, transfer
from nexusfs.transfer import (
    Importer,
    export_records,
    export_tree,
    import_records,
    import_stream,
)
from tests.oracles import assert_fsck_clean

BS = 64 * 1024
SMALL = dict(block_size=BS, inline_max=1024, cache_size=1 << 20, dirty_limit=1 << 20)


def _times(k: int) -> tuple[int, int]:
    """Distinctive (atime, mtime) pairs with nanosecond digits."""
    return 1_600_000_000_123_456_789 + k * 1_000_003, 1_500_000_000_987_654_321 + k * 7_777


def populate(nx: nexusfs.Nexus) -> None:
    """A tree with every kind of entry and attribute the export must carry."""
    rnd = os.urandom(BS)
    nx.mkdir("/docs", mode=0o750)
    nx.chmod("/docs", 0o750)
    nx.setxattr("/docs", "user.dir", b"on a directory")
    nx.write_bytes("/docs/empty", b"")
    nx.write_bytes("/docs/small.txt", b"hello inline\n")
    nx.setxattr("/docs/small.txt", "user.bin", b"\x00\xff\x10")
    nx.setxattr("/docs/small.txt", "user.\udcff", b"name is not utf-8")
    # several blocks, one repeated (dedup), a zero block in the middle (a hole), a short tail
    nx.write_bytes("/docs/big.bin", rnd + os.urandom(BS) + rnd + bytes(BS) + b"tail" * 100)
    with nx.open("/docs/sparse", "wb") as f:
        f.seek(5 * BS + 17)
        f.write(b"after a hole")
    with nx.open("/docs/holey-end", "wb") as f:
        f.write(b"x" * 2000)
        f.truncate(3 * BS + 5)  # ends in a hole
    nx.mkdir("/other")
    nx.link("/docs/big.bin", "/other/hard")
    nx.link("/docs/big.bin", "/hard3")
    nx.write_bytes("/docs/setuid", b"#!/bin/sh\n")
    nx.chown("/docs/setuid", 1234, 5678)
    nx.chmod("/docs/setuid", 0o4755)
    nx.mkdir("/tmp")
    nx.chmod("/tmp", 0o1777)
    nx.mkdir("/empty-dir")
    nx.symlink("docs/small.txt", "/link")
    nx.symlink("/nowhere/at/all", "/dangling")
    nx.symlink(b"caf\xe9-target".decode("utf-8", "surrogateescape"), "/odd-link")
    nx.write_bytes(b"/caf\xe9".decode("utf-8", "surrogateescape"), b"latin-1 name")
    nx.mkdir(b"/d\xff\xfe".decode("utf-8", "surrogateescape"))
    nx.write_bytes(b"/d\xff\xfe/inner".decode("utf-8", "surrogateescape"), b"inside")
    root = nx.stat("/").ino
    nx.vfs.create_node(root, b"fifo", stat.S_IFIFO | 0o640, 42, 43)
    nx.vfs.create_node(root, b"sock", stat.S_IFSOCK | 0o600, 0, 0)
    nx.vfs.create_node(root, b"null", stat.S_IFCHR | 0o666, 0, 0, rdev=os.makedev(1, 3))
    nx.vfs.create_node(root, b"disk", stat.S_IFBLK | 0o660, 0, 6, rdev=os.makedev(8, 1))
    nx.chown("/docs/small.txt", 1000, 100)
    everything = [i.path for i in nx.walk("/", attrs=True)]
    for k, p in enumerate(sorted(everything)):
        nx.vfs.setattr(nx.stat(p, follow_symlinks=False).ino, atime_ns=_times(k)[0], mtime_ns=_times(k)[1])
    nx.utime("/", _times(999))


def store_snapshot(nx: nexusfs.Nexus, root: str = "/", *, alloc: bool = True) -> dict[str, tuple]:
    """path (relative to root) -> every attribute that must round-trip, and the content."""
    infos = [nx.stat(root)] + list(nx.walk(root, attrs=True))
    skip = 0 if root == "/" else len(root)
    attrs = {}
    for i in infos:
        rel = i.path[skip:] or "/"
        xattrs = nx.meta.xattrs(i.ino)
        attrs[rel] = [i.type, i.mode, i.uid, i.gid, i.size, i.nlink, i.rdev, i.target,
                      i.atime_ns, i.mtime_ns, tuple(sorted(xattrs.items())), i.blocks if alloc else None]
    # contents last: reading a file may update its atime
    for i in infos:
        if i.type == "file":
            attrs[i.path[skip:] or "/"].append(nx.read_bytes(i.path))
    return {k: tuple(v) for k, v in attrs.items()}


def export_bytes(nx: nexusfs.Nexus, root: str = "/", *, with_data: bool = False) -> bytes:
    buf = io.BytesIO()
    export_tree(nx, buf, root, with_data=with_data)
    return buf.getvalue()


def records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture
def source(nx):
    populate(nx)
    return nx


@pytest.fixture
def other(tmp_path):
    """A second store factory (closed at the end)."""
    opened = []

    def make(name: str = "b", **settings):
        conn = nexusfs.connect(str(tmp_path / name), **{**SMALL, **settings})
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()


# ----------------------------------------------------------------- round trips
def test_round_trip_without_data_over_shared_blobs(source, other, store_dir):
    data = export_bytes(source)
    before = store_snapshot(source)
    target = other("migrated", blobs="file://" + os.path.join(store_dir, "blobs"))
    stats = import_stream(target, io.BytesIO(data), same_owner=True)
    assert stats.objects == 0
    assert stats.links == 2 and stats.specials == 4
    after = store_snapshot(target)
    assert after == before
    assert target.stat("/docs/big.bin").nlink == 3
    assert target.stat("/hard3").ino == target.stat("/other/hard").ino == target.stat("/docs/big.bin").ino
    # the same object ids (and so the same blob keys) are used
    src_map = source.meta.block_map(source.stat("/docs/big.bin").ino)
    dst_map = target.meta.block_map(target.stat("/docs/big.bin").ino)
    assert {i: r.key for i, r in src_map.items()} == {i: r.key for i, r in dst_map.items()}
    assert_fsck_clean(target)
    assert_fsck_clean(source)


def test_round_trip_with_data_into_a_store_sharing_nothing(source, other):
    data = export_bytes(source, with_data=True)
    before = store_snapshot(source)
    target = other("fresh")
    stats = import_stream(target, io.BytesIO(data), same_owner=True)
    assert stats.objects > 0
    assert store_snapshot(target) == before
    assert target.info().blobs != source.info().blobs
    # the repeated block is stored once in the target too
    big = target.meta.block_map(target.stat("/docs/big.bin").ino)
    assert big[0].id == big[2].id
    assert 3 not in big  # the zero block is a hole
    assert_fsck_clean(target)


def test_round_trip_between_different_block_sizes(source, other):
    data = export_bytes(source, with_data=True)
    before = store_snapshot(source, alloc=False)
    target = other("wide", block_size=4 * BS, inline_max=8)
    import_stream(target, io.BytesIO(data), same_owner=True)
    assert store_snapshot(target, alloc=False) == before
    assert target.meta.block_size == 4 * BS
    # the sparse file stays sparse: only the block holding its tail is stored
    assert target.stat("/docs/sparse").blocks * 512 <= 4 * BS
    assert_fsck_clean(target)


def test_import_under_a_directory_and_export_of_a_subtree(source, other):
    data = export_bytes(source, "/docs", with_data=True)
    recs = records(data)
    assert recs[0]["root"] == "/docs"
    assert recs[1]["type"] == "dir" and recs[1]["path"] == "/"
    target = other()
    target.mkdir("/restore")
    import_stream(target, io.BytesIO(data), "/restore/here", same_owner=True)
    got, want = store_snapshot(target, "/restore/here"), store_snapshot(source, "/docs")
    # big.bin's other names are outside /docs: here it has one name
    assert got["/big.bin"][5] == 1 and want["/big.bin"][5] == 3
    drop_nlink = lambda snap: {k: v[:5] + v[6:] for k, v in snap.items()}  # noqa: E731
    assert drop_nlink(got) == drop_nlink(want)
    assert_fsck_clean(target)


def test_export_of_a_single_file(source, other):
    data = export_bytes(source, "/docs/big.bin", with_data=True)
    recs = records(data)
    assert [r["type"] for r in recs if r["type"] not in ("object",)] == ["header", "file", "end"]
    target = other()
    import_stream(target, io.BytesIO(data), "/x", same_owner=True)
    assert target.read_bytes("/x/big.bin") == source.read_bytes("/docs/big.bin")
    assert target.stat("/x/big.bin").mtime_ns == source.stat("/docs/big.bin").mtime_ns
    assert_fsck_clean(target)


def test_import_into_the_same_store_shares_blocks(source):
    data = export_bytes(source, "/docs")
    import_stream(source, io.BytesIO(data), "/copy", same_owner=True)
    assert source.read_bytes("/copy/big.bin") == source.read_bytes("/docs/big.bin")
    a = source.meta.block_map(source.stat("/docs/big.bin").ino)
    b = source.meta.block_map(source.stat("/copy/big.bin").ino)
    assert {i: r.id for i, r in a.items()} == {i: r.id for i, r in b.items()}
    assert_fsck_clean(source)


def test_import_without_same_owner_takes_the_importer(source, other):
    data = export_bytes(source, with_data=True)
    target = other()
    import_stream(target, io.BytesIO(data), same_owner=False)
    fi = target.stat("/docs/setuid")
    assert (fi.uid, fi.gid) == (os.getuid(), os.getgid())
    assert not fi.mode & stat.S_ISUID
    assert stat.S_IMODE(fi.mode) == 0o755
    assert target.stat("/tmp").mode & stat.S_ISVTX


def test_records_api_round_trip(source, other):
    recs = list(export_records(source, "/", with_data=True))
    target = other()
    stats = import_records(target, recs, same_owner=True)
    assert stats.entries == recs[-1]["entries"]
    assert store_snapshot(target) == store_snapshot(source)


# -------------------------------------------------------------------- format
def test_stream_format(source):
    recs = records(export_bytes(source, with_data=True))
    header = recs[0]
    assert header["type"] == "header" and header["format"] == "nexusfs-export"
    assert header["version"] == 1 and header["block_size"] == BS and header["with_data"] is True
    assert recs[-1] == {"type": "end", "entries": recs[-1]["entries"], "objects": recs[-1]["objects"]}
    seen_paths: set[str] = set()
    seen_objects: set[int] = set()
    kinds = set()
    for r in recs[1:-1]:
        kinds.add(r["type"])
        if r["type"] == "object":
            data = base64.b64decode(r["data"])
            assert len(data) == r["size"]
            assert r["id"] not in seen_objects
            seen_objects.add(r["id"])
            continue
        path = r.get("path") or base64.b64decode(r["path_b64"]).decode("utf-8", "surrogateescape")
        parent = path.rsplit("/", 1)[0] or "/"
        assert path == "/" or parent in seen_paths, f"{path} before its parent"
        seen_paths.add(path)
        if r["type"] == "file" and "blocks" in r:
            for _idx, oid, h, size, stored, codec in r["blocks"]:
                assert oid in seen_objects, "object after the file that uses it"
                assert len(h) == 64 and size <= BS and stored > 0 and codec in (0, 1)
        if r["type"] == "link":
            assert r["target"] in seen_paths
    assert kinds == {"dir", "file", "symlink", "fifo", "socket", "char", "block", "link", "object"}
    by_path = {r.get("path"): r for r in recs if "path" in r}
    assert by_path["/null"]["rdev"] == os.makedev(1, 3)
    assert by_path["/docs/small.txt"]["inline"] == base64.b64encode(b"hello inline\n").decode()
    assert by_path["/docs/small.txt"]["xattrs"]["user.bin"] == base64.b64encode(b"\x00\xff\x10").decode()
    assert by_path["/docs/small.txt"]["xattrs_b64"] == [
        [base64.b64encode(b"user.\xff").decode(), base64.b64encode(b"name is not utf-8").decode()]]
    # a hard-linked file is exported once (under the first name met), its other names as links
    linked = [r for r in recs if r.get("nlink")]
    assert len(linked) == 1 and linked[0]["nlink"] == 3
    names = {"/docs/big.bin", "/other/hard", "/hard3"}
    assert linked[0]["path"] in names
    links = [r for r in recs if r["type"] == "link"]
    assert {r["path"] for r in links} == names - {linked[0]["path"]}
    assert {r["target"] for r in links} == {linked[0]["path"]}
    assert by_path["/docs/setuid"]["mode"] == 0o4755
    assert by_path["/odd-link"]["target_b64"] == base64.b64encode(b"caf\xe9-target").decode()
    odd = [r for r in recs if "path_b64" in r]
    assert {base64.b64decode(r["path_b64"]) for r in odd} == {b"/caf\xe9", b"/d\xff\xfe", b"/d\xff\xfe/inner"}


def test_without_data_no_object_records(source):
    recs = records(export_bytes(source))
    assert recs[0]["with_data"] is False
    assert not [r for r in recs if r["type"] == "object"]
    assert recs[-1]["objects"] == 0


# -------------------------------------------------------------------- refusals
def test_migration_refuses_missing_blobs(source, other):
    data = export_bytes(source)
    target = other("own-blobs")
    with pytest.raises(StoreError, match="missing from the blob store"):
        import_stream(target, io.BytesIO(data))


def test_migration_refuses_conflicting_object_ids(source, other, store_dir):
    data = export_bytes(source)
    target = other("clash", blobs="file://" + os.path.join(store_dir, "blobs"))
    target.write_bytes("/mine", os.urandom(3 * BS))  # takes object ids 1.. with other content
    with pytest.raises(StoreError, match="already exists in this store with other content"):
        import_stream(target, io.BytesIO(data))


def test_block_size_mismatch_needs_data(source, other, store_dir):
    data = export_bytes(source)
    target = other("wide", block_size=2 * BS, blobs="file://" + os.path.join(store_dir, "blobs"))
    with pytest.raises(StoreError, match="block size"):
        import_stream(target, io.BytesIO(data))


def test_truncated_stream_is_reported(source, other):
    lines = export_bytes(source, with_data=True).splitlines(keepends=True)
    target = other()
    with pytest.raises(ValueError, match="incomplete"):
        import_stream(target, io.BytesIO(b"".join(lines[:-1])))


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b'{"type": "dir", "path": "/"}\n', "not a nexusfs export"),
    (b"this is not json\n", "line 1: not a JSON record"),
    (b'{"type":"header","format":"nexusfs-export","version":99,"block_size":65536}\n', "version 99"),
])
def test_bad_streams(other, payload, message):
    with pytest.raises(ValueError, match=message):
        import_stream(other(), io.BytesIO(payload))


def test_corrupt_object_data_is_refused(source, other):
    recs = records(export_bytes(source, with_data=True))
    obj = next(r for r in recs if r["type"] == "object")
    obj["data"] = base64.b64encode(b"y" * obj["size"]).decode()
    with pytest.raises(ValueError, match="does not match its hash"):
        import_records(other(), recs)


def test_malformed_record_names_its_line(source, other):
    recs = records(export_bytes(source, with_data=True))
    del next(r for r in recs if r["type"] == "file")["mode"]
    stream = io.BytesIO(b"".join(json.dumps(r).encode() + b"\n" for r in recs))
    with pytest.raises(ValueError, match=r"line \d+: malformed record"):
        import_stream(other(), stream)


def test_path_escape_is_refused(other):
    imp = Importer(other())
    imp.add({"type": "header", "format": "nexusfs-export", "version": 1, "block_size": BS, "with_data": True})
    imp.add({"type": "file", "path": "/../evil", "mode": 0o644, "uid": 0, "gid": 0, "atime_ns": 0,
             "mtime_ns": 0, "size": 0, "inline": ""})
    with pytest.raises(ValueError, match=r"'\.\.'"):
        imp.finish()


def test_existing_file_is_not_overwritten(source, other):
    data = export_bytes(source, with_data=True)
    target = other()
    target.mkdir("/docs")
    target.write_bytes("/docs/small.txt", b"keep me")
    before = tree_state(target)
    with pytest.raises(FsError) as info:
        import_stream(target, io.BytesIO(data))
    assert info.value.errno == errno.EEXIST
    assert "small.txt" in str(info.value)
    assert tree_state(target) == before  # what came before the clash was taken back
    assert target.read_bytes("/docs/small.txt") == b"keep me"


# ------------------------------------------------------------ all or nothing
def tree_state(nx: nexusfs.Nexus) -> dict[str, tuple]:
    """Every attribute (ctime too) and the stored content of every entry, read without
    touching anything (no atime updates)."""
    out = {}
    for i in [nx.stat("/")] + list(nx.walk("/", attrs=True)):
        content = nx.meta.content_location(i.ino) if i.type == "file" else None
        out[i.path] = (i.type, i.mode, i.uid, i.gid, i.size, i.nlink, i.target, i.atime_ns,
                       i.mtime_ns, i.ctime_ns, tuple(sorted(nx.meta.xattrs(i.ino).items())), content)
    return out


def a_tree_of_its_own(nx: nexusfs.Nexus) -> None:
    nx.mkdir("/keep/sub", parents=True)
    nx.write_bytes("/keep/file", b"mine")
    nx.setxattr("/keep", "user.mine", b"yes")
    nx.setxattr("/", "user.root", b"the target's")
    nx.utime("/", (5, 6))


def cut_short(data: bytes, how: str) -> bytes:
    lines = data.splitlines(keepends=True)
    if how == "truncated":
        return b"".join(lines[:-1])
    middle = len(lines) * 2 // 3
    return b"".join(lines[:middle] + [b"garbage\n"] + lines[middle:])


@pytest.mark.parametrize("under", ["/", "/new/place", "/keep"])
@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_failed_import_changes_nothing(source, other, monkeypatch, under, how):
    # small batches: several are committed before the failure, and still all is taken back
    monkeypatch.setattr(transfer, "_IMPORT_BATCH_RECORDS", 3)
    stream = cut_short(export_bytes(source, with_data=True), how)
    target = other()
    a_tree_of_its_own(target)
    before = tree_state(target)
    with pytest.raises(ValueError, match="incomplete" if how == "truncated" else "not a JSON record"):
        import_stream(target, io.BytesIO(stream), under)
    assert tree_state(target) == before
    assert_fsck_clean(target)
    # and the same stream, whole, imports as usual afterwards
    import_stream(target, io.BytesIO(export_bytes(source, with_data=True)), under + "/again")
    assert target.read_bytes(under.rstrip("/") + "/again/docs/small.txt") == b"hello inline\n"


def test_a_failed_import_under_a_new_directory_leaves_no_directory(source, other):
    data = export_bytes(source)  # without data: needs the same block size
    target = other("wide", block_size=2 * BS)
    with pytest.raises(StoreError, match="block size"):
        import_stream(target, io.BytesIO(data), "/x/y")
    assert target.listdir("/") == []


def test_a_failed_migration_forgets_the_objects_it_registered(source, other, store_dir, monkeypatch):
    monkeypatch.setattr(transfer, "_IMPORT_BATCH_RECORDS", 3)
    stream = cut_short(export_bytes(source), "truncated")
    target = other("migrated", blobs="file://" + os.path.join(store_dir, "blobs"))
    with pytest.raises(ValueError, match="incomplete"):
        import_stream(target, io.BytesIO(stream))
    assert target.listdir("/") == []
    assert target.info().objects == 0  # the source's blobs are not the target's garbage
    assert_fsck_clean(source)
