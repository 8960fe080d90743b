"""napari-multirater: multi-rater segmentation in napari (diversity, personas, uncertainty, rater analysis)."""

__version__ = "0.1.0"
