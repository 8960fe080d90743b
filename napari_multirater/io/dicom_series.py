"""Checks on a DICOM series before its slices are trusted as one box of voxels.

* which series of a folder (the one asked for, else the largest, said in a warning);
* the same SOPInstanceUID twice (a copied file): identical copies are dropped with a warning,
  differing ones refused;
* gantry tilt: slice positions that step off the normal of ImageOrientationPatient shear the
  volume, which a (spacing, direction) geometry cannot hold: refused, naming the tilt.

Pure module (SimpleITK headers and numpy only); :mod:`.medical` calls it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


class DicomSeriesError(ValueError):
    """The series cannot be loaded as one box of voxels; the message says why (one line)."""


def choose_series(path: Path, files: dict[str, tuple[str, ...]], wanted: str | None) -> tuple[str, str | None]:
    """``(series uid, warning)``: ``wanted`` when given (DicomSeriesError when the folder lacks
    it), else the largest series (ties: first), with a warning naming the others."""
    sizes = ", ".join(f"{u} ({len(f)} slices)" for u, f in files.items())
    if wanted is not None:
        if wanted not in files:
            raise DicomSeriesError(f"{path}: no DICOM series {wanted} in this folder (it has {sizes})")
        return wanted, None
    uid = max(files, key=lambda u: len(files[u]))
    if len(files) == 1:
        return uid, None
    others = ", ".join(f"{u} ({len(f)} slices)" for u, f in files.items() if u != uid)
    return (
        uid,
        f"folder has {len(files)} DICOM series; loaded the largest (UID {uid}, {len(files[uid])} slices); others: {others}",
    )


def series_sop_uids(files: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """SOPInstanceUID (0008,0018) of every file of every series, read from the headers only."""
    out: dict[str, set[str]] = {}
    reader = sitk.ImageFileReader()
    for uid, names in files.items():
        sops = out.setdefault(uid, set())
        for name in names:
            reader.SetFileName(name)
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                continue
            if reader.HasMetaDataKey("0008|0018"):
                sops.add(reader.GetMetaData("0008|0018").strip())
    return out


def positions(ipp: list[str]) -> np.ndarray | None:
    """ImagePositionPatient strings as an (n, 3) array; None when any is missing or malformed."""
    try:
        pos = np.array([[float(v) for v in p.split("\\")] for p in ipp])
    except ValueError:
        return None
    return pos if pos.ndim == 2 and pos.shape[1] == 3 and np.isfinite(pos).all() else None


def duplicate_sops(
    names: list[str], sops: list[str], pos: np.ndarray | None, voxels: np.ndarray, normal: np.ndarray
) -> tuple[list[str], list[str]]:
    """``(files to keep, files dropped)``: a file whose SOPInstanceUID an earlier file has is
    dropped when its pixels and position are the same; DicomSeriesError when they differ.
    ``voxels`` is the (z, y, x) series as read from ``names`` (one z per file). With copies
    present GDCM's order is not to be trusted: the kept files come back sorted along ``normal``.
    """
    first: dict[str, int] = {}
    dropped: list[int] = []
    for k, sop in enumerate(sops):
        if not sop:
            continue
        j = first.setdefault(sop, k)
        if j == k:
            continue
        same_place = pos is None or np.allclose(pos[j], pos[k], atol=1e-3)
        if not (same_place and np.array_equal(voxels[j], voxels[k])):
            raise DicomSeriesError(
                f"{names[k]} and {names[j]} have the same SOPInstanceUID {sop} but different "
                f"{'pixels' if same_place else 'positions'}: remove the wrong copy"
            )
        dropped.append(k)
    kept = [k for k in range(len(names)) if k not in dropped]
    if dropped and pos is not None:
        kept.sort(key=lambda k: float(pos[k] @ normal))
    return [names[k] for k in kept], [names[k] for k in dropped]


def slice_normal(iop: str, direction) -> np.ndarray:
    """Unit normal of ImageOrientationPatient (row x column); the direction's third column when
    the tag is missing or malformed."""
    try:
        v = np.array([float(x) for x in iop.split("\\")])
        n = np.cross(v[:3], v[3:6]) if v.shape == (6,) else np.zeros(3)
    except ValueError:
        n = np.zeros(3)
    norm = np.linalg.norm(n)
    return n / norm if np.isfinite(norm) and norm > 1e-6 else np.asarray(direction, float).reshape(3, 3)[:, 2]


def check_no_tilt(path: Path, pos: np.ndarray, normal: np.ndarray, spacing) -> None:
    """Refuse slices that step off ``normal`` (gantry tilt / shear) by more than half an in-plane
    pixel over the series: read as a box, the far slices would be misplaced."""
    offsets = pos - pos[0]
    along = offsets @ normal
    shear = offsets - np.outer(along, normal)
    shift = np.linalg.norm(shear, axis=1)
    k = int(np.argmax(shift))
    if shift[k] <= 0.5 * min(spacing[0], spacing[1]):
        return
    angle = float(np.degrees(np.arctan2(shift[k], abs(along[k]))))
    raise DicomSeriesError(
        f"{path}: slices are sheared (gantry tilt {angle:.1f} degrees: the slice positions do not step along "
        f"the normal of ImageOrientationPatient); read as a box, slice {k} would be {shift[k]:.1f} mm off. "
        "Resample the series to an orthogonal grid (tilt correction) first"
    )
