"""Deterministic U-Net baseline: backbone + 1x1 logit head (not diverse, not personalized)."""
from __future__ import annotations

import torch
from torch import nn

from .. import losses as L
from .backbone import build_backbone
from .base import Capabilities, MultiRaterModel, choose_raters, unpack_batch


class UNetModel(MultiRaterModel):
    """Targets: ``random_rater`` (one valid rater per image, as the repos' supervised baseline),
    ``mean`` (soft mean of the valid raters) or ``majority`` (mean > 0.5)."""

    method = "unet"
    DEFAULTS = {"target": "random_rater", "loss": {"type": "gdl"}}

    def __init__(self, config: dict):
        super().__init__(config)
        self.backbone = build_backbone(self.config)
        self.head = nn.Conv2d(self.backbone.out_channels, 1, 1)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(diverse=False, personalized=False, uncertainty=[], latent_dim=0, blend=False,
                            notes="Deterministic U-Net: sample() repeats the single prediction n times and "
                                  "personalize() returns the same (mean) prediction for every rater.")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).float()  # fp32 logits under any autocast

    @torch.no_grad()
    def encode(self, x):
        return {"logits": self._logits(x)}

    @torch.no_grad()
    def decode(self, ctx, z):
        return ctx["logits"].expand(-1, z.shape[1], -1, -1).contiguous()

    @torch.no_grad()
    def sample(self, x, n, generator=None):
        return self._logits(x).repeat(1, int(n), 1, 1)

    @torch.no_grad()
    def personalize(self, x, generator=None):
        return self._logits(x).repeat(1, self.num_raters, 1, 1)

    def loss(self, batch, step=0):
        x, masks, valid = unpack_batch(batch)
        has = valid.any(1)
        vf = valid.to(masks.dtype)[:, :, None, None]
        target = self.config["target"]
        if target == "random_rater":
            idx, has = choose_raters(valid, self.config["rater_sampling"])
            y = masks[torch.arange(len(idx)), idx].unsqueeze(1)
        elif target in ("mean", "majority"):
            y = (masks * vf).sum(1, keepdim=True) / vf.sum(1, keepdim=True).clamp(min=1.0)
            if target == "majority":
                y = (y > 0.5).to(y.dtype)
        else:
            raise ValueError(f"unknown target {target!r}")
        logits = self._logits(x)
        w = has.to(logits.dtype)[:, None, None, None]
        if self.config["loss"]["type"] == "bce":
            seg = L.bce_loss(logits, y, w)
        else:
            seg = L.generalized_dice_loss(torch.sigmoid(logits), y, w)
        return {"loss": seg, "seg": seg.detach()}
