"""A clinician's first hour, round two (issue 29): what is on screen is only what was just
computed, pre-fill copies the clicked lesion and is safe to accept (an untouched pre-fill is never a
finished human annotation), and the command line warns what the dock warns."""

from __future__ import annotations

import json

import numpy as np


def test_predict_cli_warns_like_the_dock_before_the_run(tmp_path, capsys):
    """A nodule-crop (LIDC) model on a whole slice: the dock's warning, with the CLI's ROI options,
    printed before the run and kept in prediction.json; an ROI run has none."""
    from napari_multirater.cli import main
    from napari_multirater.io import Geometry, write_image
    from src_training.tools.testing import make_tiny_checkpoint, tiny_card

    card = {**tiny_card("prob_unet", ["a", "b"]), "training_data": {"path": "../shared/data/lidc-slices"}}
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", "prob_unet", ["a", "b"], card=card)
    src = tmp_path / "slice.nii.gz"
    write_image(src, np.full((288, 288), -800, np.int16), Geometry((0.625, 0.625), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
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
