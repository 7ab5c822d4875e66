"""`nexus mount` and `nexus umount`: sub-commands this layer adds to the engine's CLI.

They are registered through the ``nexusfs.commands`` entry-point group, so the
engine's CLI never imports this package. ``python -m mount`` runs the same
mount command on its own (background mode starts the mount process that way).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from nexusfs.cli import describe_error, usage_error
from nexusfs.config import Config
from nexusfs.errors import NexusError

from .runner import (
    CACHE_TIMEOUT_S,
    MountError,
    MountOptions,
    mount_in_background,
    report_failure,
    run_mount,
    unmount,
)

#: generic mount(8)/fstab options that mean nothing to a FUSE filesystem process
_IGNORED_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
                    "dev", "suid", "exec", "async", "nodev", "nosuid", "noexec", "atime", "noatime", "relatime"}


def _fail(message: str) -> None:
    click.echo(f"nexus: error: {message}", err=True)
    sys.exit(1)


def _message(exc: BaseException) -> str:
    """The one-line text of a failure (an OSError as 'path: reason', not '[Errno 2] ...')."""
    return describe_error(exc) or str(exc)


def _parse_o(values: tuple[str, ...], opts: MountOptions) -> None:
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            key, _, val = item.partition("=")
            if key == "allow_other":
                opts.allow_other = True
            elif key == "writeback_cache":
                opts.writeback_cache = val not in ("0", "no", "false")
            elif key == "attr_timeout":
                opts.attr_timeout = opts.entry_timeout = float(val)
            elif key == "nonempty":
                opts.nonempty = True
            elif key in _IGNORED_OPTIONS:
                continue
            else:
                raise MountError(f"unknown mount option {item!r}")


def mount_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        # (not click.Path(file_okay=False): a file is refused by the runner, in its own words)
        click.argument("mountpoint"),
        click.option("-d", "--background", is_flag=True, help="Return once the mount is live; serve from a background process."),
        click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (the default)."),
        click.option("--allow-other/--no-allow-other", default=None,
                     help="Let other users use the mount (default: on when run as root; permissions are enforced)."),
        click.option("--writeback-cache/--no-writeback-cache", default=False, show_default=True,
                     help="Let the kernel buffer writes and send them in large requests."),
        click.option("--attr-timeout", type=float, default=CACHE_TIMEOUT_S, show_default=True,
                     help="Seconds the kernel may cache attributes and names."),
        click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
                     help="Mount options (allow_other, nonempty, attr_timeout=S, writeback_cache=0; fstab options are ignored)."),
        click.option("--debug", is_flag=True, help="Log every request (very verbose)."),
        click.option("--ready-fd", type=int, default=None, hidden=True),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _root_options() -> tuple[str | None, str | None]:
    """(home, config file) from the root command's global options."""
    params = click.get_current_context().find_root().params
    return params.get("home"), params.get("config_file") or params.get("config")


def _root_config() -> Config:
    home, config_file = _root_options()
    return Config.load(config_file, home=home)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def _do_mount(config: Config, mountpoint: str, background: bool, allow_other: bool | None,
              writeback_cache: bool, attr_timeout: float, options: tuple[str, ...], debug: bool,
              ready_fd: int | None, child_args: list[str]) -> None:
    try:
        opts = MountOptions(allow_other=allow_other, writeback_cache=writeback_cache,
                            attr_timeout=attr_timeout, entry_timeout=attr_timeout, debug=debug)
        _parse_o(options, opts)
        if background:
            path = mount_in_background(config, mountpoint, child_args)
            click.echo(f"mounted {config.home} at {path}")
            return
        _setup_logging(debug)
        run_mount(config, mountpoint, opts, ready_fd=ready_fd)
    except (NexusError, ValueError, OSError) as exc:
        report_failure(ready_fd, exc)
        if os.environ.get("NEXUS_DEBUG"):
            raise
        _fail(_message(exc))


def _child_args(config: Config, mountpoint: str, allow_other: bool | None, writeback_cache: bool,
                attr_timeout: float, options: tuple[str, ...], debug: bool) -> list[str]:
    _home, config_file = _root_options()
    args = ["--home", config.home]
    if config_file:
        args += ["--config", os.path.abspath(config_file)]
    args += [os.path.abspath(os.path.expanduser(mountpoint)), "--foreground"]
    if allow_other is not None:
        args.append("--allow-other" if allow_other else "--no-allow-other")
    args.append("--writeback-cache" if writeback_cache else "--no-writeback-cache")
    args += ["--attr-timeout", str(attr_timeout)]
    for o in options:
        args += ["-o", o]
    if debug:
        args.append("--debug")
    return args


@click.command("mount")
@mount_options
def mount_command(mountpoint: str, background: bool, foreground: bool, allow_other: bool | None,
                  writeback_cache: bool, attr_timeout: float, options: tuple[str, ...], debug: bool,
                  ready_fd: int | None) -> None:
    """Mount the store at MOUNTPOINT (an empty directory) as a POSIX filesystem.

    Runs in the foreground with logs on stderr until unmounted (`nexus umount`,
    Ctrl-C or SIGTERM), then writes out all data; -d returns once the mount is live.
    """
    try:
        config = _root_config()
    except NexusError as exc:
        _fail(_message(exc))
        return
    child = _child_args(config, mountpoint, allow_other, writeback_cache, attr_timeout, options, debug)
    _do_mount(config, mountpoint, background and not foreground, allow_other, writeback_cache,
              attr_timeout, options, debug, ready_fd, child)


@click.command("umount")
@click.argument("mountpoint")
def umount_command(mountpoint: str) -> None:
    """Unmount a nexusfs mount and wait until all its data is written out."""
    try:
        unmount(mountpoint)
    except NexusError as exc:
        _fail(_message(exc))


class _StandaloneCommand(click.Command):
    """`python -m mount`: usage errors as one ``nexus: error:`` line, as under ``nexus``."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise usage_error(exc) from None


@click.command("mount", cls=_StandaloneCommand)
@click.option("--home", default=None, help="Store directory.")
@click.option("--config", default=None, help="nexus.yaml to read.")
@mount_options
def standalone(home: str | None, config: str | None, mountpoint: str, background: bool, foreground: bool,
               allow_other: bool | None, writeback_cache: bool, attr_timeout: float,
               options: tuple[str, ...], debug: bool, ready_fd: int | None) -> None:
    """The mount command without the rest of the CLI (`python -m mount`)."""
    try:
        cfg = Config.load(config, home=home)
    except NexusError as exc:
        report_failure(ready_fd, exc)
        _fail(_message(exc))
        return
    child = _child_args(cfg, mountpoint, allow_other, writeback_cache, attr_timeout, options, debug)
    _do_mount(cfg, mountpoint, background and not foreground, allow_other, writeback_cache,
              attr_timeout, options, debug, ready_fd, child)
