"""napari writer contribution: Labels layers to .nii.gz/.nrrd/.mha with the source geometry."""

from __future__ import annotations

from ..io.geometry import geometry_from_layer
from ..io.medical import write_image


def _report(message: str) -> None:
    # napari turns a writer's ValueError into "not a valid writer": say what went wrong first
    from napari.utils.notifications import show_error

    show_error(message)


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write one Labels layer, restoring spacing/origin/direction from its metadata, else from its
    full transform (scale, translate, rotate, shear and ``affine``: layers opened by other readers
    keep their geometry there). A transform with shear cannot be stored and raises ValueError."""
    try:
        geometry = geometry_from_layer(
            meta.get("scale"),
            meta.get("translate"),
            meta.get("metadata"),
            meta.get("rotate"),
            shear=meta.get("shear"),
            affine=meta.get("affine"),
        )
        if geometry.ndim != data.ndim:
            raise ValueError(f"layer has {data.ndim} dimensions but its geometry has {geometry.ndim}")
        return [str(write_image(path, data, geometry, label=True))]
    except ValueError as e:
        _report(f"cannot write {path}: {e}")
        raise
