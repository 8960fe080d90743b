"""Sizes from user numbers and file headers are bounded before anything is allocated (issue 27,
section 3): exit code 2 / one error naming the bound, never memory exhaustion or a traceback."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from napari_multirater import cli
from napari_multirater.datasets.case import DatasetError


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, word",
    [
        (["synth", "--cases", "1000000000000"], "--cases"),
        (["synth", "--raters", "100000000"], "--raters"),
        (["predict", "--samples", "1000000000"], "--samples"),
        (["predict", "--target-spacing-mm", "1e-9"], "--target-spacing-mm"),
        (["evaluate", "--human-reference", "--samples", "1000000000"], "--samples"),
    ],
)
def test_absurd_numbers_are_refused_by_the_parser(tmp_path, capsys, argv, word):
    """Was: synth --cases 1e12 / predict --samples 1e9 / --target-spacing-mm 1e-9 ran until memory ran out."""
    extra = {
        "synth": ["--out", tmp_path / "ds"],
        "predict": ["--checkpoint", "x.pt", "--image", "x.nii.gz", "--out", tmp_path / "p"],
        "evaluate": ["--data", tmp_path],
    }[argv[0]]
    rc, err = run_cli(capsys, *argv, *extra)
    assert rc == 2 and word in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_sample_maps_are_bounded_before_allocating():
    from napari_multirater.inference.engine import check_output_size

    check_output_size(10, (300, 512, 512))
    with pytest.raises(ValueError, match="GiB"):
        check_output_size(1000, (300, 512, 512))


def test_tiny_model_pixels_are_bounded_before_resampling():
    """A card's (or the flag's) tiny pixel size would resample a slice to billions of pixels."""
    import torch

    from napari_multirater.inference.engine import InferenceEngine
    from napari_multirater.io.geometry import Geometry
    from src_training.models import build_model
    from tests.test_models import tiny_config

    torch.set_num_threads(1)
    card = {"method": "unet", "intensity": {"window": [-1000.0, 400.0]}, "input": {"pixel_size_mm": 1e-6}}
    engine = InferenceEngine(build_model(tiny_config("unet")), card, device="cpu", precision="fp32")
    geom = Geometry((1.0, 0.8, 0.8), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="at most 4096 per side"):
        engine.predict_volume(np.zeros((1, 16, 16), np.float32), geom, samples=1)


def _npz_with_lying_header(path, shape=(100_000, 100_000, 100)) -> None:
    """images.npy declares a 1 TB uint8 array and holds 16 bytes; masks.npy is a real small array."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False, "shape": shape})
    masks = io.BytesIO()
    np.save(masks, np.zeros((1, 2, 4, 4), np.uint8))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + head.getvalue()[8:] + bytes(16))
        z.writestr("masks.npy", masks.getvalue())


def test_npz_member_declaring_more_than_it_holds_is_refused(tmp_path):
    from napari_multirater.datasets.lidc_npz import LidcNpzDataset

    path = tmp_path / "bomb.npz"
    _npz_with_lying_header(path)
    with pytest.raises(DatasetError, match="declares shape"):
        LidcNpzDataset(path)


def test_npz_member_without_the_npy_suffix_is_bounded_too(tmp_path, monkeypatch):
    """numpy reads a member by its first bytes, not its name: an 'images' member (no .npy) with a
    lying header, or a large non-array member, must not slip past the bound."""
    import napari_multirater.io.npz_bounds as bounds
    from napari_multirater.datasets.lidc_npz import LidcNpzDataset

    path = tmp_path / "renamed.npz"
    _npz_with_lying_header(path)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images", members["images.npy"])
        z.writestr("masks.npy", members["masks.npy"])
    with pytest.raises(DatasetError, match="declares shape"):
        LidcNpzDataset(path)
    blob = tmp_path / "blob.npz"
    with zipfile.ZipFile(blob, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("masks.npy", members["masks.npy"])
        z.writestr("extra", bytes(400_000))
    monkeypatch.setattr(bounds, "MAX_NPZ_BYTES", 300_000)
    with pytest.raises(DatasetError, match="extra expands"):
        LidcNpzDataset(blob)


def test_npz_expanding_beyond_the_bound_is_refused(tmp_path, monkeypatch):
    """Was: a 6 MB npz of zeros expanding to 5.6 GB was loaded whole (bound scaled down here)."""
    import napari_multirater.io.npz_bounds as bounds
    from napari_multirater.datasets.lidc_npz import LidcNpzDataset

    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, images=np.zeros((64, 64, 64), np.uint8), masks=np.zeros((64, 2, 64, 64), np.uint8))
    assert path.stat().st_size < 20_000
    monkeypatch.setattr(bounds, "MAX_NPZ_BYTES", 300_000)
    with pytest.raises(DatasetError, match="expand to more than"):
        LidcNpzDataset(path)


@pytest.mark.parametrize("settings", [[1, 2], "fast", 7])
def test_queue_settings_that_are_not_a_dict_are_one_line(tmp_path, capsys, settings):
    """Was: "collection": [1, 2] in dataset.json gave an AttributeError traceback from queue."""
    from tests.conftest import make_annotation_project

    root = tmp_path / "proj"
    make_annotation_project(root, 1)
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["collection"] = settings
    (root / "dataset.json").write_text(json.dumps(manifest))
    rc, err = run_cli(capsys, "queue", "--data", root, "--rater", "alice")
    assert rc == 2 and "must be a dict" in err and "Traceback" not in err


def test_config_file_val_samples_is_bounded():
    """A --config file's train.val_samples bypasses the parser's bound."""
    from src_training.config import check_train_values

    with pytest.raises(ValueError, match="val_samples"):
        check_train_values({"val_samples": 10**9, "lr": 0.1})
