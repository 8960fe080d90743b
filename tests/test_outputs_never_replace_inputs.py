"""One output rule for every command (issue 27, section 2): an output never replaces an input, and
never replaces an earlier result without ``--overwrite``; folders are written whole or not at all.
In-process ``cli.main(argv)``: exit code 2 and one line naming the output."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

from napari_multirater import cli
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import write_image
from src_training.checkpoint import save_checkpoint
from src_training.models import build_model
from tests.test_models import tiny_config

torch.set_num_threads(1)
CARD = {"method": "unet", "intensity": {"window": [-1000.0, 400.0]}}


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err.strip()
    return rc, err


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if "error" in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 2D image and a tiny U-Net checkpoint."""
    d = tmp_path_factory.mktemp("outputs")
    torch.manual_seed(0)
    ckpt = save_checkpoint(d / "m.pt", build_model(tiny_config("unet")), CARD)
    img = np.random.default_rng(0).normal(-500, 200, (32, 32)).astype(np.float32)
    return {"dir": d, "ckpt": ckpt, "img": img}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """This module's own small phantom dataset (a regression here must not damage a shared fixture)."""
    from napari_multirater.datasets.synth import generate_phantom_dataset

    return generate_phantom_dataset(tmp_path_factory.mktemp("outputs_ds") / "ds", 6, n_raters=2, val_fraction=0.34)


def _image(folder, name, img):
    folder.mkdir(parents=True, exist_ok=True)
    return write_image(folder / name, img, Geometry.identity(2))


def test_predict_refuses_out_holding_the_input_image(tiny, tmp_path, capsys):
    """Was: --out = the image's folder wrote mean_prob.nii.gz over an input of that name (rc 0)."""
    image = _image(tmp_path / "ct", "mean_prob.nii.gz", tiny["img"])
    before = image.read_bytes()
    rc, err = run_cli(capsys, "predict", "--checkpoint", tiny["ckpt"], "--image", image, "--out", tmp_path / "ct")
    assert rc == 2 and "holds the input" in one_error_line(err)
    assert image.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "ct").iterdir()) == ["mean_prob.nii.gz"]


