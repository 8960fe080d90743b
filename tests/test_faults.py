"""Fault injection: a write that fails never looks like a success and never replaces good data;
a failed annotation save is always recoverable; two sessions never silently overwrite each other.

Size limits are real (``RLIMIT_FSIZE`` set in a forked child, so the test process itself is not
limited: writes past the limit fail with EFBIG, and SimpleITK's NIfTI writer returns normally
with a truncated file). Read-only folders: see ``readonly`` in ``test_faults_dock.py``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import resource

import numpy as np
import pytest

from napari_multirater.annotation.store import AnnotationStore, SaveConflict, SaveError, config_path
from napari_multirater.io import atomic
from napari_multirater.io.atomic import WriteError, atomic_write_text
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import MedicalIOError, read_image, read_label_image, write_image

GEO = Geometry((0.7, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
LIMIT = 20 * 1024  # bytes: far below a 16x128x128 random mask


def _mask(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((16, 128, 128)) > 0.5).astype(np.uint8)


def in_limited_child(fn, limit: int = LIMIT):
    """Run ``fn()`` in a forked child with RLIMIT_FSIZE = ``limit``; returns ("ok", value) or
    ("error", type name, message)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            out = ("ok", fn())
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            out = ("error", type(e).__name__, str(e))
        with os.fdopen(w, "wb") as f:
            f.write(pickle.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


@pytest.fixture
def store(tmp_path) -> AnnotationStore:
    s = AnnotationStore.create_project(tmp_path / "proj", "proj")
    s.add_case(np.random.default_rng(1).normal(0, 100, (16, 128, 128)).astype(np.int16), GEO, "case0")
    return s


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_size_limit_during_write_image_raises_and_keeps_the_previous_file(tmp_path, suffix):
    path = tmp_path / f"mask{suffix}"
    write_image(path, _mask(0), GEO, label=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = in_limited_child(lambda: str(write_image(path, _mask(1), GEO, label=True)))
    assert out[0] == "error" and out[1] == "ImageWriteError", out
    assert str(path) in out[2] and "cannot write" in out[2]
    assert "size limit" in out[2] or "File too large" in out[2]
    np.testing.assert_array_equal(read_label_image(path)[0], _mask(0))  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary files left


def test_size_limit_during_save_mask_keeps_the_saved_mask(store):
    store.save_mask("case0", "ann", _mask(0), provenance={"kind": "drawn"})
    out = in_limited_child(lambda: store.save_mask("case0", "ann", _mask(1), provenance={"kind": "drawn"}))
    assert out[:2] == ("error", "SaveError"), out
    assert "case0" in out[2] and "ann" in out[2] and "size limit" in out[2]
    mask, sidecar = store.load_mask("case0", "ann")
    np.testing.assert_array_equal(mask, _mask(0))
    assert sidecar["revision"] == 1


def test_size_limit_during_json_and_checkpoint_writes(tmp_path):
    pytest.importorskip("torch")
    from src_training.checkpoint import load_checkpoint, save_checkpoint
    from src_training.models.registry import build_model

    side = tmp_path / "a.json"
    atomic_write_text(side, '{"good": true}\n')
    out = in_limited_child(lambda: atomic_write_text(side, json.dumps({"x": "y" * 50_000})))
    assert out[:2] == ("error", "WriteError") and "file size limit exceeded" in out[2] and str(side) in out[2]
    assert json.loads(side.read_text()) == {"good": True}

    model = build_model({"method": "unet", "num_raters": 2, "base_channels": 4, "depth": 2})
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, model, {"name": "good"})
    out = in_limited_child(lambda: str(save_checkpoint(ckpt, model, {"name": "bad"})), limit=4096)
    assert out[:2] == ("error", "WriteError") and str(ckpt) in out[2], out
    assert load_checkpoint(ckpt)[1]["name"] == "good"


@pytest.mark.parametrize(
    "code,reason",
    [
        (errno.ENOSPC, "disk full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
        (errno.EFBIG, "size limit"),
    ],
)
def test_every_os_failure_becomes_one_error_naming_file_and_reason(tmp_path, monkeypatch, code, reason):
    path = tmp_path / "m.nii.gz"
    write_image(path, _mask(0), GEO, label=True)

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic, "fsync_file", fail)  # the disk reports the error late, at fsync
    with pytest.raises(WriteError) as info:
        write_image(path, _mask(1), GEO, label=True)
    assert isinstance(info.value, MedicalIOError) and info.value.errno == code
    assert str(info.value).startswith(f"{path}: cannot write: ") and reason in str(info.value)
    assert "\n" not in str(info.value)
    np.testing.assert_array_equal(read_image(path)[0], _mask(0))
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]


