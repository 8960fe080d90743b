"""An LIDC-IDRI reading from a path: find the reader XML and its DICOM series, load it as a case.

Accepted paths (what File > Open and ``multirater import lidc`` receive):

* a folder holding the DICOM series and the reader XML (the TCIA download layout);
* the reader XML itself, with its series in the same folder or in a sub-folder;
* a patient folder whose sub-folders (up to three levels down) hold the XML and the series.

Where several series are candidates, the one whose SeriesInstanceUID the XML names wins.
One reading session = one rater ``reader1..readerK`` (XML order); the anonymised
``servicingRadiologistID`` of each session is kept in the case meta and the sidecars.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..io.geometry import Geometry
from ..io.medical import _series_ids, is_dicom_dir
from .case import DatasetError, MultiRaterCase
from .lidc_xml import import_lidc_xml

MAX_DEPTH = 3
MIN_CROP_PIXELS = 3  # a nodule crop spans at least this many pixels along each slice axis
MAX_DIRS = 500  # folders looked at when searching (File > Open must answer fast)
_SERIES_RE = re.compile(rb"<SeriesInstanceUid>\s*([0-9.]+)\s*</SeriesInstanceUid>", re.IGNORECASE)


def _head(path: Path, n: int = 8192) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def is_lidc_xml(path) -> bool:
    """Whether ``path`` is an LIDC reader XML (``LidcReadMessage`` root, checked on its first bytes)."""
    p = Path(path)
    return p.suffix.lower() == ".xml" and p.is_file() and b"LidcReadMessage" in _head(p)


def xml_series_uid(path) -> str | None:
    m = _SERIES_RE.search(_head(Path(path), 65536))
    return m.group(1).decode() if m else None


def _subdirs(folder: Path, depth: int) -> list[Path]:
    """``folder`` and its sub-folders down to ``depth`` levels, breadth first (hidden ones skipped)."""
    out, level = [folder], [folder]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                nxt += sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
            except OSError:
                continue
        out += nxt
        level = nxt
        if len(out) > MAX_DIRS:
            return out[:MAX_DIRS]
    return out


def _has_files(folder: Path) -> bool:
    """Any file other than XML (spares GDCM a search, and its warnings, in folders of folders)."""
    try:
        return any(f.is_file() and f.suffix.lower() != ".xml" for f in folder.iterdir())
    except OSError:
        return False


def series_for_xml(xml) -> Path | None:
    """The DICOM folder of an LIDC XML: its own folder or a sub-folder, preferring the series the
    XML names; None when there is none."""
    xml = Path(xml)
    want = xml_series_uid(xml)
    found = []
    for d in _subdirs(xml.parent, 2):
        if _has_files(d) and is_dicom_dir(d):
            if want is None or want in _series_ids(d):
                return d
            found.append(d)
    return found[0] if found else None


def find_lidc_all(path) -> list[tuple[Path, Path]]:
    """Every ``(xml, dicom_dir)`` reading at ``path`` (an XML file or a folder searched down to
    three levels); readings of the same series counted once."""
    p = Path(path)
    if p.is_file():
        series = series_for_xml(p) if is_lidc_xml(p) else None
        return [(p, series)] if series is not None else []
    if not p.is_dir():
        return []
    found, seen = [], set()
    for d in _subdirs(p, MAX_DEPTH):
        try:
            xmls = sorted(f for f in d.iterdir() if f.suffix.lower() == ".xml" and is_lidc_xml(f))
        except OSError:
            continue
        for xml in xmls:
            uid = xml_series_uid(xml) or str(xml)
            if uid in seen:
                continue
            series = series_for_xml(xml)
            if series is not None:
                seen.add(uid)
                found.append((xml, series))
    return found


def find_lidc(path) -> tuple[Path, Path] | None:
    """``(xml, dicom_dir)`` when ``path`` holds exactly one LIDC reading (see the module doc);
    None when it holds none or several (a folder of patients is not one reading)."""
    found = find_lidc_all(path)
    return found[0] if len(found) == 1 else None


def _patient_id(dicom_dir, series_uid: str | None, fallback: str) -> str:
    """PatientID (0010,0020) of the series' first file, else ``fallback``."""
    import SimpleITK as sitk

    try:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir), series_uid or "")
        r = sitk.ImageFileReader()
        r.SetFileName(files[0])
        r.ReadImageInformation()
        pid = r.GetMetaData("0010|0020").strip() if r.HasMetaDataKey("0010|0020") else ""
    except (RuntimeError, IndexError):
        pid = ""
    return pid or fallback


