"""nexusfs: a content-addressed filesystem you can mount, embed, or serve.

Quick start::

    import nexusfs
    nx = nexusfs.connect()              # zero configuration: ~/.local/share/nexus
    nx.write_bytes("/hello.txt", b"hi")
    print(nx.read_bytes("/hello.txt"))
"""

from .api import FileInfo, Nexus, NexusFile, connect
from .config import Config
from .errors import ConfigError, CorruptionError, FsError, NexusError, StoreError
from .search.grep import GrepMatch
from .types import StoreInfo

__version__ = "0.1.0"

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
