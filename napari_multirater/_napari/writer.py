"""napari writer contribution: Labels layers to .nii.gz/.nrrd/.mha with the source geometry."""

from __future__ import annotations

from ..io.geometry import geometry_from_layer
from ..io.medical import write_image


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write one Labels layer, restoring spacing/origin/direction from its metadata."""
    geometry = geometry_from_layer(meta.get("scale"), meta.get("translate"), meta.get("metadata"), meta.get("rotate"))
    if geometry.ndim != data.ndim:
        raise ValueError(
            f"cannot write {path}: layer has {data.ndim} dimensions but its geometry has {geometry.ndim}"
        )
    return [str(write_image(path, data, geometry, label=True))]
