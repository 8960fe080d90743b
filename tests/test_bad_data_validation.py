"""Bad data gets a clear error (exit 2, one line naming the key or file), never a silent wrong
result: LIDC npz shards, DICOM series (series choice, duplicates, gantry tilt), ambiguous import
files, LIDC XML (repeated sessions, non-finite coordinates) and too small nodule crops."""

from __future__ import annotations

import numpy as np
import pytest

from napari_multirater import cli
from napari_multirater.datasets import open_dataset
from napari_multirater.datasets.lidc_xml import import_lidc_xml
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import MedicalIOError, read_image, write_dicom_series, write_image


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


# --- LIDC XML on DICOM series -----------------------------------------------------------------------
CT_GEOM = Geometry((0.7, 0.7, 2.0), (0.0, 0.0, -10.0), tuple(np.eye(3).ravel()))
SERIES_A, SERIES_B = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.202"
SQUARE = [(2, 2), (8, 2), (8, 8), (2, 8)]


def _ct(tmp_path, uid=SERIES_A, prefix="slice", n=4, value=-600):
    vol = np.full((n, 12, 12), value, np.int16) + np.arange(n, dtype=np.int16)[:, None, None]  # slice k: value + k
    files = write_dicom_series(tmp_path / "ct", vol, CT_GEOM, series_uid=uid, prefix=prefix)
    return tmp_path / "ct", files


def _xml(path, sop, *, series=SERIES_A, sessions=1, coords=SQUARE, extra_session=""):
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in coords)
    roi = f"<roi><imageZposition>-8.0</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>{edges}</roi>"
    sess = (
        "<readingSession><servicingRadiologistID>7</servicingRadiologistID>"
        f"<unblindedReadNodule><noduleID>1</noduleID>{roi}{roi}</unblindedReadNodule></readingSession>"
    )
    header = f"<ResponseHeader><SeriesInstanceUid>{series}</SeriesInstanceUid></ResponseHeader>" if series else ""
    path.write_text(
        f'<LidcReadMessage xmlns="http://www.nih.gov">{header}{sess * sessions}{extra_session}</LidcReadMessage>'
    )
    return path


def _import_lidc(folder, xml, out, *extra):
    return cli.main(["import", "lidc", "--dicom", str(folder), "--xml", str(xml), "--out", str(out), *extra])


def _one_line_error(capsys, expected):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and expected in err, err


def test_lidc_xml_picks_its_own_series_not_the_largest(tmp_path, capsys):
    folder, files = _ct(tmp_path)
    write_dicom_series(folder, np.full((6, 12, 12), -1000, np.int16), CT_GEOM, series_uid=SERIES_B, prefix="blank")
    sop = _sop(files[1])
    image, masks, _, _, info = import_lidc_xml(_xml(tmp_path / "r.xml", sop), folder)
    assert (
        info["series_uid"] == SERIES_A and image.shape[0] == 4 and (image[:, 0, 0] == [-600, -599, -598, -597]).all()
    )  # was the blank one
    assert masks[0, 1].sum() == 25  # a 7x7 edge map: its 5x5 inside (the LIDC convention, issue 28)
    renamed = _xml(tmp_path / "renamed.xml", sop, series="1.2.3.999")  # series UID unknown, its slices are here
    info = import_lidc_xml(renamed, folder)[4]
    assert info["series_uid"] == SERIES_A and "holds 1 of the XML's 1 contour slices" in info["warning"]
    _xml(tmp_path / "other.xml", "1.2.3.4.5", series="1.2.3.999")  # neither series nor slices here: refused
    assert _import_lidc(folder, tmp_path / "other.xml", tmp_path / "out") == 2
    _one_line_error(capsys, "names series 1.2.3.999, which is not in")
    assert not (tmp_path / "out").exists()


def _sop(path) -> str:
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return r.GetMetaData("0008|0018").strip()


def test_dicom_duplicate_file_is_dropped_and_a_conflicting_one_refused(tmp_path):
    import shutil

    import SimpleITK as sitk

    folder, files = _ct(tmp_path, n=5)
    shutil.copy(files[2], folder / "zz_copy.dcm")
    image, geom, info = read_image(folder)
    assert image.shape[0] == 5 and geom.spacing[2] == pytest.approx(2.0)  # was 6 slices, 0.67 mm "non-uniform"
    assert (image[:, 0, 0] == -600 + np.arange(5)).all()  # in position order
    assert info["duplicate_files"] == ["zz_copy.dcm"] and "nonuniform_spacing" not in info
    assert "zz_copy.dcm" in info["warning"]
    sl = sitk.ReadImage(str(files[2]))
    arr = sitk.GetArrayFromImage(sl)
    other = sitk.GetImageFromArray(arr + 5)
    other.CopyInformation(sl)
    for key in sl.GetMetaDataKeys():
        other.SetMetaData(key, sl.GetMetaData(key))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(folder / "zz_copy.dcm"))
    writer.Execute(other)
    with pytest.raises(MedicalIOError, match="same SOPInstanceUID .* but different pixels"):
        read_image(folder)


def test_dicom_gantry_tilt_is_refused_naming_it(tmp_path, capsys):
    import SimpleITK as sitk

    folder, files = _ct(tmp_path, n=6)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, f in enumerate(files):  # 15 degree tilt: each slice 2 mm up and 0.54 mm along y
        sl = sitk.ReadImage(str(f))
        x, y, z = (float(v) for v in sl.GetMetaData("0020|0032").split("\\"))
        sl.SetMetaData("0020|0032", f"{x}\\{y + k * 2.0 * np.tan(np.radians(15)):.6f}\\{z}")
        writer.SetFileName(str(f))
        writer.Execute(sl)
    xml = _xml(tmp_path / "r.xml", _sop(files[1]))
    assert _import_lidc(folder, xml, tmp_path / "out") == 2  # was imported with a 2.7 mm shear, no warning
    _one_line_error(capsys, "gantry tilt 15.0 degrees")


def test_lidc_xml_repeated_sessions_count_once(tmp_path):
    folder, files = _ct(tmp_path)
    other = "<readingSession><servicingRadiologistID>8</servicingRadiologistID></readingSession>"
    xml = _xml(tmp_path / "r.xml", _sop(files[1]), sessions=300, extra_session=other)
    _, masks, names, _, info = import_lidc_xml(xml, folder)
    assert names == ["reader1", "reader2"] and masks.shape[0] == 2  # was 301 readers
    assert "299 reading session(s) repeat an earlier one" in info["warning"]


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_lidc_xml_non_finite_coordinate_refused(tmp_path, capsys, bad):
    folder, files = _ct(tmp_path)
    xml = _xml(tmp_path / "r.xml", _sop(files[1]), coords=[*SQUARE[:3], (bad, 8)])
    assert _import_lidc(folder, xml, tmp_path / "out") == 2  # nan was drawn as if absent
    _one_line_error(capsys, "non-finite edgeMap coordinate")


def test_import_lidc_crop_smaller_than_a_few_voxels_refused(tmp_path, capsys):
    folder, files = _ct(tmp_path)
    xml = _xml(tmp_path / "r.xml", _sop(files[1]))
    assert _import_lidc(folder, xml, tmp_path / "out", "--crop-mm", "0.5") == 2  # was a 1x1x1 case
    _one_line_error(capsys, "--crop-mm 0.5 is under 3 pixels across the slice")
    assert _import_lidc(folder, xml, tmp_path / "ok", "--crop-mm", "2.5") == 0
