"""Regenerate the README's screenshots at 1366x768 (a small laptop screen).

    xvfb-run -a -s "-screen 0 1366x768x24" python tools/readme_screenshots.py [--out docs]

1. ``screenshot.png``: the demo (phantom, rater outlines, the phantom model's personas).
2. ``screenshot_lidc_roi.png``: the real CT series LIDC-IDRI-0006 opened as a patient folder, the
   LIDC model pre-selected with the ROI as default, one click on the nodule, four personas.
   Needs ``../shared/data/lidc-ct`` (skipped with a message where it is absent).
3. ``screenshot_prefill.png``: an annotation project, a model run on the case image, Pre-fill.
4. ``screenshot_learn_style.png``: the Collect dock's Next-case queue and a Learn my style result
   (a phantom rater with the unseen style generous_2, 8 cases, Pionono, a short fit).
5. ``lidc_readers.png``: LIDC-IDRI-0006 opened with File > Open, the four reading sessions as
   outlines (LIDC convention: the edge map is outside the nodule) on the slice where all four
   outlined the nodule. Needs ``../shared/data/lidc-ct``.
6. ``first_hour_*.png``: the steps of docs/first-hour.md on LIDC-IDRI-0006 (open, personas at an
   ROI click, compare the readers, pre-fill, edit and save). Needs ``../shared/data/lidc-ct``.

Look at the images before committing them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERIES_PATIENT = ROOT.parent / "shared" / "data" / "lidc-ct" / "LIDC-IDRI-0006"
PLUGIN = "napari-multirater"
SIZE = (1366, 768)


def _settle(n: int = 30) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(n):
        QApplication.processEvents()


def _window(viewer) -> None:
    win = viewer.window._qt_window
    win.showNormal()
    win.resize(*SIZE)
    win.move(0, 0)
    _settle()


def _shot(viewer, path: Path) -> None:
    _settle()
    viewer.screenshot(str(path), canvas_only=False)
    h, w = np.asarray(viewer.screenshot(canvas_only=False)).shape[:2]
    print(f"wrote {path} ({w}x{h} px, window {viewer.window._qt_window.width()}x{viewer.window._qt_window.height()})")


def _show_legend(dock) -> None:
    """Scroll the Model dock to the Persona tab's legend (the card stays one scroll away)."""
    _settle()
    dock._scroll.ensureWidgetVisible(dock.legend, 0, 10)


def demo(out: Path) -> None:
    from napari_multirater.commands.demo import build_demo_viewer, run_model_demo, show_model_outputs

    viewer, docks = build_demo_viewer()
    _window(viewer)
    run_model_demo(docks["Model & sampling"])
    show_model_outputs(viewer, docks)
    docks["Model & sampling"].tabs.setCurrentIndex(1)
    _show_legend(docks["Model & sampling"])
    _shot(viewer, out / "screenshot.png")
    viewer.close()


def _lidc_viewer(title: str, shots: str):
    """A 1366x768 viewer with LIDC-IDRI-0006 opened by the plugin (File > Open Folder..., the patient
    folder); None, with a message naming ``shots``, where the shared series is absent."""
    import napari

    if not SERIES_PATIENT.is_dir():
        print(f"skipped {shots}: {SERIES_PATIENT} not present")
        return None
    viewer = napari.Viewer(title=title)
    _window(viewer)
    viewer.open(str(SERIES_PATIENT), plugin=PLUGIN)
    return viewer


def _reader1_nodule(viewer):
    """(the CT layer, reader 1's nodule centre as a voxel index, the same in world coordinates)."""
    image = viewer.layers["LIDC-IDRI-0006"]
    idx = np.argwhere(np.asarray(viewer.layers["mr rater: reader1"].data) > 0).mean(0)
    return image, idx, np.asarray(image.data_to_world(idx), float)


