"""napari sample data: synthetic phantom cases with their simulated raters (no download)."""

from __future__ import annotations

from ..datasets.phantom import make_phantom_case
from .layers import case_layer_data


def _outline_raters() -> None:
    """Raters are drawn as outlines (``metadata["multirater_contour"]``) once inserted."""
    try:
        import napari

        from .lidc_reader import ensure_contour_hook

        viewer = napari.current_viewer()
        if viewer is not None:
            ensure_contour_hook(viewer)
    except ImportError:
        pass


def phantom_2d() -> list[tuple]:
    """A 2D CT-like phantom with four simulated rater annotations."""
    _outline_raters()
    return case_layer_data(make_phantom_case(1, seed=0, ndim=2))


def phantom_3d() -> list[tuple]:
    """A 3D CT-like phantom volume with four simulated rater annotations."""
    _outline_raters()
    return case_layer_data(make_phantom_case(1, seed=0, ndim=3))
