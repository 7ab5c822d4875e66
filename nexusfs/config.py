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


def format_size(n: int) -> str:
    """A size as a person writes it ('3MiB', '64KiB'), in bytes when no unit divides it."""
    for unit, mult in (("TiB", GiB << 10), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n} bytes"


def format_duration(seconds: float) -> str:
    """A duration as a person writes it ('1h', '10m'), in seconds when no unit divides it."""
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:.0f}{unit}"
    return f"{seconds:g}s"


def _seconds(s: float) -> str:
    return f"{s:g}s"


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
    #: free unreferenced blobs from a background thread (the mount, and API processes with
    #: background work on: ``background_indexing``); one process per store collects at a time
    gc_auto: bool = True
    #: the background collector runs this often (seconds) ...
    gc_interval: float = 60.0
    #: ... and sooner once this many bytes of garbage have passed the grace period
    gc_threshold: int = 256 * MiB
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
    #: a grep or semantic query stops after this long (seconds; 0 = no limit)
    search_timeout: float = 60.0
    #: the mount's .search results of one query may hold this much (larger: EFBIG)
    search_results_max: int = 256 * MiB
    #: directories (by name, at any depth) whose files semantic search neither indexes nor
    #: shows: version-control internals by default; grep still searches them
    semantic_skip_dirs: tuple[str, ...] = (".git", ".hg", ".svn")
    #: where the config came from, for messages
    source: str = "defaults"
    #: how messages name each setting read from a file ('nexus.yaml: threads'); others by their name
    labels: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.home = os.path.abspath(os.path.expanduser(self.home))
        if not self.metadata:
            self.metadata = "sqlite://" + os.path.join(self.home, "meta.db")
        if not self.blobs:
            self.blobs = "file://" + os.path.join(self.home, "blobs")
        self.validate()

    def validate(self) -> None:
        """Check every setting; the message names the setting (and the file it came from) and its value."""
        bs = self.block_size
        if not (64 * KiB <= bs <= 64 * MiB) or bs & (bs - 1):
            self._bad("block_size", f"must be a power of two between 64KiB and 64MiB, not {format_size(bs)}")
        limit = min(bs, 1 * MiB)
        if not 0 <= self.inline_max <= limit:
            self._bad("inline_max", f"must be between 0 and {format_size(limit)}"
                      f"{' (the block size)' if limit < MiB else ''}, not {format_size(self.inline_max)}")
        if self.compression not in ("zstd", "none"):
            self._bad("compression", f"must be zstd or none, not {self.compression!r}")
        if not 0 <= self.group_commit <= 1:
            self._bad("group_commit", f"must be between 0 and 1s, not {_seconds(self.group_commit)}")
        if self.threads < 1:
            self._bad("threads", f"must be at least 1, not {self.threads}")
        if self.search_timeout < 0:
            self._bad("search_timeout", f"must be 0 (no limit) or more, not {_seconds(self.search_timeout)}")
        if self.search_results_max < 64 * KiB:
            self._bad("search_results_max", f"must be at least 64KiB, not {format_size(self.search_results_max)}")
        if self.dirty_limit < 64 * KiB:
            self._bad("dirty_limit", f"must be at least 64KiB, not {format_size(self.dirty_limit)}")
        if self.embedder:
            self.embedder = _embedder_name(self.embedder, "embedder")
        # (that it holds a whole block is checked when the store, and so its block size, is open)
        if self.cache_size < 0:
            self._bad("cache_size", f"must not be negative, not {self.cache_size}")
        if self.readahead_blocks < 0:
            self._bad("readahead_blocks", f"must not be negative, not {self.readahead_blocks}")
        if self.gc_grace < 0:
            self._bad("gc_grace", f"must not be negative, not {_seconds(self.gc_grace)}")
        if not 0.1 <= self.gc_interval <= 86400:
            self._bad("gc_interval", f"must be between 100ms and 1d, not {_seconds(self.gc_interval)}")
        if self.gc_threshold < 0:
            self._bad("gc_threshold", f"must not be negative, not {format_size(self.gc_threshold)}")

    def label(self, name: str) -> str:
        """How a message names setting ``name``: 'nexus.yaml: threads' if it was read from that file."""
        return self.labels.get(name, name)

    def _bad(self, name: str, problem: str) -> None:
        raise ConfigError(f"{self.label(name)} {problem}")

    @classmethod
    def load(cls, path: str | None = None, *, home: str | None = None, **overrides: object) -> Config:
        """Read ``path`` (YAML) if given, then apply ``home`` and ``overrides``."""
        values: dict[object, object] = {}
        labels: dict[str, str] = {}
        source = "defaults"
        if path:
            values = _read_yaml(path)
            source = path
            labels = {_name(k): f"{path}: {_name(k)}" for k in values}
            base = os.path.dirname(os.path.abspath(path))
            if "home" in values:
                values["home"] = os.path.join(base, os.path.expanduser(str(values["home"])))
        if home:
            values["home"] = home
            labels.pop("home", None)
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
                labels.pop(_name(key), None)  # a keyword argument is named as it is
        return cls.from_dict(values, source, labels)

    @classmethod
    def from_dict(cls, values: dict[object, object], source: str = "defaults",
                  labels: dict[str, str] | None = None) -> Config:
        """A config from raw settings; ``labels`` says how messages name each (default: by its name)."""
        labels = dict(labels or {})
        known = {f.name for f in fields(cls)} - {"source", "labels"}
        kwargs: dict[str, object] = {"source": source, "labels": labels}
        for key, raw in values.items():
            name = _name(key)
            if name not in known:
                prefix = f"{source}: " if name in labels else ""  # labelled: read from that file
                raise ConfigError(f"{prefix}unknown setting {str(key)!r}")
            kwargs[name] = _coerce(name, raw, labels.get(name, name))
        return cls(**kwargs)  # type: ignore[arg-type]


def _name(key: object) -> str:
    """The field name of a setting as written ('block-size' and 'block_size' alike)."""
    return str(key).replace("-", "_")


def _coerce(name: str, raw: object, what: str) -> object:
    if name in ("block_size", "inline_max", "cache_size", "dirty_limit", "search_results_max", "gc_threshold"):
        return parse_size(raw, what)
    if name in ("gc_grace", "gc_interval", "group_commit", "search_timeout"):
        return parse_duration(raw, what)
    if name in ("threads", "readahead_blocks"):
        try:
            return int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: expected a whole number, got {raw!r}") from None
    if name in ("verify_reads", "fsync_blobs", "background_indexing", "semantic", "gc_auto"):
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


def _read_yaml(path: str) -> dict[object, object]:
    import yaml

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text "
                          f"(byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise ConfigError(f"config file {path} is not valid YAML "
                          f"(line {line}: control character 0x{ord(char):02x})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings")
    return data
