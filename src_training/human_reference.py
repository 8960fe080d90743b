"""Human reference: every rater scored against the other raters (leave-one-rater-out).

Gives the inter-rater agreement row of the results table, with the same metric functions as the
models. Per image and per valid rater k (with at least one other valid rater): rater k's mask is a
one-sample "prediction" scored against the other valid raters as labels (GED, Dice_soft, Dice_max,
Dice_max_reverse, Dice_match); the image's value is the mean over k. The per-expert column k is the
mean Dice of the other raters' masks with rater k (how well another human reproduces rater k, the
counterpart of persona k vs rater k). Images are bucketed by how many raters marked them, as for
the models.
"""

from __future__ import annotations

import numpy as np

from . import metrics as M
from .data import SliceDataset

CONVENTIONS = {
    "human_reference": "leave-one-rater-out: per image, each valid rater's mask is ONE sample scored against the "
    "other valid raters as labels; metrics averaged over the held-out raters, then over images. "
    "With one sample the GED's sample-diversity term E d(S,S') is 0",
    "dice_each_identity": "human reference: column k = mean Dice (threshold 0.5, both empty = 1) of every other "
    "valid rater's mask with rater k",
    "dice_each_matched": "not defined for the human reference (n/a)",
}


def human_reference_image(masks: np.ndarray, valid: np.ndarray) -> dict | None:
    """Leave-one-rater-out metrics of one image; None when fewer than two raters are valid."""
    masks = np.asarray(masks, np.float32)
    valid = np.asarray(valid, bool)
    k = masks.shape[0]
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return None
    per_k = []
    for r in idx:
        others = valid.copy()
        others[r] = False
        per_k.append(M.evaluate_image(masks, masks[r][None], others, personal=None))
    out = {key: float(np.mean([p[key] for p in per_k])) for key in M.SCALAR_KEYS}
    d = M.dice_matrix(masks[idx], masks[idx])  # (K_valid, K_valid) pairwise Dice
    ident = [float("nan")] * k
    for a, r in enumerate(idx):
        ident[int(r)] = float(np.delete(d[a], a).mean())
    out.update(
        {
            "dice_each_identity": ident,
            "dice_each_matched": [float("nan")] * k,
            "n_marked": M.n_marked(masks, valid),
            "n_valid": int(valid.sum()),
            "n_samples": 1,
        }
    )
    return out


def human_reference(items: SliceDataset, max_images: int | None = None, progress=None) -> dict:
    """Aggregate leave-one-rater-out metrics over a SliceDataset (buckets 1..K as for the models)."""
    n = len(items) if max_images is None else min(len(items), max_images)
    results, skipped = [], 0
    for i in range(n):
        _img, masks, valid = items.raw(i)
        r = human_reference_image(masks, valid)
        if r is None:
            skipped += 1
        else:
            results.append(r)
        if progress and ((i + 1) % 200 == 0 or i + 1 == n):
            progress(i + 1, n)
    agg = M.aggregate(results, buckets=range(1, len(items.rater_names) + 1))
    agg["conventions"].update(CONVENTIONS)
    agg["skipped_fewer_than_two_raters"] = skipped
    return agg
