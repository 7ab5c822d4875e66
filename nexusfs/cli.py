"""The ``nexus`` command line.

Every command works on one store: ``--home DIR`` (default ``$NEXUS_HOME``, else
``~/.local/share/nexus``), optionally configured by ``--config nexus.yaml``.
A store is created by the first command that puts something into it (see
:data:`COMMANDS_THAT_CREATE`), as :func:`nexusfs.connect` and the mount create
theirs; commands that read, or change what is already there, never create
anything, so a mistyped ``--home`` does not leave a store behind: they say there
is none. ``nexus init`` creates a store with chosen settings.

Errors are reported as one line, ``nexus: error: <message>``, with exit status 1
(``grep`` and ``glob`` use 2, like grep). A usage error (an unknown option, a
missing argument) is one such line too, with exit status 2 as click gives it.
When the reader of the output goes away (``nexus grep ... | head``) the command
stops quietly, ended by SIGPIPE as grep is. ``NEXUS_DEBUG=1`` shows the traceback
instead.

Higher layers add sub-commands through the ``nexusfs.commands`` entry-point
group (``mount``, ``umount``). They are loaded only when listed or run, and one
that fails to load shows up as unavailable instead of breaking ``nexus``.
A plugin command reaches the store with :func:`open_store`.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import grp
import io
import json
import os
import pwd
import signal
import stat
import sys
import time
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import IO, Any, NoReturn

import click

from . import __version__, paths
from .config import format_duration, parse_duration
from .errors import FsError, NexusError
from .localcopy import (
    Getter,
    NamedSink,
    Putter,
    copy_stream,
    local_tree_bytes,
    open_local_for_write,
)

PLUGIN_GROUP = "nexusfs.commands"
#: the commands that create the store on first use: those that put something into it
COMMANDS_THAT_CREATE = frozenset({"init", "put", "write", "mkdir", "import"})


# ------------------------------------------------------------------ state
@dataclasses.dataclass
class State:
    """What the global options say; the open store, once a command asks for it."""

    home: str | None = None
    config_file: str | None = None
    nx: Any = None
    #: exit status for errors (grep uses 2)
    error_code: int = 1
    #: when the store was opened (time.time_ns()); the command queued content for the
    #: search index since (see ``index_what_changed``); --no-index was given
    opened_ns: int = 0
    queued: bool = False
    no_index: bool = False

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
        _error_line(self.message)


def _error_line(message: str) -> None:
    """Print ``nexus: error: <message>`` on stderr (names that are not UTF-8 as their bytes)."""
    click.echo(f"nexus: error: {message}".encode("utf-8", "surrogateescape"), err=True)


def usage_error(exc: click.UsageError) -> CliError:
    """A click usage error as one ``nexus: error:`` line (exit status 2, as click gives it).

    Click would print the usage, a hint and ``Error: ...`` on three lines; the
    command's ``--help`` is named instead.
    """
    ctx = exc.ctx
    where = ctx.command_path.split(" ", 1)[1] if ctx is not None and " " in ctx.command_path else ""
    message = exc.format_message().rstrip(".")
    if where:
        message = f"{where}: {message} (see `nexus {where} --help`)"
    else:
        message = f"{message} (see `nexus --help`)"
    return CliError(message, exc.exit_code)


#: set when stdout's reader went away; main() then ends the process by SIGPIPE
_pipe_broken = False


def _broken_pipe() -> NoReturn:
    """The reader of stdout is gone (`nexus grep ... | head`): stop quietly, as grep does.

    Whatever is still buffered for stdout goes to /dev/null, so nothing
    complains at exit; :func:`main` then lets SIGPIPE end the process, the way
    it ends grep or cat (the shell sees status 141).
    """
    global _pipe_broken
    _pipe_broken = True
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file descriptor (click's test runner)
    raise click.exceptions.Exit(128 + signal.SIGPIPE)


def _is_broken_pipe(exc: BaseException) -> bool:
    """stdout's reader went away (an EPIPE that names no file: a fifo's would)."""
    return (isinstance(exc, OSError) and exc.errno == errno.EPIPE and not isinstance(exc, FsError)
            and exc.filename is None)


def _state(ctx: click.Context | None = None) -> State:
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def open_store(ctx: click.Context | None = None, *, create: bool | None = None, **settings: Any) -> Any:
    """The store named by the global options (opened once per command; closed when it ends).
    ``create``: make it if there is none (default: for :data:`COMMANDS_THAT_CREATE`)."""
    import nexusfs

    st = _state(ctx)
    if st.nx is None:
        command = (ctx or click.get_current_context()).info_name
        if create is None:
            create = command in COMMANDS_THAT_CREATE
        # a command is short-lived: no background indexer; what it writes is indexed
        # before it returns (index_what_changed)
        settings.setdefault("background_indexing", False)
        st.opened_ns = time.time_ns()
        st.nx = nexusfs.connect(st.home, config_file=st.config_file, create=create, **settings)
        if st.nx.store.created and command != "init":
            click.echo(f"nexus: note: created a new store in {st.nx.config.home}", err=True)
        st.nx.meta.on_index_enqueued = lambda: setattr(st, "queued", True)
    return st.nx


def index_what_changed(st: State) -> None:
    """Index the files the command wrote (put, write, cp, import...), so that search finds
    them once it returns; only those (an older backlog is for `nexus index` or a mount).
    Skipped with --no-index, and when a mount of the store is running: its indexer does it,
    and two indexers would only compete for the database."""
    nx = st.nx
    if nx is None or not st.queued or st.no_index or nx.store.mounted_by() is not None:
        return
    try:
        with progress_bar(unit="file", desc="indexing") as bar:
            def tick(done: int, total: int | None) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            nx.reindex(queued_since=st.opened_ns, progress=tick)
    except Exception as exc:  # noqa: BLE001 - the data is written: report, do not fail the command
        if os.environ.get("NEXUS_DEBUG") == "1":
            raise
        msg = describe_error(exc) or f"{type(exc).__name__}: {exc}"
        click.echo(f"nexus: note: the search index was not brought up to date ({msg}); "
                   "run `nexus index`", err=True)


def no_index_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--no-index`` for a command that writes content (see ``index_what_changed``)."""

    def skip(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if value:
            _state(ctx).no_index = True

    return click.option("--no-index", is_flag=True, expose_value=False, callback=skip,
                        help="Leave what was written queued for `nexus index` or a mount "
                             "instead of indexing it for search now.")(fn)


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

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # the global options
            raise usage_error(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        st = _state(ctx)
        try:
            try:
                rv = super().invoke(ctx)
                index_what_changed(st)
            except BaseException:
                try:
                    st.close()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
                raise
            st.close()
            return rv
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # a command's options and arguments, plugins' too
            raise usage_error(exc) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            if os.environ.get("NEXUS_DEBUG") == "1":
                raise
            click.echo("nexus: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            if _is_broken_pipe(exc):
                _broken_pipe()
            if os.environ.get("NEXUS_DEBUG") == "1":
                raise
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


def _when_s(ns: int) -> str:
    """A moment to the second, rounded up (gc may run from then on)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(-(-ns // 10**9)))


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 10**9)) + f".{ns % 10**9:09d}"


# -------------------------------------------------------------------- root
@click.group("nexus", cls=NexusGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", metavar="DIR", type=click.Path(),
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
    global _pipe_broken
    _pipe_broken = False
    try:
        cli.main(args=argv, prog_name="nexus")
    finally:
        if _pipe_broken:
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGPIPE)


# -------------------------------------------------------------------- init
@cli.command()
@click.option("--block-size", metavar="SIZE", help="Block size of the new store (64KiB-64MiB, power of two; default 4MiB).")
@click.option("--inline-max", metavar="SIZE", help="Files up to this size live in the metadata (default 8KiB).")
@click.option("--compression", type=click.Choice(["zstd", "none"]), help="Block compression (default zstd).")
def init(block_size: str | None, inline_max: str | None, compression: str | None) -> None:
    """Create a store (does nothing if one with these settings exists)."""
    wanted = {"block_size": block_size, "inline_max": inline_max, "compression": compression}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    nx = open_store(create=True, **wanted)  # the settings are used only to create one
    info = nx.info()
    if nx.store.created:
        out(f"created a nexusfs store in {info.home} (block size {human(info.block_size)}, "
            f"inline max {human(info.inline_max)}, compression {info.compression})")
        return
    differ = _settings_that_differ(info, wanted)
    if differ:
        _fail(f"a store already exists in {info.home} with other settings: {', '.join(differ)}; "
              "they are fixed when a store is created (nothing changed)")
    out(f"a nexusfs store already exists in {info.home} (block size {human(info.block_size)}); "
        "nothing changed")


def _settings_that_differ(info: Any, wanted: dict[str, str]) -> list[str]:
    """'block size 4.0 MiB (not 1.0 MiB)' for each setting asked of init that the store has not."""
    from .config import parse_size

    have = {"block_size": info.block_size, "inline_max": info.inline_max, "compression": info.compression}
    differ = []
    for name, raw in wanted.items():
        want = raw if name == "compression" else parse_size(raw, "--" + name.replace("_", "-"))
        if want != have[name]:
            shown = (have[name], want) if name == "compression" else (human(have[name]), human(want))
            differ.append(f"{name.replace('_', ' ')} {shown[0]} (not {shown[1]})")
    return differ


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
        ("garbage", _garbage_line(i.garbage)),
        ("background gc", _collector_line(i.garbage)),
    ]
    width = max(len(k) for k, _v in rows) + 1
    for k, v in rows:
        out(f"{k + ':':<{width}} {v}")


def _garbage_line(g: Any) -> str:
    """Unreferenced blobs and when the grace period lets them go."""
    if not g.objects:
        return f"none (unreferenced blobs are kept {format_duration(g.grace)}, the grace period)"
    text = (f"{human(g.bytes)} in {g.objects} unreferenced objects, kept "
            f"{format_duration(g.grace)} (the grace period): ")
    if g.ready_objects == g.objects:
        return text + f"all collectable now ({g.ready_objects})"
    if g.ready_objects:
        text += f"{human(g.ready_bytes)} in {g.ready_objects} collectable now, "
    first, last = _when_s(g.first_ns), _when_s(g.last_ns)
    return text + ("the rest " if g.ready_objects else "") + f"from {first} on" + (
        f", all of it from {last}" if last != first else "")


def _collector_line(g: Any) -> str:
    if g.collector_pid is not None:
        return f"on (running in pid {g.collector_pid}: a mount or API process)"
    if g.auto:
        return "on in mounts and API processes (none is running now: `nexus gc` frees garbage by hand)"
    return "off (gc_auto: false; `nexus gc` frees garbage by hand)"


# ---------------------------------------------------------------------- ls
@functools.lru_cache(maxsize=512)
def owner_name(number: int, *, group: bool = False) -> str:
    """The user (or group) name of ``number``, as ``ls -l`` shows it; the number when it has none."""
    try:
        return grp.getgrgid(number).gr_name if group else pwd.getpwuid(number).pw_name
    except (KeyError, OverflowError):
        return str(number)


def _long_lines(entries: list[tuple[str, Any]]) -> list[str]:
    cols = []
    for name, fi in entries:
        if fi.type in ("char", "block"):
            size = f"{os.major(fi.rdev)}, {os.minor(fi.rdev)}"
        else:
            size = str(fi.size)
        link = f" -> {fi.target}" if fi.target is not None else ""
        cols.append((stat.filemode(fi.mode), str(fi.nlink), owner_name(fi.uid), owner_name(fi.gid, group=True), size,
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
    todo = [fi.path]  # where the path led ('/l/..' after a symlink is its target's parent)
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
class _Failures:
    """Errors of a command that goes on after one: each is one line; exit 1 at the end if any."""

    def __init__(self) -> None:
        self.failed = False

    def report(self, exc: BaseException) -> None:
        msg = describe_error(exc)
        if msg is None or os.environ.get("NEXUS_DEBUG") == "1" or _is_broken_pipe(exc):
            raise exc
        _error_line(msg)
        self.failed = True

    def exit_if_any(self) -> None:
        if self.failed:
            raise click.exceptions.Exit(1)


def _each(items: tuple[str, ...], fn: Callable[[str], None]) -> None:
    """Run ``fn`` on each item; report failures one line each and exit 1 at the end if any failed."""
    failures = _Failures()
    for item in items:
        try:
            fn(item)
        except Exception as exc:  # noqa: BLE001 - reported (or re-raised) by report()
            failures.report(exc)
    failures.exit_if_any()


def _stdout_sink() -> NamedSink:
    """Standard output as a byte stream whose errors say 'standard output' (a closed pipe stays quiet)."""
    return NamedSink(_binary("stdout"), "standard output", pipe_quiet=True)


def _to_stdout(nx: Any, path: str) -> None:
    stdout = _stdout_sink()
    with nx.open(path, "rb") as f:
        copy_stream(f.read, stdout.write)
    stdout.flush()


@cli.command()
@click.argument("paths_", metavar="PATH...", nargs=-1, required=True)
def cat(paths_: tuple[str, ...]) -> None:
    """Print files."""
    nx = open_store()
    _each(paths_, lambda p: _to_stdout(nx, p))


# ----------------------------------------------------------------- put/get
_COPY_RULES = """
    Symlinks are copied as symlinks, also when the source is one (-L follows
    that one), like cp -R and rsync -a; hard links, fifos, device nodes, modes and
    times are kept. If the destination is an existing directory, the source goes
    inside it. What is in the way is treated as cp treats it: an existing file
    is written in place (inode, links and mode kept), a symlink is followed, a
    fifo or device is written to (never removed), a read-only file is refused
    unless --force. Each refusal is reported and the rest is still copied
    (exit 1 at the end).
"""


def _make_parents(nx: Any, path: str) -> None:
    """Create the missing directories above ``path`` in the store; an error names ``path`` itself."""
    parent = paths.normalize(path).rsplit("/", 1)[0] or "/"
    try:
        nx.mkdir(parent, parents=True, exist_ok=True)
    except FsError as exc:
        raise FsError(exc.errno, f"{paths.shown(path)}: {os.strerror(exc.errno)}") from None


@cli.command(help="Copy a local file or directory tree into the store.\n" + _COPY_RULES)
@click.option("-L", "--dereference", is_flag=True,
              help="If LOCAL is a symlink, copy what it points to (symlinks inside a tree stay symlinks).")
@click.option("-f", "--force", is_flag=True, help="Replace read-only files in the way.")
@click.argument("local", type=click.Path(exists=False))
@click.argument("nexuspath")
@no_index_option
def put(dereference: bool, force: bool, local: str, nexuspath: str) -> None:
    nx = open_store()
    st = os.stat(local) if dereference else os.lstat(local)
    dest = nexuspath
    if nx.is_dir(nexuspath):
        name = os.path.basename(os.path.normpath(os.path.abspath(local)))
        if name:
            dest = paths.join(nx.stat(nexuspath).path, name)
    else:
        _make_parents(nx, nexuspath)
    total = st.st_size if stat.S_ISREG(st.st_mode) else None
    if stat.S_ISDIR(st.st_mode) and _stderr_tty():
        total = local_tree_bytes(local)
    failures = _Failures()
    with progress_bar(total, desc=_basename(dest)) as bar:
        putter = Putter(nx, failures.report, force=force, progress=bar.update)
        putter.copy((local, st), dest)
        putter.finish()
    failures.exit_if_any()


@cli.command(help="Copy a file or directory tree out of the store ('-' for stdout).\n" + _COPY_RULES)
@click.option("-L", "--dereference", is_flag=True,
              help="If NEXUSPATH is a symlink, copy what it points to (symlinks inside a tree stay symlinks).")
@click.option("-f", "--force", is_flag=True, help="Replace read-only files in the way.")
@click.argument("nexuspath")
@click.argument("local", type=click.Path())
def get(dereference: bool, force: bool, nexuspath: str, local: str) -> None:
    nx = open_store()
    if local == "-":
        if nx.stat(nexuspath).is_dir:
            _fail(f"{paths.shown(nexuspath)} is a directory: it cannot be written to stdout")
        _to_stdout(nx, nexuspath)
        return
    fi = nx.stat(nexuspath, follow_symlinks=dereference)
    dest = local
    if os.path.isdir(local) and _basename(fi.path):
        dest = os.path.join(local, os.fsdecode(paths.encode(_basename(fi.path))))
    total = fi.size if fi.is_file else None
    if fi.is_dir and _stderr_tty():
        total = sum(i.size for i in nx.walk(fi.path, attrs=True) if i.is_file)
    failures = _Failures()
    with progress_bar(total, desc=_basename(fi.path) or "get") as bar:
        getter = Getter(nx, failures.report, force=force, progress=bar.update)
        getter.copy(fi, dest)
        getter.finish()
    failures.exit_if_any()


# ------------------------------------------------------------------- write
@cli.command()
@click.option("-a", "--append", is_flag=True, help="Append instead of replacing the content.")
@click.option("-p", "--parents", is_flag=True, help="Create missing parent directories.")
@click.argument("nexuspath")
@no_index_option
def write(append: bool, parents: bool, nexuspath: str) -> None:
    """Write standard input to a file in the store (streaming)."""
    nx = open_store()
    with nx.open(nexuspath, "ab" if append else "wb", parents=parents) as f:
        copy_stream(_binary("stdin").read, f.write)


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
            raise FsError(errno.EISDIR, f"{paths.shown(p)}: Is a directory (use -r)")
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
@no_index_option
def cp(recursive: bool, src: str, dst: str) -> None:
    """Copy inside the store (metadata only: the data blocks are shared)."""
    nx = open_store()
    fi = nx.stat(src)
    if fi.is_dir:
        if not recursive:
            _fail(f"{paths.shown(src)} is a directory (use -r)")
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
    """Paths matching a glob (*, ?, [...], **) under DIRECTORY; exit 1 if none, 2 on error."""
    _state().error_code = 2
    nx = open_store()
    if not nx.stat(directory).is_dir:  # a missing DIRECTORY is an error, as for grep
        raise FsError(errno.ENOTDIR, f"{paths.shown(directory)}: Not a directory")
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
@click.option("-r", "-R", "--recursive", "_recursive", is_flag=True,
              help="Accepted and ignored: directories are always searched recursively.")
@click.argument("pattern")
@click.argument("directory", default="/")
def grep(ignore_case: bool, word: bool, fixed: bool, invert: bool, files_only: bool, count: bool,
         line_numbers: bool, _recursive: bool, pattern: str, directory: str) -> None:
    """Search file contents like `grep -r`; exit 0 if found, 1 if not, 2 on error."""
    _state().error_code = 2
    nx = open_store()
    nx.stat(directory)  # a missing DIRECTORY is an error (exit 2), reported with its full path
    single = nx.is_file(directory)  # one file: no file names, like grep
    # binary files' matching lines count for -c and -l, as in GNU grep; otherwise a
    # binary file that matches gets one line on stderr instead of its lines
    matches = nx.iter_grep(pattern, directory, ignore_case=ignore_case, word=word, fixed=fixed,
                           invert=invert, binary=True)
    counts: dict[str, int] = {}
    last = None
    for m in matches:
        new_file = m.path != last
        last = m.path
        counts[m.path] = counts.get(m.path, 0) + 1
        if count or (files_only and not new_file):
            continue
        if files_only:
            out(m.path)
        elif m.binary:
            if new_file:
                click.echo(f"nexus: {m.path}: binary file matches", err=True)
        else:
            prefix = "" if single else f"{m.path}:"
            out(f"{prefix}{m.line_no}:{m.line}" if line_numbers else f"{prefix}{m.line}")
    if count:
        if single:
            out(str(counts.get(paths.normalize(directory), 0)))
        else:
            # every file read gets a line, like grep -c
            for p in sorted(i.path for i in nx.walk(directory, attrs=True) if i.is_file):
                out(f"{p}:{counts.get(p, 0)}")
    if not counts:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("-k", "--top", "k", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many results.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON lines.")
@click.argument("query")
@click.argument("directory", default="/")
def search(k: int, as_json: bool, query: str, directory: str) -> None:
    """Rank the files under DIRECTORY by meaning and wording for QUERY.

    Prints `score path:start-end  snippet` lines, best first, one per distinct content
    (identical copies add `(also PATH, ...)` after the range); exit 1 if nothing matched.
    """
    nx = open_store()
    results = nx.search(query, directory, k=k)
    for hit in results:
        if as_json:
            out(json.dumps(dataclasses.asdict(hit), ensure_ascii=False))
        else:
            out(hit.line())
    _note(results.note)
    if results.pending:
        _note(f"{results.pending} file(s) are not indexed yet (run `nexus index`); results may miss them")
    if not results:
        raise click.exceptions.Exit(1)


def _note(text: str | None) -> None:
    """``nexus: note: ...`` on stderr (something the user should know; not an error)."""
    if text:
        click.echo(f"nexus: note: {text}", err=True)


@cli.command("index")
@click.option("--status", is_flag=True, help="Show what the index holds and what is queued.")
@click.option("--rebuild", is_flag=True, help="Forget the index and build it again.")
@click.option("--embedder", metavar="NAME",
              help="The embedding model (with --rebuild: switch the store to it; default: the store's own).")
def index_cmd(status: bool, rebuild: bool, embedder: str | None) -> None:
    """Bring the search index up to date now (the mount does this in the background).

    A store keeps the embedding model it was first indexed with; `--rebuild --embedder
    NAME` switches it (and indexes everything again).
    """
    nx = open_store()
    if status:
        if embedder is not None:
            _fail("--embedder goes with --rebuild (or a plain `nexus index`), not --status")
        st = nx.index_status()
        out(f"queued files:     {st.pending}" + (f" ({st.failing} failing)" if st.failing else ""))
        out(f"indexed files:    {st.files}")
        out(f"distinct content: {st.docs}" + (
            " (" + ", ".join(f"{n} {k}" for k, n in sorted(st.by_kind.items())) + ")" if st.by_kind else ""))
        out(f"semantic chunks:  {st.chunks}")
        out(f"embedder:         {st.embedder or 'none yet'}" + ("" if st.vector_search else " (sqlite-vec missing)"))
        for ino, err in st.errors:
            out(f"failing: inode {ino}: {err}")
        _note(st.note)
        return
    with progress_bar(unit="file", desc="rebuilding" if rebuild else "indexing") as bar:
        def tick(done: int, total: int | None) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        n = nx.reindex(rebuild=rebuild, embedder=embedder, progress=tick)
    st = nx.index_status()
    out(f"indexed {n} file(s); {st.files} files, {st.docs} distinct contents, {st.chunks} chunks in the index"
        + (f"; {st.pending} still queued" if st.pending else ""))
    _note(st.note)


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
    if report.garbage:
        out("garbage for `nexus gc` (no damage): " + ", ".join(
            f"{n} {kind} ({human(size)})" for kind, (n, size) in report.garbage.items()))
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
    if report.waiting_objects:
        first, last = _when_s(report.waiting_from_ns), _when_s(report.waiting_until_ns)
        out(f"{human(report.waiting_bytes)} in {report.waiting_objects} unreferenced objects is waiting "
            f"for the grace period ({format_duration(report.grace)}): gc can free it from {first} on"
            + (f" (all of it from {last})" if last != first else ""))
    if report.errors:
        _fail(f"{report.errors} blob(s) could not be deleted (they will be retried by the next gc)")


# ---------------------------------------------------------- export/import
@cli.command("export")
@click.option("--with-data", is_flag=True, help="Include the content of every block (for a store that shares no blobs).")
@click.option("-o", "--output", metavar="FILE", help="Write to FILE instead of stdout.")
@click.option("-f", "--force", is_flag=True, help="Replace FILE if it is read-only.")
@click.option("--format", "format_", type=click.Choice(["jsonl"]), default="jsonl", show_default=True,
              help="The stream's format (JSON Lines, the one format there is).")
@click.argument("path", default="/")
def export_cmd(with_data: bool, output: str | None, force: bool, format_: str, path: str) -> None:
    """Write PATH's tree as JSON Lines (see nexusfs.transfer for the format).

    FILE is written as cp writes a file: a symlink is followed, an existing file
    is written in place, a fifo or device is written to, a read-only file is
    refused unless --force.
    """
    from .transfer import export_tree

    nx = open_store()
    nx.stat(path)  # a missing PATH leaves FILE alone
    with progress_bar(unit="entries", desc="export") as bar:
        tick = _phase_progress(bar)
        if output is None or output == "-":
            stats = export_tree(nx, _stdout_sink(), path, with_data=with_data, progress=tick)
        else:
            sink, _created = open_local_for_write(output, force=force, mode=0o666 & ~nx.umask)
            with sink:
                stats = export_tree(nx, sink, path, with_data=with_data, progress=tick)
    if output not in (None, "-") or _stderr_tty():
        click.echo(f"exported {stats.entries} entries"
                   + (f", {stats.objects} objects ({human(stats.object_bytes)})" if with_data else ""),
                   err=True)


@cli.command("import")
@click.option("--under", default="/", show_default=True, metavar="PATH", help="Import below this directory.")
@click.option("--same-owner/--no-same-owner", default=None,
              help="Restore owners (default: only when running as root).")
@click.argument("file", default="-", type=click.Path(dir_okay=False, allow_dash=True))
@no_index_option
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
