"""The one interface every multi-rater model implements (the plugin and CLI never branch on method).

Shapes: images (B, C, H, W); logits (B, N, H, W); masks (B, K, H, W) float {0,1};
mask_valid (B, K) bool. Inference methods (``encode``, ``decode``, ``sample``, ``personalize``,
``uncertainty``, ``blend``) run under ``torch.no_grad``; callers set ``model.eval()``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .presence import PRESENCE_INPUTS, PresenceHead

BASE_DEFAULTS: dict[str, Any] = {
    "method": None,
    "in_channels": 1,
    "num_raters": 4,
    "rater_names": None,
    "backbone": {"widths": [16, 32, 64, 128], "features": 16, "norm": "batch", "convs_per_block": 2},
    "rater_sampling": "per_sample",
    # per-rater presence head (models/presence.py); train_frequency: P(rater k marks) on train (the
    # constant-prior baseline of the presence calibration), set when the head is fitted
    # inputs: "bottleneck" (the deepest encoder block) or "all_levels" (every encoder block + the features)
    "presence": {"enabled": False, "hidden": 32, "inputs": "bottleneck", "train_frequency": None},
}

RATER_SAMPLING_MODES = ("per_sample", "per_batch")


@dataclass(frozen=True)
class Capabilities:
    """What a model can do; the UI enables/disables features from this alone."""

    diverse: bool
    personalized: bool
    uncertainty: list = field(default_factory=list)
    latent_dim: int = 0
    blend: bool = False
    presence: bool = False  # ``presence(x)``: P(rater k marks a lesion here); samples / personas gated by it
    notes: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def deep_merge(base: dict, override: dict | None) -> dict:
    """Recursive dict merge (override wins); returns a new dict, inputs untouched."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ----------------------------------------------------------------------------- random helpers
def randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from ``generator`` (on its own device), moved to ``like``'s device/dtype."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def randint(high: int, shape, generator: torch.Generator | None, device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return torch.randint(high, shape, generator=generator, device=dev).to(device)


