"""File > Open on an LIDC-IDRI reading: the CT, one outlined Labels layer per reading session
(``mr rater: reader1`` ...), and the small nodules (< 3 mm, points in the XML) as a points layer.

Outlines: napari's Labels has no ``contour`` argument, so the rater layers carry
``metadata["multirater_contour"]`` and a hook on the viewer's layer list applies it on insertion.
"""

from __future__ import annotations

import weakref

import numpy as np

from .layers import ROLE_KEY, case_layer_data, layer_name, rater_color

CONTOUR_KEY = "multirater_contour"
POINTS_NAME = layer_name("small nodules (<3 mm)")
_hooked: weakref.WeakSet = weakref.WeakSet()


def _apply_contour(event) -> None:
    layer = event.value
    width = (getattr(layer, "metadata", None) or {}).get(CONTOUR_KEY)
    if width and hasattr(layer, "contour"):
        layer.contour = int(width)


def ensure_contour_hook(viewer) -> None:
    """Outline every Labels layer later inserted with ``metadata[CONTOUR_KEY]`` (once per viewer)."""
    layers = viewer.layers
    if layers in _hooked:
        return
    layers.events.inserted.connect(_apply_contour)
    _hooked.add(layers)


def _hex_rgba(color: str) -> list[float]:
    return [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)] + [1.0]


def lidc_layer_data(case, info: dict, contour: int = 1) -> list[tuple]:
    """Layer tuples: image, one outlined Labels per reader, the small-nodule points (if any)."""
    layers = case_layer_data(case)
    reader_ids = case.meta.get("reader_ids", {})
    for data, kw, kind in layers[1:]:
        rater = kw["metadata"]["rater"]
        kw["metadata"].update(
            {
                CONTOUR_KEY: contour,
                "reader_id": reader_ids.get(rater, ""),
                "provenance": {"kind": "imported", "source": "LIDC-IDRI reader XML"},
            }
        )
        kw["opacity"] = 1.0
    points = info.get("small_nodule_points") or []
    if points:
        img_kw = {k: v for k, v in layers[0][1].items() if k in ("scale", "translate", "rotate", "units")}
        order = list(case.rater_names)
        coords = np.array([p[1:] for p in points], float)
        readers = [p[0] for p in points]
        colors = np.array([_hex_rgba(rater_color(order.index(r))) for r in readers])
        layers.append(
            (
                coords,
                {
                    **img_kw,
                    "name": POINTS_NAME,
                    "size": 12,
                    "symbol": "ring",
                    "face_color": colors,
                    "border_width": 0,
                    "features": {"reader": readers},
                    "metadata": {
                        ROLE_KEY: "points",
                        "case_id": case.case_id,
                        "note": "LIDC nodules under 3 mm: one point per reader, not rasterised",
                    },
                },
                "points",
            )
        )
    return layers


def read_lidc(path) -> list[tuple]:
    """napari reader function for an LIDC reading (folder or XML)."""
    from ..datasets.lidc_folder import find_lidc, load_lidc_case

    if isinstance(path, list):
        path = path[0]
    found = find_lidc(path)
    if found is None:  # get_reader checked; the folder changed since
        raise ValueError(f"{path}: no LIDC reader XML with its DICOM series found")
    case, info = load_lidc_case(*found)
    try:
        import napari
        from napari.utils.notifications import show_info, show_warning

        viewer = napari.current_viewer()
        if viewer is not None:
            ensure_contour_hook(viewer)
        if info.get("warning"):
            show_warning(info["warning"])
        show_info(summary_line(case, info))
    except ImportError:
        pass
    return lidc_layer_data(case, info)


def summary_line(case, info: dict) -> str:
    """One line: readers, nodules, small nodules, skipped rois."""
    nod = sum(info["nodule_counts"].values())
    small = len(info.get("small_nodule_points") or [])
    return (
        f"{case.case_id}: {info['n_sessions']} reading sessions ({', '.join(case.rater_names)}), "
        f"{nod} nodule outlines >= 3 mm, {small} small nodules as points, "
        f"{info['skipped_rois']} contours on slices not in the series skipped"
    )
