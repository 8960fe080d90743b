"""Size bound of an ``.npz`` file, read from its zip directory and ``.npy`` headers before loading.

``np.load`` allocates each array from the shape its header declares, so a few MB of compressed
zeros (or a header that lies about its shape) can ask for many GB. :func:`check_npz_bounds` reads
only the headers: every member must hold the bytes its shape declares, and all arrays together
must fit :data:`MAX_NPZ_BYTES`. Pure numpy + zipfile; callers turn :class:`NpzBoundsError` into
their own one-line error naming the file.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["MAX_NPZ_BYTES", "NpzBoundsError", "check_npz_bounds"]

MAX_NPZ_BYTES = 2 << 30  # one npz (a real LIDC shard expands to about 330 MB): split larger data into shards


class NpzBoundsError(ValueError):
    """An npz member declares more data than it holds, or the arrays exceed the bound."""


def _is_npy(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    """Whether a member starts with the ``.npy`` magic (what ``np.load`` reads it by)."""
    prefix = np.lib.format.MAGIC_PREFIX
    try:
        with zf.open(info) as f:
            return f.read(len(prefix)) == prefix
    except (OSError, zipfile.BadZipFile, NotImplementedError, EOFError) as e:
        raise NpzBoundsError(f"member {info.filename}: unreadable ({e})") from None


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of one ``.npy`` member, reading only its first bytes."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise NpzBoundsError(f"member {info.filename}: unsupported .npy version {version}")
        return tuple(int(v) for v in shape), dtype, f.tell()


def check_npz_bounds(path, max_bytes: int | None = None) -> int:
    """Raise :class:`NpzBoundsError` unless every array of the npz at ``path`` holds what its header
    declares and all together take at most ``max_bytes``; returns the total bytes. A file that is not
    a zip is left to ``np.load`` to report. ``max_bytes`` defaults to :data:`MAX_NPZ_BYTES`."""
    max_bytes = MAX_NPZ_BYTES if max_bytes is None else max_bytes
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return 0
    total = 0
    with zf:
        for info in zf.infolist():
            # numpy picks the reader by the member's first bytes, not its name: every member counts
            if not _is_npy(zf, info):
                total += info.file_size  # np.load reads such a member whole, as bytes
                if total > max_bytes:
                    raise NpzBoundsError(
                        f"member {info.filename} expands to {info.file_size} bytes: more than "
                        f"{max_bytes / 2**30:.1f} GiB in all"
                    )
                continue
            try:
                shape, dtype, head = _header(zf, info)
            except NpzBoundsError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
                raise NpzBoundsError(f"member {info.filename}: unreadable .npy header ({e})") from None
            if dtype.hasobject:
                continue  # np.load(allow_pickle=False) refuses it
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size - head:
                raise NpzBoundsError(
                    f"member {info.filename} declares shape {shape} ({nbytes} bytes) but holds "
                    f"{max(info.file_size - head, 0)} bytes: a damaged or crafted file"
                )
            total += nbytes
            if total > max_bytes:
                raise NpzBoundsError(
                    f"the arrays expand to more than {max_bytes / 2**30:.1f} GiB ({info.filename}: shape {shape}, "
                    f"{dtype}); split the data into smaller train-*.npz shards"
                )
    return total
