"""Accounting for dirty (written but not yet uploaded) block data.

Writers add bytes as their buffers grow; staging releases them once a block is
uploaded. When the total passes the limit, writers stage their own dirty
blocks and then wait here until uploads bring it back under the limit, so
memory never grows without bound however fast data arrives.
"""

from __future__ import annotations

import threading


class DirtyBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def add(self, n: int) -> None:
        if n:
            with self._cond:
                self.used += n

    def release(self, n: int) -> None:
        if n:
            with self._cond:
                self.used -= n
                if self.used < self.limit:
                    self._cond.notify_all()

    def has_room(self, n: int = 0) -> bool:
        return self.used + n <= self.limit

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until usage is under the limit; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.used < self.limit, timeout)
