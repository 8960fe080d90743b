"""LIDC readings from File > Open: finding the XML and series, and the layers in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_multirater._napari.lidc_reader import CONTOUR_KEY, POINTS_NAME, lidc_layer_data
from napari_multirater._napari.reader import get_reader
from napari_multirater.datasets.lidc_folder import find_lidc, load_lidc_case
from napari_multirater.io import Geometry, read_image
from napari_multirater.io.medical import write_dicom_series

PLUGIN = "napari-multirater"
SQUARE = [(2, 2), (8, 2), (8, 8), (2, 8)]


def _xml(uids, series_uid) -> str:
    def roi(uid, pts):
        edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in pts)
        return f"<roi><imageZposition>0</imageZposition><imageSOP_UID>{uid}</imageSOP_UID>{edges}</roi>"

    big = f"<unblindedReadNodule><noduleID>1</noduleID>{roi(uids[1], SQUARE)}</unblindedReadNodule>"
    small = f"<unblindedReadNodule><noduleID>2</noduleID>{roi(uids[2], [(10, 3)])}</unblindedReadNodule>"
    return (
        f'<LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader><SeriesInstanceUid>{series_uid}'
        f"</SeriesInstanceUid></ResponseHeader>"
        f"<readingSession><servicingRadiologistID>111</servicingRadiologistID>{big}{small}</readingSession>"
        f"<readingSession><servicingRadiologistID>222</servicingRadiologistID>{big}</readingSession>"
        "</LidcReadMessage>"
    )


@pytest.fixture
def patient(tmp_path):
    """patient/ with series/ (4 slices) and the reader XML beside it, plus a decoy XML."""
    geom = Geometry((0.7, 0.7, 2.0), (0.0, 0.0, -10.0), tuple(np.eye(3).ravel()))
    write_dicom_series(tmp_path / "patient" / "series", np.zeros((4, 12, 12), np.int16) - 1000, geom)
    _, _, info = read_image(tmp_path / "patient" / "series")
    (tmp_path / "patient" / "069.xml").write_text(_xml(info["sop_uids"], info["series_uid"]))
    (tmp_path / "patient" / "notes.xml").write_text("<notes/>")
    return tmp_path / "patient"


def test_lidc_found_from_folder_xml_and_parent(patient, tmp_path):
    want = (patient / "069.xml", patient / "series")
    assert find_lidc(patient) == want and find_lidc(patient / "069.xml") == want
    assert find_lidc(tmp_path) == want  # a folder holding one patient folder
    assert find_lidc(patient / "notes.xml") is None
    assert get_reader(str(patient)).__name__ == "read_lidc"
    assert get_reader(str(patient / "069.xml")).__name__ == "read_lidc"
    assert get_reader(str(patient / "notes.xml")) is None
    assert get_reader(str(patient / "series")).__name__ == "read_medical"  # the series alone: just the CT
    (tmp_path / "p2").mkdir()
    (tmp_path / "p2" / "series").symlink_to(patient / "series")
    (tmp_path / "p2" / "x.xml").write_text(
        (patient / "069.xml").read_text().replace("</SeriesInstanceUid>", "9</SeriesInstanceUid>")
    )
    assert find_lidc(tmp_path) is None  # two readings: a collection, not one reading


def test_lidc_layer_data_names_outlines_and_points(patient):
    case, info = load_lidc_case(*find_lidc(patient))
    layers = lidc_layer_data(case, info)
    assert [kind for *_, kind in layers] == ["image", "labels", "labels", "points"]
    names = [kw["name"] for _, kw, _ in layers]
    assert names[1:] == ["mr rater: reader1", "mr rater: reader2", POINTS_NAME]
    assert [kw["metadata"]["reader_id"] for _, kw, _ in layers[1:3]] == ["111", "222"]
    assert all(kw["metadata"][CONTOUR_KEY] == 1 for _, kw, _ in layers[1:3])
    np.testing.assert_allclose(layers[1][1]["scale"], (2.0, 0.7, 0.7))
    assert layers[1][0][1, 2, 2] == 0 and layers[1][0][1, 5, 5] == 1 and layers[1][0].sum() == 25  # outline outside
    np.testing.assert_array_equal(layers[3][0], [[2, 3, 10]])  # slice, row (y), column (x)
    assert list(layers[3][1]["features"]["reader"]) == ["reader1"]


@pytest.mark.gui
def test_real_lidc_reading_opens_with_its_readers(make_napari_viewer, shared_data):
    from napari_multirater.datasets.lidc_xml import import_lidc_xml

    folder = shared_data / "lidc-ct" / "LIDC-IDRI-0006"
    viewer = make_napari_viewer()
    viewer.open(str(folder), plugin=PLUGIN)
    names = [layer.name for layer in viewer.layers]
    readers = [f"mr rater: reader{k}" for k in range(1, 5)]
    assert names == ["LIDC-IDRI-0006", *readers, POINTS_NAME]
    _, masks, _, geom, _ = import_lidc_xml(folder / "078.xml", folder / "series")
    image = viewer.layers["LIDC-IDRI-0006"]
    assert image.data.shape == (24, 512, 512)
    np.testing.assert_allclose(image.scale, geom.scale_zyx)
    for k, name in enumerate(readers):
        layer = viewer.layers[name]
        assert layer.contour == 1 and layer.metadata["multirater_role"] == "rater"
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        np.testing.assert_array_equal(layer.data, masks[k])
    from napari_multirater._napari.compare_controller import CompareController

    inp = CompareController(viewer).gather()  # what the Compare dock preselects: the four readers
    assert inp.names == [f"reader{k}" for k in range(1, 5)] and inp.reference is image
    np.testing.assert_allclose(inp.spacing, geom.scale_zyx)
    points = viewer.layers[POINTS_NAME]
    assert len(points.data) == 16 and set(points.features["reader"]) == {f"reader{k}" for k in range(1, 5)}
    viewer.open(str(folder / "078.xml"), plugin=PLUGIN)  # the XML itself: the same reading again
    assert sum(layer.name.startswith("LIDC-IDRI-0006") for layer in viewer.layers) == 2


def test_import_lidc_cli_writes_cases_with_reader_provenance(patient, tmp_path, capsys):
    from napari_multirater.cli import main
    from napari_multirater.datasets.case_folder import CaseFolderDataset

    out = tmp_path / "ds"
    assert (
        main(
            ["import", "lidc", "--dicom", str(patient / "series"), "--xml", str(patient / "069.xml"), "--out", str(out)]
        )
        == 0
    )
    assert "1 case (the whole series); 2 readers (reader1=111, reader2=222)" in capsys.readouterr().out
    ds = CaseFolderDataset(out)
    case = ds[0]
    assert ds.rater_names == ["reader1", "reader2"] and case.masks.shape == (2, 4, 12, 12)
    assert case.masks[:, 1].sum() == 50 and ds.manifest["modality"] == "CT"  # 5x5 inside the 7x7 outline
    prov = case.meta["sidecars"]["reader2"]["provenance"]
    assert prov["kind"] == "imported" and prov["reader_id"] == "222" and prov["reading_session"] == 2
    assert prov["outline_rule"] == "contour excluded (LIDC)"
    # the patient folder alone finds the XML; a 4 mm box around the one nodule; the old inclusive rule
    crop_args = ["--crop-mm", "4", "--include-contour", "--out", str(tmp_path / "crops")]
    assert main(["import", "lidc", "--dicom", str(patient), *crop_args]) == 0
    crops = CaseFolderDataset(tmp_path / "crops")
    assert len(crops) == 1 and crops[0].image.shape == (2, 6, 6)
    assert crops[0].meta["sidecars"]["reader1"]["provenance"]["outline_rule"].startswith("contour included")
    assert crops[0].geometry.origin[2] == pytest.approx(-10.0) and crops[0].masks.any()
    assert (
        main(
            [
                "import",
                "lidc",
                "--dicom",
                str(patient / "series"),
                "--xml",
                str(patient / "notes.xml"),
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "notes.xml: not an LIDC reader XML" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_import_real_lidc_reading_as_nodule_crops(shared_data, tmp_path, capsys):
    from napari_multirater.cli import main
    from napari_multirater.datasets.case_folder import CaseFolderDataset

    folder = shared_data / "lidc-ct" / "LIDC-IDRI-0006"
    assert (
        main(
            [
                "import",
                "lidc",
                "--dicom",
                str(folder / "series"),
                "--xml",
                str(folder / "078.xml"),
                "--crop-mm",
                "40",
                "--out",
                str(tmp_path / "ds"),
            ]
        )
        == 0
    )
    assert "3 nodule crops of 40 mm; 4 readers" in capsys.readouterr().out
    ds = CaseFolderDataset(tmp_path / "ds")
    assert ds.check() == [] and ds.case_ids == [f"LIDC-IDRI-0006_nodule0{j}" for j in (1, 2, 3)]
    assert all(c.image.shape == (16, 64, 64) and c.valid.all() and c.masks.any() for c in ds)
    assert {c.meta["sidecars"]["reader1"]["provenance"]["reader_id"] for c in ds} == {"-599886082"}
