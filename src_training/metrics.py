"""Multi-rater segmentation metrics (numpy), per image/volume then averaged.

Per image: ``labels`` (K, ...) binary (> 0.5 is foreground), ``valid`` (K,) bool (only valid raters
ever enter a metric), ``preds`` (S, ...) probabilities. 2D and 3D alike: each image / volume is
flattened as a whole. Values undefined for an image are NaN and skipped (not zeroed) when averaging.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

THRESH = 0.5
SOFT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
_SMOOTH = 1e-8
_CHUNK = 1 << 18  # voxels per matmul chunk: float32 0/1 counts stay exact

CONVENTIONS = {
    "binarize": "predictions: prob > 0.5 (strict); labels: value > 0.5; only valid raters enter any metric",
    "ged": "GED = 2 E d(Y,S) - E d(Y,Y') - E d(S,S'), d = 1 - IoU (threshold 0.5); d(empty, empty) = 0 "
    "(Kohl / PHiSeg / MedicalMatting); V-statistic: all pairs incl. self-pairs (diagonal)",
    "ged_dpersona": "as coded in D-Persona/ProSeg: IoU = |a&b| / (|a|b| + 1e-8), so d(empty, empty) = 1; "
    "V-statistic incl. self-pairs",
    "dice_soft": "mean prob over S samples vs mean over valid raters, each binarized at t in "
    "{0.1,0.3,0.5,0.7,0.9} (strict >), Dice = (2|a&b| + 1e-8)/(|a|+|b| + 1e-8) (empty-empty = 1), "
    "averaged over thresholds",
    "dice_max": "Dice matrix D[k,s] (valid rater k vs sample s at 0.5, same smoothing); mean over samples of "
    "max over raters (precision-like)",
    "dice_max_reverse": "mean over valid raters of max over samples (coverage-like)",
    "dice_match": "Hungarian matching (scipy linear_sum_assignment on 1 - D, rectangular allowed); mean Dice "
    "over matched pairs (min(K_valid, S) pairs)",
    "dice_each_identity": "personalized output k vs rater k (no matching); NaN for invalid raters",
    "dice_each_matched": "Hungarian-matched Dice of rater k (the papers' Dice_each convention, "
    "permutation-invariant); NaN for invalid / unmatched raters",
    "per_bucket": "images grouped by how many raters marked them (valid and non-empty)",
    "aggregation": "per-image values averaged with NaN skipped (nanmean); lists averaged per rater",
}


# ----------------------------------------------------------------------------- helpers
def _prep(labels, preds, valid=None):
    labels = np.asarray(labels)
    k = labels.shape[0]
    lab = labels.reshape(k, -1) > 0.5
    if valid is None:
        valid = np.ones(k, bool)
    valid = np.asarray(valid, bool).reshape(k)
    pr = None if preds is None else np.asarray(preds, np.float32).reshape(np.shape(preds)[0], -1)
    if pr is not None and pr.shape[1] != lab.shape[1]:
        raise ValueError(f"labels ({lab.shape[1]} voxels) and preds ({pr.shape[1]} voxels) differ in size")
    return lab, valid, pr


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a_i & b_j| for boolean (n, P) and (m, P) -> (n, m) float64 (exact counts)."""
    out = np.zeros((a.shape[0], b.shape[0]), np.float64)
    for s in range(0, a.shape[1], _CHUNK):
        out += (a[:, s : s + _CHUNK].astype(np.float32) @ b[:, s : s + _CHUNK].astype(np.float32).T).astype(np.float64)
    return out


def _iou_distance(a: np.ndarray, b: np.ndarray, convention: str) -> np.ndarray:
    inter = _intersections(a, b)
    union = a.sum(1)[:, None].astype(np.float64) + b.sum(1)[None, :] - inter
    if convention == "kohl":
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)
    else:  # dpersona: + 1e-8 in the denominator, empty-empty IoU = 0
        iou = inter / (union + _SMOOTH)
    return 1.0 - iou


def _dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = _intersections(a, b)
    return (2 * inter + _SMOOTH) / (a.sum(1)[:, None].astype(np.float64) + b.sum(1)[None, :] + _SMOOTH)