def load_lidc_case(xml, dicom_dir, *, include_contour: bool = False) -> tuple[MultiRaterCase, dict]:
    """The CT series with one mask per reading session, as a case; and the importer's info
    (nodule counts, small nodule points, reader ids). ``include_contour``: see
    :func:`import_lidc_xml` (default: the LIDC convention, outline excluded). DatasetError when unusable."""
    from ..annotation.store import case_id_from_path

    image, masks, names, geom, info = import_lidc_xml(xml, dicom_dir, include_contour=include_contour)
    patient = _patient_id(dicom_dir, info.get("series_uid"), Path(dicom_dir).resolve().parent.name)
    case_id = case_id_from_path(patient)
    meta = {
        "patient_id": patient,
        "source": "LIDC-IDRI reader XML",
        "xml_path": str(xml),
        "dicom_dir": str(dicom_dir),
        "series_uid": info.get("series_uid") or "",
        "reader_ids": {n: info["readers"][n]["radiologist_id"] for n in names},
        "outline_rule": info["outline_rule"],
    }
    case = MultiRaterCase(case_id, image, masks, np.ones(len(names), bool), names, geom, meta)
    return case, info


def check_crop_size(size_mm: float, spacing_zyx, shape) -> None:
    """DatasetError when a ``size_mm`` box spans fewer than :data:`MIN_CROP_PIXELS` pixels along a
    slice axis that has that many (a 1x1x1 "crop" holds no nodule). Along z one slice is enough
    (thick slices)."""
    spacing = np.asarray(spacing_zyx, float)[-2:]
    usable = np.asarray(shape)[-2:] >= MIN_CROP_PIXELS
    need = MIN_CROP_PIXELS * spacing[usable]
    if need.size and size_mm < need.max():
        raise DatasetError(
            f"--crop-mm {size_mm:g} is under {MIN_CROP_PIXELS} pixels across the slice (pixel spacing "
            f"{' x '.join(f'{v:.3g}' for v in spacing)} mm): use at least {need.max():.3g} mm"
        )


def crop_nodules(case: MultiRaterCase, size_mm: float) -> tuple[list[MultiRaterCase], list[str]]:
    """One case per nodule: a box of ``size_mm`` (each axis, clipped to the image) centred on each
    connected region of the readers' union. Returns the crops and notes (nodules larger than the box)."""
    from scipy import ndimage

    if not (np.isfinite(size_mm) and size_mm > 0):
        raise DatasetError(f"--crop-mm must be a positive size in mm, got {size_mm}")
    spacing = np.asarray(case.geometry.scale_zyx)
    check_crop_size(size_mm, spacing, case.image.shape)
    union = case.masks.any(axis=0)
    labels, n = ndimage.label(union, structure=np.ones((3,) * union.ndim))
    box = np.minimum(np.maximum(np.rint(size_mm / spacing).astype(int), 1), case.image.shape)
    crops, notes = [], []
    for j, sl in enumerate(ndimage.find_objects(labels), start=1):
        centre = np.array([(s.start + s.stop) // 2 for s in sl])
        start = np.clip(centre - box // 2, 0, np.asarray(case.image.shape) - box)
        window = tuple(slice(a, a + b) for a, b in zip(start, box, strict=True))
        extent = np.array([s.stop - s.start for s in sl])
        if np.any(extent > box):
            notes.append(f"nodule {j} ({'x'.join(map(str, extent))} voxels) is larger than the {size_mm:g} mm box")
        origin = case.geometry.index_to_physical(start)[::-1]
        geom = Geometry(case.geometry.spacing, tuple(float(v) for v in origin), case.geometry.direction)
        meta = {
            **case.meta,
            "patient_id": case.patient_id,
            "nodule": j,
            "crop_start_zyx": start.tolist(),
            "crop_mm": float(size_mm),
        }
        crops.append(
            MultiRaterCase(
                f"{case.case_id}_nodule{j:02d}",
                case.image[window].copy(),
                case.masks[(slice(None), *window)].copy(),
                case.valid.copy(),
                list(case.rater_names),
                geom,
                meta,
            )
        )
    return crops, notes
