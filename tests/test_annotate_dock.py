"""'Collect annotations' dock: two raters annotate in turn, blind mode, saving, pre-fill
(headless napari via pytest-xvfb)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication

from napari_multirater._napari.annotate_controller import OWNER_KEY, AnnotateController, AnnotateError
from napari_multirater._napari.layers import ROLE_KEY, layer_name, same_layer
from napari_multirater.annotation import AnnotationStore, RaterIdentity
from napari_multirater.datasets.case_folder import CaseFolderDataset
from napari_multirater.datasets.phantom import make_phantom_case
from napari_multirater.io.medical import read_label_image
from tests.conftest import make_annotation_project

pytestmark = pytest.mark.gui

PLUGIN = "napari-multirater"
SCREENSHOTS = Path(__file__).parent / "_screenshots"


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    """Rater identity goes to a private config folder, never the user's."""
    monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", str(tmp_path / "config"))
    return tmp_path / "config" / "rater.json"


@pytest.fixture
def project(tmp_path) -> AnnotationStore:
    return make_annotation_project(tmp_path / "project", 3)


def _dock(viewer):
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Collect annotations")
    return dock


def _set_rater(dock, rater):
    dock.rater_edit.setText(rater)
    dock.rater_btn.click()


def _paint(layer, rows, cols):
    """Paint label 1 into a rectangle the way a brush does (through the undo history)."""
    rr, cc = np.mgrid[rows, cols]
    layer.data_setitem((rr.ravel(), cc.ravel()), 1)


def _labels_holding(viewer, mask) -> list[str]:
    return [
        ly.name
        for ly in viewer.layers
        if ly.__class__.__name__ == "Labels" and ly.data.shape == mask.shape and np.array_equal(ly.data != 0, mask != 0)
    ]


