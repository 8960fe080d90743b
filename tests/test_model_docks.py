""" "Model & sampling" dock driven as a user would (headless via pytest-xvfb).

Screenshots of the viewer with the dock in use go to tests/_screenshots/ (git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
from qtpy.QtCore import Qt  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from napari_multirater._napari.explorer_controller import EXPLORER  # noqa: E402
from napari_multirater._napari.model_controller import (  # noqa: E402
    ALL_EXPERTS,
    MEAN_PROB,
    SAMPLE_CONTOURS,
    SAMPLES,
    UNC_CONTOUR,
)
from napari_multirater.widgets.model_dock import FILE_ITEM, ModelDock  # noqa: E402
from src_training.tools.testing import make_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.gui
torch.set_num_threads(2)
SHOTS = Path(__file__).parent / "_screenshots"
PLUGIN = "napari-multirater"


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    for m in ("dpersona", "umanet"):
        make_tiny_checkpoint(d / f"{m}.pt", m)
    return d


def _setup(make_napari_viewer, qtbot, ckpt, sample="phantom_2d", show=False):
    viewer = make_napari_viewer(show=show)
    viewer.open_sample(PLUGIN, sample)
    dock = ModelDock(viewer)
    viewer.window.add_dock_widget(dock, name="Model & sampling")
    dock.model_combo.setCurrentText(FILE_ITEM)
    dock.path_edit.setText(str(ckpt))
    dock.device_combo.setCurrentText("cpu")
    qtbot.mouseClick(dock.load_btn, Qt.LeftButton)  # loads in a worker
    qtbot.waitUntil(lambda: not dock.controller.jobs.busy and dock.controller.engine is not None, timeout=60_000)
    QApplication.processEvents()
    return viewer, dock


def _click_and_wait(qtbot, dock, button, timeout=30_000):
    qtbot.mouseClick(button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not dock.controller.jobs.busy, timeout=timeout)
    QApplication.processEvents()


def _shot(viewer, name):
    SHOTS.mkdir(exist_ok=True)
    viewer.window._qt_window.resize(1500, 950)
    for _ in range(5):
        QApplication.processEvents()
    viewer.screenshot(str(SHOTS / f"{name}.png"), canvas_only=False)


def _image(viewer):
    return next(ly for ly in viewer.layers if ly.__class__.__name__ == "Image" and not ly.name.startswith("mr "))


def test_load_sample_reuse_and_undo(make_napari_viewer, qtbot, ckpt_dir):
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "dpersona.pt", show=True)
    assert "dpersona" in dock.card_label.text() and "tight" in dock.card_label.text()
    assert dock.expert_combo.itemText(0) == ALL_EXPERTS and dock.expert_combo.count() == 5
    img = _image(viewer)
    dock.n_spin.setValue(5)
    dock.seed_spin.setValue(1)
    _click_and_wait(qtbot, dock, dock.sample_btn)
    samples = viewer.layers[SAMPLES]
    assert samples.data.shape == (5, *img.data.shape) and samples.data.dtype == np.uint8
    np.testing.assert_allclose(samples.scale, (1.0, *img.scale))
    np.testing.assert_allclose(samples.translate, (0.0, *img.translate))
    assert samples.metadata["multirater_role"] == "sample" and samples.metadata["model"] == "dpersona"
    mean = viewer.layers[MEAN_PROB]
    assert mean.data.dtype == np.float32 and tuple(mean.contrast_limits) == (0.0, 1.0)
    assert mean.colormap.name == "magma" and mean.blending == "additive"
    np.testing.assert_allclose(mean.scale, img.scale)
    first = samples.data.copy()
    _shot(viewer, "model_dock_samples_2d")
    # resample with the same seed: identical; a new seed: same layer reused, undo restores
    _click_and_wait(qtbot, dock, dock.sample_btn)
    np.testing.assert_array_equal(viewer.layers[SAMPLES].data, first)
    dock.seed_spin.setValue(2)
    _click_and_wait(qtbot, dock, dock.sample_btn)
    names = [ly.name for ly in viewer.layers]
    assert names.count(SAMPLES) == 1 and names.count(MEAN_PROB) == 1
    assert viewer.layers[SAMPLES] is samples and not np.array_equal(samples.data, first)
    samples.undo()
    np.testing.assert_array_equal(samples.data, first)
    # all samples as contours
    dock.contours_check.setChecked(True)
    _click_and_wait(qtbot, dock, dock.sample_btn)
    cont = viewer.layers[SAMPLE_CONTOURS]
    assert cont.data.shape == img.data.shape and cont.visible and not samples.visible
    assert set(np.unique(cont.data)) <= set(range(6))
    _shot(viewer, "model_dock_sample_contours_2d")


def test_personas_blend_and_selection(make_napari_viewer, qtbot, ckpt_dir):
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "dpersona.pt", show=True)
    dock.tabs.setCurrentIndex(1)
    dock.expert_combo.setCurrentText("generous")
    _click_and_wait(qtbot, dock, dock.persona_btn)
    layer = viewer.layers["mr persona: generous"]
    assert layer.visible and layer.contour == 0 and layer.metadata["multirater_role"] == "persona"
    assert layer.metadata["rater"] == "generous" and "mr persona: tight" not in viewer.layers
    dock.expert_combo.setCurrentText(ALL_EXPERTS)
    _click_and_wait(qtbot, dock, dock.persona_btn)
    personas = [viewer.layers[f"mr persona: {r}"] for r in ("tight", "generous", "smooth", "misses_faint")]
    assert all(p.contour == 2 and p.visible for p in personas)  # model outlines: thicker than the raters'
    colours = {tuple(np.round(p.colormap.map(1), 3)) for p in personas}
    assert len(colours) == 4  # each persona in its own colour
    dock.blend_i.setCurrentText("tight")
    dock.blend_j.setCurrentText("generous")
    dock.blend_slider.setValue(30)
    blend = viewer.layers["mr persona blend"]
    assert blend.metadata["blend"] == ["tight", "generous", 0.3] and blend.data.shape == _image(viewer).data.shape
    _shot(viewer, "model_dock_personas_2d")


def test_presence_in_plain_words_next_to_the_samples_and_personas(make_napari_viewer, qtbot, tmp_path):
    """A model with a presence head says how many experts would mark a lesion, in the status line
    (in view) and, with each expert's or persona's probability, under the results."""
    from src_training.checkpoint import save_checkpoint
    from src_training.tools.testing import PHANTOM_RATERS, tiny_card
    from tests.test_models import make

    names = list(PHANTOM_RATERS)
    model = make("pionono", presence={"enabled": True, "hidden": 4}, num_raters=len(names), rater_names=names).eval()
    save_checkpoint(tmp_path / "p.pt", model, tiny_card("pionono", names))
    viewer, dock = _setup(make_napari_viewer, qtbot, tmp_path / "p.pt")
    _click_and_wait(qtbot, dock, dock.sample_btn)
    assert "experts would mark a lesion here" in dock.status.text()
    assert "of 4 experts would mark a lesion here (tight " in dock.scores_label.text()
    dock.tabs.setCurrentIndex(1)
    _click_and_wait(qtbot, dock, dock.persona_btn)
    assert "experts would mark a lesion here" in dock.status.text()
    assert "persona probabilities: tight " in dock.scores_label.text()


def test_uncertainty_kinds_and_contour(make_napari_viewer, qtbot, ckpt_dir):
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "umanet.pt", show=True)
    dock.tabs.setCurrentIndex(2)
    kinds = [dock.kind_combo.itemText(i) for i in range(dock.kind_combo.count())]
    assert kinds == ["entropy", "variance", "mutual_information", "reliability", "quality"]
    dock.n_spin.setValue(4)
    dock.kind_combo.setCurrentText("reliability")
    _click_and_wait(qtbot, dock, dock.unc_btn)
    rel = viewer.layers["mr uncertainty: reliability"]
    assert rel.data.dtype == np.float32 and 0 <= rel.data.min() and rel.data.max() <= 1
    assert rel.metadata["multirater_role"] == "uncertainty" and rel.colormap.name == "inferno"
    assert "quality" in dock.scores_label.text()
    res = dock.controller.last["uncertainty"]  # the maps come from 4 samples; no binary samples are kept
    assert res.info["samples"] == 4 and res.samples_region is None and SAMPLES not in viewer.layers
    dock.kind_combo.setCurrentText("entropy")  # switches from the cached result, no recompute
    ent = viewer.layers["mr uncertainty: entropy"]
    assert ent.visible and not rel.visible
    dock.threshold_spin.setValue(0.2)
    qtbot.mouseClick(dock.contour_btn, Qt.LeftButton)
    cont = viewer.layers[UNC_CONTOUR]
    assert cont.contour == 1 and cont.data.dtype == np.uint8
    np.testing.assert_array_equal(cont.data, (ent.data >= 0.2).astype(np.uint8))
    _shot(viewer, "model_dock_uncertainty_2d")


def test_latent_explorer_redecodes(make_napari_viewer, qtbot, ckpt_dir):
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "dpersona.pt", show=True)
    panel = dock.explorer_panel
    assert panel.explore_btn.isEnabled()
    _click_and_wait(qtbot, dock, panel.explore_btn)
    assert len(panel.latent_sliders) == dock.controller.engine.capabilities.latent_dim
    layer = viewer.layers[EXPLORER]
    before = layer.data.copy()
    changed = False
    for s in panel.latent_sliders:  # some direction must change the mask of a random model
        s.setValue(30)
        changed |= not np.array_equal(layer.data, before)
    assert changed and panel.last_decode_ms is not None and "re-decoded" in dock.status.text()
    shown = layer.data.copy()
    layer.undo()  # a live preview is not in the undo history: nothing to undo
    np.testing.assert_array_equal(layer.data, shown)
    panel.form.sliders.value = "principal directions"  # n decodes, in a worker with progress
    qtbot.mouseClick(panel.explore_btn, Qt.LeftButton)
    job = dock.controller.jobs.job
    assert job is not None and job.threaded and not panel.explore_btn.isEnabled()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert job.state == "done" and dock.explorer.explorer is not None
    # every decode step reaches the GUI thread (queued signals may trail the job's end under load)
    qtbot.waitUntil(lambda: job.last_progress.done == job.last_progress.total == 64, timeout=10_000)
    assert "pc1" in panel.slider_grid.itemAtPosition(0, 0).widget().text()
    panel.latent_sliders[0].setValue(-20)
    after_slider = layer.data.copy()
    panel.between.b.value = 3
    panel.between.t.value = 1.0  # interpolating all the way: the mask of prior draw 3
    ex, eng = dock.explorer.explorer, dock.controller.engine
    z = eng.latent_samples(ex.enc, dock.n_spin.value(), seed=ex.seed)
    expected = eng.interpolate(ex.enc, z[0], z[3], 1.0) > 0.5
    qtbot.waitUntil(lambda: np.array_equal(layer.data != 0, expected), timeout=10_000)  # coalesced when slow
    assert layer.data.shape == _image(viewer).data.shape and after_slider.shape == layer.data.shape
    _shot(viewer, "model_dock_latent_explorer_2d")


def test_3d_current_slice_and_roi(make_napari_viewer, qtbot, ckpt_dir):
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "umanet.pt", sample="phantom_3d", show=True)
    img = _image(viewer)
    assert [dock.scope_combo.itemText(i) for i in range(dock.scope_combo.count())] == [
        "current slice",
        "all slices",
        "region of interest",
    ]
    viewer.dims.set_current_step(0, 10)
    dock.scope_combo.setCurrentText("current slice")
    dock.n_spin.setValue(3)
    _click_and_wait(qtbot, dock, dock.sample_btn)
    samples, mean = viewer.layers[SAMPLES], viewer.layers[MEAN_PROB]
    assert samples.data.shape == (3, *img.data.shape)
    np.testing.assert_allclose(samples.scale, (1.0, *img.scale))
    filled = np.nonzero(mean.data.reshape(mean.data.shape[0], -1).max(1))[0]
    assert list(filled) == [10]
    # the viewer now has a sample axis; the current slice still maps through world coordinates
    viewer.dims.set_current_step(1, 14)
    assert dock.controller.current_slice_index() == 14
    _click_and_wait(qtbot, dock, dock.sample_btn)
    filled = np.nonzero(mean.data.reshape(mean.data.shape[0], -1).max(1))[0]
    assert list(filled) == [14]  # a run replaces the whole layer: only what was just computed is shown
    # a rectangle ROI drawn in world coordinates on slice 14
    dock.new_roi_layer()
    shapes = viewer.layers["mr roi"]
    z_w = img.data_to_world((14, 0, 0))[0]
    y0, x0 = img.data_to_world((14, 20, 30))[1:]
    y1, x1 = img.data_to_world((14, 50, 70))[1:]
    corners_world = [[z_w, y0, x0], [z_w, y0, x1], [z_w, y1, x1], [z_w, y1, x0]]
    shapes.add_rectangles(np.array([shapes.world_to_data(c) for c in corners_world]))
    assert dock.scope_combo.currentText() == "region of interest"
    dock.tabs.setCurrentIndex(2)
    dock.kind_combo.setCurrentText("entropy")
    _click_and_wait(qtbot, dock, dock.unc_btn)
    ent = viewer.layers["mr uncertainty: entropy"]
    inside = np.zeros(ent.data.shape, bool)
    inside[14, 20:50, 30:70] = True
    assert ent.data[~inside].max() == 0 and ent.data[inside].min() > 0
    _shot(viewer, "model_dock_3d_roi")
    # a point ROI: box of 14 mm around a point placed in world coordinates
    pts = viewer.add_points(np.array([img.data_to_world((6, 48, 48))]), name="seed point", units=img.units)
    dock.refresh_layers()
    dock.roi_combo.setCurrentText(pts.name)
    dock.size_spin.setValue(14.0)
    dock.scope_combo.setCurrentText("region of interest")
    _click_and_wait(qtbot, dock, dock.sample_btn)
    res = dock.controller.last["samples"]
    assert res.region == (slice(1, 11), slice(38, 58), slice(38, 58))
    box = np.zeros(img.data.shape, bool)
    box[res.region] = True  # nothing of the earlier whole-slice run is left outside the point box
    assert mean.data[~box].max() == 0 and mean.data[box].min() > 0 and samples.data[:, ~box].max() == 0


def test_cancel_leaves_no_partial_layers(make_napari_viewer, qtbot, ckpt_dir):
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "dpersona.pt", sample="phantom_3d")
    dock.scope_combo.setCurrentText("all slices")
    dock.n_spin.setValue(200)
    qtbot.mouseClick(dock.sample_btn, Qt.LeftButton)
    job = dock.controller.jobs.job
    assert job is not None and dock.cancel_btn.isEnabled() and not dock.sample_btn.isEnabled()
    qtbot.mouseClick(dock.cancel_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not dock.controller.jobs.busy, timeout=60_000)
    QApplication.processEvents()
    assert job.state == "cancelled" and SAMPLES not in viewer.layers and MEAN_PROB not in viewer.layers
    assert dock.sample_btn.isEnabled() and not dock.cancel_btn.isEnabled() and "cancelled" in dock.status.text()


def test_errors_become_notifications(make_napari_viewer, qtbot, ckpt_dir, tmp_path, monkeypatch):
    import napari_multirater.widgets.model_dock as md

    seen = []
    monkeypatch.setattr(md, "_notify", lambda kind, msg: seen.append((kind, msg)))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom_2d")
    dock = ModelDock(viewer)
    assert not dock.sample_btn.isEnabled()
    assert dock.run("samples") is None and "load a model first" in seen[-1][1]
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    dock.model_combo.setCurrentText(FILE_ITEM)
    dock.path_edit.setText(str(bad))
    assert not dock.load_model(sync=True) and seen[-1][0] == "error" and "Cannot load model" in seen[-1][1]
    dock.path_edit.setText(str(ckpt_dir / "umanet.pt"))
    assert dock.load_model(sync=True)
    assert (
        not dock.explorer_panel.explore_btn.isEnabled() and not dock.blend_box.isEnabled()
    )  # UMA-Net: no latent, no blend
    dock.units_combo.setCurrentText("raw")
    assert dock.controller.engine.normalizer.image_units == "raw"
    dock.scope_combo.setCurrentText("region of interest")
    assert dock.run("samples") is None and "Shapes or Points" in seen[-1][1]
    # NaN / inf in the image: a clear notification naming the problem, no layers
    bad_img = np.full((48, 48), -1000.0, np.float32)
    bad_img[10:15, 10:15] = np.nan
    viewer.add_image(bad_img, name="with nan")
    dock.image_combo.setCurrentText("with nan")
    dock.scope_combo.setCurrentText("whole image")
    assert dock.run("samples", sync=True).state == "failed"
    assert seen[-1][0] == "error" and "25 non-finite" in seen[-1][1] and "with nan" in seen[-1][1]
    assert "mr samples" not in viewer.layers


def _wrap_calls(monkeypatch, obj, name, calls):
    orig = getattr(obj, name)

    def wrapped(*args, **kwargs):
        calls.append(args)
        return orig(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapped)


def test_results_stay_with_the_image_they_were_run_on(make_napari_viewer, qtbot, ckpt_dir, monkeypatch):
    import napari_multirater._napari.model_controller as mc

    warned = []
    monkeypatch.setattr(mc, "_warn", warned.append)
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "umanet.pt")
    img = _image(viewer)
    viewer.add_image(np.full((40, 56), -1000.0, np.float32), name="other", scale=(2.0, 2.0))
    dock.image_combo.setCurrentText(img.name)
    dock.n_spin.setValue(2)

    def wait():
        qtbot.waitUntil(lambda: not dock.controller.jobs.busy, timeout=60_000)
        QApplication.processEvents()

    # the Image combo changes during the run: the result goes on the grid it was computed for
    assert dock.run("samples") is not None  # (no events processed before the switch below)
    dock.image_combo.setCurrentText("other")
    assert dock.controller.image_layer.name == "other"
    wait()
    samples = viewer.layers[SAMPLES]
    assert samples.data.shape == (2, *img.data.shape) and samples.metadata["image_layer"] == img.name
    np.testing.assert_allclose(samples.scale[1:], img.scale)
    assert not warned and "samples" not in dock.controller.last  # cached only for the current image
    # the image is deleted during the run: a notification, the result is dropped (no traceback)
    before = samples.data.copy()
    assert dock.run("samples") is not None
    viewer.layers.remove("other")
    wait()
    assert len(warned) == 1 and "'other' was removed" in warned[-1] and "removed" in dock.status.text()
    np.testing.assert_array_equal(samples.data, before)
    # the image changes shape during the run
    dock.image_combo.setCurrentText(img.name)
    assert dock.run("samples") is not None
    img.data = np.full((30, 30), -1000.0, np.float32)
    wait()
    assert len(warned) == 2 and "changed shape" in warned[-1]
    assert samples.data.shape[1:] != img.data.shape  # not written onto the new grid


def test_reused_layers_follow_the_image_affine_and_units(make_napari_viewer, ckpt_dir):
    from napari_multirater._napari.layers import upsert_layer
    from napari_multirater._napari.model_controller import ModelController, RunRequest

    viewer = make_napari_viewer()
    data = np.full((32, 48), -1000.0, np.float32)
    a = viewer.add_image(data, name="a")
    aff = np.array([[0.0, -1.0, 40.0], [1.0, 0.0, -7.0], [0.0, 0.0, 1.0]])  # rotation + translation
    b = viewer.add_image(data, name="b", affine=aff, scale=(0.5, 0.7), units=("mm", "mm"))
    layer = upsert_layer(viewer, "mr x", np.zeros(data.shape, np.uint8), "labels", like=a)
    assert upsert_layer(viewer, "mr x", np.ones(data.shape, np.uint8), "labels", like=b) is layer
    np.testing.assert_allclose(layer.affine.affine_matrix, aff)
    assert [str(u) for u in layer.units] == ["millimeter"] * 2
    np.testing.assert_allclose(layer.data_to_world((3, 4)), b.data_to_world((3, 4)))
    # the model controller reuses its layers with the same helper
    ctl = ModelController(viewer, a)
    ctl.load_model(ckpt_dir / "umanet.pt", device="cpu")
    ctl.start(RunRequest("samples", n_samples=1), sync=True)
    mean = viewer.layers[MEAN_PROB]
    ctl.set_image_layer(b)
    ctl.start(RunRequest("samples", n_samples=1), sync=True)
    assert viewer.layers[MEAN_PROB] is mean
    np.testing.assert_allclose(mean.affine.affine_matrix, aff)
    assert [str(u) for u in mean.units] == ["millimeter"] * 2
    np.testing.assert_allclose(mean.data_to_world((3, 4)), b.data_to_world((3, 4)))
    np.testing.assert_allclose(viewer.layers[SAMPLES].data_to_world((0, 3, 4))[1:], b.data_to_world((3, 4)))


def test_slow_explorer_decodes_are_coalesced(make_napari_viewer, qtbot, ckpt_dir, monkeypatch):
    import napari_multirater.widgets.explorer_panel as ep

    monkeypatch.setattr(ep, "COALESCE_MS", -1.0)  # treat this image's decode as slow
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "dpersona.pt")
    panel = dock.explorer_panel
    _click_and_wait(qtbot, dock, panel.explore_btn)
    assert panel.coalesce and dock.explorer.explorer.decode_ms >= 0
    calls = []
    _wrap_calls(monkeypatch, dock.explorer, "set", calls)
    for v in (5, 10, 15, 20):  # a drag: events arrive while nothing has been decoded yet
        panel.latent_sliders[0].setValue(v)
    assert calls == [] and "+2.0σ" in panel.slider_grid.itemAtPosition(0, 0).widget().text()
    qtbot.waitUntil(lambda: len(calls) > 0, timeout=10_000)
    for _ in range(3):
        QApplication.processEvents()
    assert len(calls) == 1 and calls[0][0][0] == pytest.approx(2.0)  # only the latest value
    panel.coalesce = False  # fast decodes: every slider event decodes at once
    panel.latent_sliders[0].setValue(25)
    assert len(calls) == 2


def test_plugin_dock_keeps_its_state_when_other_layers_change(make_napari_viewer, ckpt_dir, monkeypatch):
    """Plugin docks get a proxied viewer: the same image arrives as different proxy objects."""
    monkeypatch.setenv("NAPARI_MULTIRATER_MODELS", str(ckpt_dir))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom_2d")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model & sampling")
    dock.model_combo.setCurrentText("dpersona")
    dock.device_combo.setCurrentText("cpu")
    assert dock.load_model(sync=True) and dock.explorer_panel.start(sync=True)
    n = len(dock.explorer_panel.latent_sliders)
    assert n > 0 and dock.explorer.explorer is not None
    viewer.add_points(name="unrelated")  # layer list change -> refresh -> same image chosen again
    assert dock.explorer.explorer is not None and len(dock.explorer_panel.latent_sliders) == n


def test_plugin_manifest_dock_and_run_demo(make_napari_viewer, ckpt_dir, monkeypatch):
    monkeypatch.setenv("NAPARI_MULTIRATER_MODELS", str(ckpt_dir))
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom_2d")
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model & sampling")
    assert isinstance(dock, ModelDock) and dock.model_combo.count() >= 3
    from napari_multirater.commands.demo import run_model_demo

    assert run_model_demo(dock)
    assert dock.model_combo.currentText() == "phantom_dpersona"  # the phantom model, not the first LIDC one
    assert SAMPLES in viewer.layers and "mr uncertainty: entropy" in viewer.layers
    assert any(ly.name.startswith("mr persona: ") for ly in viewer.layers)


def test_precision_setting_applies_to_the_loaded_model(make_napari_viewer, qtbot, ckpt_dir):
    """The Device row's Precision choice reaches the engine (card and status say which) and a run in
    each precision gives near-identical masks."""
    viewer, dock = _setup(make_napari_viewer, qtbot, ckpt_dir / "dpersona.pt")
    img = _image(viewer)
    outs = {}
    for choice in ("fp32", "bf16"):
        dock.precision_combo.setCurrentText(choice)
        eng = dock.controller.engine
        assert eng.precision.name == choice and choice in dock.status.text()
        assert choice in dock.card_label.text()
        outs[choice] = eng.sample(np.asarray(img.data), 4, seed=1)
    agree = ((outs["fp32"] > 0.5) == (outs["bf16"] > 0.5)).mean()
    assert agree > 0.97
