"""A cheaper wait for the next kernel request in pyfuse3's main loop.

pyfuse3's worker loop waits for ``/dev/fuse`` to become readable with
``trio.lowlevel.wait_readable`` before every request. Trio always parks the task
for that, even when the next request is already queued: an epoll registration, a
pass through the scheduler and its epoll_wait, and another registration change
once the task wakes. Under a stream of small requests (a ``create`` is five of
them) that is a large share of each request's cost.

pyfuse3 looks trio up through its module attribute ``pyfuse3.trio`` (the same hook
``pyfuse3.asyncio.enable`` uses). :func:`install` puts a thin stand-in there that
is the real trio in everything except ``lowlevel.wait_readable``: that one first
asks ``poll()`` with a zero timeout whether a request is waiting, and if so
returns at once. It yields to the scheduler first only if a worker thread has
handed trio a result (or a signal arrived: both come through trio's
``run_sync_soon`` queue), or if it has not yielded for :data:`YIELD_EVERY_SECONDS`,
so other tasks still get their turn (pyfuse3's other reader task, woken each time
the lock is let go, needs none: it only waits for the lock again). Otherwise, or
if the descriptor is closed or in error, it falls back to trio's own wait, which
also reports a closed descriptor as before. The stand-in's ``Lock`` (pyfuse3 takes
one around each wait) does not yield when it is free, for the same reason.
Measured through the mount (2000 empty files, medians of 5-8, A/B runs
alternated): the poll first, yielding once: creates +8-10%, unlinks +8%; then
yielding only when needed: creates +19%, unlinks +19%, cold-cache stats +8%.

When no request is waiting, the wait first keeps asking for up to
:data:`SPIN_SECONDS` (unless a worker thread has a result for trio to deliver)
before it sleeps. A program working through the mount one call at a time sends
its next request within a few tens of microseconds of our reply; caught while we
are still awake, it costs neither our going to sleep nor the kernel waking us,
which on this VM is most of a small request's cost. Measured through the mount
(2000 files, medians of 8, A/B alternated), spinning 20 µs: stats with a cold
dentry cache 16.2k -> 23.3k/s, creates 4.3k -> 5.3k/s, unlinks 7.2k -> 8.1k/s
(50 µs gained little more); 256 MiB written or read in 1 MiB requests, whose
next request mostly comes later than that: within the noise (-4% to +5% in
medians of 4-7). The price is CPU while requests keep coming (at most
SPIN_SECONDS after each), none while the mount is idle; with a single CPU the
spin would only delay the program we wait for, so it is off there.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

import trio

#: how long the wait keeps asking for the next request before it sleeps
SPIN_SECONDS = 20e-6
#: the longest the wait goes without yielding to trio's scheduler while requests keep coming
YIELD_EVERY_SECONDS = 1e-3


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Lowlevel:
    def __init__(self, spin: float | None = None, yield_every: float = YIELD_EVERY_SECONDS) -> None:
        self._polls: dict[int, Any] = {}
        self.spin = (SPIN_SECONDS if _cpus() > 1 else 0.0) if spin is None else spin
        self.yield_every = yield_every
        self._yielded = time.perf_counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)

    async def wait_readable(self, fd: Any) -> None:
        if isinstance(fd, int):
            p = self._polls.get(fd)
            if p is None:
                p = self._polls[fd] = select.poll()
                p.register(fd, select.POLLIN)
            ready = p.poll(0)
            if not ready and self.spin:
                ready = self._spin(p)
            if ready and ready[0][1] == select.POLLIN:
                now = time.perf_counter()
                trio_has_work = trio.lowlevel.current_statistics().run_sync_soon_queue_size
                if trio_has_work or now - self._yielded >= self.yield_every:
                    self._yielded = now
                    await trio.lowlevel.checkpoint()
                return
        await trio.lowlevel.wait_readable(fd)
        self._yielded = time.perf_counter()

    def _spin(self, p: Any) -> list[tuple[int, int]]:
        """Poll for up to ``self.spin`` seconds, unless a worker thread hands trio a result.

        Runnable tasks do not stop it: pyfuse3's other reader task is woken each time
        the lock is let go, only to wait for it again, so there nearly always is one;
        a task that really has work waits at most ``self.yield_every``.
        """
        statistics = trio.lowlevel.current_statistics
        deadline = time.perf_counter() + self.spin
        while time.perf_counter() < deadline:
            if statistics().run_sync_soon_queue_size:
                break
            ready = p.poll(0)
            if ready:
                return ready
        return []


class _Lock:
    """The lock pyfuse3 takes around each wait for a request: unlike ``trio.Lock``,
    taking it when it is free does not yield to the scheduler (the wait that
    follows does), and a release wakes a waiter rather than handing it the lock."""

    def __init__(self) -> None:
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._held:
            await self._lot.park()
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        self._held = False
        self._lot.unpark()


class _Trio:
    def __init__(self) -> None:
        self.lowlevel = _Lowlevel()
        self.Lock = _Lock

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install(pyfuse3_module: Any) -> None:
    """Make ``pyfuse3_module``'s main loop use the fast wait (idempotent)."""
    if not isinstance(getattr(pyfuse3_module, "trio", None), _Trio):
        pyfuse3_module.trio = _Trio()


def uninstall(pyfuse3_module: Any) -> None:
    pyfuse3_module.trio = trio
