"""Training module of napari-multirater: models, losses, metrics, training and evaluation (no Qt)."""

__version__ = "0.1.0"