def test_two_raters_annotate_the_same_case_blind(make_napari_viewer, qtbot, project, config):
    viewer = make_napari_viewer()
    dock = _dock(viewer)
    ctl = dock.controller
    assert "Painting is locked" in dock.lock_label.text()
    dock.open_project(project.root)
    assert dock.case_list.count() == 3 and "3 cases" in dock.progress_label.text()

    # without a rater id: the image can be looked at, but there is nothing to paint and no saving
    dock.load_case("lung0")
    image = viewer.layers[layer_name("image", "lung0")]
    assert ctl.annotation_layer is None
    assert not any(ly.__class__.__name__ == "Labels" for ly in viewer.layers)
    assert not dock.save_btn.isEnabled()
    with pytest.raises(AnnotateError, match="rater id"):
        ctl.save()
    dock.save()
    assert "rater id" in dock.status.text()
    _set_rater(dock, "not valid!")
    assert "invalid rater id" in dock.status.text() and ctl.rater is None

    # rater 1 paints and saves
    _set_rater(dock, "alice")
    own = viewer.layers[layer_name("annotation", "alice")]
    assert same_layer(own, ctl.annotation_layer) and own.editable and own.mode == "paint"
    assert own.data.shape == image.data.shape and not own.data.any()
    np.testing.assert_allclose(own.scale, image.scale)
    np.testing.assert_allclose(own.translate, image.translate)
    assert "Annotating as <b>alice</b>" in dock.lock_label.text()
    phantom = make_phantom_case(0, seed=3, ndim=2)  # the same image: its simulated raters' outlines
    own.data_setitem(np.nonzero(phantom.masks[0]), 1)
    assert ctl.dirty and "unsaved edits" in dock.save_label.text()
    alice_mask = (own.data != 0).astype(np.uint8)
    dock.save_btn.click()
    assert not ctl.dirty and "all saved" in dock.save_label.text()
    assert RaterIdentity.load().rater_id == "alice"
    assert "1 of 3 cases done by alice" in dock.progress_label.text()
    assert dock.case_list.item(0).text().startswith("✓")

    # rater 2 takes over the same case: blind mode shows nothing of alice's work
    _set_rater(dock, "bob")
    assert layer_name("annotation", "alice") not in viewer.layers
    own = viewer.layers[layer_name("annotation", "bob")]
    assert not own.data.any()
    assert _labels_holding(viewer, alice_mask) == []
    assert not any((ly.metadata or {}).get("rater") == "alice" for ly in viewer.layers)
    assert ctl.other_rater_layers() == []
    own.data_setitem(np.nonzero(phantom.masks[1]), 1)
    bob_mask = (own.data != 0).astype(np.uint8)
    # switching case saves automatically
    dock.next_btn.click()
    assert ctl.case_id == "lung1" and layer_name("image", "lung1") in viewer.layers
    assert layer_name("image", "lung0") not in viewer.layers  # one case at a time, no stale layers
    assert "1 of 3 cases done by bob" in dock.progress_label.text()

    # unblinded, the other rater's mask is shown as a read-only contour
    dock.load_case("lung0")
    dock.blind_box.setChecked(False)
    other = viewer.layers[layer_name("rater", "alice")]
    assert other.contour == 1 and not other.editable and np.array_equal(other.data, alice_mask)
    assert same_layer(viewer.layers.selection.active, ctl.annotation_layer)
    np.testing.assert_allclose(other.scale, image.scale)
    dock.blind_box.setChecked(True)
    assert layer_name("rater", "alice") not in viewer.layers and _labels_holding(viewer, alice_mask) == []

    # reload from disk (new store object): identical masks and geometry
    store = AnnotationStore(project.root)
    for rater, expected in (("alice", alice_mask), ("bob", bob_mask)):
        mask, side = store.load_mask("lung0", rater)
        np.testing.assert_array_equal(mask, expected)
        assert side["provenance"] == {"kind": "drawn"} and side["active_seconds"] >= 0
        _, geo, _ = read_label_image(project.case_dir("lung0") / "raters" / f"{rater}.nii.gz")
        assert geo.matches(store.load_image("lung0")[1])
    assert store.raters() == ["alice", "bob"]
    ds = CaseFolderDataset(project.root)
    case = ds.load_case("lung0")
    assert case.valid.tolist() == [True, True]
    np.testing.assert_array_equal(case.masks[0], alice_mask)
    # the saved mask is loaded back into the viewer for its rater
    np.testing.assert_array_equal(ctl.annotation_layer.data, bob_mask)

    # the identity is remembered: a new dock starts as bob, painting unlocked
    viewer2 = make_napari_viewer()
    dock2 = _dock(viewer2)
    assert dock2.rater_edit.text() == "bob" and dock2.controller.rater == "bob"
    assert dock2.controller.store is not None and Path(dock2.controller.store.root) == Path(project.root).resolve()

    # screenshot of the dock in use: bob's saved outline of lung0, blind mode on
    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.reset_view()
    for _ in range(5):  # layout settles before the screenshot (no fixed wait)
        QApplication.processEvents()
    dock.tick()
    shot = viewer.screenshot(str(SCREENSHOTS / "annotate_dock.png"), canvas_only=False)
    assert shot.shape[0] > 500


