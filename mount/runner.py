"""Mounting and unmounting: checks, the trio main loop, signals, background mode."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backends import private
from nexusfs.config import Config
from nexusfs.errors import NexusError
from nexusfs.store import Store, prepare_home

from .pipelimit import allow_splice, release_splice

log = logging.getLogger("nexusfs.mount")


class MountError(NexusError):
    """The mount cannot start; the message says why in one sentence."""


#: default seconds the kernel may cache attributes, names and missing names
CACHE_TIMEOUT_S = 1.0


@dataclass
class MountOptions:
    allow_other: bool | None = None  # None: on when running as root
    writeback_cache: bool = False
    attr_timeout: float = CACHE_TIMEOUT_S
    entry_timeout: float = CACHE_TIMEOUT_S
    negative_timeout: float = CACHE_TIMEOUT_S
    debug: bool = False
    nonempty: bool = False
    search: bool = True  # the virtual .search/ directories
    extra: list[str] = field(default_factory=list)  # further FUSE options


def fuse_available() -> str | None:
    """None if FUSE can be used here, else a sentence saying what is missing."""
    if not os.path.exists("/dev/fuse"):
        return "FUSE is not available: /dev/fuse is missing (load the fuse kernel module, or run where FUSE is allowed)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "FUSE support is not installed: pip install 'nexusfs[mount]' (needs the fuse3 and libfuse3-dev packages)"
    if os.getuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is missing: install the fuse3 package"
    return None


def check_mountpoint(mountpoint: str, *, nonempty: bool = False) -> str:
    path = os.path.abspath(os.path.expanduser(mountpoint))
    if not os.path.exists(path):
        raise MountError(f"mountpoint {path} does not exist (create it with mkdir first)")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
    if is_mounted(path):
        raise MountError(f"{path} is already a mount point")
    if not nonempty and os.listdir(path):
        raise MountError(f"mountpoint {path} is not empty")
    if not os.access(path, os.W_OK) and os.getuid() != 0:
        raise MountError(f"you cannot write to mountpoint {path}")
    return path


def _unescape(field_: str) -> str:
    return field_.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, type) of every mounted filesystem."""
    out = []
    try:
        with open("/proc/mounts", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    out.append((_unescape(parts[0]), _unescape(parts[1]), parts[2]))
    except FileNotFoundError:
        pass
    return out


def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    return any(mp == path for _src, mp, _t in mounts())


def fsname(config: Config) -> str:
    return "nexus:" + config.home


def run_mount(config: Config, mountpoint: str, opts: MountOptions, *, ready_fd: int | None = None) -> None:
    """Mount in this process and serve until unmounted or signalled; flushes everything on exit."""
    problem = fuse_available()
    if problem:
        raise MountError(problem)
    import pyfuse3
    import trio

    from .ops import NexusOperations

    path = check_mountpoint(mountpoint, nonempty=opts.nonempty)
    store = Store.open(config, create=True)
    if store.created:
        log.info("created a new store in %s", config.home)
    try:
        with store.exclusive(f"mounted at {path}"):
            orphans = _purge_orphans(store)
            if orphans:
                log.info("removed %d files that were deleted while open before the last shutdown", orphans)
            store.db.enable_group_commit(config.group_commit)
            ops = NexusOperations(
                store.vfs,
                attr_timeout=opts.attr_timeout,
                entry_timeout=opts.entry_timeout,
                negative_timeout=opts.negative_timeout,
                writeback_cache=opts.writeback_cache,
                searcher=store.searcher if opts.search else None,
                search_spill_dir=config.home,
                search_results_max=config.search_results_max,
            )
            splice_held = allow_splice()
            _keep_freed_memory()
            fuse_opts = {f"fsname={fsname(config)}", "subtype=nexus", "default_permissions", "noatime"}
            allow_other = opts.allow_other if opts.allow_other is not None else os.getuid() == 0
            if allow_other:
                fuse_opts.add("allow_other")
            if opts.debug:
                fuse_opts.add("debug")
            fuse_opts.update(opts.extra)
            early: list[int] = []
            try:
                with _signals_remembered(early):
                    try:
                        pyfuse3.init(ops, path, fuse_opts)
                    except RuntimeError as exc:
                        raise MountError(f"mounting {path} failed: {exc}") from None
                    log.info("store %s mounted at %s", config.home, path)
                    try:
                        trio.run(_serve, ready_fd, path, ops, early)
                    finally:
                        log.info("unmounting %s and writing out all data", path)
                        pyfuse3.close(unmount=True)
                        store.vfs.sync()
                        # files deleted while still open (or still known to the kernel) go now:
                        # the kernel will never release them
                        _purge_orphans(store)
            finally:
                if splice_held:
                    release_splice()
    finally:
        store.close()
    log.info("store %s closed", config.home)


def _purge_orphans(store: Store) -> int:
    """Remove inodes that have no names left; returns how many."""
    orphans = store.meta.orphans()
    for ino in orphans:
        store.meta.purge_inode(ino)
    return len(orphans)


#: glibc mallopt() parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: free memory at the top of the heap that glibc keeps instead of returning it
KEEP_FREED_BYTES = 64 << 20


def _keep_freed_memory() -> None:
    """Have glibc reuse the memory of freed write requests instead of fresh pages.

    pyfuse3 hands each write request to us as a new 1 MiB ``bytes`` object, and
    sequential writes keep them (as a dirty block's segments) until the block is
    staged. With glibc's defaults such allocations are served by mmap, or from heap
    memory given back to the kernel as soon as a few MiB are free, so every request
    lands on fresh pages, and faulting in fresh memory costs more than copying the
    data (here ~0.6 ms against ~0.1 ms per MiB). Serving them from the heap, and
    keeping up to :data:`KEEP_FREED_BYTES` of freed memory, makes them reuse pages
    the process already touched. A no-op without glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 8 << 20)
    mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


#: how long to wait for the kernel's INIT request before reporting the mount ready anyway
HANDSHAKE_WAIT_S = 10.0

#: kernel read-ahead for the mount, KiB. The default (128) makes the kernel send
#: 128 KiB read requests; 1 MiB requests read files about a third faster here.
READ_AHEAD_KB = 1024


def _raise_readahead(path: str) -> None:
    """Ask the kernel for large read-ahead on our mount (root only; best effort).

    It must happen after the FUSE handshake, which caps read-ahead at what the
    kernel offered (its 128 KiB default). The device number comes from
    /proc/self/mountinfo: stat() of the mountpoint would send a request to this
    very process.
    """
    if os.getuid() != 0:
        return
    device = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == path:
                    device = fields[2]  # the last match is the mount just made
        if device is not None:
            with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w", encoding="ascii") as f:
                f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("could not raise read-ahead for %s: %s", path, exc)


#: the signals that unmount: Ctrl-C, kill, a closed terminal
UNMOUNT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _signals_remembered(received: list[int]) -> Iterator[None]:
    """While the mount exists but is not served (from its creation until the serving loop
    listens, and while everything is written out after it), an unmount signal is appended
    to ``received`` instead of interrupting: the loop acts on one that came early (a Ctrl-C
    right after mounting unmounts cleanly, like any other), and the final write-out is never
    cut short."""
    old = {sig: signal.signal(sig, lambda num, _frame: received.append(num)) for sig in UNMOUNT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


async def _serve(ready_fd: int | None, path: str, ops: Any, early: list[int]) -> None:
    """Serve the mount until it is unmounted or an unmount signal comes (also one already
    in ``early``, received before the loop listened)."""
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:

        async def unmount(sig: int) -> None:
            log.info("received %s, unmounting", signal.Signals(sig).name)
            # Data written to files still open may be only in the kernel's page
            # cache (writeback cache): have it written back to us while we still
            # serve requests, so the final sync commits it.
            with trio.move_on_after(60):
                await trio.to_thread.run_sync(_syncfs, path, abandon_on_cancel=True)
            pyfuse3.terminate()

        async def watch_signals() -> None:
            with trio.open_signal_receiver(*UNMOUNT_SIGNALS) as signals:
                if early:
                    await unmount(early[0])
                    return
                async for sig in signals:
                    await unmount(sig)
                    return

        async def after_handshake() -> None:
            # Read-ahead can only be raised once the kernel has our INIT reply; report
            # the mount ready after that, so the first reads are already large ones.
            with trio.move_on_after(HANDSHAKE_WAIT_S):
                await ops.handshake.wait()
            _raise_readahead(path)
            if ready_fd is not None:
                _notify(ready_fd, "OK")

        from . import fastwait

        fastwait.install(pyfuse3)
        ops.handshake = trio.Event()
        nursery.start_soon(watch_signals)
        nursery.start_soon(after_handshake)
        await pyfuse3.main(min_tasks=2, max_tasks=64)
        nursery.cancel_scope.cancel()


def _syncfs(path: str) -> None:
    """syncfs(2) on the filesystem mounted at ``path`` (errors are only logged)."""
    import ctypes
    import ctypes.util

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.warning("cannot open %s to write back cached data: %s", path, exc)
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            log.warning("writing back cached data failed: %s", os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)


def _notify(fd: int, message: str) -> None:
    try:
        os.write(fd, (message.replace("\n", " ") + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def mount_in_background(config: Config, mountpoint: str, child_args: list[str], timeout: float = 60.0) -> str:
    """Start a mount process and return once the filesystem is live (or raise its error)."""
    problem = fuse_available()
    if problem:
        raise MountError(problem)
    path = check_mountpoint(mountpoint)
    prepare_home(config, create=True)  # the log goes there: a clear sentence if it cannot
    log_path = os.path.join(config.home, "mount.log")
    log_fd = private.open_file(log_path, os.O_WRONLY | os.O_APPEND, private.owner_for(config.home))
    r, w = os.pipe()
    with os.fdopen(log_fd, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mount", *child_args, "--ready-fd", str(w)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            pass_fds=(w,),
            start_new_session=True,
        )
    os.close(w)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            import select

            left = deadline - time.monotonic()
            if left <= 0:
                proc.terminate()
                raise MountError(f"the mount did not come up within {timeout:.0f}s (see {log_path})")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    line = buf.decode(errors="replace").strip()
    if line == "OK":
        return path
    proc.wait(timeout=30)
    if line.startswith("ERR "):
        raise MountError(line[4:])
    raise MountError(f"the mount process exited with status {proc.returncode} (see {log_path})")


def unmount(mountpoint: str, *, timeout: float = 120.0) -> None:
    """Unmount and wait until the mount process has written everything out and exited."""
    path = os.path.abspath(os.path.expanduser(mountpoint))
    entry = next(((src, t) for src, mp, t in mounts() if mp == path), None)
    if entry is None:
        raise MountError(f"{path} is not mounted")
    src, fstype = entry
    if fstype != "fuse.nexus":
        raise MountError(f"{path} is not a nexusfs mount (it is {fstype})")
    home = src[len("nexus:") :] if src.startswith("nexus:") else None
    pid = _mount_pid(home) if home else None
    cmd = ["fusermount3", "-u", path] if shutil.which("fusermount3") else ["umount", path]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and os.getuid() == 0 and cmd[0] != "umount":
        res = subprocess.run(["umount", path], capture_output=True, text=True)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise MountError(f"cannot unmount {path}: {msg[-1] if msg else 'unknown error'}")
    if pid is not None:
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise MountError(f"unmounted {path}, but mount process {pid} is still writing out data")
            time.sleep(0.05)


def _mount_pid(home: str) -> int | None:
    try:
        with open(os.path.join(home, "mount.lock"), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    parts = text.rsplit("pid ", 1)
    if len(parts) == 2 and parts[1].strip().isdigit():
        return int(parts[1].strip())
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def report_failure(ready_fd: int | None, exc: BaseException) -> None:
    """Tell a waiting parent (background mode) why the mount failed."""
    if ready_fd is not None:
        _notify(ready_fd, "ERR " + (str(exc) or exc.__class__.__name__))


__all__ = [
    "MountError",
    "MountOptions",
    "check_mountpoint",
    "fuse_available",
    "is_mounted",
    "mount_in_background",
    "run_mount",
    "unmount",
]
