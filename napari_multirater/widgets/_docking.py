"""How the plugin's docks sit in napari's window: short titles without Qt mnemonics (a bare ``&`` in a
tab title is an accelerator: "Model _sampling"), and a dock opened beside another of ours is
tabified with it, so opening a second dock never grows the window past the screen."""

from __future__ import annotations

import weakref

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QDockWidget, QMainWindow, QScrollArea, QVBoxLayout, QWidget

_OURS: weakref.WeakSet = weakref.WeakSet()


def _dock_of(widget):
    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def scrolling_body(widget: QWidget) -> QWidget:
    """Give ``widget`` a vertical scroll area and return the body to lay out in it: a dock taller
    than the screen scrolls instead of growing napari's window."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
    scroll.setFrameShape(QScrollArea.NoFrame)
    outer.addWidget(scroll)
    widget.setMinimumWidth(360)
    body = QWidget()
    scroll.setWidget(body)
    widget._scroll, widget._body = scroll, body
    return body


def fit_width(widget, cap: int = 620) -> None:
    """Widen a scrolling dock to its content's minimum width (up to ``cap`` px; beyond, it scrolls)."""
    scroll, body = getattr(widget, "_scroll", None), getattr(widget, "_body", None)
    if scroll is None or body is None:
        return
    need = body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4
    if need > widget.minimumWidth():
        widget.setMinimumWidth(min(need, cap))


def fit_to_screen(win) -> None:
    """Shrink a window that grew past its screen's available area (e.g. when docks were stacked)."""
    screen = win.screen() if hasattr(win, "screen") else QApplication.primaryScreen()
    if screen is None or win.isMaximized() or win.isFullScreen():
        return
    avail = screen.availableGeometry()
    if win.frameGeometry().height() > avail.height() or win.frameGeometry().width() > avail.width():
        extra_h = win.frameGeometry().height() - win.height()
        extra_w = win.frameGeometry().width() - win.width()
        win.resize(min(win.width(), avail.width() - extra_w), min(win.height(), avail.height() - extra_h))


def _alive_in(dock, win) -> bool:
    """Whether ``dock`` still exists (its C++ side may be gone with a closed viewer) and sits in ``win``."""
    try:
        return dock.parentWidget() is win
    except RuntimeError:
        _OURS.discard(dock)
        return False


def tab_title(title: str) -> str:
    """The title as a tab shows it literally (``&`` doubled)."""
    return title.replace("&", "&&")


def settle_dock(widget, title: str) -> bool:
    """Once ``widget`` sits in a dock: set the short tab title and tabify it with another visible
    dock of this plugin in the same area. Returns True when it did (first call after docking)."""
    dock = _dock_of(widget)
    if dock is None or dock in _OURS:
        return False
    _OURS.add(dock)
    fit_width(widget)
    dock.setWindowTitle(tab_title(title))
    win = dock.parentWidget()
    if isinstance(win, QMainWindow) and not dock.isFloating():
        area = win.dockWidgetArea(dock)
        others = [
            d
            for d in list(_OURS)
            if d is not dock
            and _alive_in(d, win)
            and d.isVisible()
            and not d.isFloating()
            and win.dockWidgetArea(d) == area
        ]
        if others:
            win.tabifyDockWidget(others[0], dock)
            dock.raise_()
        fit_to_screen(win)
    return True