def lidc_roi(out: Path) -> None:
    viewer = _lidc_viewer("napari-multirater: LIDC-IDRI-0006 with an ROI click", "screenshot_lidc_roi.png")
    if viewer is None:
        return
    image, idx, world = _reader1_nodule(viewer)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model & sampling")
    dock.image_combo.setCurrentText(image.name)
    dock.device_combo.setCurrentText("cpu")
    dock.load_model(sync=True)  # lidc_dpersona is pre-selected for CT; the ROI becomes the default
    viewer.dims.set_point(0, world[0])
    viewer.layers["mr roi point"].add(idx)  # the layer shares the image grid: data coordinates = voxel index
    dock.expert_combo.setCurrentText("all experts")
    dock.run("personas", sync=True)
    dock.tabs.setCurrentIndex(1)
    _show_legend(dock)
    viewer.camera.center = tuple(world[1:])
    viewer.camera.zoom = 6.0
    viewer.layers.selection.active = image
    _shot(viewer, out / "screenshot_lidc_roi.png")
    viewer.close()


def _hide_notifications(viewer) -> None:
    """Close the open-file notice (a toast over the canvas corner)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    _settle()
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()


def lidc_readers(out: Path) -> None:
    viewer = _lidc_viewer("napari-multirater: LIDC-IDRI-0006 reading sessions", "lidc_readers.png")
    if viewer is None:
        return
    image = viewer.layers["LIDC-IDRI-0006"]
    readers = [viewer.layers[f"mr rater: reader{k}"] for k in range(1, 5)]
    all_four = np.logical_and.reduce([np.asarray(r.data) > 0 for r in readers])
    z = int(np.argmax(all_four.sum(axis=(1, 2))))  # the slice where the four agree the most
    idx = np.argwhere(all_four[z]).mean(0)
    world = np.asarray(image.data_to_world((z, *idx)), float)
    _settle()
    viewer.dims.set_point(0, world[0])
    viewer.camera.center = tuple(world[1:])
    viewer.camera.zoom = 10.0
    viewer.layers.selection.active = readers[0]
    _hide_notifications(viewer)
    _shot(viewer, out / "lidc_readers.png")
    viewer.close()


def prefill(out: Path) -> None:
    import os

    import napari

    from napari_multirater.annotation import AnnotationStore
    from napari_multirater.datasets.phantom import make_phantom_case

    tmp = Path(tempfile.mkdtemp(prefix="mr-shots-"))
    os.environ["NAPARI_MULTIRATER_CONFIG"] = str(tmp / "config")  # never the user's rater identity
    store = AnnotationStore.create_project(tmp / "project", "phantoms", intensity_window=(-1000, 400))
    for k in range(3):
        case = make_phantom_case(k, seed=3, ndim=2)
        store.add_case(case.image, case.geometry, f"lung{k}")
    viewer = napari.Viewer(title="napari-multirater: pre-fill from a model")
    _window(viewer)
    _, adock = viewer.window.add_plugin_dock_widget(PLUGIN, "Collect annotations")
    adock.rater_edit.setText("dana")
    adock.rater_btn.click()
    adock.open_project(store.root)
    _, mdock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model & sampling")
    mdock.model_combo.setCurrentText("phantom_dpersona")
    mdock.device_combo.setCurrentText("cpu")
    mdock.load_model(sync=True)
    mdock.expert_combo.setCurrentText("tight")
    mdock.run("personas", sync=True)
    adock.prefill_btn.click()  # hides the persona and puts the annotation on top by itself
    _raise_dock(adock)  # the Model dock raises itself when first shown: bring the annotation dock forward after
    _shot(viewer, out / "screenshot_prefill.png")
    viewer.close()


def _raise_dock(widget) -> None:
    """Bring a tabbed dock widget to the front."""
    _settle()
    dock = widget.parentWidget()
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parentWidget()
    if dock is not None:
        dock.raise_()
    _settle()


def first_hour(out: Path) -> None:
    """docs/first-hour.md, step by step on LIDC-IDRI-0006: open, personas at an ROI click, compare
    the four readers, then collect: new project, pre-fill, edit, save (first_hour_*.png)."""
    import os

    tmp = Path(tempfile.mkdtemp(prefix="mr-first-hour-"))
    os.environ["NAPARI_MULTIRATER_CONFIG"] = str(tmp / "config")  # a new user: no remembered rater
    viewer = _lidc_viewer("napari-multirater: first hour on LIDC-IDRI-0006", "first_hour_*.png")
    if viewer is None:
        return
    image, idx, world = _reader1_nodule(viewer)
    viewer.dims.set_point(0, world[0])
    viewer.camera.center = tuple(world[1:])
    viewer.camera.zoom = 6.0
    _shot(viewer, out / "first_hour_1_open.png")

    _, mdock = viewer.window.add_plugin_dock_widget(PLUGIN, "Model & sampling")
    mdock.image_combo.setCurrentText(image.name)
    mdock.device_combo.setCurrentText("cpu")
    mdock.load_model(sync=True)
    viewer.layers["mr roi point"].add(idx)
    mdock.expert_combo.setCurrentText("all experts")
    mdock.run("personas", sync=True)
    mdock.tabs.setCurrentIndex(1)
    _show_legend(mdock)
    viewer.layers.selection.active = image
    _shot(viewer, out / "first_hour_2_personas.png")

    _, cdock = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare raters")
    cdock.refresh_layers()
    cdock.compute(sync=True)
    _raise_dock(cdock)
    _shot(viewer, out / "first_hour_3_compare.png")

    _, adock = viewer.window.add_plugin_dock_widget(PLUGIN, "Collect annotations")
    adock.rater_edit.setText("dr_new")
    adock.rater_btn.click()
    adock.new_project_from_layer(tmp / "my-project", image)
    adock.prefill_combo.setCurrentText("mr persona: expert_3")
    adock.prefill_btn.click()
    viewer.dims.set_point(0, world[0])
    viewer.camera.center = tuple(world[1:])
    viewer.camera.zoom = 6.0
    _raise_dock(adock)
    _shot(viewer, out / "first_hour_4_prefill.png")

    own = adock.controller.annotation_layer
    z = int(round(idx[0]))
    rows = np.nonzero(np.asarray(own.data[z]).any(1))[0]
    if rows.size:  # erase the lowest row of the pre-fill on this slice, as the eraser does
        cols = np.nonzero(np.asarray(own.data[z, rows[-1]]))[0]
        own.data_setitem((np.full(cols.size, z), np.full(cols.size, rows[-1]), cols), 0)
    adock.save()
    _raise_dock(adock)
    _shot(viewer, out / "first_hour_5_saved.png")
    viewer.close()


def learn_style(out: Path) -> None:
    import os

    import napari
    from qtpy.QtWidgets import QScrollArea

    from napari_multirater.annotation import AnnotationStore
    from napari_multirater.datasets.phantom import make_phantom_case

    tmp = Path(tempfile.mkdtemp(prefix="mr-shots-"))
    os.environ["NAPARI_MULTIRATER_CONFIG"] = str(tmp / "config")
    os.environ["NAPARI_MULTIRATER_MODELS"] = str(tmp / "models")  # the new model goes here, not to the user's
    os.environ["MULTIRATER_NOTHREADS"] = "1"
    store = AnnotationStore.create_project(tmp / "project", "phantoms", intensity_window=(-1000, 400))
    for k in range(10):
        case = make_phantom_case(k, seed=11, ndim=2, n_raters=8)
        cid = store.add_case(case.image, case.geometry, f"lung{k}")
        if k < 8:
            store.save_mask(
                cid, "newbie", case.masks[case.rater_names.index("generous_2")], provenance={"kind": "drawn"}
            )
        store.save_mask(cid, "tight", case.masks[0], provenance={"kind": "drawn"})
    viewer = napari.Viewer(title="napari-multirater: learn my style, next case")
    _window(viewer)
    _, adock = viewer.window.add_plugin_dock_widget(PLUGIN, "Collect annotations")
    adock.rater_edit.setText("newbie")
    adock.rater_btn.click()
    adock.open_project(store.root)
    panel = adock.collect_panel
    panel.model_combo.setCurrentText("phantom_pionono")
    panel.steps_spin.setValue(40)
    panel.learn_btn.click()
    panel.open_next()
    adock.sections.setCurrentIndex(1)
    area = panel.parentWidget()
    while area is not None and not isinstance(area, QScrollArea):
        area = area.parentWidget()
    if area is not None:
        _settle()
        area.ensureWidgetVisible(panel.result_label, 0, 10)
    _shot(viewer, out / "screenshot_learn_style.png")
    viewer.close()


def main(argv=None) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument(
        "--only", choices=("demo", "lidc_roi", "prefill", "learn_style", "lidc_readers", "first_hour"), action="append"
    )
    args = p.parse_args(argv)
    try:
        import napari._qt.qt_main_window as qmw

        qmw.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only or ("demo", "lidc_roi", "prefill", "learn_style", "lidc_readers", "first_hour"):
        globals()[name](out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