def test_predict_rerun_needs_overwrite_and_leaves_no_stale_samples(tiny, tmp_path, capsys):
    """Was: a 3-sample run then a 1-sample run left sample_01/02 of the first run beside the new
    prediction.json. Now the second run is refused without --overwrite and replaces the folder with it."""
    image = _image(tmp_path / "in", "ct.nii.gz", tiny["img"])
    out = tmp_path / "pred"
    common = ["predict", "--checkpoint", tiny["ckpt"], "--image", image, "--out", out, "--no-uncertainty"]
    assert run_cli(capsys, *common, "--samples", "3")[0] == 0
    first = sorted(p.name for p in out.iterdir())
    rc, err = run_cli(capsys, *common, "--samples", "1")
    assert rc == 2 and "--overwrite" in one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == first
    assert run_cli(capsys, *common, "--samples", "1", "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("sample_")) == ["sample_00.nii.gz"]
    assert json.loads((out / "prediction.json").read_text())["samples"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_predict_overwrite_never_replaces_a_folder_of_other_files(tiny, tmp_path, capsys):
    image = _image(tmp_path / "in", "ct.nii.gz", tiny["img"])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    rc, err = run_cli(
        capsys, "predict", "--checkpoint", tiny["ckpt"], "--image", image, "--out", tmp_path / "mine", "--overwrite"
    )
    assert rc == 2 and "prediction.json" in one_error_line(err)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_evaluate_json_never_replaces_the_dataset_manifest(tmp_path, capsys):
    """Was: evaluate --human-reference --data ds --json ds/dataset.json replaced the manifest."""
    from napari_multirater.datasets.synth import generate_phantom_dataset

    dataset = generate_phantom_dataset(tmp_path / "ds", 3, n_raters=2, val_fraction=0.34)
    manifest = dataset / "dataset.json"
    before = manifest.read_bytes()
    argv = ["evaluate", "--human-reference", "--data", dataset, "--json", manifest, "--max-images", "1"]
    rc, err = run_cli(capsys, *argv)
    assert rc == 2 and "replace the input" in one_error_line(err)
    rc, _ = run_cli(capsys, *argv, "--overwrite")  # not even with --overwrite
    assert rc == 2 and manifest.read_bytes() == before


def test_evaluate_json_needs_overwrite_for_an_earlier_result(dataset, tmp_path, capsys):
    res = tmp_path / "eval.json"
    res.write_text('{"earlier": true}')
    rc, err = run_cli(capsys, "evaluate", "--human-reference", "--data", dataset, "--json", res)
    assert rc == 2 and "--overwrite" in one_error_line(err)
    assert json.loads(res.read_text()) == {"earlier": True}


def test_export_never_replaces_its_checkpoint_nor_silently_another(tiny, tmp_path, capsys):
    """Was: export --checkpoint m.pt --out m.pt replaced the original; --out over any other
    checkpoint replaced it silently."""
    src = tmp_path / "m.pt"
    src.write_bytes(tiny["ckpt"].read_bytes())
    other = tmp_path / "other.pt"
    other.write_bytes(b"another model")
    rc, err = run_cli(capsys, "export", "--checkpoint", src, "--out", src, "--overwrite")
    assert rc == 2 and "replace the input" in one_error_line(err)
    assert src.read_bytes() == tiny["ckpt"].read_bytes()
    rc, err = run_cli(capsys, "export", "--checkpoint", src, "--out", other)
    assert rc == 2 and "--overwrite" in one_error_line(err)
    assert other.read_bytes() == b"another model"
    assert run_cli(capsys, "export", "--checkpoint", src, "--out", other, "--overwrite")[0] == 0
    assert other.read_bytes() != b"another model"


def test_train_out_with_an_earlier_run_needs_resume_or_overwrite(dataset, tmp_path, capsys):
    """Was: train --out <existing run> without --resume silently replaced best.pt / last.pt."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"earlier best")
    argv = ["train", "--method", "unet", "--data", dataset, "--out", run, "--max-steps", "1"]
    rc, err = run_cli(capsys, *argv, "--batch-size", "2", "--val-max-images", "1", "--val-samples", "1")
    assert rc == 2 and "earlier run" in one_error_line(err) and "--overwrite" in err
    assert (run / "best.pt").read_bytes() == b"earlier best"


def test_train_never_writes_over_its_stage1_input(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"stage I")
    argv = ["train", "--method", "dpersona", "--data", dataset, "--out", run, "--stage1", run / "best.pt"]
    rc, err = run_cli(capsys, *argv, "--overwrite", "--max-steps", "1")
    assert rc == 2 and "replace the input" in one_error_line(err)
    assert (run / "best.pt").read_bytes() == b"stage I"


def test_raters_report_needs_overwrite(dataset, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "raters.md").write_text("earlier report")
    rc, err = run_cli(capsys, "raters", "--data", dataset, "--out", out, "--max-cases", "1")
    assert rc == 2 and "--overwrite" in one_error_line(err)
    assert (out / "raters.md").read_text() == "earlier report"


def test_synth_failing_midway_leaves_no_dataset(tmp_path, monkeypatch, capsys):
    """Was: a full disk during synth left a valid-looking dataset (manifest listing every case,
    only some written). Now it is staged: nothing appears at --out."""
    import napari_multirater.datasets.synth as synth

    real, calls = synth.write_case, []

    def full_disk(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(synth, "write_case", full_disk)
    rc, err = run_cli(capsys, "synth", "--out", tmp_path / "ds", "--cases", "5", "--raters", "2")
    assert rc == 2 and "No space left" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_synth_overwrite_replaces_only_a_dataset(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, err = run_cli(capsys, "synth", "--out", mine, "--cases", "2", "--raters", "2", "--overwrite")
    assert rc == 2 and "dataset.json" in one_error_line(err)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
