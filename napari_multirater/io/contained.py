"""Path containment: a path or name read from a file never leaves its folder (pure Python).

Projects, image headers and checkpoints are untrusted: a name read from them (a sidecar's
``mask_file``, a MetaImage ``ElementDataFile``) is only ever used through :func:`inside`, which
refuses absolute paths, drive letters, ``..``, backslashes, NUL and empty names, and a result
whose real path (symbolic links resolved) is not inside the real path of its root.

Deleting and renaming inside a root (:func:`remove_tree`, :func:`replace`, :func:`quarantine`)
walk down from the root with ``O_NOFOLLOW`` and act relative to the opened folder, so no symbolic
link is followed, not even one swapped in meanwhile; the entry acted on is never followed either
(a symbolic link is renamed as a link). Where the platform cannot do that (no ``dir_fd``), each
component is checked with ``lstat`` first.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import stat
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

__all__ = [
    "UnsafePath",
    "UntrustedPathWarning",
    "check_relative",
    "ensure_inside",
    "inside",
    "is_inside",
    "quarantine",
    "remove_tree",
    "replace",
]

_FD_OPS = os.open in os.supports_dir_fd and os.replace in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")
_RMTREE_FD = _FD_OPS and getattr(shutil.rmtree, "avoids_symlink_attacks", False) and sys.version_info >= (3, 11)


class UnsafePath(ValueError):
    """A path taken from a file would leave its folder (absolute, ``..``, a symbolic link out);
    the message names the value and where it came from."""


class UntrustedPathWarning(UserWarning):
    """A file was moved aside (quarantined) because it named a path outside its folder."""


def check_relative(name, what: str = "path") -> tuple[str, ...]:
    """The components of ``name``, a relative path read from a file; :class:`UnsafePath` unless it
    is a non-empty string without NUL, backslash, drive or root, ``..`` or empty components."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise UnsafePath(f"{what} {name!r}: not a plain relative path")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        raise UnsafePath(f"{what} {name!r}: absolute paths are not allowed")
    parts = tuple(p for p in name.split("/") if p != ".")
    if not parts or any(p in ("", "..") for p in parts):
        raise UnsafePath(f"{what} {name!r}: '..' and empty components are not allowed")
    return parts


def is_inside(root, path) -> bool:
    """True when the real path of ``path`` (symbolic links resolved) lies inside that of ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    try:
        return os.path.commonpath([real_root, real]) == real_root
    except ValueError:  # different drives
        return False


def ensure_inside(root, path, what: str = "path") -> Path:
    """``path`` itself when its real path lies inside ``root``'s, else :class:`UnsafePath`."""
    if not is_inside(root, path):
        raise UnsafePath(f"{what} {path}: leads outside {root} (symbolic link?)")
    return Path(path)


def inside(root, name, what: str = "path") -> Path:
    """``root / name`` for ``name`` read from a file: :func:`check_relative`, then :func:`ensure_inside`."""
    path = Path(root).joinpath(*check_relative(name, what))
    return ensure_inside(root, path, f"{what} {name!r}:")


def _parts_below(root: Path, path: Path) -> tuple[str, ...]:
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        raise UnsafePath(f"{path}: not inside {root}") from None
    parts = rel.parts
    if not parts or ".." in parts:
        raise UnsafePath(f"{path}: not an entry inside {root}")
    return parts


@contextmanager
def _open_dir(root: Path, parts: tuple[str, ...]) -> Iterator[int | None]:
    """A file descriptor of ``root/parts`` opened without following any symbolic link below
    ``root`` (None where ``dir_fd`` is unsupported: then each component is ``lstat``-checked)."""
    if not _FD_OPS:
        cur = root
        for part in parts:
            cur = cur / part
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                raise UnsafePath(f"{cur}: a symbolic link or not a folder; refused")
        yield None
        return
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(root, flags)
    try:
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                here = root.joinpath(*parts[: i + 1])
                if e.errno in (errno.ELOOP, errno.ENOTDIR) or os.path.islink(here):
                    raise UnsafePath(f"{here}: a symbolic link or not a folder; refused") from e
                raise
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def _is_link(fd: int | None, folder: Path, name: str) -> bool:
    st = os.lstat(name, dir_fd=fd) if fd is not None else os.lstat(folder / name)
    return stat.S_ISLNK(st.st_mode)


def replace(root, src, dst) -> None:
    """``os.replace(src, dst)`` for two entries below ``root`` (lexically): no symbolic link on the
    way is followed, and a symbolic link at ``src`` is refused."""
    root = Path(root)
    s, d = _parts_below(root, Path(src)), _parts_below(root, Path(dst))
    with _open_dir(root, s[:-1]) as sfd, _open_dir(root, d[:-1]) as dfd:
        if _is_link(sfd, root.joinpath(*s[:-1]), s[-1]):
            raise UnsafePath(f"{src}: a symbolic link; refused")
        if sfd is None or dfd is None:
            os.replace(root.joinpath(*s), root.joinpath(*d))
        else:
            os.replace(s[-1], d[-1], src_dir_fd=sfd, dst_dir_fd=dfd)


def remove_tree(root, path) -> bool:
    """Delete the folder ``path`` (below ``root``) and everything in it without following any
    symbolic link; a symbolic link at ``path`` or on the way raises :class:`UnsafePath`.
    Returns False when ``path`` does not exist."""
    root = Path(root)
    parts = _parts_below(root, Path(path))
    try:
        with _open_dir(root, parts[:-1]) as fd:
            folder = root.joinpath(*parts[:-1])
            if _is_link(fd, folder, parts[-1]):
                raise UnsafePath(f"{path}: a symbolic link; refused")
            if fd is not None and _RMTREE_FD:
                shutil.rmtree(parts[-1], dir_fd=fd)  # Python >= 3.11
            else:
                shutil.rmtree(folder / parts[-1])
    except FileNotFoundError:
        return False
    return True


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%dT%H%M%S")


def quarantine(root, entry, folder, reason: str) -> Path:
    """Move ``entry`` (a file, folder or symbolic link below ``root``; a link is moved as a link,
    never followed) into ``folder`` (created below ``root``) as ``<name>-<time>[-n]``, and warn
    (:class:`UntrustedPathWarning`) naming it and ``reason``. Returns the new path."""
    root, entry, folder = Path(root), Path(entry), Path(folder)
    parts = _parts_below(root, folder)
    with _open_dir(root, parts[:-1]) as fd:
        try:
            if fd is not None:
                os.mkdir(parts[-1], dir_fd=fd)
            else:
                os.mkdir(folder)
        except FileExistsError:
            pass
    name = f"{entry.name.lstrip('.') or 'entry'}-{_stamp()}"
    dest, n = folder / name, 1
    while os.path.lexists(dest):
        n += 1
        dest = folder / f"{name}-{n}"
    root_parts = _parts_below(root, entry)
    with _open_dir(root, root_parts[:-1]) as sfd, _open_dir(root, parts) as dfd:
        if sfd is None or dfd is None:
            os.replace(entry, dest)
        else:
            os.replace(root_parts[-1], dest.name, src_dir_fd=sfd, dst_dir_fd=dfd)
    warnings.warn(f"{entry}: {reason}; moved aside to {dest} (not followed)", UntrustedPathWarning, stacklevel=2)
    return dest
