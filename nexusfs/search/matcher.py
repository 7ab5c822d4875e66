"""grep's line matching in worker processes: no pattern can stall the process that asked.

Python's ``re`` holds the GIL for a whole ``search()``, and a backtracking pattern
(``(a+)+$``, ``(\\w+)+;``) can run for minutes on one line. Matched in the caller's
process, such a query froze every other request of the mount. Here the lines are matched
by worker processes instead:

* the caller's process only reads contents and sends them (in batches of whole lines) to
  the workers, so its other threads keep running, and the matching of one query uses
  every core;
* every query has a guard (:class:`QueryGuard`): a time limit and a "has the reader gone
  away" check, polled while waiting for results; when it trips, the query's workers are
  killed (``SIGKILL`` works inside ``re``'s C loop, where nothing else does) and the query
  ends with :class:`SearchStopped`;
* a worker dies with its parent (``PR_SET_PDEATHSIG``), ends itself after a batch's time
  limit (``SIGALRM``, whose default action needs no GIL), and has a memory limit per batch
  (``RLIMIT_AS``), so a stray worker can neither outlive the mount nor hog its memory.

Workers are kept between queries (starting one costs ~40 ms); each query takes its own
workers, so killing one query's workers never touches another query.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..errors import NexusError
from .grep import GrepOptions, Spans, span_matcher

log = logging.getLogger("nexusfs.search")

#: a batch sent to one worker holds up to this many bytes of content (whole lines)
BATCH_BYTES = 1 << 20
#: ... or this many contents
BATCH_ITEMS = 256
#: the shared memory of a worker holds this much at least (more while a batch needs it)
SHM_BYTES = 2 * BATCH_BYTES
#: batches a worker may have queued before the caller waits for its results (one: the
#: worker then never writes a reply while the caller is still writing it the next batch,
#: which would fill both socket buffers and block the two sides on each other)
IN_FLIGHT = 1
#: a worker's address-space limit while it matches a batch: this, plus room for the batch
WORKER_MEMORY = 1 << 30
#: how often a waiting caller checks its guard (seconds)
POLL_S = 0.05
#: a worker that outlives its batch's time limit by this much ends itself
ALARM_GRACE_S = 5.0

Lines = list[tuple[int, bytes]]


class SearchStopped(NexusError):
    """A query was stopped: it ran out of time (ETIMEDOUT), its reader went away (EINTR),
    or its matching needed more memory than a worker may use (ENOMEM)."""


class WorkersUnavailable(SearchStopped):
    """No worker process can be started here (the Python program cannot be run, no
    memory or processes left)."""


@dataclass
class QueryGuard:
    """When a query must stop: after ``timeout`` seconds (None: never), or once
    ``cancelled()`` says its reader has gone away."""

    timeout: float | None = None
    cancelled: Callable[[], bool] | None = None
    started: float = field(default_factory=time.monotonic)
    what: str = "the query"

    def remaining(self) -> float | None:
        if not self.timeout:
            return None
        return self.timeout - (time.monotonic() - self.started)

    def check(self) -> None:
        """Raise SearchStopped if the query must stop now."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise SearchStopped(
                f"{self.what} stopped after {self.timeout:g} s (search_timeout); "
                "search a smaller directory or use a simpler pattern", errno.ETIMEDOUT)
        if self.cancelled is not None and self.cancelled():
            raise SearchStopped(f"{self.what} was cancelled: its reader went away", errno.EINTR)


