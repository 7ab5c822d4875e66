"""What the store's background threads share (the search indexer, the garbage collector):
a daemon thread woken by an event and stopped promptly, and the rule by which they give way
to the store's foreground work."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class BackgroundThread:
    """A daemon thread running ``self._loop``; ``_stop`` and ``_wake`` are what it waits on."""

    thread_name = "nexus-background"

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()

    def _end_thread(self) -> None:
        """Ask the thread to stop and wait for it (it checks ``_stop`` between steps)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None


def yield_to_foreground(last_activity: Callable[[], float] | None, stop: threading.Event,
                        slice_until: float, *, quiet: float, defer_max: float, slice_s: float) -> float:
    """Wait until the store has been quiet (``last_activity``: time.monotonic() of its last
    foreground work) for ``quiet`` seconds, or give up waiting after ``defer_max`` and then
    work without waiting for ``slice_s``; returns the new end of that slice (pass it back)."""
    if last_activity is None or time.monotonic() < slice_until:
        return slice_until
    waited = 0.0
    while not stop.is_set():
        idle = time.monotonic() - last_activity()
        if idle >= quiet:
            break
        if waited >= defer_max:
            return time.monotonic() + slice_s
        pause = quiet - idle
        stop.wait(pause)
        waited += pause
    return slice_until
