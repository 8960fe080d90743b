"""Hand-computed checks of src_training.losses (CPU, fast)."""

import math

import pytest
import torch
from torch import nn

from src_training import losses as L


def t(values, shape):
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def test_gdl_single_channel_adds_background():
    # fg: sum t = 1, sum pt = .5, sum(p+t) = 2 -> .5 ; bg: sum p't' = 2.5, sum(p'+t') = 6 -> 5/6
    p = t([0.5, 0.5, 0.0, 0.0], (1, 1, 2, 2))
    y = t([1, 0, 0, 0], (1, 1, 2, 2))
    assert L.generalized_dice_loss(p, y).item() == pytest.approx(1 - (0.5 + 5 / 6) / 2)


def test_gdl_is_batch_level_and_per_image_option():
    p = t([1, 0, 0, 0, 0.5, 0.5, 0.5, 0.5], (2, 1, 2, 2))
    y = t([1, 0, 0, 0, 1, 1, 0, 0], (2, 1, 2, 2))
    # batch level: fg sum t = 3, sum pt = 1 + 1 = 2, sum(p+t) = 2 + 4 = 6 -> 2/3
    # bg: t' = [0,1,1,1,0,0,1,1], p' = [0,1,1,1,.5,.5,.5,.5]: sum p't' = 3 + 1 = 4, sum(p'+t') = 6 + 4 = 10 -> .8
    assert L.generalized_dice_loss(p, y).item() == pytest.approx(1 - (2 / 3 + 0.8) / 2)
    # per image: image 1 perfect (1, 1); image 2: fg 2*1/4 = .5, bg .5
    assert L.generalized_dice_loss(p, y, per_image=True).item() == pytest.approx(1 - (1.0 + 0.5) / 2)


def test_gdl_multichannel_no_background_and_weights():
    p = t([1, 0, 0, 1], (1, 2, 1, 2))
    y = t([1, 0, 1, 0], (1, 2, 1, 2))
    # channel 0 perfect (1), channel 1: sum pt = 0 -> 0
    assert L.generalized_dice_loss(p, y).item() == pytest.approx(0.5)
    # weight 0 on image 2 equals loss of image 1 alone
    p2 = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    y2 = (torch.rand(2, 1, 4, 4) > 0.5).double()
    w = t([1, 0], (2, 1, 1, 1))
    assert L.generalized_dice_loss(p2, y2, w).item() == pytest.approx(L.generalized_dice_loss(p2[:1], y2[:1]).item())


def test_bce_and_soft_dice():
    logits = torch.zeros(1, 1, 2, 2)
    y = torch.tensor([1.0, 0, 1, 0]).reshape(1, 1, 2, 2)
    assert L.bce_loss(logits, y).item() == pytest.approx(math.log(2))
    assert L.bce_loss(logits, y, reduction="sum_per_image").item() == pytest.approx(4 * math.log(2))
    assert L.soft_dice_loss(y, y, smooth=0.0).item() == pytest.approx(0.0)
    # p = .5 everywhere vs y: 2 * 1 / (2 + 2) -> loss .5 (smooth 0)
    assert L.soft_dice_loss(torch.full_like(y, 0.5), y, smooth=0.0).item() == pytest.approx(0.5)


def test_union_intersection_and_bound_loss_ignore_invalid():
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 0, 0, 0] = 1
    masks[0, 1, 0, :] = 1
    masks[0, 2] = 1  # invalid rater: must not enter
    valid = torch.tensor([[True, True, False]])
    union, inter, has = L.union_intersection(masks, valid)
    assert union.flatten().tolist() == [1, 1, 0, 0]
    assert inter.flatten().tolist() == [1, 0, 0, 0]
    assert has.tolist() == [True]
    # samples reproducing union (max) and intersection (min) exactly -> near-zero loss
    big = 30.0
    s1 = (union * 2 - 1) * big
    s2 = (inter * 2 - 1) * big
    samples = torch.cat([s1, s2], 1)
    assert L.bound_loss(samples, masks, valid).item() == pytest.approx(0.0, abs=1e-6)
    masks2 = masks.clone()
    masks2[0, 2] = 0
    assert L.bound_loss(samples, masks2, valid).item() == L.bound_loss(samples, masks, valid).item()


def test_gaussian_kls():
    z = torch.zeros(1, 3)
    one = torch.ones(1, 3)
    assert L.kl_gaussian_diag(z, one, z, one).item() == pytest.approx(0.0)
    # KL(N(1,1) || N(0,1)) = .5 per dim
    assert L.kl_gaussian_diag(one, one, z, one).item() == pytest.approx(1.5)
    # KL(N(0,2^2) || N(0,1)) = log(1/2) + 4/2 - 1/2 per dim
    assert L.kl_gaussian_diag(z, 2 * one, z, one).item() == pytest.approx(3 * (math.log(0.5) + 1.5))
    mu = torch.tensor([0.3, -1.0, 2.0])
    tril = torch.tensor([[1.5, 0, 0], [0.2, 0.7, 0], [-0.4, 0.1, 2.5]])
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mu, scale_tril=tril),
        torch.distributions.MultivariateNormal(torch.zeros(3), 4 * torch.eye(3)),
    )
    assert L.kl_gaussian_tril_isotropic(mu, tril, 2.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_dirichlet_kl():
    a = torch.tensor([[1.3, 0.7, 2.0], [1.0, 1.0, 1.0]])
    b = torch.ones(3)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Dirichlet(a), torch.distributions.Dirichlet(b.expand(2, 3))
    )
    assert torch.allclose(L.kl_dirichlet(a, b), ref, atol=1e-5)
    assert L.kl_dirichlet(a[1:], b).item() == pytest.approx(0.0, abs=1e-6)


def test_l2_regularisation_unsquared_sum():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        lin.bias.fill_(-2.0)
    assert L.l2_regularisation(lin).item() == pytest.approx(5.0 + 2.0)
    assert L.l2_regularisation(lin, [torch.tensor([1.0, 0.0])]).item() == pytest.approx(8.0)