def process_gone(pid: int) -> bool:
    """Whether process (or thread) ``pid`` is gone or going: no longer there, a zombie, or
    killed (SIGKILL pending). A process killed while it waits for a FUSE request cannot
    end until the request is answered: the kernel turns any fatal signal (Ctrl-C, kill)
    into a pending SIGKILL, which is how the reader's going away shows. Unknown pids (0:
    the caller is in another pid namespace) count as present."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    for line in status.splitlines():
        key, _, value = line.partition(b":")
        if key == b"State" and value.strip()[:1] in (b"Z", b"X"):
            return True
        if key in (b"SigPnd", b"ShdPnd") and int(value.strip() or b"0", 16) & (1 << (signal.SIGKILL - 1)):
            return True
    return False


# ---------------------------------------------------------------- the caller's side
class _Worker:
    """A worker process, the socket to it, and the shared memory its batches go through
    (the caller writes a batch's contents there and reads the matching lines back from
    it; only offsets cross the socket)."""

    def __init__(self, proc: subprocess.Popen, conn: Connection, shm_fd: int) -> None:
        self.proc = proc
        self.conn = conn
        self.shm_fd = shm_fd
        self.shm: mmap.mmap | None = None
        self.shm_size = 0
        self.pattern: tuple | None = None  # the pattern it has compiled
        self.queued: deque[list[tuple[int, int, int]]] = deque()  # units of batches sent, unanswered

    def shared(self, size: int) -> mmap.mmap:
        """The shared memory, with room for ``size`` bytes (it shrinks back after a
        batch that needed much more than usual)."""
        want = max(size, SHM_BYTES)
        if self.shm is None or want > self.shm_size or (self.shm_size > 4 * SHM_BYTES and want <= SHM_BYTES):
            if self.shm is not None:
                self.shm.close()
            want = -(-want // mmap.PAGESIZE) * mmap.PAGESIZE
            os.ftruncate(self.shm_fd, want)
            self.shm = mmap.mmap(self.shm_fd, want)
            self.shm_size = want
        return self.shm

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.conn.close()
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        os.close(self.shm_fd)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
            pass


class MatcherPool:
    """Worker processes for grep, shared by the queries of one process.

    A query takes up to ``per_query`` workers (at least one, waiting while ``limit`` are
    in use) and gives them back when it ends; workers of a stopped query are killed.
    Workers are started from one long-lived thread, because the kernel ends a worker
    when the *thread* that started it exits (``PR_SET_PDEATHSIG``)."""

    def __init__(self, per_query: int | None = None, limit: int | None = None) -> None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.per_query = per_query or cpus
        self.limit = max(limit or 4 * cpus, self.per_query)
        self._idle: list[_Worker] = []
        self._in_use = 0
        self._cond = threading.Condition()
        self._spawn_requests: queue.Queue[Any] = queue.Queue()
        self._spawner: threading.Thread | None = None
        self._closed = False
        self._warned = False

    # -------------------------------------------------------------- workers
    def _spawn(self) -> _Worker:
        with self._cond:
            if self._spawner is None:
                self._spawner = threading.Thread(target=self._spawn_loop, name="nexus-grep-spawner",
                                                 daemon=True)
                self._spawner.start()
        reply: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._spawn_requests.put(reply)
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def _spawn_loop(self) -> None:
        while True:
            reply = self._spawn_requests.get()
            if reply is None:
                return
            try:
                reply.put(_start_worker())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                reply.put(exc)

    def acquire(self, guard: QueryGuard) -> list[_Worker]:
        """Workers for one query (at least one; waits, checking ``guard``, while the
        pool is at its limit)."""
        with self._cond:
            while True:
                if self._closed:
                    raise SearchStopped("the search workers are shut down", errno.ESHUTDOWN)
                free = self.limit - self._in_use
                if free > 0:
                    n = min(self.per_query, free)
                    taken = self._idle[:n]
                    del self._idle[:n]
                    self._in_use += n
                    break
                self._cond.wait(POLL_S)
                guard.check()
        try:
            while len(taken) < n:
                taken.append(self._spawn())
        except BaseException:
            self.release(taken, [])
            with self._cond:
                self._in_use -= n - len(taken)
                self._cond.notify_all()
            raise
        return taken

    def release(self, healthy: list[_Worker], broken: list[_Worker]) -> None:
        """Give workers back: ``healthy`` ones (nothing queued) are kept, ``broken`` ones
        (stopped mid-batch, or dead) are killed."""
        for w in broken:
            w.kill()
        keep_max = self.per_query
        with self._cond:
            self._in_use -= len(healthy) + len(broken)
            extra = []
            for w in healthy:
                if self._closed or len(self._idle) >= keep_max or w.proc.poll() is not None:
                    extra.append(w)
                else:
                    self._idle.append(w)
            self._cond.notify_all()
        for w in extra:
            w.kill()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for w in idle:
            w.kill()
        if self._spawner is not None:
            self._spawn_requests.put(None)
            self._spawner.join(timeout=5)
            self._spawner = None

    # -------------------------------------------------------------- queries
    def match(self, pattern: str, opts: GrepOptions, units: Iterable[tuple[bytes, int]], guard: QueryGuard,
              *, prefilter: bool = False, max_count: int | None = None) -> Iterator[Lines]:
        """The matching lines of each unit (content, number of its first line), in order.

        A unit is a whole content or a piece of one cut at a line boundary; line numbers
        in the results count from the unit's first line. Raises SearchStopped when
        ``guard`` trips (the query's workers are then killed)."""
        try:
            workers = self.acquire(guard)
        except WorkersUnavailable as exc:
            if not self._warned:
                self._warned = True
                log.warning("%s: grep matches in this process instead (a runaway pattern is not "
                            "stopped by the time limit)", exc.message)
            yield from _match_here(pattern, opts, units, guard, prefilter, max_count)
            return
        run = _Run(self, (pattern, opts, prefilter, max_count), guard, workers)
        try:
            yield from run.results(units)
        except BaseException:
            run.finish(ok=False)
            raise
        run.finish(ok=True)


def _match_here(pattern: str, opts: GrepOptions, units: Iterable[tuple[bytes, int]], guard: QueryGuard,
                prefilter: bool, max_count: int | None) -> Iterator[Lines]:
    """The worker's matching, in this process: where no worker process can be started."""
    spans = span_matcher(pattern, opts, prefilter=prefilter)
    for data, first in units:
        guard.check()
        found = spans(data)[:max_count]
        yield [(n + first - 1, data[a:b]) for n, a, b in found]


def _start_worker() -> _Worker:
    parent_end, child_end = socket.socketpair()
    shm_fd = os.memfd_create("nexus-grep")
    env = dict(os.environ)
    # the worker imports the same nexusfs as this process, wherever that comes from
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexusfs.search.matcher", str(child_end.fileno()), str(shm_fd),
             str(os.getpid())],
            pass_fds=[child_end.fileno(), shm_fd], stdin=subprocess.DEVNULL, env=env, close_fds=True,
        )
    except OSError as exc:
        parent_end.close()
        os.close(shm_fd)
        raise WorkersUnavailable(f"cannot start a grep worker process ({sys.executable}): {exc.strerror}",
                                 exc.errno or errno.EAGAIN) from None
    finally:
        child_end.close()
    return _Worker(proc, Connection(parent_end.detach()), shm_fd)


