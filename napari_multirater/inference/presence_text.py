"""Per-rater presence in plain words (the Model dock and ``predict``'s prediction.json).

The engine puts P(rater k marks a lesion) into a prediction's per-slice scores as
``presence_<rater>``; these functions read them back. Qt-free, so a test can call them.
"""

from __future__ import annotations

import numpy as np

PRESENCE_PREFIX = "presence_"
PERSONA_THRESHOLD = 0.5  # == src_training.models.presence.PERSONA_THRESHOLD


def presence_scores(scores: dict) -> dict[str, np.ndarray]:
    """``{rater: P per computed slice}`` from a prediction's scores (empty without a presence head)."""
    return {
        k[len(PRESENCE_PREFIX) :]: np.atleast_1d(np.asarray(v, float))
        for k, v in scores.items()
        if k.startswith(PRESENCE_PREFIX)
    }


def other_scores(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if not k.startswith(PRESENCE_PREFIX)}


def presence_summary(scores: dict, first_slice: int | None = None) -> dict | None:
    """prediction.json's ``presence`` block: per rater P per slice, the expected number of raters
    marking per slice, and one sentence for the slice where it is highest; None without presence."""
    per = presence_scores(scores)
    if not per:
        return None
    names = list(per)
    table = np.stack([per[n] for n in names])  # (K, slices)
    expected = table.sum(0)
    i = int(np.argmax(expected))
    where = "" if table.shape[1] == 1 or first_slice is None else f" (slice {first_slice + i}, the highest)"
    at = {n: float(per[n][i]) for n in names}
    return {
        "per_rater": {n: [float(v) for v in per[n]] for n in names},
        "expected_raters": [float(v) for v in expected],
        "headline": presence_headline(at) + where,
        "text": presence_sentence(at) + where,
        "persona_text": presence_sentence(at, personas=True) + where,
    }


def presence_headline(probs: dict[str, float]) -> str:
    """ "about 3 of 4 experts would mark a lesion here": the expected number of raters, rounded."""
    return f"about {int(round(sum(probs.values())))} of {len(probs)} experts would mark a lesion here"


def presence_words(summary: dict, personas: bool = False) -> str:
    """The sentence of a :func:`presence_summary` for the samples or the persona tab."""
    return summary["persona_text" if personas else "text"]


def presence_sentence(probs: dict[str, float], personas: bool = False) -> str:
    """ "about 3 of 4 experts would mark a lesion here (expert_1 12%, ...)"; with ``personas`` each
    persona's probability and whether it is shown empty (below 50%)."""
    if personas:
        per = ", ".join(
            f"{n} {100 * p:.0f}%" + ("" if p >= PERSONA_THRESHOLD else " (shown empty)") for n, p in probs.items()
        )
        return f"{presence_headline(probs)}; persona probabilities: {per}"
    per = ", ".join(f"{n} {100 * p:.0f}%" for n, p in probs.items())
    return f"{presence_headline(probs)} ({per})"
