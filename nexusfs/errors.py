"""Errors of the engine. Every one carries an errno and a sentence a person can act on."""

from __future__ import annotations

import errno as _errno
import os


class NexusError(Exception):
    """Base class: a failure with a one-line message meant for people."""

    errno: int = _errno.EIO

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class FsError(NexusError, OSError):
    """A filesystem operation failed with ``errno`` (ENOENT, EEXIST, ...)."""

    def __init__(self, errno: int, message: str | None = None) -> None:
        text = message or os.strerror(errno)
        NexusError.__init__(self, text, errno)
        self.strerror = text
        self.filename = None

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # pickling keeps errno and text
        return (self.__class__, (self.errno, self.message))


class ConfigError(NexusError):
    """The configuration is missing, unreadable or invalid."""

    errno = _errno.EINVAL


class StoreError(NexusError):
    """The store is missing, locked, corrupt, or of an unsupported version."""


class CorruptionError(StoreError):
    """Stored data does not match its recorded content hash or size."""


def fs_error(err: int, what: str | bytes | None = None) -> FsError:
    """FsError(err) with the path or name (if given) in the message."""
    text = os.strerror(err)
    if what is not None:
        if isinstance(what, bytes):
            what = what.decode("utf-8", "surrogateescape")
        text = f"{what}: {text}"
    return FsError(err, text)
