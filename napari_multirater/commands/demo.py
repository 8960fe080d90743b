"""``multirater demo``: open napari with the phantom sample case and the plugin's docks."""

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


def show_model_outputs(viewer, docks) -> None:
    """When a model ran, put its outputs (samples, personas, uncertainty) and its dock in front."""
    names = [layer.name for layer in viewer.layers]
    if not any(n.startswith(("mr samples", "mr persona", "mr uncertainty")) for n in names):
        return
    for layer in viewer.layers:
        if layer.name.startswith(("mr consensus", "mr agreement", "mr samples", "mr mean probability")):
            layer.visible = False
    dock = docks.get("Model & sampling")
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parent()
    if dock is not None:
        dock.raise_()


def wait_for_workers(workers, timeout_s: float = 300.0) -> None:
    """Keep the GUI responsive until the demo's background work has finished."""
    import time

    from qtpy.QtWidgets import QApplication

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        QApplication.processEvents()
        if not any(getattr(w, "is_running", False) for w in workers):
            break
        time.sleep(0.02)
    for _ in range(10):
        QApplication.processEvents()


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
    workers = []
    for widget in docks.values():
        run_demo = getattr(widget, "run_demo", None)
        if callable(run_demo):
            started = run_demo()  # docks return the workers they started (or None)
            workers += [w for w in (started if isinstance(started, (list, tuple)) else [started]) if w is not None]
    wait_for_workers(workers)
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
