"""Latent explorer (no Qt widgets): encode the 2D image / current slice once, then re-decode the mask
for slider values along latent directions, or between two prior draws, into ``mr latent explorer``.

It works beside a :class:`~napari_multirater._napari.model_controller.ModelController`: same
engine, image, job runner (one model job at a time) and output-layer conventions. The explorer is
dropped whenever the model controller drops its cached results (new model, image or intensity).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..progress import Progress
from .layers import binary_colormap, layer_name, same_layer, transform_kwargs
from .model_controller import ModelController, _warn
from .workers import Job

__all__ = ["EXPLORER", "Explorer", "ExplorerController"]

EXPLORER = layer_name("latent explorer")


@dataclass
class Explorer:
    """Latent explorer state for one 2D slice."""

    enc: object
    z_index: int | None
    mu: np.ndarray
    sigma: np.ndarray
    directions: np.ndarray
    strengths: np.ndarray
    seed: int
    decode_ms: float = 0.0  # one decode of this image (the panel coalesces slider events when slow)
    initial: np.ndarray | None = None  # mask at the prior mean (all sliders 0)


class ExplorerController:
    """Starts the explorer as a job on the model controller's runner and decodes slider values."""

    def __init__(self, model: ModelController):
        self.model = model
        self.explorer: Explorer | None = None
        model.on_reset.append(self.reset)

    def reset(self) -> None:
        self.explorer = None

    def start_sync(self, mode: str = "axes", seed: int = 0) -> Explorer:
        """Synchronous :meth:`start` (scripts, tests); returns the explorer."""
        out: list[Explorer] = []
        self.start(mode, seed, on_done=out.append, sync=True)
        return out[0]

    def start(self, mode: str = "axes", seed: int = 0, *, on_done=None, sync: bool | None = None, **callbacks) -> Job:
        """Encode, compute the slider directions (``principal``: n full-slice decodes) and decode the
        prior mean as a job with progress; the explorer is installed on the GUI thread, then
        ``on_done(explorer)``. ``callbacks``: the other :meth:`JobRunner.start` callbacks."""
        m = self.model
        engine, layer = m.require()
        m._require_idle()
        if engine.capabilities.latent_dim <= 0:
            raise ValueError(f"{engine.model.method} has no latent space to explore")
        image, z = m._current_2d()
        target = (layer, transform_kwargs(layer))
        full_shape = tuple(np.shape(m.image_data()))

        def done(ex):
            m.dropped = m._stale(target[0], full_shape) or (
                None if same_layer(target[0], m.image_layer) else "another image was chosen meanwhile"
            )
            if m.dropped:
                _warn(f"latent explorer: not started: {m.dropped}")
                return
            self.explorer = ex
            m.hide_other_families("explorer")
            with m._output_to(*target):
                if EXPLORER in m.viewer.layers:
                    m.viewer.layers[EXPLORER].data[...] = 0
                self._show(ex.initial)
            if on_done is not None:
                on_done(ex)

        return m._launch(iter_explorer(engine, image, z, mode, int(seed)), "latent explorer", done, callbacks, sync)

    def set(self, coeffs):
        """Decode at slider values ``coeffs`` (units of prior sigma along the chosen directions)."""
        ex = self._need()
        eng = self.model.engine
        z = eng.latent_from_coefficients(ex.enc, coeffs, ex.directions)
        return self._show((eng.decode(ex.enc, z)[0] > 0.5).astype(np.uint8))

    def interpolate(self, a: int, b: int, t: float, n: int | None = None):
        """Decode between prior draws a and b of the sample seed (t = 0 -> a, 1 -> b)."""
        ex = self._need()
        eng = self.model.engine
        n = max(int(n or 0), a + 1, b + 1)
        zs = eng.latent_samples(ex.enc, n, seed=ex.seed, key=ex.z_index or 0)
        prob = eng.interpolate(ex.enc, zs[a], zs[b], t)
        return self._show((prob > 0.5).astype(np.uint8))

    def _need(self) -> Explorer:
        if self.explorer is None or self.model.engine is None:
            raise ValueError("start the latent explorer first")
        return self.explorer

    def _show(self, mask):
        """Write a decoded mask into ``mr latent explorer`` (a live preview: not in the undo history)."""
        m = self.model
        region = m._slice_region(self.explorer.z_index, mask.shape)
        return m._labels(
            EXPLORER,
            region,
            mask,
            undo=False,
            colormap=binary_colormap("#00ff7f"),
            opacity=0.7,
            metadata=m._meta("latent_explorer"),
        )


def iter_explorer(engine, image, z, mode: str, seed: int):
    """Generator (job side): encode, slider directions, first decode; returns an :class:`Explorer`."""
    yield Progress(0, None, "encoding")
    enc = engine.encode(image)
    prior = engine.latent_prior(enc)
    if prior is None:
        raise ValueError(f"{engine.model.method} has no latent space to explore")
    directions, strengths = yield from engine.iter_latent_directions(enc, mode, seed=seed)
    t = time.perf_counter()
    zero = engine.latent_from_coefficients(enc, np.zeros(len(prior[0]), np.float32), directions)
    initial = (engine.decode(enc, zero)[0] > 0.5).astype(np.uint8)
    decode_ms = (time.perf_counter() - t) * 1000
    return Explorer(enc, z, prior[0], prior[1], directions, strengths, seed, decode_ms, initial)
