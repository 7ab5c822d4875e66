"""``fs.pipe-max-size``: raised for libfuse's splice() while nexusfs mounts need it, then put back.

libfuse takes write requests with splice() only if it can grow a pipe to 2 MiB, above the
kernel's default limit for unprivileged pipes (1 MiB); root without CAP_SYS_RESOURCE
(containers, VMs) cannot either. As root a mount raises the limit, host-wide, and the last
nexusfs mount to end puts back the value it found. Several mounts may run at once, each in
its own process: they share one record, under a lock, in ``/run/nexusfs`` (root's): the
value found before the first raised it, and the mounts that rely on it (pid and start time,
so a crashed mount's entry is recognised as dead and dropped by the next one to look).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("nexusfs.mount")

#: the pipe libfuse needs to take a request with splice(): its receive buffer (1 MiB
#: of data plus a 4 KiB header) rounded up by the kernel to a power of two
SPLICE_PIPE_BYTES = 2 << 20
PIPE_MAX_SIZE = "/proc/sys/fs/pipe-max-size"
#: the shared record of who raised the limit (root-only: only root can raise it)
STATE_DIR = "/run/nexusfs"


def _state_path() -> str:
    return os.path.join(STATE_DIR, "pipe-max-size.json")


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> str:
    return f"{os.getpid()}:{_start_time(os.getpid())}"


def _alive(holder: str) -> bool:
    pid, _, start = holder.partition(":")
    return pid.isdigit() and _start_time(int(pid)) == start


@contextmanager
def _locked() -> Iterator[dict | None]:
    """The shared record (None if there is none), under an exclusive lock; write it back
    with ``_save`` before leaving."""
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(STATE_DIR, "pipe-max-size.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with open(_state_path(), encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            state = None
        except ValueError:
            log.warning("ignoring an unreadable %s", _state_path())
            state = None
        yield state
    finally:
        os.close(fd)


def _save(state: dict | None) -> None:
    if state is None:
        try:
            os.unlink(_state_path())
        except FileNotFoundError:
            pass
        return
    tmp = _state_path() + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, _state_path())


def _limit() -> int:
    with open(PIPE_MAX_SIZE, encoding="ascii") as f:
        return int(f.read().strip())


def _set_limit(value: int) -> None:
    with open(PIPE_MAX_SIZE, "w", encoding="ascii") as f:
        f.write(str(value))


def _can_grow_pipe() -> bool:
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, SPLICE_PIPE_BYTES)
        return True
    except OSError:
        return False
    finally:
        os.close(r)
        os.close(w)


def allow_splice() -> bool:
    """Let libfuse splice write requests (root only): raise ``fs.pipe-max-size`` to 2 MiB
    if this process cannot grow a pipe that far. True if this mount now relies on a limit a
    nexusfs mount raised: call ``release_splice`` when it ends."""
    if os.getuid() != 0:
        return False
    try:
        with _locked() as state:
            current = None if _can_grow_pipe() else _limit()
            if current is None or current >= SPLICE_PIPE_BYTES:
                # allowed already (by the limit, CAP_SYS_RESOURCE, or another mount's raise),
                # or not for want of a higher limit: nothing to raise
                if state is None:
                    return False
            else:
                _set_limit(SPLICE_PIPE_BYTES)
                # the value to put back is the one found now (lowered again since an earlier
                # raise, it is someone's new choice); mounts relying on the limit stay listed
                state = {"original": current, "raised_to": SPLICE_PIPE_BYTES,
                         "holders": (state or {}).get("holders", [])}
                log.info("raised fs.pipe-max-size from %d to %d bytes so that libfuse can splice write "
                         "requests; the last nexusfs mount to end puts %d back", current, SPLICE_PIPE_BYTES,
                         state["original"])
            state["holders"] = [h for h in state.get("holders", []) if _alive(h)] + [_me()]
            _save(state)
            return True
    except (OSError, ValueError) as exc:
        log.debug("could not raise fs.pipe-max-size: %s", exc)
        return False


def release_splice() -> None:
    """This mount no longer needs the raised limit: if no other live mount does, put back
    the value found before the first raised it (unless someone changed it since)."""
    me = _me()
    try:
        with _locked() as state:
            if state is None:
                return
            state["holders"] = [h for h in state.get("holders", []) if h != me and _alive(h)]
            if state["holders"]:
                _save(state)
                log.debug("fs.pipe-max-size stays raised: %d other mount(s) rely on it", len(state["holders"]))
                return
            current = _limit()
            if current == state["raised_to"]:
                _set_limit(state["original"])
                log.info("put fs.pipe-max-size back to %d bytes", state["original"])
            else:
                log.info("left fs.pipe-max-size at %d bytes: it was changed after a mount raised it", current)
            _save(None)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("could not put fs.pipe-max-size back: %s", exc)
