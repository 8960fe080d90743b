"""The papers' evaluation protocol: each method's reference output set, 4-rater slices only,
and the results table next to the published figures (CPU, tiny models, no Qt)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from src_training.models import build_model
from src_training.paper_protocol import all_marked
from tests.test_models import disk_batch, make, tiny_config

torch.set_num_threads(1)

# method, stage -> number of outputs the reference code scores per image (3 raters in TINY)
EXPECTED_OUTPUTS = [
    ("prob_unet", 1, 50),
    ("dpersona", 1, 50),
    ("dpersona", 2, 3),
    ("pionono", 1, 3),
    ("proseg", 1, 39),
    ("unet", 1, 50),
    ("umanet", 1, 50),
]


@pytest.mark.parametrize("method,stage,n", EXPECTED_OUTPUTS)
def test_reference_outputs_are_the_set_the_reference_scores(method, stage, n):
    model = make(method, stage).eval()
    x = disk_batch(n=2, size=32)["image"]
    out = model.reference_outputs(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, n, 32, 32)
    again = model.reference_outputs(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: the same set twice


def test_pionono_reference_output_is_each_raters_mc_mean():
    model = make("pionono").eval()
    x = disk_batch(n=1, size=32)["image"]
    ref = model.reference_outputs(x, generator=torch.Generator().manual_seed(3))
    ctx = model.encode(x)
    z = model._rater_draws(
        torch.arange(3).repeat_interleave(20)[None],
        torch.randn((1, 60, model.latent_dim), generator=torch.Generator().manual_seed(3)),
    )
    manual = model.decode(ctx, z).view(1, 3, 20, 32, 32).mean(2)
    assert torch.allclose(ref, manual, atol=1e-5)


def test_proseg_reference_samples_the_boundary_latent_per_rater():
    model = make("proseg").eval()
    x = disk_batch(n=1, size=32)["image"]
    out = model.reference_outputs(x, generator=torch.Generator().manual_seed(0))
    per_rater = out.view(1, 3, 13, 32, 32)
    assert per_rater.std(2).abs().max() > 0  # Z and tau are drawn, not the rater mean


def test_all_marked_needs_every_rater_valid_and_drawing():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[:, 1, 1] = 1
    assert all_marked(masks, np.ones(3, bool))
    assert not all_marked(masks, np.array([True, True, False]))
    masks[2] = 0
    assert not all_marked(masks, np.ones(3, bool))


def _cli(*args):
    """``multirater ARGS`` in a subprocess (exit code and output as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "napari_multirater.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_evaluate_and_results_paper_protocol(lidc_fixture, tmp_path):
    from src_training.checkpoint import save_checkpoint

    cfg = tiny_config("pionono", num_raters=4, rater_names=[f"expert_{k}" for k in range(1, 5)])
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model(cfg), {"method": "pionono", "raters_ranked_by_area": True})
    out = tmp_path / "paper.json"
    common = ["--checkpoint", str(ckpt), "--data", str(lidc_fixture), "--paper-protocol"]
    r = _cli("evaluate", *common, "--split", "all", "--json", str(out), "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    ev = json.loads(out.read_text())
    assert ev["protocol"] == "paper" and ev["n_outputs"] == 4
    assert 0 < ev["n_images"] < ev["n_images_considered"]
    assert set(ev["per_bucket"]) == {"4"}  # only slices all four raters marked
    assert ev["dice_each_matched_mean"] == pytest.approx(ev["dice_match"], abs=1e-6)  # 4 outputs, 4 raters

    r = _cli("results", "--paper-protocol", str(out))
    assert r.returncode == 0, r.stderr
    assert "D-Persona stage I, published (K=50)" in r.stdout and "selected on the test fold" in r.stdout
    assert f"| {ev['n_outputs']} | {ev['n_images']} |" in r.stdout

    bad = _cli("evaluate", *common, "--samples", "5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--samples" in bad.stderr
