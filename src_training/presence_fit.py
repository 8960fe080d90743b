"""``multirater fit-presence``: add a per-rater presence head to a trained model and fit only it.

Everything else stays frozen, so the bottleneck is computed once per slice: its pooled features
(models/presence.py) on the train split and on the val selection slices, then the head's small MLP
is fitted full-batch (Adam, BCE against "rater k / area-ranked expert k drew something") and the
step with the lowest selection BCE is kept. The result is a training-format checkpoint with
``presence.enabled`` and the train frequencies (the constant-prior baseline) in its config.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import torch

from .batching import padded_batch
from .data import SliceDataset, load_split
from .models.presence import PresenceHead, presence_targets, weighted_bce
from .models.registry import build_model
from .precision import Precision, autocast, prepare_input
from .protocol_split import ItemSubset, subset_indices


@torch.no_grad()
def pooled_features(model, items, precision: Precision, batch_size: int = 64, progress=None):
    """``(features (N, 2C), targets (N, K), valid (N, K))`` float32 tensors for every item."""
    model.eval()
    feats, targets, valids = [], [], []
    n = len(items)
    for start in range(0, n, batch_size):
        raws = [items.raw(i) for i in range(start, min(start + batch_size, n))]
        x, _ = padded_batch(raws)
        x = prepare_input(x, precision)
        with autocast(precision, x.device):
            levels = model.backbone(x, return_levels=True)[1]
        feats.append(PresenceHead.pool(model._presence_inputs(levels)))
        masks = torch.from_numpy(np.stack([m.reshape(m.shape[0], -1) for _, m, _ in raws])).float()
        valid = torch.from_numpy(np.stack([v for _, _, v in raws]))
        targets.append(presence_targets(masks, valid))
        valids.append(valid.float())
        if progress:
            progress(min(start + batch_size, n), n)
    return torch.cat(feats), torch.cat(targets), torch.cat(valids)


def _bce(head: PresenceHead, f, t, w) -> torch.Tensor:
    return weighted_bce(head.mlp(f), t, w)


def fit_head(head: PresenceHead, train, select, *, steps: int = 1500, lr: float = 3e-3, seed: int = 0) -> dict:
    """Fit ``head.mlp`` full-batch on ``train`` = (features, targets, valid); keep the step with the
    lowest BCE on ``select``. Features are standardised with train statistics folded into the first
    layer, so the head still reads raw pooled features."""
    torch.manual_seed(seed)
    f, t, w = train
    mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
    fs, ss = (f - mean) / std, ((select[0] - mean) / std, select[1], select[2])
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    best = (float("inf"), -1, copy.deepcopy(head.state_dict()))
    curve = []
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = _bce(head, fs, t, w)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps:
            with torch.no_grad():
                sel = float(_bce(head, *ss))
            curve.append((step, float(loss.detach()), sel))
            if sel < best[0]:
                best = (sel, step, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    first = head.mlp[0]
    with torch.no_grad():  # fold the standardisation into the first layer: W (x - m) / s + b
        first.weight.div_(std)
        first.bias.sub_(first.weight @ mean)
    return {"best_step": best[1], "select_bce": best[0], "curve": curve}


def with_presence_head(model, hidden: int = 32, inputs: str = "bottleneck"):
    """A copy of ``model`` whose config enables the presence head (fresh) with every other weight loaded."""
    cfg = copy.deepcopy(model.config)
    cfg["presence"] = {**cfg.get("presence", {}), "enabled": True, "hidden": int(hidden), "inputs": inputs}
    out = build_model(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("presence_head.")}
    missing, unexpected = out.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("presence_head.") for k in missing):
        raise ValueError(f"weights do not match: missing={missing[:5]} unexpected={unexpected[:5]}")
    return out.eval()


def constant_prior(train_targets: torch.Tensor, train_valid: torch.Tensor) -> list[float]:
    """P(rater k marks) on train (over images where rater k is valid): the constant-prior baseline."""
    freq = (train_targets * train_valid).sum(0) / train_valid.sum(0).clamp(min=1.0)
    return [float(v) for v in freq]


def _features(args, model, train_items, select, precision, progress):
    """Pooled features of the train and selection slices, from ``--features-cache`` (default: next to
    ``--out``, ``.features.pt``) when it holds features of the same backbone weights, inputs and
    numbers of slices; written there otherwise, so a refit of the head skips the backbone."""
    from pathlib import Path

    from napari_multirater.io.atomic import atomic_write_bytes

    key = {"backbone": backbone_digest(model), "train": len(train_items), "select": len(select), "inputs": args.inputs}
    cache = Path(getattr(args, "features_cache", None) or Path(args.out).with_suffix(".features.pt"))
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        if isinstance(data, dict) and data.get("key") == key:
            print(f"features from {cache}", file=sys.stderr)
            return tuple(data["train"]), tuple(data["select"])
    train = pooled_features(model, train_items, precision, progress=progress)
    sel = pooled_features(model, select, precision, progress=progress)
    import io

    buf = io.BytesIO()
    torch.save({"key": key, "train": list(train), "select": list(sel)}, buf)
    atomic_write_bytes(cache, buf.getvalue())
    return train, sel


def backbone_digest(model) -> str:
    """SHA-256 of the backbone's weights: pooled features depend on nothing else, so a cache is
    reused across checkpoints that share a frozen backbone (D-Persona stage II and its stage I)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def brier(probs: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean squared error of per-rater probabilities over the valid (image, rater) pairs."""
    return float((((probs - targets) ** 2) * valid).sum() / valid.sum().clamp(min=1.0))


def run_fit_presence(args) -> int:
    from .checkpoint import load_checkpoint, save_checkpoint
    from .evaluate import resolve_checkpoint
    from .precision import prepare_model, resolve_precision

    precision = resolve_precision(args.precision, "cpu")
    base, card = load_checkpoint(resolve_checkpoint(args.checkpoint))
    if not hasattr(base, "backbone") or not hasattr(base.backbone, "level_channels"):
        raise ValueError(f"method {base.method!r} has no feature backbone to put a presence head on")
    model = with_presence_head(base, args.hidden, args.inputs)
    prepare_model(model, precision)
    rank = bool(card.get("raters_ranked_by_area", False))
    window = (card.get("intensity") or {}).get("window")

    def items(split):
        ds = load_split(args.data, split)
        return SliceDataset(ds, window or getattr(ds, "intensity_window", None), rank_raters=rank, augment=None)

    def progress(done, total):
        if done == total or done % 1024 == 0:
            print(f"features {done}/{total}", file=sys.stderr, flush=True)

    train_items = items("train")
    if args.max_train_images:
        train_items = ItemSubset(train_items, range(min(len(train_items), args.max_train_images)))
    val = items("val")
    select = ItemSubset(val, subset_indices(len(val), "select"))
    train, sel = _features(args, model, train_items, select, precision, progress)
    head = model.presence_head.float()
    report = fit_head(head, train, sel, steps=args.steps, lr=args.lr, seed=args.seed)
    freq = constant_prior(train[1], train[2])
    model.config["presence"]["train_frequency"] = freq
    with torch.no_grad():
        sel_brier = brier(torch.sigmoid(head.mlp(sel[0])), sel[1], sel[2])
    prior_brier = brier(torch.tensor(freq).expand_as(sel[1]), sel[1], sel[2])
    card = dict(card)
    card["presence"] = {
        "fitted": f"presence head only on {args.inputs} features (precomputed; every other weight frozen)",
        "train_images": len(train_items),
        "select_images": len(select),
        "best_step": report["best_step"],
        "select_bce": report["select_bce"],
        "select_brier": sel_brier,
        "select_brier_constant_prior": prior_brier,
        "train_frequency": freq,
        "command": " ".join(["multirater fit-presence"] + sys.argv[2:]),
    }
    save_checkpoint(args.out, model.float(), card)
    print(
        f"presence head: best step {report['best_step']}, selection BCE {report['select_bce']:.4f}, "
        f"Brier {sel_brier:.4f} (constant prior {prior_brier:.4f}); "
        f"train frequencies {', '.join(f'{v:.3f}' for v in freq)}; wrote {args.out}"
    )
    return 0
