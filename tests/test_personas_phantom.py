"""Personalization really reproduces each rater: after a short CPU training on phantoms (where
rater identity is known), persona k matches rater k better than any other rater.

D-Persona is not asserted here because it fails this check, measured with these settings
(400 + 400 steps): the `tight` persona matches `misses_faint` better than `tight`. Even the best of
300 stage-I prior samples, chosen per image with the answer known, gives the `tight` row
[0.851 0.615 0.757 0.863]. The stage-I latent space (its posterior sees all raters) does not
contain that style, so stage II cannot select it. A variant whose posterior sees only the
reconstructed rater also failed, giving [0.802 0.562 0.705 0.849]. The shipped phantom_dpersona
shows the same collapse; see the README's phantom persona matrices."""

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


def _train(model, data, steps: int, lr: float = 3e-3, batch: int = 12):
    x, y = data
    opt = torch.optim.Adam(model.param_groups(lr))
    rng = np.random.default_rng(0)
    model.train()
    for step in range(steps):
        idx = rng.choice(len(x), batch, replace=False)
        out = model.loss({"image": x[idx], "masks": y[idx], "mask_valid": torch.ones(batch, 4, dtype=torch.bool)}, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval()


def _persona_matrix(model, data) -> np.ndarray:
    x, y = data
    with torch.no_grad():
        probs = torch.sigmoid(model.personalize(x, generator=torch.Generator().manual_seed(0))).numpy()
    return np.nanmean([persona_rater_dice(y[i].numpy(), np.ones(4, bool), probs[i]) for i in range(len(x))], axis=0)


def _assert_diagonal_dominates(matrix: np.ndarray):
    for k, name in enumerate(RATERS):
        others = np.delete(matrix[k], k)
        assert matrix[k, k] > others.max(), f"persona {name}: {np.round(matrix[k], 3)} (diagonal should win)"


@pytest.mark.slow
def test_proseg_persona_k_matches_rater_k(phantom_crops):
    train, val = phantom_crops
    torch.manual_seed(0)
    model = _train(build_model({**TINY, "method": "proseg"}), train, steps=400)
    _assert_diagonal_dominates(_persona_matrix(model, val))
