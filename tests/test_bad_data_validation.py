"""Bad data gets a clear error (exit 2, one line naming the key or file), never a silent wrong
result: LIDC npz shards, DICOM series (series choice, duplicates, gantry tilt), ambiguous import
files, LIDC XML (repeated sessions, non-finite coordinates) and too small nodule crops."""

from __future__ import annotations

import numpy as np
import pytest

from napari_multirater import cli
from napari_multirater.datasets import open_dataset
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import write_image


# --- LIDC npz shards ----------------------------------------------------------------------------
def _npz(path, masks, patient_id=None, n=3):
    images = np.zeros((n, 8, 8), np.uint8)
    pid = np.array(["p1"] * n) if patient_id is None else patient_id
    np.savez(path, images=images, masks=masks, patient_id=pid)
    return path


def _raters_cli(data, tmp_path, capsys) -> str:
    assert cli.main(["raters", "--data", str(data), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


_FLOAT = np.full((3, 4, 8, 8), 0.7, np.float32)
_NAN = np.where(np.eye(8, dtype=bool), np.float32(np.nan), np.float32(0)) * np.ones((3, 4, 1, 1), np.float32)


@pytest.mark.parametrize(
    ("masks", "pid", "expected"),
    [
        (_FLOAT, None, "'masks' must hold only 0 and 1, found 0.7"),  # was truncated to 0
        (-np.ones((3, 4, 8, 8), np.int8), None, "'masks' must hold only 0 and 1, found -1"),  # was 255
        (_NAN, None, "'masks' must hold only 0 and 1, found nan"),  # was 0
        (np.zeros((3, 4, 8, 8), np.uint8), np.array(["p1", "p2"]), "'patient_id' has shape (2,)"),  # IndexError
        (np.zeros((3, 0, 8, 8), np.uint8), None, "'masks' has zero raters"),  # reduction / reshape error
    ],
    ids=["float", "negative", "nan", "short-patient-id", "zero-raters"],
)
def test_lidc_npz_bad_arrays_exit_2_naming_the_key(tmp_path, capsys, masks, pid, expected):
    err = _raters_cli(_npz(tmp_path / "bad.npz", masks, pid), tmp_path, capsys)
    assert err.startswith("error:") and "bad.npz" in err and expected in err


def test_lidc_npz_binary_masks_of_any_integer_or_bool_type_load(tmp_path):
    for dtype in (bool, np.int64, np.float32):
        masks = np.zeros((3, 2, 8, 8), dtype)
        masks[:, :, 2:4, 2:4] = 1
        case = open_dataset(_npz(tmp_path / f"ok_{np.dtype(dtype).name}.npz", masks))[0]
        assert case.masks.dtype == np.uint8 and case.masks.sum() == 8 and case.rater_names == LIDC2


LIDC2 = ["annotation_1", "annotation_2"]


# --- import folder: one rater, two files -----------------------------------------------------------
def test_import_two_files_of_one_rater_is_ambiguous(tmp_path, capsys):
    geom = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    case = tmp_path / "src" / "c1"
    case.mkdir(parents=True)
    mask = np.zeros((3, 6, 6), np.uint8)
    write_image(case / "image.nii.gz", np.zeros((3, 6, 6), np.int16), geom)
    write_image(case / "bob.nii.gz", mask, geom, label=True)
    mask[1, 2:4, 2:4] = 1
    write_image(case / "alice.nii.gz", mask, geom, label=True)
    write_image(case / "alice.nrrd", np.zeros_like(mask), geom, label=True)  # which one is alice's?
    out = tmp_path / "out"
    assert cli.main(["import", "folder", str(tmp_path / "src"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "alice.nii.gz and alice.nrrd are both 'alice' (ambiguous)" in err and "Traceback" not in err
    assert not out.exists()
