"""Every ```python and ```sh block of README.md runs as written, and the output it shows is real.

A block's shown output is written as comments that start with an arrow: ``# → text`` at the end
of a line (or on the comment-only lines right after it) is what that line prints, exactly.
Each block runs in a fresh home directory (``~``), with ``.venv/bin`` on PATH as the Quick start
says, and with what its section obviously leaves to the reader (a project to search, the data
to stream) made by the scenario below. Mounts are always unmounted, also when a block fails.
What truly cannot run in a test is listed in ``NOT_RUN`` with the reason.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

import nexusfs
from tests import needs
from tests.install_helpers import REPO
from tests.mountutil import _is_mounted, force_unmount, wait_until

README = os.path.join(REPO, "README.md")
VENV_BIN = os.path.dirname(sys.executable)
ARROW = "# → "

# Commands of the README that are not run here, and why.
NOT_RUN = {
    "./run.sh test": "runs the whole test suite, this test included: a suite cannot run inside itself",
    "vim .search/grep/TODO/src%2Fmain.py": "an interactive editor (the next lines show that the "
                                           "entries lead to the real files)",
}
# Commands that run in the foreground until Ctrl-C: started, checked live, then interrupted.
FOREGROUND = {"nexus mount ~/nexus": "~/nexus"}


@dataclass(frozen=True)
class Block:
    lang: str
    section: str
    line: int  # the README line of the opening fence
    text: str

    @property
    def id(self) -> str:
        return f"{self.lang}@{self.line}:{self.section[:30]}"


def readme_blocks(langs: tuple[str, ...] = ("python", "sh")) -> list[Block]:
    """The fenced code blocks of README.md in the given languages, with their section."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = re.fullmatch(r"```(\w*)", line)
        if fence:
            end = lines.index("```", i + 1)
            if fence.group(1) in langs:
                blocks.append(Block(fence.group(1), section, i + 1, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return blocks


# ------------------------------------------------------------------ shown output
def split_comment(line: str) -> tuple[str, str | None]:
    """(code, shown output or None) of one line."""
    code, arrow, shown = line.partition(ARROW)
    return code.rstrip(), (shown if arrow else None)


@dataclass
class Command:
    text: str
    shown: list[str]  # the output lines the README shows for it (empty: not shown)


def sh_commands(block: Block) -> list[Command]:
    """One command a line; comment-only lines with an arrow continue the shown output above."""
    commands: list[Command] = []
    for line in block.text.splitlines():
        code, shown = split_comment(line)
        if not code and shown is not None:  # a line of output: "# → text"
            commands[-1].shown.append(shown)
        elif code and not code.startswith("#"):
            commands.append(Command(strip_sh_comment(code), [shown] if shown is not None else []))
    return commands


def strip_sh_comment(line: str) -> str:
    """The command without the explanation after it (a '#' outside quotes, after a blank)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and i and line[i - 1].isspace():
            return line[:i].rstrip()
    return line


def python_shown(source: str) -> dict[int, list[str]]:
    """Source line -> the output the README shows for the statement on that line."""
    shown: dict[int, list[str]] = {}
    last_code_line = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.string.startswith(ARROW):
            text = tok.string[len(ARROW):]
            if tok.line.strip().startswith("#"):  # a line of output under the statement
                shown[last_code_line].append(text)
            else:
                shown[tok.start[0]] = [text]
                last_code_line = tok.start[0]
        elif tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                              tokenize.DEDENT):
            last_code_line = tok.start[0]
    return shown


class _CaptureShown(ast.NodeTransformer):
    """Wraps each statement that has shown output in ``with __show__(line):``."""

    def __init__(self, lines: set[int]) -> None:
        self.lines = lines

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                setattr(node, field, [self._wrap(s) for s in stmts])
        return node

    def _wrap(self, stmt: ast.stmt) -> ast.stmt:
        if stmt.end_lineno not in self.lines or isinstance(stmt, ast.With | ast.For | ast.If):
            return stmt
        call = ast.Call(ast.Name("__show__", ast.Load()), [ast.Constant(stmt.end_lineno)], [])
        return ast.With([ast.withitem(call)], [stmt])


PYTHON_PRELUDE = '''\
import contextlib as __contextlib, io as __io, json as __json

__shown__ = {}


@__contextlib.contextmanager
def __show__(line):
    buffer = __io.StringIO()
    with __contextlib.redirect_stdout(buffer):
        yield
    __shown__[line] = __shown__.get(line, "") + buffer.getvalue()

'''


def run_python_block(block: Block, reader: str, env: dict[str, str], cwd: str) -> None:
    shown = python_shown(block.text)
    tree = _CaptureShown(set(shown)).visit(ast.parse(block.text))
    script = os.path.join(cwd, "readme_block.py")
    out = os.path.join(cwd, "readme_block.json")
    with open(script, "w", encoding="utf-8") as f:
        f.write(PYTHON_PRELUDE + "# left to the reader\n" + reader + "\n# the README's block\n"
                + ast.unparse(ast.fix_missing_locations(tree))
                + f"\n__json.dump(__shown__, open({out!r}, 'w'))\n")
    r = subprocess.run([sys.executable, script], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"README line {block.line}: the block failed:\n{r.stderr}"
    with open(out, encoding="utf-8") as f:
        printed = {int(k): v for k, v in json.load(f).items()}
    for line, expected in shown.items():
        assert printed.get(line, "") == "".join(e + "\n" for e in expected), \
            f"README line {block.line + line}: shows {expected!r}, prints {printed.get(line)!r}"


# ------------------------------------------------------------------ running sh
def run_sh_block(block: Block, env: dict[str, str], cwd: str) -> None:
    """Each command in bash, in the directory the one before left (so `cd` carries over)."""
    commands = sh_commands(block)
    assert commands, f"README line {block.line}: no command in the block"
    for cmd in commands:
        if cmd.text in NOT_RUN:
            continue
        where = os.path.join(env["HOME"], ".readme-cwd")
        script = f"cd {shlex.quote(cwd)} || exit 99\n{cmd.text}\nrc=$?\npwd > {where}\nexit $rc\n"
        if cmd.text in FOREGROUND:
            run_until_ctrl_c(script, env, os.path.expanduser(FOREGROUND[cmd.text].replace(
                "~", env["HOME"])))
            continue
        r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{cmd.text!r} failed ({r.returncode}):\n{r.stderr}{r.stdout}"
        if cmd.shown:
            assert r.stdout.splitlines() == cmd.shown, f"{cmd.text!r} printed:\n{r.stdout}"
        with open(where, encoding="utf-8") as f:
            cwd = f.read().strip()


def run_until_ctrl_c(script: str, env: dict[str, str], mountpoint: str) -> None:
    """A command that mounts in the foreground: live once mounted, Ctrl-C unmounts it cleanly."""
    proc = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_until(lambda: _is_mounted(mountpoint) or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on a terminal does
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert not _is_mounted(mountpoint)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        force_unmount(mountpoint)


# ------------------------------------------------------------------ scenarios
def nexus(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([os.path.join(VENV_BIN, "nexus"), *args], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


@contextlib.contextmanager
def unmounted_afterwards(env: dict[str, str], *mountpoints: str) -> Iterator[None]:
    """Unmount (waiting for the data to be written out) whatever the block left mounted."""
    try:
        yield
    finally:
        for mp in mountpoints:
            path = os.path.join(env["HOME"], mp)
            if _is_mounted(path):
                subprocess.run([os.path.join(VENV_BIN, "nexus"), "umount", path], env=env,
                               capture_output=True, timeout=120)
            force_unmount(path)


@contextlib.contextmanager
def quick_start(env: dict[str, str]) -> Iterator[str]:
    """In the checkout, as the README is read there."""
    with unmounted_afterwards(env, "nexus"):
        yield REPO
    # what the mount wrote went to the default store, ~/.local/share/nexus
    assert os.path.isfile(os.path.join(env["HOME"], ".local/share/nexus/meta.db"))


@contextlib.contextmanager
def the_mount(env: dict[str, str]) -> Iterator[str]:
    """After the Quick start: ~/nexus exists, nothing is mounted on it."""
    os.mkdir(os.path.join(env["HOME"], "nexus"))
    with unmounted_afterwards(env, "nexus"):
        yield env["HOME"]


# The reader's project, searched by the "Searching" block.
PROJECT = {
    "README.md": "# Uploader\n\nSends the files named on its command line to the archive.\n",
    "docs/design.md": "# Design\n\nOne PUT request per file; the archive keeps every version.\n",
    "src/main.py": '''\
"""Command line entry point of the uploader."""

import sys

from upload import upload_with_retry


def main(argv: list[str]) -> int:
    """Upload each file named on the command line."""
    for name in argv[1:]:
        with open(name, "rb") as f:
            # TODO: show progress for large files
            upload_with_retry(name, f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
''',
    "src/upload.py": '''\
"""Uploading files to the archive server."""

import time
import urllib.request

ARCHIVE = "https://archive.example.com/files/"


def upload_once(name: str, data: bytes) -> None:
    """One PUT request; raises OSError when the network or the server fails."""
    request = urllib.request.Request(ARCHIVE + name, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def upload_with_retry(name: str, data: bytes, attempts: int = 5) -> None:
    """Upload, retrying a failed upload with exponential backoff: 1 s, 2 s, 4 s, ..."""
    delay = 1.0
    for attempt in range(1, attempts + 1):
        try:
            upload_once(name, data)
            return
        except OSError:
            if attempt == attempts:
                raise
            time.sleep(delay)
            delay *= 2
''',
}


@contextlib.contextmanager
def searching(env: dict[str, str]) -> Iterator[str]:
    """~/nexus mounted, holding the reader's project, indexed."""
    home = os.path.join(env["HOME"], ".local/share/nexus")
    with nexusfs.connect(home, background_indexing=False) as nx:
        for rel, text in PROJECT.items():
            nx.write_text(f"/project/{rel}", text, parents=True)
        nx.reindex()
    mnt = os.path.join(env["HOME"], "nexus")
    os.mkdir(mnt)
    with unmounted_afterwards(env, "nexus"):
        nexus(env, "mount", "-d", mnt)
        yield env["HOME"]


@contextlib.contextmanager
def in_home(env: dict[str, str]) -> Iterator[str]:
    yield env["HOME"]


SCENARIOS: dict[str, Callable[[dict[str, str]], contextlib.AbstractContextManager[str]]] = {
    "Quick start (Debian / Ubuntu)": quick_start,
    "The mount": the_mount,
    "Searching: `.search/` in every directory": searching,
}
# Python blocks: what each leaves to the reader, by section.
PYTHON_READER = {
    # data to stream: 8 MiB of binary (not text, so not in the semantic index)
    "Python API": "chunks = [bytes(range(256)) * 4096] * 8\n",
}


def readme_env(tmp_path) -> dict[str, str]:
    """A user's shell after the Quick start: a fresh home, .venv/bin on PATH, no NEXUS_HOME."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NEXUS_HOME", "XDG_DATA_HOME")}
    env.update(HOME=str(home), PATH=VENV_BIN + os.pathsep + os.environ["PATH"])
    return env


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("block", readme_blocks(), ids=lambda b: b.id)
def test_readme_block_runs_as_written(block: Block, tmp_path):
    env = readme_env(tmp_path)
    scenario = SCENARIOS.get(block.section, in_home)
    needs_mount = block.lang == "sh" and any("mount" in c.text or ".search" in c.text
                                             for c in sh_commands(block))
    if needs_mount:
        needs.need_mount()
    with scenario(env) as cwd:
        if block.lang == "python":
            run_python_block(block, PYTHON_READER.get(block.section, ""), env, cwd)
        else:
            run_sh_block(block, env, cwd)


def test_what_is_not_run_is_still_in_the_readme():
    """NOT_RUN and FOREGROUND name commands of the README: none may go stale."""
    commands = {c.text for b in readme_blocks() if b.lang == "sh" for c in sh_commands(b)}
    assert set(NOT_RUN) <= commands and set(FOREGROUND) <= commands


def test_configuration_block_is_a_valid_nexus_yaml(tmp_path, monkeypatch):
    (block,) = readme_blocks(("yaml",))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "nexus.yaml").write_text(block.text)
    with nexusfs.connect(config_file=str(tmp_path / "nexus.yaml")) as nx:
        assert nx.info().home == str(tmp_path / "stores" / "work")
        assert nx.info().block_size == 4 << 20
