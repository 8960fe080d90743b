"""Probabilistic U-Net (Kohl et al. 2018) on the shared backbone.

prior p(z|x), posterior q(z|x, y_r) (one rater mask), axis-aligned Gaussians (latent 6, bounded
log-sigma), z injected by a 4-layer 1x1 Fcomb. Loss: GDL (or BCE summed per image, Kohl's scale)
reconstruction of the chosen rater from a POSTERIOR sample + beta * KL(q||p) (mean over images)
+ reg_weight * sum of unsquared L2 norms of prior, posterior and fcomb.layers (reference).
Not personalized: ``personalize`` returns the prior-mean prediction K times.
"""

from __future__ import annotations

import torch

from .. import losses as L
from .backbone import build_backbone
from .base import Capabilities, MultiRaterModel, choose_raters, randn, unpack_batch, weighted_mean
from .fcomb import Fcomb
from .gaussian import build_gaussian


class ProbUNet(MultiRaterModel):
    method = "prob_unet"
    DEFAULTS = {
        "latent_dim": 6,
        "prior": {"widths": [16, 32, 64, 128], "convs_per_block": 3, "norm": "none", "log_sigma_bound": 5.0},
        "fcomb": {"num_convs": 4, "hidden": None},
        "loss": {"recon": "gdl", "beta": 1.0, "reg_weight": 1e-5},
    }

    def __init__(self, config: dict):
        super().__init__(config)
        cfg = self.config
        self.latent_dim = int(cfg["latent_dim"])
        self.backbone = build_backbone(cfg)
        feats = self.backbone.out_channels
        self.prior = build_gaussian(self.in_channels, self.latent_dim, cfg["prior"])
        self.posterior = build_gaussian(
            self.in_channels + self._posterior_extra_channels(), self.latent_dim, cfg.get("posterior", cfg["prior"])
        )
        self.fcomb = Fcomb(feats, self.latent_dim, cfg["fcomb"].get("hidden"), int(cfg["fcomb"]["num_convs"]))

    def _posterior_extra_channels(self) -> int:
        return 1

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            diverse=True,
            personalized=False,
            uncertainty=[],
            latent_dim=self.latent_dim,
            blend=False,
            notes="Diverse samples from the image-conditional Gaussian prior. Not personalized: "
            "personalize() returns the prior-mean prediction for every rater.",
        )

    # ------------------------------------------------------------------ inference
    def _encode(self, x):
        feats = self.backbone(x)
        mu, sigma = self.prior(x)
        return {"features": feats, "proj": self.fcomb.project(feats), "prior": (mu, sigma), "size": tuple(x.shape[-2:])}

    @torch.no_grad()
    def encode(self, x):
        return self._encode(x)

    def latent_prior(self, ctx):
        return ctx["prior"]

    @torch.no_grad()
    def decode(self, ctx, z):
        return self.fcomb.decode(ctx["proj"], z.to(ctx["proj"].dtype), ctx["size"])

    def _prior_draws(self, ctx, n, generator):
        mu, sigma = ctx["prior"]
        eps = randn((mu.shape[0], int(n), self.latent_dim), generator, mu)
        return mu[:, None] + sigma[:, None] * eps

    @torch.no_grad()
    def sample(self, x, n, generator=None):
        ctx = self._encode(x)
        return self.decode(ctx, self._prior_draws(ctx, n, generator))

    @torch.no_grad()
    def personalize(self, x, generator=None):
        ctx = self._encode(x)
        mean = self.decode(ctx, ctx["prior"][0][:, None])
        return mean.repeat(1, self.num_raters, 1, 1)

    # ------------------------------------------------------------------ training
    def _recon(self, logits, y, w):
        if self.config["loss"]["recon"] == "bce":
            return L.bce_loss(logits, y, w, reduction="sum_per_image")
        return L.generalized_dice_loss(torch.sigmoid(logits), y, w)

    def _reg(self):
        return L.l2_regularisation(self.posterior, self.prior, self.fcomb.layers)

    def loss(self, batch, step=0):
        x, masks, valid = unpack_batch(batch)
        idx, has = choose_raters(valid, self.config["rater_sampling"])
        y = masks[torch.arange(len(idx), device=x.device), idx].unsqueeze(1)
        feats = self.backbone(x)
        mu_p, s_p = self.prior(x)
        mu_q, s_q = self.posterior(torch.cat([x, y], 1))
        z = mu_q + s_q * torch.randn_like(mu_q)
        logits = self.fcomb.decode(self.fcomb.project(feats), z[:, None], x.shape[-2:])
        w = has.to(x.dtype)[:, None, None, None]
        rec = self._recon(logits, y, w)
        kl = weighted_mean(L.kl_gaussian_diag(mu_q, s_q, mu_p, s_p), has)
        reg = self._reg()
        lc = self.config["loss"]
        total = rec + float(lc["beta"]) * kl + float(lc["reg_weight"]) * reg
        return {"loss": total, "rec": rec.detach(), "kl": kl.detach(), "reg": reg.detach()}