def test_next_not_annotated_autosave_and_prefill(project, collect_dock):
    viewer, dock = collect_dock(project, "carol")
    ctl = dock.controller
    assert ctl.case_id == "lung0"  # opening a project goes to the first case not annotated by me
    _paint(ctl.annotation_layer, slice(10, 20), slice(10, 20))
    dock.save()
    dock.next_todo_btn.click()
    assert ctl.case_id == "lung1"

    # autosave: not due right away, due once the interval passed with unsaved edits
    dock.autosave_spin.setValue(5)
    assert ctl.session.autosave_interval == 5
    _paint(ctl.annotation_layer, slice(30, 40), slice(30, 40))
    assert ctl.autosave_if_due() is None
    side = ctl.autosave_if_due(now=ctl.clock() + 6)
    assert side is not None and ctl.last_save_reason == "autosaved" and not ctl.dirty
    dock.tick()
    assert "autosaved at" in dock.save_label.text()

    # pre-fill from a model output; other raters' layers are never offered
    case = make_phantom_case(1, seed=3, ndim=2)
    persona = viewer.add_labels(
        case.masks[1],
        name="persona generous",
        scale=ctl.image_layer.scale,
        metadata={ROLE_KEY: "persona", "model": "dpersona-tiny", "persona": "generous"},
    )
    viewer.add_labels(case.masks[0], name="someone else", metadata={ROLE_KEY: "rater", "rater": "x"})
    dock.refresh()
    offered = [dock.prefill_combo.itemText(i) for i in range(dock.prefill_combo.count())]
    assert offered[0] == "persona generous" and "someone else" not in offered
    assert layer_name("annotation", "carol") not in offered
    with pytest.raises(AnnotateError, match="another rater"):
        ctl.prefill_from_layer(viewer.layers["someone else"])
    dock.prefill_combo.setCurrentText("persona generous")
    dock.prefill_btn.click()
    np.testing.assert_array_equal(ctl.annotation_layer.data != 0, persona.data != 0)
    assert ctl.session.provenance["kind"] == "prefilled" and ctl.session.provenance["edited"] is False
    ctl.annotation_layer.undo()  # the pre-fill is undoable ...
    assert (ctl.annotation_layer.data != 0).sum() == 100
    ctl.annotation_layer.redo()
    _paint(ctl.annotation_layer, slice(0, 3), slice(0, 3))  # ... and then edited
    dock.save()
    mask, side = AnnotationStore(project.root).load_mask("lung1", "carol")
    prov = side["provenance"]
    assert prov["kind"] == "prefilled" and prov["edited"] is True
    assert prov["model"] == "dpersona-tiny" and prov["persona"] == "generous" and prov["layer"] == "persona generous"
    assert mask[:3, :3].all() and mask.sum() == ((persona.data != 0) | (np.indices(mask.shape).max(0) < 3)).sum()

    # deleting the annotation layer saves unsaved work first
    _paint(ctl.annotation_layer, slice(100, 105), slice(100, 105))
    expected = (ctl.annotation_layer.data != 0).astype(np.uint8)
    viewer.layers.remove(ctl.annotation_layer)
    np.testing.assert_array_equal(AnnotationStore(project.root).load_mask("lung1", "carol")[0], expected)
    dock.save()
    assert "removed" in dock.status.text()


def test_new_project_from_open_image_and_foreign_layers_hidden(make_napari_viewer, tmp_path, collect_dock):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom_2d")
    image = viewer.layers[0]
    viewer, dock = collect_dock(rater="dave", viewer=viewer)
    dock.new_project_from_layer(tmp_path / "new", image)
    ctl = dock.controller
    store = AnnotationStore(tmp_path / "new")
    assert store.case_ids() == [image.name] and ctl.case_id == image.name
    np.testing.assert_array_equal(store.load_image(image.name)[0], image.data)
    np.testing.assert_allclose(ctl.annotation_layer.scale, image.scale)
    # the sample's rater layers belong to the same image: hidden in blind mode
    sample_raters = [
        ly
        for ly in viewer.layers
        if (ly.metadata or {}).get(ROLE_KEY) == "rater" and not (ly.metadata or {}).get(OWNER_KEY)
    ]
    assert len(sample_raters) == 4
    assert all(not ly.visible for ly in sample_raters if ly.metadata.get("case_id") == image.metadata.get("case_id"))
    _paint(ctl.annotation_layer, slice(5, 9), slice(5, 9))
    ctl.save()
    assert store.progress("dave") == (1, 1)
    dock.new_project_from_layer(tmp_path / "new", image)  # refuses to overwrite
    assert "already exists" in dock.status.text()


def test_controller_refuses_to_save_onto_a_changed_image(make_napari_viewer, project):
    viewer = make_napari_viewer()
    ctl = AnnotateController(viewer)
    ctl.open_project(project.root)
    ctl.set_rater("erin")
    ctl.load_case("lung2")
    _paint(ctl.annotation_layer, slice(1, 5), slice(1, 5))
    ctl.session.image_sha256 = "f" * 64  # the mask was drawn on another version of the image
    with pytest.raises(AnnotateError, match="different image"):
        ctl.save()
    assert not project.has_mask("lung2", "erin")
    ctl.disconnect()


# --- review fixes: undo, closing, failed saves, broken files, lock timeouts, blinding ---------------
def _saved(store, case, rater):
    return AnnotationStore(store.root).load_mask(case, rater)[0]


def _controller(viewer, project, rater="fay", case="lung0"):
    ctl = AnnotateController(viewer)
    ctl.open_project(project.root)
    ctl.set_rater(rater)
    ctl.load_case(case)
    return ctl


