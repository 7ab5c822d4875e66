"""The ``nexus`` command line.

Every command works on one store: ``--home DIR`` (default ``$NEXUS_HOME``, else
``~/.local/share/nexus``), optionally configured by ``--config nexus.yaml``.
``nexus init`` creates a store; every other command refuses a missing one.

Errors are reported as one line, ``nexus: error: <message>``, with exit status 1
(``grep`` uses 2, like grep). ``NEXUS_DEBUG=1`` shows the traceback instead.

Higher layers add sub-commands through the ``nexusfs.commands`` entry-point
group (``mount``, ``umount``). They are loaded only when listed or run, and one
that fails to load shows up as unavailable instead of breaking ``nexus``.
A plugin command reaches the store with :func:`open_store`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import IO, Any, NoReturn

import click

from . import __version__, paths
from .config import parse_duration
from .errors import FsError, NexusError, StoreError

PLUGIN_GROUP = "nexusfs.commands"
CHUNK = 1 << 20


# ------------------------------------------------------------------ state
@dataclasses.dataclass
class State:
    """What the global options say; the open store, once a command asks for it."""

    home: str | None = None
    config_file: str | None = None
    nx: Any = None
    #: exit status for errors (grep uses 2)
    error_code: int = 1

    def close(self) -> None:
        nx, self.nx = self.nx, None
        if nx is not None:
            nx.close()


class CliError(click.ClickException):
    """A one-line error: ``nexus: error: <message>``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"nexus: error: {self.message}", err=True)


def _state(ctx: click.Context | None = None) -> State:
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def open_store(ctx: click.Context | None = None, *, create: bool = False, **settings: Any) -> Any:
    """The store named by the global options (opened once per command; closed when it ends)."""
    import nexusfs

    st = _state(ctx)
    if st.nx is None:
        # a command is short-lived: it leaves queued index work to the mount (or `nexus index`)
        settings.setdefault("background_indexing", False)
        st.nx = nexusfs.connect(st.home, config_file=st.config_file, create=create, **settings)
    return st.nx


def describe_error(exc: BaseException) -> str | None:
    """A one-line message for errors a person can act on; None for anything else."""
    if isinstance(exc, NexusError):
        return exc.message
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.filename is not None:
            name = os.fsdecode(exc.filename)
            if exc.filename2 is not None:
                return f"{name} -> {os.fsdecode(exc.filename2)}: {text}"
            return f"{name}: {text}"
        return text
    if isinstance(exc, ValueError):
        return str(exc) or type(exc).__name__
    try:
        import apsw

        if isinstance(exc, apsw.Error):
            return f"metadata database error: {exc}"
    except ImportError:  # pragma: no cover - apsw is a dependency
        pass
    from backends import BlobStoreError

    if isinstance(exc, BlobStoreError):
        return f"blob store error: {exc}"
    try:
        import yaml

        if isinstance(exc, yaml.YAMLError):
            return f"invalid YAML: {exc}".splitlines()[0]
    except ImportError:  # pragma: no cover
        pass
    return None


def _fail(message: str, code: int | None = None) -> NoReturn:
    raise CliError(message, _state().error_code if code is None else code)


