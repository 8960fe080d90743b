"""Regions of interest in voxel indices or millimetres, and the prediction result container."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LESION_DEPTH_MM = 30.0  # a point box's depth along z: a lung nodule is at most 30 mm across


@dataclass(frozen=True)
class ROI:
    """A box on the image grid: ``z``/``y``/``x`` half-open index ranges (``z`` None = all slices),
    or a physical point with a size (``center_mm`` z,y,x in mm, ``size_mm`` scalar or per axis)."""

    z: tuple[int, int] | None = None
    y: tuple[int, int] | None = None
    x: tuple[int, int] | None = None
    center_mm: tuple[float, ...] | None = None
    size_mm: float | tuple[float, ...] | None = None

    @classmethod
    def rect(cls, z, y0: int, x0: int, y1: int, x1: int) -> ROI:
        """In-plane rectangle [y0, y1) x [x0, x1) on slice ``z`` (an int), slices ``(z0, z1)``, or
        every slice (``None``)."""
        zr = None if z is None else ((int(z), int(z) + 1) if np.isscalar(z) else (int(z[0]), int(z[1])))
        return cls(zr, (int(y0), int(y1)), (int(x0), int(x1)))

    @classmethod
    def box(cls, z0: int, y0: int, x0: int, z1: int, y1: int, x1: int) -> ROI:
        return cls((int(z0), int(z1)), (int(y0), int(y1)), (int(x0), int(x1)))

    @classmethod
    def point(cls, center_zyx_mm, size_mm) -> ROI:
        """A box of ``size_mm`` (edge length; scalar = cube) centred on a physical point (z, y, x)
        in mm (world coordinates of the image layer); 2D images take (y, x)."""
        return cls(
            center_mm=tuple(float(v) for v in center_zyx_mm),
            size_mm=size_mm if np.isscalar(size_mm) else tuple(float(v) for v in size_mm),
        )

    def resolve(self, shape: tuple[int, ...], geometry=None) -> tuple[slice, ...]:
        """Index slices (z, y, x) on a (Z, Y, X) grid (2D images: Z = 1), clipped to the grid."""
        zdim, ydim, xdim = shape
        if self.center_mm is not None:
            if geometry is None:
                raise ValueError("a point ROI needs the image geometry (mm -> voxel)")
            return self._point_box(shape, geometry)
        z = self.z if self.z is not None else (0, zdim)
        if zdim == 1 and self.z is not None and self.z[0] != 0:
            z = (0, 1)  # 2D image: the slice index is meaningless
        y = self.y if self.y is not None else (0, ydim)
        x = self.x if self.x is not None else (0, xdim)
        return _clip_box((z, y, x), shape)

    def _point_box(self, shape, geometry) -> tuple[slice, ...]:
        nd = geometry.ndim
        c = np.asarray(self.center_mm, dtype=float)[-nd:]
        a = geometry.affine_zyx()
        idx = np.linalg.solve(a[:nd, :nd], c - a[:nd, nd])
        size = np.broadcast_to(np.asarray(self.size_mm, dtype=float), (nd,))
        half = size / (2.0 * np.abs(np.asarray(geometry.scale_zyx, dtype=float)))
        lo = np.floor(idx - half + 0.5).astype(int)
        hi = np.maximum(np.floor(idx + half + 0.5).astype(int), lo + 1)
        rng = [(int(a_), int(b_)) for a_, b_ in zip(lo, hi)]
        if nd == 2:
            rng = [(0, 1), *rng]
        return _clip_box(tuple(rng), shape)


def _clip_box(rng, shape) -> tuple[slice, ...]:
    out = []
    for (a, b), n, axis in zip(rng, shape, "zyx"):
        a, b = max(int(a), 0), min(int(b), n)
        if b <= a:
            raise ValueError(
                f"region of interest is empty or outside the image along {axis} ({rng}, image shape {tuple(shape)})"
            )
        out.append(slice(a, b))
    return tuple(out)


@dataclass
class PredictionResult:
    """Model outputs for a region of an image grid.

    Arrays are stored for the computed ``region`` only (``*_region`` fields, leading axes as
    below, then the region's (Z, Y, X) or, for 2D images, (Y, X)); the properties ``samples``,
    ``mean_prob``, ``personas`` and ``uncertainty`` paste them into zero arrays on the full input
    grid. Current-slice and ROI runs therefore return full-grid arrays that are zero outside the
    region, while callers that only update the region (the napari docks) use ``region``.
    """

    shape: tuple[int, ...]
    region: tuple[slice, ...]
    samples_region: np.ndarray | None = None  # (n, *region) uint8 {0, 1}
    mean_prob_region: np.ndarray | None = None  # (*region) float32
    personas_region: dict = field(default_factory=dict)  # name -> (*region) uint8
    uncertainty_region: dict = field(default_factory=dict)  # kind -> (*region) float32 in [0, 1]
    scores: dict = field(default_factory=dict)  # name -> (Z_region,) float per slice (UMA-Net quality)
    geometry: object = None
    info: dict = field(default_factory=dict)

    def _full(self, arr, lead: int = 0):
        if arr is None:
            return None
        out = np.zeros(arr.shape[:lead] + tuple(self.shape), dtype=arr.dtype)
        out[(slice(None),) * lead + tuple(self.region)] = arr
        return out

    @property
    def samples(self):
        return self._full(self.samples_region, 1)

    @property
    def mean_prob(self):
        return self._full(self.mean_prob_region)

    @property
    def personas(self) -> dict:
        return {k: self._full(v) for k, v in self.personas_region.items()}

    @property
    def uncertainty(self) -> dict:
        return {k: self._full(v) for k, v in self.uncertainty_region.items()}