def _nanmean(x, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(x, np.float64), axis=axis)


# ----------------------------------------------------------------------------- GED
def ged_components(labels, preds, valid=None, thresh: float = THRESH, convention: str = "kohl") -> dict:
    """``{"cross", "d_labels", "d_preds", "ged"}`` for convention "kohl" or "dpersona" (NaN without valid raters)."""
    lab, valid, pr = _prep(labels, preds, valid)
    y = lab[valid]
    if len(y) == 0 or len(pr) == 0:
        return {"cross": np.nan, "d_labels": np.nan, "d_preds": np.nan, "ged": np.nan}
    s = pr > thresh
    cross = _iou_distance(y, s, convention).mean()
    d_y = _iou_distance(y, y, convention).mean()
    d_s = _iou_distance(s, s, convention).mean()
    return {"cross": float(cross), "d_labels": float(d_y), "d_preds": float(d_s), "ged": float(2 * cross - d_y - d_s)}


def ged(labels, preds, valid=None, thresh: float = THRESH) -> float:
    """GED with d(empty, empty) = 0 (Kohl / PHiSeg), all pairs incl. the diagonal."""
    return ged_components(labels, preds, valid, thresh, "kohl")["ged"]


def ged_dpersona(labels, preds, valid=None, thresh: float = THRESH) -> float:
    """GED as D-Persona / ProSeg code it: d(empty, empty) = 1, all pairs incl. the diagonal."""
    return ged_components(labels, preds, valid, thresh, "dpersona")["ged"]


# ----------------------------------------------------------------------------- Dice family
def dice_soft(labels, preds, valid=None, thresholds: Sequence[float] = SOFT_THRESHOLDS) -> float:
    """Mean-prediction vs mean-label Dice averaged over thresholds (strict >)."""
    lab, valid, pr = _prep(labels, preds, valid)
    if not valid.any() or len(pr) == 0:
        return float("nan")
    p_mean = pr.mean(0)[None]
    y_mean = lab[valid].mean(0)[None]
    return float(np.mean([_dice(y_mean > t, p_mean > t)[0, 0] for t in thresholds]))


def dice_matrix(labels, preds, valid=None, thresh: float = THRESH) -> np.ndarray:
    """D[k, s] = Dice(valid rater k, sample s > thresh) with 1e-8 smoothing -> (K_valid, S)."""
    lab, valid, pr = _prep(labels, preds, valid)
    return _dice(lab[valid], pr > thresh)


def dice_max(labels, preds, valid=None, thresh: float = THRESH) -> float:
    d = dice_matrix(labels, preds, valid, thresh)
    return float(d.max(0).mean()) if d.size else float("nan")


def dice_max_reverse(labels, preds, valid=None, thresh: float = THRESH) -> float:
    d = dice_matrix(labels, preds, valid, thresh)
    return float(d.max(1).mean()) if d.size else float("nan")


def _matching(d: np.ndarray):
    rows, cols = linear_sum_assignment(1.0 - d)
    return rows, cols


def dice_match(labels, preds, valid=None, thresh: float = THRESH) -> float:
    d = dice_matrix(labels, preds, valid, thresh)
    if not d.size:
        return float("nan")
    rows, cols = _matching(d)
    return float(d[rows, cols].mean())


def dice_each_identity(labels, personal, valid=None, thresh: float = THRESH) -> list[float]:
    """Output k vs rater k for every rater (NaN where invalid); needs K outputs."""
    lab, valid, pr = _prep(labels, personal, valid)
    k = lab.shape[0]
    if pr.shape[0] != k:
        return [float("nan")] * k
    d = np.diag(_dice(lab, pr > thresh))
    return [float(d[i]) if valid[i] else float("nan") for i in range(k)]


