"""Typed requests from the Model dock to :class:`~napari_multirater._napari.model_controller.ModelController`.

A :class:`RunRequest` says what to compute (:class:`RunKind`), where (:class:`Scope`, with an ROI
for 'region of interest'), with how many samples and which seed, and how to show it. The enums are
``str`` enums whose values are the texts the dock shows, so ``Scope("current slice")`` and
``RunKind("samples")`` also accept the plain strings scripts pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..inference.roi import ROI

__all__ = ["ALL_EXPERTS", "DEFAULT_SAMPLES", "RunKind", "RunRequest", "Scope"]

DEFAULT_SAMPLES = 16  # the one default number of samples (dock, scripts, uncertainty maps)
ALL_EXPERTS = "all experts"


class RunKind(str, Enum):
    """What a model run computes; each kind has its own output layers."""

    SAMPLES = "samples"
    PERSONAS = "personas"
    UNCERTAINTY = "uncertainty"


class Scope(str, Enum):
    """Which part of the image a run covers (the dock's Scope combo)."""

    WHOLE_IMAGE = "whole image"
    CURRENT_SLICE = "current slice"
    ALL_SLICES = "all slices"
    ROI = "region of interest"


SCOPES_2D = (Scope.WHOLE_IMAGE, Scope.ROI)
SCOPES_3D = (Scope.CURRENT_SLICE, Scope.ALL_SLICES, Scope.ROI)


@dataclass(frozen=True)
class RunRequest:
    """One model run as the dock asks for it.

    ``n_samples`` samples are drawn for the samples and the uncertainty maps (personas need none);
    for scope ROI the region is ``roi`` if given, else taken from ``roi_layer`` (last/selected
    rectangle of a Shapes layer, or a box of ``roi_size_mm`` around the last/selected point of a
    Points layer). ``contours``, ``expert`` and ``uncertainty_kind`` choose what is shown.
    """

    kind: RunKind
    scope: Scope = Scope.WHOLE_IMAGE
    n_samples: int = DEFAULT_SAMPLES
    seed: int = 0
    roi: ROI | None = None
    roi_layer: Any = None
    roi_size_mm: float = 40.0
    batch_slices: int = 8
    contours: bool = False
    expert: str = ALL_EXPERTS
    uncertainty_kind: str = "entropy"

    def __post_init__(self) -> None:
        for name, enum in (("kind", RunKind), ("scope", Scope)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise ValueError(f"unknown {name} {value!r} (choose from: {choices})") from None
        if int(self.n_samples) < 1:
            raise ValueError(f"the number of samples must be at least 1, got {self.n_samples}")
        if int(self.batch_slices) < 1:
            raise ValueError(f"slices per batch must be at least 1, got {self.batch_slices}")
        object.__setattr__(self, "n_samples", int(self.n_samples))
        object.__setattr__(self, "seed", int(self.seed))
