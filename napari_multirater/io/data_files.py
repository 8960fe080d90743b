"""The voxel-data files an image header names: MetaImage ``ElementDataFile`` and NRRD ``data file``.

A header is untrusted: ``ElementDataFile = /home/x/.ssh/id_rsa`` would make the reader copy that
file's bytes into the image. :func:`check_data_files` resolves every name a header gives (one
file, a ``LIST`` of files, or a printf pattern with min/max/step) with
:func:`~napari_multirater.io.contained.inside` the header's own folder, so no absolute path, no
``..`` and no symbolic link leading out is ever read. Pure Python, no Qt.
"""

from __future__ import annotations

import re
from pathlib import Path

from .contained import UnsafePath, inside

__all__ = ["check_data_files", "data_file_names"]

META_SUFFIXES = (".mha", ".mhd")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
MAX_HEADER_BYTES = 16 << 20  # a LIST header of one name per slice stays far below this
MAX_PATTERN_FILES = 100_000
_META_KEY = re.compile(r"\s*ElementDataFile\s*=\s*(.*)", re.IGNORECASE)
_NRRD_KEY = re.compile(r"\s*data\s*file\s*:\s*(.*)", re.IGNORECASE)


def _header_lines(path: Path, attached_end) -> list[str]:
    """Text lines of the header, up to the line ``attached_end(line)`` says ends it (the binary
    data of a single-file image follows), else the whole (detached) header file."""
    lines: list[str] = []
    read = 0
    with open(path, "rb") as f:
        while raw := f.readline(MAX_HEADER_BYTES):
            read += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            lines.append(line)
            if attached_end(line):
                return lines
            if read > MAX_HEADER_BYTES:
                raise UnsafePath(f"{path}: header longer than {MAX_HEADER_BYTES} bytes")
    return lines


def _expand(value: str, rest: list[str], what: str) -> list[str]:
    """File names of a data-file value: ``LIST`` (the following lines), a pattern
    ``fmt min max step`` (when ``fmt`` holds ``%``), the inline marker, or one name."""
    words = value.split()
    if not words:
        raise UnsafePath(f"{what}: empty")
    if words[0].upper() == "LIST":
        return [ln.strip() for ln in rest if ln.strip()]
    if "%" in words[0]:
        try:
            lo, hi, step = (int(w) for w in words[1:4])
            if step == 0 or abs((hi - lo) // step) + 1 > MAX_PATTERN_FILES:
                raise ValueError("too many files")
            return [words[0] % k for k in range(lo, hi + (1 if step > 0 else -1), step)]
        except (ValueError, TypeError) as e:
            raise UnsafePath(f"{what} {value!r}: not a usable file pattern ({e})") from None
    return [value.strip()]


def data_file_names(path) -> list[str]:
    """The data file names the MetaImage/NRRD header ``path`` refers to, as written (empty when
    the voxels are inline, or for other formats)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(META_SUFFIXES):
        lines = _header_lines(path, lambda ln: bool(_META_KEY.match(ln)) and "LIST" not in ln.upper())
        for i, ln in enumerate(lines):
            m = _META_KEY.match(ln)
            if m:
                value = m.group(1).strip()
                return [] if value.upper() == "LOCAL" else _expand(value, lines[i + 1 :], "ElementDataFile")
        return []
    if name.endswith(NRRD_SUFFIXES):
        lines = _header_lines(path, lambda ln: ln.strip() == "" and name.endswith(".nrrd"))
        for i, ln in enumerate(lines):
            m = _NRRD_KEY.match(ln)
            if m and not ln.lstrip().startswith("#"):
                return _expand(m.group(1).strip(), lines[i + 1 :], "data file")
        return []
    return []


def check_data_files(path) -> None:
    """:class:`UnsafePath` unless every data file the header ``path`` names lies inside its folder."""
    path = Path(path)
    for name in data_file_names(path):
        inside(path.parent, name, "data file")
