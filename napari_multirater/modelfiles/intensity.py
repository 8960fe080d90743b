"""Intensity normalisation of model inputs, following the model card.

Every card stores ``intensity.window = [lo, hi]`` in the units of its training images and the
mapping ``x_norm = clip((x - lo) / (hi - lo), 0, 1)``. Phantom models: HU, window [-1000, 400].
LIDC models: the 8-bit units of the LIDC slice shards, window [0, 255]; HU input is first mapped
to that 8-bit scale (:data:`LIDC_HU_MAPPING`), then windowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LIDC_HU_MAPPING = {
    "rule": "per-crop min-max: uint8 = round(255 * (HU - crop_min) / (crop_max - crop_min))",
    "fixed_hu_lo": -1006.0,
    "fixed_hu_hi": 1087.0,
    "a": 0.1219,
    "b": 122.5,
    "minmax_clip_hu": (-1024.0, 3071.0),
}
"""How the LIDC 8-bit slices were made from Hounsfield units (measured, not documented upstream).

Measured with ``python -m src_training.tools.fit_lidc_intensity``: 26 of the 36 shard
crops of LIDC-IDRI-0006/-0001/-0013 were located in the real HU data (DICOM series of 0006 and the
lidc-3d-crops) by normalised cross-correlation (NCC = 1.0000, native pixel size: no resampling),
and ``uint8 ~ a*HU + b`` was fitted per crop (max residual 0.5 = rounding). The slope differs per
crop (a = 0.064..0.133, b = 64..133; 0006 alone: a = 0.120..0.133, b = 119..132) because **every
crop is min-max scaled on its own**: each spans exactly 0..255 and
``round(255 * (HU - min) / (max - min))`` reproduces 99.98% of the pixels of the 8 fully known
crops exactly (the rest within 1 level). The crop minimum is air/lung (about -1000 HU); the
maximum is the densest tissue in the crop (bone: +920..+3000 HU).

Two encodings are offered: ``"fixed"`` (default; the same for every slice of a volume):
``uint8 = 255 * (HU + 1006) / (1087 + 1006) = 0.1219 * HU + 122.5`` from the median fitted end
points over the 26 crops (0006 alone: -997 / +1043 HU, a = 0.1251, b = 124.7), and ``"minmax"``:
the exact training rule applied to each model input tile (HU first clipped to [-1024, 3071] so
out-of-field padding such as -2048 is ignored); best for ~128x128 crops around a nodule.
"""

LIDC_MAPPINGS = ("fixed", "minmax")
IMAGE_UNITS = ("auto", "HU", "raw")


def hu_to_lidc_uint8(hu, mapping: str = "fixed") -> np.ndarray:
    """HU -> the LIDC 8-bit scale as float32 in [0, 255] (not rounded).

    ``mapping="minmax"`` rescales each 2D slice (last two axes) by its own min and max.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if mapping == "fixed":
        lo, hi = LIDC_HU_MAPPING["fixed_hu_lo"], LIDC_HU_MAPPING["fixed_hu_hi"]
        return np.clip(255.0 * (hu - lo) / (hi - lo), 0.0, 255.0).astype(np.float32)
    if mapping == "minmax":
        c = np.clip(hu, *LIDC_HU_MAPPING["minmax_clip_hu"])
        lo = c.min(axis=(-2, -1), keepdims=True)
        span = c.max(axis=(-2, -1), keepdims=True) - lo
        return (255.0 * (c - lo) / np.where(span > 0, span, 1.0)).astype(np.float32)
    raise ValueError(f"LIDC mapping must be one of {LIDC_MAPPINGS}, got {mapping!r}")


def card_units(card: dict) -> str:
    """Units of the training images: ``intensity.units`` if the card has it, else ``"lidc_uint8"``
    for LIDC-trained models (attribution / data path / window [0, 255]), else ``"HU"``."""
    inten = card.get("intensity") or {}
    if inten.get("units"):
        return str(inten["units"])
    path = str((card.get("training_data") or {}).get("path", "")).lower()
    if "lidc" in str(card.get("attribution", "")).lower() or "lidc" in path:
        return "lidc_uint8"
    window = [float(v) for v in inten.get("window", [0, 255])]
    return "lidc_uint8" if window == [0.0, 255.0] else "HU"


@dataclass(frozen=True)
class InputNormalizer:
    """Maps raw image values to the model's [0, 1] input (see module docstring)."""

    window: tuple[float, float]
    model_units: str = "HU"
    image_units: str = "auto"
    lidc_mapping: str = "fixed"

    @classmethod
    def from_card(cls, card: dict, image_units: str = "auto", lidc_mapping: str = "fixed") -> InputNormalizer:
        if image_units not in IMAGE_UNITS:
            raise ValueError(f"image units must be one of {IMAGE_UNITS}, got {image_units!r}")
        if lidc_mapping not in LIDC_MAPPINGS:
            raise ValueError(f"LIDC mapping must be one of {LIDC_MAPPINGS}, got {lidc_mapping!r}")
        window = (card.get("intensity") or {}).get("window")
        if not window or len(window) != 2 or float(window[1]) <= float(window[0]):
            raise ValueError(f"model card has no valid intensity window: {window!r}")
        return cls((float(window[0]), float(window[1])), card_units(card), image_units, lidc_mapping)

    def resolve_units(self, image) -> str:
        """``auto``: uint8 images are taken as already in the model's units (raw), others as HU."""
        if self.image_units != "auto":
            return self.image_units
        return "raw" if np.asarray(image).dtype == np.uint8 else "HU"

    def needs_lidc_mapping(self, image) -> bool:
        return self.model_units == "lidc_uint8" and self.resolve_units(image) == "HU"

    def __call__(self, image) -> np.ndarray:
        """float32 in [0, 1], same shape; minmax mapping works per 2D slice (last two axes)."""
        x = np.asarray(image, dtype=np.float32)
        if self.needs_lidc_mapping(image):
            x = hu_to_lidc_uint8(x, self.lidc_mapping)
        lo, hi = self.window
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32, copy=False)

    def describe(self, image=None) -> str:
        lo, hi = self.window
        units = self.resolve_units(image) if image is not None else self.image_units
        pre = ""
        if self.model_units == "lidc_uint8" and units != "raw":
            pre = f"HU -> LIDC 8-bit ({self.lidc_mapping}), then "
        return f"{pre}window [{lo:g}, {hi:g}] ({self.model_units}) -> [0, 1]"
