"""nexusfs: a content-addressed filesystem you can mount, embed, or serve.

Quick start::

    import nexusfs
    nx = nexusfs.connect()              # zero configuration: ~/.local/share/nexus
    nx.write_bytes("/hello.txt", b"hi")
    print(nx.read_bytes("/hello.txt"))

The public names load on first use, so a process that needs one small part of the
package (grep's matching workers, the mount's helpers) does not import the whole engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "Config": ".config",
    "ConfigError": ".errors",
    "CorruptionError": ".errors",
    "FileInfo": ".api",
    "FsError": ".errors",
    "GrepMatch": ".search.grep",
    "Nexus": ".api",
    "NexusError": ".errors",
    "NexusFile": ".api",
    "StoreError": ".errors",
    "StoreInfo": ".types",
    "connect": ".api",
}

__all__ = [
    "Config",
    "ConfigError",
    "CorruptionError",
    "FileInfo",
    "FsError",
    "GrepMatch",
    "Nexus",
    "NexusError",
    "NexusFile",
    "StoreError",
    "StoreInfo",
    "connect",
]

if TYPE_CHECKING:
    from .api import FileInfo, Nexus, NexusFile, connect
    from .config import Config
    from .errors import ConfigError, CorruptionError, FsError, NexusError, StoreError
    from .search.grep import GrepMatch
    from .types import StoreInfo


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nexusfs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