# ---------------------------------------------------------------- plugins
class NexusGroup(click.Group):
    """Built-in commands plus those registered in the ``nexusfs.commands`` entry points."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, click.Command] = {}

    def _plugins(self) -> dict[str, EntryPoint]:
        try:
            eps = entry_points(group=PLUGIN_GROUP)
        except Exception:  # noqa: BLE001 - broken metadata must not break the CLI
            return {}
        return {ep.name: ep for ep in eps if ep.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = self.commands.get(cmd_name)
        if cmd is not None:
            return cmd
        if cmd_name in self._loaded:
            return self._loaded[cmd_name]
        ep = self._plugins().get(cmd_name)
        if ep is None:
            return None
        try:
            obj = ep.load()
            if not isinstance(obj, click.Command):
                raise TypeError(f"{ep.value} is not a click command")
        except Exception as exc:  # noqa: BLE001 - any failure: report it when the command is used
            obj = _unavailable(cmd_name, ep, exc)
        self._loaded[cmd_name] = obj
        return obj

    def invoke(self, ctx: click.Context) -> Any:
        st = _state(ctx)
        try:
            try:
                rv = super().invoke(ctx)
            except BaseException:
                try:
                    st.close()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
                raise
            st.close()
            return rv
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            if os.environ.get("NEXUS_DEBUG") == "1":
                raise
            click.echo("nexus: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            if os.environ.get("NEXUS_DEBUG") == "1":
                raise
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE and not isinstance(exc, FsError):
                raise  # click turns a closed pipe into a quiet exit
            msg = describe_error(exc)
            if msg is None:
                msg = (f"internal error ({type(exc).__name__}: {exc}); "
                       "run with NEXUS_DEBUG=1 to see the traceback")
            raise CliError(msg.replace("\n", " "), st.error_code) from None


def _unavailable(name: str, ep: EntryPoint, exc: BaseException) -> click.Command:
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0]

    def run() -> None:
        _fail(f"the {name} command is unavailable ({ep.value} could not be loaded: {reason})")

    return click.Command(
        name,
        callback=run,
        help=f"(unavailable: {reason})",
        short_help=f"(unavailable: {reason})"[:60],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


# ------------------------------------------------------------------ output
def out(text: str) -> None:
    """Print a line; names that are not UTF-8 go out as their original bytes."""
    click.echo(text.encode("utf-8", "surrogateescape"))


def _binary(name: str) -> Any:
    """The byte stream under sys.stdin / sys.stdout (also under click's test runner)."""
    stream = getattr(sys, name)
    return getattr(stream, "buffer", stream)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _stderr_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(total: int | None = None, *, unit: str = "B", desc: str | None = None) -> Any:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        desc=desc,
        file=sys.stderr,
        disable=not _stderr_tty(),
        leave=False,
        dynamic_ncols=True,
    )


def _phase_progress(bar: Any) -> Callable[[str, int, int | None], None]:
    """An engine progress callback (phase, done, total) driving one bar."""
    state = {"phase": None}

    def tick(phase: str, n: int, total: int | None) -> None:
        if phase != state["phase"]:
            state["phase"] = phase
            bar.set_description(phase.removeprefix("check_").replace("_", " "))
            bar.reset(total=total)
        bar.n = n
        bar.refresh()

    return tick


def _basename(path: str) -> str:
    return paths.normalize(path).rsplit("/", 1)[-1]


def _mtime(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9))


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 10**9)) + f".{ns % 10**9:09d}"


# -------------------------------------------------------------------- root
@click.group("nexus", cls=NexusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", metavar="DIR", type=click.Path(file_okay=False),
              help="Store directory (default: $NEXUS_HOME, else ~/.local/share/nexus).")
@click.option("--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
              envvar="NEXUS_CONFIG", help="Configuration file (nexus.yaml).")
@click.version_option(__version__, prog_name="nexus")
@click.pass_context
def cli(ctx: click.Context, home: str | None, config_file: str | None) -> None:
    """nexusfs: a content-addressed filesystem you can mount, embed, or serve.

    Paths inside the store are absolute ('/docs/a.txt'); a path without a
    leading '/' is taken from the root as well.
    """
    st = _state(ctx)
    st.home = home
    st.config_file = config_file


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="nexus")


# -------------------------------------------------------------------- init
@cli.command()
@click.option("--block-size", metavar="SIZE", help="Block size of the new store (64KiB-64MiB, power of two; default 4MiB).")
@click.option("--inline-max", metavar="SIZE", help="Files up to this size live in the metadata (default 8KiB).")
@click.option("--compression", type=click.Choice(["zstd", "none"]), help="Block compression (default zstd).")
def init(block_size: str | None, inline_max: str | None, compression: str | None) -> None:
    """Create a store (does nothing if one exists)."""
    try:
        nx = open_store(create=False)
    except StoreError:
        settings = {"block_size": block_size, "inline_max": inline_max, "compression": compression}
        nx = open_store(create=True, **{k: v for k, v in settings.items() if v is not None})
        info = nx.info()
        out(f"created a nexusfs store in {info.home} (block size {human(info.block_size)}, "
            f"inline max {human(info.inline_max)}, compression {info.compression})")
        return
    info = nx.info()
    out(f"a nexusfs store already exists in {info.home} (block size {human(info.block_size)}); "
        "nothing changed")


