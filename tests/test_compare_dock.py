"""'Compare raters' dock on the phantom sample (headless napari via pytest-xvfb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication

from napari_multirater._napari.compare_controller import (
    AGREEMENT,
    CONSENSUS_MAJORITY,
    CONSENSUS_STAPLE,
    CompareController,
)
from napari_multirater._napari.layers import ROLE_KEY, rater_layers
from napari_multirater.analysis import majority_vote, pairwise_overlap, staple

pytestmark = pytest.mark.gui

PLUGIN = "napari-multirater"
SCREENSHOTS = Path(__file__).parent / "_screenshots"
RESULT_LAYERS = (AGREEMENT, CONSENSUS_MAJORITY, CONSENSUS_STAPLE)


@pytest.fixture(autouse=True)
def _private_config(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", str(tmp_path / "config"))


def _open(make_napari_viewer, sample="phantom_2d"):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, sample)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare raters")
    return viewer, dock


def _run(qtbot, dock, timeout=60_000):
    dock.result = None
    dock.compute_btn.click()
    qtbot.waitUntil(lambda: dock.result is not None and dock.compute_btn.isEnabled(), timeout=timeout)
    return dock.result


def _cell(table, i, j) -> str:
    return table.item(i, j).text()


def test_compare_dock_computes_tables_layers_and_heatmap(make_napari_viewer, qtbot):
    viewer, dock = _open(make_napari_viewer)
    image = viewer.layers[0]
    raters = rater_layers(viewer)
    names = [ly.metadata["rater"] for ly in raters]
    assert len(raters) == 4
    assert [ly.name for ly in dock.selected_layers()] == [ly.name for ly in raters]  # preselected

    result = _run(qtbot, dock)
    masks = np.stack([ly.data != 0 for ly in raters])
    expected = pairwise_overlap(masks, None, image.scale, names)
    assert result.names == names
    np.testing.assert_allclose(result.pairwise["dice"], expected["dice"])
    np.testing.assert_allclose(result.pairwise["hausdorff_mm"], expected["hausdorff_mm"])

    # pairwise table (Dice), then switch the metric selector to Hausdorff
    t = dock.pairwise_table
    assert (t.rowCount(), t.columnCount()) == (4, 4)
    assert [t.horizontalHeaderItem(j).text() for j in range(4)] == names
    assert all(_cell(t, i, i) == "1.000" for i in range(4))
    assert _cell(t, 0, 1) == f"{expected['dice'][0, 1]:.3f}"
    dock.metric.setCurrentIndex(dock.metric.findData("hausdorff_mm"))
    assert _cell(t, 0, 0) == "0.00" and _cell(t, 0, 1) == f"{expected['hausdorff_mm'][0, 1]:.2f}"
    dock.metric.setCurrentIndex(dock.metric.findData("assd_mm"))
    assert _cell(t, 0, 1) == f"{expected['assd_mm'][0, 1]:.2f}" and dock.metric.currentText() == "ASSD (mm)"

    # per lesion: the one phantom lesion, found by all four raters, one row per rater
    les = result.lesions
    assert les.detection["4/4"] == 1 and dock.lesion_table.rowCount() == len(les.rows)
    header = [dock.lesion_table.horizontalHeaderItem(j).text() for j in range(dock.lesion_table.columnCount())]
    assert header[:3] == ["Lesion", "Found by", "Rater"] and "HD95 (mm)" in header
    assert "Found by k/n raters: 4/4: 1" in dock.detection_label.text()

    st = staple(masks)
    assert dock.staple_table.rowCount() == 4
    assert _cell(dock.staple_table, 2, 1) == f"{st.sensitivity[2]:.3f}"
    assert dock.style_table.rowCount() == 4 and _cell(dock.style_table, 0, 0) == names[0]
    # simulated styles: 'tight' under-segments, 'generous' over-segments
    style = {r["rater"]: r for r in result.style_rows}
    assert style["tight"]["volume_bias"] < 0 < style["generous"]["volume_bias"]
    assert not dock.tabs.isTabEnabled(dock.model_tab_index)  # no model layers yet

    # result layers: shapes, geometry copied from the image layer, content
    for name in RESULT_LAYERS:
        layer = viewer.layers[name]
        assert layer.data.shape == image.data.shape
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    assert viewer.layers[AGREEMENT].data.max() == 4
    np.testing.assert_array_equal(viewer.layers[AGREEMENT].data, masks.sum(0))
    np.testing.assert_array_equal(viewer.layers[CONSENSUS_MAJORITY].data, majority_vote(masks))
    np.testing.assert_array_equal(viewer.layers[CONSENSUS_STAPLE].data, st.consensus)
    assert viewer.layers[CONSENSUS_STAPLE].metadata[ROLE_KEY] == "consensus"

    # heatmap of pairwise Dice on a Qt canvas
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

    assert isinstance(dock.canvas, FigureCanvasQTAgg)
    ax = dock.figure.axes[0]
    assert ax.get_title() == "Pairwise Dice"
    np.testing.assert_allclose(ax.images[0].get_array().filled(np.nan), expected["dice"])
    assert "Compared 4 raters" in dock.status.text()

    # result layers are not offered as inputs; a second run reuses them (no duplicates)
    assert not set(RESULT_LAYERS) & {dock.layer_list.item(i).text() for i in range(dock.layer_list.count())}
    n_layers = len(viewer.layers)
    raters[0].data_setitem(np.nonzero(raters[0].data), 0)  # 'tight' now empty
    result2 = _run(qtbot, dock)
    assert len(viewer.layers) == n_layers
    assert [ly.name for ly in viewer.layers].count(CONSENSUS_STAPLE) == 1
    assert viewer.layers[AGREEMENT].data.max() == 3
    assert result2.pairwise["empty"] == ["tight"] and "Empty masks (nothing marked): tight" in dock.status.text()
    raters[0].undo()
    _run(qtbot, dock)
    dock.metric.setCurrentIndex(0)

    SCREENSHOTS.mkdir(exist_ok=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.reset_view()
    for _ in range(5):  # layout settles before the screenshot (no fixed wait)
        QApplication.processEvents()
    shot = viewer.screenshot(str(SCREENSHOTS / "compare_dock.png"), canvas_only=False)
    assert shot.shape[0] > 500 and shot.shape[1] > 900


def test_model_outputs_are_matched_to_raters(make_napari_viewer, qtbot):
    viewer, dock = _open(make_napari_viewer)
    tight = viewer.layers["mr rater: tight"]
    generous = viewer.layers["mr rater: generous"]
    viewer.add_labels(
        tight.data.copy(), name="persona A", metadata={ROLE_KEY: "persona", "persona": "A"}, scale=tight.scale
    )
    viewer.add_labels(
        generous.data.copy(), name="persona B", metadata={ROLE_KEY: "persona", "persona": "B"}, scale=tight.scale
    )
    assert {ly.name for ly in dock.selected_layers()} == {ly.name for ly in rater_layers(viewer)}
    result = _run(qtbot, dock)
    rows = {r["rater"]: r for r in result.model_rows}
    assert rows["tight"]["best_output"] == "persona A" and rows["tight"]["best_dice"] == 1.0
    assert rows["generous"]["best_output"] == "persona B" and rows["generous"]["best_dice"] == 1.0
    assert dock.tabs.isTabEnabled(dock.model_tab_index)
    t = dock.model_table
    assert t.rowCount() == 4 and _cell(t, 0, 1) == "persona A" and _cell(t, 0, 2) == "1.000"
    assert "2 model output layer(s)" in dock.status.text()


def test_bad_selections_are_reported_not_raised(make_napari_viewer, qtbot):
    viewer, dock = _open(make_napari_viewer)
    dock.set_selected(["mr rater: tight"])
    dock.compute_btn.click()
    assert "at least two" in dock.status.text() and dock.compute_btn.isEnabled()
    assert AGREEMENT not in viewer.layers
    viewer.add_labels(np.zeros((7, 9), np.uint8), name="odd shape")
    dock.set_selected(["mr rater: tight", "mr rater: smooth", "odd shape"])
    result = _run(qtbot, dock)
    assert result.names == ["tight", "smooth"]
    assert "skipped 'odd shape'" in dock.status.text().lower()
    dock.set_selected([])
    dock.compute_btn.click()
    assert "no rater layers" in dock.status.text() or "at least two" in dock.status.text()


def test_cancel_leaves_the_dock_usable(make_napari_viewer, qtbot):
    viewer, dock = _open(make_napari_viewer, "phantom_3d")
    dock.compute_btn.click()
    dock.cancel_btn.click()
    qtbot.waitUntil(lambda: dock.compute_btn.isEnabled(), timeout=60_000)
    assert dock.status.text() in ("Cancelled.",) or dock.result is not None
    result = _run(qtbot, dock)  # works again afterwards
    assert len(result.names) == 4


def test_3d_result_layers_copy_anisotropic_geometry(make_napari_viewer):
    viewer, dock = _open(make_napari_viewer, "phantom_3d")
    image = viewer.layers[0]
    assert len(set(np.round(image.scale, 3))) > 1  # anisotropic voxels
    dock.distances.setChecked(False)
    dock.compute(sync=True)
    assert np.isnan(dock.result.pairwise["hausdorff_mm"][0, 1])
    for name in RESULT_LAYERS:
        assert viewer.layers[name].data.shape == image.data.shape
        np.testing.assert_allclose(viewer.layers[name].scale, image.scale)
        np.testing.assert_allclose(viewer.layers[name].translate, image.translate)


def test_controller_without_qt(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom_2d")
    ctl = CompareController(viewer)
    result = ctl.compute(distances=False, consensus="majority")
    assert result.consensus_method == "majority" and len(result.style_rows) == 4
    ctl.compute(distances=False)
    assert sum(ly.name in RESULT_LAYERS for ly in viewer.layers) == 3


def test_dataset_report_button(make_napari_viewer, qtbot, phantom_dataset, tmp_path):
    viewer, dock = _open(make_napari_viewer)
    out = tmp_path / "report"
    dock.run_dataset_report(phantom_dataset, out)
    qtbot.waitUntil(lambda: dock.report is not None and dock.compute_btn.isEnabled(), timeout=120_000)
    assert dock.report.n_cases == 12
    for name in ("raters.md", "raters.csv", "pairwise_dice.csv", "pairwise_dice.png"):
        assert (out / name).is_file()
    assert dock.style_table.rowCount() == 4
    assert "12 cases" in dock.figure.axes[0].get_title()
    assert str(out) in dock.status.text()
    dock.run_dataset_report(tmp_path / "nothing here", out, sync=True)
    assert "failed" in dock.status.text().lower()


def test_dataset_report_never_writes_into_the_dataset(make_napari_viewer, tmp_path, monkeypatch):
    from napari_multirater.datasets.synth import generate_phantom_dataset

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    data = generate_phantom_dataset(tmp_path / "shared" / "ds", 3)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    viewer, dock = _open(make_napari_viewer)
    dock.run_dataset_report(data, sync=True)  # no folder given: the suggestion, outside the dataset
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    from napari_multirater.analysis.dataset_report import default_report_dir

    out = default_report_dir(data)
    assert (out / "raters.md").is_file() and home.resolve() in out.parents
    assert str(out) in dock.status.text()
    # the button: dataset, then an output folder; the dialog starts outside the dataset and a
    # folder inside it is refused
    starts, answers = [], [str(data), str(data / "cases"), str(data), str(tmp_path / "chosen")]
    (tmp_path / "chosen").mkdir()

    def dialog(parent, caption, start=""):
        starts.append(start)
        return answers.pop(0)

    monkeypatch.setattr("napari_multirater.widgets.compare_dock.QFileDialog.getExistingDirectory", dialog)
    dock._choose_dataset()
    assert "outside the dataset" in dock.status.text()
    assert not Path(starts[1]).resolve().is_relative_to(data.resolve())
    monkeypatch.setattr(dock, "run_dataset_report", lambda d, o=None, sync=False: answers.append((d, o)))
    dock._choose_dataset()
    assert answers == [(str(data), str(tmp_path / "chosen"))]
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_dataset_report_skips_and_lists_broken_files(make_napari_viewer, tmp_path):
    from napari_multirater.datasets.synth import generate_phantom_dataset

    data = generate_phantom_dataset(tmp_path / "ds", 4)
    ids = sorted(p.name for p in (data / "cases").iterdir())
    (data / "cases" / ids[0] / "image.nii.gz").write_bytes(b"broken")
    (data / "cases" / ids[1] / "raters" / "smooth.json").write_text("{")
    (data / "cases" / ids[2] / "raters" / "tight.nii.gz").write_bytes(b"broken")
    viewer, dock = _open(make_napari_viewer)
    dock.run_dataset_report(data, tmp_path / "out", sync=True)
    assert dock.report.n_cases == 3  # only the case without a usable image is skipped
    text = dock.status.text()
    assert "3 problem(s)" in text and ids[0] in text and "smooth.json" in text and "tight.nii.gz" in text
    md = (tmp_path / "out" / "raters.md").read_text(encoding="utf-8")  # UTF-8 report, whatever the locale
    assert all(name in md for name in ("image.nii.gz", "smooth.json", "tight.nii.gz"))


def test_threads_disabled_is_shared():
    from napari_multirater._napari import compare_controller, workers

    assert compare_controller.threads_disabled is workers.threads_disabled
