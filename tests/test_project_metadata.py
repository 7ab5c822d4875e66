"""The package's metadata: the licence as setuptools wants it, the LICENSE file, pinned FUSE."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tomllib
import zipfile

from packaging.requirements import Requirement
from packaging.version import Version

from tests.install_helpers import REPO, copy_source

with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)["project"]


def requirement(extra: str, name: str) -> Requirement:
    return next(r for r in map(Requirement, PYPROJECT["optional-dependencies"][extra])
                if r.name == name)


def test_license_is_an_spdx_expression_and_the_file_is_there():
    assert PYPROJECT["license"] == "Apache-2.0"
    assert PYPROJECT["license-files"] == ["LICENSE"]
    with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.split()[:3] == ["Apache", "License", "Version"]
    assert "END OF TERMS AND CONDITIONS" in text


def test_wheel_carries_the_license_without_deprecation_warnings(tmp_path):
    src = copy_source(str(tmp_path / "src"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w",
                        str(tmp_path / "dist"), src], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "deprecated" not in (r.stdout + r.stderr).lower()
    (wheel,) = os.listdir(tmp_path / "dist")
    with zipfile.ZipFile(tmp_path / "dist" / wheel) as z:
        names = z.namelist()
        meta = email.message_from_bytes(z.read("nexusfs-0.1.0.dist-info/METADATA"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "nexusfs-0.1.0.dist-info/licenses/LICENSE" in names
    assert "nexus/__init__.py" in names  # the `import nexus` alias ships too


def test_pyfuse3_is_capped_below_the_next_minor_release():
    """The mount swaps pyfuse3's module attribute ``pyfuse3.trio`` (mount/fastwait.py):
    an internal that a new pyfuse3 release may change, so only tested releases install."""
    spec = requirement("mount", "pyfuse3").specifier
    assert "<3.6" in {str(s) for s in spec}
    assert spec.contains(Version("3.5.0")) and not spec.contains(Version("3.6.0"))
    import pyfuse3

    assert spec.contains(pyfuse3.__version__)
