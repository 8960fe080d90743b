"""UMA-Net (Wang et al., MedIA 2025) re-designed from the paper's abstract (no public code).

Design decisions (ours, not the authors'):
* Backbone -> F; H-head and L-head: Conv3x3 F->hidden, ReLU, Conv1x1 -> 1 logit each.
* AUEM: shared small conv net (Conv3x3 -> ReLU -> Conv3x3 -> ReLU -> Conv1x1 -> sigmoid) on
  [F.detach(), Y_k, sigmoid(P_H).detach()] -> U_k in [0, 1] per pixel and annotation; all K
  annotations run as one batch (weights shared across k). F is DETACHED (``auem.detach_features``)
  so the backbone cannot shape its features to let U explain errors away.
* Reliability-weighted loss of a head P against annotation k:
  mean_px[(1 - U_k) BCE(P, Y_k)] + dice_weight * softDice(P, Y_k; weight (1 - U_k).detach()), the
  Dice term averaged over the annotations that are NOT empty (an empty annotation counts through BCE
  only; see the LIDC collapse below)
  + u_penalty * mean_px(pen(U_k)) so U cannot grow trivially. Default ``penalty_type: "quadratic"``,
  pen = U^2 / 2: the per-pixel optimum is U_k* = clamp(BCE(P, Y_k) / u_penalty, 0, 1), a graded
  "annotation k disagrees with the (reliability-weighted) consensus" map. The brief's ``"linear"``
  pen = U (and ``"log"``, -log(1 - U)) are available, but their optimum is bang-bang (U = 0 wherever
  BCE < u_penalty): from init (BCE ~ 0.69) the sigmoid saturates at U = 0 and never recovers
  (observed on toy data), so they are not the default.
* LIDC collapse (measured twice, fixed by the two points here): on LIDC both heads predicted empty
  on every val slice (logits about -11 everywhere; 900 CPU steps, and again at steps 150-400 of a
  rerun). Cause: with area-ranked LIDC raters most slices have 1-3 EMPTY annotations, and a
  per-annotation soft Dice with smoothing 1 on an empty target is 1 - 1/(sum p + 1): its push
  towards sum p = 0 (about sum p per image in logit space) outweighs the pixel-mean BCE pull on a
  ~1% foreground (about 0.003), so the equilibrium is a saturated, empty head whose Dice gradient
  has vanished. Hence the Dice term never scores an empty annotation on its own: ``loss.dice_scope``
  ``"marked"`` skips empty annotations (the head then learns the union: on 1-rater LIDC slices it
  predicts a lesion on 92% of them), ``"batch"`` (the shipped config) pools numerator and denominator
  over the batch, so empty annotations count without the per-image collapse (1,500 LIDC steps:
  val dice_match 0.509 vs 0.472, 1-rater slices 0.447 vs 0.218; docs/lidc_training_recipe.md).
* Weight floor (``min_weight``, default 0.3): the loss weight is ``m + (1 - m)(1 - U_k)`` rather than
  ``1 - U_k``: once the head predicts background, foreground BCE exceeds ``u_penalty`` and U_k -> 1
  there, and an unfloored weight would then remove the foreground from the loss altogether. With
  the floor the optimum is U_k* = clamp((1 - m) BCE / u_penalty, 0, 1), still a graded map, and
  foreground always counts.
* Agreement term (``agreement_weight``): variance across valid raters of the corrected labels
  (1 - U_k) Y_k + U_k P.detach(), i.e. raters are encouraged to agree on pixels deemed reliable.
* QAM: score s = 1 - mean of U_k over valid k and the ROI (union of valid Y_k dilated by
  ``roi_dilation`` px; whole image if empty). Split high/low by the batch median (ties -> high;
  ``split: "median"``) or a fixed ``threshold``. H-head learns from high-quality images, the L-head
  (weight ``low_weight``) from low-quality ones; each averaged over its group's images.
* Reliability head (Conv3x3 F.detach()->16, ReLU, Conv1x1, sigmoid) regresses the detached
  mean_k U_k (MSE) so that reliability / quality are available WITHOUT annotations at inference.
* Inference keeps backbone + H-head (+ reliability head): ``uncertainty(x)`` = {reliability: 1 - U_hat
  (B, H, W), quality: 1 - mean U_hat over the dilated predicted ROI (B,)}. ``sample`` /
  ``personalize`` repeat the H-head prediction (not diverse, not personalized).
  ``annotation_uncertainty(x, masks)`` exposes the AUEM maps U_k for given annotations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from .backbone import build_backbone
from .base import Capabilities, MultiRaterModel, unpack_batch

QUALITY_SPLITS = ("median", "threshold", "all")


def _head(cin: int, hidden: int, cout: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of (B, 1, H, W) masks with a (2r+1)^2 square."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def roi_mean(values: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, M, H, W) over roi (B, 1|M, H, W) per image (whole image where roi is empty) -> (B,)."""
    roi = roi.expand_as(values).to(values.dtype)
    empty = roi.flatten(1).sum(1) == 0
    roi = torch.where(empty[:, None, None, None], torch.ones_like(roi), roi)
    return (values * roi).flatten(1).sum(1) / roi.flatten(1).sum(1)