def test_truncated_nifti_message_reports_the_real_byte_count(tmp_path):
    path = tmp_path / "m.nii.gz"
    write_image(path, _mask(0), GEO, label=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedicalIOError, match=r"truncated NIfTI file: (\d+) of 262496 bytes") as info:
        read_image(path)
    present = int(str(info.value).split("truncated NIfTI file: ")[1].split()[0])
    assert 10_000 < present < 262_496  # what decompresses before the cut, not 0
    raw = tmp_path / "m.nii"
    write_image(raw, _mask(0), GEO, label=True)
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(MedicalIOError, match="truncated NIfTI file: 1000 of 262496 bytes"):
        read_image(raw)


def test_two_sessions_same_rater_never_overwrite_each_other(store):
    """Two windows (or machines on a shared folder) with the same rater id: the later save over
    a newer revision is refused and kept as a conflict copy; nothing is overwritten."""
    other = AnnotationStore(store.root)  # the second session
    m_a, side_a = store.load_mask("case0", "sam")
    m_b, side_b = other.load_mask("case0", "sam")
    assert (m_a, side_a, m_b, side_b) == (None, None, None, None)
    a = store.save_mask("case0", "sam", _mask(1), provenance={"kind": "drawn"}, expected_revision=0)
    assert a["revision"] == 1
    with pytest.raises(SaveConflict) as info:
        other.save_mask("case0", "sam", _mask(2), provenance={"kind": "drawn"}, expected_revision=0)
    copy = info.value.copy_path
    assert copy.parent == store.case_dir("case0") / "raters" / ".conflicts" and str(copy) in str(info.value)
    np.testing.assert_array_equal(read_label_image(copy)[0], _mask(2))  # the refused work is kept
    mask, sidecar = store.load_mask("case0", "sam")
    np.testing.assert_array_equal(mask, _mask(1))
    assert sidecar["revision"] == 1 and store.annotated_raters("case0") == ["sam"]
    # session A goes on from its own revision; B, after reloading (revision 2), may save again
    store.save_mask("case0", "sam", _mask(3), provenance={"kind": "drawn"}, expected_revision=1)
    b = other.save_mask("case0", "sam", _mask(4), provenance={"kind": "drawn"}, expected_revision=2)
    assert b["revision"] == 3


def test_save_mask_turns_os_errors_into_save_error(store, monkeypatch):
    store.save_mask("case0", "ann", _mask(0), provenance={"kind": "drawn"})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", full)
    with pytest.raises(SaveError, match="case case0, rater ann: not saved: .*disk full"):
        store.save_mask("case0", "ann", _mask(1), provenance={"kind": "drawn"})
    monkeypatch.undo()
    np.testing.assert_array_equal(store.load_mask("case0", "ann")[0], _mask(0))
    assert not (store.case_dir("case0") / "raters" / ".pending" / "ann").exists()


def test_emergency_copy_goes_to_the_config_folder_then_the_project(store, monkeypatch):
    path = store.save_emergency_copy("case0", "ann", _mask(1), GEO, {"provenance": {"kind": "drawn"}})
    assert path.is_relative_to(config_path().parent / "unsaved")
    record = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert record["project"] == str(store.root.resolve()) and record["case_id"] == "case0"
    monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", "/proc/no-such-folder/rater.json")  # not writable
    path = store.save_emergency_copy("case0", "ann", _mask(1), GEO, {})
    assert path.parent == store.case_dir("case0") / "raters" / ".pending"


def test_size_limit_in_the_labels_writer_keeps_the_previous_file(tmp_path):
    from napari_multirater._napari.writer import write_labels

    path = tmp_path / "labels.nii"
    meta = {"scale": (2.5, 0.8, 0.7), "translate": (0.0, 0.0, 0.0), "metadata": {}}
    write_labels(str(path), _mask(0), meta)
    out = in_limited_child(lambda: write_labels(str(path), _mask(1), meta))
    assert out[0] == "error" and "size limit" in out[2] and str(path) in out[2], out
    np.testing.assert_array_equal(read_label_image(path)[0], _mask(0))
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii"]


@pytest.mark.slow
def test_size_limit_during_predict_exits_2_with_complete_files_only(tmp_path):
    """A real ``multirater predict`` under RLIMIT_FSIZE: one line, exit 2, no truncated output."""
    import subprocess
    import sys
    from pathlib import Path

    img = tmp_path / "ct.nii.gz"
    write_image(img, np.random.default_rng(0).normal(-500, 200, (3, 64, 64)).astype(np.float32), GEO)
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_multirater.cli",
            "predict",
            "--checkpoint",
            "phantom_pionono",
            "--image",
            str(img),
            "--out",
            str(out),
            "--samples",
            "2",
            "--float-maps",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "size limit" in errors[0]
    assert not out.exists()  # staged: a failed prediction leaves no folder, no partial files
    assert [f.name for f in tmp_path.iterdir()] == ["ct.nii.gz"]
