"""The one verified, atomic file writer of the project (pure Python, no Qt/napari/torch import).

Every file the project writes (masks, images, sidecars, manifests, predictions, exports,
checkpoints, reports) goes through :func:`atomic_write`: the content is written to a temporary
file in the target's folder, flushed and fsynced, verified (size and sha256 read back, or a
caller's check such as an image header/voxel read-back), and only then renamed over the target
with ``os.replace`` (and the folder fsynced). Whatever fails, the previous file is untouched and
one :class:`WriteError` names the file and the reason (disk full, read-only file system,
permission denied, file size limit, ...). This matters because some writers (SimpleITK's NIfTI
writer) return normally on a full disk and leave a truncated file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "WriteError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_file_mode",
    "fsync_dir",
    "fsync_file",
    "write_reason",
]

_REASONS = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.EFBIG: "file size limit exceeded",
    errno.ENOENT: "folder does not exist",
    errno.ENOTDIR: "a parent of the path is not a folder",
    errno.EIO: "input/output error (failing disk or lost network share)",
}


class WriteError(OSError, ValueError):
    """A file could not be written (or verified); the previous file at ``path`` is untouched.

    ``str()`` is one line: ``<path>: cannot write: <reason>``. A ValueError too, so callers that
    report bad input and bad files the same way (exit code 2, one line) catch it unchanged.
    """

    def __init__(self, path, reason: str, code: int | None = None):
        super().__init__(code or 0, reason)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: cannot write: {self.reason}"


def write_reason(exc: BaseException) -> str:
    """A short human reason for a failed write, from the errno when there is one."""
    code = getattr(exc, "errno", None)
    if code in _REASONS:
        return _REASONS[code]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    text = str(exc).strip().splitlines()
    return text[-1].strip() if text else type(exc).__name__


def _diagnose(folder: Path, size: int) -> str:
    """Why a write may have come out short although the writer reported no error."""
    hints = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and soft <= max(size, 1) * 2:
            hints.append(f"file size limit exceeded (RLIMIT_FSIZE {soft} bytes)")
    except (ImportError, OSError, ValueError):
        pass
    try:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if free < max(size, 1) * 2 + (1 << 20):
            hints.append(f"disk full? ({free} bytes free)")
    except (OSError, AttributeError):
        pass
    return "; ".join(hints)


def default_file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give (0666 minus the umask)."""
    try:  # Linux: read the umask without changing it (os.umask is process-wide, not thread-safe)
        with open("/proc/self/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder) -> None:
    """Make renames/creations in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    """Flush one file's data to disk (raises OSError, e.g. ENOSPC reported late by the disk)."""
    with open(path, "rb+") as f:  # writable: Windows cannot flush a read-only handle
        os.fsync(f.fileno())


def _hash_file(path: Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def atomic_write(
    path,
    write: Callable[[Path], object],
    *,
    verify: Callable[[Path], None] | None = None,
    suffix: str | None = None,
    extra_files: bool = False,
    error: type[WriteError] | None = None,
) -> Path:
    """Write ``path`` through ``write(tmp)`` into a temporary place beside it; fsync, ``verify(tmp)``
    (raise to reject), then rename into place. Returns ``path``; raises :class:`WriteError`.

    ``suffix``: the temporary name ends with it (writers that pick the format by suffix).
    ``extra_files``: ``write`` may create companion files (``.mhd`` + ``.raw``): it then gets a
    path of the final name inside a temporary folder, and every file it creates is moved in,
    the one named like ``path`` last (a header never points at data that is not there yet).
    ``error``: the :class:`WriteError` subclass to raise (e.g. one callers already catch).
    """
    WriteError = error or globals()["WriteError"]  # noqa: N806
    p = Path(path)
    folder = p.parent
    if not folder.is_dir():
        raise WriteError(p, f"folder {folder} does not exist", errno.ENOENT)
    tmpdir = tmp = None
    try:
        try:
            if extra_files:
                tmpdir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder))
                tmp = tmpdir / p.name
            else:
                fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + (suffix or ""), dir=folder)
                os.close(fd)
                tmp = Path(name)
                os.chmod(tmp, default_file_mode())  # readable like any other file, not mkstemp's 0600
        except OSError as e:
            raise WriteError(p, write_reason(e), e.errno) from e
        try:
            write(tmp)
            files = sorted(tmpdir.iterdir(), key=lambda f: f == tmp) if tmpdir else [tmp]
            if tmp not in files or not tmp.is_file():
                raise WriteError(p, "the writer produced no file")
            for f in files:
                if tmpdir:
                    os.chmod(f, default_file_mode())
                fsync_file(f)
        except WriteError:
            raise
        except Exception as e:  # noqa: BLE001 - any writer failure becomes one clear error
            code = getattr(e, "errno", None)
            reason = write_reason(e)
            if code not in _REASONS:  # a library error without errno: say what the system knows
                size = sum(f.stat().st_size for f in (tmpdir.iterdir() if tmpdir else [tmp]) if f.is_file())
                hint = _diagnose(folder, size)
                reason += f": {hint}" if hint else ""
            raise WriteError(p, reason, code) from e
        if verify is not None:
            try:
                verify(tmp)
            except Exception as e:  # noqa: BLE001
                size = tmp.stat().st_size if tmp.exists() else 0
                hint = _diagnose(folder, size)
                raise WriteError(
                    p, f"the written file is incomplete or wrong ({write_reason(e)})" + (f": {hint}" if hint else "")
                ) from e
        try:
            for f in files:
                os.replace(f, p if f == tmp else folder / f.name)
        except OSError as e:
            raise WriteError(p, write_reason(e), e.errno) from e
        tmp = None
        fsync_dir(folder)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        elif tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return p


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` atomically; verified by reading back its size and sha256."""
    data = bytes(data)
    want = (len(data), hashlib.sha256(data).hexdigest())

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()

    def verify(tmp: Path) -> None:
        got = _hash_file(tmp)
        if got[0] != want[0]:
            raise OSError(f"{got[0]} of {want[0]} bytes on disk")
        if got[1] != want[1]:
            raise OSError("content differs from what was written (sha256 mismatch)")

    return atomic_write(path, write, verify=verify)


def atomic_write_text(path, text: str) -> Path:
    """Write UTF-8 text atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
