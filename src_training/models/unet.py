"""Deterministic U-Net baseline: backbone + 1x1 logit head (not diverse, not personalized)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from .backbone import build_backbone
from .base import Capabilities, MultiRaterModel, choose_raters, unpack_batch


class UNetModel(MultiRaterModel):
    """Targets: ``random_rater`` (one valid rater per image, as the repos' supervised baseline),
    ``mean`` (soft mean of the valid raters) or ``majority`` (mean > 0.5). ``loss.type``: ``gdl``
    (batch-level generalized Dice), ``bce``, or ``umanet_base``: UMA-Net's base loss with every
    reliability weight 1 (pixel-mean BCE against every valid annotation + soft Dice in
    ``loss.dice_scope``), so a U-Net / UMA-Net comparison can separate method from loss."""

    method = "unet"
    DEFAULTS = {"target": "random_rater", "loss": {"type": "gdl"}}

    def __init__(self, config: dict):
        super().__init__(config)
        self.backbone = build_backbone(self.config)
        self.head = nn.Conv2d(self.backbone.out_channels, 1, 1)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            diverse=False,
            personalized=False,
            uncertainty=[],
            latent_dim=0,
            blend=False,
            notes="Deterministic U-Net: sample() repeats the single prediction n times and "
            "personalize() returns the same (mean) prediction for every rater.",
        )

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
        if self.config["loss"]["type"] == "umanet_base":
            return self._umanet_base_loss(batch)
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

    def _umanet_base_loss(self, batch):
        x, masks, valid = unpack_batch(batch)
        has = valid.any(1)
        vmask = valid.to(masks.dtype)[:, :, None, None]
        logits = self._logits(x).float().expand(-1, masks.shape[1], -1, -1)
        bce = F.binary_cross_entropy_with_logits(logits, masks.float(), reduction="none")
        per_img = (bce * vmask).flatten(2).mean(2).sum(1) / vmask.flatten(1).sum(1).clamp(min=1)
        bce_mean = (per_img * has).sum() / has.sum().clamp(min=1)
        num, den, marked = L.annotation_dice_terms(torch.sigmoid(logits), masks.float(), vmask.expand_as(masks).float())
        dice = L.group_dice_loss(num, den, marked, valid, has, self.config["loss"].get("dice_scope", "marked"))
        seg = bce_mean + float(self.config["loss"].get("dice_weight", 1.0)) * dice
        return {"loss": seg, "seg": seg.detach()}
