"""Pionono (Schmidt et al., ICCV 2023): per-rater Gaussian latent q(z|r) = N(mu_r, L_r L_r^T).

Latent 8, prior N(0, prior_sigma^2 I) (sigma 2), head = 1x1 convs on [F ; tile(z)] (24 -> 16 -> 16 -> 1).
mu_r init N(0, posterior_init_sigma^2) (reference 8), L_r init 2 I (diagonal through softplus, so
it stays positive). Loss: GDL on the mean of ``mc_samples`` (5) MC logits for the chosen rater +
kl_weight (5e-4) KL(q(z|r) || prior) + reg_weight * L2(head). ``param_groups`` puts the z
parameters at the train config's ``z_lr`` (default 0.02, reference).

Documented choices: ``personalize`` uses z = mu_r (``personalize_mode: "mu"``, deterministic,
fast) or the mean of ``personalize_mc`` (20) MC logits (``"mc"``, reference). ``sample`` draws from
the raters' mixture, stratified (n // K samples per rater, then z ~ q(z|r); ``sample_mode:
"mixture"``, default: the head only ever sees z near the raters' posteriors) or from the prior
(``"prior"``). With a presence head (``presence.enabled``) rater k's samples are empty with
probability 1 - P(k) and persona k is empty where P(k) < 0.5 (models/presence.py). The explorer's
``latent_prior`` is the moment-matched diagonal Gaussian of that mixture. ``blend`` mixes mu_i, mu_j.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from .backbone import build_backbone
from .base import Capabilities, MultiRaterModel, choose_raters, randn, unpack_batch, weighted_mean
from .fcomb import Fcomb
from .presence import gate_personas, gate_samples, stratified_raters


class PiononoModel(MultiRaterModel):
    method = "pionono"
    DEFAULTS = {
        "latent_dim": 8,
        "prior_sigma": 2.0,
        "posterior_init_sigma": 8.0,
        "posterior_init_scale": 2.0,
        "head": {"num_convs": 3, "hidden": 16},
        "personalize_mode": "mu",
        "personalize_mc": 20,
        "sample_mode": "mixture",
        "loss": {"mc_samples": 5, "kl_weight": 5e-4, "reg_weight": 1e-5},
    }

    def __init__(self, config: dict):
        super().__init__(config)
        cfg = self.config
        k, ld = self.num_raters, int(cfg["latent_dim"])
        self.latent_dim = ld
        self.backbone = build_backbone(cfg)
        self.head = Fcomb(self.backbone.out_channels, ld, cfg["head"]["hidden"], int(cfg["head"]["num_convs"]))
        self._init_presence()
        self.z_mu = nn.Parameter(torch.randn(k, ld) * float(cfg["posterior_init_sigma"]))
        s = float(cfg["posterior_init_scale"])
        raw = torch.zeros(k, ld, ld)
        raw.diagonal(dim1=-2, dim2=-1).fill_(math.log(math.expm1(s)))
        self.z_tril_raw = nn.Parameter(raw)
        if cfg["personalize_mode"] not in ("mu", "mc") or cfg["sample_mode"] not in ("mixture", "prior"):
            raise ValueError("personalize_mode in {mu, mc}, sample_mode in {mixture, prior}")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            diverse=True,
            personalized=True,
            uncertainty=[],
            latent_dim=self.latent_dim,
            blend=True,
            presence=self.has_presence,
            notes="Pionono: image-independent per-rater Gaussians; samples from the raters' mixture, "
            "experts at their posterior means, blend interpolates the means.",
        )

    def scale_tril(self) -> torch.Tensor:
        raw = self.z_tril_raw
        diag = F.softplus(torch.diagonal(raw, dim1=-2, dim2=-1))
        return torch.tril(raw, -1) + torch.diag_embed(diag)

    def _rater_draws(self, r: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu_r + L_r eps for rater indices r (...,) and eps (..., L); fp32 under any autocast."""
        with torch.autocast(eps.device.type, enabled=False):
            return self.z_mu[r] + (self.scale_tril()[r] @ eps.float().unsqueeze(-1)).squeeze(-1)

    # ------------------------------------------------------------------ inference
    def _encode(self, x):
        feats, levels = self.backbone(x, return_levels=True)
        return {
            "proj": self.head.project(feats),
            "size": tuple(x.shape[-2:]),
            "batch": x.shape[0],
            "presence": self._presence_probs(levels),
        }

    @torch.no_grad()
    def encode(self, x):
        return self._encode(x)

    def latent_prior(self, ctx):
        mu = self.z_mu
        var = (self.scale_tril() ** 2).sum(-1)  # diag of L L^T
        m = mu.mean(0)
        v = (var + mu**2).mean(0) - m**2
        b = ctx["batch"]
        return m.detach().expand(b, -1).clone(), v.clamp(min=1e-12).sqrt().detach().expand(b, -1).clone()

    @torch.no_grad()
    def decode(self, ctx, z):
        return self.head.decode(ctx["proj"], z.to(ctx["proj"].dtype), ctx["size"])

    @torch.no_grad()
    def sample(self, x, n, generator=None):
        """Stratified: n // K samples per rater (z ~ q(z|r)), each of rater k's empty with probability
        1 - P(k) when the model has a presence head; ``sample_mode: "prior"`` draws z from the prior."""
        ctx = self._encode(x)
        r, z = self._draw(x.shape[0], int(n), generator, self.z_mu)
        if r is None:
            return self.decode(ctx, z)
        return gate_samples(self.decode(ctx, z), r, ctx["presence"], generator)

    def _draw(self, b, n, generator, like):
        """``(rater (b, n) or None for prior draws, z (b, n, L))``: the latents ``sample`` decodes."""
        if self.config["sample_mode"] == "prior":  # no rater strata to draw
            return None, randn((b, n, self.latent_dim), generator, like) * float(self.config["prior_sigma"])
        r = stratified_raters(b, n, self.num_raters, generator, like.device)
        return r, self._rater_draws(r, randn((b, n, self.latent_dim), generator, like))

    @torch.no_grad()
    def personalize(self, x, generator=None):
        ctx = self._encode(x)
        b = x.shape[0]
        if self.config["personalize_mode"] == "mu":
            out = self.decode(ctx, self.z_mu.expand(b, -1, -1))
        else:
            out = self._rater_mc_logits(ctx, b, int(self.config["personalize_mc"]), generator)
        return gate_personas(out, ctx["presence"])

    def _rater_mc_logits(self, ctx, b: int, mc: int, generator) -> torch.Tensor:
        """Per rater the mean of ``mc`` logits decoded from draws of its Gaussian: (B, K, H, W)."""
        k = self.num_raters
        r = torch.arange(k, device=self.z_mu.device).repeat_interleave(mc).expand(b, -1)
        z = self._rater_draws(r, randn((b, k * mc, self.latent_dim), generator, self.z_mu))
        return self.decode(ctx, z).view(b, k, mc, *ctx["size"]).mean(2)

    REFERENCE_MC = 20

    @torch.no_grad()
    def reference_outputs(self, x, generator=None):
        """The reference's ``val_step``: per rater the mean of 20 MC logits (K outputs feed every metric)."""
        return self._rater_mc_logits(self._encode(x), x.shape[0], self.REFERENCE_MC, generator)

    @torch.no_grad()
    def blend(self, x, i, j, t, generator=None):
        i, j, t = self._check_rater(i), self._check_rater(j), float(t)
        z = ((1 - t) * self.z_mu[i] + t * self.z_mu[j]).expand(x.shape[0], 1, -1)
        return self.decode(self._encode(x), z)

    # ------------------------------------------------------------------ training
    DEFAULT_LATENT_LR = 0.02  # reference: per-rater z parameters at 0.02
    PERSONA_LR = (
        0.1  # a new persona (persona_fit); phantom generous_2: +0.049 Dice at 0.1/200 steps, +0.027 at 0.04/100
    )

    def latent_parameters(self):
        return [self.z_mu, self.z_tril_raw]

    def persona_tensors(self):
        # a new rater Gaussian; backbone and head frozen
        return {"z_mu": True, "z_tril_raw": True, **self._presence_persona_tensors()}

    def loss(self, batch, step=0):
        x, masks, valid = unpack_batch(batch)
        lc = self.config["loss"]
        b, mc = x.shape[0], int(lc["mc_samples"])
        bi = torch.arange(b, device=x.device)
        idx, has = choose_raters(valid, self.config["rater_sampling"])
        y = masks[bi, idx].unsqueeze(1)
        feats = self.backbone(x)
        eps = torch.randn(b, mc, self.latent_dim, device=x.device, dtype=x.dtype)
        z = self._rater_draws(idx[:, None].expand(b, mc), eps)
        logits = self.head.decode(self.head.project(feats), z, x.shape[-2:]).mean(1, keepdim=True)
        w = has.to(x.dtype)[:, None, None, None]
        seg = L.generalized_dice_loss(torch.sigmoid(logits), y, w)
        kl_all = L.kl_gaussian_tril_isotropic(self.z_mu, self.scale_tril(), float(self.config["prior_sigma"]))
        kl = weighted_mean(kl_all[idx], has)
        reg = L.l2_regularisation(self.head.layers)
        total = seg + float(lc["kl_weight"]) * kl + float(lc["reg_weight"]) * reg
        return {"loss": total, "seg": seg.detach(), "kl": kl.detach(), "reg": reg.detach()}
