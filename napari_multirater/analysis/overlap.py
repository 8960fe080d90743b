"""Pairwise overlap / surface-distance metrics and simple vote maps on binary rater masks.

All functions take numpy masks in array order ((y, x) or (z, y, x)) and ``spacing_zyx`` in the
same order (mm); SimpleITK images are built with the spacing reversed to its (x, y, z) order.

Conventions (used everywhere in :mod:`napari_multirater.analysis`):

* both masks empty  -> Dice 1, IoU 1, HD/HD95/ASSD 0 (perfect agreement that "there is nothing");
* exactly one empty -> Dice 0, IoU 0, distances NaN (undefined: no surface to measure to);
* missing rater (``valid`` False) -> its row and column are NaN and it is listed in ``missing``;
* surface distances (mm) are the symmetric surface-to-surface definitions of MONAI
  (``compute_hausdorff_distance``, ``compute_average_surface_distance(symmetric=True)``): the surface
  of a mask is its voxels with a face neighbour outside it (ITK ``LabelContour``, face connectivity);
  every surface voxel of A gets its Euclidean distance (physical spacing) to the nearest surface
  voxel of B, and every surface voxel of B its distance to A's surface. **HD** is the largest of
  all those distances, **HD95** the larger of the two directed 95th percentiles, **ASSD** (average
  symmetric surface distance) the mean over all of them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

__all__ = [
    "dice",
    "jaccard",
    "to_sitk",
    "contour",
    "signed_distance",
    "SurfaceDistances",
    "surface_distances",
    "pairwise_overlap",
    "agreement_map",
    "majority_vote",
]


# --- small helpers ------------------------------------------------------------------------------
def to_sitk(mask: np.ndarray, spacing_zyx: Sequence[float]) -> sitk.Image:
    """uint8 SimpleITK image of ``mask`` with spacing given in array (z, y, x) order."""
    mask = np.asarray(mask)
    if len(spacing_zyx) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing_zyx)} does not match mask ndim {mask.ndim}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask != 0, dtype=np.uint8))
    img.SetSpacing([float(s) for s in reversed(tuple(spacing_zyx))])
    return img


def crop_box(any_mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of the non-zero voxels padded by ``margin`` voxels (None when empty)."""
    idx = np.nonzero(any_mask)
    if idx[0].size == 0:
        return None
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n)) for i, n in zip(idx, any_mask.shape)
    )


def contour(mask: np.ndarray) -> np.ndarray:
    """Boolean inner contour of a binary mask (ITK ``LabelContour``, face connectivity)."""
    return sitk.GetArrayFromImage(sitk.LabelContour(to_sitk(mask, (1.0,) * mask.ndim))) > 0


def signed_distance(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Signed Maurer distance (mm) to the mask's inner contour voxels: 0 on the contour,
    positive outside, negative inside. Undefined (all inf) for an empty mask."""
    img = to_sitk(mask, spacing_zyx)
    d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(d).astype(np.float64)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (1 when both empty)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (1 when both empty)."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    u = int(np.logical_or(a, b).sum())
    return 1.0 if u == 0 else int(np.logical_and(a, b).sum()) / u


@dataclass(frozen=True)
class SurfaceDistances:
    """Symmetric surface distances (mm) between two masks; see the module docstring."""

    hausdorff_mm: float
    hd95_mm: float
    assd_mm: float


def surface_distances(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float]) -> SurfaceDistances:
    """HD, HD95 and ASSD (mm) between the surfaces of two binary masks.

    Both empty -> all 0; one empty -> all NaN. Computed on the union's bounding box padded by one
    background voxel, which holds both surfaces and so changes no distance.
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    ea, eb = not a.any(), not b.any()
    if ea and eb:
        return SurfaceDistances(0.0, 0.0, 0.0)
    if ea or eb:
        return SurfaceDistances(float("nan"), float("nan"), float("nan"))
    box = crop_box(a | b, 0)
    a, b = np.pad(a[box], 1), np.pad(b[box], 1)
    sa, sb = contour(a), contour(b)
    spacing = [float(v) for v in spacing_zyx]
    d_ab = ndi.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = ndi.distance_transform_edt(~sa, sampling=spacing)[sb]
    hd95 = max(float(np.percentile(d_ab, 95)), float(np.percentile(d_ba, 95)))
    assd = float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))
    return SurfaceDistances(float(max(d_ab.max(), d_ba.max())), hd95, assd)