def sample_dirichlet(alpha: torch.Tensor, shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dirichlet draws (``shape + alpha.shape``); reproducible under ``generator`` via a forked RNG."""
    dist = torch.distributions.Dirichlet(alpha)
    if generator is None:
        return dist.sample(torch.Size(shape))
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device).item())
    devices = [alpha.device] if alpha.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return dist.sample(torch.Size(shape))


def choose_raters(valid: torch.Tensor, mode: str = "per_sample"):
    """Pick one VALID rater per image for training (global torch RNG).

    per_sample: uniform over each image's valid raters. per_batch: one rater index for the whole
    batch (D-Persona), drawn among raters valid somewhere; images where it is missing fall back to
    their own random valid rater. Returns ``(idx (B,) long, has (B,) bool)``; images without any
    valid rater get idx 0 and has False (callers weight them out).
    """
    if mode not in RATER_SAMPLING_MODES:
        raise ValueError(f"rater_sampling must be one of {RATER_SAMPLING_MODES}, got {mode!r}")
    valid = valid.bool()
    has = valid.any(1)
    w = valid.float() + (~has).float()[:, None]
    idx = torch.multinomial(w, 1).squeeze(1)
    if mode == "per_batch" and bool(has.any()):
        r = torch.multinomial(valid.any(0).float(), 1).squeeze(0)
        ok = valid[:, r]
        idx = torch.where(ok, r.expand_as(idx), idx)
    return idx, has


def unpack_batch(batch: dict):
    """Return ``(image, masks, valid)`` with masks float and valid bool (all True if absent)."""
    x = batch["image"].float()
    masks = batch["masks"].to(x.dtype)
    valid = batch.get("mask_valid")
    if valid is None:
        valid = torch.ones(masks.shape[:2], dtype=torch.bool, device=masks.device)
    valid = valid.to(masks.device).bool()
    masks = masks * valid[:, :, None, None].to(masks.dtype)  # missing raters never carry content
    return x, masks, valid


def weighted_mean(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)


class MultiRaterModel(nn.Module):
    """Base class. Subclasses set ``method``, ``DEFAULTS`` and implement the abstract methods."""

    method: str = ""
    DEFAULTS: dict = {}

    def __init__(self, config: dict):
        super().__init__()
        cfg = deep_merge(deep_merge(BASE_DEFAULTS, self.DEFAULTS), config)
        cfg["method"] = cfg.get("method") or self.method
        if cfg["method"] != self.method:
            raise ValueError(f"config method {cfg['method']!r} does not match model {self.method!r}")
        k = int(cfg["num_raters"])
        if k < 1:
            raise ValueError("num_raters must be >= 1")
        if not cfg.get("rater_names"):
            cfg["rater_names"] = [f"rater_{i + 1}" for i in range(k)]
        if len(cfg["rater_names"]) != k:
            raise ValueError(f"rater_names has {len(cfg['rater_names'])} entries, num_raters is {k}")
        if cfg["rater_sampling"] not in RATER_SAMPLING_MODES:
            raise ValueError(f"rater_sampling must be one of {RATER_SAMPLING_MODES}")
        self.config = json.loads(json.dumps(cfg))  # JSON-able, detached copy

    # ------------------------------------------------------------------ properties
    @property
    def num_raters(self) -> int:
        return int(self.config["num_raters"])

    @property
    def rater_names(self) -> list[str]:
        return list(self.config["rater_names"])

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    # ------------------------------------------------------------------ inference API
    def encode(self, x: torch.Tensor) -> dict:
        """Per-image computation done once (backbone features, prior...)."""
        raise NotImplementedError

    def latent_prior(self, ctx: dict):
        """``(mu (B, L), sigma (B, L))`` of the explorable latent, or None without a latent."""
        return None

    def decode(self, ctx: dict, z: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, H, W) for latents z (B, N, L)."""
        raise NotImplementedError

    def sample(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n diverse samples as logits (B, n, H, W) (deterministic methods repeat one prediction)."""
        raise NotImplementedError

    def personalize(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One logit map per rater (B, K, H, W)."""
        raise NotImplementedError

    PAPER_SAMPLES = 50

    def reference_outputs(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The one output set the method's reference code feeds EVERY metric (the papers' protocol,
        ``evaluate --paper-protocol``): here ``PAPER_SAMPLES`` diverse samples (Prob. U-Net, D-Persona
        stage I; deterministic methods repeat their one prediction). Logits (B, S, H, W)."""
        return self.sample(x, self.PAPER_SAMPLES, generator)

    # ------------------------------------------------------------------ per-rater presence
    def _init_presence(self) -> None:
        """Build the presence head when the config enables it (models that condition on raters)."""
        pc = self.config["presence"]
        if pc.get("inputs", "bottleneck") not in PRESENCE_INPUTS:
            raise ValueError(f"presence.inputs must be one of {PRESENCE_INPUTS}, not {pc.get('inputs')!r}")
        if pc.get("enabled"):
            channels = self._presence_inputs(self.backbone.level_channels)
            self.presence_head = PresenceHead(channels, self.num_raters, int(pc.get("hidden", 32)))

    def _presence_inputs(self, levels: list) -> list:
        """The backbone levels the presence head reads: the bottleneck, or all of them."""
        return [levels[-2]] if self.config["presence"].get("inputs", "bottleneck") == "bottleneck" else list(levels)

    @property
    def has_presence(self) -> bool:
        return hasattr(self, "presence_head")

    def _presence_probs(self, levels: list) -> torch.Tensor | None:
        """(B, K) fp32 probabilities from the backbone levels, or None without a presence head."""
        if not self.has_presence:
            return None
        return torch.sigmoid(self.presence_head(self._presence_inputs(levels)))

    def _presence_persona_tensors(self) -> dict[str, bool]:
        """A new persona's presence row: copied from the persona it starts from, not fitted."""
        if not self.has_presence:
            return {}
        last = len(self.presence_head.mlp) - 1
        return {f"presence_head.mlp.{last}.weight": False, f"presence_head.mlp.{last}.bias": False}

    @torch.no_grad()
    def presence(self, x: torch.Tensor) -> torch.Tensor:
        """P(rater k marks a lesion on this image) (B, K) in [0, 1] (``capabilities.presence``)."""
        if not self.has_presence:
            raise NotImplementedError(f"method {self.method!r} has no presence head (capabilities.presence is False)")
        return self._presence_probs(self.backbone(x, return_levels=True)[1])

    def uncertainty(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Method-specific maps (B, H, W) in [0, 1] and scores (B,); empty when none."""
        return {}

    def blend(
        self, x: torch.Tensor, i: int, j: int, t: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Persona blend of raters i and j at t in [0, 1] -> logits (B, 1, H, W)."""
        raise NotImplementedError(
            f"method {self.method!r} does not support persona blending (capabilities.blend is False)"
        )

    # ------------------------------------------------------------------ learning a new persona
    def persona_tensors(self) -> dict[str, bool]:
        """``{state_dict key: fitted}`` of every tensor holding one block per rater along dim 0.

        Learning a new rater's style (:mod:`napari_multirater.inference.persona_fit`) appends one block to each:
        ``fitted`` ones are trained for the new persona, the others are copied from the persona it
        starts from and stay frozen; every other weight stays frozen too. Empty (the default): the
        method has no personas to add to.
        """
        return {}

    def finish_new_persona(self, steps: int = 200) -> None:
        """After the last persona was fitted: fit whatever of its own blocks needs all personas at
        once (ProSeg: its rater-classifier row). Only the last persona's blocks may change."""

    def config_with_persona(self, name: str) -> dict:
        """This model's config with one more rater called ``name`` (see :meth:`persona_tensors`)."""
        cfg = copy.deepcopy(self.config)
        cfg["num_raters"] = self.num_raters + 1
        cfg["rater_names"] = self.rater_names + [str(name)]
        return cfg

    def _check_rater(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.num_raters:
            raise IndexError(f"rater index {i} out of range 0..{self.num_raters - 1}")
        return i

    # ------------------------------------------------------------------ training API
    def loss(self, batch: dict, step: int = 0) -> dict[str, torch.Tensor]:
        """``{"loss": total, <component>: detached value, ...}``."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    DEFAULT_LATENT_LR: float | None = None

    def latent_parameters(self) -> list[nn.Parameter]:
        """Per-rater latent parameters that train at their own learning rate (none by default)."""
        return []

    def param_groups(self, base_lr: float, latent_lr: float | None = None) -> list[dict]:
        """Optimizer parameter groups: everything at ``base_lr``; latent parameters (if any) at
        ``latent_lr`` (default: the method's DEFAULT_LATENT_LR, else base_lr)."""
        latent = [p for p in self.latent_parameters() if p.requires_grad]
        if not latent:
            return [{"params": self.trainable_parameters(), "lr": base_lr}]
        ids = {id(p) for p in latent}
        rest = [p for p in self.trainable_parameters() if id(p) not in ids]
        lr = latent_lr if latent_lr is not None else (self.DEFAULT_LATENT_LR or base_lr)
        return [{"params": rest, "lr": base_lr}, {"params": latent, "lr": float(lr)}]
