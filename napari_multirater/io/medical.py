"""Reading and writing medical images (NIfTI, NRRD, MetaImage, DICOM) with SimpleITK.

Arrays are returned in SimpleITK's (z, y, x) order exactly as stored (never resampled or
reoriented); spacing/origin/direction travel in a :class:`Geometry`, whose ``layer_kwargs`` show the
array at the right physical (LPS, mm) position in napari. Pure module: no Qt/napari import.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .geometry import Geometry

# The one list of file suffixes (case folders, the annotation store and the reader import these).
# Preference order: ``find_file`` picks the first suffix present.
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")
SUPPORTED_SUFFIXES = (*WRITABLE_SUFFIXES, ".dcm")
SINGLE_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # header and voxels in one file


class MedicalIOError(ValueError):
    """A medical image cannot be read or written; the message names the file and the problem."""


def _suffix(path) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_supported_file(path) -> bool:
    """True when the file name has a supported suffix (existence is not checked)."""
    return _suffix(path) in SUPPORTED_SUFFIXES


def _series_ids(directory) -> tuple[str, ...]:
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)))
    except RuntimeError:
        return ()


def is_dicom_dir(path) -> bool:
    """True when ``path`` is a directory holding at least one DICOM series."""
    return Path(path).is_dir() and bool(_series_ids(path))


def _short(err: Exception) -> str:
    """The informative last line of a SimpleITK/ITK exception message."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _check_image(img: sitk.Image, path: Path) -> sitk.Image:
    """Reject vector/complex pixels and 4D+ images (a singleton 4th axis is dropped)."""
    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp > 1 or "complex" in img.GetPixelIDTypeAsString():
        raise MedicalIOError(
            f"{path}: multi-component pixels ({ncomp} components, {img.GetPixelIDTypeAsString()}) "
            "are not supported; expected a scalar 2D or 3D image"
        )
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = sitk.Extract(img, [*img.GetSize()[:3], 0], [0, 0, 0, 0])
    if img.GetDimension() not in (2, 3):
        raise MedicalIOError(
            f"{path}: {img.GetDimension()}D image (size {img.GetSize()}) is not supported; "
            "expected a 2D or 3D image"
        )
    return img


def _nifti_expected_bytes(header: bytes) -> int | None:
    """vox_offset + data size from a NIfTI-1/2 header, None when not a NIfTI header."""
    for end in "<>":
        if len(header) >= 348 and struct.unpack(end + "i", header[:4])[0] == 348:
            dim = struct.unpack(end + "8h", header[40:56])
            bitpix = struct.unpack(end + "h", header[72:74])[0]
            offset = int(struct.unpack(end + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(end + "i", header[:4])[0] == 540:
            dim = struct.unpack(end + "8q", header[16:80])
            bitpix = struct.unpack(end + "h", header[14:16])[0]
            offset = struct.unpack(end + "q", header[168:176])[0]
            break
    else:
        return None
    n = int(np.prod([max(int(d), 1) for d in dim[1 : 1 + min(max(dim[0], 0), 7)]]))
    return offset + n * bitpix // 8


def _check_nifti_complete(path: Path) -> None:
    """SimpleITK silently zero-fills truncated NIfTI files (.nii and .nii.gz): check the size."""
    gz = _suffix(path) == ".nii.gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            header = f.read(540)
    except (OSError, EOFError, zlib.error) as e:
        raise MedicalIOError(f"{path}: cannot read the NIfTI header (corrupt or truncated?): {e}") from e
    expected = _nifti_expected_bytes(header)
    if expected is None:
        raise MedicalIOError(f"{path}: not a NIfTI file (bad header)")
    if not gz:
        size = path.stat().st_size
    else:
        with open(path, "rb") as f:  # gzip trailer: uncompressed size mod 2**32 (fast path)
            f.seek(-4, os.SEEK_END)
            if struct.unpack("<I", f.read(4))[0] == expected % 2**32:
                return
        size = 0
        try:  # slow path: stream through the whole file (multi-member or damaged gzip)
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    size += len(chunk)
        except (OSError, EOFError, zlib.error):
            pass
    if size < expected:
        raise MedicalIOError(
            f"{path}: truncated NIfTI file: {size} of {expected} bytes (header + voxel data) present"
        )


def _read_file(path: Path) -> tuple[sitk.Image, dict]:
    if not is_supported_file(path):
        raise MedicalIOError(f"{path}: unsupported file type; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    if _suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise MedicalIOError(f"{path}: cannot read the file (corrupt or truncated?): {_short(e)}") from e
    return img, {"format": _suffix(path)}


def _read_dicom_dir(path: Path) -> tuple[sitk.Image, dict]:
    ids = _series_ids(path)
    if not ids:
        n = sum(1 for _ in path.iterdir())
        what = "the directory is empty" if n == 0 else f"no DICOM series among its {n} entries"
        raise MedicalIOError(f"{path}: cannot read the directory: {what}")
    files = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid) for uid in ids}
    uid = max(ids, key=lambda u: len(files[u]))  # ties: first series
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[uid])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise MedicalIOError(f"{path}: cannot read DICOM series {uid}: {_short(e)}") from e

    def tag(i: int, key: str) -> str:
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""

    n = len(files[uid])
    info = {
        "format": "dicom",
        "series_uid": uid,
        "series_description": tag(0, "0008|103e"),
        "modality": tag(0, "0008|0060"),
        "patient_id": tag(0, "0010|0020"),
        "n_slices": n,
        "file_names": list(files[uid]),
        "sop_uids": [tag(i, "0008|0018") for i in range(n)],
    }
    warnings = []
    if len(ids) > 1:
        others = ", ".join(f"{u} ({len(files[u])} slices)" for u in ids if u != uid)
        warnings.append(
            f"folder has {len(ids)} DICOM series; loaded the largest (UID {uid}, {n} slices); "
            f"others: {others}"
        )
    if n > 2 and img.GetDimension() == 3:
        ipp = [tag(i, "0020|0032") for i in range(n)]
        if all(ipp):
            normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
            try:
                gaps = np.diff(np.array([[float(v) for v in p.split("\\")] for p in ipp]) @ normal)
            except ValueError:  # malformed ImagePositionPatient: skip the check
                gaps = np.zeros(1)
            if np.ptp(gaps) > 0.01 * abs(img.GetSpacing()[2]) + 1e-3:
                warnings.append(
                    f"non-uniform slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, missing slices?); "
                    f"loaded with spacing {img.GetSpacing()[2]:.4g} mm"
                )
    if warnings:
        info["warning"] = "; ".join(warnings)
    return img, info


