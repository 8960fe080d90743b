"""Thin napari controller: readers/writers, sample data, layer naming/reuse and workers."""
