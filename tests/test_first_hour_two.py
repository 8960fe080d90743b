"""A clinician's first hour, round two (issue 29): what is on screen is only what was just
computed, pre-fill copies the clicked lesion and is safe to accept (an untouched pre-fill is never a
finished human annotation), and the command line warns what the dock warns."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_predict_cli_warns_like_the_dock_before_the_run(tmp_path, capsys):
    """A nodule-crop (LIDC) model on a whole slice: the dock's warning, with the CLI's ROI options,
    printed before the run and kept in prediction.json; an ROI run has none."""
    from napari_multirater.cli import main
    from napari_multirater.io import Geometry, write_image
    from src_training.tools.testing import make_tiny_checkpoint, tiny_card

    card = {**tiny_card("prob_unet", ["a", "b"]), "training_data": {"path": "../shared/data/lidc-slices"}}
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", "prob_unet", ["a", "b"], card=card)
    src = tmp_path / "slice.nii.gz"
    write_image(src, np.full((264, 264), -800, np.int16), Geometry((0.625, 0.625), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    base = ["predict", "--checkpoint", str(ckpt), "--image", str(src), "--samples", "1", "--no-uncertainty"]
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "wider than what the model was trained on" in line)
    assert "--roi-point" in warning and "--roi-size-mm 80" in warning and "mr roi point" not in warning
    assert err.index(warning) < err.index("predict: wrote")  # said before the work, not after
    stored = json.loads((tmp_path / "whole" / "prediction.json").read_text())["warnings"]
    assert any("--roi-point" in w for w in stored)
    assert main([*base, "--out", str(tmp_path / "roi"), "--roi", "40,40,168,168"]) == 0
    assert "wider than" not in capsys.readouterr().err


# ------------------------------------------------------------------ docks (napari)
napari = pytest.importorskip("napari")


@pytest.mark.gui
def test_a_run_replaces_its_output_and_the_point_box_follows_the_lesion(make_napari_viewer):
    """Major 1: slice run then ROI run leaves nothing of the slice run (one undo step brings it back);
    major 2: an 80 mm point box on 2.5 mm slices spans 30 mm along z, not the whole series."""
    from napari_multirater._napari.model_controller import SAMPLES, ModelController, RunRequest
    from napari_multirater.inference.roi import PredictionResult

    viewer = make_napari_viewer()
    img = viewer.add_image(np.zeros((24, 64, 64), np.float32), scale=(2.5, 0.7, 0.7), units=("mm",) * 3)
    ctl = ModelController(viewer, img)
    request = RunRequest("samples", n_samples=1)
    region = lambda z: (slice(z, z + 1), slice(0, 64), slice(0, 64))  # noqa: E731
    ctl.apply(request, PredictionResult((24, 64, 64), region(10), samples_region=np.ones((1, 1, 64, 64), np.uint8)))
    ctl.apply(request, PredictionResult((24, 64, 64), region(14), samples_region=np.ones((1, 1, 64, 64), np.uint8)))
    samples = viewer.layers[SAMPLES]
    assert np.nonzero(samples.data[0].any((1, 2)))[0].tolist() == [14]
    samples.undo()
    assert np.nonzero(samples.data[0].any((1, 2)))[0].tolist() == [10]

    pts = viewer.add_points([img.data_to_world((12, 32, 32))], name="mr roi point")
    box = ctl.roi_from_layer(pts, 80.0).resolve(img.data.shape, ctl.geometry())
    assert box[0].stop - box[0].start == 12 and box[1] == slice(0, 64)  # 30 mm deep, 80 mm across (clipped)


@pytest.mark.gui
def test_prefill_copies_the_clicked_lesion_and_stays_a_draft_until_confirmed(tmp_path, collect_dock):
    """Majors 2-4: Pre-fill copies the mark at the ROI point (not the second lesion), hides the
    model layer and puts the annotation on top; saved untouched it is a draft that no count, report
    or training set uses (with a line saying so) until Confirm."""
    from napari_multirater._napari.layers import ROLE_KEY
    from napari_multirater.annotation import AnnotationStore
    from napari_multirater.annotation.queue import build_queue, drafts_line
    from napari_multirater.datasets.case_folder import CaseFolderDataset, iter_cases_reporting, problems_summary
    from tests.conftest import make_annotation_project

    project = make_annotation_project(tmp_path / "project", 2)
    viewer, dock = collect_dock(project, "carol")
    ctl = dock.controller
    own = ctl.annotation_layer
    marks = np.zeros(own.data.shape, np.uint8)
    marks[20:30, 20:30] = 1  # the nodule clicked on
    marks[90:95, 90:95] = 1  # a second lesion far away
    point = own.data_to_world((25, 25))
    viewer.add_labels(
        marks, name="mr persona: expert_3", scale=own.scale, opacity=0.9,
        metadata={ROLE_KEY: "persona", "model": "tiny", "persona": "expert_3", "roi_point_mm": list(point)},
    )  # fmt: skip
    dock.refresh()
    dock.prefill_combo.setCurrentText("mr persona: expert_3")
    dock.prefill_btn.click()
    assert (own.data != 0).sum() == 100 and not own.data[90:95, 90:95].any()
    text = dock.status.text()
    assert "100 voxel(s)" in text and "1 other mark(s) not copied" in text and "Hid 'mr persona: expert_3'" in text
    assert not viewer.layers["mr persona: expert_3"].visible and viewer.layers[-1].name == own.name  # edits show
    assert dock.confirm_btn.isEnabled()

    dock.save()  # as autosave, case switch and close do: saved, but only as a draft
    store = AnnotationStore(project.root)
    assert store.has_mask("lung0", "carol", drafts=True) and not store.has_mask("lung0", "carol")
    assert ctl.progress() == (0, 2) and "draft" in dock.save_label.text()
    assert [e.case_id for e in build_queue(store, "carol")][:2] == ["lung0", "lung1"]
    assert "1 unconfirmed model pre-fill(s) not counted (lung0/carol)" in drafts_line(store)
    problems: list[str] = []
    cases = list(iter_cases_reporting(CaseFolderDataset(project.root, strict=False), problems))
    assert not cases[0].valid.any()  # training and reports leave it out ...
    assert "(1 of them unconfirmed model pre-fills)" in problems_summary(problems, len(cases), "project")

    dock.confirm_btn.click()  # ... until the rater confirms it as it is
    side = json.loads((project.root / "cases" / "lung0" / "raters" / "carol.json").read_text())
    assert side["provenance"]["confirmed"] is True and side["provenance"]["edited"] is False
    assert store.has_mask("lung0", "carol") and drafts_line(store) is None and ctl.progress() == (1, 2)
    assert CaseFolderDataset(project.root).load_case("lung0").valid.all()
    own.undo()  # back to the empty mask: "all marks" copies the far lesion too
    dock.all_marks_box.setChecked(True)
    dock.prefill_btn.click()
    assert (own.data != 0).sum() == 125 and ctl.is_draft  # a new pre-fill is a draft again


def test_blind_mode_keeps_other_readers_hidden_and_refuses_a_scrambled_dicom(tmp_path):
    """Minors: the other readers' small-nodule points are hidden while blind, and an eye-click does
    not show them; a DICOM series from napari's own reader (file-name slice order) is named as such
    and cannot start a project."""
    from napari.components import ViewerModel
    from napari.layers import Image
    from napari.layers._source import layer_source

    from napari_multirater._napari.annotate_controller import AnnotateController, AnnotateError
    from napari_multirater._napari.guidance import spacing_warning
    from napari_multirater._napari.layers import ROLE_KEY
    from tests.conftest import make_annotation_project

    viewer = ViewerModel()
    ctl = AnnotateController(viewer)
    notes: list[str] = []
    ctl.notify = notes.append
    pts = viewer.add_points([[5, 5]], name="LIDC small nodules", metadata={ROLE_KEY: "points", "case_id": "lung0"})
    ctl.open_project(make_annotation_project(tmp_path / "p", 1).root)
    ctl.set_rater("carol")
    ctl.load_case("lung0")
    assert not pts.visible
    pts.visible = True  # the eye icon
    assert not pts.visible and "Blind mode" in notes[-1]

    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"")
    with layer_source(path=str(tmp_path / "series")):
        plain = Image(np.zeros((3, 8, 8), np.int16), name="series")
    assert "file-name order" in spacing_warning(plain)
    with pytest.raises(AnnotateError, match="napari's own reader"):
        ctl.new_project_from_layer(tmp_path / "new", plain)


@pytest.mark.gui
def test_rater_mask_files_open_as_outlines_in_their_own_colours(make_napari_viewer, tmp_path):
    """Minor: masks opened from files are thin outlines, one colour per file (not all filled alike)."""
    from napari_multirater.io import Geometry, write_image

    geo = Geometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 1
    for rater in ("alice", "bob"):
        write_image(tmp_path / f"{rater}.nii.gz", mask, geo, label=True)
    viewer = make_napari_viewer()
    for rater in ("alice", "bob"):
        viewer.open(str(tmp_path / f"{rater}.nii.gz"), plugin="napari-multirater")
    alice, bob = viewer.layers["alice"], viewer.layers["bob"]
    assert alice.contour == 1 and bob.contour == 1
    assert not np.allclose(alice.colormap.map(np.array([1])), bob.colormap.map(np.array([1])))


def test_heatmap_labels_drop_what_every_file_name_shares():
    from napari_multirater.analysis.report import short_labels

    assert short_labels(["case12_alice_mask", "case12_bob_mask"]) == ["alice", "bob"]
    assert short_labels(["mr rater: reader1", "mr rater: reader2"]) == ["reader1", "reader2"]
    assert short_labels(["tight", "tight"]) == ["tight", "tight"]  # nothing left to tell apart: unchanged
