"""STAPLE consensus (Warfield et al. 2004) via SimpleITK, with missing/degenerate raters handled.

STAPLE runs on the bounding box of the union of the valid masks padded by ``margin`` voxels (fast
on large volumes). ITK's STAPLE uses the mean foreground fraction of the inputs as its prior, so
the crop, and with it the margin, slightly influences borderline voxels and the specificities,
which are estimated within that box. The consensus is ``probability >= 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .overlap import crop_box

__all__ = ["StapleResult", "staple"]


@dataclass
class StapleResult:
    """probability float32 (*shape); consensus uint8 (*shape); sensitivity/specificity (K,) with
    NaN for raters not used; used bool (K,) = valid raters that entered STAPLE."""

    probability: np.ndarray
    consensus: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    used: np.ndarray
    iterations: int = 0
    note: str = ""


def staple(
    masks: np.ndarray,
    valid: Sequence[bool] | None = None,
    margin: int = 5,
    max_iterations: int = 200,
    confidence_weight: float = 1.0,
) -> StapleResult:
    """STAPLE consensus of the valid rater masks (K, *shape).

    Degenerate inputs: no valid rater or all valid masks empty -> empty consensus, NaN
    sensitivity/specificity and a note; one valid rater -> consensus = that rater, NaN
    performance (not estimable from one rater).
    """
    masks = np.asarray(masks) != 0
    k, shape = masks.shape[0], masks.shape[1:]
    valid = np.ones(k, bool) if valid is None else np.asarray(valid, bool)
    used = valid.copy()
    sens, spec = np.full(k, np.nan), np.full(k, np.nan)
    prob = np.zeros(shape, np.float32)
    idx = np.flatnonzero(used)
    if idx.size == 0:
        return StapleResult(prob, prob.astype(np.uint8), sens, spec, used, note="no valid rater")
    box = crop_box(masks[idx].any(axis=0), margin)
    if box is None:
        return StapleResult(prob, prob.astype(np.uint8), sens, spec, used, note="all valid raters empty")
    if idx.size == 1:
        prob[:] = masks[idx[0]]
        return StapleResult(
            prob, masks[idx[0]].astype(np.uint8), sens, spec, used, note="single valid rater: consensus is that rater"
        )
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1)
    f.SetMaximumIterations(int(max_iterations))
    f.SetConfidenceWeight(float(confidence_weight))
    images = [sitk.GetImageFromArray(np.ascontiguousarray(masks[i][box], dtype=np.uint8)) for i in idx]
    p = sitk.GetArrayFromImage(f.Execute(images)).astype(np.float32)
    prob[box] = np.nan_to_num(p, nan=0.0)
    sens[idx] = f.GetSensitivity()
    spec[idx] = f.GetSpecificity()
    return StapleResult(prob, (prob >= 0.5).astype(np.uint8), sens, spec, used, int(f.GetElapsedIterations()))
