"""The napari side of I/O: manifest, reader, writer and sample data inside a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_multirater._napari.reader import get_reader
from napari_multirater.datasets.phantom import make_phantom_case
from napari_multirater.io.geometry import METADATA_KEY, Geometry
from napari_multirater.io.medical import read_image, write_dicom_series, write_image

PLUGIN = "napari-multirater"
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def test_manifest_is_valid_and_importable():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    manifest.validate_imports()
    assert manifest.contributions.readers and manifest.contributions.writers
    assert {s.key for s in manifest.contributions.sample_data} >= {"phantom_2d", "phantom_3d"}


def _volume(tmp_path, suffix):
    arr = (np.arange(6 * 7 * 8).reshape(6, 7, 8) % 50).astype(np.int16) - 1000
    geo = Geometry((0.7, 0.8, 2.5), (10.0, -20.0, 30.0), FLIPPED)
    path = tmp_path / f"ct{suffix}"
    write_image(path, arr, geo)
    return path, arr, geo


@pytest.mark.gui
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_viewer_open_with_plugin_keeps_geometry(make_napari_viewer, tmp_path, suffix):
    path, arr, geo = _volume(tmp_path, suffix)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    layer = layers[0]
    np.testing.assert_array_equal(layer.data, arr)
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.7))
    np.testing.assert_allclose(layer.translate, (30.0, -20.0, 10.0))
    assert Geometry.from_dict(layer.metadata[METADATA_KEY]).matches(geo)
    # the world position of a voxel equals SimpleITK's physical point (reversed)
    np.testing.assert_allclose(layer.data_to_world((2, 3, 4)), geo.index_to_physical((2, 3, 4)))


@pytest.mark.gui
def test_labels_written_through_napari_restore_geometry(make_napari_viewer, tmp_path):
    path, arr, geo = _volume(tmp_path, ".nii.gz")
    viewer = make_napari_viewer()
    image = viewer.open(str(path), plugin=PLUGIN)[0]
    from napari_multirater._napari.layers import transform_kwargs

    mask = (arr > -980).astype(np.uint8)
    labels = viewer.add_labels(mask.astype(np.int32), name="seg", **transform_kwargs(image))
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        out = tmp_path / f"seg{suffix}"
        labels.save(str(out), plugin=PLUGIN)
        back, back_geo, _ = read_image(out)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, mask)
        assert back_geo.matches(geo, rtol=1e-6, atol=1e-5)


@pytest.mark.gui
def test_labels_with_geometry_only_in_their_affine_are_written_with_it(make_napari_viewer, tmp_path, monkeypatch):
    """A layer from another reader keeps its geometry in ``affine`` (no multirater metadata)."""
    from scipy.spatial.transform import Rotation

    from napari_multirater.io.geometry import ShearedGeometryError, geometry_from_layer

    rot_xyz = Rotation.from_euler("z", 30, degrees=True).as_matrix() @ np.diag([1.0, -1.0, 1.0])
    geo = Geometry((0.7, 0.8, 2.5), (10.0, -20.0, 30.0), tuple(rot_xyz.ravel()))
    mask = (np.arange(6 * 7 * 8).reshape(6, 7, 8) % 3 == 0).astype(np.uint8)
    viewer = make_napari_viewer()
    only_affine = viewer.add_labels(mask, name="affine only", affine=geo.affine_zyx())
    aff = np.eye(4)  # scale on the layer, rotation + translation in its affine: composed
    aff[:3, :3], aff[:3, 3] = geo.rotation_zyx, geo.translate_zyx
    composed = viewer.add_labels(mask, name="composed", scale=geo.scale_zyx, affine=aff)
    for layer in (only_affine, composed):
        assert METADATA_KEY not in layer.metadata and geometry_from_layer(layer).matches(geo)
        for suffix in (".nii.gz", ".nrrd"):
            out = tmp_path / f"{layer.name.replace(' ', '_')}{suffix}"
            layer.save(str(out), plugin=PLUGIN)
            back, back_geo, _ = read_image(out)
            np.testing.assert_array_equal(back, mask)
            assert back_geo.matches(geo, rtol=1e-6, atol=1e-5), (back_geo, geo)
    sheared = viewer.add_labels(mask, name="sheared", scale=(2.0, 1.0, 1.0), shear=[0.3, 0.0, 0.0])
    with pytest.raises(ShearedGeometryError, match="shear"):
        geometry_from_layer(sheared)
    import napari_multirater._napari.writer as writer

    reported = []
    monkeypatch.setattr(writer, "_report", reported.append)
    with pytest.warns(UserWarning):  # napari turns the writer's error into a warning...
        assert sheared.save(str(tmp_path / "sheared.nii.gz"), plugin=PLUGIN) == []
    assert not (tmp_path / "sheared.nii.gz").exists()
    assert len(reported) == 1 and "shear" in reported[0] and "sheared.nii.gz" in reported[0]  # ...so say why


@pytest.mark.gui
def test_dicom_folder_opens_and_plain_folder_is_declined(make_napari_viewer, tmp_path):
    arr = (np.arange(5 * 16 * 12).reshape(5, 16, 12) % 300).astype(np.int16) - 1000
    geo = Geometry((0.8, 0.8, 2.5), (-100.0, -120.0, 50.0), tuple(np.eye(3).ravel()))
    write_dicom_series(tmp_path / "series", arr, geo)
    assert get_reader(str(tmp_path / "series")) is not None
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path / "plain")) is None
    viewer = make_napari_viewer()
    layer = viewer.open(str(tmp_path / "series"), plugin=PLUGIN)[0]
    np.testing.assert_array_equal(layer.data, arr)
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.8), rtol=1e-5)


@pytest.mark.gui
def test_sample_data_adds_image_and_one_coloured_labels_layer_per_rater(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom_2d")
    case = make_phantom_case(1)
    names = [layer.name for layer in viewer.layers]
    assert names[0] == case.case_id
    assert names[1:] == [f"mr rater: {r}" for r in case.rater_names]
    colors = set()
    for k, layer in enumerate(viewer.layers[1:]):
        np.testing.assert_array_equal(layer.data, case.masks[k])
        np.testing.assert_allclose(layer.scale, viewer.layers[0].scale)
        colors.add(tuple(np.round(layer.colormap.map(np.array([1]))[0], 3)))
    assert len(colors) == 4


@pytest.mark.gui
def test_case_folder_opens_as_image_plus_raters(make_napari_viewer, phantom_dataset):
    viewer = make_napari_viewer()
    layers = viewer.open(str(phantom_dataset / "cases" / "phantom_0002"), plugin=PLUGIN)
    assert [lyr.name for lyr in layers][1:] == [
        "mr rater: tight",
        "mr rater: generous",
        "mr rater: smooth",
        "mr rater: misses_faint",
    ]


@pytest.mark.gui
def test_real_dicom_series_opens(make_napari_viewer, shared_data):
    series = shared_data / "lidc-ct" / "LIDC-IDRI-0006" / "series"
    viewer = make_napari_viewer()
    layer = viewer.open(str(series), plugin=PLUGIN)[0]
    assert layer.data.shape == (24, 512, 512)
    np.testing.assert_allclose(layer.scale[0], 2.5, atol=0.01)
