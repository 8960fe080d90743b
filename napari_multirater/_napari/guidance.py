"""What the docks tell a user about their inputs before anything runs (no Qt widgets): which layers
can be used, why others cannot, and whether an image has physical spacing at all."""

from __future__ import annotations

import numpy as np

from ..io.geometry import METADATA_KEY
from .layers import ROLE_KEY, unit_name

REOPEN_HINT = (
    "reopen it with File > Open (or File > Open Folder for a DICOM series) and pick the "
    "napari-multirater reader, or from the console: viewer.open(path, plugin='napari-multirater')"
)
OPEN_HINT = (
    "open a 2D or 3D grey-value image: File > Open (a NIfTI / NRRD / MHA file), File > Open Folder "
    "(a DICOM series) or File > Open Sample > Multi-rater segmentation"
)


def is_grey_image(layer) -> bool:
    return layer.__class__.__name__ == "Image" and not getattr(layer, "rgb", False) and layer.ndim in (2, 3)


def is_source_image(layer) -> bool:
    """An image a user works on: a plain grey 2D/3D image or an annotation project's case image
    (``mr image: ...``), never a model output (``mr mean probability``, ``mr uncertainty: ...``)."""
    if not is_grey_image(layer):
        return False
    return not layer.name.startswith("mr ") or (layer.metadata or {}).get(ROLE_KEY) == "image"


def spacing_known(layer) -> bool:
    """False for a layer from a plain reader: no geometry metadata, scale all 1, pixel units."""
    if layer is None:
        return True
    md = layer.metadata or {}
    return (
        METADATA_KEY in md
        or any(unit_name(u) != "pixel" for u in layer.units)
        or not np.allclose(np.asarray(layer.scale, float), 1.0)
    )


def plain_dicom(layer) -> bool:
    """A 3D layer napari's own reader made from DICOM files: no spacing, and its slices in file-name
    order, not in patient order (scrambled for most series)."""
    if layer is None or layer.ndim != 3 or spacing_known(layer):
        return False
    path = str(getattr(getattr(layer, "source", None), "path", None) or "")
    if not path:
        return False
    from pathlib import Path

    p = Path(path)
    return p.suffix.lower() == ".dcm" or (p.is_dir() and any(p.glob("*.dcm")))


def spacing_warning(layer) -> str | None:
    """One sentence when ``layer`` has no physical spacing (mm sizes and model resolution are then guesses)."""
    if layer is None or spacing_known(layer):
        return None
    order = (
        " Its slices are also in file-name order, not in patient order (a scrambled stack), so do not "
        "annotate or run a model on it."
        if plain_dicom(layer)
        else ""
    )
    return (
        f"{layer.name!r} has no physical spacing (scale 1, no geometry: a plain reader opened it), so "
        f"sizes in mm are pixels and the model runs at the image's own pixel size.{order} To fix this, {REOPEN_HINT}."
    )


def unsupported_images(viewer) -> list[str]:
    """``'name' (RGB)`` / ``'name' (4D)`` for Image layers the docks cannot use."""
    out = []
    for ly in viewer.layers:
        if ly.__class__.__name__ != "Image" or ly.name.startswith("mr "):
            continue
        if getattr(ly, "rgb", False):
            out.append(f"{ly.name!r} (RGB colour)")
        elif ly.ndim not in (2, 3):
            out.append(f"{ly.name!r} ({ly.ndim}D)")
    return out


def missing_image_hint(viewer, what: str = "image") -> str:
    """What to do when no usable image is open, naming the layers that were refused and why."""
    bad = unsupported_images(viewer)
    text = f"No {what} to work on: {OPEN_HINT}."
    if bad:
        text += (
            f" Not usable: {', '.join(bad)}: only single-channel 2D or 3D images are supported "
            "(split colour channels or pick one time point / channel first)."
        )
    return text


GENERIC_NAMES = {"series", "dicom", "image", "images", "ct", "scan", "data", "volume", "img"}


def case_identity(name: str, metadata: dict | None) -> tuple[str, str | None]:
    """``(case id, patient id or None)`` for a new annotation case from an image layer: the case id a
    reader recorded (LIDC reading, case folder), else the DICOM PatientID plus the end of the
    SeriesInstanceUID (two series of one patient stay apart, two patients never share an id), else
    the layer name. The store still appends ``_2``... if the id exists in the project."""
    from ..annotation.store import case_id_from_path

    md = metadata or {}
    patient = str(md.get("patient_id") or "").strip() or None
    if md.get("case_id"):
        return case_id_from_path(str(md["case_id"])), patient or case_id_from_path(str(md["case_id"]))
    uid = str(md.get("series_uid") or "").strip()
    if patient and uid:
        return case_id_from_path(f"{patient}_series{uid.split('.')[-1][-6:]}"), case_id_from_path(patient)
    if patient:
        return case_id_from_path(patient), case_id_from_path(patient)
    if uid and name.strip().lower() in GENERIC_NAMES:
        return case_id_from_path(f"series{uid.split('.')[-1][-6:]}"), None
    return case_id_from_path(name), None