def read_image(path) -> tuple[np.ndarray, Geometry, dict]:
    """Read a 2D/3D image file or a DICOM series directory.

    Returns ``(array in (z, y, x) order, Geometry, info)``; info holds ``source_path``, ``format``,
    ``pixel_type``, for DICOM ``series_uid``/``series_description``/``sop_uids`` (per z index), and a
    human ``warning`` when something was chosen for the user. Raises :class:`MedicalIOError`.
    """
    p = Path(path)
    if not p.exists():
        raise MedicalIOError(f"{p}: file not found")
    img, info = _read_dicom_dir(p) if p.is_dir() else _read_file(p)
    img = _check_image(img, p)
    arr = sitk.GetArrayFromImage(img)
    if info["format"] == "dicom" and arr.dtype.kind in "iu" and arr.itemsize > 2 and arr.size:
        if arr.min() >= np.iinfo(np.int16).min and arr.max() <= np.iinfo(np.int16).max:
            arr = arr.astype(np.int16)  # rescaled CT comes back as int32; HU fits int16
    info = {"source_path": str(p), **info, "pixel_type": img.GetPixelIDTypeAsString()}
    info["dtype"] = str(arr.dtype)
    return arr, Geometry.from_sitk(img), info


def _label_dtype(arr: np.ndarray, path, max_value: int) -> np.ndarray:
    """Validate label values (integers, >= 0, <= max_value) and cast to uint8/uint16[/uint32]."""
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise MedicalIOError(
                f"{path}: non-integer label values (e.g. {float(arr[bad].flat[0])}); "
                "a label image must hold integers"
            )
    elif arr.dtype.kind not in "iu":
        raise MedicalIOError(f"{path}: pixel type {arr.dtype} cannot hold labels")
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        raise MedicalIOError(f"{path}: negative label value {lo}")
    if hi > max_value:
        raise MedicalIOError(f"{path}: label value {hi} exceeds {max_value}")
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            return arr.astype(dt, copy=False)
    raise AssertionError("unreachable")


