"""``multirater demo``: open napari with the phantom sample case and the plugin's docks, compare the
raters, run the bundled demo model (samples, an entropy map, all personas) and bring its outputs to
the front. Every step runs synchronously, so the screenshot shows the finished results.
"""

from __future__ import annotations

import os
import sys

PLUGIN = "napari-multirater"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="open napari with the sample multi-rater case and the plugin docks")
    p.add_argument("--screenshot", help="save a screenshot of the whole window to this PNG")
    p.add_argument("--exit", action="store_true", help="close after the screenshot (headless use)")
    p.add_argument("--3d", dest="three_d", action="store_true", help="use the 3D phantom")
    p.set_defaults(func=run)


def plugin_dock_names() -> list[str]:
    """Display names of every dock widget the plugin contributes."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    return [w.display_name for w in (manifest.contributions.widgets or [])]


def build_demo_viewer(three_d: bool = False, show: bool = True):
    """A viewer with the sample case loaded and every plugin dock open (returns viewer, docks)."""
    import napari

    from .._napari.layers import rater_layers

    try:  # the PyQt5 deprecation toast would cover the demo screenshot; the README says PyQt6 works too
        import napari._qt.qt_main_window as qt_main_window

        qt_main_window.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    viewer = napari.Viewer(show=show, title="napari-multirater demo")
    viewer.open_sample(PLUGIN, "phantom_3d" if three_d else "phantom_2d")
    for layer in rater_layers(viewer):
        layer.contour = 1  # outlines: every rater stays visible where they overlap
    docks = {}
    for name in plugin_dock_names():
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=bool(docks))
        docks[name] = widget
    return viewer, docks


def _raise_dock(widget) -> None:
    """Bring the tab of the QDockWidget holding ``widget`` to the front."""
    dock = widget
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parent()
    if dock is not None:
        dock.raise_()


def run_compare_demo(dock) -> None:
    """Compare raters dock: compare the preselected raters, heatmap in front."""
    dock.refresh_layers()
    dock.compute(sync=True)
    _raise_dock(dock)


def run_model_demo(dock) -> bool:
    """Model & sampling dock: load the demo model, show samples, an entropy overlay and all personas
    (the newest outputs are shown, older ones hidden). False when there is no demo model or image."""
    from .._napari.model_request import ALL_EXPERTS, RunKind
    from ..inference.registry import demo_model_name

    name = demo_model_name()
    if name is None or dock.controller.image_layer is None:
        return False
    dock.model_combo.setCurrentText(name)
    if not dock.load_model(sync=True):
        return False
    dock.n_spin.setValue(8)
    dock.run(RunKind.SAMPLES, sync=True)
    dock.kind_combo.setCurrentText("entropy")
    dock.run(RunKind.UNCERTAINTY, sync=True)
    dock.expert_combo.setCurrentText(ALL_EXPERTS)
    dock.run(RunKind.PERSONAS, sync=True)  # last: the newest outputs are shown, older ones hidden
    dock.tabs.setCurrentIndex(1)
    return True


DEMOS = {"Compare raters": run_compare_demo, "Model & sampling": run_model_demo}


def show_model_outputs(viewer, docks) -> None:
    """When a model ran, put its outputs (samples, personas, uncertainty) and its dock in front."""
    names = [layer.name for layer in viewer.layers]
    if not any(n.startswith(("mr samples", "mr persona", "mr uncertainty")) for n in names):
        return
    for layer in viewer.layers:
        if layer.name.startswith(("mr consensus", "mr agreement", "mr samples", "mr mean probability")):
            layer.visible = False
    if "Model & sampling" in docks:
        _raise_dock(docks["Model & sampling"])


def run(args) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    warnings.filterwarnings("ignore", message="System theme detection requires a Qt6 backend")
    import napari
    from qtpy.QtWidgets import QApplication

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        print("error: no display; run under Xvfb (make demo does this) or set DISPLAY", file=sys.stderr)
        return 2
    viewer, docks = build_demo_viewer(args.three_d)
    viewer.window._qt_window.resize(1366, 768)  # a small laptop screen: everything must fit
    for _ in range(20):
        QApplication.processEvents()
    for name, widget in docks.items():  # manifest order: the comparison first, then the model
        if name in DEMOS:
            DEMOS[name](widget)
    show_model_outputs(viewer, docks)
    for _ in range(20):
        QApplication.processEvents()
    if args.screenshot:
        viewer.screenshot(args.screenshot, canvas_only=False)
        print(f"saved screenshot {args.screenshot} ({len(viewer.layers)} layers, docks: {', '.join(docks) or 'none'})")
    if args.exit:
        viewer.close()
        return 0
    napari.run()
    return 0
