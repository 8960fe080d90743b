"""Training module of napari-multirater: models, losses, metrics, training and evaluation (no Qt)."""

from napari_multirater import __version__  # the one version string (pyproject reads it too)

__all__ = ["__version__"]
