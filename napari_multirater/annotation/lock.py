"""Inter-process file locks for the annotation store (pure Python, no Qt/napari).

On POSIX systems a lock is an ``fcntl.flock`` on a small, permanent lock file: the kernel releases
it when the holding process dies (even by SIGKILL), so a crashed annotator never blocks the others.
Locks are per open file description, so two threads of one process also exclude each other.

Elsewhere (no ``fcntl``) a lock is a file ``<path>.excl`` created with ``O_CREAT | O_EXCL`` that
holds the owner's pid and time and is removed on release; a lock file whose owner process is gone, or that is older
than ``stale_after`` seconds, is considered stale and broken (best effort: two processes breaking
the same stale lock at the same instant can race, which flock mode cannot). All processes working
on one project must use the same mode, which they do automatically on one operating system.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..datasets.case import DatasetError
from ..io.contained import is_inside

try:  # pragma: no cover - platform dependent
    import fcntl

    HAVE_FCNTL = True
except ImportError:  # pragma: no cover - Windows
    fcntl = None
    HAVE_FCNTL = False


LOCK_MODE_ENV = "NAPARI_MULTIRATER_LOCK_MODE"
DEFAULT_TIMEOUT = 30.0  # explicit actions (Save button, case switch): worth waiting for
AUTOSAVE_TIMEOUT = 0.5  # timer-driven saves on the GUI thread: give up fast, retry next tick


class LockTimeout(DatasetError):
    """Another process held a project lock for longer than the timeout."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class FileLock:
    """``with FileLock(path, timeout=30):`` exclusive inter-process (and inter-thread) lock.

    ``use_flock=None`` picks flock where available (unless ``$NAPARI_MULTIRATER_LOCK_MODE`` is
    ``excl``); ``False`` forces the portable lock-file mode (the tests exercise both).
    """

    def __init__(
        self,
        path,
        timeout: float = DEFAULT_TIMEOUT,
        poll: float = 0.02,
        stale_after: float = 120.0,
        use_flock: bool | None = None,
    ):
        self.path = Path(path)
        self.timeout = float(timeout)
        self.poll = float(poll)
        self.stale_after = float(stale_after)
        if use_flock is None:  # NAPARI_MULTIRATER_LOCK_MODE=excl forces the portable mode (tests)
            use_flock = os.environ.get(LOCK_MODE_ENV, "").lower() != "excl"
        self.use_flock = bool(use_flock) and HAVE_FCNTL
        if not self.use_flock:  # never the permanent flock file, which would look held forever
            self.path = self.path.with_name(self.path.name + ".excl")
        self._fd: int | None = None

    # --- public API ---------------------------------------------------------------------------
    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this FileLock object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if self._try_acquire():
                return
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{self.path}: another annotator or process is saving into this project and kept "
                    f"the lock for more than {self.timeout:g} s; try again"
                )
            time.sleep(self.poll)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self.use_flock:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        else:
            os.close(fd)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # --- implementations ----------------------------------------------------------------------
    def _try_acquire(self) -> bool:
        return self._try_flock() if self.use_flock else self._try_exclusive_create()

    def _try_flock(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            raise
        try:  # the file may have been removed (remove_idle_lock_files) after we opened it: retry then
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _try_exclusive_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            self._break_if_stale()
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def _break_if_stale(self) -> None:
        try:
            st = self.path.stat()
            info = json.loads(self.path.read_text() or "{}")
        except (FileNotFoundError, ValueError, OSError):
            info, st = {}, None
        if st is None:
            return
        age = time.time() - st.st_mtime
        same_host = info.get("host") == socket.gethostname()
        dead = same_host and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"])
        # an unreadable/empty lock file may be mid-creation: only break it when old
        if dead or age > self.stale_after:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def remove_idle_lock_file(path) -> bool:
    """Delete the flock file ``path`` when no process holds it (a dock closing tidies up the project
    folder); a held lock is left alone. Safe: :meth:`FileLock._try_flock` retries when the file it
    locked was removed meanwhile. Returns True when the file was removed."""
    path = Path(path)
    if not HAVE_FCNTL:
        return False  # portable mode: lock files are removed on release already
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held by someone: keep it
        try:
            if not os.path.samestat(os.fstat(fd), os.stat(path)):
                return False
            os.unlink(path)
            return True
        except OSError:
            return False
    finally:
        os.close(fd)  # also releases the flock


def remove_idle_lock_files(project_root) -> list[Path]:
    """Remove the project's ``.dataset.lock`` and per-rater ``.<rater>.lock`` files that nobody holds."""
    root = Path(project_root)
    candidates = [root / ".dataset.lock", *root.glob("cases/*/raters/.*.lock")]
    # never through a symbolic link leading out of the project (that would delete files elsewhere)
    keep = [p for p in candidates if p.is_file() and not p.is_symlink() and is_inside(root, p)]
    return [p for p in keep if remove_idle_lock_file(p)]
