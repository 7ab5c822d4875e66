"""Blob stores: immutable byte strings under string keys. No files, no SQL."""

from __future__ import annotations

from urllib.parse import urlparse

from .base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    TemporaryStoreError,
    retry,
)
from .local import LocalBlobStore

__all__ = [
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "LocalBlobStore",
    "TemporaryStoreError",
    "open_blob_store",
    "retry",
]


def open_blob_store(url: str, **options: object) -> BlobStore:
    """Open a store from a URL: ``file:///path`` or a plain path."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else url
        return LocalBlobStore(path, fsync=bool(options.get("fsync", True)))
    raise BlobStoreError(f"unsupported blob store URL scheme {parsed.scheme!r} in {url!r}")
