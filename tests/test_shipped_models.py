"""The models bundled in ``napari_multirater/models`` load offline by name, stay within the size
limits, carry an honest model card (budget, val metrics, attribution) and produce valid outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_multirater.inference.engine import InferenceEngine
from napari_multirater.modelfiles.registry import PACKAGE_DIR, available_models, demo_model_name, find_model

SHIPPED = sorted(PACKAGE_DIR.glob("*.pt"))
MB = 2**20


def test_bundled_models_fit_the_size_limits_and_include_the_demo_model():
    assert "phantom_dpersona" in [p.stem for p in SHIPPED] and demo_model_name() == "phantom_dpersona"
    for p in SHIPPED:
        assert p.stat().st_size <= 10 * MB, f"{p.name}: {p.stat().st_size / MB:.1f} MB > 10 MB"
    assert sum(p.stat().st_size for p in SHIPPED) <= 40 * MB


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_bundled_model_card_is_complete(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    card = ckpt["model_card"]
    budget = card["training_budget"]
    assert budget["steps"] > 0 and budget["epochs"] >= 0 and budget["device"] and budget["wall_seconds"] > 0
    assert card["training_data"]["split"].startswith("by patient")
    assert card.get("evaluation") or card.get("val_metrics_evaluate"), "no val metrics in the card"
    if card["raters_ranked_by_area"]:  # LIDC-trained
        assert "LIDC-IDRI" in card["attribution"] and "CC BY 3.0" in card["attribution"]
        ev = card["evaluation"]
        # all val slices, or the 952 not used for selection (``--subset report``, issue 32)
        assert ev["split"] == "val" and ev["n_images"] >= (952 if ev.get("subset") == "report" else 1000)
        assert len(ev["dice_each_identity"]) == 4
        assert 0.0 < ev["dice_match"] <= 1.0 and "multirater evaluate" in ev["command"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_bundled_model_loads_by_name_and_predicts(path):
    assert find_model(path.stem) == path and available_models()[path.stem] == path
    engine = InferenceEngine.load(path.stem, device="cpu")
    rng = np.random.default_rng(0)
    image = rng.normal(-600, 200, (96, 80)).astype(np.float32)
    image[30:60, 25:55] = 40.0  # a bright blob in HU
    samples = engine.sample(image, n=3, seed=1)
    personas = engine.personas(image)
    assert samples.shape == (3, 96, 80) and personas.shape == (len(engine.rater_names), 96, 80)
    for out in (samples, personas):
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(samples, engine.sample(image, n=3, seed=1))  # same seed, same samples


def test_evaluate_takes_a_model_name_like_predict(tmp_path, monkeypatch):
    from src_training.checkpoint import CheckpointError
    from src_training.evaluate import resolve_checkpoint
    from src_training.tools.testing import make_tiny_checkpoint

    monkeypatch.setenv("NAPARI_MULTIRATER_MODELS", str(tmp_path))
    ckpt = make_tiny_checkpoint(tmp_path / "my_model.pt", method="unet")
    assert resolve_checkpoint("my_model") == ckpt and resolve_checkpoint("lidc_x.pt").name == "lidc_x.pt"
    with pytest.raises(CheckpointError, match="no model named 'not_there'.*my_model"):
        resolve_checkpoint("not_there")
