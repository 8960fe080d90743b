""" "Model & sampling" dock: load a checkpoint, draw diverse samples, explore the latent space, show
rater personas and uncertainty maps. A thin view: every action calls
:class:`~napari_multirater._napari.model_controller.ModelController` (or the engine through it).
"""

from __future__ import annotations

import html

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .._napari import guidance
from .._napari.explorer_controller import ExplorerController
from .._napari.model_controller import ALL_EXPERTS, ModelController
from .._napari.model_request import DEFAULT_SAMPLES, RunKind, RunRequest, Scope
from ..inference import model_info
from ..inference.device import DEVICE_CHOICES, PRECISION_CHOICES
from ..inference.presence_text import other_scores, presence_summary, presence_words
from ..inference.roi import LESION_DEPTH_MM
from ..modelfiles.intensity import IMAGE_UNITS, LIDC_MAPPINGS
from ..modelfiles.registry import available_models
from ._help import help_button
from ._notify import notify as _notify
from .explorer_panel import ExplorerPanel

__all__ = ["ModelDock"]

FILE_ITEM = "checkpoint file…"


def _form(box: QGroupBox | QWidget) -> QFormLayout:
    form = QFormLayout(box)
    form.setContentsMargins(6, 6, 6, 6)
    form.setLabelAlignment(Qt.AlignRight)
    form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    return form


def _row(*widgets) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w


