"""The one output rule of every command: an output never replaces an input, and never replaces an
existing result without an explicit ``--overwrite``.

* :func:`check_output_file` / :func:`check_output_files`: files a command writes (``--json``, a
  checkpoint, a run folder's ``best.pt``...). Refused when the file *is* an input (the same file, or an
  existing file inside an input folder such as a dataset's ``dataset.json``), or exists and
  ``overwrite`` is false.
* :func:`check_output_folder` + :func:`staged_output_folder`: a folder written as a whole
  (``predict``, ``synth``). It is built beside its destination and renamed into place, so no file of
  an earlier run is left next to the new ones and a failure leaves the old folder untouched.

Pure Python (no Qt / napari / torch). Errors are :class:`OutputError`: one line, a ValueError, so every
command's existing "bad input: exit code 2" handler reports it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .atomic import default_file_mode, fsync_dir
from .contained import is_inside

__all__ = [
    "OutputError",
    "check_output_file",
    "check_output_files",
    "check_output_folder",
    "input_replaced_by",
    "staged_output_folder",
]

OVERWRITE_HINT = "pass --overwrite to replace it, or choose another output"


class OutputError(ValueError):
    """An output would replace an input or an existing result (one line)."""


def _real(path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # hard links, case-insensitive file systems, symlinks
    except OSError:
        pass
    return _real(a) == _real(b)


def _inside(path: Path, folder: Path) -> bool:
    return is_inside(os.path.abspath(Path(folder).expanduser()), os.path.abspath(Path(path).expanduser()))


def input_replaced_by(out, inputs: Iterable, own_folder=None) -> Path | None:
    """The input that writing the file ``out`` would replace, else None: ``out`` is an input (file
    or folder), or an existing file inside an input folder (a dataset's manifest, case images...).
    ``own_folder``: the command's own output folder (a run folder): its files belong to the
    command even where it lies inside an input folder."""
    out = Path(out).expanduser()
    for src in inputs:
        if src is None or str(src) == "":
            continue
        src = Path(src).expanduser()
        if _same(out, src):
            return src
        if own_folder is not None and _inside(out, own_folder) and not _inside(src, own_folder):
            continue  # a file of the command's own folder (which may lie inside an input folder)
        if src.is_dir() and (out.exists() or out.is_symlink()) and _inside(out, src):
            return out
    return None


def check_output_files(
    files: Iterable, inputs: Iterable = (), *, overwrite: bool = False, flag: str = "--out", own_folder=None
) -> None:
    """Refuse (:class:`OutputError`) when a file in ``files`` is an input, or exists and not
    ``overwrite`` (``own_folder``: see :func:`input_replaced_by`)."""
    files = [Path(f).expanduser() for f in files]
    inputs = list(inputs)
    for f in files:
        hit = input_replaced_by(f, inputs, own_folder)
        if hit is not None:
            raise OutputError(f"{flag} {f} would replace the input {hit}; an output never replaces an input")
        if f.is_dir():
            raise OutputError(f"{flag} {f} is a folder; expected a file")
    existing = [f for f in files if f.exists() or f.is_symlink()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more result files)" if len(existing) > 1 else ""
        raise OutputError(f"{flag}: {existing[0]} already exists{more}; {OVERWRITE_HINT}")


def check_output_file(path, inputs: Iterable = (), *, overwrite: bool = False, flag: str = "--out") -> Path:
    """One output file (see :func:`check_output_files`); returns it as a Path."""
    check_output_files([path], inputs, overwrite=overwrite, flag=flag)
    return Path(path).expanduser()


def check_output_folder(
    path, inputs: Iterable = (), *, overwrite: bool = False, flag: str = "--out", marker: str | None = None
) -> Path:
    """A folder replaced as a whole (:func:`staged_output_folder`). Refused when it is, contains or
    lies in place of an input; when it is not empty unless ``overwrite``; and, even with
    ``overwrite``, when it lacks ``marker`` (the file an earlier run of the same command leaves,
    e.g. ``prediction.json``): a folder of other files is never replaced."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        hit = input_replaced_by(out, inputs)
        what = f"is the input {hit}" if hit is not None else "is a file"
        raise OutputError(f"{flag} {out} {what}; expected a folder")
    for src in inputs:
        if src is None or str(src) == "":
            continue
        src = Path(src).expanduser()
        if _same(out, src) or (src.exists() and _inside(src, out)):
            raise OutputError(f"{flag} {out} holds the input {src}; an output never replaces an input")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{flag} {out} already exists and is not empty; {OVERWRITE_HINT}")
        if marker and not (out / marker).is_file():
            raise OutputError(
                f"{flag} {out} is not empty and holds no {marker} (not an earlier output of this command); "
                "--overwrite replaces only such a folder: choose another output"
            )
    return out


def _folder_mode() -> int:
    """What ``mkdir`` would give: the umask's file mode, searchable where readable."""
    mode = default_file_mode()
    return mode | ((mode & 0o444) >> 2)


@contextlib.contextmanager
def staged_output_folder(out, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out`` in one rename (an
    existing ``out`` is first removed when ``replace``, else it must be empty). On any error the
    temporary folder is removed and ``out`` is untouched. Check ``out`` first
    (:func:`check_output_folder`)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, _folder_mode())  # mkdtemp makes 0700: give it a normal folder's mode
        old = None
        if out.is_dir() and any(out.iterdir()):
            if not replace:
                raise OutputError(f"{out} is no longer empty; nothing written")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
        elif out.is_dir():
            out.rmdir()  # empty: rename cannot replace a folder on every platform
        try:
            os.rename(tmp, out)
        except BaseException:
            if old is not None:
                os.rename(old / out.name, out)  # put the earlier folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
