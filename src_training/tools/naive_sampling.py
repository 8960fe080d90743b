"""The naive per-sample sampling loop: a benchmark baseline and a test oracle, not part of the model
interface. It redoes, one sample at a time, what the reference code does (tile the latent to HxW,
concatenate it with the features, run the full head) with the same random draws as the vectorized
``model.sample``, so both must agree (tests) and their speeds compare fairly (``multirater bench``).
"""

from __future__ import annotations

import torch

from ..models.base import randn, sample_dirichlet
from ..models.presence import stratified_raters


def _prob_unet(model, x, n, generator):
    """Backbone + prior once, then per sample: tile z, concat, full fcomb."""
    feats = model.backbone(x)
    mu, sigma = model.prior(x)
    eps = randn((mu.shape[0], n, model.latent_dim), generator, mu)
    return torch.cat([model.fcomb.forward_naive(feats, mu + sigma * eps[:, i]) for i in range(n)], 1)


def _pionono(model, x, n, generator):
    feats = model.backbone(x)
    _, z = model._draw(x.shape[0], n, generator, model.z_mu)
    return torch.cat([model.head.forward_naive(feats, z[:, i]) for i in range(n)], 1)


def _proseg(model, x, n, generator):
    """``rater_mean`` draws: per sample tile tau, concat with Z, full head."""
    feats = model.backbone(x)
    mu, _ = model.stats(feats)
    b = x.shape[0]
    r = stratified_raters(b, n, model.num_raters, generator, x.device)
    tau = sample_dirichlet(model._prior_alpha(x), (b, n), generator)
    bi = torch.arange(b, device=x.device)
    return torch.cat([model.head.forward_naive(mu[bi, r[:, i]], tau[:, i]) for i in range(n)], 1)


def _loop(model):
    """The per-sample loop of ``model``'s class (subclasses, e.g. D-Persona of ProbUNet, inherit it)."""
    from ..models.pionono import PiononoModel
    from ..models.prob_unet import ProbUNet
    from ..models.proseg import ProSeg

    for cls, loop in ((ProbUNet, _prob_unet), (PiononoModel, _pionono), (ProSeg, _proseg)):
        if isinstance(model, cls):
            return loop
    return None


def has_naive_loop(model) -> bool:
    """True when the model has a per-sample reference loop distinct from its ``sample``."""
    return _loop(model) is not None


@torch.no_grad()
def sample_naive(model, x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits (B, n, H, W) from the per-sample loop; ``model.sample`` for methods without one."""
    loop = _loop(model)
    return loop(model, x, int(n), generator) if loop else model.sample(x, n, generator)