def test_undo_after_save_is_saved_by_autosave_and_case_switch(make_napari_viewer, project):
    viewer = make_napari_viewer()
    ctl = _controller(viewer, project)
    _paint(ctl.annotation_layer, slice(10, 20), slice(10, 20))
    ctl.save()
    ctl.annotation_layer.undo()  # napari 0.9: no paint/data event
    assert not ctl.annotation_layer.data.any()
    assert ctl.autosave_if_due(now=ctl.clock() + ctl.autosave_interval + 1) is not None
    assert not _saved(project, "lung0", "fay").any()

    ctl.annotation_layer.redo()
    ctl.save()
    ctl.annotation_layer.undo()
    ctl.load_case("lung1")  # case switch
    assert not _saved(project, "lung0", "fay").any()
    ctl.load_case("lung0")  # reloading shows the undone state, not the undone content
    assert not ctl.annotation_layer.data.any()

    _paint(ctl.annotation_layer, slice(1, 4), slice(1, 4))
    ctl.save()
    ctl.annotation_layer.undo()
    ctl.set_rater("gil")  # rater change
    assert not _saved(project, "lung0", "fay").any()
    # unchanged since the last save (painted, then undone): nothing is written
    _paint(ctl.annotation_layer, slice(1, 4), slice(1, 4))
    ctl.annotation_layer.undo()
    assert ctl.save_if_dirty() is None and not ctl.dirty
    assert ctl.autosave_if_due(now=ctl.clock() + ctl.autosave_interval + 1) is None
    assert not project.has_mask("lung0", "gil")
    ctl.disconnect()


def test_removing_the_dock_saves_and_stops_listening(project, collect_dock):
    viewer, dock = collect_dock(project, "hal")
    ctl = dock.controller
    _paint(ctl.annotation_layer, slice(5, 15), slice(5, 15))
    expected = (ctl.annotation_layer.data != 0).astype(np.uint8)
    viewer.window.remove_dock_widget(dock)  # what napari's 'x' button on the dock does
    np.testing.assert_array_equal(_saved(project, ctl.case_id, "hal"), expected)
    assert not dock.timer.isActive()
    _paint(ctl.annotation_layer, slice(30, 40), slice(30, 40))
    viewer.layers.remove(ctl.annotation_layer)  # disconnected: no longer saved by the dock
    np.testing.assert_array_equal(_saved(project, ctl.case_id, "hal"), expected)


def test_closing_the_viewer_window_saves(project, collect_dock):
    viewer, dock = collect_dock(project, "ida")
    QApplication.processEvents()  # the dock looks for its main window once it is docked
    ctl = dock.controller
    _paint(ctl.annotation_layer, slice(5, 15), slice(5, 15))
    expected = (ctl.annotation_layer.data != 0).astype(np.uint8)
    case = ctl.case_id
    viewer.window.close()  # closes the Qt window; the layers stay (no layer-removal save)
    assert not list(project.root.rglob(".*.lock"))  # no lock files left once the window closed
    np.testing.assert_array_equal(_saved(project, case, "ida"), expected)


def test_closing_the_dock_widget_saves(project, collect_dock):
    viewer, dock = collect_dock(project, "jo")
    ctl = dock.controller
    _paint(ctl.annotation_layer, slice(2, 6), slice(2, 6))
    expected = (ctl.annotation_layer.data != 0).astype(np.uint8)
    dock.close()
    np.testing.assert_array_equal(_saved(project, ctl.case_id, "jo"), expected)


