"""Running a real nexusfs mount in a subprocess for tests and benchmarks.

``MountedStore`` starts ``python -m mount --foreground`` on a fresh (or given)
store and waits until the filesystem is live. ``stop()`` unmounts and waits for
the process to write everything out; ``kill()`` simulates a crash (SIGKILL) and
cleans up the dead mount. Use it as a context manager: it always unmounts and
never leaves a process behind, also when the test fails.

How the mount ended is checked (``check_end``, which ``stop()`` calls): exit status 0,
and nothing in its log at WARNING or above, no traceback (an exception in one of its
threads, say the indexer or the group-commit timer, or in the final flush), no stray
output — except what the test allows with ``allow_log=[regex, ...]`` because it provokes
it on purpose.
A mount killed on purpose (``kill()``, or a signal through ``terminate()`` whose status
the test checks itself) is exempt from the status check, not from the log check.
"""

from __future__ import annotations

import os
import re
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


#: the mount's log lines (mount/cli.py _setup_logging): "2026-01-02 03:04:05,678 LEVEL name: message"
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>[A-Z]+) ")
_BAD_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
#: what Python itself writes to stderr for an exception nobody caught (no log record around it)
_STRAY_START = ("Traceback (most recent call last)", "Exception in thread", "Exception ignored",
                "Fatal Python error")


