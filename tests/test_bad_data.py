"""No silently wrong geometry or voxels: DICOM gaps are refused unless allowed (and always
reported), NaN/inf refused for every format and entry point, one skip-with-warning policy for
broken cases and rater files of case-folder datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_multirater import cli
from napari_multirater.datasets.case_folder import CaseFolderDataset, iter_cases_reporting
from napari_multirater.datasets.synth import generate_phantom_dataset
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import MedicalIOError, read_image, write_dicom_series, write_image

GEO = Geometry((0.7, 0.7, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.fixture
def gappy_series(tmp_path):
    """8 CT slices 2.5 mm apart; slice 3 truncated (unreadable), as on a damaged copy."""
    img = np.random.default_rng(0).normal(-600, 100, (8, 48, 48)).astype(np.int16)
    files = write_dicom_series(tmp_path / "series", img, GEO)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) // 3])
    return tmp_path / "series"


def test_dicom_gap_is_reported_by_the_reader(gappy_series):
    arr, geo, info = read_image(gappy_series)
    assert arr.shape[0] == 7 and info["nonuniform_spacing"] and info["unreadable_files"] == ["slice0003.dcm"]
    assert "slice0003.dcm" in info["warning"] and "non-uniform slice spacing (2.5 to 5 mm" in info["warning"]


def test_predict_refuses_a_gappy_series_unless_allowed(gappy_series, tmp_path, capsys):
    out = tmp_path / "out"
    base = [
        "predict",
        "--checkpoint",
        "phantom_pionono",
        "--image",
        str(gappy_series),
        "--samples",
        "1",
        "--slice",
        "2",
        "--no-uncertainty",
    ]
    assert cli.main([*base, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--allow-nonuniform" in err and "slice0003.dcm" in err and not out.exists()
    assert cli.main([*base, "--out", str(out), "--allow-nonuniform"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "non-uniform slice spacing" in err
    summary = json.loads((out / "prediction.json").read_text())
    assert any("non-uniform slice spacing" in w for w in summary["warnings"])


def test_reader_shows_the_dicom_warning_as_a_notification(gappy_series, monkeypatch):
    import napari.utils.notifications as notes

    from napari_multirater._napari.reader import read_medical

    shown = []
    monkeypatch.setattr(notes, "show_warning", shown.append)
    read_medical(str(gappy_series))
    assert len(shown) == 1 and "non-uniform slice spacing" in shown[0]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_nan_and_inf_are_refused_for_every_format(tmp_path, suffix):
    img = np.ones((3, 8, 8), np.float32)
    img[1, 2, 2] = np.nan
    img[2, 3, 3] = -np.inf
    path = tmp_path / f"img{suffix}"
    write_image(path, img, GEO)  # written faithfully (NaN kept in the file) ...
    with pytest.raises(MedicalIOError, match=r"2 non-finite voxel\(s\) of 192 \(1 NaN, 1 inf\)"):
        read_image(path)  # ... but never read back as 0 (ITK's NIfTI reader would)
    arr = read_image(path, allow_nonfinite=True)[0]
    assert arr.shape == img.shape


def _broken_dataset(tmp_path):
    root = generate_phantom_dataset(tmp_path / "ds", 6, n_raters=2, val_fraction=0.34)
    cases = root / "cases"
    (cases / "phantom_0001" / "case.json").write_text("{broken")
    mask = cases / "phantom_0002" / "raters" / "tight.nii.gz"
    mask.write_bytes(mask.read_bytes()[:100])
    side = cases / "phantom_0003" / "raters" / "generous.json"
    record = json.loads(side.read_text())
    record["image_sha256"] = "0" * 64
    side.write_text(json.dumps(record))
    return root


def test_case_folder_skip_policy_names_every_file(tmp_path):
    root = _broken_dataset(tmp_path)
    train = CaseFolderDataset(root, split="train", strict=False)
    assert "phantom_0001" not in train.case_ids
    problems: list[str] = []
    cases = list(iter_cases_reporting(train, problems))
    assert [c.case_id for c in cases] == ["phantom_0000", "phantom_0002", "phantom_0003"]
    text = "\n".join(problems)
    assert "case phantom_0001 skipped" in text and "case.json" in text
    assert "rater tight left out" in text and "tight.nii.gz" in text
    assert "rater generous left out" in text and "drawn on another image" in text
    c3 = next(c for c in cases if c.case_id == "phantom_0003")
    assert not c3.valid[c3.rater_names.index("generous")] and c3.valid[c3.rater_names.index("tight")]


def test_training_items_skip_broken_files_with_a_summary(tmp_path, capsys):
    pytest.importorskip("torch")
    from src_training.data import SliceDataset, load_split

    root = _broken_dataset(tmp_path)
    items = SliceDataset(load_split(root, "train"), [0.0, 1.0])
    err = capsys.readouterr().err
    assert items.n_cases == 3 and len(items.problems) == 3
    assert "1 case(s) skipped, 2 rater annotation(s) left out" in err and "phantom_0002" in err


def test_nan_case_is_skipped_not_trained_on_as_zeros(tmp_path, capsys):
    pytest.importorskip("torch")
    from src_training.data import SliceDataset, load_split

    root = generate_phantom_dataset(tmp_path / "ds", 6, n_raters=2, val_fraction=0.34)
    img_path = next((root / "cases" / "phantom_0000").glob("image.*"))
    arr, geo, _ = read_image(img_path)
    arr = arr.astype(np.float32)
    arr.flat[5] = np.nan
    write_image(img_path, arr, geo)
    items = SliceDataset(load_split(root, "train"), [0.0, 1.0])
    err = capsys.readouterr().err
    assert items.n_cases == 3 and "phantom_0000 skipped" in err and "NaN" in err
