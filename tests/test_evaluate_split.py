"""`multirater evaluate` default split: all of a file without declared splits, the declared val split
otherwise, and the summary line says which split and how many images of how many."""

from __future__ import annotations

import numpy as np
import pytest

from napari_multirater.cli import main


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    masks = np.zeros((n, 4, 32, 32), np.uint8)
    masks[:, :, 10:20, 10:20] = 1
    masks[:, 3, 10:14] = 0  # one rater differs
    path = tmp_path / "test.npz"
    np.savez(
        path,
        images=rng.integers(0, 255, (n, 32, 32)).astype(np.uint8),
        masks=masks,
        patient_id=np.array([f"p{i // 2:02d}" for i in range(n)]),
    )
    return path


def test_single_file_without_splits_is_scored_whole(npz, capsys):
    assert main(["evaluate", "--human-reference", "--data", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "all 40 images" in out and "| n_images | 40 |" in out


def test_explicit_split_says_which_and_how_many(npz, capsys):
    assert main(["evaluate", "--human-reference", "--data", str(npz), "--split", "val"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("###"))
    n = int(out.split("| n_images | ")[1].split(" ")[0])
    assert 0 < n < 40 and "split val (the val part of a 20% by-patient split" in line and f"{n} of 40 images" in line


def test_declared_val_split_is_the_default(phantom_dataset, capsys):
    from napari_multirater.datasets.case_folder import CaseFolderDataset

    n_val = len(CaseFolderDataset(phantom_dataset, split="val"))
    assert main(["evaluate", "--human-reference", "--data", str(phantom_dataset)]) == 0
    assert f"split val (the data's declared val split): {n_val} of 12 images" in capsys.readouterr().out
    assert main(["evaluate", "--human-reference", "--data", str(phantom_dataset), "--split", "all"]) == 0
    assert "all 12 images" in capsys.readouterr().out