# --- pairwise -----------------------------------------------------------------------------------
DISTANCE_KEYS = ("hausdorff_mm", "hd95_mm", "assd_mm")  # the fields of SurfaceDistances


def distance_values(d: SurfaceDistances) -> dict[str, float]:
    """``{"hausdorff_mm", "hd95_mm", "assd_mm"}`` of ``d`` (the keys of tables, CSVs and rows)."""
    return {key: getattr(d, key) for key in DISTANCE_KEYS}


def pairwise_overlap(
    masks: np.ndarray,
    valid: Sequence[bool] | None,
    spacing_zyx: Sequence[float],
    names: Sequence[str] | None = None,
    distances: bool = True,
) -> dict:
    """K x K agreement matrices between rater masks (K, *shape).

    Returns ``{"names", "dice", "iou", "hausdorff_mm", "hd95_mm", "assd_mm", "missing", "empty"}``;
    matrices are float (K, K), symmetric, diagonal = a rater against itself. ``missing`` and
    ``empty`` list rater names. See the module docstring for the empty/missing conventions.
    ``distances=False`` skips the (slower) surface metrics, leaving them NaN.
    """
    masks = np.asarray(masks) != 0
    k = masks.shape[0]
    valid = np.ones(k, bool) if valid is None else np.asarray(valid, bool)
    names = [f"rater{i}" for i in range(k)] if names is None else list(names)
    if len(names) != k or valid.shape != (k,):
        raise ValueError(f"{k} masks but {len(names)} names / valid shape {valid.shape}")
    out = {key: np.full((k, k), np.nan) for key in ("dice", "iou", *DISTANCE_KEYS)}
    for i in range(k):
        for j in range(i, k):
            if not (valid[i] and valid[j]):
                continue
            vals = {"dice": dice(masks[i], masks[j]), "iou": jaccard(masks[i], masks[j])}
            if i == j:
                vals.update(dict.fromkeys(DISTANCE_KEYS, 0.0))
            elif distances:
                vals.update(distance_values(surface_distances(masks[i], masks[j], spacing_zyx)))
            for key, v in vals.items():
                out[key][i, j] = out[key][j, i] = v
    out["names"] = names
    out["missing"] = [n for n, v in zip(names, valid) if not v]
    out["empty"] = [n for n, v, m in zip(names, valid, masks) if v and not m.any()]
    return out


# --- vote maps ----------------------------------------------------------------------------------
def agreement_map(masks: np.ndarray, valid: Sequence[bool] | None = None) -> np.ndarray:
    """uint8 map: how many valid raters marked each voxel."""
    masks = np.asarray(masks) != 0
    valid = np.ones(masks.shape[0], bool) if valid is None else np.asarray(valid, bool)
    return masks[valid].sum(axis=0, dtype=np.int64).astype(np.uint8)


def majority_vote(masks: np.ndarray, valid: Sequence[bool] | None = None, threshold: float = 0.5) -> np.ndarray:
    """uint8 consensus: voxels marked by strictly more than ``threshold`` x (number of valid raters).

    With the default 0.5 a tie (e.g. 2 of 4 raters) is background. No valid rater -> all zero.
    """
    masks = np.asarray(masks) != 0
    valid = np.ones(masks.shape[0], bool) if valid is None else np.asarray(valid, bool)
    n = int(valid.sum())
    if n == 0:
        return np.zeros(masks.shape[1:], np.uint8)
    return (agreement_map(masks, valid).astype(np.float64) > threshold * n).astype(np.uint8)
