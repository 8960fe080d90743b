"""D-Persona (Wu et al., CVPR 2024): Prob. U-Net with a bound-constrained ELBO + expert query heads.

Stage I (``stage: 1``): posterior q(z | x, Y_1..K) sees the image, all K masks (missing raters
zeroed) and, by default, K constant validity planes. Loss = GDL reconstruction of ONE valid rater
(one index per batch by default) from a POSTERIOR sample (the released code's prior-sample bug is
not copied) + beta KL + bound_weight * bound loss (pixelwise max/min over P differentiable prior
samples vs union/intersection of the VALID raters) + reg.
Stage II (``stage: 2``): K projection heads (conv blocks with padding=1, grouped so all K run in
one pass) give a query q_k (B, L); attention softmax(q_k . z_n) over N prior samples (no grad,
no 1/sqrt(L) scaling and final ReLU by default, as the reference) gives z~_k -> Fcomb -> expert k.
Only the heads train; backbone / prior / posterior / fcomb are frozen and stay in eval mode.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import losses as L
from .base import Capabilities, choose_raters, deep_merge, unpack_batch, weighted_mean
from .prob_unet import ProbUNet


class ExpertQueryHeads(nn.Module):
    """K reference ``Conv_block(F, [32, 16, L])`` heads, run as one grouped conv stack -> (B, K, L).

    Per width: [AvgPool2 (not first)], Conv3x3, ReLU, Dropout2d, Conv3x3, ReLU (padding=1).
    ``query_relu=False`` drops the final ReLU (queries may be negative).
    """

    def __init__(self, features: int, num_experts: int, widths=(32, 16), latent_dim: int = 6,
                 dropout: float = 0.1, query_relu: bool = True):
        super().__init__()
        k = int(num_experts)
        self.k, self.latent_dim = k, int(latent_dim)
        chans = [int(w) for w in widths] + [self.latent_dim]
        layers: list[nn.Module] = []
        cin, groups_in = features, 1
        for i, c in enumerate(chans):
            if i > 0:
                layers.append(nn.AvgPool2d(2, 2))
            layers += [nn.Conv2d(cin, k * c, 3, padding=1, groups=groups_in), nn.ReLU(inplace=True),
                       nn.Dropout2d(dropout), nn.Conv2d(k * c, k * c, 3, padding=1, groups=k)]
            last = i == len(chans) - 1
            if not last or query_relu:
                layers.append(nn.ReLU(inplace=True))
            cin, groups_in = k * c, k
        self.layers = nn.Sequential(*layers)
        for m in self.layers.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.trunc_normal_(m.bias, std=1e-3)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        q = self.layers(feats).mean((2, 3))
        return q.view(feats.shape[0], self.k, self.latent_dim)


class DPersona(ProbUNet):
    method = "dpersona"
    DEFAULTS = deep_merge(ProbUNet.DEFAULTS, {
        "stage": 1,
        "rater_sampling": "per_batch",
        "posterior_validity_channels": True,
        "loss": {"beta": 1.0, "bound_weight": 0.5, "bound_samples": 10, "reg_weight": 1e-5},
        "heads": {"widths": [32, 16], "dropout": 0.1, "query_relu": True, "scale": False,
                  "n_train": 100, "n_infer": 500},
    })

    def __init__(self, config: dict):
        super().__init__(config)
        hc = self.config["heads"]
        self.stage = int(self.config["stage"])
        if self.stage not in (1, 2):
            raise ValueError("D-Persona stage must be 1 or 2")
        self.heads = ExpertQueryHeads(self.backbone.out_channels, self.num_raters, hc["widths"], self.latent_dim,
                                      float(hc["dropout"]), bool(hc["query_relu"]))
        if self.stage == 2:
            for m in self._frozen_modules():
                m.requires_grad_(False)
            self.train(self.training)
        else:
            self.heads.requires_grad_(False)  # heads are not part of the stage-I objective

    def _posterior_extra_channels(self) -> int:
        k = int(self.config["num_raters"])
        return 2 * k if self.config["posterior_validity_channels"] else k

    def _frozen_modules(self):
        return [self.backbone, self.prior, self.posterior, self.fcomb]

    @property
    def capabilities(self) -> Capabilities:
        if self.stage == 1:
            return Capabilities(diverse=True, personalized=False, uncertainty=[], latent_dim=self.latent_dim,
                                blend=False,
                                notes="D-Persona stage I: diverse prior samples. Not personalized: personalize() "
                                      "returns the prior-mean prediction for every rater (train stage II).")
        return Capabilities(diverse=True, personalized=True, uncertainty=[], latent_dim=self.latent_dim, blend=True,
                            notes="D-Persona stage II: expert k = Fcomb(attention of query q_k over N prior samples); "
                                  "blend interpolates two experts' queries before the attention.")

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "stage", 1) == 2:
            for m in self._frozen_modules():
                m.eval()  # frozen BatchNorm stats never update in stage II
        return self

    def trainable_parameters(self):
        if self.stage == 2:
            return list(self.heads.parameters())
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("heads.")]

    # ------------------------------------------------------------------ stage II pieces
    def _attend(self, q: torch.Tensor, z_set: torch.Tensor) -> torch.Tensor:
        """q (B, M, L), z_set (B, N, L) -> convex combinations (B, M, L)."""
        scores = q @ z_set.transpose(1, 2)
        if self.config["heads"]["scale"]:
            scores = scores / math.sqrt(self.latent_dim)
        return torch.softmax(scores, dim=-1) @ z_set

    def _expert_logits(self, ctx, q, n, generator=None):
        z_set = self._prior_draws(ctx, n, generator)
        return self.fcomb.decode(ctx["proj"], self._attend(q, z_set), ctx["size"])

    @torch.no_grad()
    def personalize(self, x, generator=None):
        if self.stage == 1:
            return super().personalize(x)
        ctx = self._encode(x)
        q = self.heads(ctx["features"])
        return self._expert_logits(ctx, q, int(self.config["heads"]["n_infer"]), generator)

    @torch.no_grad()
    def blend(self, x, i, j, t, generator=None):
        if self.stage == 1:
            return super().blend(x, i, j, t)
        i, j, t = self._check_rater(i), self._check_rater(j), float(t)
        ctx = self._encode(x)
        q = self.heads(ctx["features"])
        qb = ((1 - t) * q[:, i] + t * q[:, j])[:, None]
        return self._expert_logits(ctx, qb, int(self.config["heads"]["n_infer"]), generator)

    # ------------------------------------------------------------------ training
    def loss(self, batch, step=0):
        return self._loss_stage2(batch) if self.stage == 2 else self._loss_stage1(batch)

    def _loss_stage1(self, batch):
        x, masks, valid = unpack_batch(batch)
        lc = self.config["loss"]
        idx, has = choose_raters(valid, self.config["rater_sampling"])
        b = x.shape[0]
        y = masks[torch.arange(b, device=x.device), idx].unsqueeze(1)
        post_in = [x, masks]
        if self.config["posterior_validity_channels"]:
            post_in.append(valid.to(x.dtype)[:, :, None, None].expand_as(masks))
        feats = self.backbone(x)
        mu_p, s_p = self.prior(x)
        mu_q, s_q = self.posterior(torch.cat(post_in, 1))
        p = int(lc["bound_samples"])
        z_q = mu_q + s_q * torch.randn_like(mu_q)
        z_p = mu_p[:, None] + s_p[:, None] * torch.randn(b, p, self.latent_dim, device=x.device, dtype=x.dtype)
        logits = self.fcomb.decode(self.fcomb.project(feats), torch.cat([z_q[:, None], z_p], 1), x.shape[-2:])
        w = has.to(x.dtype)[:, None, None, None]
        rec = L.generalized_dice_loss(torch.sigmoid(logits[:, :1]), y, w)
        bound = L.bound_loss(logits[:, 1:], masks, valid)
        kl = weighted_mean(L.kl_gaussian_diag(mu_q, s_q, mu_p, s_p), has)
        reg = self._reg()
        total = rec + float(lc["beta"]) * kl + float(lc["bound_weight"]) * bound + float(lc["reg_weight"]) * reg
        return {"loss": total, "rec": rec.detach(), "kl": kl.detach(), "bound": bound.detach(), "reg": reg.detach()}

    def _loss_stage2(self, batch):
        x, masks, valid = unpack_batch(batch)
        with torch.no_grad():
            feats = self.backbone(x)
            ctx = {"features": feats, "proj": self.fcomb.project(feats), "prior": self.prior(x),
                   "size": tuple(x.shape[-2:])}
        q = self.heads(feats)
        logits = self._expert_logits(ctx, q, int(self.config["heads"]["n_train"]))
        w = valid.to(x.dtype)[:, :, None, None]
        seg = L.generalized_dice_loss(torch.sigmoid(logits), masks, w)
        return {"loss": seg, "seg": seg.detach()}


def dpersona_stage2_from_stage1(state_dict: dict, config: dict, overrides: dict | None = None) -> DPersona:
    """Build a stage-II D-Persona from stage-I weights (heads fresh, everything else loaded + frozen).

    ``state_dict`` may also be a checkpoint dict (with ``state_dict``). ``config`` is the stage-I (or
    stage-II) config; ``overrides`` are merged on top; ``stage`` is forced to 2.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    cfg = deep_merge(config, overrides)
    cfg["stage"] = 2
    cfg["method"] = "dpersona"
    model = DPersona(cfg)
    sd = {k: v.float() if torch.is_floating_point(v) else v for k, v in state_dict.items()
          if not k.startswith("heads.")}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"stage-I weights do not match the D-Persona config: {exc}") from exc
    missing = [k for k in missing if not k.startswith("heads.")]
    if missing or unexpected:
        raise ValueError(f"stage-I weights do not match the D-Persona config: missing={missing[:5]} "
                         f"unexpected={list(unexpected)[:5]}")
    model.train(model.training)
    return model
