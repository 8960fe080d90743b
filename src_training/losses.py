"""Loss functions shared by all methods (torch, differentiable).

Conventions: ``probs``/``logits``/``target`` are (B, C, *spatial). ``weight`` is an optional
non-negative tensor broadcastable to that shape; it multiplies every pixel's contribution
(0 removes a pixel / channel / image entirely, e.g. missing raters or images without raters).
"""

from __future__ import annotations

import functools
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "generalized_dice_loss",
    "bce_loss",
    "soft_dice_loss",
    "union_intersection",
    "bound_loss",
    "kl_gaussian_diag",
    "kl_gaussian_tril_isotropic",
    "kl_dirichlet",
    "l2_regularisation",
]


def fp32_loss(fn):
    """Run ``fn`` in fp32 whatever autocast is active: float tensor arguments are cast to float32.

    Every loss and KL term below is wrapped, so bf16/fp16 autocast in training never reaches a
    reduction, a log/lgamma or a division (see ``src_training/precision.py``).
    """

    def cast(a):
        return a.float() if torch.is_tensor(a) and a.is_floating_point() else a

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in list(args) + list(kwargs.values()) if torch.is_tensor(a)), "cpu")
        with torch.autocast(dev, enabled=False):
            return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})

    return wrapper


def _weight_like(x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return torch.ones_like(x)
    return weight.to(x.dtype).expand_as(x)


@fp32_loss
def generalized_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    per_image: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Generalized Dice loss exactly as the reference code (pytorch-3dunet ``GeneralizedDiceLoss``).

    Batch level (default): every channel is flattened over batch and space, (C, B*H*W). If C == 1 a
    background channel ``[p, 1-p]`` / ``[t, 1-t]`` is added. ``w_c = 1/clamp((sum t_c)^2, eps)``;
    ``loss = 1 - mean_c 2 w_c sum(p t) / clamp(w_c sum(p + t), eps)``.
    ``per_image=True`` computes the same per image and averages over images with non-zero weight.
    ``weight`` multiplies each pixel's contribution to every sum (also for the background channel).
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ")
    w = _weight_like(probs, weight)
    target = target.to(probs.dtype)
    if probs.shape[1] == 1:
        probs = torch.cat([probs, 1 - probs], 1)
        target = torch.cat([target, 1 - target], 1)
        w = torch.cat([w, w], 1)
    b, c = probs.shape[:2]
    if per_image:
        p, t, w = (a.reshape(b, c, -1) for a in (probs, target, w))
    else:
        p, t, w = (a.transpose(0, 1).reshape(1, c, -1) for a in (probs, target, w))
    t_sum = (w * t).sum(-1)
    w_c = 1.0 / (t_sum * t_sum).clamp(min=eps)
    w_c = w_c.detach()
    intersect = (w * p * t).sum(-1) * w_c
    denom = ((w * (p + t)).sum(-1) * w_c).clamp(min=eps)
    dice = (2 * intersect / denom).mean(1)  # mean over channels -> (n,)
    if not per_image:
        return 1.0 - dice[0]
    img_w = (w.sum((1, 2)) > 0).to(dice.dtype)
    return 1.0 - (dice * img_w).sum() / img_w.sum().clamp(min=1.0)


@fp32_loss
def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy with logits.

    ``reduction="mean"``: weighted mean over pixels (sum w*bce / sum w).
    ``reduction="sum_per_image"``: Kohl's scale, sum over pixels then mean over images with weight.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    w = _weight_like(bce, weight)
    if reduction == "mean":
        return (w * bce).sum() / w.sum().clamp(min=1e-12)
    if reduction == "sum_per_image":
        per_img = (w * bce).flatten(1).sum(1)
        has = (w.flatten(1).sum(1) > 0).to(bce.dtype)
        return per_img.sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"unknown reduction {reduction!r}")


