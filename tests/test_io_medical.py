"""Medical image I/O: round trips, DICOM series, bad input, napari transform agreement."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from napari_multirater.datasets.shared import shared_data_dir
from napari_multirater.io import (
    Geometry,
    MedicalIOError,
    is_dicom_dir,
    is_supported_file,
    read_image,
    read_label_image,
    write_image,
)
from napari_multirater.io.medical import write_dicom_series

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
FLIP3 = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
GEOM3 = Geometry((0.75, 0.625, 2.5), (-10.5, 20.25, -101.0), FLIP3)
GEOM2 = Geometry((0.75, 2.5), (-10.5, 3.25), (-1.0, 0.0, 0.0, -1.0))


def _oblique(det: int = 1) -> tuple[float, ...]:
    from scipy.spatial.transform import Rotation

    r = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag([1, 1, det])
    return tuple(float(v) for v in r.ravel())


def _sitk_write(path, arr, geom: Geometry, vector=False):
    img = sitk.GetImageFromArray(arr, isVector=vector)
    geom.apply_to(img)
    sitk.WriteImage(img, str(path))
    return path


def _labels(shape, max_value, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, max_value + 1, size=shape).astype(dtype)
    a.flat[0] = max_value
    return a


# --- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("max_value,dtype", [(200, np.uint8), (1000, np.uint16)])
def test_label_round_trip(tmp_path, suffix, ndim, max_value, dtype):
    geom = GEOM3 if ndim == 3 else GEOM2
    shape = (4, 5, 6) if ndim == 3 else (5, 6)
    src = _sitk_write(tmp_path / f"src{suffix}", _labels(shape, max_value, np.int32), geom)
    arr, g, info = read_image(src)
    assert arr.shape == shape and info["source_path"] == str(src)
    assert g.spacing == geom.spacing and g.origin == geom.origin and g.direction == geom.direction

    out = write_image(tmp_path / f"out{suffix}", arr.astype(np.int64), g, label=True)
    back, g2, _ = read_label_image(out, reference=geom, shape=shape)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, arr)
    raw = sitk.ReadImage(str(out))  # exact geometry, checked with SimpleITK itself
    assert raw.GetSpacing() == geom.spacing and raw.GetOrigin() == geom.origin
    assert raw.GetDirection() == geom.direction
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_oblique_image_round_trip(tmp_path, suffix):
    geom = Geometry((0.7, 0.9, 2.5), (-12.5, 30.0, -100.0), _oblique())
    a = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    out = write_image(tmp_path / f"o{suffix}", a, geom)
    back, g, _ = read_image(out)
    np.testing.assert_array_equal(back, a)
    assert g.matches(geom) and np.allclose(g.direction, geom.direction, atol=1e-6)


def test_split_header_formats_write_both_files(tmp_path):
    a = _labels((3, 4, 5), 3, np.uint8)
    write_image(tmp_path / "x.mhd", a, GEOM3, label=True)
    write_image(tmp_path / "x.nhdr", a, GEOM3, label=True)
    write_image(tmp_path / "x.mhd", a * 0, GEOM3, label=True)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mhd", "x.nhdr", "x.raw.gz", "x.zraw"]
    assert read_image(tmp_path / "x.mhd")[0].max() == 0
    np.testing.assert_array_equal(read_image(tmp_path / "x.nhdr")[0], a)


def test_compressed_nifti(tmp_path):
    p = write_image(tmp_path / "c.nii.gz", np.zeros((8, 8, 8), np.uint8), GEOM3, label=True)
    assert p.read_bytes()[:2] == b"\x1f\x8b"


def test_write_label_errors(tmp_path):
    with pytest.raises(MedicalIOError, match="neg.nii.gz.*negative"):
        write_image(tmp_path / "neg.nii.gz", np.full((2, 2, 2), -1), GEOM3, label=True)
    with pytest.raises(MedicalIOError, match="big.nrrd.*exceeds 65535"):
        write_image(tmp_path / "big.nrrd", np.full((2, 2, 2), 70000), GEOM3, label=True)
    with pytest.raises(MedicalIOError, match=r"x.png.*cannot write"):
        write_image(tmp_path / "x.png", np.zeros((2, 2, 2)), GEOM3)
    with pytest.raises(MedicalIOError, match="2D but the geometry is 3D"):
        write_image(tmp_path / "d.nrrd", np.zeros((2, 2)), GEOM3)
    assert list(tmp_path.iterdir()) == []


def test_is_supported_file():
    assert is_supported_file("a/b.NII.GZ") and is_supported_file("x.nhdr") and is_supported_file("s.dcm")
    assert not is_supported_file("x.gz") and not is_supported_file("x.png")


# --- DICOM ------------------------------------------------------------------------------------
def _ct(shape=(5, 16, 12), seed=0):
    return np.random.default_rng(seed).integers(-1024, 2000, size=shape).astype(np.int16)


@pytest.mark.parametrize("direction", [FLIP3, "oblique"])
def test_dicom_series_round_trip(tmp_path, direction):
    direction = _oblique() if direction == "oblique" else direction
    geom = Geometry((0.8, 0.7, 2.5), (-100.0, 50.0, -300.0), direction)
    ct = _ct()
    write_dicom_series(tmp_path / "s", ct, geom)
    assert is_dicom_dir(tmp_path / "s")
    arr, g, info = read_image(tmp_path / "s")
    np.testing.assert_array_equal(arr, ct)
    assert arr.dtype == np.int16 and info["modality"] == "CT" and len(info["sop_uids"]) == 5
    assert g.matches(geom) and g.spacing[2] == pytest.approx(2.5)
    assert "warning" not in info


def test_dicom_missing_slice_and_single_file(tmp_path):
    geom = Geometry((0.8, 0.7, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    files = write_dicom_series(tmp_path, _ct((5, 8, 8)), geom)
    files[2].unlink()
    arr, _, info = read_image(tmp_path)
    assert arr.shape == (4, 8, 8) and "non-uniform slice spacing" in info["warning"]
    one, g, info = read_image(files[0])
    assert one.shape == (1, 8, 8) and info["format"] == ".dcm" and g.spacing[:2] == pytest.approx((0.8, 0.7))


def test_dicom_dir_without_dicom(tmp_path):
    assert not is_dicom_dir(tmp_path)
    with pytest.raises(MedicalIOError, match=rf"{tmp_path.name}.*directory is empty"):
        read_image(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    _sitk_write(tmp_path / "img.nrrd", np.zeros((2, 2), np.uint8), GEOM2)
    assert not is_dicom_dir(tmp_path) and not is_dicom_dir(tmp_path / "notes.txt")
    with pytest.raises(MedicalIOError, match=rf"{tmp_path.name}.*no DICOM series"):
        read_image(tmp_path)


def test_dicom_dir_two_series_loads_largest(tmp_path):
    geom = Geometry((0.8, 0.7, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    big = _ct((6, 8, 8), 1)
    write_dicom_series(tmp_path, _ct((3, 8, 8), 2), geom, prefix="a", series_uid="1.2.3.1")
    write_dicom_series(tmp_path, big, geom, prefix="b", series_uid="1.2.3.2")
    arr, _, info = read_image(tmp_path)
    np.testing.assert_array_equal(arr, big)
    assert info["series_uid"] == "1.2.3.2"
    assert "2 DICOM series" in info["warning"] and "1.2.3.1 (3 slices)" in info["warning"]


def test_real_dicom_series():
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data not found: set MULTIRATER_SHARED_DATA to the LIDC data folder")
    series = root / "lidc-ct" / "LIDC-IDRI-0006" / "series"
    assert is_dicom_dir(series)
    arr, g, info = read_image(series)
    assert arr.shape == (24, 512, 512) and arr.dtype == np.int16
    assert g.spacing == pytest.approx((0.625, 0.625, 2.5))
    assert g.origin[2] == pytest.approx(-171.5) and g.is_identity_direction
    assert len(set(info["sop_uids"])) == 24 and info["series_uid"].startswith("1.3.6.1.4.1.14519")
    crop, cg, _ = read_image(root / "lidc-3d-crops" / "LIDC-IDRI-0006_ct_crop.nrrd")
    # the crop (same HU) starts 9 slices below the series: compare the overlap via physical positions
    i0 = np.rint((np.asarray(cg.origin) - g.origin) / g.spacing).astype(int)  # x, y, z
    np.testing.assert_array_equal(crop[9:], arr[: 32 - 9, i0[1] : i0[1] + 96, i0[0] : i0[0] + 96])


# --- bad input --------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(MedicalIOError, match="nope.nii.gz: file not found"):
        read_image(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.999])
def test_truncated_file(tmp_path, suffix, keep):
    """SimpleITK itself zero-fills truncated NIfTI files silently; read_image must refuse them."""
    p = _sitk_write(tmp_path / f"trunc{suffix}", _ct((8, 32, 32)), GEOM3)
    data = p.read_bytes()
    p.write_bytes(data[: max(400, int(len(data) * keep))])
    with pytest.raises(MedicalIOError, match=rf"trunc{suffix}: (truncated|cannot read)"):
        read_image(p)


def test_garbage_nrrd(tmp_path):
    p = tmp_path / "garbage.nrrd"
    p.write_bytes(gzip.compress(b"not an image") + bytes(range(256)))
    with pytest.raises(MedicalIOError, match="garbage.nrrd.*cannot read"):
        read_image(p)


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "photo.png"
    p.write_bytes(b"x")
    with pytest.raises(MedicalIOError, match="photo.png: unsupported file type"):
        read_image(p)


def test_4d_and_vector_images(tmp_path):
    p4 = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(p4))
    with pytest.raises(MedicalIOError, match="four.nii.gz: 4D image"):
        read_image(p4)
    pv = _sitk_write(tmp_path / "rgb.nrrd", np.zeros((3, 4, 5, 3), np.uint8), GEOM3, vector=True)
    with pytest.raises(MedicalIOError, match="rgb.nrrd: multi-component pixels"):
        read_image(pv)
    p1 = tmp_path / "single.nii.gz"  # a trailing singleton 4th axis is dropped
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 3, 4, 5), np.int16), isVector=False), str(p1))
    assert read_image(p1)[0].shape == (3, 4, 5)


def test_float_labels(tmp_path):
    ok = _sitk_write(tmp_path / "intfloat.nrrd", np.array([[0.0, 1.0], [2.0, 0.0]], np.float32), GEOM2)
    arr, _, _ = read_label_image(ok)
    assert arr.dtype == np.uint8 and arr.max() == 2
    bad = _sitk_write(tmp_path / "half.nii.gz", np.array([[0.0, 0.5], [1.0, 0.0]], np.float32), GEOM2)
    with pytest.raises(MedicalIOError, match="half.nii.gz: non-integer label values"):
        read_label_image(bad)


def test_label_geometry_mismatch(tmp_path):
    other = Geometry((0.75, 0.7, 2.5), GEOM3.origin, GEOM3.direction)
    p = _sitk_write(tmp_path / "seg.nrrd", np.zeros((4, 5, 6), np.uint8), other)
    with pytest.raises(MedicalIOError, match=r"seg.nrrd: geometry does not match the image: spacing"):
        read_label_image(p, reference=GEOM3)
    with pytest.raises(MedicalIOError, match=r"seg.nrrd: shape \(4, 5, 6\) does not match .*\(4, 5, 7\)"):
        read_label_image(p, shape=(4, 5, 7))


# --- napari display position ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["identity", "flipped", "zflip", "oblique", "oblique-reflection"])
def test_napari_layer_world_matches_sitk(kind):
    """napari's layer transform (scale, translate, rotate from layer_kwargs) puts every voxel at
    SimpleITK's physical point (reversed to z, y, x)."""
    layers = pytest.importorskip("napari.layers")
    direction = {
        "identity": tuple(np.eye(3).ravel()),
        "flipped": FLIP3,
        "zflip": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        "oblique": _oblique(1),
        "oblique-reflection": _oblique(-1),
    }[kind]
    geom = Geometry((0.7, 0.9, 2.5), (-12.5, 30.0, -100.0), direction)
    img = sitk.Image(7, 6, 5, sitk.sitkInt16)
    geom.apply_to(img)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Non-orthogonal slicing")
        image = layers.Image(np.zeros((5, 6, 7), np.int16), **geom.layer_kwargs())
        labels = layers.Labels(np.zeros((5, 6, 7), np.uint8), **geom.layer_kwargs())
    for idx in [(0, 0, 0), (4, 5, 6), (2, 3, 1), (1, 0, 6), (0, 5, 0)]:
        expected = img.TransformIndexToPhysicalPoint(tuple(int(i) for i in idx[::-1]))[::-1]
        np.testing.assert_allclose(image.data_to_world(idx), expected, atol=1e-9)
        np.testing.assert_allclose(labels.data_to_world(idx), expected, atol=1e-9)
        np.testing.assert_allclose(geom.index_to_physical(idx), expected, atol=1e-9)
