"""Per-rater presence: P(rater k / area-ranked expert k marks a lesion on this image), and the
stratified, presence-gated sample sets built on it.

``PresenceHead`` reads the backbone bottleneck (deepest encoder block; ``presence.inputs:
all_levels``: every encoder block and the output features): global average + max pool of each,
concatenated -> Linear -> ReLU -> Linear -> K logits, trained with BCE against "rater k drew something" where rater k
is valid. ``stratified_raters`` gives every rater n/K of n samples (the remainder drawn from the
generator); ``gate_samples`` empties each of rater k's samples with probability 1 - P(k) (drawn from
the generator); ``gate_personas`` empties persona k where P(k) < 0.5. Nothing here adds a fixed
candidate to a sample set: a gated sample replaces that sample's own mask by an empty one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMPTY_LOGIT = -30.0  # sigmoid(-30) ~ 1e-13: an empty mask at any threshold, finite under bf16 / fp16
PERSONA_THRESHOLD = 0.5
PRESENCE_INPUTS = ("bottleneck", "all_levels")


class PresenceHead(nn.Module):
    """Feature maps [(B, C_i, h_i, w_i), ...] -> per-rater presence logits (B, K); ``pool`` and
    ``mlp`` are separate so the head can be fitted on precomputed pooled features."""

    def __init__(self, channels: list[int], num_raters: int, hidden: int = 32):
        super().__init__()
        n_in = 2 * sum(int(c) for c in channels)
        self.mlp = nn.Sequential(nn.Linear(n_in, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), num_raters))

    @staticmethod
    def pool(maps: list[torch.Tensor]) -> torch.Tensor:
        """[(B, C_i, h, w)] -> (B, 2 sum C_i) fp32: [mean ; max] over each map's spatial grid."""
        return torch.cat([torch.cat([m.float().mean((2, 3)), m.float().amax((2, 3))], 1) for m in maps], 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(maps[0].device.type, enabled=False):
            return self.mlp(self.pool(maps))


def presence_targets(masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) masks, (B, K) valid -> (B, K) float: 1 where rater k is valid and drew something."""
    drew = masks.flatten(2).amax(2) > 0.5
    return (drew & valid.bool()).float()


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE averaged with ``weight`` (1 for a valid (image, rater) pair, 0 for a missing rater)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (bce * weight).sum() / weight.sum().clamp(min=1.0)


def presence_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the valid (image, rater) pairs."""
    return weighted_bce(logits, presence_targets(masks, valid), valid.float())


def _uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=dev).to(device)


def stratified_raters(b: int, n: int, k: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """(b, n) rater index per sample: sample i belongs to rater i mod K for the first K * (n // K)
    samples (so every rater has n // K), the remaining n mod K samples go to distinct raters drawn
    from ``generator`` per image."""
    n, k = int(n), int(k)
    full = (n // k) * k
    base = torch.arange(full, device=device) % k
    out = base.expand(b, full)
    rest = n - full
    if rest:
        order = _uniform((b, k), generator, device).argsort(1)[:, :rest]
        out = torch.cat([out, order], 1)
    return out.contiguous()


def gate_samples(
    logits: torch.Tensor, strata: torch.Tensor, probs: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Empty sample i of image b with probability 1 - probs[b, strata[b, i]] (one uniform draw per
    sample from ``generator``). ``probs`` None: unchanged."""
    if probs is None:
        return logits
    p = torch.gather(probs.float(), 1, strata)
    keep = _uniform(strata.shape, generator, logits.device) < p
    return torch.where(keep[:, :, None, None], logits, torch.full_like(logits, EMPTY_LOGIT))


def gate_personas(logits: torch.Tensor, probs: torch.Tensor | None) -> torch.Tensor:
    """Persona k empty where P(k) < 0.5 (deterministic); ``probs`` None: unchanged."""
    if probs is None:
        return logits
    keep = probs.float() >= PERSONA_THRESHOLD
    return torch.where(keep[:, :, None, None], logits, torch.full_like(logits, EMPTY_LOGIT))


def expected_markers(probs: torch.Tensor) -> torch.Tensor:
    """Expected number of raters marking (B,) = sum_k P(k)."""
    return probs.float().sum(1)
