"""Thin napari controller: readers/writers, sample data, layer naming/reuse and the job runner."""
