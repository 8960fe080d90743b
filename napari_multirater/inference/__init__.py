"""Model inference without Qt: device choice, intensity mapping, engine, registry, CLI."""

from ..modelfiles.intensity import LIDC_HU_MAPPING, InputNormalizer, hu_to_lidc_uint8
from ..modelfiles.registry import available_models, find_model
from .device import resolve_device, run_with_fallback
from .engine import InferenceEngine, ModelLoadError, slice_seed
from .roi import ROI, PredictionResult

__all__ = [
    "InferenceEngine",
    "InputNormalizer",
    "LIDC_HU_MAPPING",
    "ModelLoadError",
    "PredictionResult",
    "ROI",
    "available_models",
    "find_model",
    "hu_to_lidc_uint8",
    "resolve_device",
    "run_with_fallback",
    "slice_seed",
]
