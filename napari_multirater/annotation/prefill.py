"""What a pre-fill copies from a model output (pure numpy/scipy): the lesion at the clicked point,
not every mark the model made on the series, and a plain summary of what was written."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PrefillPick", "describe_slices", "pick_lesion"]


@dataclass(frozen=True)
class PrefillPick:
    """The mask to copy and what it is: ``components`` marks in the source, ``kept`` of them copied;
    ``distance_mm`` from the point to the copied lesion (0: the point is on it; None: no point)."""

    mask: np.ndarray
    components: int
    kept: int
    distance_mm: float | None

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    def summary(self) -> str:
        """e.g. ``412 voxels on slices 18-21: the lesion at the ROI point (2 other marks not copied)``."""
        where = describe_slices(self.mask)
        if self.distance_mm is None and self.components <= 1:
            what = "the source's only mark"
        elif self.distance_mm is None:
            what = f"all {self.components} marks of the source (no ROI point, or 'all marks' chosen)"
        elif self.kept == 0:
            what = "nothing: the source marks nothing"
        else:
            near = "at the ROI point" if self.distance_mm == 0 else f"{self.distance_mm:.0f} mm from the ROI point"
            rest = self.components - self.kept
            what = f"the lesion {near}" + (f" ({rest} other mark(s) not copied)" if rest else "")
        return f"{self.voxels} voxel(s){where}: {what}"


def describe_slices(mask: np.ndarray) -> str:
    """`` on slices 5-8, 16`` (data indices) for a 3D mask, ``""`` for 2D or empty masks."""
    if mask.ndim != 3 or not mask.any():
        return ""
    z = np.nonzero(mask.reshape(mask.shape[0], -1).any(1))[0].tolist()
    runs, start = [], z[0]
    for a, b in zip(z, z[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return f" on slice{'s' if len(z) > 1 else ''} {', '.join(runs)}"


def pick_lesion(source: np.ndarray, index=None, spacing=None, everything: bool = False) -> PrefillPick:
    """The connected mark of ``source`` (nonzero = marked; 26-/8-connected) at voxel ``index``, or
    the one nearest to it (``spacing`` in mm per axis for the distance); every mark when
    ``everything`` or when there is no ``index``."""
    from scipy import ndimage as ndi

    marked = np.asarray(source) != 0
    labels, n = ndi.label(marked, structure=np.ones((3,) * marked.ndim, bool))
    if everything or index is None or n == 0:
        return PrefillPick(marked.astype(np.uint8), n, n, None if index is None or everything else 0.0)
    idx = tuple(int(np.clip(round(float(i)), 0, s - 1)) for i, s in zip(index, marked.shape))
    sp = np.ones(marked.ndim) if spacing is None else np.abs(np.asarray(spacing, float))
    if labels[idx]:
        label, dist = labels[idx], 0.0
    else:
        dist_map, nearest = ndi.distance_transform_edt(~marked, sampling=sp, return_indices=True)
        label = labels[tuple(nearest[(slice(None), *idx)])]
        dist = float(dist_map[idx])
    return PrefillPick((labels == label).astype(np.uint8), n, 1, dist)
