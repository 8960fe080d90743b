"""Image geometry (spacing, origin, direction) and its mapping to napari layer transforms.

SimpleITK stores spacing/origin/direction in (x, y, z) order while its arrays are (z, y, x).
A :class:`Geometry` always keeps SimpleITK's order; :meth:`Geometry.layer_kwargs` converts it to
napari's array order (scale = spacing reversed, translate = origin reversed, rotation = the
direction matrix with both axes reversed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METADATA_KEY = "multirater_geometry"


@dataclass(frozen=True)
class Geometry:
    """Physical geometry of an image, in SimpleITK (x, y[, z]) order, units mm."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major ndim x ndim

    def __post_init__(self) -> None:
        n = len(self.spacing)
        if len(self.origin) != n or len(self.direction) != n * n:
            raise ValueError(
                f"inconsistent geometry: spacing {self.spacing}, origin {self.origin}, direction {self.direction}"
            )
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @classmethod
    def identity(cls, ndim: int) -> Geometry:
        return cls((1.0,) * ndim, (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))

    @classmethod
    def from_sitk(cls, image) -> Geometry:
        return cls(
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    def apply_to(self, image) -> None:
        """Set this geometry on a SimpleITK image (in place)."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    # --- napari (array-order) views -------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(self.ndim, self.ndim)

    @property
    def scale_zyx(self) -> tuple[float, ...]:
        return tuple(self.spacing[::-1])

    @property
    def translate_zyx(self) -> tuple[float, ...]:
        return tuple(self.origin[::-1])

    @property
    def rotation_zyx(self) -> np.ndarray:
        """Direction matrix expressed in array (z, y, x) order."""
        return self.direction_matrix[::-1, ::-1].copy()

    @property
    def is_identity_direction(self) -> bool:
        return bool(np.allclose(self.direction_matrix, np.eye(self.ndim), atol=1e-6))

    def affine_zyx(self) -> np.ndarray:
        """Homogeneous (ndim+1)^2 matrix mapping array index (z, y, x) to physical (z, y, x) mm."""
        n = self.ndim
        a = np.eye(n + 1)
        a[:n, :n] = self.rotation_zyx @ np.diag(self.scale_zyx)
        a[:n, n] = self.translate_zyx
        return a

    def index_to_physical(self, index_zyx) -> np.ndarray:
        idx = np.asarray(index_zyx, dtype=float)
        return self.rotation_zyx @ (idx * np.asarray(self.scale_zyx)) + np.asarray(self.translate_zyx)

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    def layer_kwargs(self, source_path: str | None = None) -> dict:
        """napari layer keyword arguments: scale/translate/rotate, units, and the metadata
        that writers use to restore the geometry exactly."""
        kw: dict = {
            "scale": self.scale_zyx,
            "translate": self.translate_zyx,
            "units": ("mm",) * self.ndim,
            "metadata": {METADATA_KEY: self.to_dict()},
        }
        if not self.is_identity_direction:
            kw["rotate"] = self.rotation_zyx
        if source_path is not None:
            kw["metadata"]["source_path"] = str(source_path)
        return kw

    def matches(self, other: Geometry, rtol: float = 1e-4, atol: float = 1e-3) -> bool:
        """True when both geometries describe the same grid (within tolerance, mm)."""
        if self.ndim != other.ndim:
            return False
        return (
            np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol)
            and np.allclose(self.origin, other.origin, rtol=rtol, atol=atol)
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )

    def mismatch(self, other: Geometry) -> str | None:
        """Human-readable description of how ``other`` differs, or None when they match."""
        if self.ndim != other.ndim:
            return f"dimension {other.ndim}D vs {self.ndim}D"
        for name in ("spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            tol = 1e-4 if name == "direction" else 1e-3
            if not np.allclose(a, b, rtol=1e-4, atol=tol):
                return f"{name} {tuple(round(v, 4) for v in b)} vs {tuple(round(v, 4) for v in a)}"
        return None


class ShearedGeometryError(ValueError):
    """A layer transform with shear (or unequal-axis skew) has no spacing/origin/direction form."""


def _shear_matrix(shear, n: int) -> np.ndarray:
    """napari's shear: a full (n, n) upper-triangular matrix or its n(n-1)/2 upper entries."""
    if shear is None:
        return np.eye(n)
    sh = np.asarray(shear, dtype=float)
    if sh.ndim == 2:
        return sh.reshape(n, n)
    m = np.eye(n)
    m[np.triu_indices(n, 1)] = sh.ravel()
    return m


def _affine_matrix(affine, n: int) -> np.ndarray:
    """A layer ``affine`` (napari Affine, (n+1)^2 or n^2 matrix, None) as an (n+1)^2 matrix."""
    if affine is None:
        return np.eye(n + 1)
    a = np.asarray(getattr(affine, "affine_matrix", affine), dtype=float)
    if a.shape == (n, n):
        out = np.eye(n + 1)
        out[:n, :n] = a
        return out
    if a.shape != (n + 1, n + 1):
        raise ValueError(f"layer affine of shape {a.shape} does not fit a {n}D layer")
    return a


def data_to_world_matrix(scale, translate=None, rotate=None, shear=None, affine=None) -> np.ndarray:
    """napari's data -> world transform as a homogeneous (n+1)^2 matrix (array order):
    ``affine @ [rotate @ shear @ diag(scale) | translate]`` (as ``layer._data_to_world``)."""
    scale = np.asarray(scale, dtype=float).ravel()
    n = scale.size
    lin = np.eye(n + 1)
    rot = np.eye(n) if rotate is None else np.asarray(rotate, dtype=float).reshape(n, n)
    lin[:n, :n] = rot @ _shear_matrix(shear, n) @ np.diag(scale)
    lin[:n, n] = np.zeros(n) if translate is None else np.asarray(translate, dtype=float).ravel()
    return _affine_matrix(affine, n) @ lin


def geometry_from_matrix(matrix, atol: float = 1e-6) -> Geometry:
    """Spacing/origin/direction of a homogeneous array-order index -> world matrix that is a pure
    rotation (or reflection) times a positive scale plus a translation; shear raises
    :class:`ShearedGeometryError` (medical image files cannot store it)."""
    m = np.asarray(matrix, dtype=float)
    n = m.shape[0] - 1
    if m.shape != (n + 1, n + 1) or not np.allclose(m[n], np.eye(n + 1)[n]):
        raise ValueError(f"not a homogeneous affine matrix: {m.tolist()}")
    lin = m[:n, :n]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(lin)):
        raise ValueError(f"degenerate layer transform (zero or non-finite scale): {lin.tolist()}")
    direction = lin / spacing
    gram = direction.T @ direction
    if not np.allclose(gram, np.eye(n), atol=max(atol, 1e-6) * 10):
        angles = np.degrees(np.arccos(np.clip(gram[np.triu_indices(n, 1)], -1, 1)))
        raise ShearedGeometryError(
            "the layer transform (scale/rotate/shear/affine) has shear: its axes are at "
            f"{', '.join(f'{a:.2f}' for a in angles)} degrees instead of 90, which a medical image "
            "file cannot store (spacing/origin/direction); remove the shear (layer.shear / layer.affine) first"
        )
    return Geometry(
        tuple(spacing[::-1].tolist()), tuple(m[:n, n][::-1].tolist()), tuple(direction[::-1, ::-1].ravel().tolist())
    )


def geometry_from_layer(
    scale, translate=None, metadata: dict | None = None, rotate=None, *, shear=None, affine=None
) -> Geometry:
    """Recover a Geometry from a napari layer's state; prefers the exact stored metadata.

    Call it with a layer (``geometry_from_layer(layer)``), or with the parts of its state (e.g. the
    writer's ``meta``: scale, translate, metadata, rotate, shear, affine). Without
    ``multirater_geometry`` metadata the full data -> world transform is used, the layer's
    ``affine`` included (layers from other readers keep their geometry there); a transform with
    shear raises :class:`ShearedGeometryError`.
    """
    if hasattr(scale, "scale") and hasattr(scale, "metadata"):  # a layer
        layer = scale
        return geometry_from_layer(
            layer.scale,
            layer.translate,
            layer.metadata,
            getattr(layer, "rotate", None),
            shear=getattr(layer, "shear", None),
            affine=getattr(layer, "affine", None),
        )
    if metadata and METADATA_KEY in metadata:
        return Geometry.from_dict(metadata[METADATA_KEY])
    return geometry_from_matrix(data_to_world_matrix(scale, translate, rotate, shear, affine))
