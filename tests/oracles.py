"""What the tests compare the product with, and the programs they run, found in one place.

- ``gnu_grep()``: the path of GNU grep (other greps differ in options and output: the
  search tests take GNU grep's answers as the truth, so a BusyBox or BSD grep must fail
  the test that needs it, not be compared with quietly);
- ``nexus_bin()``: the ``nexus`` console script of the Python running the tests (never one
  found on PATH, which may be another install).
"""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys

from tests import needs


@functools.cache
def _grep_problem(path: str) -> str | None:
    try:
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"{path} does not run: {exc}"
    first = (res.stdout.splitlines() or [""])[0]
    if res.returncode != 0 or "GNU grep" not in first:
        return f"{path} is not GNU grep ({first or res.stderr.strip() or 'no version'})"
    return None


def gnu_grep() -> str:
    """The path of GNU grep; fails (or skips, see tests/needs.py) the test where there is none."""
    path = needs.need_tool("grep")
    needs.need("tools", _grep_problem(path))
    return path


def nexus_bin() -> str:
    """The ``nexus`` console script installed beside the Python running the tests."""
    path = os.path.join(os.path.dirname(sys.executable), "nexus")
    assert os.access(path, os.X_OK), f"no nexus console script beside {sys.executable} (pip install -e .)"
    return path


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` incompressible bytes, different for each seed and the same for each run."""
    return random.Random(seed).randbytes(n)


def assert_fsck_clean(nx, *, verify_data: bool = True) -> None:
    """The store's fsck finds nothing at all (reading every block back unless ``verify_data``
    is False) and would exit 0."""
    report = nx.fsck(verify_data=verify_data)
    assert report.problems == [], [str(p) for p in report.problems]
    assert report.clean and report.exit_code == 0
