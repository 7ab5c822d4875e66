"""A FUSE filesystem that forgets, at a "power cut", everything nobody synced.

For the power-loss tests: the whole tree lives in memory, and beside it the state a disk
would have after a power cut, which only syncs change, as strictly as POSIX allows:

* ``fsync``/``fdatasync`` of a file makes its current content (and size) durable;
* ``fsync`` of a directory makes its current entries durable (names → inodes): a new, renamed
  or removed name survives a power cut only once its directory has been synced;
* nothing else is ever written out (no writeback after a delay, no journal ordering luck).

Run: ``python -m tests.lossyfs BACKING MOUNTPOINT``. At start the tree is read from the
directory BACKING (all of it durable). On SIGUSR1 — the power cut — the durable state
replaces BACKING's contents and the filesystem exits (the caller detaches the mount); mount
it again on BACKING to see what survived. SIGTERM or an unmount exits without touching
BACKING. Only regular files, directories and symlinks; root owns everything it creates
unless told otherwise through setattr; no hard links to directories, no xattrs.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


@dataclass
class Node:
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytearray = field(default_factory=bytearray)
    entries: dict[bytes, int] = field(default_factory=dict)
    target: bytes = b""
    nlink: int = 1
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    #: what a power cut leaves: the file's content, the directory's entries (None: never synced)
    durable_data: bytes | None = None
    durable_entries: dict[bytes, int] | None = None


def _now() -> int:
    return time.time_ns()


class LossyFS(pyfuse3.Operations):
    def __init__(self, backing: str) -> None:
        super().__init__()
        self.backing = backing
        self.nodes: dict[int, Node] = {}
        self.next_ino = ROOT + 1
        self.parent: dict[int, int] = {ROOT: ROOT}
        t = _now()
        self.nodes[ROOT] = Node(stat.S_IFDIR | 0o755, nlink=2, atime=t, mtime=t, ctime=t)
        self._load(backing, ROOT)
        self.nodes[ROOT].durable_entries = dict(self.nodes[ROOT].entries)

    # -- the backing directory --------------------------------------------
    def _new(self, node: Node) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = node
        return ino

    def _load(self, path: str, dino: int) -> None:
        for name in sorted(os.listdir(path)):
            p = os.path.join(path, name)
            st = os.lstat(p)
            common = dict(uid=st.st_uid, gid=st.st_gid, atime=st.st_atime_ns, mtime=st.st_mtime_ns,
                          ctime=st.st_ctime_ns)
            if stat.S_ISDIR(st.st_mode):
                node = Node(st.st_mode, nlink=2, **common)
                ino = self._new(node)
                self.parent[ino] = dino
                self.nodes[dino].nlink += 1
                self._load(p, ino)
                node.durable_entries = dict(node.entries)
            elif stat.S_ISLNK(st.st_mode):
                target = os.fsencode(os.readlink(p))
                ino = self._new(Node(st.st_mode, target=target, **common))
            else:
                with open(p, "rb") as f:
                    data = f.read()
                ino = self._new(Node(stat.S_IFREG | stat.S_IMODE(st.st_mode), data=bytearray(data),
                                     durable_data=data, **common))
            self.nodes[dino].entries[os.fsencode(name)] = ino

    def power_cut(self) -> None:
        """Write what a power cut would leave into the backing directory, replacing it."""
        new = self.backing.rstrip("/") + ".power-cut"
        shutil.rmtree(new, ignore_errors=True)
        os.mkdir(new)
        self._dump(ROOT, new, set())
        shutil.rmtree(self.backing)
        os.rename(new, self.backing)

    def _dump(self, dino: int, path: str, seen: set[int]) -> None:
        seen = seen | {dino}
        for name, ino in (self.nodes[dino].durable_entries or {}).items():
            node = self.nodes[ino]
            p = os.path.join(path, os.fsdecode(name))
            if stat.S_ISDIR(node.mode):
                if ino in seen:
                    continue
                os.mkdir(p)
                self._dump(ino, p, seen)
            elif stat.S_ISLNK(node.mode):
                os.symlink(node.target, p)
            else:
                with open(p, "wb") as f:
                    f.write(node.durable_data or b"")
            if not stat.S_ISLNK(node.mode):
                os.chmod(p, stat.S_IMODE(node.mode))
            os.lchown(p, node.uid, node.gid)

    # -- helpers ----------------------------------------------------------
    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if not stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        node = self._node(ino)
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = 0
        a.attr_timeout = 0
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = 0
        size = len(node.target) if stat.S_ISLNK(node.mode) else len(node.data)
        a.st_size = size
        a.st_blksize = 4096
        a.st_blocks = (size + 511) // 512
        a.st_atime_ns = node.atime
        a.st_mtime_ns = node.mtime
        a.st_ctime_ns = node.ctime
        return a

    def _add(self, dino: int, name: bytes, node: Node, ctx) -> pyfuse3.EntryAttributes:
        d = self._dir(dino)
        if name in d.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        t = _now()
        node.uid, node.gid = ctx.uid, ctx.gid
        node.atime = node.mtime = node.ctime = t
        ino = self._new(node)
        d.entries[name] = ino
        d.mtime = d.ctime = t
        if stat.S_ISDIR(node.mode):
            d.nlink += 1
            self.parent[ino] = dino
        return self._attr(ino)

    # -- operations -------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        d = self._dir(parent_inode)
        if name == b".":
            return self._attr(parent_inode)
        if name == b"..":
            return self._attr(self.parent.get(parent_inode, ROOT))
        ino = d.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(ino)

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        t = _now()
        if fields.update_size:
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))
            node.mtime = t
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime = attr.st_mtime_ns
        node.ctime = t
        return self._attr(inode)

    async def readlink(self, inode, ctx):
        return self._node(inode).target

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._add(parent_inode, name, Node(mode), ctx)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._add(parent_inode, name, Node(stat.S_IFDIR | stat.S_IMODE(mode), nlink=2,
                                                  durable_entries={}), ctx)

    async def symlink(self, parent_inode, name, target, ctx):
        return self._add(parent_inode, name, Node(stat.S_IFLNK | 0o777, target=target), ctx)

    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = self._add(parent_inode, name, Node(stat.S_IFREG | stat.S_IMODE(mode)), ctx)
        return pyfuse3.FileInfo(fh=attr.st_ino), attr

    async def link(self, inode, new_parent_inode, new_name, ctx):
        node = self._node(inode)
        d = self._dir(new_parent_inode)
        if new_name in d.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        d.entries[new_name] = inode
        node.nlink += 1
        return self._attr(inode)

    def _remove(self, dino: int, name: bytes, want_dir: bool) -> None:
        d = self._dir(dino)
        ino = d.entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self.nodes[ino]
        is_dir = stat.S_ISDIR(node.mode)
        if want_dir and not is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if not want_dir and is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if is_dir and node.entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del d.entries[name]
        node.nlink -= 2 if is_dir else 1
        if is_dir:
            d.nlink -= 1
        d.mtime = d.ctime = node.ctime = _now()

    async def unlink(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, False)

    async def rmdir(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, True)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        src = self._dir(parent_inode_old)
        dst = self._dir(parent_inode_new)
        ino = src.entries.get(name_old)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self.nodes[ino]
        old = dst.entries.get(name_new)
        if old == ino:
            return
        if old is not None:
            self._remove(parent_inode_new, name_new, stat.S_ISDIR(self.nodes[old].mode))
        del src.entries[name_old]
        dst.entries[name_new] = ino
        if stat.S_ISDIR(node.mode) and parent_inode_old != parent_inode_new:
            src.nlink -= 1
            dst.nlink += 1
            self.parent[ino] = parent_inode_new
        t = _now()
        src.mtime = src.ctime = dst.mtime = dst.ctime = node.ctime = t

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:
            node.data.clear()
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        return bytes(self._node(fh).data[off:off + size])

    async def write(self, fh, off, buf):
        node = self._node(fh)
        if off > len(node.data):
            node.data.extend(bytes(off - len(node.data)))
        node.data[off:off + len(buf)] = buf
        node.mtime = node.ctime = _now()
        return len(buf)

    async def flush(self, fh):
        return None

    async def release(self, fh):
        return None

    async def fsync(self, fh, datasync):
        node = self._node(fh)
        node.durable_data = bytes(node.data)

    async def opendir(self, inode, ctx):
        self._dir(inode)
        return inode

    async def readdir(self, fh, start_id, token):
        entries = sorted(self._dir(fh).entries.items())
        for i, (name, ino) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i):
                return

    async def releasedir(self, fh):
        return None

    async def fsyncdir(self, fh, datasync):
        d = self._dir(fh)
        d.durable_entries = dict(d.entries)

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 24
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s

    async def access(self, inode, mode, ctx):
        return True


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = LossyFS(backing)
    options = set(pyfuse3.default_options) | {"fsname=nexus-lossyfs"}
    pyfuse3.init(fs, mountpoint, options)
    cut = []

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            async def serve() -> None:
                await pyfuse3.main()
                nursery.cancel_scope.cancel()  # unmounted from outside

            nursery.start_soon(serve)
            with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
                print("ready", flush=True)
                async for signum in signals:
                    cut.append(signum == signal.SIGUSR1)
                    pyfuse3.terminate()
                    break

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)
    if cut and cut[0]:
        fs.power_cut()
        print("power cut", flush=True)


if __name__ == "__main__":
    main()
