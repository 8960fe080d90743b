"""napari reader contribution: medical images, DICOM series folders, case folders and LIDC readings
(a DICOM series with its reader XML, the XML itself, or the patient folder)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..datasets.lidc_folder import find_lidc
from ..io.medical import SUPPORTED_SUFFIXES, is_dicom_dir, is_supported_file, read_image
from .layers import ROLE_KEY, binary_colormap, display_window, rater_color
from .lidc_reader import read_lidc

MAX_LABEL_VALUES = 32


def get_reader(path):
    """Return a reader callable for ``path`` or None (never raises)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = Path(path)
        if p.is_dir():
            if (p / "case.json").is_file() or (p / "raters").is_dir():
                return read_case_folder
            if find_lidc(p) is not None:
                return read_lidc
            if is_dicom_dir(p):
                return read_medical
            return _series_inside(p)
        if p.suffix.lower() == ".xml":
            return read_lidc if find_lidc(p) is not None else None
        return read_medical if is_supported_file(p) else None
    except Exception:  # noqa: BLE001 - get_reader must not raise: napari then offers other readers
        return None


MAX_SCANNED_DIRS = 200


def _dicom_subdirs(folder: Path, depth: int = 2) -> list[Path]:
    """DICOM series folders below ``folder`` (up to ``depth`` levels, at most MAX_SCANNED_DIRS looked at)."""
    found, todo, seen = [], [(folder, 0)], 0
    while todo and seen < MAX_SCANNED_DIRS:
        d, level = todo.pop(0)
        for sub in sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith(".")):
            seen += 1
            if is_dicom_dir(sub):
                found.append(sub)
            elif level + 1 < depth:
                todo.append((sub, level + 1))
    return found


def _series_inside(folder: Path):
    """A patient / study folder with the series one or two levels down: read the one series, or
    say which folders to open when there are several (instead of a bare refusal)."""
    subs = _dicom_subdirs(folder)
    if not subs:
        return None
    if len(subs) == 1:
        return lambda path: read_medical(subs[0])

    def refuse(path):
        names = ", ".join(str(s.relative_to(folder)) for s in subs[:8])
        raise ValueError(
            f"{folder} holds {len(subs)} DICOM series ({names}{', ...' if len(subs) > 8 else ''}): "
            "open one of these folders (File > Open Folder)"
        )

    return refuse


def _looks_like_labels(array: np.ndarray) -> bool:
    if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        return False
    if array.min() < 0 or array.max() > 255:
        return False
    return np.unique(array).size <= MAX_LABEL_VALUES


def _next_mask_index(name: str) -> int:
    """The colour index of the next mask file opened: one more than the masks already in the viewer
    (each rater's file gets its own colour), else from the name."""
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:
        viewer = None
    if viewer is None:
        return zlib.crc32(name.encode())
    return sum((ly.metadata or {}).get(ROLE_KEY) == "labels" for ly in viewer.layers)


def read_medical(path) -> list[tuple]:
    """Read one image file or DICOM folder into a napari layer (labels if it looks like a mask)."""
    if isinstance(path, list):
        path = path[0]
    array, geometry, info = read_image(path)
    kw = geometry.layer_kwargs(str(path))
    name = Path(path).name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):  # .nii.gz before .nii
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    kw["name"] = name
    kw["metadata"].update({k: v for k, v in info.items() if isinstance(v, (str, int, float))})
    if info.get("warning"):
        from napari.utils.notifications import show_warning

        show_warning(info["warning"])
    if _looks_like_labels(array):
        kw["metadata"][ROLE_KEY] = "labels"
        if array.max() <= 1:  # a rater's binary mask: a thin outline in a colour of its own
            from .lidc_reader import CONTOUR_KEY
            from .sample_data import _outline_raters

            _outline_raters()
            kw["metadata"][CONTOUR_KEY] = 1
            kw["colormap"] = binary_colormap(rater_color(_next_mask_index(name)))
        return [(array, kw, "labels")]
    kw["contrast_limits"] = display_window(array)
    kw["colormap"] = "gray"
    return [(array, kw, "image")]


def read_case_folder(path) -> list[tuple]:
    """Open one case folder of a multi-rater dataset: image plus one Labels layer per rater."""
    from ..datasets.case_folder import CaseFolderDataset
    from .layers import case_layer_data

    if isinstance(path, list):
        path = path[0]
    case_dir = Path(path)
    from .sample_data import _outline_raters

    _outline_raters()  # rater masks as outlines
    dataset = CaseFolderDataset(case_dir.parent.parent, strict=False)
    case = dataset.load_case(case_dir.name)  # broken rater files are left out, with a warning
    if case.meta.get("problems"):
        from napari.utils.notifications import show_warning

        show_warning(f"case {case.case_id}: " + "; ".join(case.meta["problems"]))
    return case_layer_data(case)