def log_problems(text: str, allow: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The entries of a mount log that say something went wrong: records at WARNING or above,
    any traceback (in a record, or written by Python for an uncaught exception) and any other
    output that is not a log record (libfuse's complaints, say), minus those an ``allow``
    regex finds (``re.search`` over the whole entry)."""
    entries: list[list[str]] = []
    for line in text.splitlines():
        if not entries or _LOG_RECORD.match(line) or line.startswith(_STRAY_START[1:]) \
                or (line.startswith(_STRAY_START[0]) and not _has_exc_info(entries[-1])):
            entries.append([line])
        else:
            entries[-1].append(line)
    problems = []
    for lines in entries:
        entry = "\n".join(lines)
        m = _LOG_RECORD.match(lines[0])
        bad = ((m is not None and m["level"] in _BAD_LEVELS)  # a warning or error record
               or (m is None and bool(entry.strip()))  # output that is not a log record
               or "Traceback (most recent call last)" in entry)
        if bad and not any(re.search(a, entry) for a in allow):
            problems.append(entry)
    return problems


def assert_clean_log(path: str, allow: list[str] | tuple[str, ...] = ()) -> None:
    """For mounts started another way (``nexus mount -d`` logs to STORE/mount.log): after
    they ended, their log has nothing wrong in it (see log_problems)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            problems = log_problems(f.read(), allow)
    except FileNotFoundError:
        return
    assert not problems, f"the mount log {path} has {len(problems)} warning(s)/error(s)/" \
        "traceback(s):\n" + "\n---\n".join(problems)


def _has_exc_info(entry: list[str]) -> bool:
    """Whether a traceback that follows belongs to this entry: a log record at ERROR or above
    (``log.exception``) or Python's "Exception in thread ..." line, each with no traceback of
    its own yet, or a traceback it chains to ("During handling of the above exception ...")."""
    if len(entry) == 1:
        m = _LOG_RECORD.match(entry[0])
        return entry[0].startswith(_STRAY_START[1:]) or m is not None and m["level"] in ("ERROR", "CRITICAL")
    return entry[-1] == "" or entry[-1].startswith(("During handling", "The above exception"))


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
        allow_log: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.home = os.path.abspath(home)
        self.mountpoint = os.path.abspath(mountpoint)
        self.settings = settings or {}
        self.args = args or []
        self.log_path = log_path or os.path.join(os.path.dirname(self.home), "mount-" + os.path.basename(self.mountpoint) + ".log")
        self.env = env
        self.allow_log = tuple(allow_log)
        self.proc: subprocess.Popen[bytes] | None = None
        #: how the last run ended: its exit status, whether it was killed or signalled on
        #: purpose, and where its part of the (shared, appended) log file begins and ends
        self.returncode: int | None = None
        self.stopped_on_purpose = False
        self._log_span: tuple[int, int | None] | None = None
        self._checked = True

    # ---------------------------------------------------------------- start
    def start(self, timeout: float = 30.0) -> MountedStore:
        from tests import needs

        needs.need_mount()  # the one guard: a missing FUSE fails the test (skips only if opted out)
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
        self.returncode, self.stopped_on_purpose, self._checked = None, False, False
        with open(self.log_path, "ab") as logf:
            self._log_span = (logf.tell(), None)
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

    def log_text(self) -> str:
        """This run's part of the log file (a remount may append to the same file)."""
        if self._log_span is None:
            return ""
        begin, end = self._log_span
        try:
            with open(self.log_path, "rb") as f:
                f.seek(begin)
                data = f.read() if end is None else f.read(max(0, end - begin))
        except OSError:
            return ""
        return data.decode(errors="replace")

    def _ended(self, rc: int, *, on_purpose: bool = False) -> int:
        """Remember how the process ended and where its log ends."""
        self.proc = None
        self.returncode = rc
        self.stopped_on_purpose = self.stopped_on_purpose or on_purpose
        if self._log_span is not None:
            try:
                self._log_span = (self._log_span[0], os.path.getsize(self.log_path))
            except OSError:
                pass
        return rc

    def check_end(self) -> None:
        """Fail (AssertionError) unless the last run ended cleanly: status 0 (not checked for a
        run killed or signalled on purpose) and nothing wrong in its log (see log_problems).
        Checks each run once; stop() calls it."""
        if self._checked or self.returncode is None:
            return
        self._checked = True
        wrong = []
        if not self.stopped_on_purpose and self.returncode != 0:
            wrong.append(f"the mount exited with status {self.returncode}")
        problems = log_problems(self.log_text(), self.allow_log)
        if problems:
            wrong.append(f"its log ({self.log_path}) has {len(problems)} warning(s)/error(s)/traceback(s)"
                         " (allow those a test provokes with MountedStore(allow_log=[regex]))")
        if wrong:
            detail = "\n---\n".join(problems) if problems else self.log_tail()
            raise AssertionError(f"mount at {self.mountpoint} did not end cleanly: "
                                 f"{'; '.join(wrong)}:\n{detail}")

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # ----------------------------------------------------------------- stop
    def stop(self, timeout: float = 120.0, *, check: bool = True) -> int:
        """Unmount cleanly; returns the mount process's exit status. Then (``check``) asserts
        that the mount ended cleanly (check_end), also when it already ended (killed,
        terminated): then the status returned is that of its end."""
        if self.proc is None:
            if check:
                self.check_end()
            return self.returncode if self.returncode is not None else 0
        if _is_mounted(self.mountpoint):
            cmd = ["fusermount3", "-u", self.mountpoint] if shutil.which("fusermount3") else ["umount", self.mountpoint]
            res = subprocess.run(cmd, capture_output=True)
            if res.returncode != 0 and self.proc.poll() is None:
                # busy or refused: ask the process itself to unmount
                self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self._ended(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            rc = self._reap(kill=True)
        force_unmount(self.mountpoint)
        if check:
            self.check_end()
        return rc

    def kill(self) -> None:
        """Crash the mount process (SIGKILL) and detach the dead mount. Its exit status is not
        checked afterwards, its log up to the kill is (by stop(), as the fixtures call it)."""
        if self.proc is not None:
            self.proc.kill()
            self._ended(self.proc.wait(), on_purpose=True)
        force_unmount(self.mountpoint)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        """Send ``sig`` (SIGTERM: a clean shutdown) to the mount process, wait for it to write
        everything out and exit; returns its status, which the caller checks (the log is
        checked by stop())."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            rc = self._ended(self.proc.wait(timeout=timeout), on_purpose=True)
        except subprocess.TimeoutExpired:
            rc = self._reap(kill=True)
        finally:
            force_unmount(self.mountpoint)
        return rc

    def _reap(self, kill: bool) -> int:
        assert self.proc is not None
        if kill and self.proc.poll() is None:
            self.proc.kill()
        rc = self._ended(self.proc.wait())
        force_unmount(self.mountpoint)
        return rc

    def __enter__(self) -> MountedStore:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            # a failing body's error comes first: the end is checked only after a passing one
            self.stop(check=exc_type is None)
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
