"""'Collect annotations' dock: two raters annotate in turn, blind mode, saving, pre-fill
(headless napari via pytest-xvfb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_multirater._napari.annotate_controller import OWNER_KEY, AnnotateController, AnnotateError
from napari_multirater._napari.layers import ROLE_KEY, layer_name, same_layer
from napari_multirater.annotation import AnnotationStore, RaterIdentity
from napari_multirater.datasets.case_folder import CaseFolderDataset
from napari_multirater.datasets.phantom import make_phantom_case
from napari_multirater.io.medical import read_label_image

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
    store = AnnotationStore.create_project(tmp_path / "project", "phantoms", intensity_window=(-1000, 400))
    for k in range(3):
        case = make_phantom_case(k, seed=3, ndim=2)
        store.add_case(case.image, case.geometry, f"lung{k}")
    return store


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
    return [ly.name for ly in viewer.layers
            if ly.__class__.__name__ == "Labels" and ly.data.shape == mask.shape
            and np.array_equal(ly.data != 0, mask != 0)]


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
    qtbot.wait(200)
    dock.tick()
    shot = viewer.screenshot(str(SCREENSHOTS / "annotate_dock.png"), canvas_only=False)
    assert shot.shape[0] > 500


def test_next_not_annotated_autosave_and_prefill(make_napari_viewer, qtbot, project):
    viewer = make_napari_viewer()
    dock = _dock(viewer)
    ctl = dock.controller
    _set_rater(dock, "carol")
    dock.open_project(project.root)
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
    persona = viewer.add_labels(case.masks[1], name="persona generous", scale=ctl.image_layer.scale,
                                metadata={ROLE_KEY: "persona", "model": "dpersona-tiny", "persona": "generous"})
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


def test_new_project_from_open_image_and_foreign_layers_hidden(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom_2d")
    image = viewer.layers[0]
    dock = _dock(viewer)
    _set_rater(dock, "dave")
    dock.new_project_from_layer(tmp_path / "new", image)
    ctl = dock.controller
    store = AnnotationStore(tmp_path / "new")
    assert store.case_ids() == [image.name] and ctl.case_id == image.name
    np.testing.assert_array_equal(store.load_image(image.name)[0], image.data)
    np.testing.assert_allclose(ctl.annotation_layer.scale, image.scale)
    # the sample's rater layers belong to the same image: hidden in blind mode
    sample_raters = [ly for ly in viewer.layers if (ly.metadata or {}).get(ROLE_KEY) == "rater"
                     and not (ly.metadata or {}).get(OWNER_KEY)]
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
