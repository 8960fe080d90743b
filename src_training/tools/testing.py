"""Tiny random-weight checkpoints for tests and demos without trained models (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

PHANTOM_RATERS = ["tight", "generous", "smooth", "misses_faint"]


def tiny_card(method: str, rater_names=None, window=(-1000.0, 400.0), **extra) -> dict:
    """A minimal model card (phantom HU window by default)."""
    return {
        "method": method,
        "rater_names": list(rater_names or PHANTOM_RATERS),
        "raters_ranked_by_area": False,
        "training_data": {"path": "synthetic phantom (untrained, random weights)"},
        "intensity": {
            "window": [float(window[0]), float(window[1])],
            "mapping": "x_norm = clip((x - window[0]) / (window[1] - window[0]), 0, 1)",
        },
        "input": {"channels": 1, "pad_multiple": 16},
        "val_metrics": {},
        **extra,
    }


def make_tiny_checkpoint(
    path,
    method: str = "prob_unet",
    rater_names=None,
    seed: int = 0,
    widths=(8, 16),
    features: int = 8,
    card: dict | None = None,
) -> Path:
    """Build a small random model of ``method`` (D-Persona: stage 2) and save it with a card."""
    import torch

    from src_training.checkpoint import save_checkpoint
    from src_training.models import build_model

    names = list(rater_names or PHANTOM_RATERS)
    cfg = {
        "method": method,
        "num_raters": len(names),
        "rater_names": names,
        "backbone": {"widths": list(widths), "features": int(features)},
    }
    if method == "dpersona":
        cfg["stage"] = 2
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    return save_checkpoint(path, model, card or tiny_card(method, names))
