"""`./run.sh install`: the nexus command outside the checkout, found by mount(8), /etc/fstab
and the systemd user unit; as root into a prefix, and as an ordinary user into ~/.local."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile

import pytest

from tests import needs
from tests.install_helpers import REPO
from tests.mount_helpers import NOBODY
from tests.mountutil import _is_mounted, force_unmount, wait_until

pytestmark = [
    pytest.mark.mount,  # guarded by tests/needs.py need_mount (conftest)
    needs.root_only("installs a mount(8) helper and switches users"),
]

RUN_SH = os.path.join(REPO, "run.sh")
SBIN_HELPER = "/sbin/mount.fuse.nexus"
# what systemd's user manager and mount(8) have on PATH: no checkout, no ~/.local/bin
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_env(home: str) -> dict[str, str]:
    """A login environment: no NEXUS_HOME (the default store is under HOME), the system PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEXUS_HOME", "XDG_DATA_HOME", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(HOME=home, PATH=SYSTEM_PATH)
    return env


def mount_type(mnt: str) -> str | None:
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[1] == mnt:
                return fields[2]
    return None


def unit_commands(unit: str, home: str) -> tuple[list[str], list[str]]:
    """ExecStartPre and ExecStart of a unit file, with %h expanded as systemd does."""
    found: dict[str, list[str]] = {}
    with open(unit, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and key in ("ExecStartPre", "ExecStart"):
                found[key] = shlex.split(value.replace("%h", home))
    return found["ExecStartPre"], found["ExecStart"]


def run_unit_like_systemd(unit: str, home: str, user: int | None = None) -> None:
    """Start the unit's commands as systemd would, check ~/nexus is mounted, stop it with
    the unit's KillSignal (SIGTERM) and check everything was written out."""
    pre, start = unit_commands(unit, home)
    creds = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    env = clean_env(home)
    subprocess.run(pre, check=True, env=env, **creds)
    mnt = os.path.join(home, "nexus")
    proc = subprocess.Popen(start, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **creds)
    try:
        assert wait_until(lambda: _is_mounted(mnt) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, proc.communicate()
        subprocess.run(["sh", "-c", f"echo kept mounted > {shlex.quote(mnt)}/by-unit.txt"],
                       check=True, env=env, **creds)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert not _is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(mnt)
    # the data was written out: the installed command reads it from the default store
    r = subprocess.run([start[0], "cat", "/by-unit.txt"], env=env, capture_output=True,
                       text=True, timeout=60, **creds)
    assert (r.returncode, r.stdout) == (0, "kept mounted\n"), r.stderr


def verify_unit(unit: str, tmp_path) -> None:
    """systemd's own check of the unit file (it also checks that ExecStart can be run)."""
    if shutil.which("systemd-analyze") is None:
        return
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    r = subprocess.run(["systemd-analyze", "--user", "verify", unit], capture_output=True,
                       text=True, env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)), timeout=60)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


@pytest.fixture
def sbin_helper_slot():
    """/sbin/mount.fuse.nexus as the test found it: put back afterwards, whatever happens."""
    saved = None
    if os.path.lexists(SBIN_HELPER):
        saved = (os.readlink(SBIN_HELPER), None) if os.path.islink(SBIN_HELPER) else \
            (None, open(SBIN_HELPER, "rb").read())
    try:
        yield
    finally:
        if os.path.lexists(SBIN_HELPER):
            os.unlink(SBIN_HELPER)
        if saved is not None and saved[0] is not None:
            os.symlink(saved[0], SBIN_HELPER)
        elif saved is not None:
            with open(SBIN_HELPER, "wb") as f:
                f.write(saved[1])
            os.chmod(SBIN_HELPER, 0o755)


