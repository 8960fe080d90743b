"""model_vs_raters: which model output matches each rater best (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_multirater.analysis.model_vs_raters import model_vs_raters
from napari_multirater.analysis.overlap import dice


def _disk(shape, center, r):
    yy, xx = np.indices(shape)
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= r * r).astype(np.uint8)


SHAPE = (64, 64)
RATERS = np.stack([_disk(SHAPE, (32, 32), r) for r in (8, 12, 16)])  # tight, medium, generous
NAMES = ["tight", "medium", "generous"]


def test_each_rater_finds_the_output_in_its_style():
    outputs = {  # deliberately not in rater order
        "persona generous": _disk(SHAPE, (32, 32), 15),
        "persona tight": _disk(SHAPE, (32, 32), 8),
        "persona medium": _disk(SHAPE, (32, 32), 11),
    }
    rows = model_vs_raters(RATERS, None, NAMES, outputs)
    assert [r["rater"] for r in rows] == NAMES
    best = {r["rater"]: r["best_output"] for r in rows}
    assert best == {"tight": "persona tight", "medium": "persona medium", "generous": "persona generous"}
    tight = rows[0]
    assert tight["best_dice"] == 1.0
    assert set(tight["dice"]) == set(outputs)
    for name, out in outputs.items():
        assert tight["dice"][name] == pytest.approx(dice(RATERS[0], out))
    assert tight["runner_up"] == "persona medium"
    assert tight["margin"] == pytest.approx(tight["best_dice"] - tight["runner_up_dice"])
    assert all(r["margin"] > 0 for r in rows)


def test_missing_rater_gets_nan_row_and_ties_keep_output_order():
    outputs = {"a": RATERS[1], "b": RATERS[1].copy()}
    rows = model_vs_raters(RATERS, [True, False, True], NAMES, outputs)
    assert rows[1]["valid"] is False and rows[1]["best_output"] is None
    assert math.isnan(rows[1]["best_dice"]) and all(math.isnan(v) for v in rows[1]["dice"].values())
    assert rows[0]["best_output"] == "a" and rows[0]["runner_up"] == "b" and rows[0]["margin"] == 0.0


def test_single_output_empty_masks_and_no_outputs():
    empty = np.zeros((2, *SHAPE), np.uint8)
    rows = model_vs_raters(empty, None, ["x", "y"], {"model": np.zeros(SHAPE, bool)})
    assert rows[0]["best_dice"] == 1.0  # both empty: perfect agreement
    assert rows[0]["runner_up"] is None and math.isnan(rows[0]["margin"])
    assert model_vs_raters(RATERS, None, NAMES, {}) == []


def test_shape_and_name_errors():
    with pytest.raises(ValueError, match="model output 'bad' has shape"):
        model_vs_raters(RATERS, None, NAMES, {"bad": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="3 rater masks but 2 names"):
        model_vs_raters(RATERS, None, NAMES[:2], {"m": RATERS[0]})
