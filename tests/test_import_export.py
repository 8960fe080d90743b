"""`multirater import folder` (per-rater, QUBIQ, nnU-Net) and `export-dataset --layout nnunet`:
round trips keep voxels, geometry and rater names; problems are listed per file, nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_multirater.analysis.overlap import majority_vote
from napari_multirater.cli import main
from napari_multirater.datasets.case_folder import CaseFolderDataset
from napari_multirater.io import Geometry, read_image
from napari_multirater.io.medical import write_image

RATERS = ["ann", "bob", "cy"]
GEOM = Geometry((0.8, 0.7, 2.5), (-10.0, 20.0, 5.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))


def _cases():
    """3 cases (6x10x12), 3 raters; rater cy did not annotate case c2."""
    rng = np.random.default_rng(0)
    out = {}
    for i, cid in enumerate(["c1", "c2", "c3"]):
        image = rng.integers(-1000, 400, (6, 10, 12)).astype(np.int16)
        masks = {}
        for k, r in enumerate(RATERS):
            if cid == "c2" and r == "cy":
                continue
            m = np.zeros(image.shape, np.uint8)
            m[1 + i : 4 + i, 2 : 6 + k, 3:8] = 1
            masks[r] = m
        out[cid] = (image, masks)
    return out


def _write(root, layout, cases):
    for cid, (image, masks) in cases.items():
        if layout == "nnunet":
            (root / "imagesTr").mkdir(parents=True, exist_ok=True)
            write_image(root / "imagesTr" / f"{cid}_0000.nii.gz", image, GEOM)
            for r, m in masks.items():
                (root / "labelsTr" / r).mkdir(parents=True, exist_ok=True)
                write_image(root / "labelsTr" / r / f"{cid}.nii.gz", m, GEOM, label=True)
            continue
        (root / cid).mkdir(parents=True)
        write_image(root / cid / "image.nii.gz", image, GEOM)
        for r, m in masks.items():
            name = f"task01_seg{RATERS.index(r) + 1:02d}" if layout == "qubiq" else r
            write_image(root / cid / f"{name}.nrrd", m, GEOM, label=True)
    return root


def _names(layout):
    return ["seg01", "seg02", "seg03"] if layout == "qubiq" else RATERS


def _assert_dataset(path, cases, names):
    ds = CaseFolderDataset(path)
    assert ds.rater_names == names and ds.case_ids == sorted(cases)
    for case in ds:
        image, masks = cases[case.case_id]
        np.testing.assert_array_equal(case.image, image)
        assert case.geometry.mismatch(GEOM) is None
        for k, r in enumerate(RATERS):
            assert case.valid[k] == (r in masks)
            if r in masks:
                np.testing.assert_array_equal(case.masks[k], masks[r])
                assert case.meta["sidecars"][names[k]]["provenance"]["kind"] == "imported"


def _assert_nnunet_raw_dataset(folder, case_ids, rater):
    """What nnU-Net v2's dataset check asks of a raw dataset: dataset.json with channel_names,
    labels (background 0), numTraining and file_ending; imagesTr/<case>_0000 and labelsTr/<case>
    files only (no sub-folders), one label per image, numTraining of them."""
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "unknown"} and meta["labels"]["background"] == 0
    assert meta["numTraining"] == len(case_ids) and meta["file_ending"] == ".nii.gz"
    assert meta["multirater"]["label_name"] == rater and meta["multirater"]["labels_from"] == "all"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in case_ids]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in case_ids]


@pytest.mark.parametrize("layout", ["per-rater", "qubiq", "nnunet"])
def test_import_export_reimport_round_trip(tmp_path, capsys, layout):
    cases = _cases()
    src = _write(tmp_path / "src", layout, cases)
    assert main(["import", "folder", str(src), "--out", str(tmp_path / "ds")]) == 0
    assert f"{layout} layout, 3 images, 3 raters" in capsys.readouterr().out  # auto-detected and said
    _assert_dataset(tmp_path / "ds", cases, _names(layout))
    if layout != "nnunet":  # the export does not depend on the source layout: one round trip through it
        return
    assert (
        main(
            [
                "export-dataset",
                str(tmp_path / "ds"),
                "--layout",
                "nnunet",
                "--labels",
                "all",
                "--out",
                str(tmp_path / "nn"),
            ]
        )
        == 0
    )
    assert "as one nnU-Net dataset per rater" in capsys.readouterr().out
    index = json.loads((tmp_path / "nn" / "multirater_export.json").read_text())
    names = _names(layout)
    assert sorted(p.name for p in (tmp_path / "nn").iterdir()) == sorted([*names, "multirater_export.json"])
    for k, r in enumerate(names):  # cy did not annotate c2: its dataset has 2 cases
        cases_r = ["c1", "c3"] if k == 2 else ["c1", "c2", "c3"]
        _assert_nnunet_raw_dataset(tmp_path / "nn" / r, cases_r, r)
        assert index["raters"][r] == {"folder": r, "numTraining": len(cases_r)}
    assert main(["import", "folder", str(tmp_path / "nn"), "--out", str(tmp_path / "again")]) == 0
    assert "nnunet layout, 3 images, 3 raters" in capsys.readouterr().out
    _assert_dataset(tmp_path / "again", cases, _names(layout))


def test_export_single_label_choices(tmp_path, capsys):
    cases = _cases()
    _write(tmp_path / "src", "per-rater", cases)
    assert main(["import", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "ds")]) == 0
    assert main(["export-dataset", str(tmp_path / "ds"), "--labels", "majority", "--out", str(tmp_path / "maj")]) == 0
    for cid, (image, masks) in cases.items():
        label, geom, _ = read_image(tmp_path / "maj" / "labelsTr" / f"{cid}.nii.gz")
        np.testing.assert_array_equal(label, majority_vote(np.stack(list(masks.values()))))
        assert geom.mismatch(GEOM) is None
        np.testing.assert_array_equal(read_image(tmp_path / "maj" / "imagesTr" / f"{cid}_0000.nii.gz")[0], image)
    assert main(["export-dataset", str(tmp_path / "ds"), "--labels", "rater:cy", "--out", str(tmp_path / "cy")]) == 0
    assert "1 cases without that rater left out (c2)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cy" / "labelsTr").iterdir()) == ["c1.nii.gz", "c3.nii.gz"]
    assert json.loads((tmp_path / "cy" / "dataset.json").read_text())["numTraining"] == 2
    assert main(["export-dataset", str(tmp_path / "ds"), "--labels", "consensus", "--out", str(tmp_path / "st")]) == 0
    assert len(list((tmp_path / "st" / "labelsTr").iterdir())) == 3
    assert main(["export-dataset", str(tmp_path / "ds"), "--labels", "rater:zed", "--out", str(tmp_path / "z")]) == 2
    assert "no rater 'zed'" in capsys.readouterr().err and not (tmp_path / "z").exists()
    # a single-label export re-imports as one rater named after its source
    assert main(["import", "folder", str(tmp_path / "maj"), "--out", str(tmp_path / "maj_ds")]) == 0
    assert CaseFolderDataset(tmp_path / "maj_ds").rater_names == ["majority"]


def test_problems_listed_per_file_and_nothing_half_imported(tmp_path, capsys):
    cases = _cases()
    src = _write(tmp_path / "src", "per-rater", cases)
    shifted = Geometry(GEOM.spacing, (0.0, 0.0, 0.0), GEOM.direction)
    write_image(src / "c2" / "bob.nrrd", cases["c2"][1]["bob"], shifted, label=True)  # wrong origin
    write_image(src / "c3" / "cy.nrrd", cases["c3"][1]["cy"] * 2, GEOM, label=True)  # not binary
    (src / "c4").mkdir()
    (src / "c4" / "ann.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "ds"
    assert main(["import", "folder", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bob.nrrd" in err and "origin" in err and "cy.nrrd" in err and "binary" in err
    assert "c4: no image file" in err and "3 problem(s) listed above; nothing imported" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]  # no partial folder either
    assert main(["import", "folder", str(src), "--out", str(out), "--skip-bad"]) == 0
    ds = CaseFolderDataset(out)
    assert ds.case_ids == ["c1", "c2", "c3"]
    assert ds.load_case("c2").valid.tolist() == [True, False, False]  # bad bob left out; cy never drew c2
    assert ds.load_case("c3").valid.tolist() == [True, True, False]


def test_layout_detection_and_bad_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["import", "folder", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no known layout" in capsys.readouterr().err
    q = tmp_path / "q"
    _write(q, "qubiq", _cases())
    write_image(q / "c1" / "task02_seg01.nii.gz", _cases()["c1"][1]["ann"], GEOM, label=True)
    assert main(["import", "folder", str(q), "--out", str(tmp_path / "o")]) == 2
    assert "QUBIQ tasks [1, 2] found; choose one with --task N" in capsys.readouterr().err
    assert main(["import", "folder", str(q), "--task", "2", "--out", str(tmp_path / "o")]) == 2  # no seg in c2, c3
    assert main(["import", "folder", str(q), "--task", "2", "--skip-bad", "--out", str(tmp_path / "o")]) == 0
    assert CaseFolderDataset(tmp_path / "o").case_ids == ["c1"]
    assert main(["import", "folder", str(q), "--task", "1", "--out", str(tmp_path / "o")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    from napari_multirater.datasets import import_layouts

    src = _write(tmp_path / "src", "per-rater", _cases())
    calls = []

    def interrupted(root, case, prov):  # the second case is never written (Ctrl-C, disk full ...)
        calls.append(case.case_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(root, case, prov)

    real = import_layouts.write_imported_case
    monkeypatch.setattr(import_layouts, "write_imported_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_layouts.import_scan(import_layouts.scan_folder(src), tmp_path / "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # neither the dataset nor a partial folder
