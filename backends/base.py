"""The blob-store interface every backend implements.

A blob store maps opaque string keys to immutable byte strings. It knows
nothing about files, inodes or SQL: the engine decides what a key means.
Keys are made of ``[0-9a-zA-Z._-]`` characters and do not start with ``.``; stores may reject others.
"""

from __future__ import annotations

import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

#: 1-200 characters; not starting with '.' (no '.', '..' or names like temporary files)
KEY_RE = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z._-]{0,199}")

T = TypeVar("T")


class BlobStoreError(Exception):
    """A blob store failed in a way that retrying will not fix."""


class BlobNotFound(BlobStoreError, KeyError):
    """The key does not exist in the store."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"blob {self.key!r} not found"


class TemporaryStoreError(BlobStoreError):
    """A failure that may go away if the operation is retried (timeouts, 5xx, throttling)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch, as the store reports it


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise ValueError(f"invalid blob key {key!r}")
    return key


class BlobStore(ABC):
    """put / get / get_range / delete / exists / list over immutable blobs."""

    #: a URL-like description, for messages and ``nexus info``
    url: str = ""

    @abstractmethod
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``key`` atomically and durably (readers see all or nothing)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole blob; raise BlobNotFound if missing."""

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes starting at ``offset`` (short at the end of the blob)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the blob; return False if it did not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Yield every blob whose key starts with ``prefix`` (order unspecified)."""

    def stat(self, key: str) -> BlobInfo:
        """Size and mtime of one blob; the default scans ``list``, stores may do better."""
        for info in self.list(key):
            if info.key == key:
                return info
        raise BlobNotFound(key)

    def capacity(self) -> tuple[int, int] | None:
        """(total bytes, free bytes) where the store knows them, else None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and file handles."""


def retry(
    op: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
    is_temporary: Callable[[BaseException], bool] = lambda e: isinstance(e, TemporaryStoreError),
) -> T:
    """Run ``op`` and retry temporary failures with exponential backoff and full jitter."""
    for attempt in range(attempts):
        try:
            return op()
        except Exception as exc:  # noqa: BLE001 - filtered by is_temporary
            if attempt == attempts - 1 or not is_temporary(exc):
                raise
            time.sleep(random.uniform(0, min(max_delay, base_delay * 2**attempt)))
    raise AssertionError("unreachable")
