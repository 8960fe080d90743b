"""Reading and writing medical images (NIfTI, NRRD, MetaImage, DICOM) with SimpleITK.

Arrays are returned in SimpleITK's (z, y, x) order exactly as stored (never resampled or
reoriented); spacing/origin/direction travel in a :class:`Geometry`, whose ``layer_kwargs`` show the
array at the right physical (LPS, mm) position in napari. Pure module: no Qt/napari import.
"""

from __future__ import annotations

import gzip
import os
import struct
import uuid
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import dicom_series
from .atomic import WriteError, atomic_write, fsync_dir, fsync_file  # noqa: F401 (re-exported)
from .contained import UnsafePath, is_inside
from .data_files import check_data_files
from .geometry import Geometry

# The one list of file suffixes (case folders, the annotation store and the reader import these).
# Preference order: ``find_file`` picks the first suffix present.
WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")
SUPPORTED_SUFFIXES = (*WRITABLE_SUFFIXES, ".dcm")
SINGLE_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # header and voxels in one file


class MedicalIOError(ValueError):
    """A medical image cannot be read or written; the message names the file and the problem."""


class ImageWriteError(WriteError, MedicalIOError):
    """Writing an image failed (see :class:`~napari_multirater.io.atomic.WriteError`)."""


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
            f"{path}: {img.GetDimension()}D image (size {img.GetSize()}) is not supported; expected a 2D or 3D image"
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


def _gunzip_size(path: Path) -> int:
    """How many bytes a (possibly truncated or multi-member) gzip file decompresses to, counting
    every byte before the damage (``gzip.open().read`` loses the last partial chunk)."""
    n, d = 0, zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            buf = chunk
            while buf:
                try:
                    n += len(d.decompress(buf, 1 << 24))
                except zlib.error:
                    return n
                buf = d.unconsumed_tail
                if d.eof:
                    buf = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        n += len(d.flush())
    except zlib.error:
        pass
    return n


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype code -> numpy float type


