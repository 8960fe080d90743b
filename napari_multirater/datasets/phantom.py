"""Synthetic CT-like multi-rater phantoms with known, documented rater styles.

Each case is a chest-like CT slice or volume in Hounsfield units (body, two lungs, vessels,
smooth texture and noise) with one irregular lesion in a lung. The lesion is a solid core plus a
faint (ground-glass-like) extension. Simulated raters annotate it with a consistent style:

- ``tight``: outlines about 1.2 mm inside the true boundary (under-segments).
- ``generous``: outlines about 1.6 mm outside the true boundary (over-segments).
- ``smooth``: a convex, low-detail outline (convex hull of the lesion, lightly smoothed).
- ``misses_faint``: outlines only the solid core, missing the faint extension.

Every annotation also gets an independent smooth random boundary jitter (about 0.4 mm).
With more than four raters the styles repeat with a stronger or weaker variant
(``tight_2`` ...). Everything is seeded: the same (seed, index) always gives the same case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from ..io.geometry import Geometry
from .case import MultiRaterCase

BASE_STYLES = ("tight", "generous", "smooth", "misses_faint")
STYLE_DESCRIPTIONS = {
    "tight": "outlines inside the true boundary (erodes, under-segments)",
    "generous": "outlines outside the true boundary (dilates, over-segments)",
    "smooth": "convex, low-detail outline (convex hull of the lesion)",
    "misses_faint": "outlines only the solid core, missing the faint extension",
}
PHANTOM_WINDOW_HU = (-1000.0, 400.0)
SHAPE_2D = (128, 128)
SHAPE_3D = (24, 96, 96)
SPACING_2D = (0.7, 0.7)  # x, y mm
SPACING_3D = (0.7, 0.7, 1.5)  # x, y, z mm


@dataclass(frozen=True)
class RaterStyle:
    """A simulated rater: a style and its strength (offset of the outline in mm)."""

    name: str
    kind: str
    offset_mm: float
    jitter_mm: float = 0.4


def rater_styles(n_raters: int = 4) -> list[RaterStyle]:
    """The K simulated raters; styles cycle with growing strength beyond four."""
    if n_raters < 1:
        raise ValueError("a phantom needs at least one rater")
    styles = []
    for k in range(n_raters):
        kind = BASE_STYLES[k % 4]
        level = k // 4
        name = kind if level == 0 else f"{kind}_{level + 1}"
        base = {"tight": -1.2, "generous": 1.6, "smooth": 0.3, "misses_faint": 0.0}[kind]
        styles.append(RaterStyle(name, kind, base * (1.0 + 0.5 * level)))
    return styles


def _smooth_noise(rng, shape, sigma_px, amplitude) -> np.ndarray:
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma_px)
    std = field.std()
    return field * (amplitude / std) if std > 0 else field


def _grid(shape, spacing_zyx):
    return np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing_zyx)], indexing="ij")


def _ellipsoid(coords, center, radii) -> np.ndarray:
    return sum(((c - m) / r) ** 2 for c, m, r in zip(coords, center, radii))


def _signed_distance(mask: np.ndarray, spacing_zyx) -> np.ndarray:
    """Signed distance in mm: negative inside, positive outside."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    outside = ndi.distance_transform_edt(~mask, sampling=spacing_zyx)
    inside = ndi.distance_transform_edt(mask, sampling=spacing_zyx)
    return outside - inside


def _anatomy(rng, shape, spacing_zyx):
    """Body, lungs, vessels, texture and noise in HU; returns (image, lung mask, coords)."""
    coords = _grid(shape, spacing_zyx)
    ext = [n * s for n, s in zip(shape, spacing_zyx)]
    plane = coords[-2:]
    cy, cx = ext[-2] / 2, ext[-1] / 2
    body = _ellipsoid(plane, (cy, cx), (0.46 * ext[-2], 0.49 * ext[-1])) < 1
    img = np.full(shape, -1000.0)
    img[body] = 40.0
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        lungs |= _ellipsoid(plane, (cy * 0.95, cx + side * 0.24 * ext[-1]), (0.36 * ext[-2], 0.19 * ext[-1])) < 1
    lungs &= body
    img[lungs] = -850.0
    texture_sigma = [2.5 / s for s in spacing_zyx]
    img += _smooth_noise(rng, shape, texture_sigma, 35.0)
    # vessels: small bright blobs in the lungs
    n_vessels = int(rng.integers(8, 16))
    for _ in range(n_vessels):
        center = [rng.uniform(0.15, 0.85) * e for e in ext]
        r = rng.uniform(0.8, 2.0)
        blob = _ellipsoid(coords, center, [r] * len(shape)) < 1
        img[blob & lungs] = rng.uniform(-100, 60)
    img += rng.normal(0.0, 18.0, shape)
    return img, lungs, coords


