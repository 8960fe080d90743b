"""Validation of an LIDC reader XML before its contours become masks (see :mod:`.lidc_xml`).

* the series: the one whose SeriesInstanceUID the XML names, else the one holding the XML's
  contour slices (SOP UIDs); contours are never pasted onto another series;
* reading sessions: a session repeated with identical content is one reader (warning), and at
  most :data:`MAX_SESSIONS` distinct ones are accepted;
* coordinates: every edgeMap coordinate must be a finite number.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import SimpleITK as sitk

from ..io.dicom_series import series_sop_uids
from ..io.medical import _series_ids
from .case import DatasetError

MAX_SESSIONS = 16  # LIDC readings have up to 4 reading sessions; more is a damaged or crafted file


def xml_series_uid(root: ET.Element, ns: str) -> str | None:
    """The SeriesInstanceUid the XML's header names, None when it names none."""
    return next((t.text.strip() for t in root.iter(f"{ns}SeriesInstanceUid") if t.text and t.text.strip()), None)


def choose_series(root: ET.Element, ns: str, xml_path: Path, dicom_dir) -> tuple[str | None, str | None]:
    """``(series uid to load, warning)`` for the XML's contours in ``dicom_dir``.

    The series the XML names when the folder has it; else the series holding most of the XML's
    contour slices (imageSOP_UID), with a warning; else, with a single series and no series named
    by the XML, that one (None: the reader's choice). DatasetError when the XML's series is not
    in the folder and none of its contour slices is either, or the choice is ambiguous.
    """
    ids = _series_ids(dicom_dir)
    named = xml_series_uid(root, ns)
    if named is not None and named in ids:
        return named, None
    if not ids:
        return None, None  # the reader says what is wrong with the folder
    files = {u: tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir), u)) for u in ids}
    if named is None and len(ids) == 1:
        return ids[0], None
    wanted = {t.text.strip() for t in root.iter(f"{ns}imageSOP_UID") if t.text and t.text.strip()}
    hits = {u: len(wanted & sops) for u, sops in series_sop_uids(files).items()}
    best = max(hits, key=lambda u: hits[u])
    have = ", ".join(f"{u} ({len(files[u])} slices)" for u in ids)
    if hits[best] == 0 or sum(h == hits[best] for h in hits.values()) > 1:
        what = f"names series {named}, which is not in {dicom_dir}" if named else "names no series"
        raise DatasetError(
            f"{xml_path}: the XML {what}, and none of the folder's series ({have}) holds its contour "
            "slices unambiguously; the contours would land on another scan: pass the series the XML was read on"
        )
    if named is None:
        return best, None
    return best, (
        f"XML series {named} is not in the folder; loaded series {best}, which holds {hits[best]} of the "
        f"XML's {len(wanted)} contour slices (SOP UIDs)"
    )


def _canonical(el: ET.Element) -> tuple:
    """An element's content without layout whitespace (tag, attributes, text, children)."""
    return (el.tag, tuple(sorted(el.attrib.items())), (el.text or "").strip(), tuple(_canonical(c) for c in el))


def unique_sessions(sessions: list[ET.Element], xml_path: Path) -> tuple[list[ET.Element], str | None]:
    """``(sessions, warning)``: repeated sessions with identical content kept once (in first order);
    DatasetError when more than :data:`MAX_SESSIONS` distinct sessions remain."""
    first: dict[tuple, int] = {}
    kept: list[ET.Element] = []
    repeats: list[str] = []
    for k, sess in enumerate(sessions, start=1):
        key = _canonical(sess)
        if key in first:
            repeats.append(f"{k}={first[key]}")
            continue
        first[key] = k
        kept.append(sess)
    if len(kept) > MAX_SESSIONS:
        raise DatasetError(
            f"{xml_path}: {len(kept)} distinct reading sessions; at most {MAX_SESSIONS} are accepted "
            "(an LIDC reading has up to 4): damaged or not an LIDC reader XML"
        )
    if not repeats:
        return kept, None
    shown = ", ".join(repeats[:5]) + (" ..." if len(repeats) > 5 else "")
    return kept, (
        f"{len(repeats)} reading session(s) repeat an earlier one with identical content and were counted "
        f"once (session=first: {shown}); {len(kept)} readers kept"
    )


def finite_coords(edges: list[ET.Element], ns: str, xml_path: Path, reader: str) -> list[tuple[float, float]]:
    """``[(y, x), ...]`` of ``edgeMap`` elements; DatasetError for a missing, malformed or
    non-finite (nan, inf) coordinate."""
    pts = []
    for e in edges:
        y, x = e.findtext(f"{ns}yCoord"), e.findtext(f"{ns}xCoord")
        try:
            pt = (float((y or "").strip()), float((x or "").strip()))
        except ValueError as err:
            raise DatasetError(f"{xml_path}: reader {reader}: malformed edgeMap coordinate ({err})") from None
        if not (math.isfinite(pt[0]) and math.isfinite(pt[1])):
            raise DatasetError(f"{xml_path}: reader {reader}: non-finite edgeMap coordinate (x={x}, y={y})")
        pts.append(pt)
    return pts
