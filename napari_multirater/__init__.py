"""napari-multirater: multi-rater segmentation in napari (diversity, personas, uncertainty, rater analysis)."""

__version__ = "0.2.0"
