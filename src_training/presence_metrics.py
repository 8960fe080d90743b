"""Presence calibration: how well P(rater k marks a lesion here) matches who marked.

Per image: the model's probabilities p_k, the truth t_k (rater k valid and drew something) over the
valid raters. Reported overall and per bucket (how many raters marked): the Brier score mean (p_k -
t_k)^2, the same for the constant prior (each rater's marking frequency on train: the baseline a
model with no image information reaches), their ratio, and the expected number of raters marking
(sum p_k) against the true number. The reliability diagram bins every (image, rater) pair by p_k.
"""

from __future__ import annotations

import numpy as np

BINS = 10
BUCKET_KEYS = ("presence_brier", "presence_brier_prior", "presence_expected", "presence_true")


def presence_record(probs, labels, valid) -> dict:
    """One image: probabilities (K,), truth (K,) and validity (K,) as float arrays."""
    lab = np.asarray(labels)
    v = np.asarray(valid, bool).reshape(lab.shape[0])
    drew = lab.reshape(lab.shape[0], -1).max(1) > 0.5
    return {"p": np.asarray(probs, np.float64), "t": (drew & v).astype(np.float64), "v": v}


def _summary(records: list[dict], prior: np.ndarray) -> dict:
    if not records:
        return {k: float("nan") for k in BUCKET_KEYS} | {"n_images": 0}
    p, t, v = (np.stack([r[k] for r in records]) for k in ("p", "t", "v"))
    w = v.astype(np.float64)
    n = max(w.sum(), 1.0)
    brier = float((((p - t) ** 2) * w).sum() / n)
    brier_prior = float((((prior[None] - t) ** 2) * w).sum() / n)
    return {
        "presence_brier": brier,
        "presence_brier_prior": brier_prior,
        "presence_expected": float((p * w).sum(1).mean()),
        "presence_true": float(t.sum(1).mean()),
        "n_images": len(records),
    }


def reliability(records: list[dict], bins: int = BINS) -> list[dict]:
    """Per probability bin: mean predicted p, observed frequency, number of (image, rater) pairs."""
    if not records:
        return []
    p = np.concatenate([r["p"][r["v"]] for r in records])
    t = np.concatenate([r["t"][r["v"]] for r in records])
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append(
                {
                    "lo": b / bins,
                    "hi": (b + 1) / bins,
                    "p": float(p[m].mean()),
                    "freq": float(t[m].mean()),
                    "n": int(m.sum()),
                }
            )
    return out


def presence_calibration(records: list[dict], n_marked: list[int], prior, buckets) -> dict:
    """Overall and per-bucket calibration; ``prior`` (K,) the train frequencies (None: 0.5 each)."""
    k = len(records[0]["p"]) if records else 0
    prior = np.full(k, 0.5) if prior is None else np.asarray(prior, np.float64)
    out = _summary(records, prior)
    out["presence_brier_ratio"] = out["presence_brier"] / max(out["presence_brier_prior"], 1e-12)
    out["per_bucket"] = {
        int(b): _summary([r for r, m in zip(records, n_marked) if m == int(b)], prior) for b in buckets
    }
    out["reliability"] = reliability(records)
    out["prior"] = [float(v) for v in prior]
    return out


def reliability_plot(calibration: dict, path, title: str = "") -> None:
    """The reliability diagram (predicted P(rater marks) against the observed frequency) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_multirater.io.atomic import atomic_write_bytes

    rel = calibration["reliability"]
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
    ax.plot([r["p"] for r in rel], [r["freq"] for r in rel], "o-", color="C0", label="model")
    for r in rel:
        ax.annotate(str(r["n"]), (r["p"], r["freq"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("predicted P(rater marks a lesion)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "presence reliability", fontsize=9)
    ax.text(
        0.02,
        0.95,
        f"Brier {calibration['presence_brier']:.3f} (constant prior {calibration['presence_brier_prior']:.3f})",
        fontsize=7,
        transform=ax.transAxes,
    )
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
