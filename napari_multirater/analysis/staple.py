"""STAPLE consensus (Warfield et al. 2004) on the whole image, with missing/degenerate raters handled.

The EM runs on the distinct rater-vote patterns of the image, weighted by how many voxels show each
pattern (every voxel outside all masks is one pattern), so it is the whole-image STAPLE of ITK's
``STAPLEImageFilter`` (same initialisation: the prior is the mean foreground fraction of the
inputs over the *whole image*, times ``confidence_weight``; sensitivities/specificities start from
the mean vote; same convergence test) at the cost of the masks' union, not of the image. The result
depends only on the masks and the image size, as in ITK, never on a crop: a caller that passes a
crop gives the whole image's voxel count as ``image_voxels``. The consensus is ``probability >= 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["StapleResult", "staple"]

_CONVERGED = 1e-14  # ITK's test: no squared change of a sensitivity/specificity above this (NaN stops too)


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


def _staple_em(
    votes: np.ndarray, counts: np.ndarray, n_voxels: int, max_iterations: int, confidence_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """EM on vote patterns ``votes`` (U, n) bool, each seen ``counts`` (U,) times: returns
    (probability per pattern, sensitivities, specificities, iterations)."""
    d = votes.astype(np.float64)
    c = counts.astype(np.float64)
    w = d.mean(axis=1)
    g = float(c @ w) / n_voxels * confidence_weight
    last_p = last_q = None
    it = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        for it in range(max_iterations):
            cw, cv = c * w, c * (1.0 - w)
            p = (cw @ d) / cw.sum()
            q = (cv @ (1.0 - d)) / cv.sum()
            a = np.where(votes, p, 1.0 - p).prod(axis=1)
            b = np.where(votes, 1.0 - q, q).prod(axis=1)
            w = g * a / (g * a + (1.0 - g) * b)
            if last_p is not None and not (
                np.any((p - last_p) ** 2 > _CONVERGED) or np.any((q - last_q) ** 2 > _CONVERGED)
            ):
                break
            last_p, last_q = p, q
        else:
            it = max_iterations
    return w, p, q, it


def staple(
    masks: np.ndarray,
    valid: Sequence[bool] | None = None,
    max_iterations: int = 200,
    confidence_weight: float = 1.0,
    image_voxels: int | None = None,
) -> StapleResult:
    """STAPLE consensus of the valid rater masks (K, *shape) on the whole image.

    ``image_voxels``: when the masks are a crop of a larger image that nobody marked outside the
    crop, that image's voxel count (the result is then the whole image's, restricted to the crop).

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
    flat = masks[idx].reshape(idx.size, -1)
    union = flat.any(axis=0)
    if not union.any():
        return StapleResult(prob, prob.astype(np.uint8), sens, spec, used, note="all valid raters empty")
    if idx.size == 1:
        prob[:] = masks[idx[0]]
        return StapleResult(
            prob, masks[idx[0]].astype(np.uint8), sens, spec, used, note="single valid rater: consensus is that rater"
        )
    votes, inverse, counts = np.unique(flat[:, union].T, axis=0, return_inverse=True, return_counts=True)
    n_voxels = flat.shape[1] if image_voxels is None else int(image_voxels)
    if n_voxels < flat.shape[1]:
        raise ValueError(f"image_voxels {n_voxels} is smaller than the masks ({flat.shape[1]} voxels)")
    n_out = n_voxels - int(union.sum())  # voxels no rater marked: the all-zero pattern
    if n_out:
        votes = np.vstack([votes, np.zeros((1, idx.size), bool)])
        counts = np.append(counts, n_out)
    w, p, q, it = _staple_em(votes, counts, n_voxels, int(max_iterations), float(confidence_weight))
    w = np.nan_to_num(w, nan=0.0).astype(np.float32)
    out = prob.reshape(-1)
    out[:] = w[-1] if n_out else 0.0
    out[union] = w[inverse.reshape(-1)]
    sens[idx], spec[idx] = p, q
    return StapleResult(prob, (prob >= 0.5).astype(np.uint8), sens, spec, used, it)
