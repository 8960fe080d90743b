"""Layer conventions: fixed prefixed names, per-rater colours, geometry copied from the image layer.

Derived layers (rater masks, samples, personas, uncertainty, consensus) copy scale/translate/
rotate/shear/affine/units and the geometry metadata from their image layer, are found again by
name and reused instead of duplicated (:func:`upsert_layer`, region-aware), and model edits to
existing Labels go through the undo history.
"""

from __future__ import annotations

import numpy as np

from ..datasets.case import MultiRaterCase
from ..io.geometry import METADATA_KEY

PREFIX = "mr"
ROLE_KEY = "multirater_role"
RATER_COLORS = (
    "#e6194b",  # red
    "#3cb44b",  # green
    "#4363d8",  # blue
    "#ffe119",  # yellow
    "#f58231",  # orange
    "#911eb4",  # purple
    "#42d4f4",  # cyan
    "#f032e6",  # magenta
)
TRANSFORM_KEYS = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")


def rater_color(k: int) -> str:
    return RATER_COLORS[k % len(RATER_COLORS)]


# model personas: other hues than the raters' first four, drawn as thicker outlines (people: thin)
PERSONA_COLORS = ("#f032e6", "#42d4f4", "#ffffff", "#f58231", "#bfef45", "#fabed4")
RATER_CONTOUR = 1
MODEL_CONTOUR = 2


def persona_color(k: int) -> str:
    return PERSONA_COLORS[k % len(PERSONA_COLORS)]


def binary_colormap(color: str) -> dict:
    """A direct colormap for a binary Labels layer: 1 -> color, background transparent."""
    return {None: "transparent", 0: "transparent", 1: color}


def layer_name(kind: str, detail: str = "") -> str:
    """Fixed, prefixed layer names: ``mr rater: tight``, ``mr samples``..."""
    return f"{PREFIX} {kind}: {detail}" if detail else f"{PREFIX} {kind}"


def transform_kwargs(image_layer) -> dict:
    """Geometry of an image layer as layer kwargs (scale, translate, rotate, ..., units)."""
    kw = {}
    for key in TRANSFORM_KEYS:
        value = getattr(image_layer, key, None)
        if value is None:
            continue
        if key == "affine":
            value = np.asarray(value.affine_matrix)
        kw[key] = value
    geo = image_layer.metadata.get(METADATA_KEY)
    kw["metadata"] = {METADATA_KEY: geo} if geo else {}
    if "source_path" in image_layer.metadata:
        kw["metadata"]["source_path"] = image_layer.metadata["source_path"]
    return kw


def case_layer_data(case: MultiRaterCase, contour: bool = False) -> list[tuple]:
    """Layer data tuples for a case: the image, then one binary Labels layer per valid rater."""
    geo_kw = case.geometry.layer_kwargs(case.meta.get("image_path"))
    image_meta = dict(geo_kw["metadata"])
    image_meta.update({ROLE_KEY: "image", "case_id": case.case_id})
    img_kw = {k: v for k, v in geo_kw.items() if k != "metadata"}
    lo, hi = display_window(case.image)
    layers = [
        (
            case.image,
            {**img_kw, "name": case.case_id, "metadata": image_meta, "contrast_limits": (lo, hi), "colormap": "gray"},
            "image",
        )
    ]
    for k, rater in enumerate(case.rater_names):
        if not case.valid[k]:
            continue
        meta = dict(geo_kw["metadata"])
        meta.update({ROLE_KEY: "rater", "rater": rater, "case_id": case.case_id, "multirater_contour": RATER_CONTOUR})
        if rater in case.meta.get("sidecars", {}):
            meta["sidecar"] = case.meta["sidecars"][rater]
        kw = {
            **img_kw,
            "name": layer_name("rater", rater),
            "metadata": meta,
            "colormap": binary_colormap(rater_color(k)),
            "opacity": 0.7,
        }
        layers.append((case.masks[k].astype(np.uint8), kw, "labels"))
    return layers


def display_window(image: np.ndarray) -> tuple[float, float]:
    """A CT-friendly display window: lung window for HU data, else the 1-99.5 percentiles."""
    lo, hi = float(np.min(image)), float(np.max(image))
    if lo < -500 and hi > 0:
        return (-1000.0, 400.0)
    p1, p99 = np.percentile(image, [1, 99.5])
    return (float(p1), float(p99) if p99 > p1 else float(p1) + 1.0)


def rater_layers(viewer, case_id: str | None = None) -> list:
    """Labels layers created for raters (optionally of one case), in viewer order."""
    out = []
    for layer in viewer.layers:
        md = getattr(layer, "metadata", {}) or {}
        if md.get(ROLE_KEY) == "rater" and (case_id is None or md.get("case_id") == case_id):
            out.append(layer)
    return out