@pytest.fixture
def mountpoints(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield str(mnt)
    force_unmount(str(mnt))


def test_root_install_is_found_by_mount_t_fstab_and_the_systemd_unit(tmp_path, sbin_helper_slot,
                                                                       mountpoints):
    prefix, home, store, mnt = str(tmp_path / "prefix"), str(tmp_path / "home"), \
        str(tmp_path / "store"), mountpoints
    os.mkdir(home)
    env = clean_env(home)
    r = subprocess.run([RUN_SH, "install", "--prefix", prefix], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    command, venv = f"{prefix}/bin/nexus", f"{prefix}/lib/nexusfs"
    unit = f"{prefix}/share/systemd/user/nexus-mount.service"
    assert os.readlink(command) == f"{venv}/bin/nexus"
    assert r.stderr.splitlines()[-6:] == [
        f"nexusfs: installed nexus 0.1.0 in {venv}",
        f"nexusfs:   command:      {command}",
        f"nexusfs:   mount helper: {SBIN_HELPER} (mount -t fuse.nexus STORE_DIR MOUNTPOINT; in /etc/fstab:",
        "nexusfs:                 STORE_DIR MOUNTPOINT fuse.nexus defaults,_netdev,allow_other 0 0)",
        f"nexusfs:   systemd unit: {unit} (systemctl --user enable --now nexus-mount)",
        f"nexusfs: {prefix}/bin is not on your PATH: add it (e.g. in ~/.profile) to type 'nexus'",
    ]
    with open(f"{venv}/installed-files", encoding="utf-8") as f:
        assert f.read().split() == [command, SBIN_HELPER, unit]
    assert stat.S_IMODE(os.stat(SBIN_HELPER).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(unit).st_mode) == 0o644
    with open(SBIN_HELPER, encoding="utf-8") as f:
        assert f"installed_nexus={command}\n" in f.read()
    # the installed command does not need the checkout: its venv holds nexusfs itself
    r = subprocess.run([f"{venv}/bin/python", "-c", "import nexusfs, mount; print(nexusfs.__file__)"],
                       env=env, capture_output=True, text=True, cwd="/")
    assert r.stdout.startswith(f"{venv}/lib/"), r

    # mount -t fuse.nexus, as the helper's comment says; nexus is not on PATH
    r = subprocess.run(["mount", "-t", "fuse.nexus", store, mnt, "-o", "allow_other"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        assert mount_type(mnt) == "fuse.nexus"
        with open(os.path.join(mnt, "via-mount-t.txt"), "w") as f:
            f.write("mount -t\n")
    finally:
        r = subprocess.run([command, "umount", mnt], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # an /etc/fstab line (a private fstab here), mounted by its mountpoint
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{store}  {mnt}  fuse.nexus  defaults,_netdev,allow_other  0 0\n")
    r = subprocess.run(["mount", "-T", str(fstab), mnt], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        assert mount_type(mnt) == "fuse.nexus"
        with open(os.path.join(mnt, "via-mount-t.txt")) as f:
            assert f.read() == "mount -t\n"
    finally:
        r = subprocess.run([command, "umount", mnt], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    # the systemd user unit runs the installed command
    with open(unit, encoding="utf-8") as f:
        assert f"ExecStart={command} mount %h/nexus\n" in f.read()
    verify_unit(unit, tmp_path)
    run_unit_like_systemd(unit, home)

    r = subprocess.run([RUN_SH, "install", "--uninstall", "--prefix", prefix], env=env,
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, f"nexusfs: removed nexusfs from {prefix}\n")
    assert not os.path.lexists(SBIN_HELPER) and not os.path.lexists(command)
    assert not os.path.exists(unit) and not os.path.exists(venv)


@pytest.fixture
def user_fuse():
    """/dev/fuse usable by ordinary users, as on stock Debian (0666); put back afterwards."""
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)


@pytest.fixture
def nobody_home():
    """A home directory for `nobody` that it can reach (pytest's temporary directories are
    private to root); removed afterwards."""
    base = tempfile.mkdtemp(prefix="nexus-user-")
    try:
        os.chmod(base, 0o755)
        home = os.path.join(base, "home")
        os.mkdir(home)
        os.chown(home, NOBODY, NOBODY)
        yield home
    finally:
        force_unmount(os.path.join(base, "home", "nexus"))
        shutil.rmtree(base)


def test_ordinary_user_installs_into_home_local(tmp_path, nobody_home, sbin_helper_slot,
                                                user_fuse):
    home = nobody_home
    helper_before = os.path.lexists(SBIN_HELPER)
    env = clean_env(home)
    r = subprocess.run([RUN_SH, "install"], env=env, capture_output=True, text=True,
                       timeout=600, user=NOBODY, group=NOBODY, extra_groups=[])
    assert r.returncode == 0, r.stderr[-3000:]
    local = f"{home}/.local"
    command, unit = f"{local}/bin/nexus", f"{local}/share/systemd/user/nexus-mount.service"
    assert os.readlink(command) == f"{local}/lib/nexusfs/bin/nexus"
    assert r.stderr.splitlines()[-4:] == [
        f"nexusfs: installed nexus 0.1.0 in {local}/lib/nexusfs",
        f"nexusfs:   command:      {command}",
        f"nexusfs:   systemd unit: {unit} (systemctl --user enable --now nexus-mount)",
        f"nexusfs: {local}/bin is not on your PATH: add it (e.g. in ~/.profile) to type 'nexus'",
    ]
    assert os.path.lexists(SBIN_HELPER) == helper_before  # no mount(8) helper for a user
    for path in (command, unit, f"{local}/lib/nexusfs/bin/python"):
        assert os.lstat(path).st_uid == NOBODY
    with open(unit, encoding="utf-8") as f:
        assert f"ExecStart={command} mount %h/nexus\n" in f.read()
    verify_unit(unit, tmp_path)
    run_unit_like_systemd(unit, home, user=NOBODY)
