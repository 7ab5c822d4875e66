"""Running a real nexusfs mount in a subprocess for tests and benchmarks.

``MountedStore`` starts ``python -m mount --foreground`` on a fresh (or given)
store and waits until the filesystem is live. ``stop()`` unmounts and waits for
the process to write everything out; ``kill()`` simulates a crash (SIGKILL) and
cleans up the dead mount. Use it as a context manager: it always unmounts and
never leaves a process behind, also when the test fails.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time


def fuse_usable() -> str | None:
    """None if real mounts can run here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed"
    if os.getuid() != 0 and not shutil.which("fusermount3"):
        return "fusermount3 is missing"
    return None


def _is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        return any(line.split()[1] == path for line in f if len(line.split()) > 1)


def force_unmount(path: str) -> None:
    """Detach a (possibly dead) FUSE mount."""
    if not _is_mounted(path):
        return
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if shutil.which(cmd[0]):
            subprocess.run(cmd, capture_output=True)
            if not _is_mounted(path):
                return


class MountedStore:
    def __init__(
        self,
        home: str,
        mountpoint: str,
        *,
        settings: dict[str, object] | None = None,
        args: list[str] | None = None,
        log_path: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = os.path.abspath(home)
        self.mountpoint = os.path.abspath(mountpoint)
        self.settings = settings or {}
        self.args = args or []
        self.log_path = log_path or os.path.join(os.path.dirname(self.home), "mount-" + os.path.basename(self.mountpoint) + ".log")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- start
    def start(self, timeout: float = 30.0) -> MountedStore:
        os.makedirs(self.mountpoint, exist_ok=True)
        os.makedirs(self.home, exist_ok=True)
        cmd = [sys.executable, "-m", "mount", "--home", self.home]
        if self.settings:
            cfg = os.path.join(self.home, "nexus.yaml")
            with open(cfg, "w", encoding="utf-8") as f:
                for k, v in self.settings.items():
                    f.write(f"{k}: {v}\n")
            cmd += ["--config", cfg]
        r, w = os.pipe()
        cmd += [self.mountpoint, "--foreground", "--ready-fd", str(w), *self.args]
        env = dict(os.environ, **(self.env or {}))
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         pass_fds=(w,), env=env)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], timeout)
            line = os.read(r, 4096).decode(errors="replace").strip() if ready else ""
        finally:
            os.close(r)
        if line != "OK":
            self._reap(kill=True)
            raise RuntimeError(f"mount failed to start: {line or 'timeout'}\n{self.log_tail()}")
        return self

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # ----------------------------------------------------------------- stop
    def stop(self, timeout: float = 120.0) -> int:
        """Unmount cleanly; returns the mount process's exit status."""
        if self.proc is None:
            return 0
        if _is_mounted(self.mountpoint):
            cmd = ["fusermount3", "-u", self.mountpoint] if shutil.which("fusermount3") else ["umount", self.mountpoint]
            res = subprocess.run(cmd, capture_output=True)
            if res.returncode != 0 and self.proc.poll() is None:
                # busy or refused: ask the process itself to unmount
                self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = self._reap(kill=True)
        self.proc = None
        force_unmount(self.mountpoint)
        return rc

    def kill(self) -> None:
        """Crash the mount process (SIGKILL) and detach the dead mount."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        force_unmount(self.mountpoint)

    def _reap(self, kill: bool) -> int:
        assert self.proc is not None
        if kill and self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait()
        self.proc = None
        force_unmount(self.mountpoint)
        return rc

    def __enter__(self) -> MountedStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self.proc is not None:
                self._reap(kill=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.mountpoint, *parts)


def wait_until(pred, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
