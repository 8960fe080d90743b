"""The "Next case" and "Learn my style" panels of the Collect annotations dock (a thin view over
:class:`~napari_multirater._napari.collect_controller.CollectController`)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._napari.annotate_controller import AnnotateError
from .._napari.collect_controller import NO_MODEL, CollectController

REPEAT_MARK = "↻"


class CollectPanel(QWidget):
    """Queue (target raters, repeats, ranking) and Learn my style, under the dock's case list."""

    def __init__(self, dock, parent=None):
        super().__init__(parent)
        self.dock = dock
        self.ctrl = CollectController(dock.controller)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._build_queue())
        lay.addWidget(self._build_learn())
        self.refresh()

    # --- layout ------------------------------------------------------------------------------------
    def _build_queue(self) -> QGroupBox:
        box = QGroupBox("Next case (most useful first)")
        v = QVBoxLayout(box)
        self.status_label = QLabel("")
        v.addWidget(self.status_label)
        row = QHBoxLayout()
        self.target_spin = QSpinBox()
        self.target_spin.setRange(1, 50)
        self.target_spin.setToolTip("how many raters each case should have (a project setting)")
        self.repeat_spin = QSpinBox()
        self.repeat_spin.setRange(0, 100)
        self.repeat_spin.setSuffix(" %")
        self.repeat_spin.setToolTip("share of your own cases you are asked to redo, blind (intra-rater repeats)")
        self.gap_spin = QSpinBox()
        self.gap_spin.setRange(0, 1000)
        self.gap_spin.setToolTip("a repeat comes only after at least this many other cases")
        for label, w in (("target raters", self.target_spin), ("repeats", self.repeat_spin), ("after", self.gap_spin)):
            row.addWidget(QLabel(label))
            row.addWidget(w)
            w.editingFinished.connect(self.apply_settings)
        v.addLayout(row)
        self.announce_box = QCheckBox("say which cases are repeats")
        self.announce_box.setToolTip(
            "untick for test-retest designs: a repeat then looks like any other case (no mark, no "
            "'(repeat)' in the layer name); it is still saved as a repeat"
        )
        self.announce_box.toggled.connect(lambda *_: self.apply_settings())
        v.addWidget(self.announce_box)
        rank = QHBoxLayout()
        self.rank_combo = QComboBox()
        self.rank_combo.setToolTip("rank the open cases by this model's disagreement (computed once per image, cached)")
        self.rank_btn = QPushButton("Rank")
        self.rank_btn.clicked.connect(self.rank)
        rank.addWidget(QLabel("by"))
        rank.addWidget(self.rank_combo, 1)
        rank.addWidget(self.rank_btn)
        v.addLayout(rank)
        self.queue_list = QListWidget()
        self.queue_list.setMaximumHeight(130)
        self.queue_list.itemDoubleClicked.connect(self._entry_clicked)
        v.addWidget(self.queue_list)
        self.next_btn = QPushButton("Open next in queue ▶")
        self.next_btn.clicked.connect(self.open_next)
        v.addWidget(self.next_btn)
        return box

    def _build_learn(self) -> QGroupBox:
        box = QGroupBox("Learn my style")
        v = QVBoxLayout(box)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("the model that gets a new persona for you (it is copied, never changed)")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(5, 5000)
        self.steps_spin.setValue(150)
        self.steps_spin.setSuffix(" steps")
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.steps_spin)
        v.addLayout(row)
        row2 = QHBoxLayout()
        self.learn_btn = QPushButton("Learn my style")
        self.learn_btn.setToolTip("fit a new persona from the cases you saved (20% held out to score it)")
        self.learn_btn.clicked.connect(self.learn)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.ctrl.cancel)
        row2.addWidget(self.learn_btn, 1)
        row2.addWidget(self.cancel_btn)
        v.addLayout(row2)
        self.learn_progress = QProgressBar()
        self.learn_progress.setRange(0, 1)
        self.learn_progress.setValue(0)
        v.addWidget(self.learn_progress)
        self.loss_label = QLabel("")
        v.addWidget(self.loss_label)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        v.addWidget(self.result_label)
        return box

    # --- actions -------------------------------------------------------------------------------------
    def _run(self, action) -> bool:
        try:
            action()
        except (AnnotateError, ValueError, OSError) as e:
            self.dock.show_status(str(e), error=True)
            return False
        return True

    def apply_settings(self) -> None:
        if self.ctrl.store is None:
            return
        self._run(
            lambda: self.ctrl.set_settings(
                target_raters=self.target_spin.value(),
                repeat_fraction=self.repeat_spin.value() / 100.0,
                repeat_gap=self.gap_spin.value(),
                announce_repeats=self.announce_box.isChecked(),
            )
        )
        self.refresh()

    def open_next(self) -> None:
        def go():
            entry = self.ctrl.open_next()
            self.dock.show_status(
                "nothing left to annotate"
                if entry is None
                else f"{entry.case_id}: "
                + ("repeat, drawn blind" if entry.repeat and self.announce_box.isChecked() else entry.reason)
            )

        self._run(go)
        self.dock.refresh()

    def _entry_clicked(self, item: QListWidgetItem) -> None:
        rank = item.data(Qt.UserRole)
        entry = next((e for e in self.ctrl.queue if e.rank == rank), None)
        if entry is not None:
            self._run(lambda: self.ctrl.open_entry(entry))
            self.dock.refresh()

    def rank(self) -> None:
        model = self.rank_combo.currentText()

        def start():
            self.rank_btn.setEnabled(False)
            self.ctrl.start(
                self.ctrl.iter_rank_by_model(model),
                "Ranking cases",
                on_done=lambda _q: self.refresh(),
                on_error=lambda e: self.dock.show_status(f"ranking failed: {e}", error=True),
                on_finished=lambda: self.rank_btn.setEnabled(True),
            )

        self._run(start)

    def learn(self) -> None:
        model = self.model_combo.currentText()
        steps = self.steps_spin.value()

        def start():
            gen = self.ctrl.iter_learn(model, steps)
            self.learn_btn.setEnabled(False)
            self.cancel_btn.setEnabled(True)
            self.learn_progress.setRange(0, steps)
            self.learn_progress.setValue(0)
            self.result_label.setText("")
            self.ctrl.start(
                gen,
                "Learn my style",
                on_done=self._learned,
                on_error=self._learn_failed,
                on_progress=self._progress,
                on_finished=self._learn_finished,
            )

        self._run(start)

    def _progress(self, item) -> None:
        if item.total:
            self.learn_progress.setRange(0, item.total)
            self.learn_progress.setValue(min(item.done, item.total))
        if self.ctrl.last_loss is not None and "loss" in item.message:
            self.loss_label.setText(f"loss {self.ctrl.last_loss:.4f} (step {item.done})")
        elif item.message:
            self.loss_label.setText(item.message)

    def _learned(self, report) -> None:
        if not report:
            return
        if report.get("cancelled") or report.get("refused"):
            lines = [report.get("text", "")]
            for name, d in (report.get("dice") or {}).items():
                lines.append(f"{name}: Dice {d:.3f}")
            self.result_label.setText("\n".join(lines))
            return
        if report.get("final_loss") is not None:
            self.loss_label.setText(
                f"done: {report['steps']} steps, final loss {report['final_loss']:.4f}, "
                f"{report.get('wall_seconds', 0):.0f} s"
            )
        rows = [
            f"{n}: {d:.3f}" + ("  ← new" if n == report["persona"] else "") for n, d in report["held_out_dice"].items()
        ]
        self.result_label.setText(
            report["text"] + "\n" + "\n".join(rows) + f"\nsaved as model {report['out'].rsplit('/', 1)[-1][:-3]}"
        )
        self.refresh()
        self.ctrl.announce(report)  # the Model dock lists, picks and loads it

    def _learn_failed(self, e) -> None:
        self.result_label.setText(f"Learn my style failed: {e}")

    def _learn_finished(self) -> None:
        self.learn_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if self.ctrl.last_report and self.ctrl.last_report.get("cancelled"):
            self.result_label.setText(self.ctrl.last_report["text"])

    # --- refresh ---------------------------------------------------------------------------------------
    def _fill_models(self, combo: QComboBox, first: str | None = None, names: list[str] | None = None) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        if first:
            combo.addItem(first)
        combo.addItems(self.ctrl.model_choices() if names is None else names)
        idx = combo.findText(current)
        if idx >= 0:
            combo.setCurrentIndex(idx)
        combo.blockSignals(False)

    def refresh(self) -> None:
        try:
            c = self.ctrl
            ready = c.store is not None and bool(c.annotate.rater)
            self._fill_models(self.rank_combo, NO_MODEL)
            self._fill_models(self.model_combo, names=c.learn_choices())  # personas, this kind of image
            for w in (self.next_btn, self.rank_btn, self.target_spin, self.repeat_spin, self.gap_spin):
                w.setEnabled(
                    c.store is not None and (ready or w in (self.target_spin, self.repeat_spin, self.gap_spin))
                )
            if c.job is None:
                self.learn_btn.setEnabled(ready)
            if c.store is None:
                self.status_label.setText("open a project to see which cases need raters")
                self.queue_list.clear()
                return
            s = c.settings()
            for spin, v in (
                (self.target_spin, s["target_raters"]),
                (self.repeat_spin, round(100 * s["repeat_fraction"])),
                (self.gap_spin, s["repeat_gap"]),
            ):
                spin.blockSignals(True)
                spin.setValue(int(v))
                spin.blockSignals(False)
            self.announce_box.blockSignals(True)
            self.announce_box.setChecked(bool(s["announce_repeats"]))
            self.announce_box.blockSignals(False)
            self.status_label.setText(c.status_text())
            self.queue_list.clear()
            if not ready:
                return
            blind = c.annotate.blind  # blind: the order only, no scores computed from others' masks
            for e in c.refresh_queue():
                if e.repeat and s["announce_repeats"]:
                    text = f"{e.rank}. {REPEAT_MARK} {e.case_id} — repeat (blind)"
                elif e.repeat:  # neutral: a repeat looks like any other case
                    text = f"{e.rank}. {e.case_id}"
                elif blind:
                    text = f"{e.rank}. {e.case_id}" + (" — needs raters" if e.needs_raters else "")
                else:
                    text = f"{e.rank}. {e.case_id} — {e.reason}"
                item = QListWidgetItem(text)
                item.setData(Qt.UserRole, e.rank)
                self.queue_list.addItem(item)
        except RuntimeError:  # widget deleted while the viewer closes
            pass