# -------------------------------------------------------------------- info
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def info(as_json: bool) -> None:
    """Sizes, deduplication and compression of the store."""
    nx = open_store()
    i = nx.info()
    if as_json:
        data = dataclasses.asdict(i)
        data["dedup_ratio"] = round(i.dedup_ratio, 4)
        data["compression_ratio"] = round(i.compression_ratio, 4)
        out(json.dumps(data, indent=2))
        return
    rows = [
        ("store", i.home),
        ("metadata", i.metadata),
        ("blobs", i.blobs),
        ("schema version", str(i.schema_version)),
        ("block size", human(i.block_size)),
        ("inline max", human(i.inline_max)),
        ("compression", i.compression),
        ("files", str(i.files)),
        ("directories", str(i.directories)),
        ("symlinks", str(i.symlinks)),
        ("other inodes", str(i.other_inodes)),
        ("logical size", f"{human(i.logical_bytes)} (sum of file sizes)"),
        ("referenced", f"{human(i.referenced_bytes)} (stored content before deduplication)"),
        ("unique", f"{human(i.unique_bytes)} (after deduplication)"),
        ("stored", f"{human(i.stored_bytes)} (after compression, incl. {human(i.inline_bytes)} inline)"),
        ("dedup ratio", f"{i.dedup_ratio:.2f}x"),
        ("compression ratio", f"{i.compression_ratio:.2f}x"),
        ("objects", f"{i.objects} ({i.pending_objects} pending, {i.unreferenced_objects} unreferenced)"),
    ]
    width = max(len(k) for k, _v in rows) + 1
    for k, v in rows:
        out(f"{k + ':':<{width}} {v}")


# ---------------------------------------------------------------------- ls
def _long_lines(entries: list[tuple[str, Any]]) -> list[str]:
    cols = []
    for name, fi in entries:
        if fi.type in ("char", "block"):
            size = f"{os.major(fi.rdev)}, {os.minor(fi.rdev)}"
        else:
            size = str(fi.size)
        link = f" -> {fi.target}" if fi.target is not None else ""
        cols.append((stat.filemode(fi.mode), str(fi.nlink), str(fi.uid), str(fi.gid), size,
                     _mtime(fi.mtime_ns), name + link))
    if not cols:
        return []
    w = [max(len(c[i]) for c in cols) for i in range(5)]
    return [f"{m} {n:>{w[1]}} {u:<{w[2]}} {g:<{w[3]}} {s:>{w[4]}} {t} {name}" for m, n, u, g, s, t, name in cols]


@cli.command("ls")
@click.option("-l", "long", is_flag=True, help="Long listing: mode, links, owner, group, size, mtime.")
@click.option("-R", "recursive", is_flag=True, help="List sub-directories recursively.")
@click.option("-a", "show_all", is_flag=True, help="Include names starting with '.'.")
@click.argument("path", default="/")
def ls_cmd(long: bool, recursive: bool, show_all: bool, path: str) -> None:
    """List a directory (or show one file)."""
    nx = open_store()
    fi = nx.stat(path, follow_symlinks=False)
    if fi.type == "symlink" and not long and nx.is_dir(path):
        fi = nx.stat(path)
    if not fi.is_dir:
        out(_long_lines([(path, fi)])[0] if long else path)
        return
    todo = [paths.normalize(path)]
    first = True
    while todo:
        d = todo.pop()
        entries = [(_basename(e.path), e) for e in nx.list(d, attrs=True)]
        entries.sort(key=lambda x: x[0])
        if not show_all:
            entries = [e for e in entries if not e[0].startswith(".")]
        if recursive:
            if not first:
                out("")
            out(f"{d}:")
        first = False
        for line in (_long_lines(entries) if long else [n for n, _e in entries]):
            out(line)
        if recursive:
            todo.extend(reversed([e.path for _n, e in entries if e.is_dir]))


# --------------------------------------------------------------------- cat
def _each(items: tuple[str, ...], fn: Callable[[str], None]) -> None:
    """Run ``fn`` on each item; report failures one line each and exit 1 at the end if any failed."""
    failed = False
    for item in items:
        try:
            fn(item)
        except Exception as exc:
            msg = describe_error(exc)
            if msg is None or os.environ.get("NEXUS_DEBUG") == "1":
                raise
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE and not isinstance(exc, FsError):
                raise
            click.echo(f"nexus: error: {msg}", err=True)
            failed = True
    if failed:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("paths_", metavar="PATH...", nargs=-1, required=True)