def _hslider(lo: int, hi: int, value: int = 0, tracking: bool = True) -> QSlider:
    s = QSlider(Qt.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    s.setTracking(tracking)
    return s


class ModelDock(QWidget):
    """Dock widget: Model, Input, then Diversity / Persona / Uncertainty tabs and a progress row."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.controller = ModelController(napari_viewer)
        self.explorer = ExplorerController(self.controller)
        self._n_warnings = 0
        self._user_chose_model = False  # once the user picks a model, stop pre-selecting one
        self._build()
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        self.refresh_layers()
        self.refresh_models()
        self._update_enabled()
        from .._napari.collect_controller import on_new_model

        on_new_model(self.show_new_model)  # Learn my style: the new model appears here at once

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)  # never clip: scroll if narrower than the body
        outer.addWidget(scroll)
        body = QWidget()
        self._scroll, self._body = scroll, body
        scroll.setWidget(body)
        lay = QVBoxLayout(body)
        lay.setContentsMargins(6, 6, 6, 6)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #ffb454")
        self.hint.setVisible(False)
        lay.addWidget(self.hint)
        lay.addWidget(self._build_model())
        lay.addWidget(self._build_input())
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_diversity(), "Diversity")
        self.tabs.addTab(self._build_persona(), "Persona")
        self.tabs.addTab(self._build_uncertainty(), "Uncertainty")
        lay.addWidget(self.tabs)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop the running model job (takes effect after the current chunk)")
        self.cancel_btn.clicked.connect(self.cancel)
        self.earlier_btn = QPushButton("Show earlier outputs")
        self.earlier_btn.setToolTip("each run shows its own outputs and hides the older ones; this shows them again")
        self.earlier_btn.clicked.connect(self.show_earlier)
        self.earlier_btn.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay.addStretch(1)
        self.setMinimumWidth(340)
        # progress, Cancel and the last status stay visible below the scrolling part (small screens)
        foot = QWidget()
        fl = QVBoxLayout(foot)
        fl.setContentsMargins(6, 2, 6, 4)
        fl.addWidget(_row(self.progress, self.cancel_btn, self.earlier_btn))
        fl.addWidget(self.status)
        self.help_btn = help_button(self, "Model & sampling")
        fl.addWidget(self.help_btn)
        outer.addWidget(foot)

    def _build_model(self) -> QGroupBox:
        box = QGroupBox("Model")
        form = _form(box)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("bundled / cached models ($NAPARI_MULTIRATER_MODELS), or a checkpoint file")
        self.model_combo.currentIndexChanged.connect(self._model_choice_changed)
        self.model_combo.activated.connect(self._model_chosen_by_user)
        form.addRow("Model", self.model_combo)
        self.purpose_label = QLabel("")
        self.purpose_label.setWordWrap(True)
        form.addRow("For", self.purpose_label)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path/to/checkpoint.pt")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        form.addRow("File", _row(self.path_edit, browse))
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(PRECISION_CHOICES)
        self.precision_combo.setToolTip(
            "auto: bf16 + channels_last where the CPU/GPU computes bf16 natively "
            "(2-3x faster on such CPUs), else fp32; fp32: full precision"
        )
        self.precision_combo.currentIndexChanged.connect(lambda *_: self.set_precision())
        self.load_btn = QPushButton("Load model")
        self.load_btn.clicked.connect(self.load_model)
        form.addRow("Device, precision", _row(self.device_combo, self.precision_combo, self.load_btn))
        self.units_combo = QComboBox()
        self.units_combo.addItems(IMAGE_UNITS)
        self.units_combo.setToolTip("units of the image values: auto = uint8 images are raw model units, others HU")
        self.lidc_combo = QComboBox()
        self.lidc_combo.addItems(LIDC_MAPPINGS)
        self.lidc_combo.setToolTip(
            "LIDC-trained models only: HU -> 8-bit mapping (fixed: same for every slice; "
            "minmax: per input tile, exact for ~128x128 nodule crops)"
        )
        for combo in (self.units_combo, self.lidc_combo):
            combo.currentIndexChanged.connect(self.set_intensity)
        form.addRow("Intensity", _row(self.units_combo, self.lidc_combo))
        self.card_label = QLabel("no model loaded")
        self.card_label.setWordWrap(True)
        self.card_label.setTextFormat(Qt.RichText)
        self.card_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        form.addRow(self.card_label)
        return box

    def _build_input(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = _form(box)
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._image_changed)
        form.addRow("Image", self.image_combo)
        self.scope_combo = QComboBox()
        self.scope_combo.currentIndexChanged.connect(lambda *_: self._update_enabled())
        form.addRow("Scope", self.scope_combo)
        self.roi_combo = QComboBox()
        self.roi_combo.setToolTip(
            "rectangle: last (or selected) shape of a Shapes layer; point: last (or "
            "selected) point of a Points layer with the size below"
        )
        new_roi = QPushButton("New")
        new_roi.setToolTip("add a Shapes layer aligned with the image, ready to draw a rectangle")
        new_roi.clicked.connect(self.new_roi_layer)
        form.addRow("ROI layer", _row(self.roi_combo, new_roi))
        self.size_spin = QDoubleSpinBox()
        self.size_spin.setRange(2.0, 1000.0)
        self.size_spin.setValue(40.0)
        self.size_spin.setSuffix(" mm")
        self.size_spin.setToolTip(
            "edge length (mm) of the cube around the clicked point that the model runs on; "
            "set it to the model's training field of view (see 'trained on' above)"
        )
        self.size_spin.valueChanged.connect(lambda *_: self._update_size_note())
        self.size_note = QLabel("")
        form.addRow("Point box edge", _row(self.size_spin, self.size_note))
        return box

    def _build_diversity(self) -> QWidget:
        w = QWidget()
        form = _form(w)
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 1000)
        self.n_spin.setValue(DEFAULT_SAMPLES)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        new_seed = QPushButton("New seed")
        new_seed.setToolTip("same seed = the same samples again; a new seed draws new ones")
        new_seed.clicked.connect(lambda: self.seed_spin.setValue(int(np.random.default_rng().integers(2**31 - 1))))
        form.addRow("Samples", self.n_spin)
        form.addRow("Seed", _row(self.seed_spin, new_seed))
        self.contours_check = QCheckBox("show all samples as contours")
        form.addRow(self.contours_check)
        self.sample_btn = QPushButton("Sample")
        self.sample_btn.clicked.connect(lambda: self.run(RunKind.SAMPLES))
        form.addRow(self.sample_btn)

        self.explorer_panel = ExplorerPanel(
            self.explorer,
            start_job=self._start_job,
            seed=self.seed_spin.value,
            n_samples=self.n_spin.value,
            status=self.status_text,
        )
        form.addRow(self.explorer_panel)
        return w

    def _build_persona(self) -> QWidget:
        w = QWidget()
        form = _form(w)
        self.expert_combo = QComboBox()
        form.addRow("Expert", self.expert_combo)
        self.persona_btn = QPushButton("Show persona")
        self.persona_btn.clicked.connect(lambda: self.run(RunKind.PERSONAS))
        form.addRow(self.persona_btn)
        self.rater_note = QLabel("")
        self.rater_note.setWordWrap(True)
        form.addRow(self.rater_note)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.RichText)
        form.addRow(self.legend)
        self.blend_box = QGroupBox("Blend two personas")
        self.blend_box.setToolTip("works on the 2D image or the current slice of a volume")
        bl = _form(self.blend_box)
        self.blend_i = QComboBox()
        self.blend_j = QComboBox()
        bl.addRow("From", self.blend_i)
        bl.addRow("To", self.blend_j)
        self.blend_slider = _hslider(0, 100, 50, tracking=False)
        self.blend_slider.valueChanged.connect(self.blend)
        self.blend_label = QLabel("t = 0.50")
        bl.addRow(self.blend_label, self.blend_slider)
        form.addRow(self.blend_box)
        return w

    def _build_uncertainty(self) -> QWidget:
        w = QWidget()
        form = _form(w)
        self.kind_combo = QComboBox()
        self.kind_combo.currentIndexChanged.connect(self._kind_changed)
        form.addRow("Kind", self.kind_combo)
        self.unc_btn = QPushButton("Compute uncertainty")
        self.unc_btn.setToolTip("uses the number of samples and the seed of the Diversity tab")
        self.unc_btn.clicked.connect(lambda: self.run(RunKind.UNCERTAINTY))
        form.addRow(self.unc_btn)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.contour_btn = QPushButton("Contour")
        self.contour_btn.clicked.connect(self.contour)
        form.addRow("Threshold", _row(self.threshold_spin, self.contour_btn))
        self.scores_label = QLabel("")
        self.scores_label.setWordWrap(True)
        form.addRow(self.scores_label)
        return w

    def showEvent(self, event) -> None:
        from ._docking import settle_dock

        settle_dock(self, "Model & sampling")
        super().showEvent(event)

    # ------------------------------------------------------------------ refresh
    def refresh_models(self) -> None:
        current = self.model_combo.currentText()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem(FILE_ITEM)
        self.model_combo.setItemData(0, "a .pt checkpoint file of your own (see File)", Qt.ToolTipRole)
        for name in available_models():
            self.model_combo.addItem(name)
            self.model_combo.setItemData(self.model_combo.count() - 1, model_info.name_purpose(name), Qt.ToolTipRole)
        idx = self.model_combo.findText(current)
        self.model_combo.setCurrentIndex(idx if idx >= 0 else (1 if self.model_combo.count() > 1 else 0))
        self.model_combo.blockSignals(False)
        self._preselect_model()
        self._model_choice_changed()

    def show_new_model(self, name: str) -> None:
        """A model was just written (Learn my style): list it, pick it and load it, so its personas
        (the new one included) are in the persona picker."""
        self.refresh_models()
        if self.model_combo.findText(name) >= 0:
            self._user_chose_model = True
            self.model_combo.setCurrentText(name)
            self.load_model()

    def _model_chosen_by_user(self, *_) -> None:
        self._user_chose_model = True

    def _model_choice_changed(self, *_) -> None:
        name = self.model_combo.currentText()
        self.purpose_label.setText(model_info.name_purpose(name) if name != FILE_ITEM else "your own checkpoint file")
        self._update_enabled()

    def _preselect_model(self) -> None:
        """Pre-select the model that fits the chosen image (phantom -> phantom_*, CT -> lidc_*)
        until the user picks one themselves."""
        layer = self.controller.image_layer
        if self._user_chose_model or layer is None or self.controller.engine is not None:
            return
        names = [self.model_combo.itemText(i) for i in range(1, self.model_combo.count())]
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        pick = model_info.pick_model(names, model_info.image_kind(layer.metadata, layer.name, data))
        if pick and pick != self.model_combo.currentText():
            self.model_combo.blockSignals(True)
            self.model_combo.setCurrentText(pick)
            self.model_combo.blockSignals(False)
            self._model_choice_changed()

    def refresh_layers(self, *_) -> None:
        from napari.layers import Image, Points, Shapes

        images = [ly for ly in self.viewer.layers if isinstance(ly, Image) and guidance.is_source_image(ly)]
        self._fill(self.image_combo, [ly.name for ly in images])
        self._fill(self.roi_combo, [ly.name for ly in self.viewer.layers if isinstance(ly, (Shapes, Points))])
        self._image_changed()

    @staticmethod
    def _fill(combo: QComboBox, names: list[str]) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        if current in names:
            combo.setCurrentIndex(names.index(current))
        combo.blockSignals(False)

    def _layer(self, name: str):
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _image_changed(self, *_) -> None:
        layer = self._layer(self.image_combo.currentText())
        if self.controller.set_image_layer(layer):  # proxied layers compare with same_layer
            self.explorer_panel.clear()
            if not self.controller.jobs.busy:
                self.status.setText("")  # a status about another input is stale now
            self._preselect_model()
        self._fill(self.scope_combo, [s.value for s in self.controller.scopes()])
        self._advise()
        self._update_enabled()

    def _spacing_yx(self):
        layer = self.controller.image_layer
        if layer is None or not guidance.spacing_known(layer):
            return None
        return tuple(abs(float(v)) for v in self.controller.geometry().scale_zyx[-2:])

    def input_advice(self) -> str | None:
        """Why the whole image is the wrong input for the loaded model (much larger than its
        training field of view), or None."""
        eng, layer = self.controller.engine, self.controller.image_layer
        if eng is None or layer is None:
            return None
        return model_info.input_advice(eng.field_of_view(), layer.data.shape[-2:], self._spacing_yx())

    def _advise(self) -> None:
        """Top hint: no usable image / no physical spacing / input much larger than the model's field of view."""
        layer = self.controller.image_layer
        parts = []
        if layer is None:
            parts.append(guidance.missing_image_hint(self.viewer))
        else:
            parts += [t for t in (guidance.spacing_warning(layer), self.input_advice()) if t]
        self.hint.setText("\n\n".join(parts))
        self.hint.setVisible(bool(parts))
        self._update_size_note()

    def _update_size_note(self) -> None:
        """'spans N slices' for the point box on the chosen image."""
        layer = self.controller.image_layer
        if layer is None or layer.ndim != 3 or not guidance.spacing_known(layer):
            self.size_note.setText("box edge" if layer is None or layer.ndim != 3 else "box edge (no spacing: px)")
            return
        dz = abs(float(self.controller.geometry().scale_zyx[0])) or 1.0
        depth = min(self.size_spin.value(), LESION_DEPTH_MM)
        n = max(1, min(int(round(depth / dz)), layer.data.shape[0]))
        self.size_note.setText(f"in-plane edge; {depth:g} mm deep: {n} slice(s) of {dz:g} mm")

    def use_roi_default(self) -> bool:
        """When the input is much larger than the model's field of view, make the ROI the default:
        scope 'region of interest', a ready Points layer to click the lesion in, and a box edge
        matching the training field of view. Returns True when it did."""
        if not self.input_advice():
            return False
        fov = self.controller.engine.field_of_view()
        self.size_spin.setValue(model_info.roi_size_mm(fov, self._spacing_yx(), self.size_spin.value()))
        if "mr roi point" in self.viewer.layers:
            self.roi_combo.setCurrentText("mr roi point")
        elif self._layer(self.roi_combo.currentText()) is None or self.roi_combo.currentText().startswith("mr "):
            self.new_point_layer()  # never an unrelated Points layer (e.g. an import's small nodules)
        self.scope_combo.setCurrentText(Scope.ROI.value)
        return True

    def _update_enabled(self) -> None:
        eng = self.controller.engine
        running = self.controller.jobs.busy
        ready = eng is not None and self.controller.image_layer is not None and not running
        caps = eng.capabilities if eng is not None else None
        self.sample_btn.setEnabled(ready)
        self.persona_btn.setEnabled(ready)
        self.unc_btn.setEnabled(ready)
        self.explorer_panel.set_enabled(ready and caps.latent_dim > 0)
        self.blend_box.setEnabled(ready and caps.blend)
        self.contour_btn.setEnabled(eng is not None)
        self.load_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.path_edit.setEnabled(self.model_combo.currentText() == FILE_ITEM)
        roi = self.scope_combo.currentText() == Scope.ROI.value
        self.roi_combo.setEnabled(roi)
        self.size_spin.setEnabled(roi)

    # ------------------------------------------------------------------ model
    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open checkpoint", "", "PyTorch checkpoints (*.pt *.pth);;All files (*)"
        )
        if path:
            self.path_edit.setText(path)
            self.model_combo.setCurrentIndex(0)

    def load_model(self, *_, sync: bool | None = None) -> bool:
        """Load the chosen model as a job with progress (``sync``: on this thread). Returns False
        when it could not start (or, synchronously, failed); errors become notifications."""
        choice = self.model_combo.currentText()
        target = self.path_edit.text().strip() if choice == FILE_ITEM else choice
        if not target:
            _notify("error", "choose a model or a checkpoint file first")
            return False

        def error(e):
            self.status.setText(f"cannot load model: {e}")
            _notify("error", f"Cannot load model: {e}")

        options = {
            "image_units": self.units_combo.currentText(),
            "lidc_mapping": self.lidc_combo.currentText(),
            "precision": self.precision_combo.currentText(),
        }
        job = self._start_job(
            "Cannot load model",
            lambda **cb: self.controller.start_load(
                target,
                self.device_combo.currentText(),
                options=options,
                on_done=self._model_loaded,
                on_error=error,
                sync=sync,
                **cb,
            ),
        )
        if job is not None and job.running:
            self.status.setText(f"loading {target}…")
        return job is not None and job.state != "failed"

    def _model_loaded(self, eng) -> None:
        self._n_warnings = len(eng.warnings)
        self._show_card()
        names = eng.rater_names
        self._fill(self.expert_combo, [ALL_EXPERTS, *names])
        self._fill(self.blend_i, names)
        self._fill(self.blend_j, names)
        if len(names) > 1:
            self.blend_j.setCurrentIndex(1)
        self._fill(self.kind_combo, eng.uncertainty_kinds())
        self.rater_note.setText(model_info.rater_note(eng.card))
        self.explorer_panel.clear()
        self._update_enabled()
        self.status.setText(f"loaded {eng.name} on {eng.device_message}")
        if self.use_roi_default():
            self.status.setText(f"loaded {eng.name}: click the lesion in 'mr roi point', then run")
        self._advise()

    def set_precision(self) -> None:
        """Apply the Precision choice to the loaded model (the next run uses it)."""
        eng = self.controller.engine
        if eng is None:
            return
        try:
            text = eng.set_precision(self.precision_combo.currentText())
        except ValueError as e:
            self.status.setText(f"precision not changed: {e}")
            return
        self._show_card()
        self.status.setText(f"precision: {text}")

    def _fit_width(self) -> None:
        """Widen the dock to its content (a rich-text card can be wider than the dock's first width)."""
        need = self._body.minimumSizeHint().width() + self._scroll.verticalScrollBar().sizeHint().width() + 4
        if need > self.minimumWidth():
            self.setMinimumWidth(min(need, 640))

    def _show_card(self) -> None:
        s = self.controller.engine.summary(self._spacing_yx())
        rows = "".join(
            f"<tr><td><b>{html.escape(k)}</b>&nbsp;</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in s.items()
            if k != "name"
        )
        self.card_label.setText(f"<b>{html.escape(s['name'])}</b><table>{rows}</table>")
        self._fit_width()
        self.lidc_combo.setEnabled(self.controller.engine.normalizer.model_units == "lidc_uint8")

    def set_intensity(self, *_) -> None:
        """Apply the Intensity combos to the loaded model (no reload needed)."""
        if self.controller.engine is None:
            return
        try:
            self.controller.set_intensity(self.units_combo.currentText(), self.lidc_combo.currentText())
        except ValueError as e:
            _notify("error", f"Intensity: {e}")
            return
        self._show_card()

    # ------------------------------------------------------------------ runs
    def request(self, kind: RunKind | str) -> RunRequest:
        """The typed request for ``kind`` from the dock's current choices."""
        return RunRequest(
            RunKind(kind),
            Scope(self.scope_combo.currentText() or Scope.WHOLE_IMAGE),
            n_samples=self.n_spin.value(),
            seed=self.seed_spin.value(),
            roi_layer=self._layer(self.roi_combo.currentText()),
            roi_size_mm=self.size_spin.value(),
            contours=self.contours_check.isChecked(),
            expert=self.expert_combo.currentText() or ALL_EXPERTS,
            uncertainty_kind=self.kind_combo.currentText() or "entropy",
        )

    def run(self, kind: RunKind | str, sync: bool | None = None):
        """Start a ``kind`` run as a job with progress; returns the :class:`Job` (None when it could
        not start; ``job.state`` tells how a synchronous run ended)."""
        kind = RunKind(kind)
        return self._start_job(
            f"Model {kind.value}",
            lambda **cb: self.controller.start(
                self.request(kind),
                on_done=lambda r: self._done(kind, r),
                on_error=lambda e: self._error(kind, e),
                on_cancelled=lambda: self.status.setText(f"{kind.value} cancelled; layers unchanged"),
                sync=sync,
                **cb,
            ),
        )

    def _start_job(self, what: str, start, **callbacks):
        """Start a job with ``start(on_progress=..., on_finished=..., **callbacks)`` on this dock's
        progress bar; returns the Job, or None (and an error notification) when it cannot start."""
        if self.controller.jobs.busy:  # the buttons are disabled meanwhile; scripts get told
            _notify("error", f"{what}: {self.controller.jobs.job.label} is still running: wait or cancel it")
            return None
        self.progress.setRange(0, 0)
        try:
            job = start(on_progress=self._progress, on_finished=self._finished, **callbacks)
        except (ValueError, OSError) as e:
            self.progress.setRange(0, 1)
            _notify("error", f"{what}: {e}")
            return None
        self._update_enabled()
        return job

    def status_text(self, text: str) -> None:
        self.status.setText(text)

    def _progress(self, item) -> None:
        if getattr(item, "total", None):
            self.progress.setRange(0, int(item.total))
            self.progress.setValue(int(item.done))
            self.progress.setFormat(f"%v/%m {item.message}")

    def show_earlier(self) -> None:
        shown = self.controller.show_earlier()
        self.earlier_btn.setEnabled(False)
        self.status.setText(f"showing {len(shown)} earlier output layer(s) again")

    def _legend(self, result) -> None:
        """Colour legend of the personas just shown (model: thick outlines; raters: thin)."""
        from .._napari.layers import persona_color

        names = list(result.personas_region)
        expert = self.expert_combo.currentText() or ALL_EXPERTS
        shown = names if expert == ALL_EXPERTS else [expert]
        items = " ".join(
            f'<span style="color:{persona_color(names.index(n))}">■</span>&nbsp;{html.escape(n)}'
            for n in shown
            if n in names
        )
        style = "thick outlines" if expert == ALL_EXPERTS else "filled"
        self.legend.setText(f"Model personas ({style}): {items}<br>Human raters: thin outlines")

    def _done(self, kind: RunKind, result) -> None:
        expert = self.expert_combo.currentText() or ALL_EXPERTS
        n_p = len(result.personas_region)
        persona_text = f"all {n_p} personas" if expert == ALL_EXPERTS else f"persona {expert} (1 of {n_p})"
        what = {
            RunKind.SAMPLES: f"{result.info.get('samples', 0)} sample(s)",
            RunKind.PERSONAS: persona_text,
            RunKind.UNCERTAINTY: f"{len(result.uncertainty_region)} map(s) from {result.info.get('samples', 0)} samples",
        }[kind]
        z = result.region[0] if len(result.region) == 3 else None
        where = ""
        if z is not None and z.stop - z.start < result.shape[0]:
            where = f", slice {z.start}" if z.stop - z.start == 1 else f", slices {z.start}-{z.stop - 1}"
        msg = f"{kind.value}: {what}, seed {result.info.get('seed')}{where}"
        if kind == RunKind.PERSONAS:
            self._legend(result)
        if self.controller.hidden_earlier:
            msg += f"; {len(self.controller.hidden_earlier)} earlier output layer(s) hidden"
        self.earlier_btn.setEnabled(bool(self.controller.hidden_earlier))
        presence = presence_summary(result.scores, z.start if z is not None else None)
        scores = other_scores(result.scores)
        lines = [presence_words(presence, kind == RunKind.PERSONAS)] if presence else []
        if presence:  # the status line stays in view when the dock is scrolled: the headline goes there too
            msg += f"; {presence['headline']}"
        if scores:
            text = ", ".join(f"{k} {float(np.mean(v)):.3f}" for k, v in scores.items())
            lines.append(f"image scores (mean over the computed slices): {text}")
            msg += f"; {text}"
        self.scores_label.setText("\n".join(lines))
        self.status.setText(msg)
        eng = self.controller.engine
        for w in eng.warnings[self._n_warnings :]:
            _notify("warning", w)
        self._n_warnings = len(eng.warnings)

    def _error(self, kind: RunKind, exc) -> None:
        self.status.setText(f"failed: {exc}")
        _notify("error", f"Model {kind.value} failed: {exc}")

    def _finished(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        if self.controller.dropped:  # the image went away / changed shape during the job
            self.status.setText(f"result not shown: {self.controller.dropped}")
        self._update_enabled()

    def cancel(self) -> None:
        self.controller.cancel()

    def _kind_changed(self, *_) -> None:
        """Show another kind from the last uncertainty result without recomputing."""
        res = self.controller.last.get(RunKind.UNCERTAINTY)
        kind = self.kind_combo.currentText()
        if res is not None and kind in res.uncertainty_region and self.controller.image_layer is not None:
            try:
                self.controller.show_uncertainty(res, kind)
            except ValueError:
                pass

    def contour(self) -> None:
        try:
            self.controller.uncertainty_contour(self.kind_combo.currentText(), self.threshold_spin.value())
        except ValueError as e:
            _notify("error", f"Uncertainty contour: {e}")

    def blend(self, *_) -> None:
        t = self.blend_slider.value() / 100.0
        self.blend_label.setText(f"t = {t:.2f}")
        if self.controller.engine is None or not self.controller.engine.capabilities.blend:
            return
        try:
            self.controller.blend(self.blend_i.currentIndex(), self.blend_j.currentIndex(), t, self.seed_spin.value())
        except ValueError as e:
            _notify("error", f"Persona blend: {e}")

    def new_roi_layer(self) -> None:
        from .._napari.layers import transform_kwargs

        img = self.controller.image_layer
        keep = ("scale", "translate", "rotate", "units", "axis_labels")
        kw = {k: v for k, v in transform_kwargs(img).items() if k in keep} if img else {}
        layer = self.viewer.add_shapes(
            name="mr roi",
            edge_color="#00e5ff",
            face_color="transparent",
            edge_width=1.5,
            ndim=img.ndim if img is not None else 2,
            **kw,
        )
        layer.mode = "add_rectangle"
        self.roi_combo.setCurrentText(layer.name)
        self.scope_combo.setCurrentText(Scope.ROI.value)

    def new_point_layer(self):
        """``mr roi point``: a Points layer on the image's grid in add mode: click the lesion."""
        from .._napari.layers import transform_kwargs

        img = self.controller.image_layer
        keep = ("scale", "translate", "rotate", "units", "axis_labels")
        kw = {k: v for k, v in transform_kwargs(img).items() if k in keep} if img else {}
        layer = self.viewer.add_points(  # a ring: the map under the click stays visible
            name="mr roi point",
            ndim=img.ndim if img is not None else 2,
            size=8,
            face_color="transparent",
            border_color="#00e5ff",
            border_width=0.12,
            border_width_is_relative=True,
            **kw,
        )
        layer.current_face_color = "transparent"  # points added later keep the look
        layer.current_border_color = "#00e5ff"
        layer.mode = "add"
        self.roi_combo.setCurrentText(layer.name)
        return layer
