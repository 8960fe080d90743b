"""Medical image I/O: geometry-preserving readers/writers for NIfTI, NRRD, MetaImage and DICOM."""

from .geometry import METADATA_KEY, Geometry, geometry_from_layer
from .medical import (
    SUPPORTED_SUFFIXES,
    MedicalIOError,
    is_dicom_dir,
    is_supported_file,
    read_image,
    read_label_image,
    write_dicom_series,
    write_image,
)

__all__ = [
    "METADATA_KEY",
    "SUPPORTED_SUFFIXES",
    "Geometry",
    "MedicalIOError",
    "geometry_from_layer",
    "is_dicom_dir",
    "is_supported_file",
    "read_image",
    "read_label_image",
    "write_dicom_series",
    "write_image",
]
