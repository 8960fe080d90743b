"""ProSeg (Liu et al., arXiv 2512.00748): expert-preference latent tau + boundary-ambiguity latent Z.

* tau in the simplex (dim 8): posterior q(tau|r) = Dir(softplus(alpha_r)) with learnable alpha_r
  (init 1.0 at r and r+K, 0.1 elsewhere, as the code); prior Dir(prior_alpha = 1).
* Z (B, 16, H, W): per-rater pixelwise Gaussian N(mu_r(F), sigma_r(F)^2) from K small statistic
  heads (run as one grouped conv stack); prior N(0, exp(z_prior_logvar)) (reference: logvar 1).
* Decoder head: 1x1 convs on [Z ; tile(tau)] (24 -> 16 -> 16 -> 1); F reaches it only through Z.
* Rater classifier p(r|tau) with proper logits + cross-entropy (no double softmax).
* Optional light image reconstruction p(x|Z): Conv3x3 Z->16, ReLU, Conv3x3 16->C (off by default).
Loss: GDL(y_r) + cls_weight CE + kl_weight (KL_Dir + mean-element KL_Z) + recon_weight MSE + reg.

Inference conventions (documented choices):
* ``personalize``: tau = posterior mean alpha_k / sum(alpha_k), Z = mu_k(x) (deterministic).
* ``sample``: stratified raters (n // K samples per rater, models/presence.py), tau ~ Dir(prior_alpha); Z = mu_r(x)
  (``sample_z: "rater_mean"``, default, fast) or Z ~ N(mu_r, sigma_r^2) (``"rater_sample"``).
* Explorer latent = tau: ``latent_prior`` returns the Dir(prior_alpha) mean and std; ``decode``
  projects z onto the simplex (clamp at 0, renormalise; all-zero -> uniform) and uses Z = mean_k mu_k.
* Presence head (``presence.enabled``): rater k's samples empty with probability 1 - P(k), persona k
  empty where P(k) < 0.5.
* ``blend(i, j, t)``: tau and Z linearly mixed between the two raters' personalized latents.
* ``uncertainty``: ``ambiguity`` = mean_k,c sigma_k / prior sigma, clipped to [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from .backbone import build_backbone
from .base import (
    Capabilities,
    MultiRaterModel,
    choose_raters,
    randn,
    sample_dirichlet,
    unpack_batch,
    weighted_mean,
)
from .fcomb import Fcomb
from .presence import gate_personas, gate_samples, stratified_raters


class StatisticHeads(nn.Module):
    """K heads Conv3x3 F->h1, ReLU, h1->h2, ReLU, h2->2*zc as one grouped stack -> mu, logvar (B, K, zc, H, W)."""

    def __init__(self, features: int, k: int, z_channels: int = 16, hidden=(16, 32), logvar_bound: float = 8.0):
        super().__init__()
        self.k, self.zc, self.bound = int(k), int(z_channels), float(logvar_bound)
        h1, h2 = (int(h) for h in hidden)
        self.net = nn.Sequential(
            nn.Conv2d(features, k * h1, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(k * h1, k * h2, 3, padding=1, groups=k),
            nn.ReLU(inplace=True),
            nn.Conv2d(k * h2, k * 2 * z_channels, 3, padding=1, groups=k),
        )

    def forward(self, feats):
        out = self.net(feats).view(feats.shape[0], self.k, 2 * self.zc, *feats.shape[-2:])
        mu, raw = out.chunk(2, dim=2)
        return mu, self.bound * torch.tanh(raw / self.bound)


class ProSeg(MultiRaterModel):
    method = "proseg"
    DEFAULTS = {
        "latent_dim": 8,
        "z_channels": 16,
        "stat_hidden": [16, 32],
        "head": {"num_convs": 3, "hidden": 16},
        "classifier_hidden": 32,
        "prior_alpha": 1.0,
        "z_prior_logvar": 1.0,
        "recon_branch": False,
        "sample_z": "rater_mean",
        "loss": {"kl_weight": 0.1, "cls_weight": 1.0, "recon_weight": 0.0, "reg_weight": 1e-5},
    }

    def __init__(self, config: dict):
        super().__init__(config)
        cfg = self.config
        k, ld, zc = self.num_raters, int(cfg["latent_dim"]), int(cfg["z_channels"])
        self.latent_dim, self.zc = ld, zc
        self.backbone = build_backbone(cfg)
        self.stats = StatisticHeads(self.backbone.out_channels, k, zc, cfg["stat_hidden"])
        init = torch.full((k, ld), 0.1)
        for r in range(k):
            init[r, r % ld] = 1.0
            init[r, (r + k) % ld] = 1.0
        self.alpha_raw = nn.Parameter(init)
        self.classifier = nn.Sequential(
            nn.Linear(ld, int(cfg["classifier_hidden"])),
            nn.ReLU(inplace=True),
            nn.Linear(int(cfg["classifier_hidden"]), k),
        )
        self.head = Fcomb(zc, ld, cfg["head"]["hidden"], int(cfg["head"]["num_convs"]), init="xavier")
        self._init_presence()
        self.recon = None
        if cfg["recon_branch"]:
            self.recon = nn.Sequential(
                nn.Conv2d(zc, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, self.in_channels, 3, padding=1)
            )
        if cfg["sample_z"] not in ("rater_mean", "rater_sample"):
            raise ValueError("sample_z must be 'rater_mean' or 'rater_sample'")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            diverse=True,
            personalized=True,
            uncertainty=["ambiguity"],
            latent_dim=self.latent_dim,
            blend=True,
            presence=self.has_presence,
            notes="ProSeg: samples draw tau ~ Dir(prior) and a random rater's ambiguity map; experts use the "
            "posterior-mean preference tau_k with Z = mu_k. Explorer latent = tau, projected onto the simplex.",
        )

    # ------------------------------------------------------------------ helpers
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.alpha_raw)

    def _prior_alpha(self, like):
        return torch.full((self.latent_dim,), float(self.config["prior_alpha"]), device=like.device, dtype=like.dtype)

    @staticmethod
    def to_simplex(z: torch.Tensor) -> torch.Tensor:
        """Clamp at 0 and renormalise over the last dim (all-zero rows -> uniform)."""
        z = z.clamp(min=0)
        s = z.sum(-1, keepdim=True)
        uniform = torch.full_like(z, 1.0 / z.shape[-1])
        return torch.where(s > 0, z / s.clamp(min=1e-12), uniform)

    # ------------------------------------------------------------------ inference
    def _encode(self, x):
        feats, levels = self.backbone(x, return_levels=True)
        mu, logvar = (t.float() for t in self.stats(feats))  # latent statistics stay fp32 under autocast
        proj = self.head.project(mu)  # (B, K, P, hid), affine in Z
        return {
            "mu": mu,
            "logvar": logvar,
            "proj": proj,
            "proj_mean": proj.mean(1),
            "size": tuple(x.shape[-2:]),
            "presence": self._presence_probs(levels),
        }

    @torch.no_grad()
    def encode(self, x):
        return self._encode(x)

    def latent_prior(self, ctx):
        b = ctx["mu"].shape[0]
        a = self._prior_alpha(ctx["mu"])
        a0 = a.sum()
        mean = a / a0
        std = torch.sqrt(a * (a0 - a) / (a0**2 * (a0 + 1)))
        return mean.expand(b, -1).clone(), std.expand(b, -1).clone()

    @torch.no_grad()
    def decode(self, ctx, z):
        tau = self.to_simplex(z.to(ctx["proj_mean"].dtype))
        return self.head.decode(ctx["proj_mean"], tau, ctx["size"])

    @torch.no_grad()
    def sample(self, x, n, generator=None):
        ctx = self._encode(x)
        b, n = x.shape[0], int(n)
        r = stratified_raters(b, n, self.num_raters, generator, x.device)
        tau = sample_dirichlet(self._prior_alpha(x), (b, n), generator)
        if self.config["sample_z"] == "rater_sample":
            out = self._decode_sampled_z(ctx, r, tau, generator)
        else:
            out = self.head.decode(ctx["proj"], tau, ctx["size"], index=r)
        return gate_samples(out, r, ctx["presence"], generator)

    def _decode_sampled_z(self, ctx, r: torch.Tensor, tau: torch.Tensor, generator) -> torch.Tensor:
        """Logits with the boundary latent sampled, Z ~ N(mu_r, sigma_r^2), for raters r (B, n)."""
        bi = torch.arange(r.shape[0], device=r.device)[:, None]
        mu, logvar = ctx["mu"][bi, r], ctx["logvar"][bi, r]  # (B, n, zc, H, W)
        z_pix = mu + torch.exp(0.5 * logvar) * randn(mu.shape, generator, mu)
        return self.head.decode(self.head.project(z_pix), tau, ctx["size"])

    REFERENCE_DRAWS = 13

    @torch.no_grad()
    def reference_outputs(self, x, generator=None):
        """The reference's diverse ``test_step``: per rater 13 draws, tau ~ the Dirichlet prior and Z
        sampled from that rater's statistic head (4 x 13 = 52 outputs feed every metric)."""
        ctx = self._encode(x)
        b, n = x.shape[0], self.num_raters * self.REFERENCE_DRAWS
        r = torch.arange(self.num_raters, device=x.device).repeat_interleave(self.REFERENCE_DRAWS).expand(b, -1)
        tau = sample_dirichlet(self._prior_alpha(x), (b, n), generator)
        return self._decode_sampled_z(ctx, r, tau, generator)

    @torch.no_grad()
    def personalize(self, x, generator=None):
        ctx = self._encode(x)
        a = self.alpha()
        tau = (a / a.sum(-1, keepdim=True)).expand(x.shape[0], -1, -1)
        return gate_personas(self.head.decode(ctx["proj"], tau, ctx["size"]), ctx["presence"])

    @torch.no_grad()
    def blend(self, x, i, j, t, generator=None):
        i, j, t = self._check_rater(i), self._check_rater(j), float(t)
        ctx = self._encode(x)
        a = self.alpha()
        tau_k = a / a.sum(-1, keepdim=True)
        tau = ((1 - t) * tau_k[i] + t * tau_k[j]).expand(x.shape[0], 1, -1)
        proj = (1 - t) * ctx["proj"][:, i] + t * ctx["proj"][:, j]
        return self.head.decode(proj, tau, ctx["size"])

    @torch.no_grad()
    def uncertainty(self, x):
        _, logvar = self.stats(self.backbone(x))
        prior_sigma = math.exp(0.5 * float(self.config["z_prior_logvar"]))
        amb = torch.exp(0.5 * logvar).mean((1, 2)) / prior_sigma
        return {"ambiguity": amb.clamp(0, 1)}

    # ------------------------------------------------------------------ training
    DEFAULT_LATENT_LR = 2e-3  # reference: Dirichlet alpha and rater classifier at 2e-3

    def latent_parameters(self):
        return [self.alpha_raw] + list(self.classifier.parameters())

    def persona_tensors(self):
        """A new expert-preference latent (Dirichlet concentration + classifier row) and the new
        persona's own boundary-latent statistic head (a copy of the persona it starts from), all
        fitted; the backbone, the decoder head and every existing persona stay frozen. The head is
        fitted too because tau alone barely moves the output of the trained models (measured on
        phantom_proseg, one phantom image: tau on any simplex vertex changed a persona's mask by at most
        3 of its 69-211 pixels)."""
        out = {f"stats.{k}": True for k, _ in self.stats.named_parameters()}
        last = len(self.classifier) - 1
        out.update({"alpha_raw": True, f"classifier.{last}.weight": True, f"classifier.{last}.bias": True})
        return {**out, **self._presence_persona_tensors()}

    def finish_new_persona(self, steps: int = 200) -> None:
        """Fit the new (last) classifier row: p(r | tau) with tau ~ Dir(alpha_r) of every rater
        (no images); the other rows and all concentrations stay as they are."""
        last = self.classifier[len(self.classifier) - 1]
        k = self.num_raters
        g = torch.Generator().manual_seed(0)
        mask = torch.zeros(k, 1)
        mask[-1] = 1.0
        w, b = last.weight, last.bias
        opt = torch.optim.Adam([w, b], lr=1e-2)
        req = [(p, p.requires_grad) for p in (w, b)]
        for p, _ in req:
            p.requires_grad_(True)
        alpha = self.alpha().detach()
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
            for _ in range(int(steps)):
                tau = torch.distributions.Dirichlet(alpha).sample((16,)).reshape(-1, alpha.shape[-1])
                target = torch.arange(k).repeat(16)
                loss = F.cross_entropy(self.classifier(tau), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                w.grad.mul_(mask)
                b.grad.mul_(mask[:, 0])
                for prm in self.parameters():  # the hidden layer is shared: never changed here
                    if prm is not w and prm is not b:
                        prm.grad = None
                opt.step()
        for p, r in req:
            p.requires_grad_(r)

    def loss(self, batch, step=0):
        x, masks, valid = unpack_batch(batch)
        lc = self.config["loss"]
        b = x.shape[0]
        bi = torch.arange(b, device=x.device)
        idx, has = choose_raters(valid, self.config["rater_sampling"])
        y = masks[bi, idx].unsqueeze(1)
        feats = self.backbone(x)
        mu, logvar = (t.float() for t in self.stats(feats))  # latent statistics stay fp32 under autocast
        mu, logvar = mu[bi, idx], logvar[bi, idx]  # (B, zc, H, W)
        z_pix = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        alpha = self.alpha()[idx]
        tau = torch.distributions.Dirichlet(alpha).rsample()
        logits = self.head.decode(self.head.project(z_pix), tau[:, None], x.shape[-2:])
        w = has.to(x.dtype)[:, None, None, None]
        seg = L.generalized_dice_loss(torch.sigmoid(logits), y, w)
        with torch.autocast(x.device.type, enabled=False):
            cls = weighted_mean(F.cross_entropy(self.classifier(tau.float()), idx, reduction="none"), has)
        kl_tau = weighted_mean(L.kl_dirichlet(alpha, self._prior_alpha(alpha)), has)
        pl = float(self.config["z_prior_logvar"])
        kl_z_el = 0.5 * (pl - logvar + (logvar.exp() + mu**2) / math.exp(pl) - 1.0)
        kl_z = weighted_mean(kl_z_el.flatten(1).mean(1), has)
        reg = L.l2_regularisation(self.head.layers)
        total = (
            seg
            + float(lc["cls_weight"]) * cls
            + float(lc["kl_weight"]) * (kl_tau + kl_z)
            + float(lc["reg_weight"]) * reg
        )
        out = {
            "seg": seg.detach(),
            "cls": cls.detach(),
            "kl_tau": kl_tau.detach(),
            "kl_z": kl_z.detach(),
            "reg": reg.detach(),
        }
        if self.recon is not None:
            rec = weighted_mean(((self.recon(z_pix).float() - x) ** 2).flatten(1).mean(1), has)
            total = total + float(lc["recon_weight"]) * rec
            out["recon"] = rec.detach()
        out["loss"] = total
        return out
