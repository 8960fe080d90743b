"""Collect annotations dock, issue 15: Learn my style (worker with progress, loss, Cancel; the new
model shows up in the Model dock's model list and persona picker), the Next-case queue with the
project's target raters, and blind intra-rater repeats stored next to the first mask."""

from __future__ import annotations

import numpy as np
import pytest

from napari_multirater._napari.layers import layer_name
from napari_multirater.annotation.queue import collection_settings
from napari_multirater.annotation.repeats import has_repeat, load_repeat
from tests.conftest import make_annotation_project
from tests.test_persona_fit import make_style_project

pytestmark = pytest.mark.gui
PLUGIN = "napari-multirater"


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("NAPARI_MULTIRATER_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def _dock(viewer, rater, project):
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Collect annotations")
    dock.rater_edit.setText(rater)
    dock.rater_btn.click()
    dock.open_project(project)
    return dock


def _settle(qtbot, panel):
    """Wait until the worker thread has fully finished (it holds the viewer until then)."""
    from qtpy.QtCore import QThreadPool

    qtbot.waitUntil(lambda: panel.ctrl.job is None, timeout=60_000)
    QThreadPool.globalInstance().waitForDone(30_000)


def _paint(layer, rows, cols):
    rr, cc = np.mgrid[rows, cols]
    layer.data_setitem((rr.ravel(), cc.ravel()), 1)


def test_learn_my_style_in_a_worker_new_persona_in_the_model_dock(make_napari_viewer, qtbot, tmp_path, private_dirs):
    store = make_style_project(tmp_path / "proj", 8)
    viewer = make_napari_viewer()
    dock = _dock(viewer, "newbie", store.root)
    _, model_dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model & sampling")
    panel = dock.collect_panel
    assert panel.learn_btn.isEnabled() and not panel.cancel_btn.isEnabled()
    panel.model_combo.setCurrentText("phantom_pionono")
    panel.steps_spin.setValue(8)
    losses = []
    panel.learn_btn.click()
    assert panel.cancel_btn.isEnabled() and not panel.learn_btn.isEnabled()  # a worker runs it
    qtbot.waitUntil(lambda: losses.append(panel.loss_label.text()) or panel.learn_btn.isEnabled(), timeout=180_000)
    text = panel.result_label.text()
    assert "held-out Dice vs newbie on 3 case(s)" in text and "newbie:" in text, text
    assert any("loss" in s for s in losses) and panel.learn_progress.value() == 8
    new = private_dirs / "phantom_pionono+newbie.pt"
    assert new.is_file()
    assert panel.model_combo.findText("phantom_pionono+newbie") >= 0
    # the Model dock lists it, picks it and loads it: the new persona is in the persona picker
    qtbot.waitUntil(lambda: model_dock.expert_combo.findText("newbie") >= 0, timeout=60_000)
    assert model_dock.model_combo.currentText() == "phantom_pionono+newbie"
    _settle(qtbot, panel)


def test_cancel_learn_my_style_writes_nothing(make_napari_viewer, qtbot, tmp_path, private_dirs):
    store = make_style_project(tmp_path / "proj", 8)
    viewer = make_napari_viewer()
    panel = _dock(viewer, "newbie", store.root).collect_panel
    panel.model_combo.setCurrentText("phantom_pionono")
    panel.steps_spin.setValue(3000)
    panel.learn_btn.click()
    qtbot.waitUntil(lambda: "loss" in panel.loss_label.text(), timeout=120_000)
    panel.cancel_btn.click()
    qtbot.waitUntil(panel.learn_btn.isEnabled, timeout=60_000)
    assert "cancelled" in panel.result_label.text() and panel.learn_progress.value() < 3000
    assert not private_dirs.exists() or not list(private_dirs.glob("*.pt"))
    _settle(qtbot, panel)


def test_method_without_personas_is_refused_with_the_nearest_persona(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIRATER_NOTHREADS", "1")
    store = make_style_project(tmp_path / "proj", 6)
    viewer = make_napari_viewer()
    panel = _dock(viewer, "newbie", store.root).collect_panel
    offered = [panel.model_combo.itemText(i) for i in range(panel.model_combo.count())]
    assert "phantom_pionono" in offered and not [n for n in offered if n.startswith("lidc_") or "unet" in n]
    panel.model_combo.addItem("lidc_unet")  # as a model file the list cannot judge by its name
    panel.model_combo.setCurrentText("lidc_unet")
    panel.learn_btn.click()
    text = panel.result_label.text()
    assert "has no personas" in text and "closest output" in text and "Dice" in text, text


def test_queue_target_raters_and_blind_repeats_from_the_dock(make_napari_viewer, qtbot, tmp_path):
    store = make_annotation_project(tmp_path / "proj", 6)
    shape = store.load_image("lung0")[0].shape
    first = np.zeros(shape, np.uint8)
    first[40:60, 40:60] = 1
    for cid in ("lung0", "lung1"):
        store.save_mask(cid, "ann", first, provenance={"kind": "drawn"})
        store.save_mask(cid, "ben", first, provenance={"kind": "drawn"})
    viewer = make_napari_viewer()
    dock = _dock(viewer, "ann", store.root)
    panel = dock.collect_panel
    assert panel.status_label.text().startswith("0 of 6 cases have enough raters (target 3)")
    panel.target_spin.setValue(2)
    panel.repeat_spin.setValue(50)
    panel.gap_spin.setValue(1)
    panel.apply_settings()
    assert collection_settings(store) == {
        "target_raters": 2,
        "repeat_fraction": 0.5,
        "repeat_gap": 1,
        "announce_repeats": True,
    }
    assert panel.status_label.text().startswith("2 of 6 cases have enough raters (target 2)")
    entries = [panel.queue_list.item(i).text() for i in range(panel.queue_list.count())]
    # ann saved 2 cases: one repeat is due after 1 other case -> it comes first, then new cases
    assert len(entries) == 4 + 1 and "repeat (blind)" in entries[0] and "repeat" not in entries[1]
    assert not any("ben" in e or "disagreement" in e for e in entries)  # blind: the order only
    assert entries[1].endswith("lung2 — needs raters")
    # the repeat first: one of ann's own cases, opened empty and blind even with blind mode off
    dock.blind_box.setChecked(False)
    panel.announce_box.setChecked(False)  # test-retest: a repeat looks like any other case
    assert collection_settings(store)["announce_repeats"] is False
    assert "repeat" not in panel.queue_list.item(0).text()
    panel.next_btn.click()
    c = dock.controller
    rep_case = c.case_id
    assert c.repeat and rep_case in ("lung0", "lung1") and c.annotation_layer.data.sum() == 0
    assert c.annotation_layer.name == layer_name("annotation", "ann")
    assert dock.case_list.currentItem().text().startswith("·") and "repeat" not in dock.status.text()
    assert not [ly for ly in c.other_rater_layers() if ly.visible]
    _paint(c.annotation_layer, slice(42, 58), slice(42, 58))
    dock.save()
    assert has_repeat(store, rep_case, "ann")
    mask, side = load_repeat(store, rep_case, "ann")
    assert mask.sum() == 16 * 16 and side["repeat_of"] == "ann.nii.gz"
    kept, _ = store.load_mask(rep_case, "ann")
    assert np.array_equal(kept, first)  # the first mask is never overwritten
    # then the case that needs raters most: a normal case, others shown again (blind mode is off)
    panel.next_btn.click()
    assert c.case_id == "lung2" and not c.repeat and c.annotation_layer.data.sum() == 0
    _paint(c.annotation_layer, slice(10, 20), slice(10, 20))
    dock.save()
    assert store.has_mask("lung2", "ann") and rep_case not in [e.case_id for e in panel.ctrl.queue if e.repeat]


def test_compare_dock_dataset_report_shows_self_agreement(make_napari_viewer, tmp_path):
    from napari_multirater.annotation.repeats import save_repeat

    store = make_annotation_project(tmp_path / "proj", 3)
    shape = store.load_image("lung0")[0].shape
    a = np.zeros(shape, np.uint8)
    a[40:60, 40:60] = 1
    b = np.zeros(shape, np.uint8)
    b[42:62, 40:60] = 1
    for cid in ("lung0", "lung1"):
        store.save_mask(cid, "ann", a, provenance={"kind": "drawn"})
        store.save_mask(cid, "ben", b, provenance={"kind": "drawn"})
    save_repeat(store, "lung0", "ann", b, provenance={"kind": "drawn"})
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare raters")
    dock.run_dataset_report(store.root, tmp_path / "report", sync=True)
    assert dock.tabs.isTabEnabled(dock.self_tab_index)
    text = dock.self_label.text()
    assert "Self Dice" in text and "| ann | 1 | 0.900 |" in text and "| ben | 0 | – |" in text, text
    assert (tmp_path / "report" / "self_agreement.csv").is_file()
