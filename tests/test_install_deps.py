"""packaging/install-deps.sh on a system without dpkg: it cannot install anything, so it checks
what the packages provide and fails, naming what is missing, rather than letting the tests
that drive those tools fail (or, before, skip) later."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests import needs
from tests.install_helpers import REPO

SCRIPT = os.path.join(REPO, "packaging", "install-deps.sh")

#: the commands the script runs or looks for (bash and python3 run it; the rest it checks)
COMMANDS = ["bash", "python3", "pkg-config", "gcc", "fusermount3", "git", "rsync", "tar", "make",
            "getfattr", "setfattr", "getfacl", "setfacl", "rg", "fuser", "ps", "pkill", "mount",
            "script", "strace"]


def fake_system(tmp_path, without: tuple[str, ...] = ()) -> dict[str, str]:
    """An environment whose PATH has the commands of this machine but no dpkg-query (a
    non-Debian system), and none of ``without``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in COMMANDS:
        if name not in without:
            # the real program: not a shim (pyenv's) that needs more of PATH
            real = sys.executable if name == "python3" else needs.need_tool(name)
            os.symlink(os.path.realpath(real), bindir / name)
    assert shutil.which("dpkg-query", path=str(bindir)) is None
    return {"PATH": str(bindir), "HOME": str(tmp_path)}


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("bash"), SCRIPT, *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("mode", [[], ["--test"]], ids=["mount", "test"])
def test_everything_there_is_fine(tmp_path, mode):
    r = run_script(fake_system(tmp_path), *mode)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize(("missing", "package"), [("rg", "ripgrep"), ("setfacl", "acl"), ("git", "git")])
def test_a_missing_test_tool_fails_in_one_line_naming_its_package(tmp_path, missing, package):
    env = fake_system(tmp_path, without=(missing,))
    r = run_script(env, "--test")
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("nexusfs: not a Debian/Ubuntu system"), r.stderr
    assert r.stderr.rstrip("\n").split(": ")[-1].split() == [package]
    # what mounting needs is all there: without --test the same system is fine
    assert run_script(env).returncode == 0


def test_bench_also_needs_fio(tmp_path):
    env = fake_system(tmp_path)  # everything the tests need, and no fio
    assert run_script(env, "--test").returncode == 0
    r = run_script(env, "--bench")
    assert r.returncode == 1
    assert r.stderr.rstrip("\n").split(": ")[-1].split() == ["fio"]


def test_a_missing_fuse_fails_also_without_test(tmp_path):
    r = run_script(fake_system(tmp_path, without=("fusermount3", "rsync")))
    assert r.returncode == 1
    assert r.stderr.rstrip("\n").split(": ")[-1].split() == ["fuse3"]