def _nifti_nonfinite(path: Path) -> tuple[int, int] | None:
    """``(NaN count, inf count)`` of a float NIfTI file's stored voxels, None when not float.
    ITK's NIfTI reader turns NaN into 0 silently, so they must be counted in the file itself."""
    gz = _suffix(path) == ".nii.gz"
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        header = f.read(540)
        for end in "<>":
            if struct.unpack(end + "i", header[:4])[0] == 348:
                code, offset = (
                    struct.unpack(end + "h", header[70:72])[0],
                    int(struct.unpack(end + "f", header[108:112])[0]),
                )
                break
            if struct.unpack(end + "i", header[:4])[0] == 540:
                code, offset = struct.unpack(end + "h", header[12:14])[0], struct.unpack(end + "q", header[168:176])[0]
                break
        else:
            return None
        if code not in _NIFTI_FLOATS:
            return None
        dt = np.dtype(end + _NIFTI_FLOATS[code])
        f.seek(offset)
        n_nan = n_inf = 0
        while chunk := f.read((1 << 24) // dt.itemsize * dt.itemsize):
            v = np.frombuffer(chunk[: len(chunk) // dt.itemsize * dt.itemsize], dtype=dt)
            n_nan += int(np.count_nonzero(np.isnan(v)))
            n_inf += int(np.count_nonzero(np.isinf(v)))
    return n_nan, n_inf


def nonfinite_message(n_nan: int, n_inf: int, size: int) -> str:
    return (
        f"{n_nan + n_inf} non-finite voxel(s) of {size} ({n_nan} NaN, {n_inf} inf); images with "
        "NaN/inf are refused (they would silently become 0 or poison every result): fill or mask them first"
    )


def _check_finite(arr: np.ndarray, path: Path) -> None:
    """Refuse NaN/inf voxels, whatever the format (NIfTI: counted in the file, see above)."""
    counts = None
    if _suffix(path) in (".nii", ".nii.gz"):
        counts = _nifti_nonfinite(path)
    if counts is None and arr.dtype.kind == "f":
        counts = int(np.count_nonzero(np.isnan(arr))), int(np.count_nonzero(np.isinf(arr)))
    if counts and sum(counts):
        raise MedicalIOError(f"{path}: {nonfinite_message(*counts, arr.size)}")


def _check_nifti_complete(path: Path) -> None:
    """SimpleITK silently zero-fills truncated NIfTI files (.nii and .nii.gz): check the size."""
    gz = _suffix(path) == ".nii.gz"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
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
        size = _gunzip_size(path)  # slow path: every byte that decompresses (multi-member or damaged)
    if size < expected:
        raise MedicalIOError(f"{path}: truncated NIfTI file: {size} of {expected} bytes (header + voxel data) present")


def _read_file(path: Path) -> tuple[sitk.Image, dict]:
    if not is_supported_file(path):
        raise MedicalIOError(f"{path}: unsupported file type; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    if _suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_complete(path)
    try:  # a header's data file (MetaImage, NRRD) must lie in the header's folder
        check_data_files(path)
    except (UnsafePath, OSError) as e:
        raise MedicalIOError(f"{path}: refused: {e}") from None
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise MedicalIOError(f"{path}: cannot read the file (corrupt or truncated?): {_short(e)}") from e
    return img, {"format": _suffix(path)}


def _looks_like_dicom(p: Path) -> bool:
    """A .dcm/.ima file, or one with the DICOM preamble ("DICM" at byte 128)."""
    if p.suffix.lower() in (".dcm", ".ima"):
        return True
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _read_series(path: Path, uid: str, names) -> tuple[sitk.Image, sitk.ImageSeriesReader]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(names))
    reader.MetaDataDictionaryArrayUpdateOn()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's gap warning goes to info["warning"]
    try:
        return reader.Execute(), reader
    except RuntimeError as e:
        raise MedicalIOError(f"{path}: cannot read DICOM series {uid}: {_short(e)}") from e
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _tags(reader: sitk.ImageSeriesReader, key: str, n: int) -> list[str]:
    """DICOM tag ``key`` of the first ``n`` slices ('' where absent)."""
    return [reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else "" for i in range(n)]


def _read_dicom_dir(path: Path, series_uid: str | None = None) -> tuple[sitk.Image, dict]:
    ids = _series_ids(path)
    if not ids:
        n = sum(1 for _ in path.iterdir())
        what = "the directory is empty" if n == 0 else f"no DICOM series among its {n} entries"
        raise MedicalIOError(f"{path}: cannot read the directory: {what}")
    files = {uid: tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid)) for uid in ids}
    # a file whose real path leaves the folder (a symbolic link out) is never read as a slice
    outside = {f for fs in files.values() for f in fs if not is_inside(path, f)}
    linked_out = sorted({Path(f).name for f in outside})
    files = {uid: kept for uid, fs in files.items() if (kept := tuple(f for f in fs if f not in outside))}
    if not files:
        raise MedicalIOError(f"{path}: every DICOM file leads outside the folder (symbolic links); nothing read")
    try:
        uid, choice = dicom_series.choose_series(path, files, series_uid)
        names = list(files[uid])
        img, reader = _read_series(path, uid, names)
        pos = dicom_series.positions(_tags(reader, "0020|0032", len(names)))
        sops = _tags(reader, "0008|0018", len(names))
        normal = dicom_series.slice_normal(_tags(reader, "0020|0037", 1)[0], img.GetDirection())
        names, dropped = dicom_series.duplicate_sops(names, sops, pos, sitk.GetArrayViewFromImage(img), normal)
        if dropped:  # read again without the copies (their slice would sit twice in the volume)
            img, reader = _read_series(path, uid, names)
            pos = dicom_series.positions(_tags(reader, "0020|0032", len(names)))
        if pos is not None and len(names) > 1 and img.GetDimension() == 3:
            dicom_series.check_no_tilt(path, pos, normal, img.GetSpacing())
    except dicom_series.DicomSeriesError as e:
        raise MedicalIOError(str(e)) from None

    def tag(i: int, key: str) -> str:
        return reader.GetMetaData(i, key).strip() if reader.HasMetaDataKey(i, key) else ""

    n = len(names)
    info = {
        "format": "dicom",
        "series_uid": uid,
        "series_description": tag(0, "0008|103e"),
        "modality": tag(0, "0008|0060"),
        "patient_id": tag(0, "0010|0020"),
        "n_slices": n,
        "file_names": names,
        "sop_uids": [tag(i, "0008|0018") for i in range(n)],
    }
    warnings = []
    if linked_out:
        warnings.append(
            f"{len(linked_out)} file(s) leading outside {path} (symbolic links) not read: "
            f"{', '.join(linked_out[:5])}{' ...' if len(linked_out) > 5 else ''}"
        )
    if dropped:
        info["duplicate_files"] = [Path(f).name for f in dropped]
        warnings.append(
            f"{len(dropped)} duplicate file(s) (same SOPInstanceUID and pixels as another slice) ignored: "
            f"{', '.join(info['duplicate_files'][:5])}{' ...' if len(dropped) > 5 else ''}"
        )
    in_series = {Path(f).name for fs in files.values() for f in fs}
    unread = sorted(
        p.name
        for p in path.iterdir()
        if p.is_file()
        and p.name not in in_series
        and p.name not in linked_out
        and not p.name.startswith(".")
        and _looks_like_dicom(p)
    )
    if unread:
        warnings.append(
            f"{len(unread)} file(s) in the folder could not be read as DICOM slices "
            f"(damaged or not DICOM): {', '.join(unread[:5])}{' ...' if len(unread) > 5 else ''}"
        )
        info_unreadable = unread
    else:
        info_unreadable = []
    if choice:
        warnings.append(choice)
    if n > 2 and img.GetDimension() == 3 and pos is not None:
        normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
        gaps = np.diff(pos @ normal)
        if np.ptp(gaps) > 0.01 * abs(img.GetSpacing()[2]) + 1e-3:
            info["nonuniform_spacing"] = True
            info["slice_gaps_mm"] = [round(float(g), 4) for g in (gaps.min(), gaps.max())]
            warnings.append(
                f"non-uniform slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, missing slices?); "
                f"loaded with spacing {img.GetSpacing()[2]:.4g} mm"
            )
    if info_unreadable:
        info["unreadable_files"] = info_unreadable
    if warnings:
        info["warning"] = "; ".join(warnings)
    return img, info


def read_image(
    path, *, allow_nonfinite: bool = False, series_uid: str | None = None
) -> tuple[np.ndarray, Geometry, dict]:
    """Read a 2D/3D image file or a DICOM series directory.

    NaN/inf voxels are refused (:class:`MedicalIOError` with their count) for every format
    unless ``allow_nonfinite`` (then NIfTI NaNs come back as ITK reads them: 0). A DICOM folder
    loads ``series_uid`` when given (MedicalIOError when absent), else its largest series; copies
    of a slice (same SOPInstanceUID) are dropped with a warning, sheared (gantry-tilt) series refused.

    Returns ``(array in (z, y, x) order, Geometry, info)``; info holds ``source_path``, ``format``,
    ``pixel_type``, for DICOM ``series_uid``/``series_description``/``sop_uids`` (per z index), and a
    human ``warning`` when something was chosen for the user. Raises :class:`MedicalIOError`.
    """
    p = Path(path)
    if not p.exists():
        raise MedicalIOError(f"{p}: file not found")
    img, info = _read_dicom_dir(p, series_uid) if p.is_dir() else _read_file(p)
    img = _check_image(img, p)
    arr = sitk.GetArrayFromImage(img)
    if not allow_nonfinite:
        _check_finite(arr, p)
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
                f"{path}: non-integer label values (e.g. {float(arr[bad].flat[0])}); a label image must hold integers"
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


def read_label_image(path, reference: Geometry | None = None, shape=None) -> tuple[np.ndarray, Geometry, dict]:
    """Like :func:`read_image` for a label map: integer values (float files only when every value is
    an integer), cast to uint8/uint16/uint32; checks ``shape`` and ``reference`` geometry if given."""
    arr, geom, info = read_image(path)
    arr = _label_dtype(arr, path, np.iinfo(np.uint32).max)
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise MedicalIOError(f"{path}: shape {tuple(arr.shape)} does not match the image shape {tuple(shape)}")
    if reference is not None:
        diff = reference.mismatch(geom)
        if diff is not None:
            raise MedicalIOError(f"{path}: geometry does not match the image: {diff} (labels vs image)")
    return arr, geom, info


# Images up to this size are read back completely after writing and compared voxel by voxel;
# larger ones get the header + byte-count check only (reading them back costs seconds).
FULL_VERIFY_BYTES = 64 * 2**20


def _verify_written(tmp: Path, arr: np.ndarray) -> None:
    """Raise unless ``tmp`` reads back as ``arr``: header (size, dimension), complete NIfTI byte
    count and, up to :data:`FULL_VERIFY_BYTES`, every voxel."""
    if _suffix(tmp) in (".nii", ".nii.gz"):
        try:
            _check_nifti_complete(tmp)
        except MedicalIOError as e:  # the temporary name means nothing to the user
            raise MedicalIOError(str(e).replace(f"{tmp}: ", "")) from None
    reader = _read_back_header(tmp)
    size = tuple(reader.GetSize())[::-1]
    if size != tuple(arr.shape):
        raise MedicalIOError(f"header says size {size}, expected {tuple(arr.shape)}")
    if arr.nbytes <= FULL_VERIFY_BYTES:
        try:
            back = sitk.GetArrayFromImage(reader.Execute())
        except RuntimeError as e:
            raise MedicalIOError(f"voxels cannot be read back: {_short(e)}") from None
        finite = np.isfinite(arr) if arr.dtype.kind == "f" else None
        if finite is not None and not finite.all():  # ITK reads NIfTI NaN as 0: compare the rest,
            counts = (int(np.isnan(arr).sum()), int(np.isinf(arr).sum()))  # count them in the file
            if _suffix(tmp) in (".nii", ".nii.gz") and _nifti_nonfinite(tmp) != counts:
                raise MedicalIOError("non-finite voxels read back differ from the ones written")
            same = back.shape == arr.shape and np.array_equal(back[finite], arr[finite])
        else:
            same = back.shape == arr.shape and np.array_equal(back, arr)
        if not same:
            raise MedicalIOError("voxels read back differ from the voxels written")


def write_image(path, array, geometry: Geometry, *, label: bool = False, fsync: bool = True) -> Path:
    """Write ``array`` ((z, y, x) or (y, x)) with ``geometry`` to ``path`` (suffix picks the format).

    Labels are checked and cast to uint8 (max <= 255) or uint16 (max <= 65535). Compression is on.
    Written through :func:`~napari_multirater.io.atomic.atomic_write`: into a temporary folder
    beside the target, fsynced, read back and compared (see :func:`_verify_written`), then moved
    in with ``os.replace`` (data file first, header last for .mhd/.nhdr). A failure raises
    :class:`~napari_multirater.io.atomic.WriteError` (a :class:`MedicalIOError` too) naming the
    file and the reason, and leaves the previous file untouched. ``fsync`` is kept for callers;
    files are always flushed to disk.
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix not in WRITABLE_SUFFIXES:
        raise MedicalIOError(f"{p}: cannot write {suffix or 'files without a suffix'}; use one of {WRITABLE_SUFFIXES}")
    arr = np.asarray(array)
    if arr.ndim != geometry.ndim or arr.ndim not in (2, 3):
        raise MedicalIOError(f"{p}: array is {arr.ndim}D but the geometry is {geometry.ndim}D (2D or 3D expected)")
    if label:
        arr = _label_dtype(arr, p, np.iinfo(np.uint16).max)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    arr = np.ascontiguousarray(arr)
    img = sitk.GetImageFromArray(arr)
    geometry.apply_to(img)

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(img, str(tmp), True)
        except RuntimeError as e:
            raise OSError(_short(e)) from None

    return atomic_write(p, write, verify=lambda tmp: _verify_written(tmp, arr), extra_files=True, error=ImageWriteError)


def _read_back_header(tmp: Path) -> sitk.ImageFileReader:
    """A reader holding ``tmp``'s header; :class:`MedicalIOError` when it cannot be read back."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise MedicalIOError(f"header cannot be read back: {_short(e)}") from None
    return reader


def _verify_dicom_slice(tmp: Path) -> None:
    _read_back_header(tmp)


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

        def write(tmp: Path, sl=sl) -> None:
            writer.SetFileName(str(tmp))
            try:
                writer.Execute(sl)
            except RuntimeError as e:
                raise OSError(_short(e)) from None

        atomic_write(f, write, verify=_verify_dicom_slice, suffix=".dcm", error=ImageWriteError)
        out.append(f)
    return out
