"""The code passes ruff (pyproject.toml [tool.ruff]): part of every test run, so of CI."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.install_helpers import REPO


def test_ruff_finds_nothing():
    # ruff is a test dependency (nexusfs[test]): it sits beside the Python running the tests
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    assert os.access(ruff, os.X_OK), f"{ruff} is missing: ./run.sh setup --test installs it"
    r = subprocess.run([ruff, "check", "--no-cache", "--output-format=concise", "."], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"ruff check . found problems:\n{r.stdout}{r.stderr}"
