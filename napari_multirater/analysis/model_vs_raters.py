"""Model outputs vs raters: which model output (persona, sample...) matches each rater best.

For every rater, the Dice with every model output is computed; the row names the best-matching
output, its Dice, the runner-up and the margin between them (how clearly the rater's style is
reproduced by one output). Missing raters (``valid`` False) get a row with NaN values. Dice
conventions follow :mod:`.overlap` (two empty masks: 1). Ties go to the first output in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .overlap import dice

__all__ = ["model_vs_raters"]

NAN = float("nan")


def model_vs_raters(
    rater_masks: np.ndarray,
    valid: Sequence[bool] | None,
    rater_names: Sequence[str],
    outputs: Mapping[str, np.ndarray],
) -> list[dict]:
    """One row per rater: ``{"rater", "valid", "best_output", "best_dice", "runner_up",
    "runner_up_dice", "margin", "dice": {output: Dice}}``.

    ``rater_masks`` (K, *shape); ``outputs`` maps a display name to a mask of the same shape.
    No outputs -> an empty list. Shapes that differ raise ValueError naming the output.
    """
    masks = np.asarray(rater_masks) != 0
    k = masks.shape[0]
    names = list(rater_names)
    valid = np.ones(k, bool) if valid is None else np.asarray(valid, bool)
    if len(names) != k or valid.shape != (k,):
        raise ValueError(f"{k} rater masks but {len(names)} names / valid shape {valid.shape}")
    if not outputs:
        return []
    outs = {}
    for name, out in outputs.items():
        arr = np.asarray(out) != 0
        if arr.shape != masks.shape[1:]:
            raise ValueError(f"model output {name!r} has shape {arr.shape}, raters have {masks.shape[1:]}")
        outs[str(name)] = arr
    rows = []
    for r, rater in enumerate(names):
        row = {
            "rater": rater,
            "valid": bool(valid[r]),
            "best_output": None,
            "best_dice": NAN,
            "runner_up": None,
            "runner_up_dice": NAN,
            "margin": NAN,
            "dice": {o: NAN for o in outs},
        }
        if valid[r]:
            scores = {o: dice(masks[r], m) for o, m in outs.items()}
            ranked = sorted(scores, key=lambda o: -scores[o])  # stable: ties keep output order
            row["dice"] = scores
            row["best_output"], row["best_dice"] = ranked[0], scores[ranked[0]]
            if len(ranked) > 1:
                row["runner_up"], row["runner_up_dice"] = ranked[1], scores[ranked[1]]
                row["margin"] = scores[ranked[0]] - scores[ranked[1]]
        rows.append(row)
    return rows