def read_label_image(
    path, reference: Geometry | None = None, shape=None
) -> tuple[np.ndarray, Geometry, dict]:
    """Like :func:`read_image` for a label map: integer values (float files only when every value is
    an integer), cast to uint8/uint16/uint32; checks ``shape`` and ``reference`` geometry if given."""
    arr, geom, info = read_image(path)
    arr = _label_dtype(arr, path, np.iinfo(np.uint32).max)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise MedicalIOError(
            f"{path}: shape {tuple(arr.shape)} does not match the image shape {tuple(shape)}"
        )
    if reference is not None:
        diff = reference.mismatch(geom)
        if diff is not None:
            raise MedicalIOError(f"{path}: geometry does not match the image: {diff} (labels vs image)")
    return arr, geom, info


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


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:  # writable: Windows cannot flush a read-only handle
        os.fsync(f.fileno())


def write_image(path, array, geometry: Geometry, *, label: bool = False, fsync: bool = False) -> Path:
    """Write ``array`` ((z, y, x) or (y, x)) with ``geometry`` to ``path`` (suffix picks the format).

    Labels are checked and cast to uint8 (max <= 255) or uint16 (max <= 65535). Compression is on.
    Files are written into a temporary folder beside the target and moved in with ``os.replace``
    (data file first, header last for .mhd/.nhdr), so a failed write never leaves a partial file.
    ``fsync``: the files are flushed to disk before they are moved in, and the folder after, so
    the written image survives a power loss once this returns.
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix not in WRITABLE_SUFFIXES:
        raise MedicalIOError(
            f"{p}: cannot write {suffix or 'files without a suffix'}; use one of {WRITABLE_SUFFIXES}"
        )
    arr = np.asarray(array)
    if arr.ndim != geometry.ndim or arr.ndim not in (2, 3):
        raise MedicalIOError(
            f"{p}: array is {arr.ndim}D but the geometry is {geometry.ndim}D (2D or 3D expected)"
        )
    if label:
        arr = _label_dtype(arr, p, np.iinfo(np.uint16).max)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    geometry.apply_to(img)
    if not p.parent.is_dir():
        raise MedicalIOError(f"{p}: folder {p.parent} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
    try:
        try:
            sitk.WriteImage(img, str(tmpdir / p.name), True)
        except RuntimeError as e:
            raise MedicalIOError(f"{p}: cannot write the file: {_short(e)}") from e
        header = tmpdir / p.name
        files = sorted(tmpdir.iterdir(), key=lambda f: f == header)  # header last
        if fsync:
            for f in files:
                _fsync_file(f)
        for f in files:
            os.replace(f, p.parent / f.name)
        if fsync:
            fsync_dir(p.parent)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return p


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def write_dicom_series(
    directory,
    array,
    geometry: Geometry,
    *,
    series_uid: str | None = None,
    series_description: str = "test series",
    prefix: str = "slice",
) -> list[Path]:
    """Write a (z, y, x) array as one int16 CT DICOM file per slice (for tests and demos).

    Sets SOP/Series/Study/FrameOfReference UIDs, Modality CT, InstanceNumber, ImagePositionPatient
    (``TransformIndexToPhysicalPoint((0, 0, k))``), ImageOrientationPatient, PixelSpacing,
    SliceThickness. Returns the written paths.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if arr.ndim != 3 or geometry.ndim != 3:
        raise MedicalIOError(f"{d}: a DICOM series needs a 3D array and geometry, got {arr.ndim}D")
    vol = sitk.GetImageFromArray(arr.astype(np.int16))
    geometry.apply_to(vol)
    dm = geometry.direction_matrix
    iop = "\\".join(f"{v:.10g}" for v in (*dm[:, 0], *dm[:, 1]))
    sx, sy, sz = geometry.spacing
    series_uid = series_uid or _uid()
    common = {
        "0008|0060": "CT",
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|103e": series_description,
        "0020|000e": series_uid,
        "0020|000d": _uid(),
        "0020|0052": _uid(),
        "0010|0010": "TEST^PHANTOM",
        "0010|0020": "TEST0001",
        "0020|0037": iop,
        "0028|0030": f"{sy:.10g}\\{sx:.10g}",
        "0018|0050": f"{sz:.10g}",
        "0028|1052": "0",
        "0028|1053": "1",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    out = []
    for k in range(arr.shape[0]):
        sl = vol[:, :, k]
        for key, val in common.items():
            sl.SetMetaData(key, val)
        pos = vol.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", _uid())
        f = d / f"{prefix}{k:04d}.dcm"
        writer.SetFileName(str(f))
        writer.Execute(sl)
        out.append(f)
    return out
