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
        #: the part of ``used`` handed to uploads that have not finished yet
        self.in_flight = 0
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

    def start_upload(self, n: int) -> None:
        """``n`` dirty bytes were handed to an upload; :meth:`finish_upload` when it ends."""
        with self._cond:
            self.in_flight += n

    def finish_upload(self, n: int) -> None:
        with self._cond:
            self.in_flight -= n
            self.used -= n
            self._cond.notify_all()

    def has_room(self, n: int = 0) -> bool:
        return self.used + n <= self.limit

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until usage is under the limit, or no upload is left to finish; False on timeout.

        With nothing in flight, what fills the buffer is partly written blocks of
        other open files, which no upload will free: waiting longer cannot help.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self.used < self.limit or self.in_flight <= 0, timeout)
