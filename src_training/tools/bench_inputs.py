"""Synthetic inputs of ``multirater bench``: a CT-like volume in HU, a centred box, a 2D crop."""

from __future__ import annotations

import math

import numpy as np


def ct_like_volume(shape=(64, 512, 512), seed: int = 0) -> np.ndarray:
    """A float32 CT-like volume in HU: air -1000 around an elliptical body (soft tissue ~40), two
    lungs (~-850) whose size changes along z, a spine (~700), a few soft-tissue nodules in the
    lungs, Gaussian noise (sigma 20 HU)."""
    z, h, w = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(
        np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij"
    )
    body = (xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1
    spine = xx**2 + (yy - 0.45) ** 2 < 0.1**2
    nodules = [
        (
            rng.uniform(0.1, 0.9),
            rng.choice([-0.4, 0.4]) + rng.uniform(-0.1, 0.1),
            rng.uniform(-0.25, 0.15),
            rng.uniform(0.03, 0.08),
        )
        for _ in range(4)
    ]
    vol = rng.standard_normal(size=(z, h, w), dtype=np.float32)
    vol *= 20.0
    for k in range(z):
        t = (k + 0.5) / z
        grow = 0.6 + 0.4 * math.sin(math.pi * t)
        sl = np.full((h, w), -1000.0, np.float32)
        sl[body] = 40.0
        for cx in (-0.4, 0.4):
            sl[((xx - cx) / (0.27 * grow)) ** 2 + ((yy + 0.05) / (0.45 * grow)) ** 2 < 1] = -850.0
        sl[spine] = 700.0
        for zc, cx, cy, r in nodules:
            rz = r**2 - (0.5 * (t - zc)) ** 2
            if rz > 0:
                sl[(xx - cx) ** 2 + (yy - cy) ** 2 < rz] = 30.0
        vol[k] += sl
    return vol


def centred_box(shape, box) -> tuple[int, ...]:
    """``(z0, y0, x0, z1, y1, x1)`` of a ``box``-sized region centred in ``shape`` (clipped)."""
    lo = [max(0, (s - min(b, s)) // 2) for s, b in zip(shape, box)]
    return (*lo, *(a + min(b, s) for a, b, s in zip(lo, box, shape)))


def image_crop(size: int = 128) -> np.ndarray:
    """A ``size`` x ``size`` HU crop around the right lung of a CT-like slice (for the 2D timings)."""
    sl = ct_like_volume((1, 512, 512), seed=1)[0]
    cy, cx = int(512 * 0.475), int(512 * 0.3)
    half = size // 2
    y0, x0 = max(0, min(512 - size, cy - half)), max(0, min(512 - size, cx - half))
    return sl[y0 : y0 + size, x0 : x0 + size]
