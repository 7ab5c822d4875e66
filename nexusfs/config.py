"""Configuration: where the store lives and how the engine behaves.

Zero configuration works: the store lives in ``$NEXUS_HOME`` or else in the XDG
data directory (``~/.local/share/nexus``). A YAML file (``nexus.yaml``) can set
any field below; sizes accept ``4MiB``, ``512M``, plain bytes; durations ``1h``,
``90s``, plain seconds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields

from .errors import ConfigError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.I)


def parse_size(value: object, what: str = "size") -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ConfigError(f"{what}: cannot read {value!r} as a size (try 4MiB, 512M or bytes)")
    mult = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": GiB << 10}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def parse_duration(value: object, what: str = "duration") -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ConfigError(f"{what}: cannot read {value!r} as a duration (try 90s, 10m, 1h)")
    mult = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[(m.group(2) or "s").lower()]
    return float(m.group(1)) * mult


def default_home() -> str:
    env = os.environ.get("NEXUS_HOME")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "nexus")


@dataclass
class Config:
    #: directory holding the store (metadata database, blobs, lock files)
    home: str = field(default_factory=default_home)
    #: metadata database URL; default: sqlite in ``home``
    metadata: str = ""
    #: blob store URL; default: ``home/blobs``
    blobs: str = ""
    #: size of new stores' blocks (fixed at init; 1-4 MiB)
    block_size: int = 4 * MiB
    #: files up to this size live inline in the metadata (fixed at init)
    inline_max: int = 8 * KiB
    #: block compression of new stores: zstd or none
    compression: str = "zstd"
    #: in-memory cache of decoded blocks
    cache_size: int = 512 * MiB
    #: written-but-not-uploaded data held in memory before writers wait
    dirty_limit: int = 256 * MiB
    #: worker threads for hashing, compression and blob I/O
    threads: int = 8
    #: blocks read ahead on sequential reads
    readahead_blocks: int = 2
    #: check each block's content hash when it is read from the blob store
    verify_reads: bool = True
    #: fsync every blob before the metadata that references it is committed
    fsync_blobs: bool = True
    #: unreferenced blobs are kept this long before gc removes them (seconds)
    gc_grace: float = 3600.0
    #: the mount commits namespace changes (create, unlink, rename, chmod...) in groups,
    #: at most this long after the first one (seconds; 0 = each on its own); fsync,
    #: close after writing and unmount commit at once. The API and CLI commit each call.
    group_commit: float = 0.005
    #: keep the search index up to date from a background thread of this process
    background_indexing: bool = True
    #: index text for semantic search (embeddings) as well as for grep
    semantic: bool = True
    #: embedding model for semantic search of a store that has none yet (empty: the default
    #: model); a store keeps the model it was indexed with until `nexus index --rebuild
    #: --embedder NAME` switches it
    embedder: str = ""
    #: directories (by name, at any depth) whose files semantic search neither indexes nor
    #: shows: version-control internals by default; grep still searches them
    semantic_skip_dirs: tuple[str, ...] = (".git", ".hg", ".svn")
    #: where the config came from, for messages
    source: str = "defaults"

    def __post_init__(self) -> None:
        self.home = os.path.abspath(os.path.expanduser(self.home))
        if not self.metadata:
            self.metadata = "sqlite://" + os.path.join(self.home, "meta.db")
        if not self.blobs:
            self.blobs = "file://" + os.path.join(self.home, "blobs")
        self.validate()

    def validate(self) -> None:
        if not (64 * KiB <= self.block_size <= 64 * MiB) or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two between 64KiB and 64MiB, not {self.block_size}")
        if not (0 <= self.inline_max <= min(self.block_size, 1 * MiB)):
            raise ConfigError("inline_max must be between 0 and min(block_size, 1MiB)")
        if self.compression not in ("zstd", "none"):
            raise ConfigError(f"compression must be zstd or none, not {self.compression!r}")
        if not 0 <= self.group_commit <= 1:
            raise ConfigError(f"group_commit must be between 0 and 1s, not {self.group_commit}s")
        if self.threads < 1:
            raise ConfigError("threads must be at least 1")
        if self.dirty_limit < 64 * KiB:
            raise ConfigError(f"dirty_limit must be at least 64KiB, not {self.dirty_limit}")
        if self.embedder:
            self.embedder = _embedder_name(self.embedder, "embedder")
        # (that it holds a whole block is checked when the store, and so its block size, is open)

    @classmethod
    def load(cls, path: str | None = None, *, home: str | None = None, **overrides: object) -> Config:
        """Read ``path`` (YAML) if given, then apply ``home`` and ``overrides``."""
        values: dict[str, object] = {}
        source = "defaults"
        if path:
            values = _read_yaml(path)
            source = path
            base = os.path.dirname(os.path.abspath(path))
            if "home" in values:
                values["home"] = os.path.join(base, os.path.expanduser(str(values["home"])))
        if home:
            values["home"] = home
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, source)

    @classmethod
    def from_dict(cls, values: dict[str, object], source: str = "defaults") -> Config:
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, object] = {"source": source}
        for key, raw in values.items():
            name = key.replace("-", "_")
            if name not in known or name == "source":
                raise ConfigError(f"{source}: unknown setting {key!r}")
            kwargs[name] = _coerce(name, raw, source)
        return cls(**kwargs)  # type: ignore[arg-type]


def _coerce(name: str, raw: object, source: str) -> object:
    what = f"{source}: {name}"
    if name in ("block_size", "inline_max", "cache_size", "dirty_limit"):
        return parse_size(raw, what)
    if name in ("gc_grace", "group_commit"):
        return parse_duration(raw, what)
    if name in ("threads", "readahead_blocks"):
        try:
            return int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected a whole number, got {raw!r}") from None
    if name in ("verify_reads", "fsync_blobs", "background_indexing", "semantic"):
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "yes", "on", "1"):
            return True
        if str(raw).lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{what}: expected true or false, got {raw!r}")
    if name == "semantic_skip_dirs":
        return _name_list(raw, what)
    if raw is None:
        raise ConfigError(f"{what}: a value is required")
    if name == "embedder":
        return _embedder_name(str(raw), what)
    return str(raw)


def _name_list(raw: object, what: str) -> tuple[str, ...]:
    """Directory names: a YAML list, or one string of comma-separated names ('' or null: none)."""
    if raw is None:
        return ()
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"{what}: expected a list of directory names, got {raw!r}")
    names = tuple(x.strip() for x in items if x.strip())
    bad = [x for x in names if "/" in x or x in (".", "..")]
    if bad:
        raise ConfigError(f"{what}: {bad[0]!r} is not a directory name")
    return names


def _embedder_name(raw: str, what: str) -> str:
    """An embedder name as the registry writes it ('' stays: the default); a name no
    embedder has is a ConfigError, not something found out at the first semantic query."""
    if not raw.strip():
        return ""
    from .search.embed import check_name

    try:
        return check_name(raw)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc.message}") from None


def _read_yaml(path: str) -> dict[str, object]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings")
    return data