class _Run:
    """One query's use of the pool: batches out to its workers, results back in order."""

    def __init__(self, pool: MatcherPool, pattern: tuple, guard: QueryGuard, workers: list[_Worker]) -> None:
        self.pool = pool
        self.pattern = pattern
        self.guard = guard
        self.workers = workers
        self.order: deque[_Worker] = deque()  # the worker of each batch sent, oldest first

    def results(self, units: Iterable[tuple[bytes, int]]) -> Iterator[Lines]:
        batch: list[tuple[bytes, int]] = []
        size = 0
        for unit in units:
            self.guard.check()
            batch.append(unit)
            size += len(unit[0])
            if size >= BATCH_BYTES or len(batch) >= BATCH_ITEMS:
                yield from self._send(batch, size)
                batch, size = [], 0
        if batch:
            yield from self._send(batch, size)
        while self.order:
            yield from self._receive()

    def _send(self, batch: list[tuple[bytes, int]], size: int) -> Iterator[Lines]:
        # wait for results while every worker has IN_FLIGHT batches queued
        while True:
            w = min(self.workers, key=lambda x: len(x.queued))
            if len(w.queued) < IN_FLIGHT:
                break
            yield from self._receive()
        if w.pattern != self.pattern:
            self._call(w, ("pattern", *self.pattern))
            w.pattern = self.pattern
        shm = w.shared(size)
        units = []
        off = 0
        for data, first in batch:
            shm[off : off + len(data)] = data
            units.append((off, len(data), first))
            off += len(data)
        left = self.guard.remaining()
        alarm = left + ALARM_GRACE_S if left is not None else 0.0
        self._call(w, ("match", units, w.shm_size, WORKER_MEMORY + 6 * size + w.shm_size, alarm))
        w.queued.append(units)
        self.order.append(w)

    def _call(self, w: _Worker, msg: tuple) -> None:
        try:
            w.conn.send(msg)
        except OSError:
            raise SearchStopped("a grep worker process died", errno.EIO) from None

    def _receive(self) -> Iterator[Lines]:
        w = self.order.popleft()
        while not w.conn.poll(POLL_S):
            self.guard.check()
        try:
            reply = w.conn.recv()
        except (EOFError, OSError):
            self.guard.check()  # killed by its alarm: the time limit
            raise SearchStopped("a grep worker process died", errno.EIO) from None
        units = w.queued.popleft()
        if reply[0] == "error":
            raise SearchStopped(reply[1], reply[2])
        shm = w.shm
        assert shm is not None
        for (off, _n, _first), packed in zip(units, reply[1], strict=True):
            spans = array("q", packed)
            yield [(spans[i], shm[off + spans[i + 1] : off + spans[i + 2]]) for i in range(0, len(spans), 3)]

    def finish(self, *, ok: bool) -> None:
        if not self.workers:
            return
        if ok:
            self.pool.release(self.workers, [])
        else:
            self.pool.release([w for w in self.workers if not w.queued],
                              [w for w in self.workers if w.queued])
        self.workers = []


