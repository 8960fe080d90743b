"""A "Help" button per dock: the dock's help paragraph (napari_multirater/help/) in a message box."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QMessageBox, QPushButton

from ..help_text import dock_help


def help_button(parent, dock_title: str) -> QPushButton:
    btn = QPushButton("Help")
    btn.setToolTip(f"what the {dock_title} dock does (the opening paragraph of its page in the docs)")
    btn.clicked.connect(lambda: show_help(parent, dock_title))
    return btn


def show_help(parent, dock_title: str) -> QMessageBox:
    box = QMessageBox(parent)
    box.setWindowTitle(f"Help: {dock_title}")
    box.setTextFormat(Qt.MarkdownText)
    box.setText(dock_help(dock_title))
    box.setStandardButtons(QMessageBox.Close)
    box.setModal(False)
    box.show()
    return box
