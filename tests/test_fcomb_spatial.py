"""The k x k Fcomb's fast inference path against the naive per-sample oracle (issue 30)."""

from __future__ import annotations

import pytest
import torch

from src_training.models import build_model
from src_training.models.fcomb import Fcomb
from src_training.tools.naive_sampling import sample_naive


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_spatial_fcomb_inference_path_matches_per_sample_oracle(monkeypatch, chunk):
    """Same draws: masks identical, fp32 logits equal up to rounding, in one chunk or several."""
    import src_training.models.fcomb as fcomb

    monkeypatch.setattr(fcomb, "_SPATIAL_CHUNK", 1)
    monkeypatch.setattr(fcomb, "_CHUNK_ROWS", 12 * 10 * chunk)  # `chunk` samples of 12 x 10 per chunk
    torch.manual_seed(0)
    head = Fcomb(8, 3, hidden=8, kernel_size=3).eval()
    feats, z = torch.randn(2, 8, 12, 10), torch.randn(2, 7, 3)
    with torch.no_grad():
        fast = head(feats, z)
        oracle = torch.cat([head.forward_naive(feats, z[:, i]) for i in range(z.shape[1])], 1)
    assert fast.shape == oracle.shape == (2, 7, 12, 10)
    assert torch.equal(fast > 0, oracle > 0)
    assert torch.allclose(fast, oracle, atol=1e-5, rtol=1e-5)


def test_spatial_dpersona_sample_matches_naive_loop():
    cfg = {
        "method": "dpersona",
        "num_raters": 3,
        "latent_dim": 3,
        "backbone": {"widths": [4, 8]},
        "prior": {"widths": [4, 8]},
        "fcomb": {"kernel_size": 3, "num_convs": 4},
    }
    model = build_model(cfg).eval()
    x = torch.rand(1, 1, 16, 16)
    fast = model.sample(x, 5, torch.Generator().manual_seed(3))
    naive = sample_naive(model, x, 5, torch.Generator().manual_seed(3))
    assert model.fcomb.kernel_size == 3
    assert torch.equal(fast > 0, naive > 0) and torch.allclose(fast, naive, atol=1e-5)
