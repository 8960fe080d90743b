""" "Collect annotations" dock: raters segment the cases of a project, one mask per rater.

A thin view over :class:`~napari_multirater._napari.annotate_controller.AnnotateController`.
Painting stays locked until a rater id is set (the id is remembered across sessions); blind mode
(default on) never shows other raters' masks; the mask is saved by the Save button, every N
seconds while there are unsaved edits (autosave) and whenever the case or rater changes, and
when the dock is closed or removed or the viewer window closes (emergency copy if that fails).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .._napari.annotate_controller import AnnotateController, AnnotateError, ConflictError
from ..datasets.case import DatasetError

__all__ = ["AnnotateDock"]

DONE_MARK = "✓"
TODO_MARK = "·"


def _local_time(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        return _dt.datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso


class _CloseWatcher(QObject):
    """Event filter living on the viewer's main window: save when the window closes; when the
    save and the emergency copy both failed, ask (Save as... / Discard / Cancel) and cancel the
    close unless the work was saved elsewhere or discarded; stop listening once the window is gone."""

    def __init__(self, window, dock):
        super().__init__(window)
        self.dock = dock
        controller = dock.controller
        window.installEventFilter(self)
        window.destroyed.connect(lambda *_: controller.disconnect())

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Close:
            if not self.dock.confirm_close():
                event.ignore()
                return True
            self.dock.remove_lock_files()  # the window closes: no hidden lock files left in the project
        return False


class AnnotateDock(QWidget):
    """Dock widget for annotation collection (see the module docstring)."""

    def __init__(self, napari_viewer, parent=None, identity_path=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._main_window = self._watcher = None
        self._docked = False
        self._closed = False
        self.controller = AnnotateController(napari_viewer, identity_path=identity_path)
        ident = self.controller.load_identity()
        self.controller.autosave_interval = ident.autosave_seconds
        self._build(ident.autosave_seconds)
        self.controller.on_edit = self._refresh_save_status
        self._napari_notify = self.controller.notify
        self.controller.notify = self._notify
        self.timer = QTimer(self)
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self.tick)
        self.timer.start()
        self.viewer.layers.events.inserted.connect(self._refresh_prefill_sources)
        self.viewer.layers.events.removed.connect(self._refresh_prefill_sources)
        if ident.rater_id:
            self.rater_edit.setText(ident.rater_id)
            self._run(lambda: self.controller.set_rater(ident.rater_id))
        if ident.last_project and (Path(ident.last_project) / "dataset.json").is_file():
            self._run(lambda: self.controller.open_project(ident.last_project))
        self.refresh()
        if self.controller.store is not None and ident.rater_id:  # a shared workstation: say whose it is
            self.show_status(
                f"Reopened {self.controller.store.name} as {ident.rater_id}, who used this computer last: "
                "if you are someone else, set your own rater id above before painting."
            )

    # --- layout ----------------------------------------------------------------------------------
    def _build(self, autosave_seconds: float) -> None:
        from ._docking import scrolling_body

        lay = QVBoxLayout(scrolling_body(self))  # scrolls instead of growing the window on small screens
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(6)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #ffb454")
        self.hint.setVisible(False)
        lay.addWidget(self.hint)

        who = QGroupBox("Rater")
        form = QHBoxLayout(who)
        self.rater_edit = QLineEdit()
        self.rater_edit.setPlaceholderText("your rater id, e.g. dr_smith")
        self.rater_edit.returnPressed.connect(self.apply_rater)
        self.rater_btn = QPushButton("Set")
        self.rater_btn.clicked.connect(self.apply_rater)
        form.addWidget(self.rater_edit, 1)
        form.addWidget(self.rater_btn)
        lay.addWidget(who)
        self.lock_label = QLabel()
        self.lock_label.setWordWrap(True)
        lay.addWidget(self.lock_label)

        proj = QGroupBox("Project")
        pl = QVBoxLayout(proj)
        self.project_label = QLabel("no project open")
        self.project_label.setWordWrap(True)
        self.project_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        pl.addWidget(self.project_label)
        row = QHBoxLayout()
        self.open_btn = QPushButton("Open…")
        self.open_btn.setToolTip("Open a project folder (a case-folder dataset with dataset.json)")
        self.open_btn.clicked.connect(self._choose_project)
        self.new_btn = QPushButton("New from image…")
        self.new_btn.setToolTip("Create a project folder from the selected image layer")
        self.new_btn.clicked.connect(self._choose_new_project)
        self.import_btn = QPushButton("Add images…")
        self.import_btn.setToolTip("Add image files (NIfTI, NRRD, MHA...) as new cases")
        self.import_btn.clicked.connect(self._choose_images)
        from ._help import help_button

        self.help_btn = help_button(self, "Collect annotations")
        for b in (self.open_btn, self.new_btn, self.import_btn, self.help_btn):
            row.addWidget(b)
        pl.addLayout(row)
        self.blind_box = QCheckBox("Blind mode (hide other raters' annotations)")
        self.blind_box.setChecked(True)
        self.blind_box.toggled.connect(lambda on: self._run(lambda: self.controller.set_blind(on)))
        pl.addWidget(self.blind_box)
        lay.addWidget(proj)

        cases = QWidget()
        cl = QVBoxLayout(cases)
        cl.setContentsMargins(4, 4, 4, 4)
        self.case_list = QListWidget()
        self.case_list.setMinimumHeight(60)
        self.case_list.setMaximumHeight(96)
        self.case_list.itemClicked.connect(self._case_clicked)
        cl.addWidget(self.case_list, 1)
        self.progress_label = QLabel()
        cl.addWidget(self.progress_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumHeight(8)
        cl.addWidget(self.progress_bar)
        nav = QHBoxLayout()
        self.prev_btn = QPushButton("◀ Previous")
        self.prev_btn.clicked.connect(self.previous_case)
        self.next_btn = QPushButton("Next ▶")
        self.next_btn.clicked.connect(lambda: self.next_case(False))
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.next_btn)
        cl.addLayout(nav)
        self.next_todo_btn = QPushButton("Next not annotated by me ▶▶")
        self.next_todo_btn.clicked.connect(lambda: self.next_case(True))
        cl.addWidget(self.next_todo_btn)
        from .collect_panel import CollectPanel  # Next case queue + Learn my style (issue 15)

        self.collect_panel = CollectPanel(self)
        # tabs keep the annotation controls and the status in view on a 1366x768 screen
        self.sections = QTabWidget()
        self.sections.addTab(cases, "Cases")
        self.sections.addTab(self.collect_panel, "Next case && my style")
        cases_height = cases.sizeHint().height() + self.sections.tabBar().sizeHint().height() + 8
        self.sections.currentChanged.connect(  # the Cases page stays compact, the queue gets its room
            lambda i: self.sections.setMaximumHeight(cases_height if i == 0 else 16777215)
        )
        self.sections.setMaximumHeight(cases_height)
        lay.addWidget(self.sections)

        work = QGroupBox("Annotation")
        wl = QFormLayout(work)
        wl.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        pre = QHBoxLayout()
        self.prefill_combo = QComboBox()
        self.prefill_combo.setToolTip("A Labels layer (e.g. a model persona) to start your mask from")
        self.prefill_btn = QPushButton("Pre-fill")
        self.prefill_btn.clicked.connect(self.prefill)
        self.all_marks_box = QCheckBox("all marks")
        self.all_marks_box.setToolTip(
            "Copy every mark of the chosen layer; unticked, only the lesion at the ROI point "
            "the model was run on (the component connected to the click) is copied"
        )
        pre.addWidget(self.prefill_combo, 1)
        pre.addWidget(self.all_marks_box)
        pre.addWidget(self.prefill_btn)
        wl.addRow("Start from:", pre)
        self.no_lesion_box = QCheckBox("No lesion in this case")
        self.no_lesion_box.setToolTip(
            "Save an empty mask on purpose; without this, Save refuses an empty mask "
            "(an untouched case is not marked done by accident)"
        )
        wl.addRow(self.no_lesion_box)
        save_row = QHBoxLayout()
        self.save_btn = QPushButton("Save")
        self.save_btn.clicked.connect(self.save)
        self.autosave_spin = QSpinBox()
        self.autosave_spin.setRange(0, 3600)
        self.autosave_spin.setSuffix(" s")
        self.autosave_spin.setSpecialValueText("off")
        self.autosave_spin.setValue(int(round(autosave_seconds)))
        self.autosave_spin.setToolTip("Autosave interval while there are unsaved edits (0 = off)")
        self.autosave_spin.valueChanged.connect(lambda v: self.controller.set_autosave_interval(float(v)))
        self.confirm_btn = QPushButton("Confirm")
        self.confirm_btn.setToolTip(
            "Accept the model pre-fill as your annotation as it is (an unedited, unconfirmed pre-fill "
            "is kept as a draft and not counted)"
        )
        self.confirm_btn.clicked.connect(self.confirm)
        save_row.addWidget(self.save_btn, 1)
        save_row.addWidget(self.confirm_btn)
        save_row.addWidget(QLabel("autosave"))
        save_row.addWidget(self.autosave_spin)
        wl.addRow(save_row)
        lay.addWidget(work)

        self.save_label = QLabel()
        self.save_label.setWordWrap(True)
        lay.addWidget(self.save_label)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._refresh_prefill_sources()

    # --- helpers ---------------------------------------------------------------------------------
    def _run(self, action, success: str | None = None):
        """Run a controller action; user-facing errors go to the status line, never raise."""
        try:
            result = action()
        except (AnnotateError, DatasetError, OSError) as e:
            self.show_status(str(e), error=True)
            self.refresh()
            return None
        self.show_status(success or "")
        self.refresh()
        return result

    def show_status(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #ff6b6b;" if error else "")
        self.status.setText(text)

    # --- actions (each callable from tests without dialogs) ---------------------------------------
    def apply_rater(self) -> None:
        rater = self.rater_edit.text().strip()
        self._run(lambda: self.controller.set_rater(rater), f"Annotating as {rater}.")

    def open_project(self, path) -> None:
        self._run(lambda: self.controller.open_project(path), f"Opened project {path}.")
        if self.controller.store is not None and self.controller.case_id is None:
            first = self.controller.store.case_ids()[:1]
            if first and self.controller.rater:
                self._run(lambda: self.controller.next_case(True) or self.controller.load_case(first[0]))

    def new_project_from_layer(self, path, image_layer=None) -> None:
        layer = image_layer or self._current_image_layer()
        self._run(lambda: self.controller.new_project_from_layer(path, layer), f"New project {path} with one case.")

    def import_images(self, paths) -> None:
        self._run(lambda: self.controller.import_images(paths), f"Added {len(paths)} image(s).")

    def load_case(self, case_id: str) -> None:
        self._run(lambda: self.controller.load_case(case_id))

    def next_case(self, unannotated_only: bool = False) -> None:
        def go():
            cid = self.controller.next_case(unannotated_only)
            if cid is None:
                raise AnnotateError("all cases are annotated by you" if unannotated_only else "this is the last case")

        self._run(go)

    def previous_case(self) -> None:
        def go():
            if self.controller.previous_case() is None:
                raise AnnotateError("this is the first case")

        self._run(go)

    def save(self) -> None:
        """Save; an empty mask only with "No lesion in this case" ticked (recorded in the provenance)."""
        c = self.controller
        if c.session is not None and c.annotation_layer is not None:
            empty = not np.any(np.asarray(c.annotation_layer.data))
            if empty and not self.no_lesion_box.isChecked():
                self.show_status(
                    "Nothing is painted: paint the lesion, or tick 'No lesion in this case' to "
                    "save an empty mask on purpose.",
                    error=True,
                )
                return
            if not empty and self.no_lesion_box.isChecked():
                self.show_status(
                    "'No lesion in this case' is ticked but the mask is not empty: untick it or clear the mask.",
                    error=True,
                )
                return
            if empty:
                c.session.provenance["no_lesion"] = True
            else:
                c.session.provenance.pop("no_lesion", None)
        try:
            self.controller.save("saved")
        except ConflictError as e:
            self.show_status(str(e), error=True)
            if self.ask_overwrite(str(e)):
                self._run(self.controller.overwrite, "Saved over the other session's version.")
            return
        except (AnnotateError, DatasetError, OSError) as e:
            self.show_status(str(e), error=True)
        else:
            self.show_status("")
        self.refresh()

    def ask_overwrite(self, message: str) -> bool:
        """Conflict: replace the other session's newer version with this one? (default No)."""
        answer = QMessageBox.question(
            self,
            "Annotation changed elsewhere",
            message + "\n\nOverwrite the other version with yours?",
            QMessageBox.Yes | QMessageBox.No,
            QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def ask_close(self, message: str) -> tuple[str, str | None]:
        """The save and the emergency copy failed: ``(choice, path)``, choice one of
        ``CLOSE_CHOICES`` (path only for ``save_as``). Tests replace this method."""
        box = QMessageBox(QMessageBox.Warning, "Unsaved annotation", message, parent=self)
        save_as = box.addButton("Save as…", QMessageBox.AcceptRole)
        discard = box.addButton("Discard", QMessageBox.DestructiveRole)
        box.addButton("Cancel", QMessageBox.RejectRole)
        box.exec_()
        if box.clickedButton() is save_as:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save your annotation as", "", "NIfTI (*.nii.gz);;NRRD (*.nrrd);;MetaImage (*.mha)"
            )
            return ("save_as", path) if path else ("cancel", None)
        return ("discard", None) if box.clickedButton() is discard else ("cancel", None)

    def confirm_close(self) -> bool:
        """The viewer window closes: save or rescue; True when it may close (see
        :func:`~napari_multirater._napari.annotate_controller.decide_close`)."""
        if self._closed:
            return True
        question = self.controller.prepare_close()
        while question is not None:
            choice, path = self.ask_close(question)
            if self.controller.resolve_close(choice, path):
                return True
            if choice == "cancel":
                return False
            question = self.controller.prepare_close()
        return True

    def prefill(self) -> None:
        name = self.prefill_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        everything = self.all_marks_box.isChecked()
        if self._run(lambda: self.controller.prefill_from_layer(layer, everything=everything)) is not None:
            self.show_status(self.controller.last_prefill)

    def confirm(self) -> None:
        """Accept the untouched pre-fill as the rater's annotation (saved, counted)."""
        self._run(self.controller.confirm, "Confirmed: the pre-fill is saved as your annotation.")

    def tick(self) -> None:
        """Timer: autosave when due, keep the status line current."""
        try:
            if self._main_window is None:
                self._watch_main_window()
            message = self.controller.autosave_tick()  # never raises
            if message:
                self.show_status(message, error=message.startswith("Autosave failed"))
            self._refresh_save_status()
        except RuntimeError:  # widget deleted while the viewer closes
            pass

    # --- closing ---------------------------------------------------------------------------------
    def _notify(self, message: str) -> None:
        try:
            self.show_status(message, error=True)
        except RuntimeError:  # widget already deleted
            pass
        self._napari_notify(message)

    def remove_lock_files(self) -> None:
        """Remove the project's idle lock files (held ones stay; the next save makes them again)."""
        if self.controller.store is not None:
            from ..annotation.lock import remove_idle_lock_files

            remove_idle_lock_files(self.controller.store.root)

    def teardown(self) -> None:
        """Dock closed or removed from the viewer: save unsaved work, stop the timer and listening."""
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        self.controller.close()
        self.remove_lock_files()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                ev.disconnect(self._refresh_prefill_sources)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self._watcher is not None:
            try:
                self._main_window.removeEventFilter(self._watcher)
                self._watcher.deleteLater()
            except RuntimeError:  # window already deleted
                pass
            self._main_window = self._watcher = None

    def closeEvent(self, event) -> None:
        self.teardown()
        super().closeEvent(event)

    def changeEvent(self, event) -> None:
        """napari's dock 'x' button (remove_dock_widget) re-parents this widget to None."""
        if event.type() == QEvent.ParentChange:
            if self.parentWidget() is not None:
                self._docked = True
                QTimer.singleShot(0, self._watch_main_window)  # once the dock is in the window
            elif self._docked:
                self.teardown()
        super().changeEvent(event)

    def showEvent(self, event) -> None:
        from ._docking import settle_dock

        self._watch_main_window()
        settle_dock(self, "Collect annotations")
        super().showEvent(event)

    def _watch_main_window(self) -> None:
        """Save when the viewer window closes; stop listening once it is gone."""
        try:
            w = self.parentWidget()
        except RuntimeError:  # deleted meanwhile
            return
        while w is not None and not isinstance(w, QMainWindow):
            w = w.parentWidget()
        if w is None or w is self._main_window or self._closed:
            return
        self._main_window, self._watcher = w, _CloseWatcher(w, self)

    # --- dialogs -----------------------------------------------------------------------------------
    def _choose_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open annotation project (folder with dataset.json)")
        if folder:
            self.open_project(folder)

    def _choose_new_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Empty folder for the new project")
        if folder:
            self.new_project_from_layer(folder)

    def _choose_images(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Add images as cases", "", "Medical images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd);;All files (*)"
        )
        if files:
            self.import_images(files)

    def _current_image_layer(self):
        active = self.viewer.layers.selection.active
        if active is not None and active.__class__.__name__ == "Image":
            return active
        images = [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Image"]
        return images[0] if len(images) == 1 else None

    def _case_clicked(self, item: QListWidgetItem) -> None:
        cid = item.data(Qt.UserRole)
        if cid and cid != self.controller.case_id:
            self.load_case(cid)

    # --- refresh -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        c = self.controller
        has_rater = bool(c.rater)
        has_project = c.store is not None
        self.lock_label.setText(
            f"Annotating as <b>{c.rater}</b>."
            if has_rater
            else "<b>Painting is locked</b> until you set your rater id."
        )
        self.project_label.setText(f"{c.store.name} — {c.store.root}" if has_project else "no project open")
        self.import_btn.setEnabled(has_project)
        self.case_list.blockSignals(True)
        self.case_list.clear()
        neutral = c.repeat and not c.announce_repeats  # an open repeat keeps no tell-tale check mark
        for cid, done in c.case_rows():
            done = done and not (neutral and cid == c.case_id)
            item = QListWidgetItem(f"{DONE_MARK if done else TODO_MARK}  {cid}")
            item.setData(Qt.UserRole, cid)
            self.case_list.addItem(item)
            if cid == c.case_id:
                self.case_list.setCurrentItem(item)
        self.case_list.blockSignals(False)
        done, total = c.progress()
        self.progress_label.setText(
            f"{done} of {total} cases done by {c.rater}" if has_rater else f"{total} cases (set your rater id)"
        )
        self.progress_bar.setMaximum(max(total, 1))
        self.progress_bar.setValue(done)
        for b in (self.prev_btn, self.next_btn):
            b.setEnabled(has_project)
        self.next_todo_btn.setEnabled(has_project and has_rater)
        can_edit = c.annotation_layer is not None
        for w in (self.save_btn, self.prefill_btn, self.prefill_combo, self.no_lesion_box, self.all_marks_box):
            w.setEnabled(can_edit)
        self.confirm_btn.setEnabled(can_edit and c.is_draft)
        self.no_lesion_box.setChecked(bool(c.session is not None and c.session.provenance.get("no_lesion")))
        self._refresh_prefill_sources()  # Pre-fill stays disabled while there is nothing to start from
        self._refresh_save_status()
        self.collect_panel.refresh()

    def _refresh_save_status(self) -> None:
        c = self.controller
        if c.session is None:
            self.save_label.setText(
                "Open a project, set your rater id, then paint with label 1."
                if c.case_id is None or not c.rater
                else ""
            )
            return
        s = c.session
        when = _local_time(s.last_saved)
        saved = f"{c.last_save_reason or 'last saved'} at {when}" if when else "not saved yet"
        state = "<b>unsaved edits</b>" if s.dirty else ("all saved" if when else "nothing painted yet")
        if c.is_draft:
            state += "; <b>draft</b>: an untouched model pre-fill, not counted until you edit it or press Confirm"
        self.save_label.setText(
            f"Case <b>{c.case_id}</b>: {state}; {saved}; active time {s.total_active_seconds:.0f} s."
        )

    def _refresh_prefill_sources(self, event=None) -> None:
        try:
            current = self.prefill_combo.currentText()
            names = [ly.name for ly in self.controller.prefill_sources()]
            self.prefill_combo.blockSignals(True)
            self.prefill_combo.clear()
            self.prefill_combo.addItems(names)
            if current in names:
                self.prefill_combo.setCurrentText(current)
            self.prefill_combo.blockSignals(False)
            can = self.controller.annotation_layer is not None
            self.prefill_btn.setEnabled(can and bool(names))
            self.prefill_btn.setToolTip(
                "copy the chosen layer into your mask (undoable)"
                if names
                else "nothing to start from yet: run a model on the case image "
                "(Model & sampling dock, image 'mr image: ...') first"
            )
            if self.controller.blind and self.controller.case_id is not None:
                self.controller._hide_foreign_raters(self.controller.case_id)  # also layers added later
            self._advise()
        except RuntimeError:  # widget deleted while the viewer closes
            pass

    def _advise(self) -> None:
        """Top hint: the case / selected image has no physical spacing (a plain reader opened it)."""
        from .._napari import guidance

        layer = self.controller.image_layer if self.controller.image_layer is not None else self._current_image_layer()
        text = guidance.spacing_warning(layer) if layer is not None and guidance.is_grey_image(layer) else None
        self.hint.setText(text or "")
        self.hint.setVisible(bool(text))
