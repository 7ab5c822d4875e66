"""The layering docs/DESIGN.md promises: imports only point down (mount -> nexusfs -> backends)."""

from __future__ import annotations

import ast
import os

import pytest

from tests.install_helpers import REPO

# package -> top-level modules it must never import
FORBIDDEN = {
    "nexusfs": {"mount", "pyfuse3", "trio"},
    "backends": {"nexusfs", "mount", "pyfuse3", "trio"},
}


def imported_top_levels(path: str) -> set[str]:
    """Top-level names of every absolute import in a module (relative ones stay inside)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(os.path.join(REPO, package)):
        out += [os.path.join(root, f) for f in files if f.endswith(".py")]
    return sorted(out)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_point_down(package):
    found = modules(package)
    assert found
    offenders = {os.path.relpath(p, REPO): sorted(imported_top_levels(p) & FORBIDDEN[package])
                 for p in found}
    assert {p: bad for p, bad in offenders.items() if bad} == {}
