"""Personalization really reproduces each rater: after a short CPU training on phantoms (where
rater identity is known), persona k matches rater k better than any other rater, by a margin.

Protocol: train on 96 lesion crops of phantom series seed 11; score on 48 held-out crops of
another phantom series (seed 12) that nothing was trained or selected on. Tiny widths, 64x64
crops. D-Persona uses its default configuration's personalizing options (configs/dpersona.json:
rater classifier on the posterior sample, beta 0.001, 3x3 Fcomb, signed scaled queries), stage I
800 + stage II 300 steps. Measured D-Persona matrix on the held-out crops (run N1 in
docs/dpersona_phantom_experiments.md; rows = personas, columns = raters tight, generous, smooth,
misses_faint):
    [[0.850 0.614 0.742 0.810]
     [0.652 0.911 0.855 0.697]
     [0.764 0.821 0.926 0.816]
     [0.762 0.673 0.804 0.949]]
margins 0.040, 0.056, 0.105, 0.145 (asserted: 0.02 on every row). The test trains D-Persona with
``precision="auto"`` (bf16 autocast where the CPU has native bf16, fp32 elsewhere): on this
project's 2-core CPU 107 s instead of 176 s for the two stages, margins 0.055, 0.111, 0.108, 0.144
(fp32 in the same script: 0.068, 0.111, 0.101, 0.140). The paper's configuration
(configs/dpersona_faithful.json) loses the `tight` row by 0.081 with the same budget (run A3).
ProSeg (400 steps) is held to the same protocol and margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_multirater.datasets.phantom import PHANTOM_WINDOW_HU, make_phantom_case
from src_training.data import normalize_image
from src_training.evaluate import persona_rater_dice
from src_training.models.registry import build_model

RATERS = ["tight", "generous", "smooth", "misses_faint"]
TINY = {"num_raters": 4, "rater_names": RATERS, "backbone": {"widths": [8, 16, 32], "features": 8}}


def _lesion_crops(indices, seed: int, size: int = 64):
    """Phantom slices cropped around the lesion (keeps the test fast on 2 CPU cores)."""
    images, masks = [], []
    for i in indices:
        case = make_phantom_case(i, seed=seed)
        ys, xs = np.nonzero(case.masks.max(0))
        y0 = int(np.clip(ys.mean() - size // 2, 0, case.image.shape[0] - size))
        x0 = int(np.clip(xs.mean() - size // 2, 0, case.image.shape[1] - size))
        images.append(normalize_image(case.image[y0 : y0 + size, x0 : x0 + size], PHANTOM_WINDOW_HU))
        masks.append(case.masks[:, y0 : y0 + size, x0 : x0 + size])
    return torch.tensor(np.stack(images))[:, None], torch.tensor(np.stack(masks)).float()


@pytest.fixture(scope="module")
def phantom_crops():
    torch.manual_seed(0)
    return _lesion_crops(range(96), seed=11), _lesion_crops(range(1000, 1024), seed=11)  # disjoint cases


def _train(model, data, steps: int, lr: float = 3e-3, batch: int = 12, precision: str = "fp32"):
    """Adam on random batches; ``precision="auto"`` trains under bf16 autocast + channels_last where
    the CPU computes bf16 natively (fp32 elsewhere), as ``multirater train --precision auto``."""
    from src_training.precision import autocast, prepare_input, prepare_model, resolve_precision

    x, y = data
    prec = resolve_precision(precision, "cpu")
    prepare_model(model, prec)
    opt = torch.optim.Adam(model.param_groups(lr))
    rng = np.random.default_rng(0)
    model.train()
    for step in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        batch_in = {
            "image": prepare_input(x[idx], prec),
            "masks": y[idx],
            "mask_valid": torch.ones(batch, 4, dtype=torch.bool),
        }
        with autocast(prec, "cpu"):
            out = model.loss(batch_in, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval()


def _persona_matrix(model, data) -> np.ndarray:
    x, y = data
    with torch.no_grad():
        probs = torch.sigmoid(model.personalize(x, generator=torch.Generator().manual_seed(0))).numpy()
    return np.nanmean([persona_rater_dice(y[i].numpy(), np.ones(4, bool), probs[i]) for i in range(len(x))], axis=0)


def _assert_diagonal_dominates(matrix: np.ndarray, margin: float = 0.0):
    for k in range(len(RATERS)):
        others = np.delete(matrix[k], k)
        assert matrix[k, k] > others.max() + margin, (
            f"persona {RATERS[k]}: {np.round(matrix[k], 3)} (diagonal should win by {margin})"
        )


@pytest.fixture(scope="module")
def heldout_crops():
    return _lesion_crops(range(48), seed=12)  # another phantom series: never trained or selected on


@pytest.mark.slow
def test_proseg_persona_k_matches_rater_k(phantom_crops, heldout_crops):
    train, _ = phantom_crops
    torch.manual_seed(0)
    model = _train(build_model({**TINY, "method": "proseg"}), train, steps=400)
    _assert_diagonal_dominates(_persona_matrix(model, heldout_crops), margin=0.02)


def _dpersona_config() -> dict:
    """The default D-Persona configuration's personalizing options on the tiny test widths."""
    from src_training.models.registry import default_config

    shipped = default_config("dpersona")
    return {
        **TINY,
        "method": "dpersona",
        "posterior_target": shipped["posterior_target"],
        "loss": shipped["loss"],
        "fcomb": shipped["fcomb"],
        "heads": {k: v for k, v in shipped["heads"].items() if k != "widths"},
    }


