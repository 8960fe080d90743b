"""Qt dock widgets (thin views over the controllers in ``napari_multirater._napari``)."""