def _lesion(rng, shape, spacing_zyx, lungs, coords):
    """Irregular solid core plus a faint extension; returns (core, faint, core_hu, faint_hu)."""
    ext = [n * s for n, s in zip(shape, spacing_zyx)]
    ndim = len(shape)
    inner = np.argwhere(ndi.binary_erosion(lungs, iterations=6))
    for _ in range(50):
        center_idx = inner[rng.integers(len(inner))]
        center = [i * s for i, s in zip(center_idx, spacing_zyx)]
        radius = rng.uniform(3.0, 9.0)  # mm, lesion radius in-plane
        radii = [radius * rng.uniform(0.75, 1.25) for _ in range(ndim)]
        if ndim == 3:
            radii[0] = max(radii[0], 2.5 * spacing_zyx[0])
        margin = [c - 1.9 * r for c, r in zip(center, radii)] + [e - c - 1.9 * r for c, r, e in zip(center, radii, ext)]
        if min(margin) > 0:
            break
    lobes = _smooth_noise(rng, shape, [radius / 2.5 / s for s in spacing_zyx], 0.25)
    core = (_ellipsoid(coords, center, radii) + lobes) < 1
    core = ndi.binary_fill_holes(core)
    # faint extension: a second, offset blob that overlaps the core
    direction = rng.standard_normal(ndim)
    if ndim == 3:
        direction[0] *= 0.3
    direction /= np.linalg.norm(direction)
    f_center = [c + 0.9 * r * d for c, r, d in zip(center, radii, direction)]
    f_radii = [0.75 * r for r in radii]
    faint = (_ellipsoid(coords, f_center, f_radii) + lobes * 0.5) < 1
    faint &= ~core
    core_hu = rng.uniform(-80.0, 60.0)
    faint_hu = rng.uniform(-620.0, -480.0)
    return core, faint, core_hu, faint_hu


def _annotate(style: RaterStyle, core, lesion, spacing_zyx, rng) -> np.ndarray:
    if style.kind == "misses_faint":
        target = core
    elif style.kind == "smooth":
        target = convex_hull_image(lesion) if lesion.any() else lesion
    else:
        target = lesion
    sdf = _signed_distance(target, spacing_zyx)
    jitter = _smooth_noise(rng, lesion.shape, [1.5 / s for s in spacing_zyx], style.jitter_mm)
    mask = sdf + jitter < style.offset_mm
    if style.kind == "smooth":
        mask = ndi.binary_opening(mask, iterations=1) | (sdf < style.offset_mm - 0.5)
    return ndi.binary_fill_holes(mask).astype(np.uint8)


def make_phantom_case(index: int, seed: int = 0, ndim: int = 2, n_raters: int = 4) -> MultiRaterCase:
    """Build phantom case ``index`` of the series defined by ``seed`` (deterministic)."""
    if ndim not in (2, 3):
        raise ValueError(f"phantoms are 2D or 3D, not {ndim}D")
    rng = np.random.default_rng([seed, index, ndim])
    shape = SHAPE_2D if ndim == 2 else SHAPE_3D
    spacing_xyz = SPACING_2D if ndim == 2 else SPACING_3D
    spacing_zyx = spacing_xyz[::-1]
    img, lungs, coords = _anatomy(rng, shape, spacing_zyx)
    core, faint, core_hu, faint_hu = _lesion(rng, shape, spacing_zyx, lungs, coords)
    lesion = core | faint
    smooth_edge = ndi.gaussian_filter(core.astype(float), 0.6)
    img = img * (1 - smooth_edge) + (core_hu + rng.normal(0, 15, shape)) * smooth_edge
    img[faint] = 0.5 * img[faint] + 0.5 * faint_hu
    styles = rater_styles(n_raters)
    masks = np.stack([_annotate(s, core, lesion, spacing_zyx, rng) for s in styles])
    origin = (-0.5 * shape[-1] * spacing_xyz[0], -0.5 * shape[-2] * spacing_xyz[1])
    if ndim == 3:
        origin = (*origin, -0.5 * shape[0] * spacing_xyz[2])
    geometry = Geometry(spacing_xyz, origin, tuple(np.eye(ndim).ravel().tolist()))
    meta = {
        "patient_id": f"phantom-{seed}-{index:04d}",
        "source": "synthetic phantom",
        "seed": seed,
        "index": index,
        "true_lesion_voxels": int(lesion.sum()),
        "core_voxels": int(core.sum()),
        "rater_styles": {s.name: STYLE_DESCRIPTIONS[s.kind] for s in styles},
    }
    return MultiRaterCase(
        case_id=f"phantom_{index:04d}",
        image=np.clip(np.round(img), -1024, 3071).astype(np.int16),
        masks=masks,
        valid=np.ones(n_raters, bool),
        rater_names=[s.name for s in styles],
        geometry=geometry,
        meta=meta,
    )


def true_lesion(index: int, seed: int = 0, ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The hidden ground truth (solid core, faint extension) of a phantom case."""
    rng = np.random.default_rng([seed, index, ndim])
    shape = SHAPE_2D if ndim == 2 else SHAPE_3D
    spacing_zyx = (SPACING_2D if ndim == 2 else SPACING_3D)[::-1]
    _, lungs, coords = _anatomy(rng, shape, spacing_zyx)
    core, faint, _, _ = _lesion(rng, shape, spacing_zyx, lungs, coords)
    return core, faint
