"""A read-only project driving the real "Collect annotations" dock: Save, autosave tick, case
switch and closing never lose the annotation (headless napari via pytest-xvfb).

Read-only is made real where possible: a read-only bind mount of the project folder (root with
mount rights; chmod does not stop root). Elsewhere the project's writes fail with EROFS at the
writer (the temporary files of :mod:`napari_multirater.io.atomic` and the lock files cannot be
created), which is what a read-only file system does. ``READONLY_MODE`` says which one ran.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from napari_multirater._napari.annotate_controller import CLOSE_CHOICES, ConflictError, decide_close
from napari_multirater.annotation import AnnotationStore
from napari_multirater.annotation import lock as lock_module
from napari_multirater.io import atomic
from napari_multirater.io.medical import read_label_image
from tests.conftest import make_annotation_project

PLUGIN = "napari-multirater"


def _can_bind_mount(tmp: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    d = tmp / "probe"
    d.mkdir()
    try:
        ok = subprocess.run(["mount", "--bind", str(d), str(d)], capture_output=True).returncode == 0
    except OSError:
        return False
    if ok:
        subprocess.run(["umount", str(d)], capture_output=True)
    return ok


@contextlib.contextmanager
def readonly(folder: Path, monkeypatch, tmp: Path, mode: str = "bind mount"):
    """Make ``folder`` read-only: a real ro bind mount (when possible and asked for), else EROFS
    injected at the writer."""
    if mode == "bind mount" and _can_bind_mount(tmp):
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
            with pytest.raises(OSError):
                (folder / "probe").write_text("x")
            yield "bind mount"
        finally:
            subprocess.run(["umount", str(folder)], check=True)
        return
    root = str(folder.resolve())

    def inside(path) -> bool:
        return str(Path(path).resolve()).startswith(root)

    def guard(real):
        def wrapped(*args, dir=None, **kw):
            if dir is not None and inside(dir):
                raise OSError(errno.EROFS, "Read-only file system", str(dir))
            return real(*args, dir=dir, **kw)

        return wrapped

    real_open = os.open

    def ro_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(atomic.tempfile, "mkstemp", guard(atomic.tempfile.mkstemp))
        m.setattr(atomic.tempfile, "mkdtemp", guard(atomic.tempfile.mkdtemp))
        m.setattr(lock_module.os, "open", ro_open)
        yield "injected EROFS"


@pytest.fixture
def project(tmp_path) -> AnnotationStore:
    return make_annotation_project(tmp_path / "project", 2)


def _paint(layer, rows, cols):
    rr, cc = np.mgrid[rows, cols]
    layer.data_setitem((rr.ravel(), cc.ravel()), 1)


def _rescued(store, case) -> list[Path]:
    return sorted(store.emergency_folders(case)[0].glob("kim.unsaved-*.nii.gz"))


def test_decide_close_table():
    assert decide_close("safe") == "close"
    assert decide_close("at_risk") == "ask"
    assert [decide_close("at_risk", c) for c in CLOSE_CHOICES] == ["save_as", "close", "stay"]
    with pytest.raises(ValueError):
        decide_close("at_risk", "maybe")


@pytest.mark.gui
@pytest.mark.parametrize("ro_mode", ["bind mount", "injected EROFS"])
def test_read_only_project_save_autosave_switch_close(make_napari_viewer, project, tmp_path, monkeypatch, ro_mode):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Collect annotations")
    notes = []
    dock._napari_notify = notes.append
    dock.rater_edit.setText("kim")
    dock.rater_btn.click()
    dock.open_project(project.root)
    ctl = dock.controller
    ctl.load_case("lung0")
    _paint(ctl.annotation_layer, slice(3, 9), slice(3, 9))
    ctl.save()  # revision 1 on disk
    saved = (ctl.annotation_layer.data != 0).astype(np.uint8)
    _paint(ctl.annotation_layer, slice(12, 20), slice(12, 20))
    drawn = (ctl.annotation_layer.data != 0).astype(np.uint8)
    layer = ctl.annotation_layer

    with readonly(project.root, monkeypatch, tmp_path, ro_mode) as mode:
        print("READONLY_MODE:", mode)
        # Save button: error shown and notified, emergency copy in the config folder, layer kept
        dock.save_btn.click()
        copies = _rescued(project, "lung0")
        assert len(copies) == 1 and len(notes) == 1 and str(copies[0]) in notes[0]
        assert "read-only" in notes[0].lower() and str(copies[0]) in dock.status.text()
        np.testing.assert_array_equal(read_label_image(copies[0])[0], drawn)
        assert ctl.annotation_layer is layer and ctl.has_unsaved_changes()

        # autosave tick: never raises, same mask -> no second copy, status says where it is
        ctl.set_autosave_interval(0.01)
        ctl.session.postpone(now=ctl.clock() - 10)
        dock.tick()
        assert "Autosave failed" in dock.status.text() and str(copies[0]) in dock.status.text()
        assert len(_rescued(project, "lung0")) == 1

        # case switch: refused, the layer and the case stay
        dock.load_case("lung1")
        assert ctl.case_id == "lung0" and ctl.annotation_layer is layer
        assert str(copies[0]) in dock.status.text()

        # an edit after the rescue gets its own copy on the next failure
        _paint(ctl.annotation_layer, slice(22, 25), slice(3, 6))
        ctl.set_autosave_interval(0)
        dock.load_case("lung1")
        assert len(_rescued(project, "lung0")) == 2

        # window close: the emergency copy holds the work, so closing goes on without asking
        asked = []
        dock.ask_close = lambda msg: asked.append(msg) or ("cancel", None)
        assert dock.confirm_close() and not asked

        # ... unless the copy fails too (config folder unwritable): then the user is asked
        _paint(ctl.annotation_layer, slice(26, 28), slice(3, 6))
        monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", "/proc/nowhere/rater.json")
        assert not dock.confirm_close() and len(asked) == 1  # Cancel: window stays open
        assert "emergency copy failed too" in asked[0] and ctl.annotation_layer is layer
        target = tmp_path / "elsewhere" / "mine.nii.gz"
        target.parent.mkdir()
        dock.ask_close = lambda msg: ("save_as", str(target))
        assert dock.confirm_close()
        np.testing.assert_array_equal(read_label_image(target)[0], (layer.data != 0).astype(np.uint8))
        assert (tmp_path / "elsewhere" / "mine.json").is_file()

    # the project was never touched: the saved revision is intact
    mask, sidecar = project.load_mask("lung0", "kim")
    np.testing.assert_array_equal(mask, saved)
    assert sidecar["revision"] == 1
    dock.teardown()


@pytest.mark.gui
def test_same_rater_in_two_windows_conflict_is_kept_and_told(make_napari_viewer, project):
    from napari_multirater._napari.annotate_controller import AnnotateController

    v1, v2 = make_napari_viewer(), make_napari_viewer()
    notes: list[str] = []
    ctls = []
    for v in (v1, v2):
        c = AnnotateController(v)
        c.notify = notes.append
        c.set_rater("kim")
        c.open_project(project.root)
        c.load_case("lung0")
        ctls.append(c)
    a, b = ctls
    _paint(a.annotation_layer, slice(3, 9), slice(3, 9))
    a.save()
    _paint(b.annotation_layer, slice(20, 30), slice(20, 30))
    mine = (b.annotation_layer.data != 0).astype(np.uint8)
    with pytest.raises(ConflictError) as info:
        b.save()
    assert "another session saved" in str(info.value) and notes and notes[-1] == str(info.value)
    copy = Path(b.last_rescue)
    assert copy.parent.name == ".conflicts" and str(copy) in str(info.value)
    np.testing.assert_array_equal(read_label_image(copy)[0], mine)
    np.testing.assert_array_equal(project.load_mask("lung0", "kim")[0], (a.annotation_layer.data != 0))
    assert b.has_unsaved_changes()  # still open in window 2; autosave keeps refusing, never overwrites
    assert b.autosave_tick(now=b.clock() + 3600).startswith("Autosave failed")
    assert len(list(copy.parent.glob("kim-*.nii.gz"))) == 1  # the same mask is kept once
    np.testing.assert_array_equal(project.load_mask("lung0", "kim")[0], (a.annotation_layer.data != 0))
    b.overwrite()  # the user said so
    np.testing.assert_array_equal(project.load_mask("lung0", "kim")[0], mine)
    for c in ctls:
        c.disconnect()
