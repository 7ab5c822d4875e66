"""What the seed document (the project's founding promise to users) says about embedded mode,
run as written.

The seed is ``shared/seed/000_2bb29c933fe10ef4.txt`` beside the project, not inside it, so its
embedded-mode lines are quoted here verbatim. The server-side lines (``nexus import --url``,
docker-compose, Helm) belong to the server and are not run here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nexusfs

# "## Embedded Mode" / "### Setup" (a ```python block), verbatim.
SEED_EMBEDDED_SETUP = '''\
import nexus

# Zero configuration - just works
nx = nexus.connect()

# Or with config file
nx = nexus.connect(config_file="nexus.yaml")
'''

# "## Migration Path" / "1. Embedded → Monolithic" (a ```bash block): its embedded half.
SEED_EXPORT = '''\
# Export metadata
nexus export --format jsonl > metadata.jsonl
'''

VENV_BIN = os.path.dirname(sys.executable)


def run_in(cwd: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def seed_env(tmp_path) -> dict[str, str]:
    """A user's shell: the default store in a fresh home, `nexus` on PATH."""
    return dict(os.environ, NEXUS_HOME=str(tmp_path / "default-store"),
                PATH=VENV_BIN + os.pathsep + os.environ["PATH"])


def test_embedded_setup_lines_run_as_written(tmp_path):
    env = seed_env(tmp_path)
    # left to the reader: a nexus.yaml in the current directory
    (tmp_path / "nexus.yaml").write_text("home: configured-store\n")
    (tmp_path / "setup.py").write_text(
        SEED_EMBEDDED_SETUP
        + "print(type(nx).__module__, type(nx).__name__, nx.info().home)\n")
    r = run_in(str(tmp_path), [sys.executable, "setup.py"], env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"nexusfs.api Nexus {tmp_path / 'configured-store'}\n"
    assert r.stderr == ""
    # nexus.connect() created the zero-configuration store where the documentation says
    assert os.path.isfile(tmp_path / "default-store" / "meta.db")


def test_nexus_alias_is_the_nexusfs_api():
    import nexus

    assert nexus.connect is nexusfs.connect
    assert nexus.__all__ == nexusfs.__all__ and nexus.__version__ == nexusfs.__version__
    assert all(getattr(nexus, name) is getattr(nexusfs, name) for name in nexusfs.__all__)


def test_export_line_runs_as_written_and_the_stream_imports(tmp_path):
    env = seed_env(tmp_path)
    with nexusfs.connect(env["NEXUS_HOME"]) as nx:
        nx.write_bytes("/docs/a.txt", b"alpha\n", parents=True)
        nx.symlink("a.txt", "/docs/link")
    r = run_in(str(tmp_path), ["bash", "-e", "-c", SEED_EXPORT], env)
    assert (r.returncode, r.stderr) == (0, "")
    with open(tmp_path / "metadata.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert [(r["type"], r.get("path")) for r in records] == [
        ("header", None), ("dir", "/"), ("dir", "/docs"), ("file", "/docs/a.txt"),
        ("symlink", "/docs/link"), ("end", None)]
    # the stream names the blobs: it moves to a store that shares the blob directory
    r = run_in(str(tmp_path), ["nexus", "import", "metadata.jsonl", "--under", "/copy"], env)
    assert r.returncode == 0, r.stderr
    with nexusfs.connect(env["NEXUS_HOME"]) as nx:
        assert nx.read_bytes("/copy/docs/a.txt") == b"alpha\n"
        assert nx.readlink("/copy/docs/link") == "a.txt"


def test_export_format_accepts_only_jsonl(tmp_path):
    env = seed_env(tmp_path)
    r = run_in(str(tmp_path), ["nexus", "export", "--format", "csv"], env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("nexus: error: export: Invalid value for '--format': 'csv' is not 'jsonl' "
                        "(see `nexus export --help`)\n")
