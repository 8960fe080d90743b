"""D-Persona (Wu et al., CVPR 2024): Prob. U-Net with a bound-constrained ELBO + expert query heads.

Stage I (``stage: 1``): posterior q(z | x, Y_1..K) sees the image, all K masks (missing raters
zeroed) and, by default, K constant validity planes. Loss = GDL reconstruction of ONE valid rater
(one index per batch by default) from a POSTERIOR sample (the released code's prior-sample bug is
not copied) + beta KL + bound_weight * bound loss (pixelwise max/min over P differentiable prior
samples vs union/intersection of the VALID raters) + reg.
``posterior_target`` (not in the paper): ``"mask"`` also gives the posterior the mask of the rater it
reconstructs (first mask channel); ``"mask+index"`` also adds a learned code e_r of that rater's
index to the posterior mean (mu_q = enc(x, y_r, Y) + e_r), so the rater is identifiable from z.
``loss.identity_weight`` adds a rater classifier on the posterior sample z_q; ``loss.kl_warmup_steps`` ramps beta;
``loss.rec_bce_weight`` (default 0) adds a pixel-mean BCE to the reconstruction (an experiment of issue 18, round 3).
``fcomb.kernel_size`` 3 (not in the paper; 1 = paper) makes Fcomb's hidden layers after the z
injection 3x3 convs, so a rater style can be a spatial operation on the mask (e.g. an erosion).
Stage II (``stage: 2``): K projection heads (conv blocks with padding=1, grouped so all K run in
one pass) give a query q_k (B, L); attention softmax(q_k . z_n) over N prior samples (no grad,
no 1/sqrt(L) scaling and final ReLU by default, as the reference) gives z~_k -> Fcomb -> expert k.
Options not in the paper: ``query_relu: false`` (signed query), ``scale`` (1/sqrt(L)),
``key_proj`` (a learned L x L key map per head; the values stay the prior samples).
Only the heads train; backbone / prior / posterior / fcomb are frozen and stay in eval mode.
Bounded, deterministic personas (not in the paper, issue 32): ``heads.code: "bounded"`` gives z_k =
mu + sigma * code_scale * tanh(q_k) (no bank); with attention, ``heads.query_cap`` bounds |q_k|,
``heads.bank_seed`` makes the bank one seeded set shared by every image and call (persona k is the
same output on every call; set ``n_infer`` = ``n_train`` so it is the bank it trained on), and
``loss.shape_only_where_drawn`` trains persona k's shape only where expert k drew. A presence head
(``presence.enabled``) gates the prior samples by rater strata and empties persona k where P(k) < 0.5.
Prior/posterior mu and sigma, the sampled codes and the attention run in fp32 even under autocast.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import losses as L
from .base import Capabilities, choose_raters, deep_merge, unpack_batch, weighted_mean
from .fcomb import Fcomb
from .presence import gate_personas, gate_samples, presence_targets, stratified_raters
from .prob_unet import ProbUNet


class ExpertQueryHeads(nn.Module):
    """K reference ``Conv_block(F, [32, 16, L])`` heads, run as one grouped conv stack -> (B, K, L).

    Per width: [AvgPool2 (not first)], Conv3x3, ReLU, Dropout2d, Conv3x3, ReLU (padding=1).
    ``query_relu=False`` drops the final ReLU (queries may be negative).
    """

    def __init__(
        self,
        features: int,
        num_experts: int,
        widths=(32, 16),
        latent_dim: int = 6,
        dropout: float = 0.1,
        query_relu: bool = True,
    ):
        super().__init__()
        k = int(num_experts)
        self.k, self.latent_dim = k, int(latent_dim)
        chans = [int(w) for w in widths] + [self.latent_dim]
        layers: list[nn.Module] = []
        cin, groups_in = features, 1
        for i, c in enumerate(chans):
            if i > 0:
                layers.append(nn.AvgPool2d(2, 2))
            layers += [
                nn.Conv2d(cin, k * c, 3, padding=1, groups=groups_in),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
                nn.Conv2d(k * c, k * c, 3, padding=1, groups=k),
            ]
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
    # DEFAULTS are the paper's reference behaviour (checkpoints without the newer keys load as before);
    # configs/dpersona.json names the changes of the default, personalizing configuration.
    DEFAULTS = deep_merge(
        ProbUNet.DEFAULTS,
        {
            "stage": 1,
            "rater_sampling": "per_batch",
            "posterior_validity_channels": True,
            "posterior_target": False,
            "loss": {
                "beta": 1.0,
                "bound_weight": 0.5,
                "bound_samples": 10,
                "reg_weight": 1e-5,
                "identity_weight": 0.0,
                "kl_warmup_steps": 0,
                "rec_bce_weight": 0.0,
                "shape_only_where_drawn": False,  # stage II: persona k's shape loss only where expert k drew
            },
            "heads": {
                "widths": [32, 16],
                "dropout": 0.1,
                "query_relu": True,
                "scale": False,
                "key_proj": False,
                "n_train": 100,
                "n_infer": 500,
                # persona code (not in the paper): "attention" over a bank of prior draws (the paper), or
                # "bounded": z_k = mu + sigma * code_scale * tanh(q_k), one deterministic code per image
                "code": "attention",
                "code_scale": 2.0,
                "query_cap": None,  # attention: |q_k| scaled down to at most this norm (None: unbounded)
                "bank_seed": None,  # attention: int -> one seeded bank of N prior draws, shared by every image
            },
        },
    )

    def __init__(self, config: dict):
        super().__init__(config)
        ks = int(self.config["fcomb"].get("kernel_size", 1))
        if ks != 1:  # spatial Fcomb (not in the paper): k x k hidden layers after the z injection
            self.fcomb = Fcomb(
                self.backbone.out_channels,
                self.latent_dim,
                self.config["fcomb"].get("hidden"),
                int(self.config["fcomb"]["num_convs"]),
                kernel_size=ks,
            )
        hc = self.config["heads"]
        self.stage = int(self.config["stage"])
        if self.stage not in (1, 2):
            raise ValueError("D-Persona stage must be 1 or 2")
        if hc["code"] not in ("attention", "bounded"):
            raise ValueError(f"heads.code must be 'attention' or 'bounded', not {hc['code']!r}")
        self._init_presence()
        self.heads = ExpertQueryHeads(
            self.backbone.out_channels,
            self.num_raters,
            hc["widths"],
            self.latent_dim,
            float(hc["dropout"]),
            bool(hc["query_relu"]),
        )
        if hc.get("key_proj"):  # per-head key map W_k (identity at start): score = q_k . (W_k z_n)
            self.heads.register_parameter(
                "key_proj", nn.Parameter(torch.eye(self.latent_dim).repeat(self.num_raters, 1, 1))
            )
        if self.config["posterior_target"] == "mask+index":  # per-rater code added to the posterior mean
            g = torch.Generator().manual_seed(int(self.config.get("seed", 0)))
            self.rater_code = nn.Parameter(torch.randn(self.stage1_raters, self.latent_dim, generator=g))
        if float(self.config["loss"].get("identity_weight", 0.0)) > 0:  # stage-I rater classifier on z_q
            if self.config["posterior_target"] not in ("mask", "mask+index"):
                raise ValueError(
                    "loss.identity_weight needs posterior_target 'mask' or 'mask+index' (the rater must be visible to q)"
                )
            self.rater_head = nn.Linear(self.latent_dim, self.stage1_raters)
        if self.stage == 2:
            for m in self._frozen_modules():
                m.requires_grad_(False)
            if hasattr(self, "rater_code"):
                self.rater_code.requires_grad_(False)
            self.train(self.training)
        else:
            self.heads.requires_grad_(False)  # heads are not part of the stage-I objective

    @property
    def stage1_raters(self) -> int:
        """Raters the stage-I posterior saw (``posterior_raters``: set when a persona was added later)."""
        return int(self.config.get("posterior_raters") or self.config["num_raters"])

    def persona_tensors(self):
        """Stage II: a new expert (projection head / query over the prior bank; its key map if any)."""
        if self.stage != 2:
            return {}
        out = {f"heads.{k}": True for k, _ in self.heads.named_parameters()}
        return {**out, **self._presence_persona_tensors()}

    def config_with_persona(self, name):
        cfg = super().config_with_persona(name)
        cfg["posterior_raters"] = self.stage1_raters  # the frozen stage-I parts keep their shapes
        return cfg

    def _posterior_extra_channels(self) -> int:
        k = int(self.config.get("posterior_raters") or self.config["num_raters"])
        target = {False: 0, None: 0, "none": 0, "mask": 1, "mask+index": 1}
        if self.config["posterior_target"] not in target:
            raise ValueError(
                f"posterior_target must be false, 'mask' or 'mask+index', not {self.config['posterior_target']!r}"
            )
        return (2 * k if self.config["posterior_validity_channels"] else k) + target[self.config["posterior_target"]]

    # ------------------------------------------------------------------ fp32 latent pieces
    @staticmethod
    def _gaussian_fp32(net, inp):
        """``net(inp)`` with the encoder under any active autocast, mu / sigma computed in fp32."""
        h = net.encoder(inp).mean((2, 3))
        with torch.autocast(device_type=inp.device.type, enabled=False):
            mu, raw = net.head(h.float()).chunk(2, dim=1)
            b = net.log_sigma_bound
            return mu, torch.exp(b * torch.tanh(raw / b))

    def _encode(self, x):
        feats, levels = self.backbone(x, return_levels=True)
        return {
            "features": feats,
            "proj": self.fcomb.project(feats),
            "prior": self._gaussian_fp32(self.prior, x),
            "size": tuple(x.shape[-2:]),
            "presence": self._presence_probs(levels),
        }

    def _prior_draws(self, ctx, n, generator):
        with torch.autocast(device_type=ctx["prior"][0].device.type, enabled=False):
            mu, sigma = (t.float() for t in ctx["prior"])
            return super()._prior_draws({"prior": (mu, sigma)}, n, generator)

    def _frozen_modules(self):
        extra = [self.rater_head] if hasattr(self, "rater_head") else []
        return [self.backbone, self.prior, self.posterior, self.fcomb] + extra

    @property
    def capabilities(self) -> Capabilities:
        if self.stage == 1:
            return Capabilities(
                diverse=True,
                personalized=False,
                uncertainty=[],
                latent_dim=self.latent_dim,
                blend=False,
                notes="D-Persona stage I: diverse prior samples. Not personalized: personalize() "
                "returns the prior-mean prediction for every rater (train stage II).",
            )
        return Capabilities(
            diverse=True,
            personalized=True,
            uncertainty=[],
            latent_dim=self.latent_dim,
            blend=True,
            presence=self.has_presence,
            notes="D-Persona stage II: expert k = Fcomb(attention of query q_k over N prior samples); "
            "blend interpolates two experts' queries before the attention.",
        )

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
    def attention(self, q: torch.Tensor, z_set: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights (B, M, N) of queries q (B, M, L) over codes z_set (B, N, L), in fp32.

        ``keys`` (M, L, L): per-query key maps (``key_proj``); None uses the codes as keys."""
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, z = q.float(), z_set.float()
            if keys is None:
                scores = q @ z.transpose(1, 2)
            else:  # q_m . (W_m z_n) = (W_m^T q_m) . z_n
                scores = torch.einsum("bml,mlj,bnj->bmn", q, keys.float(), z)
            if self.config["heads"]["scale"]:
                scores = scores / math.sqrt(self.latent_dim)
            return torch.softmax(scores, dim=-1)

    def _keys(self):
        return getattr(self.heads, "key_proj", None)

    def _attend(self, q: torch.Tensor, z_set: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, M, L), z_set (B, N, L) -> convex combinations (B, M, L) of the codes (fp32)."""
        a = self.attention(q, z_set, keys)
        with torch.autocast(device_type=q.device.type, enabled=False):
            return a @ z_set.float()

    def _cap(self, q: torch.Tensor) -> torch.Tensor:
        """Queries scaled down to norm ``heads.query_cap`` where longer (unchanged when None)."""
        cap = self.config["heads"].get("query_cap")
        if cap is None:
            return q
        norm = q.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return q * (float(cap) / norm).clamp(max=1.0).to(q.dtype)

    def _bank(self, ctx, n: int, generator) -> torch.Tensor:
        """The N prior codes the queries attend over (B, N, L), fp32: with ``heads.bank_seed`` one
        seeded set of standard-normal draws shared by every image and call (mu + sigma * eps), so
        persona k is the same output on every call; otherwise fresh draws from ``generator``."""
        seed = self.config["heads"].get("bank_seed")
        if seed is None:
            return self._prior_draws(ctx, n, generator)
        mu, sigma = (t.float() for t in ctx["prior"])
        g = torch.Generator().manual_seed(int(seed))
        eps = torch.randn(int(n), self.latent_dim, generator=g).to(mu.device)
        return mu[:, None] + sigma[:, None] * eps[None]

    def persona_codes(self, ctx, q, n, generator=None, keys=None) -> torch.Tensor:
        """The persona codes (B, M, L) for queries q (B, M, L): attention over the bank (``code:
        attention``) or mu + sigma * code_scale * tanh(q) (``code: bounded``), fp32."""
        hc = self.config["heads"]
        if hc["code"] == "bounded":
            mu, sigma = (t.float() for t in ctx["prior"])
            with torch.autocast(device_type=q.device.type, enabled=False):
                return mu[:, None] + sigma[:, None] * float(hc["code_scale"]) * torch.tanh(q.float())
        z_set = self._bank(ctx, n, generator)
        return self._attend(self._cap(q), z_set, self._keys() if keys is None else keys)

    def _expert_logits(self, ctx, q, n, generator=None, keys=None):
        return self.fcomb.decode(ctx["proj"], self.persona_codes(ctx, q, n, generator, keys), ctx["size"])

    @torch.no_grad()
    def diagnostics(self, x, n: int | None = None, generator=None) -> dict:
        """Per-expert query norm |q_k|, attention entropy / log N, largest weight, and the spread of
        the K attended codes (mean pairwise distance / prior sigma norm), averaged over the batch."""
        if self.stage == 1:
            return {}
        n = int(n or self.config["heads"]["n_infer"])
        ctx = self._encode(x)
        q = self._cap(self.heads(ctx["features"])).float()
        if self.config["heads"]["code"] == "bounded":  # no attention: the codes' spread and |q| only
            a, zt = None, self.persona_codes(ctx, q, n, generator)
        else:
            z_set = self._bank(ctx, n, generator)
            a = self.attention(q, z_set, self._keys())
            zt = a @ z_set
        dist = torch.cdist(zt, zt)
        k = zt.shape[1]
        pair = dist.sum((1, 2)) / max(k * (k - 1), 1)
        rel = pair / ctx["prior"][1].float().norm(dim=1).clamp_min(1e-12)
        out = {"z_spread": float(rel.mean())}
        for i in range(k):
            out[f"q_norm_{i + 1}"] = float(q[:, i].norm(dim=-1).mean())
            if a is not None:
                ent = -(a[:, i] * torch.log(a[:, i].clamp_min(1e-30))).sum(-1) / math.log(n)
                out[f"attn_entropy_{i + 1}"] = float(ent.mean())
                out[f"attn_max_{i + 1}"] = float(a[:, i].max(-1).values.mean())
        return out

    @torch.no_grad()
    def sample(self, x, n, generator=None):
        """Prior samples; with a presence head each is assigned a rater stratum (n // K per rater) and
        is empty with probability 1 - P(that rater marks)."""
        ctx = self._encode(x)
        out = self.decode(ctx, self._prior_draws(ctx, n, generator))
        if ctx["presence"] is None:
            return out
        r = stratified_raters(x.shape[0], int(n), self.num_raters, generator, x.device)
        return gate_samples(out, r, ctx["presence"], generator)

    @torch.no_grad()
    def personalize(self, x, generator=None):
        if self.stage == 1:
            return super().personalize(x)
        ctx = self._encode(x)
        q = self.heads(ctx["features"])
        out = self._expert_logits(ctx, q, int(self.config["heads"]["n_infer"]), generator)
        return gate_personas(out, ctx["presence"])

    @torch.no_grad()
    def reference_outputs(self, x, generator=None):
        """Stage I: prior samples (the base protocol); stage II: the K expert outputs, as the
        reference's stage-II evaluation feeds them to every metric."""
        return super().reference_outputs(x, generator) if self.stage == 1 else self.personalize(x, generator)

    @torch.no_grad()
    def blend(self, x, i, j, t, generator=None):
        if self.stage == 1:
            return super().blend(x, i, j, t)
        i, j, t = self._check_rater(i), self._check_rater(j), float(t)
        ctx = self._encode(x)
        q = self.heads(ctx["features"])
        qb = ((1 - t) * q[:, i] + t * q[:, j])[:, None]
        keys = self._keys()
        if keys is not None:  # blend the two experts' key maps as their queries
            keys = ((1 - t) * keys[i] + t * keys[j])[None]
        return self._expert_logits(ctx, qb, int(self.config["heads"]["n_infer"]), generator, keys)

    # ------------------------------------------------------------------ training
    def loss(self, batch, step=0):
        return self._loss_stage2(batch) if self.stage == 2 else self._loss_stage1(batch, step)

    def _loss_stage1(self, batch, step=0):
        x, masks, valid = unpack_batch(batch)
        lc = self.config["loss"]
        idx, has = choose_raters(valid, self.config["rater_sampling"])
        b = x.shape[0]
        y = masks[torch.arange(b, device=x.device), idx].unsqueeze(1)
        target = self.config["posterior_target"]
        post_in = [x, y, masks] if target in ("mask", "mask+index") else [x, masks]
        if self.config["posterior_validity_channels"]:
            post_in.append(valid.to(x.dtype)[:, :, None, None].expand_as(masks))
        feats = self.backbone(x)
        mu_p, s_p = self._gaussian_fp32(self.prior, x)
        mu_q, s_q = self._gaussian_fp32(self.posterior, torch.cat(post_in, 1))
        if target == "mask+index":
            mu_q = mu_q + self.rater_code.float()[idx]
        p = int(lc["bound_samples"])
        with torch.autocast(device_type=x.device.type, enabled=False):
            z_q = mu_q + s_q * torch.randn_like(mu_q)
            z_p = mu_p[:, None] + s_p[:, None] * torch.randn(b, p, self.latent_dim, device=x.device)
        logits = self.fcomb.decode(self.fcomb.project(feats), torch.cat([z_q[:, None], z_p], 1), x.shape[-2:])
        w = has.to(x.dtype)[:, None, None, None]
        rec = L.generalized_dice_loss(torch.sigmoid(logits[:, :1]), y, w)
        if float(lc["rec_bce_weight"]) > 0:  # per-pixel term (not in the paper): GDL barely changes
            # when a 1-2 px band around the lesion is wrong, which is where rater styles differ
            rec = rec + float(lc["rec_bce_weight"]) * L.bce_loss(logits[:, :1], y, w)
        bound = L.bound_loss(logits[:, 1:], masks, valid)
        kl = weighted_mean(L.kl_gaussian_diag(mu_q, s_q, mu_p, s_p), has)
        reg = self._reg()
        warm = int(lc.get("kl_warmup_steps", 0) or 0)
        beta = float(lc["beta"]) * (min(1.0, step / warm) if warm > 0 else 1.0)  # KL weight ramp (not in the paper)
        total = rec + beta * kl + float(lc["bound_weight"]) * bound + float(lc["reg_weight"]) * reg
        out = {"rec": rec.detach(), "kl": kl.detach(), "bound": bound.detach(), "reg": reg.detach()}
        if hasattr(self, "rater_head"):  # rater identifiable from z: classify the reconstructed rater from
            # the posterior SAMPLE the decoder sees (on mu_q a learned rater code makes it trivial while
            # the posterior noise still hides the rater from the decoder)
            with torch.autocast(device_type=x.device.type, enabled=False):
                ce = torch.nn.functional.cross_entropy(self.rater_head(z_q), idx, reduction="none")
            ident = weighted_mean(ce, has)
            total = total + float(lc["identity_weight"]) * ident
            out["identity"] = ident.detach()
        return {"loss": total, **out}

    def _loss_stage2(self, batch):
        x, masks, valid = unpack_batch(batch)
        with torch.no_grad():
            ctx = self._encode(x)
        q = self.heads(ctx["features"])
        hc = self.config["heads"]
        n = int(hc["n_train"])
        a = None
        if hc["code"] == "bounded":
            zt = self.persona_codes(ctx, q, n, None)
        else:
            z_set = self._bank(ctx, n, None)
            a = self.attention(self._cap(q), z_set, self._keys())
            with torch.autocast(device_type=x.device.type, enabled=False):
                zt = a @ z_set
        logits = self.fcomb.decode(ctx["proj"], zt, ctx["size"])
        drew = presence_targets(masks, valid) if self.config["loss"].get("shape_only_where_drawn") else valid
        w = drew.to(x.dtype)[:, :, None, None]
        seg = L.generalized_dice_loss(torch.sigmoid(logits.float()), masks, w)
        out = {"loss": seg, "seg": seg.detach()}
        with torch.no_grad():  # collapse diagnostics for log.csv
            zd = zt.detach()
            k = zd.shape[1]
            pair = torch.cdist(zd, zd).sum((1, 2)) / max(k * (k - 1), 1)
            out["z_spread"] = (pair / ctx["prior"][1].norm(dim=1).clamp_min(1e-12)).mean()
            qd = self._cap(q).detach().float()
            ent = None if a is None else -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean(0) / math.log(n)
            for i in range(k):
                out[f"q_norm_{i + 1}"] = qd[:, i].norm(dim=-1).mean()
                if ent is not None:
                    out[f"attn_entropy_{i + 1}"] = ent[i]
        return out


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
    sd = {
        k: v.float() if torch.is_floating_point(v) else v for k, v in state_dict.items() if not k.startswith("heads.")
    }
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"stage-I weights do not match the D-Persona config: {exc}") from exc
    missing = [k for k in missing if not k.startswith("heads.")]
    if missing or unexpected:
        raise ValueError(
            f"stage-I weights do not match the D-Persona config: missing={missing[:5]} "
            f"unexpected={list(unexpected)[:5]}"
        )
    model.train(model.training)
    return model
