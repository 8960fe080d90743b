"""Outlines of model samples for the "all samples as contours" view (Qt-free)."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_contours"]


def sample_contours(samples: np.ndarray) -> np.ndarray:
    """Outlines of n binary samples (n, ...) in one label image: sample i's in-plane boundary = i + 1
    (later samples win where outlines cross)."""
    from scipy import ndimage as ndi

    out = np.zeros(samples.shape[1:], np.uint16 if len(samples) > 254 else np.uint8)
    st = np.zeros((3,) * (samples.ndim - 1), bool)
    c = (1,) * (samples.ndim - 1)
    st[c] = True
    for ax in (-1, -2):  # in-plane 4-neighbourhood
        for d in (0, 2):
            idx = list(c)
            idx[ax] = d
            st[tuple(idx)] = True
    for i, m in enumerate(samples.astype(bool)):
        edge = m & ~ndi.binary_erosion(m, st, border_value=0)
        out[edge] = i + 1
    return out