@fp32_loss
def soft_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    smooth: float = 1.0,
    per_image: bool = True,
) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum(w p t) + s) / (sum(w (p + t)) + s)``.

    Per (image, channel) then averaged over entries with non-zero weight (``per_image=True``), or
    one Dice per channel over the whole batch (``per_image=False``).
    """
    w = _weight_like(probs, weight)
    target = target.to(probs.dtype)
    b, c = probs.shape[:2]
    if per_image:
        p, t, w = (a.reshape(b * c, -1) for a in (probs, target, w))
    else:
        p, t, w = (a.transpose(0, 1).reshape(c, -1) for a in (probs, target, w))
    dice = (2 * (w * p * t).sum(-1) + smooth) / ((w * (p + t)).sum(-1) + smooth)
    has = (w.sum(-1) > 0).to(dice.dtype)
    return 1.0 - (dice * has).sum() / has.sum().clamp(min=1.0)


def union_intersection(masks: torch.Tensor, valid: torch.Tensor | None = None):
    """Union (max) and intersection (min) over the VALID raters of masks (B, K, *spatial).

    Returns ``(union, inter, has)`` with union/inter (B, 1, *spatial) and ``has`` (B,) bool (any
    valid rater). Invalid raters never enter; images without valid raters give union 0, inter 1.
    """
    if valid is None:
        valid = torch.ones(masks.shape[:2], dtype=torch.bool, device=masks.device)
    v = valid.reshape(*valid.shape, *([1] * (masks.dim() - 2)))
    union = torch.where(v, masks, torch.zeros_like(masks)).amax(1, keepdim=True)
    inter = torch.where(v, masks, torch.ones_like(masks)).amin(1, keepdim=True)
    return union, inter, valid.any(1)


@fp32_loss
def bound_loss(
    sample_logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None, per_image: bool = False
) -> torch.Tensor:
    """D-Persona bound loss: GDL(sigmoid([max_j s_j, min_j s_j]), [union, intersection]).

    ``sample_logits`` (B, P, *spatial) are P (differentiable) prior samples; the pixelwise max/min
    over samples is compared with the union/intersection of the valid raters (C = 2 channels).
    """
    upper = sample_logits.amax(1, keepdim=True)
    lower = sample_logits.amin(1, keepdim=True)
    union, inter, has = union_intersection(masks, valid)
    pred = torch.sigmoid(torch.cat([upper, lower], 1))
    tgt = torch.cat([union, inter], 1)
    w = has.to(pred.dtype).reshape(-1, *([1] * (pred.dim() - 1)))
    return generalized_dice_loss(pred, tgt, weight=w, per_image=per_image)


@fp32_loss
def kl_gaussian_diag(
    mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: torch.Tensor
) -> torch.Tensor:
    """Analytic KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) for diagonal Gaussians, summed over the last dim."""
    var_q, var_p = sigma_q**2, sigma_p**2
    kl = torch.log(sigma_p / sigma_q) + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5
    return kl.sum(-1)


@fp32_loss
def kl_gaussian_tril_isotropic(mu: torch.Tensor, scale_tril: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """Analytic KL(N(mu, L L^T) || N(0, prior_sigma^2 I)); mu (..., d), scale_tril (..., d, d)."""
    d = mu.shape[-1]
    var_p = float(prior_sigma) ** 2
    trace = (scale_tril**2).sum((-2, -1)) / var_p
    maha = (mu**2).sum(-1) / var_p
    logdet_q = 2 * torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1).abs()).sum(-1)
    return 0.5 * (trace + maha - d + d * torch.log(torch.tensor(var_p, dtype=mu.dtype)) - logdet_q)


@fp32_loss
def kl_dirichlet(alpha_q: torch.Tensor, alpha_p: torch.Tensor) -> torch.Tensor:
    """Analytic KL(Dir(alpha_q) || Dir(alpha_p)) over the last dim (broadcasting)."""
    alpha_p = alpha_p.to(alpha_q.dtype).expand_as(alpha_q)
    a0, b0 = alpha_q.sum(-1), alpha_p.sum(-1)
    return (
        torch.lgamma(a0)
        - torch.lgamma(alpha_q).sum(-1)
        - torch.lgamma(b0)
        + torch.lgamma(alpha_p).sum(-1)
        + ((alpha_q - alpha_p) * (torch.digamma(alpha_q) - torch.digamma(a0).unsqueeze(-1))).sum(-1)
    )


def l2_regularisation(*modules: nn.Module | Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of UNSQUARED L2 norms of all parameters (weights and biases), as the reference ``l2_regularisation``."""
    total = None
    for m in modules:
        params = m.parameters() if isinstance(m, nn.Module) else m
        for p in params:
            n = p.norm(2)
            total = n if total is None else total + n
    if total is None:
        return torch.zeros(())
    return total


DICE_SCOPES = ("marked", "batch")


@fp32_loss
def annotation_dice_terms(probs: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor, smooth: float = 1.0):
    """Soft-Dice pieces of one prediction (B, K, H, W) against every annotation: ``num`` and ``den``
    (B, K) with per-pixel ``weight``, and ``marked`` (B, K): 1 where annotation k drew something."""
    num = 2 * (weight * probs * masks).flatten(2).sum(2)
    den = (weight * (probs + masks)).flatten(2).sum(2)
    marked = (masks.flatten(2).amax(2) > 0).to(probs.dtype) * (weight.flatten(2).amax(2) > 0).to(probs.dtype)
    return num, den, marked


def group_dice_loss(num, den, marked, valid, group, scope: str = "marked", smooth: float = 1.0) -> torch.Tensor:
    """1 - Dice over the images in ``group`` (B,) bool.

    ``marked``: per annotation with smoothing, averaged over the annotations that drew something
    (an empty annotation counts through the BCE only). ``batch``: one Dice pooled over every valid
    annotation of the group, so an empty annotation's false positives enlarge the denominator
    without the per-annotation collapse (1 - 1/(sum p + 1) on an empty target)."""
    if scope not in DICE_SCOPES:
        raise ValueError(f"dice scope must be one of {DICE_SCOPES}, got {scope!r}")
    g = group.to(num.dtype)[:, None]
    if scope == "batch":
        v = valid.to(num.dtype) * g
        return 1 - ((num * v).sum() + smooth) / ((den * v).sum() + smooth)
    per = (1 - (num + smooth) / (den + smooth)) * marked
    per_img = per.sum(1) / marked.sum(1).clamp(min=1)
    return (per_img * g[:, 0]).sum() / g.sum().clamp(min=1)