def upsert_layer(
    viewer, name: str, data, layer_type: str, like=None, *, region=None, shape=None, undo: bool = True, **kwargs
):
    """Create the layer ``name`` or reuse it (a fixed ``mr ...`` name is never duplicated).

    ``data`` is the whole layer; or, with ``region`` (a tuple of slices) and ``shape``, what goes
    into that region of a layer of ``shape`` (zeros elsewhere when the layer is created). A reused
    layer of that shape keeps everything outside the region: Labels are edited through the undo
    history (``undo=False``: written directly, for live previews), Images get the region replaced.
    A reused layer of another shape gets the new data (it is created again when the number of
    dimensions changed). Geometry (scale, translate, rotate, shear, affine, units, axis labels and
    the geometry metadata) is copied from ``like``: an image layer, or the :func:`transform_kwargs`
    of one captured earlier. ``metadata`` is merged into the layer's; other ``kwargs`` (colormap,
    opacity, contrast limits...) apply when the layer is created.
    """
    kw = (dict(like) if isinstance(like, dict) else transform_kwargs(like)) if like is not None else {}
    kw["metadata"] = {**kw.get("metadata", {}), **kwargs.pop("metadata", {})}
    kw.update(kwargs)
    if region is None:
        shape, region = np.shape(data), None
    shape = tuple(int(n) for n in shape)
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and tuple(layer.data.shape) == shape:
        full = region or tuple(slice(0, n) for n in shape)
        if layer_type == "labels" and undo:
            write_labels_region(layer, full, data)
        elif region is None and layer_type != "labels":
            layer.data = data
        else:
            layer.data[full] = data
            layer.refresh()
        sync_layer(layer, kw)
        return layer
    if region is None:
        full_data = data
    else:
        arr = np.asarray(data)
        dtype = (arr.dtype if arr.dtype.kind in "iu" else np.uint8) if layer_type == "labels" else np.float32
        full_data = np.zeros(shape, dtype)
        full_data[tuple(region)] = arr
    if layer is not None:
        if layer.ndim == len(shape):  # another grid: new data, not undoable
            layer.data = full_data
            sync_layer(layer, kw)
            return layer
        viewer.layers.remove(layer)
    adder = {"labels": viewer.add_labels, "image": viewer.add_image}[layer_type]
    return adder(full_data, name=name, **kw)


SYNC_KEYS = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")


def unit_name(unit) -> str:
    """``"mm"``, ``"millimeter"`` and pint's Unit('millimeter') all -> ``"millimeter"``."""
    import pint

    try:
        return str(pint.get_application_registry().Unit(str(unit)))
    except (ValueError, TypeError, AttributeError, pint.errors.PintError):
        return str(unit)


def _current(layer, key):
    value = getattr(layer, key)
    if key == "affine":
        return np.asarray(value.affine_matrix, float)
    if key == "units":
        return tuple(unit_name(v) for v in value)
    if key == "axis_labels":
        return tuple(str(v) for v in value)
    return np.asarray(value, float)


def sync_layer(layer, kw: dict) -> None:
    """Keep a reused layer on its image's grid: set every transform in ``kw`` (scale, translate,
    rotate, shear, affine, units, axis labels, as from :func:`transform_kwargs`) that differs from
    the layer's, then merge ``kw["metadata"]`` into its metadata."""
    for key in SYNC_KEYS:
        if key not in kw or kw[key] is None:
            continue
        cur = _current(layer, key)
        if key in ("units", "axis_labels"):
            new = tuple((unit_name if key == "units" else str)(v) for v in kw[key])
            if cur != new:
                setattr(layer, key, tuple(str(v) for v in kw[key]))
            continue
        new = np.asarray(kw[key], float)
        if key == "shear" and new.ndim == 2 and cur.ndim == 1:
            new = new[np.triu_indices(new.shape[0], 1)]
        if cur.shape != new.shape or not np.allclose(cur, new):
            setattr(layer, key, kw[key])
    layer.metadata.update(kw.get("metadata", {}))


def layer_in_viewer(viewer, layer) -> bool:
    """Whether ``layer`` (proxied or not) is still one of the viewer's layers."""
    return layer is not None and any(same_layer(ly, layer) for ly in viewer.layers)


def write_labels_region(layer, region, arr) -> int:
    """Write ``arr`` into ``layer.data[region]`` (a tuple of slices) through the Labels layer's
    undo history, only where it changes anything; returns the number of voxels changed."""
    sl = tuple(slice(s.start or 0, s.stop) for s in region)
    cur = np.asarray(layer.data[sl])
    arr = np.asarray(arr).astype(cur.dtype, copy=False)
    changed = np.nonzero(cur != arr)
    if changed[0].size:
        layer.data_setitem(tuple(c + s.start for c, s in zip(changed, sl)), arr[changed])
    return int(changed[0].size)


def set_labels_undoable(layer, new: np.ndarray) -> int:
    """Write ``new`` (the whole layer) into a Labels layer through its undo history."""
    return write_labels_region(layer, tuple(slice(0, n) for n in layer.data.shape), new)


def unwrap_layer(layer):
    """The layer behind napari's ``PublicOnlyProxy`` (plugin docks get proxied viewers, so the
    same layer may arrive as different proxy objects)."""
    return getattr(layer, "__wrapped__", layer)


def same_layer(a, b) -> bool:
    """Identity of two layers, proxied or not."""
    return a is not None and b is not None and unwrap_layer(a) is unwrap_layer(b)