@pytest.mark.slow
def test_dpersona_persona_k_matches_rater_k(phantom_crops, heldout_crops):
    from src_training.models.dpersona import dpersona_stage2_from_stage1

    train, _ = phantom_crops
    torch.manual_seed(0)
    stage1 = _train(build_model(_dpersona_config()), train, steps=800, precision="auto")
    torch.manual_seed(1)
    model = _train(dpersona_stage2_from_stage1(stage1.state_dict(), stage1.config), train, steps=300, precision="auto")
    matrix = _persona_matrix(model, heldout_crops)
    _assert_diagonal_dominates(matrix, margin=0.02)  # every row, the tight one included


@pytest.mark.parametrize("PRECISION", ["fp32", "auto"])
def test_default_dpersona_blend_and_latent_explorer(tmp_path, PRECISION):
    """The default configuration (3x3 Fcomb, rater classifier) keeps blending two personas and the
    latent explorer working through a saved checkpoint: blend t=0/1 are the two personas, decoding
    the sampled codes reproduces the samples, fp16 storage round-trips."""
    from napari_multirater.datasets.phantom import make_phantom_case
    from napari_multirater.inference.engine import InferenceEngine
    from src_training.checkpoint import save_checkpoint
    from src_training.tools.testing import tiny_card

    cfg = {
        **_dpersona_config(),
        "stage": 2,
        "backbone": {"widths": [8, 16], "features": 8},
        "heads": {**_dpersona_config()["heads"], "widths": [8, 8], "n_train": 20, "n_infer": 30},
    }
    assert cfg["fcomb"]["kernel_size"] == 3 and cfg["loss"]["identity_weight"] > 0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.fcomb.layers[1].kernel_size == (3, 3) and hasattr(model, "rater_head")
    path = save_checkpoint(tmp_path / "dp.pt", model, tiny_card("dpersona", RATERS), fp16=True)
    eng = InferenceEngine.load(path, device="cpu", precision=PRECISION)
    image = make_phantom_case(1, ndim=2).image
    b = eng.blend(image, 0, 2, 0.5, seed=3)
    assert b.shape == image.shape and 0 <= b.min() <= b.max() <= 1
    x = torch.rand(2, 1, 32, 32)

    def g():
        return torch.Generator().manual_seed(5)

    p = eng.model.personalize(x, g())
    torch.testing.assert_close(eng.model.blend(x, 0, 2, 0.0, g())[:, 0], p[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(eng.model.blend(x, 0, 2, 1.0, g())[:, 0], p[:, 2], atol=1e-5, rtol=0)
    enc = eng.encode(image)
    z = eng.latent_samples(enc, 3, seed=4)
    np.testing.assert_allclose(eng.decode(enc, z), eng.sample(image, 3, seed=4), atol=1e-4)
    np.testing.assert_allclose(eng.interpolate(enc, z[0], z[1], 1.0), eng.decode(enc, z[1])[0], atol=1e-5)
