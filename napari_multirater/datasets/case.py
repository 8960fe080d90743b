"""The one in-memory model of a multi-rater case, shared by training, the plugin and collection."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io.geometry import Geometry


class DatasetError(ValueError):
    """A dataset or case file is missing, corrupt or inconsistent (the message names the file)."""


@dataclass
class MultiRaterCase:
    """One image with K rater masks.

    image: (y, x) or (z, y, x) array, original intensities.
    masks: uint8 {0, 1} array (K, *image.shape); a missing rater's mask is all zero.
    valid: bool (K,), False where the rater's annotation is missing.
    """

    case_id: str
    image: np.ndarray
    masks: np.ndarray
    valid: np.ndarray
    rater_names: list[str]
    geometry: Geometry
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.rater_names)
        if self.masks.shape != (k, *self.image.shape):
            raise DatasetError(
                f"case {self.case_id}: masks shape {self.masks.shape} does not match "
                f"{k} raters x image shape {self.image.shape}"
            )
        self.valid = np.asarray(self.valid, dtype=bool)
        if self.valid.shape != (k,):
            raise DatasetError(f"case {self.case_id}: validity flags shape {self.valid.shape} != ({k},)")

    @property
    def patient_id(self) -> str:
        return str(self.meta.get("patient_id", self.case_id))

    @property
    def n_raters(self) -> int:
        return len(self.rater_names)

    def rater_mask(self, rater: str) -> np.ndarray:
        return self.masks[self.rater_names.index(rater)]