def cat(paths_: tuple[str, ...]) -> None:
    """Print files."""
    nx = open_store()
    stdout = _binary("stdout")

    def one(p: str) -> None:
        with nx.open(p, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                stdout.write(chunk)
        stdout.flush()

    _each(paths_, one)


# ----------------------------------------------------------------- put/get
def _local_walk(top: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(local path, path relative to top, lstat) of everything below ``top``, parents first."""
    stack = [(top, "")]
    while stack:
        d, rel = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for e in entries:
            st = e.stat(follow_symlinks=False)
            r = f"{rel}/{e.name}"
            yield e.path, r, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((e.path, r))
        stack.extend(reversed(subdirs))


def _put_file(nx: Any, local: str, dest: str, st: os.stat_result, bar: Any) -> None:
    with open(local, "rb") as src, nx.open(dest, "wb", mode_bits=stat.S_IMODE(st.st_mode)) as dst:
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            dst.write(chunk)
            bar.update(len(chunk))
    nx.chmod(dest, stat.S_IMODE(st.st_mode))
    nx.utime(dest, (st.st_atime_ns, st.st_mtime_ns))


def _replace_nondir(nx: Any, dest: str) -> None:
    try:
        fi = nx.stat(dest, follow_symlinks=False)
    except FsError as exc:
        if exc.errno == errno.ENOENT:
            return
        raise
    if fi.is_dir:
        raise FsError(errno.EISDIR, f"{dest}: Is a directory")
    nx.delete(dest)


@cli.command()
@click.argument("local", type=click.Path(exists=False))
@click.argument("nexuspath")
def put(local: str, nexuspath: str) -> None:
    """Copy a local file or directory tree into the store.

    Directories are copied recursively with symlinks (as symlinks), hard
    links, modes and times. If NEXUSPATH is an existing directory, LOCAL goes
    inside it (like cp); missing parent directories are created.
    """
    nx = open_store()
    st = os.stat(local)  # LOCAL itself may be a symlink: it is followed (symlinks inside are kept)
    dest = paths.normalize(nexuspath)
    if nx.is_dir(dest):
        name = os.path.basename(os.path.normpath(os.path.abspath(local)))
        if name:
            dest = paths.join(dest, name)
    if dest != "/":
        nx.mkdir(dest.rsplit("/", 1)[0] or "/", parents=True, exist_ok=True)
    if stat.S_ISREG(st.st_mode):
        with progress_bar(st.st_size, desc=_basename(dest)) as bar:
            _put_file(nx, local, dest, st, bar)
        return
    if not stat.S_ISDIR(st.st_mode):
        _fail(f"{local}: only files, symlinks and directories can be copied")
    total = None
    if _stderr_tty():
        total = sum(s.st_size for _p, _r, s in _local_walk(local) if stat.S_ISREG(s.st_mode))
    nx.mkdir(dest, exist_ok=True, mode=stat.S_IMODE(st.st_mode))
    dirs = [(dest, st)]
    links: dict[tuple[int, int], str] = {}
    with progress_bar(total, desc="put") as bar:
        for lpath, rel, s in _local_walk(local):
            target = dest.rstrip("/") + rel
            if stat.S_ISDIR(s.st_mode):
                if not nx.is_dir(target):
                    _replace_nondir(nx, target)
                    nx.mkdir(target, mode=stat.S_IMODE(s.st_mode))
                dirs.append((target, s))
            elif stat.S_ISLNK(s.st_mode):
                _replace_nondir(nx, target)
                nx.symlink(os.readlink(lpath), target)
            elif stat.S_ISREG(s.st_mode):
                key = (s.st_dev, s.st_ino)
                if s.st_nlink > 1 and key in links:
                    _replace_nondir(nx, target)
                    nx.link(links[key], target)
                    continue
                _replace_nondir(nx, target)
                _put_file(nx, lpath, target, s, bar)
                if s.st_nlink > 1:
                    links[key] = target
            else:
                click.echo(f"nexus: warning: skipping special file {lpath}", err=True)
    for d, s in reversed(dirs):
        nx.chmod(d, stat.S_IMODE(s.st_mode))
        nx.utime(d, (s.st_atime_ns, s.st_mtime_ns))


def _get_file(nx: Any, src: str, local: str, fi: Any, bar: Any) -> None:
    if os.path.lexists(local) and not os.path.isdir(local):
        os.unlink(local)
    with nx.open(src, "rb") as f, open(local, "wb") as dst:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            dst.write(chunk)
            bar.update(len(chunk))
    os.chmod(local, fi.permissions)
    os.utime(local, ns=(fi.atime_ns, fi.mtime_ns))


@cli.command()
@click.argument("nexuspath")
@click.argument("local", type=click.Path())
def get(nexuspath: str, local: str) -> None:
    """Copy a file or directory tree out of the store ('-' for stdout).

    Directories are copied recursively with symlinks, hard links, modes and
    times. If LOCAL is an existing directory, the copy goes inside it (like cp).
    """
    nx = open_store()
    src = paths.normalize(nexuspath)
    fi = nx.stat(src)
    if local == "-":
        if fi.is_dir:
            _fail(f"{src} is a directory: it cannot be written to stdout")
        stdout = _binary("stdout")
        with nx.open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                stdout.write(chunk)
        stdout.flush()
        return
    dest = local
    if os.path.isdir(local) and _basename(src):
        dest = os.path.join(local, _basename(src))
    if fi.is_file:
        with progress_bar(fi.size, desc=_basename(src)) as bar:
            _get_file(nx, src, dest, fi, bar)
        return
    if not fi.is_dir:
        _fail(f"{src}: only files and directories can be copied out")
    tree = list(nx.walk(src, attrs=True)) if _stderr_tty() else None
    total = sum(i.size for i in tree if i.is_file) if tree is not None else None
    os.makedirs(dest, exist_ok=True)
    dirs = [(dest, fi)]
    links: dict[int, str] = {}
    with progress_bar(total, desc="get") as bar:
        stack = [(src, dest)]
        while stack:
            sdir, ldir = stack.pop()
            entries = sorted(nx.list(sdir, attrs=True), key=lambda e: e.path)
            subdirs = []
            for e in entries:
                target = os.path.join(ldir, os.fsdecode(paths.encode(_basename(e.path))))
                if e.is_dir:
                    if os.path.lexists(target) and not os.path.isdir(target):
                        os.unlink(target)
                    os.makedirs(target, exist_ok=True)
                    dirs.append((target, e))
                    subdirs.append((e.path, target))
                elif e.type == "symlink":
                    if os.path.lexists(target):
                        os.unlink(target)
                    os.symlink(e.target, target)
                elif e.is_file:
                    if e.nlink > 1 and e.ino in links:
                        if os.path.lexists(target):
                            os.unlink(target)
                        os.link(links[e.ino], target)
                        continue
                    _get_file(nx, e.path, target, e, bar)
                    if e.nlink > 1:
                        links[e.ino] = target
                elif e.type == "fifo":
                    if os.path.lexists(target):
                        os.unlink(target)
                    os.mkfifo(target, e.permissions)
                    os.utime(target, ns=(e.atime_ns, e.mtime_ns))
                else:
                    click.echo(f"nexus: warning: skipping {e.type} {e.path}", err=True)
            stack.extend(reversed(subdirs))
    for d, i in reversed(dirs):
        os.chmod(d, i.permissions)
        os.utime(d, ns=(i.atime_ns, i.mtime_ns))


# ------------------------------------------------------------------- write
@cli.command()
@click.option("-a", "--append", is_flag=True, help="Append instead of replacing the content.")
@click.option("-p", "--parents", is_flag=True, help="Create missing parent directories.")
@click.argument("nexuspath")
def write(append: bool, parents: bool, nexuspath: str) -> None:
    """Write standard input to a file in the store (streaming)."""
    nx = open_store()
    if parents:
        nx.mkdir(paths.normalize(nexuspath).rsplit("/", 1)[0] or "/", parents=True, exist_ok=True)
    stdin = _binary("stdin")
    with nx.open(nexuspath, "ab" if append else "wb") as f:
        while True:
            chunk = stdin.read(CHUNK)
            if not chunk:
                break
            f.write(chunk)


# --------------------------------------------------------------- namespace
@cli.command()
@click.option("-r", "-R", "--recursive", is_flag=True, help="Remove directories and their contents.")
@click.option("-f", "--force", is_flag=True, help="Ignore missing paths.")
@click.argument("paths_", metavar="PATH...", nargs=-1, required=True)
def rm(recursive: bool, force: bool, paths_: tuple[str, ...]) -> None:
    """Remove files (and, with -r, directories)."""
    nx = open_store()

    def one(p: str) -> None:
        if paths.normalize(p) == "/":
            raise FsError(errno.EPERM, "refusing to remove '/'")
        fi = None
        try:
            fi = nx.stat(p, follow_symlinks=False)
        except FsError as exc:
            if not (force and exc.errno == errno.ENOENT):
                raise
        if fi is None:
            return
        if fi.is_dir and not recursive:
            raise FsError(errno.EISDIR, f"{paths.normalize(p)}: Is a directory (use -r)")
        nx.delete(p, recursive=recursive, missing_ok=force)

    _each(paths_, one)


@cli.command()
@click.option("-p", "--parents", is_flag=True, help="Create parents as needed; no error if it exists.")
@click.option("-m", "--mode", default="755", show_default=True, help="Permission bits (octal).")
@click.argument("paths_", metavar="PATH...", nargs=-1, required=True)
def mkdir(parents: bool, mode: str, paths_: tuple[str, ...]) -> None:
    """Create directories."""
    try:
        bits = int(mode, 8)
    except ValueError:
        raise ValueError(f"invalid mode {mode!r} (expected octal, e.g. 755)") from None
    nx = open_store()
    _each(paths_, lambda p: nx.mkdir(p, parents=parents, exist_ok=parents, mode=bits))


@cli.command()
@click.argument("src")
@click.argument("dst")
def mv(src: str, dst: str) -> None:
    """Move or rename (into DST if it is a directory)."""
    nx = open_store()
    nx.stat(src, follow_symlinks=False)
    if nx.is_dir(dst):
        dst = paths.join(paths.normalize(dst), _basename(src))
    nx.rename(src, dst)


@cli.command()
@click.option("-r", "-R", "--recursive", is_flag=True, help="Copy directories recursively.")
@click.argument("src")
@click.argument("dst")
def cp(recursive: bool, src: str, dst: str) -> None:
    """Copy inside the store (metadata only: the data blocks are shared)."""
    nx = open_store()
    fi = nx.stat(src)
    if fi.is_dir:
        if not recursive:
            _fail(f"{paths.normalize(src)} is a directory (use -r)")
        if nx.is_dir(dst):
            dst = paths.join(paths.normalize(dst), _basename(src))
    nx.copy(src, dst, recursive=recursive)


@cli.command("stat")
@click.option("-L", "--dereference", is_flag=True, help="Follow a symlink.")
@click.option("--json", "as_json", is_flag=True, help="Print the attributes as JSON.")
@click.argument("path")
def stat_cmd(dereference: bool, as_json: bool, path: str) -> None:
    """Show every attribute of a path (times in nanoseconds)."""
    nx = open_store()
    fi = nx.stat(path, follow_symlinks=dereference)
    try:
        xattrs = nx.listxattr(path) if dereference or fi.type != "symlink" else \
            [paths.decode(n) for n in nx.meta.listxattr(fi.ino)]
    except NexusError:
        xattrs = []
    data = dataclasses.asdict(fi)
    data["xattrs"] = xattrs
    if as_json:
        out(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rows = [
        ("path", fi.path),
        ("type", fi.type),
        ("size", str(fi.size)),
        ("mode", f"{stat.S_IMODE(fi.mode):04o} ({stat.filemode(fi.mode)})"),
        ("uid", str(fi.uid)),
        ("gid", str(fi.gid)),
        ("links", str(fi.nlink)),
        ("inode", str(fi.ino)),
        ("blocks", f"{fi.blocks} (512-byte units stored)"),
    ]
    if fi.type in ("char", "block"):
        rows.append(("device", f"{os.major(fi.rdev)}, {os.minor(fi.rdev)}"))
    if fi.target is not None:
        rows.append(("target", fi.target))
    for name in ("atime_ns", "mtime_ns", "ctime_ns", "btime_ns"):
        ns = getattr(fi, name)
        rows.append((name.removesuffix("_ns"), f"{ns} ({_when(ns)})"))
    if xattrs:
        rows.append(("xattrs", ", ".join(xattrs)))
    for k, v in rows:
        out(f"{k + ':':<8} {v}")


# ------------------------------------------------------------------ search
@cli.command()
@click.argument("pattern")
@click.argument("directory", default="/")
def glob(pattern: str, directory: str) -> None:
    """Paths matching a glob (*, ?, [...], **) under DIRECTORY; exit 1 if none."""
    nx = open_store()
    found = nx.glob(pattern, directory)
    for p in found:
        out(p)
    if not found:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("-i", "--ignore-case", is_flag=True, help="Ignore case.")
@click.option("-w", "--word-regexp", "word", is_flag=True, help="Match whole words only.")
@click.option("-F", "--fixed-strings", "fixed", is_flag=True, help="PATTERN is a plain string.")
@click.option("-v", "--invert-match", "invert", is_flag=True, help="Select non-matching lines.")
@click.option("-l", "--files-with-matches", "files_only", is_flag=True, help="Print only the names of matching files.")
@click.option("-c", "--count", is_flag=True, help="Print the number of matching lines per file.")
@click.option("-n", "--line-number", "line_numbers", is_flag=True, help="Prefix lines with their number.")
@click.argument("pattern")
@click.argument("directory", default="/")
def grep(ignore_case: bool, word: bool, fixed: bool, invert: bool, files_only: bool, count: bool,
         line_numbers: bool, pattern: str, directory: str) -> None:
    """Search file contents like `grep -r`; exit 0 if found, 1 if not, 2 on error."""
    _state().error_code = 2
    nx = open_store()
    nx.stat(directory)  # a missing DIRECTORY is an error (exit 2), reported with its full path
    matches = nx.grep(pattern, directory, ignore_case=ignore_case, word=word, fixed=fixed, invert=invert)
    single = nx.is_file(directory)  # one file: no file names, like grep
    if files_only:
        seen: list[str] = []
        for m in matches:
            if not seen or seen[-1] != m.path:
                seen.append(m.path)
        for p in seen:
            out(p)
    elif count:
        counts: dict[str, int] = {}
        for m in matches:
            counts[m.path] = counts.get(m.path, 0) + 1
        if single:
            out(str(counts.get(paths.normalize(directory), 0)))
        else:
            # every file read gets a line, like grep -c: binary files (skipped) count 0
            files = sorted(i.path for i in nx.walk(directory, attrs=True) if i.is_file)
            for p in files:
                out(f"{p}:{counts.get(p, 0)}")
    else:
        for m in matches:
            prefix = "" if single else f"{m.path}:"
            out(f"{prefix}{m.line_no}:{m.line}" if line_numbers else f"{prefix}{m.line}")
    if not matches:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("-k", "--top", "k", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many results.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON lines.")
@click.argument("query")
@click.argument("directory", default="/")
def search(k: int, as_json: bool, query: str, directory: str) -> None:
    """Rank the files under DIRECTORY by meaning and wording for QUERY.

    Prints `score path:start-end  snippet` lines, best first; exit 1 if nothing matched.
    """
    nx = open_store()
    results = nx.search(query, directory, k=k)
    for hit in results:
        if as_json:
            out(json.dumps(dataclasses.asdict(hit), ensure_ascii=False))
        else:
            out(f"{hit.score:.3f} {hit.path}:{hit.start_line}-{hit.end_line}  {hit.snippet}")
    if results.pending:
        click.echo(f"nexus: note: {results.pending} file(s) are not indexed yet (run `nexus index`); "
                   "results may miss them", err=True)
    if not results:
        raise click.exceptions.Exit(1)


@cli.command("index")
@click.option("--status", is_flag=True, help="Show what the index holds and what is queued.")
@click.option("--rebuild", is_flag=True, help="Forget the index and build it again.")
def index_cmd(status: bool, rebuild: bool) -> None:
    """Bring the search index up to date now (the mount does this in the background)."""
    nx = open_store()
    if status:
        st = nx.index_status()
        out(f"queued files:     {st.pending}" + (f" ({st.failing} failing)" if st.failing else ""))
        out(f"indexed files:    {st.files}")
        out(f"distinct content: {st.docs}" + (
            " (" + ", ".join(f"{n} {k}" for k, n in sorted(st.by_kind.items())) + ")" if st.by_kind else ""))
        out(f"semantic chunks:  {st.chunks}")
        out(f"embedder:         {st.embedder or 'none'}" + ("" if st.vector_search else " (sqlite-vec missing)"))
        for ino, err in st.errors:
            out(f"failing: inode {ino}: {err}")
        return
    with progress_bar(unit="file", desc="rebuilding" if rebuild else "indexing") as bar:
        def tick(done: int, total: int | None) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        n = nx.reindex(rebuild=rebuild, progress=tick)
    st = nx.index_status()
    out(f"indexed {n} file(s); {st.files} files, {st.docs} distinct contents, {st.chunks} chunks in the index"
        + (f"; {st.pending} still queued" if st.pending else ""))


# ------------------------------------------------------------- maintenance
@cli.command()
@click.option("--repair", is_flag=True, help="Repair what can be repaired.")
@click.option("--verify-data/--no-verify-data", default=True, show_default=True,
              help="Read every blob and check its content hash.")
@click.pass_context
def fsck(ctx: click.Context, repair: bool, verify_data: bool) -> None:
    """Check every invariant of the store (exit 0 clean, 1 corrected, 4 left uncorrected)."""
    nx = open_store()
    with progress_bar(unit="it", desc="fsck") as bar:
        report = nx.fsck(repair=repair, verify_data=verify_data, progress=_phase_progress(bar))
    for p in report.problems:
        out(str(p))
    checked = ", ".join(f"{v} {k}" for k, v in report.checked.items())
    fixed = sum(1 for p in report.problems if p.repaired)
    if report.clean:
        verdict = "no problems"
    else:
        verdict = f"{len(report.problems)} problem(s), {fixed} repaired"
        if report.unrepaired and not repair:
            verdict += " (run `nexus fsck --repair`)"
    out(f"checked {checked}{' (blob contents verified)' if verify_data else ''}: {verdict}")
    if report.exit_code:
        ctx.exit(report.exit_code)


@cli.command()
@click.option("--grace", metavar="DURATION",
              help="Keep unreferenced blobs younger than this (e.g. 10m, 1h; default from the config).")
def gc(grace: str | None) -> None:
    """Delete blobs no file references any more."""
    nx = open_store()
    seconds = parse_duration(grace, "--grace") if grace is not None else None
    with progress_bar(unit="obj", desc="gc") as bar:
        report = nx.gc(grace=seconds, progress=_phase_progress(bar))
    out(f"freed {human(report.bytes_freed)}: {report.objects_deleted} objects, "
        f"{report.orphan_blobs_deleted} orphan blobs, {report.temp_files_deleted} temporary files")
    if report.errors:
        _fail(f"{report.errors} blob(s) could not be deleted (they will be retried by the next gc)")


# ---------------------------------------------------------- export/import
@cli.command("export")
@click.option("--with-data", is_flag=True, help="Include the content of every block (for a store that shares no blobs).")
@click.option("-o", "--output", metavar="FILE", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@click.option("--format", "format_", type=click.Choice(["jsonl"]), default="jsonl", show_default=True,
              help="The stream's format (JSON Lines, the one format there is).")
@click.argument("path", default="/")
def export_cmd(with_data: bool, output: str | None, format_: str, path: str) -> None:
    """Write PATH's tree as JSON Lines (see nexusfs.transfer for the format)."""
    from .transfer import export_tree

    nx = open_store()
    with progress_bar(unit="entries", desc="export") as bar:
        tick = _phase_progress(bar)
        if output is None or output == "-":
            stats = export_tree(nx, _binary("stdout"), path, with_data=with_data,
                                progress=tick)
        else:
            with open(output, "wb") as f:
                stats = export_tree(nx, f, path, with_data=with_data, progress=tick)
    if output not in (None, "-") or _stderr_tty():
        click.echo(f"exported {stats.entries} entries"
                   + (f", {stats.objects} objects ({human(stats.object_bytes)})" if with_data else ""),
                   err=True)


@cli.command("import")
@click.option("--under", default="/", show_default=True, metavar="PATH", help="Import below this directory.")
@click.option("--same-owner/--no-same-owner", default=None,
              help="Restore owners (default: only when running as root).")
@click.argument("file", default="-", type=click.Path(dir_okay=False, allow_dash=True))
def import_cmd(under: str, same_owner: bool | None, file: str) -> None:
    """Read an export (from FILE, or stdin) into the store."""
    from .transfer import import_stream

    nx = open_store()
    with progress_bar(unit="B", desc="import") as bar:
        tick = _phase_progress(bar)
        if file == "-":
            stats = import_stream(nx, _binary("stdin"), under, same_owner=same_owner,
                                  progress=tick)
        else:
            with open(file, "rb") as f:
                stats = import_stream(nx, f, under, same_owner=same_owner, progress=tick,
                                      total=os.fstat(f.fileno()).st_size)
    out(f"imported {stats.entries} entries ({stats.dirs} directories, {stats.files} files, "
        f"{stats.symlinks} symlinks, {stats.links} hard links, {stats.specials} special files, "
        f"{stats.objects} objects)")


if __name__ == "__main__":  # pragma: no cover
    main()