def test_failed_save_on_layer_removal_leaves_an_emergency_copy(project, collect_dock):
    viewer, dock = collect_dock(project, "kim")
    notes = []
    dock._napari_notify = notes.append  # napari's error notification
    ctl = dock.controller
    for k, break_it in enumerate(("checksum", "lock")):
        ctl.load_case(f"lung{k}")
        _paint(ctl.annotation_layer, slice(3, 9 + k), slice(3, 9))
        expected = (ctl.annotation_layer.data != 0).astype(np.uint8)
        if break_it == "checksum":
            ctl.session.image_sha256 = "f" * 64
        else:
            ctl.store.lock_timeout = 0.05
        with project._rater_lock(ctl.case_id, "kim"):
            viewer.layers.remove(ctl.annotation_layer)
        rescue = project.emergency_folders(ctl.case_id)[0]  # the user config folder
        copies = sorted(rescue.glob("kim.unsaved-*.nii.gz"))
        assert len(copies) == 1 and len(notes) == k + 1
        np.testing.assert_array_equal(read_label_image(copies[0])[0], expected)
        assert str(copies[0]) in notes[-1] and str(copies[0]) in dock.status.text()
        assert ("different image" if break_it == "checksum" else "lock") in notes[-1]
        assert not project.has_mask(ctl.case_id, "kim")


def test_broken_own_mask_is_moved_aside_not_overwritten(make_napari_viewer, project):
    viewer = make_napari_viewer()
    ctl = _controller(viewer, project, "lee", "lung1")
    _paint(ctl.annotation_layer, slice(3, 9), slice(3, 9))
    ctl.save()
    rdir = project.case_dir("lung1") / "raters"
    side = json.loads((rdir / "lee.json").read_text())
    side["image_sha256"] = "0" * 64  # ChecksumMismatch on load
    (rdir / "lee.json").write_text(json.dumps(side))
    mask_bytes = (rdir / "lee.nii.gz").read_bytes()
    with pytest.raises(AnnotateError, match=r"moved to .*\.broken"):
        ctl.load_case("lung1")
    assert not ctl.annotation_layer.data.any()  # a fresh mask ...
    _paint(ctl.annotation_layer, slice(20, 22), slice(20, 22))
    ctl.save()  # ... whose save cannot destroy the old work
    broken = sorted((rdir / ".broken").iterdir())
    assert [p.name.startswith("lee-") for p in broken] == [True, True]
    assert next(p for p in broken if p.name.endswith(".nii.gz")).read_bytes() == mask_bytes
    assert json.loads(next(p for p in broken if p.suffix == ".json").read_text())["image_sha256"] == "0" * 64
    ctl.disconnect()


def test_autosave_is_postponed_while_the_lock_is_busy(project, collect_dock):
    viewer, dock = collect_dock(project, "max")
    ctl = dock.controller
    _paint(ctl.annotation_layer, slice(3, 9), slice(3, 9))
    expected = (ctl.annotation_layer.data != 0).astype(np.uint8)
    later = ctl.clock() + ctl.autosave_interval + 1
    ctl.session.clock = lambda: later
    with project._rater_lock(ctl.case_id, "max"):  # another process is saving
        dock.tick()
        assert dock.status.text().startswith("autosave postponed:")
        assert ctl.dirty and not project.has_mask(ctl.case_id, "max")
    dock.tick()  # retried on the next tick
    np.testing.assert_array_equal(_saved(project, ctl.case_id, "max"), expected)
    assert not ctl.dirty


def test_blind_mode_never_reads_or_keeps_other_raters_masks(make_napari_viewer, project):
    viewer = make_napari_viewer()
    ctl = _controller(viewer, project, "ann", "lung0")
    _paint(ctl.annotation_layer, slice(10, 30), slice(10, 30))
    ann_mask = (ctl.annotation_layer.data != 0).astype(np.uint8)
    ctl.save()
    ctl.set_rater("ben")
    read = []
    real = ctl.store.load_mask
    ctl.store.load_mask = lambda case, rater: read.append(rater) or real(case, rater)
    ctl.load_case("lung0")
    assert ctl._add_other_raters("lung0") == [] and set(read) == {"ben"}
    ctl.set_blind(False)
    assert "ann" in read and _labels_holding(viewer, ann_mask)
    ctl.load_case("lung1")
    ctl.load_case("lung0")
    ctl.set_blind(True)  # unblind -> blind: nothing of ann's stays loaded, hidden or not
    assert _labels_holding(viewer, ann_mask) == []
    assert not [ly for ly in viewer.layers if (ly.metadata or {}).get("rater") == "ann"]
    read.clear()
    ctl.load_case("lung1")
    ctl.load_case("lung0")
    assert set(read) == {"ben"} and _labels_holding(viewer, ann_mask) == []
    ctl.disconnect()