# ------------------------------------------------------------------ the worker
def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _worker(conn: Connection, shm_fd: int) -> None:
    matching: Callable[[bytes], Spans] | None = None
    max_count: int | None = None
    shm: mmap.mmap | None = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "pattern":
            _kind, pattern, opts, prefilter, max_count = msg
            matching = span_matcher(pattern, opts, prefilter=prefilter)
            continue
        _kind, units, shm_size, memory, alarm = msg
        assert matching is not None
        if shm is None or len(shm) != shm_size:
            if shm is not None:
                shm.close()
            shm = mmap.mmap(shm_fd, shm_size)
        resource.setrlimit(resource.RLIMIT_AS, (memory, resource.RLIM_INFINITY))
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, alarm)  # SIGALRM's default action ends the process
        try:
            out = []
            for off, n, first in units:
                spans = matching(shm[off : off + n])
                if max_count is not None:
                    del spans[max_count:]
                packed = array("q")
                for line_no, a, b in spans:
                    packed.extend((line_no + first - 1, a, b))
                out.append(packed.tobytes())
            reply: tuple = ("spans", out)
        except MemoryError:
            out = []
            reply = ("error", "the pattern needs more memory than a search may use", errno.ENOMEM)
        except RecursionError:
            reply = ("error", "the pattern is too complex to match", errno.EINVAL)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        conn.send(reply)
        del out, reply


def main(argv: list[str]) -> None:
    fd, shm_fd, parent = int(argv[1]), int(argv[2]), int(argv[3])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the parent
    _worker(Connection(fd), shm_fd)


if __name__ == "__main__":
    main(sys.argv)