class UMANet(MultiRaterModel):
    method = "umanet"
    DEFAULTS = {
        "head_hidden": 16,
        "auem": {"hidden": 16, "detach_features": True, "sees_prediction": True},
        "quality": {"split": "median", "threshold": 0.5, "roi_dilation": 3},
        "loss": {
            "u_penalty": 2.0,
            "penalty_type": "quadratic",
            "dice_weight": 1.0,
            "agreement_weight": 0.1,
            "low_weight": 0.5,
            "reliability_weight": 1.0,
            "min_weight": 0.3,
            "dice_scope": "marked",
        },
    }

    def __init__(self, config: dict):
        super().__init__(config)
        cfg = self.config
        hid = int(cfg["head_hidden"])
        self.backbone = build_backbone(cfg)
        f = self.backbone.out_channels
        self.h_head = _head(f, hid)
        self.l_head = _head(f, hid)
        ah = int(cfg["auem"]["hidden"])
        self.auem = nn.Sequential(
            nn.Conv2d(f + 2, ah, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(ah, ah, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(ah, 1, 1),
        )
        self.rel_head = _head(f, ah)
        if cfg["quality"]["split"] not in QUALITY_SPLITS:
            raise ValueError(f"quality.split must be one of {QUALITY_SPLITS}")
        if cfg["loss"]["dice_scope"] not in L.DICE_SCOPES:
            raise ValueError(f"loss.dice_scope must be one of {L.DICE_SCOPES}")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            diverse=False,
            personalized=False,
            uncertainty=["reliability", "quality"],
            latent_dim=0,
            blend=False,
            notes="UMA-Net: one H-head prediction (sample/personalize repeat it). reliability = "
            "1 - predicted annotation uncertainty (no annotations needed); quality = image score.",
        )

    # ------------------------------------------------------------------ pieces
    def _auem(self, feats, masks, p_h):
        """U (B, K, H, W) for every annotation; feats (B, F, H, W), masks (B, K, H, W), p_h (B, 1, H, W)."""
        b, k = masks.shape[:2]
        if self.config["auem"]["detach_features"]:
            feats = feats.detach()
        f = feats.unsqueeze(1).expand(-1, k, -1, -1, -1)
        if not self.config["auem"].get("sees_prediction", True):
            p_h = torch.zeros_like(p_h)  # ablation: U_k from the features and Y_k alone
        p = p_h.detach().unsqueeze(1).expand(-1, k, -1, -1, -1)
        inp = torch.cat([f, masks.unsqueeze(2), p], 2).flatten(0, 1)
        return torch.sigmoid(self.auem(inp).float()).view(b, k, *masks.shape[-2:])

    def _rel(self, feats):
        return torch.sigmoid(self.rel_head(feats.detach()).float())

    def _roi_radius(self) -> int:
        return int(self.config["quality"]["roi_dilation"])

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, x):
        feats = self.backbone(x)
        return {"features": feats, "logits": self.h_head(feats)}

    @torch.no_grad()
    def decode(self, ctx, z):
        return ctx["logits"].expand(-1, z.shape[1], -1, -1).contiguous()

    @torch.no_grad()
    def sample(self, x, n, generator=None):
        return self.h_head(self.backbone(x)).repeat(1, int(n), 1, 1)

    @torch.no_grad()
    def personalize(self, x, generator=None):
        return self.h_head(self.backbone(x)).repeat(1, self.num_raters, 1, 1)

    @torch.no_grad()
    def uncertainty(self, x):
        feats = self.backbone(x)
        u_hat = self._rel(feats)
        roi = dilate((torch.sigmoid(self.h_head(feats)) > 0.5).to(x.dtype), self._roi_radius())
        return {"reliability": (1 - u_hat)[:, 0], "quality": 1 - roi_mean(u_hat, roi)}

    @torch.no_grad()
    def annotation_uncertainty(self, x, masks):
        """AUEM maps U_k (B, K, H, W) for given annotations masks (B, K, H, W)."""
        feats = self.backbone(x)
        return self._auem(feats, masks.to(x.dtype), torch.sigmoid(self.h_head(feats)))

    # ------------------------------------------------------------------ training
    def _weighted_seg(self, logits, masks, u, vmask):
        """Reliability-weighted loss of one head vs all valid annotations: the per-image BCE +
        penalty (B,) and the soft-Dice pieces ``(num, den, marked)`` (B, K) (see ``losses.group_dice_loss``)."""
        lc = self.config["loss"]
        k = masks.shape[1]
        lg = logits.expand(-1, k, -1, -1)
        bce = F.binary_cross_entropy_with_logits(lg, masks, reduction="none")
        floor = float(lc.get("min_weight", 0.0))
        rel = floor + (1 - floor) * (1 - u)  # loss weight; the floor keeps every annotation's pixels in play
        nv = vmask.flatten(1).sum(1).clamp(min=1)  # valid annotations per image
        per_img = (rel * bce * vmask).flatten(2).mean(2).sum(1) / nv
        kind = lc["penalty_type"]
        if kind == "quadratic":
            pen = 0.5 * u * u
        elif kind == "log":
            pen = -torch.log((1 - u).clamp(min=1e-6))
        elif kind == "linear":
            pen = u
        else:
            raise ValueError(f"unknown penalty_type {kind!r}")
        per_img = per_img + float(lc["u_penalty"]) * (pen * vmask).flatten(2).mean(2).sum(1) / nv
        return per_img, L.annotation_dice_terms(torch.sigmoid(lg), masks, rel.detach() * vmask)

    def _group_loss(self, logits, masks, u, vmask, valid, group):
        """One head's loss over the images in ``group``: mean per-image BCE + penalty, plus the
        weighted Dice in the configured scope (``loss.dice_scope``)."""
        lc = self.config["loss"]
        per_img, (num, den, marked) = self._weighted_seg(logits, masks, u, vmask)
        bce = (per_img * group).sum() / group.sum().clamp(min=1)
        dice = L.group_dice_loss(num, den, marked, valid, group, lc.get("dice_scope", "marked"))
        return bce + float(lc["dice_weight"]) * dice

    def quality_scores(self, u, masks, valid):
        """QAM score per image s = 1 - mean U over valid raters and the dilated union ROI -> (B,)."""
        vmask = valid.to(u.dtype)[:, :, None, None]
        roi = dilate((masks * vmask).amax(1, keepdim=True), self._roi_radius())
        empty = roi.flatten(1).sum(1) == 0
        roi = torch.where(empty[:, None, None, None], torch.ones_like(roi), roi) * vmask
        return 1 - (u * roi).flatten(1).sum(1) / roi.flatten(1).sum(1).clamp(min=1e-6)

    def split_high(self, s: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """High-quality mask (B,): top ceil(n/2) scores of the images with raters (median split) or s >= threshold."""
        qc = self.config["quality"]
        if qc["split"] == "threshold":
            return (s >= float(qc["threshold"])) & has
        if qc["split"] == "all":  # ablation: no quality split, every image trains the H-head
            return has.clone()
        high = torch.zeros_like(has)
        ids = torch.nonzero(has).flatten()
        if len(ids):
            order = torch.argsort(s[ids], descending=True, stable=True)
            high[ids[order[: (len(ids) + 1) // 2]]] = True
        return high

    def loss(self, batch, step=0):
        x, masks, valid = unpack_batch(batch)
        lc = self.config["loss"]
        has = valid.any(1)
        vmask = valid.to(x.dtype)[:, :, None, None]
        feats = self.backbone(x)
        logit_h, logit_l = self.h_head(feats).float(), self.l_head(feats).float()  # losses in fp32
        u = self._auem(feats, masks, torch.sigmoid(logit_h))
        with torch.no_grad():
            s = self.quality_scores(u, masks, valid)
            high = self.split_high(s, has)
            low = (~high) & has
        seg_h = self._group_loss(logit_h, masks, u, vmask, valid, high)
        seg_l = self._group_loss(logit_l, masks, u, vmask, valid, low)
        corrected = (1 - u) * masks + u * torch.sigmoid(logit_h).detach()
        nv = vmask.sum(1, keepdim=True).clamp(min=1)
        mean_c = (corrected * vmask).sum(1, keepdim=True) / nv
        var = (((corrected - mean_c) ** 2) * vmask).sum(1) / nv[:, 0]
        agree = (var.flatten(1).mean(1) * has).sum() / has.sum().clamp(min=1)
        u_target = ((u * vmask).sum(1, keepdim=True) / nv).detach()
        rel = (((self._rel(feats) - u_target) ** 2).flatten(1).mean(1) * has).sum() / has.sum().clamp(min=1)
        total = (
            seg_h
            + float(lc["low_weight"]) * seg_l
            + float(lc["agreement_weight"]) * agree
            + float(lc["reliability_weight"]) * rel
        )
        return {
            "loss": total,
            "seg_high": seg_h.detach(),
            "seg_low": seg_l.detach(),
            "agreement": agree.detach(),
            "reliability": rel.detach(),
            "u_mean": ((u * vmask).sum() / (vmask.sum() * u[0, 0].numel()).clamp(min=1)).detach(),
            "quality_mean": s[has].mean() if bool(has.any()) else s.new_tensor(float("nan")),
            "n_high": high.sum().to(x.dtype),
        }
