"""Latent explorer panel of the Model dock: an Explore form, one slider per latent direction and an
interpolation form, all over :class:`~napari_multirater._napari.explorer_controller.ExplorerController`.

The two parameter forms are magicgui widgets (as micro-sam builds its simple forms); the sliders
are made per explorer. When one decode of the image is slow, slider events are coalesced: only
the latest value is decoded once the queued events are handled.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from magicgui import magicgui
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QGridLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout

from .._napari.explorer_controller import ExplorerController
from ._notify import notify

__all__ = ["COALESCE_MS", "DIRECTION_MODES", "ExplorerPanel"]

DIRECTION_MODES = (("prior axes", "axes"), ("principal directions", "principal"))
SIGMA_RANGE = 3.0
SLIDER_STEPS = 30  # per sigma range side -> 0.1 sigma resolution
COALESCE_MS = 50.0  # slower explorer decodes: slider events are coalesced (latest value only)


def _hslider(lo: int, hi: int, value: int = 0) -> QSlider:
    s = QSlider(Qt.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    return s


class ExplorerPanel(QGroupBox):
    """ "Latent explorer" group: works on the 2D image or the current slice of a volume.

    ``start_job(what, start, **callbacks)`` is the host dock's job launcher (progress bar, errors
    as notifications; returns the Job or None); ``seed()`` and ``n_samples()`` read the host's
    Diversity choices; ``status(text)`` writes the host's status line.
    """

    def __init__(
        self,
        controller: ExplorerController,
        *,
        start_job: Callable,
        seed: Callable[[], int],
        n_samples: Callable[[], int],
        status: Callable[[str], None],
        parent=None,
    ):
        super().__init__("Latent explorer", parent)
        self.controller = controller
        self._start_job, self._seed, self._n_samples, self._status = start_job, seed, n_samples, status
        self.latent_sliders: list[QSlider] = []
        self.last_decode_ms: float | None = None
        self.coalesce = False  # set per explorer from one measured decode (> COALESCE_MS)
        self._pending: dict = {}  # coalesced decodes: key -> latest callable, run from QTimer
        self._decode_scheduled = False
        self.setToolTip("works on the 2D image or the current slice of a volume")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        self.form = magicgui(
            self._options,
            call_button=False,
            sliders={"label": "Sliders", "choices": [label for label, _ in DIRECTION_MODES]},
        )
        self.form.margins = (0, 0, 0, 0)
        lay.addWidget(self.form.native)
        self.explore_btn = QPushButton("Explore")  # not magicgui's call button: that one re-enables itself
        self.explore_btn.setToolTip("encode the image once; each slider re-decodes the mask live")
        self.explore_btn.clicked.connect(lambda: self.start())
        reset = QPushButton("Reset")
        reset.setToolTip("all sliders back to 0 (the prior mean)")
        reset.clicked.connect(self.reset_sliders)
        buttons = QHBoxLayout()
        buttons.addWidget(self.explore_btn)
        buttons.addWidget(reset)
        lay.addLayout(buttons)
        self.slider_grid = QGridLayout()
        lay.addLayout(self.slider_grid)
        self.between = magicgui(
            self._between_changed,
            auto_call=True,
            a={"label": "Between", "min": 0, "max": 999, "tooltip": "index of a sample drawn with the seed above"},
            b={"label": "and", "min": 0, "max": 999, "tooltip": "index of a sample drawn with the seed above"},
            t={
                "widget_type": "FloatSlider",
                "min": 0.0,
                "max": 1.0,
                "step": 0.01,
                "tooltip": "interpolate the latent between the two samples (0 -> first, 1 -> second)",
            },
        )
        self.between.margins = (0, 0, 0, 0)
        lay.addWidget(self.between.native)

    # ------------------------------------------------------------------ start
    @property
    def mode(self) -> str:
        return dict(DIRECTION_MODES)[self.form.sliders.value]

    @staticmethod
    def _options(sliders: str = DIRECTION_MODES[0][0]) -> None:
        """The Explore options (a magicgui form; read through :attr:`mode`)."""

    def set_enabled(self, on: bool) -> None:
        self.explore_btn.setEnabled(bool(on))

    def start(self, *, sync: bool | None = None) -> bool:
        """Encode the image and compute the slider directions as a job (``sync``: on this thread);
        the sliders appear when it is done. False when it could not start or failed."""
        mode = self.mode

        def error(e):
            self._status(f"latent explorer failed: {e}")
            notify("error", f"Latent explorer: {e}")

        job = self._start_job(
            "Latent explorer",
            lambda **cb: self.controller.start(
                mode, seed=self._seed(), on_done=lambda ex: self._ready(ex, mode), on_error=error, sync=sync, **cb
            ),
        )
        return job is not None and job.state != "failed"

    def clear(self) -> None:
        """Remove the sliders (another image or model: the explorer must be started again)."""
        while self.slider_grid.count():
            item = self.slider_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.latent_sliders = []

    def _ready(self, ex, mode: str) -> None:
        self.coalesce = ex.decode_ms > COALESCE_MS
        self._pending.clear()
        self.clear()
        for i, strength in enumerate(ex.strengths):
            name = f"z{i + 1}" if mode == "axes" else f"pc{i + 1}"
            label = QLabel(f"{name}  0.0σ")
            label.setMinimumWidth(70)
            slider = _hslider(-SLIDER_STEPS, SLIDER_STEPS, 0)
            slider.setToolTip(
                f"{name}: -{SIGMA_RANGE:g}..+{SIGMA_RANGE:g} prior σ"
                + (f" (effect {strength:.3g})" if mode == "principal" else "")
            )
            slider.valueChanged.connect(self._slider_moved)
            self.slider_grid.addWidget(label, i, 0)
            self.slider_grid.addWidget(slider, i, 1)
            self.latent_sliders.append(slider)
        self._status(
            f"explorer: {len(ex.mu)} latent dims ({mode}); drag a slider to re-decode"
            + (f" (decode {ex.decode_ms:.0f} ms: slider updates coalesced)" if self.coalesce else "")
        )

    # ------------------------------------------------------------------ sliders
    def slider_values(self) -> np.ndarray:
        return np.array([s.value() * SIGMA_RANGE / SLIDER_STEPS for s in self.latent_sliders], np.float32)

    def _coalesced(self, key: str, fn) -> None:
        """Run ``fn`` now, or, when decodes are slow (``self.coalesce``), once the events queued
        meanwhile are handled: only the latest request per ``key`` is decoded."""
        if not self.coalesce:
            fn()
            return
        self._pending[key] = fn
        if not self._decode_scheduled:
            self._decode_scheduled = True
            QTimer.singleShot(0, self._run_pending)

    def _run_pending(self) -> None:
        self._decode_scheduled = False
        pending, self._pending = self._pending, {}
        for fn in pending.values():
            fn()

    def _slider_moved(self, *_) -> None:
        vals = self.slider_values()
        for i, v in enumerate(vals):
            lab = self.slider_grid.itemAtPosition(i, 0)
            if lab is not None and lab.widget() is not None:
                name = lab.widget().text().split()[0]
                lab.widget().setText(f"{name} {v:+.1f}σ")
        self._coalesced("sliders", self._decode_sliders)

    def _decode_sliders(self) -> None:
        vals = self.slider_values()  # the latest values, also when coalesced
        t = time.perf_counter()
        try:
            self.controller.set(vals)
        except ValueError as e:
            self._status(str(e))
            return
        self.last_decode_ms = (time.perf_counter() - t) * 1000
        self._status(f"re-decoded in {self.last_decode_ms:.1f} ms")

    def reset_sliders(self) -> None:
        for s in self.latent_sliders:
            s.blockSignals(True)
            s.setValue(0)
            s.blockSignals(False)
        if self.latent_sliders:
            self._slider_moved()

    # ------------------------------------------------------------------ interpolation
    def _between_changed(self, a: int = 0, b: int = 1, t: float = 0.0) -> None:
        if self.controller.explorer is not None:
            self._coalesced("interpolate", self._decode_interpolation)

    def _decode_interpolation(self) -> None:
        if self.controller.explorer is None:
            return
        f = self.between
        try:
            self.controller.interpolate(f.a.value, f.b.value, f.t.value, self._n_samples())
        except ValueError as e:
            notify("error", f"Interpolation: {e}")
