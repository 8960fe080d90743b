"""A clinician's first hour (issue 17): the docks guide to the right input (field of view, ROI default,
missing spacing, unsupported images, fitting model), case identity from DICOM, plain messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_multirater._napari.guidance import case_identity, spacing_known
from napari_multirater.inference import model_info as mi
from napari_multirater.inference.engine import InferenceEngine, ModelLoadError

SERIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lidc-ct" / "LIDC-IDRI-0006" / "series"
LIDC_CARD = {"method": "dpersona", "training_data": {"path": "../shared/data/lidc-slices"}}
PHANTOM_CARD = {
    "method": "pionono",
    "training_data": {"path": "/work/runs/phantom400"},
    "input": {"pixel_size_mm": [0.7, 0.7]},
}


def test_field_of_view_advice_and_model_choice():
    fov = mi.field_of_view(LIDC_CARD)
    assert fov["size_px"] == [128, 128] and "nodule" in fov["centred"]
    assert "80 x 80 mm" in mi.describe_fov(fov, (0.625, 0.625))  # native-size model: mm at the image's pixels
    advice = mi.input_advice(fov, (512, 512), (0.625, 0.625))
    assert advice and "4x" in advice and "region of interest" in advice
    assert mi.input_advice(fov, (128, 128), (0.625, 0.625)) is None  # a nodule crop fits
    assert mi.roi_size_mm(fov, (0.625, 0.625)) == 80.0
    pfov = mi.field_of_view(PHANTOM_CARD)
    assert "90 x 90 mm" in mi.describe_fov(pfov) and mi.input_advice(pfov, (128, 128), (0.7, 0.7)) is None
    names = ["lidc_dpersona", "lidc_unet", "phantom_pionono", "phantom_dpersona"]
    assert mi.pick_model(names, "phantom") == "phantom_dpersona" and mi.pick_model(names, "ct") == "lidc_dpersona"
    assert "nodule" in mi.name_purpose("lidc_dpersona") and "phantom" in mi.name_purpose("phantom_proseg")
    assert mi.field_of_view({"training_data": {"path": "my_data"}}) is None  # unknown: nothing invented


def test_bundled_card_in_plain_words():
    eng = InferenceEngine.load("lidc_dpersona", device="cpu")
    s = eng.summary((0.625, 0.625))
    assert "128 x 128 px" in s["trained on"] and "80 x 80 mm" in s["trained on"]
    assert "k-th smallest" in s["raters"] and "anonymous" in s["raters"]
    assert "lower is better" in s["validation"] and "one outline per rater" in s["can show"]


def test_bad_checkpoint_message_has_no_raw_code(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelLoadError) as info:
        InferenceEngine.load(bad)
    msg = str(info.value)
    assert "not a PyTorch checkpoint file" in msg and "operand" not in msg and "WeightsUnpickler" not in msg


def test_case_identity_from_dicom_header():
    md = {"patient_id": "LIDC-IDRI-0006", "series_uid": "1.3.6.1.4.1.14519.5.2.1.6279.6001.132817"}
    assert case_identity("series", md) == ("LIDC-IDRI-0006_series132817", "LIDC-IDRI-0006")
    other = {"patient_id": "LIDC-IDRI-0013", "series_uid": "1.3.6.1.4.1.99.1"}
    assert case_identity("series", other)[0] != case_identity("series", md)[0]
    assert case_identity("series", {"case_id": "LIDC-IDRI-0006"}) == ("LIDC-IDRI-0006", "LIDC-IDRI-0006")
    assert case_identity("lung ct.nii.gz", {}) == ("lung_ct", None)


@pytest.mark.skipif(not SERIES.is_dir(), reason="real LIDC series not present (../shared/data)")
def test_dicom_reader_records_patient_id():
    from napari_multirater.io import read_image

    _, _, info = read_image(SERIES)
    assert info["patient_id"] == "LIDC-IDRI-0006" and info["series_uid"]


def test_shared_encoding_gives_the_same_outputs(tmp_path, monkeypatch):
    """Samples + personas in one run reuse one encoding per slice; outputs equal separate runs."""
    from napari_multirater.datasets.phantom import make_phantom_case
    from src_training.tools.testing import make_tiny_checkpoint

    eng = InferenceEngine.load(make_tiny_checkpoint(tmp_path / "dp.pt", "dpersona"), device="cpu", precision="fp32")
    case = make_phantom_case(0, ndim=3)
    kw = {"seed": 4, "slice_index": 10}
    both = eng.predict_volume(case.image, case.geometry, samples=3, personas=True, uncertainty=True, **kw)
    alone = eng.predict_volume(case.image, case.geometry, samples=3, **kw)
    personas = eng.predict_volume(case.image, case.geometry, samples=0, personas=True, **kw)
    np.testing.assert_array_equal(both.samples_region, alone.samples_region)
    for rater, m in personas.personas_region.items():
        np.testing.assert_array_equal(both.personas_region[rater], m)
    calls = []
    encode = type(eng.model)._encode
    monkeypatch.setattr(type(eng.model), "_encode", lambda self, x: calls.append(1) or encode(self, x))
    eng.predict_volume(case.image, case.geometry, samples=3, personas=True, seed=4, slice_index=10)
    assert len(calls) == 1  # one backbone + prior pass for the slice, not one per output


def test_predict_cli_progress_per_slice_and_compact_maps(tmp_path, capsys):
    from napari_multirater.cli import main
    from napari_multirater.datasets.phantom import make_phantom_case
    from napari_multirater.io import read_image, write_image
    from src_training.tools.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "dp.pt", "dpersona")
    case = make_phantom_case(0, ndim=3)
    src = tmp_path / "ct.nii.gz"
    write_image(src, case.image, case.geometry)
    base = ["predict", "--checkpoint", str(ckpt), "--image", str(src), "--samples", "2", "--seed", "1"]
    assert main([*base, "--out", str(tmp_path / "one"), "--slice", "12"]) == 0
    err = capsys.readouterr().err
    assert "slice 12 of 0-23" in err and "13/24" not in err  # numbered as the user gave it
    assert main([*base, "--out", str(tmp_path / "roi"), "--roi", "4,10,10,8,60,70"]) == 0
    err = capsys.readouterr().err
    assert [f"predict: {k}/4 " in err for k in range(1, 5)] == [True] * 4  # a line after every slice
    assert "left" in err
    assert main([*base, "--out", str(tmp_path / "float"), "--roi", "4,10,10,8,60,70", "--float-maps"]) == 0
    small, _, _ = read_image(tmp_path / "roi" / "mean_prob.nii.gz")
    full, _, _ = read_image(tmp_path / "float" / "mean_prob.nii.gz")
    assert small.dtype == np.uint8 and full.dtype == np.float32
    assert np.abs(small.astype(np.float32) / 255.0 - full).max() <= 0.5 / 255 + 1e-6


# ------------------------------------------------------------------ docks (napari)
napari = pytest.importorskip("napari")


@pytest.mark.gui
def test_model_dock_guides_to_the_right_input(make_napari_viewer):
    from napari_multirater.widgets.model_dock import ModelDock

    viewer = make_napari_viewer()
    dock = ModelDock(viewer)
    assert dock.hint.isVisibleTo(dock) and "No image" in dock.hint.text()
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), rgb=True, name="photo")
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="timeseries")
    assert dock.image_combo.count() == 0
    assert "'photo' (RGB colour)" in dock.hint.text() and "'timeseries' (4D)" in dock.hint.text()
    assert not dock.sample_btn.isEnabled()

    ct = np.full((6, 512, 512), -1000, np.int16)  # a whole CT slice: 4x the nodule crops the model saw
    ct[:, 248:264, 248:264] = 40
    viewer.add_image(ct, name="chest", scale=(2.5, 0.625, 0.625), units=("mm", "mm", "mm"))
    dock.image_combo.setCurrentText("chest")
    assert dock.model_combo.currentText() == "lidc_dpersona"  # CT -> a model trained on CT
    assert "nodule" in dock.purpose_label.text()
    dock.device_combo.setCurrentText("cpu")
    assert dock.load_model(sync=True)
    assert "128 x 128 px" in dock.card_label.text() and "80 x 80 mm" in dock.card_label.text()
    assert "wider than what the model was trained on" in dock.hint.text()
    assert dock.scope_combo.currentText() == "region of interest" and "mr roi point" in viewer.layers
    assert dock.size_spin.value() == 80.0 and "30 mm deep: 6 slice(s) of 2.5 mm" in dock.size_note.text()
    viewer.layers["mr roi point"].add([3, 256, 256])  # click the lesion (the layer shares the image grid)
    dock.expert_combo.setCurrentText("expert_1")
    dock.run("personas", sync=True)
    res = dock.controller.last["personas"]
    assert all(s.stop - s.start <= 129 and s.start <= 256 < s.stop for s in res.region[1:])  # around the click
    assert "failed" not in dock.status.text()

    dock.status.setText("failed: something about the old input")
    viewer.add_image(np.zeros((64, 64), np.float32), name="plain")  # as napari's own reader opens a PNG
    dock.image_combo.setCurrentText("plain")
    assert dock.status.text() == ""  # stale status cleared
    assert not spacing_known(viewer.layers["plain"])
    assert "no physical spacing" in dock.hint.text() and "plugin='napari-multirater'" in dock.hint.text()


@pytest.mark.gui
def test_model_dock_preselects_the_phantom_model(make_napari_viewer):
    from napari_multirater.widgets.model_dock import ModelDock

    viewer = make_napari_viewer()
    viewer.open_sample("napari-multirater", "phantom_2d")
    dock = ModelDock(viewer)
    assert dock.model_combo.currentText() == "phantom_dpersona"
    tips = {dock.model_combo.itemText(i): dock.model_combo.itemData(i, 3) for i in range(dock.model_combo.count())}
    assert "nodule" in tips["lidc_dpersona"] and "phantom" in tips["phantom_dpersona"]  # 3 = Qt.ToolTipRole
    assert not dock.hint.isVisibleTo(dock)  # a phantom fits the phantom model: nothing to warn about


@pytest.mark.gui
def test_compare_dock_preselects_raters_on_the_grid(make_napari_viewer):
    from napari_multirater._napari.layers import ROLE_KEY
    from napari_multirater.widgets.compare_dock import READY_TEXT, CompareDock

    viewer = make_napari_viewer()
    viewer.open_sample("napari-multirater", "phantom_2d")
    image = next(ly for ly in viewer.layers if ly.__class__.__name__ == "Image")
    shape = image.data.shape
    dock = CompareDock(viewer)
    viewer.add_labels(np.zeros(shape, np.uint8), name="reader5 from file")
    viewer.add_labels(np.zeros(shape, np.uint8), name="persona x", metadata={ROLE_KEY: "persona"})
    viewer.add_labels(np.zeros((7, 9), np.uint8), name="odd shape")
    chosen = {ly.name for ly in dock.selected_layers()}
    assert "reader5 from file" in chosen and "mr rater: tight" in chosen
    assert "persona x" not in chosen and "odd shape" not in chosen
    dock.all_btn.click()
    assert len(dock.selected_layers()) == dock.layer_list.count()
    dock.none_btn.click()
    assert dock.selected_layers() == []
    dock.status.setText("Failed: an old error")
    viewer.add_labels(np.zeros(shape, np.uint8), name="another")
    assert dock.status.text() == READY_TEXT
    viewer.add_image(np.zeros((10, 10), np.float32), name="plain")
    assert "'plain' has no physical spacing" in dock.hint.text()


@pytest.fixture
def project(tmp_path, monkeypatch):
    from napari_multirater.annotation import AnnotationStore
    from napari_multirater.datasets.phantom import make_phantom_case

    monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", str(tmp_path / "config"))  # never the user's identity
    store = AnnotationStore.create_project(tmp_path / "project", "phantoms", intensity_window=(-1000, 400))
    for k in range(2):
        case = make_phantom_case(k, seed=3, ndim=2)
        store.add_case(case.image, case.geometry, f"lung{k}")
    return store


@pytest.mark.gui
def test_prefill_from_a_model_in_an_open_project(make_napari_viewer, project, collect_dock):
    """Open project -> the Model dock lists the case image -> personas -> pre-fill -> edit -> save,
    with the model recorded in the saved mask's provenance; blind mode hides Compare's outputs."""
    from napari_multirater._napari.layers import ROLE_KEY
    from napari_multirater.annotation import AnnotationStore
    from napari_multirater.widgets.model_dock import ModelDock

    viewer = make_napari_viewer()
    _, adock = collect_dock(project, "dana", viewer=viewer)
    ctl = adock.controller
    assert ctl.case_id == "lung0"
    assert adock.prefill_combo.count() == 0 and not adock.prefill_btn.isEnabled()  # nothing to start from yet
    assert "run a model on the case image" in adock.prefill_btn.toolTip()
    assert "nothing painted yet" in adock.save_label.text()

    mdock = ModelDock(viewer)
    names = [mdock.image_combo.itemText(i) for i in range(mdock.image_combo.count())]
    assert names == ["mr image: lung0"]  # the case image is offered, model outputs are not
    mdock.model_combo.setCurrentText("phantom_dpersona")
    mdock.device_combo.setCurrentText("cpu")
    assert mdock.load_model(sync=True)
    mdock.expert_combo.setCurrentText("tight")
    mdock.run("personas", sync=True)
    assert "mr persona: tight" in viewer.layers
    assert [mdock.image_combo.itemText(i) for i in range(mdock.image_combo.count())] == ["mr image: lung0"]

    assert adock.prefill_combo.currentText() == "mr persona: tight" and adock.prefill_btn.isEnabled()
    adock.prefill_btn.click()
    persona = np.asarray(viewer.layers["mr persona: tight"].data) != 0
    np.testing.assert_array_equal(np.asarray(ctl.annotation_layer.data) != 0, persona)
    rr, cc = np.mgrid[0:3, 0:3]
    ctl.annotation_layer.data_setitem((rr.ravel(), cc.ravel()), 1)  # edit like a brush
    adock.save()
    mask, side = AnnotationStore(project.root).load_mask("lung0", "dana")
    prov = side["provenance"]
    assert prov["kind"] == "prefilled" and prov["edited"] is True and prov["model"] == "phantom_dpersona"
    assert "tight" in prov["output"] and mask[:3, :3].all()

    # blind mode (on by default): layers computed from other raters are hidden as they appear
    agree = viewer.add_image(np.zeros(mask.shape, np.float32), name="mr agreement", metadata={ROLE_KEY: "agreement"})
    cons = viewer.add_labels(
        np.zeros(mask.shape, np.uint8), name="mr consensus: staple", metadata={ROLE_KEY: "consensus"}
    )
    assert ctl.blind and not agree.visible and not cons.visible
    adock.blind_box.setChecked(False)
    agree.visible = True
    adock.blind_box.setChecked(True)
    assert not agree.visible
    # ... and outputs of a model trained on this project's raters (its card names the project folder)
    leak = viewer.add_labels(
        np.zeros(mask.shape, np.uint8),
        name="mr persona: trained here",
        metadata={ROLE_KEY: "persona", "model": "m", "training_data": str(project.root)},
    )
    assert not leak.visible and "mr persona: trained here" not in [
        adock.prefill_combo.itemText(i) for i in range(adock.prefill_combo.count())
    ]


@pytest.mark.gui
def test_no_lesion_is_an_explicit_choice(make_napari_viewer, project, collect_dock):
    from napari_multirater.annotation import AnnotationStore

    viewer = make_napari_viewer()
    _, adock = collect_dock(project, "eve", viewer=viewer)
    ctl = adock.controller
    adock.save()  # untouched case: refused, not silently marked done
    assert "Nothing is painted" in adock.status.text()
    assert dict(ctl.case_rows())["lung0"] is False
    adock.no_lesion_box.setChecked(True)
    adock.save()
    assert dict(ctl.case_rows())["lung0"] is True
    mask, side = AnnotationStore(project.root).load_mask("lung0", "eve")
    assert not mask.any() and side["provenance"]["no_lesion"] is True
    assert list(project.root.rglob(".*.lock"))  # flock files stay while the dock is open ...
    adock.teardown()
    assert not list(project.root.rglob(".*.lock"))  # ... and are gone once it closes


def test_idle_lock_files_are_removed_held_ones_kept(tmp_path):
    from napari_multirater.annotation.lock import HAVE_FCNTL, FileLock, remove_idle_lock_file

    if not HAVE_FCNTL:
        pytest.skip("flock lock files exist only on POSIX")
    path = tmp_path / ".dataset.lock"
    with FileLock(path, use_flock=True):
        assert not remove_idle_lock_file(path) and path.exists()  # held: kept
    assert remove_idle_lock_file(path) and not path.exists()
    with FileLock(path, use_flock=True) as lock:  # a later lock simply creates it again
        assert lock.locked and path.exists()


@pytest.mark.gui
def test_results_and_progress_visible_on_a_small_screen(make_napari_viewer):
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QApplication, QDockWidget

    from napari_multirater._napari.layers import MODEL_CONTOUR, rater_layers
    from napari_multirater._napari.model_controller import SAMPLES

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1366, 768)
    viewer.open_sample("napari-multirater", "phantom_2d")
    assert all(ly.contour == 1 for ly in rater_layers(viewer))  # raters: thin outlines by default
    docks = {}
    for name in ("Collect annotations", "Compare raters", "Model & sampling"):
        _, docks[name] = viewer.window.add_plugin_dock_widget("napari-multirater", name)
        QApplication.processEvents()
    assert win.height() <= 768  # docks tabify / scroll instead of growing the window
    titles = {d.windowTitle() for d in win.findChildren(QDockWidget)}
    assert {"Model && sampling", "Compare raters", "Collect annotations"} <= titles  # '&' shown, not a mnemonic
    dock = docks["Model & sampling"]
    dock.model_combo.setCurrentText("phantom_dpersona")
    dock.device_combo.setCurrentText("cpu")
    assert dock.load_model(sync=True)
    for w in (dock.progress, dock.cancel_btn, dock.status):  # below the scrolling part, inside the window
        bottom = w.mapTo(win, QPoint(0, w.height())).y()
        assert w.isVisible() and bottom <= win.height()

    dock.n_spin.setValue(2)
    dock.run("samples", sync=True)
    dock.expert_combo.setCurrentText("tight")
    dock.run("personas", sync=True)
    assert "persona tight (1 of 4)" in dock.status.text() and "tight" in dock.legend.text()
    assert not viewer.layers[SAMPLES].visible and viewer.layers["mr persona: tight"].visible  # newest family
    assert dock.earlier_btn.isEnabled()
    dock.earlier_btn.click()
    assert viewer.layers[SAMPLES].visible  # one click brings the older outputs back
    dock.expert_combo.setCurrentText("all experts")
    dock.run("personas", sync=True)
    personas = [ly for ly in viewer.layers if ly.name.startswith("mr persona: ")]
    assert all(p.contour == MODEL_CONTOUR for p in personas)  # model outlines thicker than the raters'
    rater_colors = {tuple(np.round(ly.colormap.map(1), 3)) for ly in rater_layers(viewer)}
    assert not rater_colors & {tuple(np.round(p.colormap.map(1), 3)) for p in personas}
    dock.kind_combo.setCurrentText("entropy")
    dock.run("uncertainty", sync=True)
    assert viewer.layers["mr uncertainty: entropy"].colorbar.visible


def test_patient_folder_with_the_series_inside(tmp_path):
    """A patient folder without the LIDC XML: the one series inside is read; several are named."""
    from napari_multirater._napari.reader import get_reader
    from napari_multirater.datasets.phantom import make_phantom_case
    from napari_multirater.io.medical import write_dicom_series

    case = make_phantom_case(0, ndim=3)
    write_dicom_series(tmp_path / "patient" / "study" / "ct", case.image.astype(np.int16), case.geometry)
    reader = get_reader(str(tmp_path / "patient"))
    ((data, kw, kind),) = reader(str(tmp_path / "patient"))
    assert kind == "image" and data.shape == case.image.shape and kw["metadata"]["series_uid"]
    write_dicom_series(tmp_path / "patient" / "study" / "ct2", case.image.astype(np.int16), case.geometry)
    with pytest.raises(ValueError, match="holds 2 DICOM series .*open one of these folders"):
        get_reader(str(tmp_path / "patient"))(str(tmp_path / "patient"))
    assert get_reader(str(tmp_path / "patient" / "study" / "ct")) is not None


def test_each_dock_has_its_readme_section():
    from napari_multirater.help_text import dock_help

    for title, words in (
        ("Model & sampling", "field of view"),
        ("Compare raters", "STAPLE"),
        ("Collect annotations", "blind mode"),
    ):
        text = dock_help(title)
        assert text.startswith(f"**{title}**") and words in text
