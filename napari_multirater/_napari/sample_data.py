"""napari sample data: synthetic phantom cases with their simulated raters (no download)."""

from __future__ import annotations

from ..datasets.phantom import make_phantom_case
from .layers import case_layer_data


def phantom_2d() -> list[tuple]:
    """A 2D CT-like phantom with four simulated rater annotations."""
    return case_layer_data(make_phantom_case(1, seed=0, ndim=2))


def phantom_3d() -> list[tuple]:
    """A 3D CT-like phantom volume with four simulated rater annotations."""
    return case_layer_data(make_phantom_case(1, seed=0, ndim=3))