def dice_each_matched(labels, personal, valid=None, thresh: float = THRESH) -> list[float]:
    """Hungarian-matched Dice of every rater (NaN where invalid or unmatched)."""
    lab, valid, pr = _prep(labels, personal, valid)
    k = lab.shape[0]
    out = [float("nan")] * k
    vidx = np.flatnonzero(valid)
    if len(vidx) == 0 or len(pr) == 0:
        return out
    d = _dice(lab[vidx], pr > thresh)
    rows, cols = _matching(d)
    for r, c in zip(rows, cols):
        out[int(vidx[r])] = float(d[r, c])
    return out


def n_marked(labels, valid=None) -> int:
    """Number of raters that marked the image: valid and non-empty."""
    lab, valid, _ = _prep(labels, None, valid)
    return int((lab.any(1) & valid).sum())


# ----------------------------------------------------------------------------- per image / aggregate
SCALAR_KEYS = ("ged", "ged_dpersona", "dice_soft", "dice_max", "dice_max_reverse", "dice_match")
LIST_KEYS = ("dice_each_identity", "dice_each_matched")


def evaluate_image(labels, preds, valid=None, personal=None, thresh: float = THRESH) -> dict:
    """All metrics for one image / volume.

    ``preds`` (S, ...) diverse samples (probabilities) feed GED / Dice_soft / Dice_max / Dice_match;
    ``personal`` (K, ...) one output per rater feeds Dice_each (defaults to ``preds``; identity Dice
    then needs S == K, else NaN).
    """
    lab = np.asarray(labels)
    k = lab.shape[0]
    valid = np.ones(k, bool) if valid is None else np.asarray(valid, bool).reshape(k)
    personal = preds if personal is None else personal
    g = ged_components(lab, preds, valid, thresh, "kohl")["ged"]
    gd = ged_components(lab, preds, valid, thresh, "dpersona")["ged"]
    d = dice_matrix(lab, preds, valid, thresh)
    if d.size:
        rows, cols = _matching(d)
        dmax, dmax_r, dmatch = float(d.max(0).mean()), float(d.max(1).mean()), float(d[rows, cols].mean())
    else:
        dmax = dmax_r = dmatch = float("nan")
    return {
        "ged": g,
        "ged_dpersona": gd,
        "dice_soft": dice_soft(lab, preds, valid),
        "dice_max": dmax,
        "dice_max_reverse": dmax_r,
        "dice_match": dmatch,
        "dice_each_identity": dice_each_identity(lab, personal, valid, thresh),
        "dice_each_matched": dice_each_matched(lab, personal, valid, thresh),
        "n_marked": n_marked(lab, valid),
        "n_valid": int(valid.sum()),
        "n_samples": int(np.shape(preds)[0]),
    }


def _mean_of(results: list[dict]) -> dict:
    out: dict = {}
    for key in SCALAR_KEYS:
        out[key] = float(_nanmean([r.get(key, np.nan) for r in results])) if results else float("nan")
    for key in LIST_KEYS:
        lists = [r.get(key) or [] for r in results]
        k = max((len(x) for x in lists), default=0)
        arr = np.full((len(lists), k), np.nan)
        for i, x in enumerate(lists):
            arr[i, : len(x)] = x
        per_rater = _nanmean(arr, axis=0) if len(lists) else np.full(k, np.nan)
        out[key] = [float(v) for v in np.atleast_1d(per_rater)]
        out[key + "_mean"] = float(_nanmean(per_rater)) if k else float("nan")
    out["n_images"] = len(results)
    return out


def aggregate(results: list[dict], buckets: Sequence[int] | None = None) -> dict:
    """Means over images (NaN-safe) overall and per bucket of ``n_marked`` (default: observed counts).

    ``per_bucket`` maps int bucket -> same metric keys + ``n_images``.
    """
    out = _mean_of(results)
    marked = [int(r.get("n_marked", -1)) for r in results]
    if buckets is None:
        buckets = sorted(set(m for m in marked if m >= 0))
    out["per_bucket"] = {int(b): _mean_of([r for r, m in zip(results, marked) if m == int(b)]) for b in buckets}
    ns = sorted({int(r["n_samples"]) for r in results if "n_samples" in r})
    out["n_samples"] = ns[0] if len(ns) == 1 else ns
    out["conventions"] = dict(CONVENTIONS)
    return out
