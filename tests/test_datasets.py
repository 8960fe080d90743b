"""Case-folder format, LIDC shard adapter, phantoms: loading, validation errors, determinism."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from napari_multirater.analysis import cli_raters
from napari_multirater.datasets import CaseFolderDataset, DatasetError, LidcNpzDataset, open_dataset
from napari_multirater.datasets.case_folder import (
    create_dataset,
    image_checksum,
    new_manifest,
    validate_manifest,
    write_case,
)
from napari_multirater.datasets.phantom import make_phantom_case, rater_styles
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import write_image


def test_phantom_dataset_loads_with_geometry_and_splits(phantom_dataset):
    ds = open_dataset(phantom_dataset)
    assert isinstance(ds, CaseFolderDataset)
    assert len(ds) == 12
    assert ds.rater_names == ["tight", "generous", "smooth", "misses_faint"]
    case = ds[3]
    ref = make_phantom_case(3)
    np.testing.assert_array_equal(case.image, ref.image)
    np.testing.assert_array_equal(case.masks, ref.masks)
    assert case.valid.all()
    assert case.geometry.matches(ref.geometry)
    assert case.meta["sidecars"]["tight"]["image_sha256"] == image_checksum(ref.image)
    train, val = open_dataset(phantom_dataset, "train"), open_dataset(phantom_dataset, "val")
    assert len(train) + len(val) == 12 and len(val) >= 2
    assert not set(train.patient_ids()) & set(val.patient_ids())


def test_manifest_validation_rejects_bad_manifests():
    good = new_manifest("x", ["a", "b"], intensity_window=[-1000, 400])
    validate_manifest(good, "m")
    for patch, msg in [
        ({"format": "other"}, "format"),
        ({"raters": ["a", "a"]}, "duplicate"),
        ({"raters": ["bad/name"]}, "invalid rater id"),
        ({"intensity_window": [5, 1]}, "intensity_window"),
        ({"labels": {"0": "bg"}}, "labels"),
        ({"version": 99}, "version"),
    ]:
        with pytest.raises(DatasetError, match=msg):
            validate_manifest({**good, **patch}, "m")


def _small_dataset(tmp_path, raters=("a", "b", "c")):
    root = create_dataset(tmp_path / "ds", new_manifest("t", list(raters)))
    case = make_phantom_case(0)
    case.rater_names = list(raters)
    case.masks = case.masks[: len(raters)]
    case.valid = np.ones(len(raters), bool)
    write_case(root, case)
    return root, case


def test_missing_rater_file_gives_invalid_flag_not_error(tmp_path):
    root, case = _small_dataset(tmp_path)
    (root / "cases" / case.case_id / "raters" / "b.nii.gz").unlink()
    loaded = open_dataset(root)[0]
    assert loaded.valid.tolist() == [True, False, True]
    assert not loaded.masks[1].any()


def test_mismatched_geometry_names_the_file(tmp_path):
    root, case = _small_dataset(tmp_path)
    g = case.geometry
    shifted = Geometry(g.spacing, (g.origin[0] + 5.0, g.origin[1]), g.direction)
    bad = root / "cases" / case.case_id / "raters" / "c.nii.gz"
    write_image(bad, case.masks[2], shifted, label=True)
    with pytest.raises(DatasetError, match="c.nii.gz"):
        open_dataset(root)[0]


def test_wrong_shape_and_non_binary_masks_name_the_file(tmp_path):
    root, case = _small_dataset(tmp_path)
    raters = root / "cases" / case.case_id / "raters"
    write_image(raters / "a.nii.gz", case.masks[0][:-2], case.geometry, label=True)
    with pytest.raises(DatasetError, match="a.nii.gz"):
        open_dataset(root)[0]
    write_image(raters / "a.nii.gz", case.masks[0] * 3, case.geometry, label=True)
    with pytest.raises(DatasetError, match=r"a.nii.gz.*binary"):
        open_dataset(root)[0]


def test_corrupt_case_does_not_block_others(tmp_path):
    root, case = _small_dataset(tmp_path)
    other = make_phantom_case(1)
    other.rater_names, other.masks, other.valid = ["a", "b", "c"], other.masks[:3], np.ones(3, bool)
    write_case(root, other)
    (root / "cases" / case.case_id / "raters" / "a.nii.gz").write_bytes(b"not an image")
    ds = open_dataset(root)
    problems = ds.check()
    assert len(problems) == 1 and "a.nii.gz" in problems[0]
    assert ds.load_case(other.case_id).valid.all()


def test_missing_image_and_bad_manifest_json(tmp_path):
    root, case = _small_dataset(tmp_path)
    for f in (root / "cases" / case.case_id).glob("image.*"):
        f.unlink()
    with pytest.raises(DatasetError, match="no image file"):
        open_dataset(root)[0]
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json"):
        open_dataset(root)
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "nope")


def test_create_dataset_refuses_to_clobber(tmp_path):
    root, _ = _small_dataset(tmp_path)
    with pytest.raises(DatasetError, match="already exists"):
        create_dataset(root, new_manifest("t", ["a"]))


def test_phantom_is_deterministic_and_seed_dependent():
    a, b = make_phantom_case(5, seed=3), make_phantom_case(5, seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    c = make_phantom_case(5, seed=4)
    assert not np.array_equal(a.masks, c.masks)


@pytest.mark.parametrize("ndim", [2, 3])
def test_phantom_rater_styles_hold_for_every_lesion(ndim):
    n = 10 if ndim == 2 else 3
    names = [s.name for s in rater_styles(4)]
    for i in range(n):
        case = make_phantom_case(i, ndim=ndim)
        area = dict(zip(names, case.masks.reshape(4, -1).sum(1)))
        assert area["generous"] > area["tight"], (i, area)
        assert area["generous"] > area["misses_faint"], (i, area)
        assert area["smooth"] > area["tight"], (i, area)
        assert case.image.dtype == np.int16 and case.masks.dtype == np.uint8
        # every rater marks something, and annotations differ from each other
        assert all(v > 0 for v in area.values())
        assert len({case.masks[k].tobytes() for k in range(4)}) == 4


def test_phantom_misses_faint_rater_omits_the_faint_part():
    from napari_multirater.datasets.phantom import true_lesion

    for i in range(6):
        core, faint = true_lesion(i)
        case = make_phantom_case(i)
        k = case.rater_names.index("misses_faint")
        g = case.rater_names.index("generous")
        if faint.sum() < 10:
            continue
        assert case.masks[k][faint].mean() < 0.5 < case.masks[g][faint].mean()


def test_more_raters_cycle_styles():
    case = make_phantom_case(0, n_raters=6)
    assert case.rater_names[4:] == ["tight_2", "generous_2"]


def test_lidc_fixture_adapter(lidc_fixture):
    ds = open_dataset(lidc_fixture)
    assert isinstance(ds, LidcNpzDataset) and len(ds) == 64
    case = ds[0]
    assert case.image.shape == (128, 128) and case.masks.shape == (4, 128, 128)
    assert case.patient_id.startswith("LIDC-IDRI-")
    marked = np.array([(c.masks.reshape(4, -1).sum(1) > 0).sum() for c in ds])
    assert sorted(np.bincount(marked, minlength=5)[1:].tolist()) == [16, 16, 16, 16]


def test_lidc_folder_splits_are_patient_disjoint(shared_data):
    folder = shared_data / "lidc-slices"
    val = LidcNpzDataset(folder, "val")
    split = json.loads((folder / "split.json").read_text())
    assert set(val.patient_ids()) <= set(split["val"])
    assert not set(val.patient_ids()) & set(split["train"])


def test_bad_npz_inputs(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="missing arrays"):
        LidcNpzDataset(p)
    np.savez(p, images=np.zeros((2, 8, 8), np.uint8), masks=np.zeros((3, 4, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="expected images"):
        LidcNpzDataset(p)
    q = tmp_path / "y.npz"
    q.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable npz"):
        LidcNpzDataset(q)
    shutil.rmtree(tmp_path / "ds", ignore_errors=True)


# --- broken files do not block the other cases (non-strict loading, shared report loop) -------------
def test_corrupt_sidecar_keeps_the_mask_and_lists_the_problem(tmp_path):
    root, case = _small_dataset(tmp_path)
    (root / "cases" / case.case_id / "raters" / "b.json").write_text("{not json")
    for strict in (True, False):
        loaded = CaseFolderDataset(root, strict=strict)[0]
        assert loaded.valid.tolist() == [True, True, True]
        np.testing.assert_array_equal(loaded.masks[1], case.masks[1])
        assert "b" not in loaded.meta["sidecars"] and "a" in loaded.meta["sidecars"]
        assert len(loaded.meta["problems"]) == 1 and "b.json" in loaded.meta["problems"][0]
    assert any("b.json" in p for p in open_dataset(root).check())


def test_corrupt_mask_strict_raises_non_strict_marks_the_rater_invalid(tmp_path):
    root, case = _small_dataset(tmp_path)
    (root / "cases" / case.case_id / "raters" / "c.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"c\.nii\.gz"):
        CaseFolderDataset(root).load_case(case.case_id)
    with pytest.raises(DatasetError, match=r"c\.nii\.gz"):
        next(iter(CaseFolderDataset(root)))
    for loaded in (
        CaseFolderDataset(root).load_case(case.case_id, strict=False),
        CaseFolderDataset(root, strict=False)[0],
        next(iter(CaseFolderDataset(root, strict=False))),
    ):
        assert loaded.valid.tolist() == [True, True, False] and not loaded.masks[2].any()
        np.testing.assert_array_equal(loaded.masks[:2], case.masks[:2])
        assert len(loaded.meta["problems"]) == 1 and "c.nii.gz" in loaded.meta["problems"][0]
    with pytest.raises(DatasetError, match="c.nii.gz"):  # strict wins per call
        CaseFolderDataset(root, strict=False).load_case(case.case_id, strict=True)


def test_cli_raters_reports_broken_cases_and_files_and_finishes(tmp_path, capsys):
    from napari_multirater.datasets.synth import generate_phantom_dataset

    root = generate_phantom_dataset(tmp_path / "ds", 4)
    ids = CaseFolderDataset(root).case_ids
    (root / "cases" / ids[0] / "image.nii.gz").write_bytes(b"broken image")  # whole case unusable
    (root / "cases" / ids[1] / "raters" / "tight.json").write_text("{oops")  # metadata only
    (root / "cases" / ids[2] / "raters" / "generous.nii.gz").write_bytes(b"broken mask")  # one rater
    parser = argparse.ArgumentParser()
    cli_raters.add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["raters", "--data", str(root), "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    for text in (out, err, (tmp_path / "out" / "raters.md").read_text(encoding="utf-8")):
        assert ids[0] in text and "image.nii.gz" in text
        assert "tight.json" in text and "generous.nii.gz" in text
    assert "| generous |" in out and not (root / "reports").exists()


def test_stray_folders_under_cases_are_ignored_everywhere(tmp_path):
    from napari_multirater.annotation import AnnotationStore
    from napari_multirater.datasets.synth import generate_phantom_dataset

    root = generate_phantom_dataset(tmp_path / "ds", 5)
    ids = CaseFolderDataset(root).case_ids
    for stray in (".ipynb_checkpoints", "copy of case", "-dash", "__pycache__x y"):
        (root / "cases" / stray).mkdir()
    (root / "cases" / "notes.txt").write_text("not a case")
    for split in (None, "train", "val"):
        ds = CaseFolderDataset(root, split=split)
        assert set(ds.case_ids) <= set(ids) and len(list(ds)) == len(ds)
    assert CaseFolderDataset(root).case_ids == ids == AnnotationStore(root).case_ids()
    assert CaseFolderDataset(root).check() == []


def test_suffix_lists_have_one_source():
    from napari_multirater.annotation import store
    from napari_multirater.datasets import case_folder
    from napari_multirater.io import medical

    assert case_folder.IMAGE_SUFFIXES is medical.WRITABLE_SUFFIXES
    assert set(medical.SINGLE_FILE_SUFFIXES) <= set(medical.WRITABLE_SUFFIXES) < set(medical.SUPPORTED_SUFFIXES)
    assert not [
        k
        for k, v in vars(store).items()
        if isinstance(v, tuple)
        and ".nii.gz" in v
        and v not in (medical.SUPPORTED_SUFFIXES, medical.SINGLE_FILE_SUFFIXES)
    ]
    for suffix in medical.SUPPORTED_SUFFIXES:
        assert store.case_id_from_path(f"/x/scan_01{suffix}") == "scan_01"
