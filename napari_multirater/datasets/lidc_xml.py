"""Import LIDC-IDRI reader XML (one mask per reading session) onto its DICOM CT series.

Each ``readingSession`` becomes one rater (``reader1..readerK`` in file order). For every
``unblindedReadNodule`` and every ``roi``, the ``edgeMap`` polygon (xCoord = column, yCoord = row,
0-based pixel indices) is rasterised on the slice whose SOPInstanceUID equals ``imageSOP_UID``
(fallback: the slice whose z lies within half a slice spacing of ``imageZposition``). The LIDC
documentation defines an roi as "a complete contour of the nodule that describes the first voxel just
outside the nodule", so by default the nodule is the polygon's interior without the edge-map pixels
(as pylidc's ``Annotation.boolean_mask()``; voxel for voxel the same on LIDC-IDRI-0006).
``include_contour=True`` adds the edge-map outline (polygon + perimeter: the rule of earlier versions
and of the shared ``lidc-3d-crops``; each nodule one voxel ring larger).
``inclusion`` FALSE rois are holes: their ``skimage.draw.polygon`` fill (no outline) is cleared
from that nodule on that slice (other nodules are untouched).
Nodules under 3 mm are a single point per roi: skipped by default (``mark_points=True`` marks the
pixel) and counted in ``info["small_nodules"]``; their positions on this series are listed in
``info["small_nodule_points"]`` (``[reader, slice, row, col]``, for a points layer). ``nonNodule`` entries are ignored (counted).
ROIs on slices that are not in the folder are skipped and counted in ``info["skipped_rois"]``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from skimage.draw import line, polygon

from ..io.geometry import Geometry
from ..io.medical import MedicalIOError, read_image
from .case import DatasetError
from .lidc_xml_checks import choose_series, finite_coords, unique_sessions


def _ns(root: ET.Element) -> str:
    return root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def _rasterise(rows, cols, shape, include_contour: bool) -> np.ndarray:
    """The polygon's fill without its closed outline (LIDC convention), or with it when
    ``include_contour`` (outline = the pixels of skimage ``polygon_perimeter``, without its
    matplotlib clipping); 1-2 point rois give just their pixels/segment in either rule."""
    m = np.zeros(shape, dtype=bool)
    if len(rows) >= 3:
        m[polygon(rows, cols, shape)] = True
    on = include_contour or len(rows) < 3
    r, c = np.rint(rows).astype(int), np.rint(cols).astype(int)
    for i in range(len(r)):
        j = (i + 1) % len(r)
        lr, lc = line(r[i], c[i], r[j], c[j])
        ok = (lr >= 0) & (lr < shape[0]) & (lc >= 0) & (lc < shape[1])
        m[lr[ok], lc[ok]] = on
    return m


def import_lidc_xml(
    xml_path, dicom_dir, *, mark_points: bool = False, include_contour: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str], Geometry, dict]:
    """Return ``(image int16 HU (z, y, x), masks uint8 (K, z, y, x), rater_names, geometry, info)``.

    info: ``xml_path``, ``series_uid``, ``n_sessions``, per reader ``nodules`` (>= 3 mm nodules in
    the XML), ``nodules_in_series`` (with at least one roi drawn), ``small_nodules``,
    ``non_nodules``, ``rois_drawn``; totals ``skipped_rois``, ``z_fallback_rois``; ``warning`` if any.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DatasetError(f"{xml_path}: cannot parse LIDC XML: {e}") from e
    ns = _ns(root)
    sessions = list(root.iter(f"{ns}readingSession"))
    if not sessions:
        raise DatasetError(f"{xml_path}: no readingSession elements (not an LIDC reader XML?)")
    sessions, repeat_warning = unique_sessions(sessions, xml_path)
    series_uid, series_warning = choose_series(root, ns, xml_path, dicom_dir)
    try:
        image, geom, dinfo = read_image(dicom_dir, series_uid=series_uid)
    except MedicalIOError as e:
        raise DatasetError(str(e)) from e
    if image.ndim != 3 or dinfo.get("format") != "dicom":
        raise DatasetError(f"{dicom_dir}: expected a DICOM series directory")
    if image.dtype != np.int16:
        if image.min() < -32768 or image.max() > 32767:
            raise DatasetError(f"{dicom_dir}: intensities do not fit int16 HU")
        image = image.astype(np.int16)

    nz = image.shape[0]
    slice_of_uid = {u: k for k, u in enumerate(dinfo["sop_uids"]) if u}
    zs = np.array([geom.index_to_physical((k, 0, 0))[0] for k in range(nz)])
    half = 0.5 * geom.spacing[2] * abs(geom.direction_matrix[2, 2]) + 1e-3

    def text(el, tag, default=""):
        t = el.findtext(f"{ns}{tag}")
        return t.strip() if t is not None else default

    def find_slice(roi) -> tuple[int | None, bool]:
        k = slice_of_uid.get(text(roi, "imageSOP_UID"))
        if k is not None:
            return k, False
        try:
            z = float(text(roi, "imageZposition"))
        except ValueError:
            return None, False
        k = int(np.argmin(np.abs(zs - z)))
        return (k, True) if abs(zs[k] - z) <= half else (None, False)

    masks = np.zeros((len(sessions), *image.shape), dtype=np.uint8)
    names = [f"reader{i + 1}" for i in range(len(sessions))]
    per_reader: dict[str, dict] = {}
    points: list[list] = []  # [reader, slice, row, col] of each small nodule (point) on this series
    skipped = fallback = 0
    for i, (name, sess) in enumerate(zip(names, sessions, strict=True)):
        st = {
            "radiologist_id": text(sess, "servicingRadiologistID"),
            "nodules": 0,
            "nodules_in_series": 0,
            "small_nodules": 0,
            "non_nodules": len(sess.findall(f"{ns}nonNodule")),
            "rois_drawn": 0,
        }
        for nod in sess.findall(f"{ns}unblindedReadNodule"):
            rois = nod.findall(f"{ns}roi")
            small = all(len(r.findall(f"{ns}edgeMap")) <= 1 for r in rois)
            st["small_nodules" if small else "nodules"] += 1
            if small:  # where the point is: (slice, row, col) per roi on a slice of this series
                for roi in rois:
                    edge = roi.find(f"{ns}edgeMap")
                    k = find_slice(roi)[0] if edge is not None else None
                    if k is not None:
                        points.append([name, k, *finite_coords([edge], ns, xml_path, name)[0]])
            if small and not mark_points:
                continue
            nodule = {}  # slice index -> 2D mask of this nodule
            holes = []
            for roi in rois:
                edges = roi.findall(f"{ns}edgeMap")
                pts = finite_coords(edges, ns, xml_path, name)
                if not pts:
                    continue
                k, fell_back = find_slice(roi)
                if k is None:
                    skipped += 1
                    continue
                fallback += fell_back
                rr, cc = np.array(pts).T
                if text(roi, "inclusion", "TRUE").upper() == "FALSE":
                    holes.append((k, rr, cc))
                    continue
                nodule[k] = nodule.get(k, False) | _rasterise(rr, cc, image.shape[1:], include_contour)
                st["rois_drawn"] += 1
            for k, rr, cc in holes:  # exclusions clear the interior only
                if k in nodule and len(rr) >= 3:
                    nodule[k][polygon(rr, cc, image.shape[1:])] = False
            for k, m in nodule.items():
                masks[i, k][m] = 1
            st["nodules_in_series"] += bool(nodule) and not small
        per_reader[name] = st

    info: dict = {
        "xml_path": str(xml_path),
        "dicom_dir": str(dicom_dir),
        "series_uid": dinfo.get("series_uid"),
        "n_sessions": len(sessions),
        "readers": per_reader,
        "nodule_counts": {n: s["nodules"] for n, s in per_reader.items()},
        "small_nodules": {n: s["small_nodules"] for n, s in per_reader.items()},
        "skipped_rois": skipped,
        "z_fallback_rois": fallback,
        "small_nodule_policy": "marked as single pixels" if mark_points else "skipped",
        "outline_rule": "contour included (inclusive)" if include_contour else "contour excluded (LIDC)",
        "small_nodule_points": points,
    }
    warnings = [w for w in (dinfo.get("warning"), series_warning, repeat_warning) if w]
    if warnings:
        info["warning"] = "; ".join(warnings)
    return image, masks, names, geom, info
