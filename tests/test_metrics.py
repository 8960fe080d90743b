"""Hand-computed checks of src_training.metrics (numpy, fast)."""

import json
import math

import numpy as np
import pytest

from src_training import metrics as M


def disk(r, size=16, cx=8, cy=8):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.float32)


def test_ged_toy_case_conventions():
    a = disk(4)
    empty = np.zeros_like(a)
    labels = np.stack([empty, empty, a, a])
    preds = np.zeros((3,) + a.shape)
    assert M.ged(labels, preds) == pytest.approx(0.5)
    assert M.ged_dpersona(labels, preds) == pytest.approx(0.25)


def test_ged_zero_when_predictions_reproduce_labels():
    labels = np.stack([disk(3), disk(5), np.zeros((16, 16))])
    assert M.ged(labels, labels.copy()) == pytest.approx(0.0, abs=1e-12)
    assert M.ged_dpersona(labels, labels.copy()) == pytest.approx(0.0, abs=1e-12)


def test_ged_hand_value_and_invalid_rater_ignored():
    a = np.zeros((1, 4))
    a[0, :2] = 1  # {0,1}
    b = np.zeros((1, 4))
    b[0, 1:3] = 1  # {1,2}: IoU(a,b) = 1/3, d = 2/3
    labels = np.stack([a, b])
    preds = np.stack([a])
    # cross = (0 + 2/3)/2 ; d_labels = (0 + 2/3 + 2/3 + 0)/4 ; d_preds = 0
    assert M.ged(labels, preds) == pytest.approx(2 * (1 / 3) - 1 / 3)
    noisy = np.concatenate([labels, np.ones((1, 1, 4))])
    assert M.ged(noisy, preds, valid=[True, True, False]) == pytest.approx(1 / 3)
    assert math.isnan(M.ged(labels, preds, valid=[False, False]))


def test_dice_soft_thresholds():
    y1 = np.array([1, 1, 0, 0.0])
    y2 = np.array([1, 0, 0, 0.0])
    labels = np.stack([y1, y2])  # mean [1, .5, 0, 0]
    preds = np.array([[0.95, 0.6, 0.0, 0.2]])
    # t=.1: p {0,1,3} vs y {0,1} -> 4/5 ; t=.3: {0,1} vs {0,1} -> 1 ; t=.5: {0,1} vs {0} -> 2/3 ;
    # t=.7: {0} vs {0} -> 1 ; t=.9: {0} vs {0} -> 1
    assert M.dice_soft(labels, preds) == pytest.approx(np.mean([0.8, 1, 2 / 3, 1, 1]))


def test_dice_max_match_and_empty_convention():
    a = np.array([1, 1, 0, 0.0])
    b = np.array([0, 0, 1, 1.0])
    empty = np.zeros(4)
    labels = np.stack([a, b])
    preds = np.stack([a, a, empty])
    d = M.dice_matrix(labels, preds)
    assert d[0].tolist() == pytest.approx([1, 1, 0], abs=1e-6)
    assert d[1].tolist() == pytest.approx([0, 0, 0], abs=1e-6)
    assert M.dice_max(labels, preds) == pytest.approx(2 / 3)
    assert M.dice_max_reverse(labels, preds) == pytest.approx(0.5)
    assert M.dice_match(labels, preds) == pytest.approx(0.5)
    # empty vs empty Dice = 1 (1e-8 smoothing)
    assert M.dice_matrix(empty[None], empty[None])[0, 0] == pytest.approx(1.0)


def test_hungarian_differs_from_identity():
    a = np.array([1, 1, 0, 0.0])
    b = np.array([0, 0, 1, 1.0])
    labels = np.stack([a, b])
    personal = np.stack([b, a])  # heads swapped
    assert M.dice_each_identity(labels, personal) == pytest.approx([0.0, 0.0], abs=1e-6)
    assert M.dice_each_matched(labels, personal) == pytest.approx([1.0, 1.0])
    each = M.dice_each_matched(labels, personal, valid=[True, False])
    assert each[0] == pytest.approx(1.0) and math.isnan(each[1])
    ident = M.dice_each_identity(labels, personal, valid=[False, True])
    assert math.isnan(ident[0]) and ident[1] == pytest.approx(0.0, abs=1e-6)


def test_rectangular_matching_and_3d():
    vol = np.zeros((3, 4, 6, 6))
    vol[0, 1:3, 1:3, 1:3] = 1
    vol[1, :, :2, :2] = 1
    vol[2, 2:, 3:, 3:] = 1
    preds = np.concatenate([vol[[2, 0, 1]], np.zeros((2, 4, 6, 6))])  # 5 samples, permuted + 2 empty
    assert M.dice_match(vol, preds) == pytest.approx(1.0)
    assert M.dice_each_matched(vol, preds) == pytest.approx([1.0, 1.0, 1.0])
    assert M.ged(vol, vol) == pytest.approx(0.0, abs=1e-12)


def test_evaluate_and_aggregate_nan_safe_buckets():
    a = disk(3)
    b = disk(5)
    labels1 = np.stack([a, b, np.zeros_like(a), a])
    r1 = M.evaluate_image(labels1, np.stack([a, b]), valid=[True, True, False, True], personal=np.stack([a, b, a, a]))
    assert r1["n_marked"] == 3 and r1["n_valid"] == 3 and r1["n_samples"] == 2
    assert math.isnan(r1["dice_each_identity"][2])
    labels2 = np.stack([a, np.zeros_like(a), np.zeros_like(a), np.zeros_like(a)])
    r2 = M.evaluate_image(labels2, np.stack([a, a]), personal=np.stack([a, a, a, a]))
    assert r2["n_marked"] == 1
    agg = M.aggregate([r1, r2])
    for key in (
        "ged",
        "ged_dpersona",
        "dice_soft",
        "dice_max",
        "dice_max_reverse",
        "dice_match",
        "dice_each_identity",
        "dice_each_matched",
        "per_bucket",
        "n_images",
        "n_samples",
        "conventions",
    ):
        assert key in agg
    assert agg["n_images"] == 2 and agg["n_samples"] == 2
    # rater 3 (index 2): NaN in image 1 skipped -> only image 2's value (empty vs a -> ~0)
    assert agg["dice_each_identity"][2] == pytest.approx(r2["dice_each_identity"][2])
    assert agg["dice_each_identity"][0] == pytest.approx(1.0)
    assert set(agg["per_bucket"]) == {1, 3}
    assert agg["per_bucket"][3]["n_images"] == 1
    assert agg["per_bucket"][1]["ged"] == pytest.approx(r2["ged"])
    fixed = M.aggregate([r1, r2], buckets=[1, 2, 3, 4])
    assert fixed["per_bucket"][2]["n_images"] == 0 and math.isnan(fixed["per_bucket"][2]["ged"])
    json.dumps(agg)  # JSON-able


def test_conventions_documented():
    for key in (
        "ged",
        "ged_dpersona",
        "dice_soft",
        "dice_max",
        "dice_max_reverse",
        "dice_match",
        "dice_each_identity",
        "dice_each_matched",
    ):
        assert key in M.CONVENTIONS


def test_human_reference_leave_one_rater_out_hand_computed():
    """Two raters of 4 px overlapping in 2 px: each is one sample against the other (Dice 0.5, IoU 1/3)."""
    from src_training.human_reference import human_reference_image

    a = np.zeros((4, 4), np.float32)
    b = np.zeros((4, 4), np.float32)
    a[0, :4] = 1
    b[0, 2:] = 1
    b[1, 2:] = 1
    masks = np.stack([a, b, np.zeros_like(a)])
    r = human_reference_image(masks, np.array([True, True, False]))
    assert r["dice_max"] == pytest.approx(0.5) and r["dice_match"] == pytest.approx(0.5)
    assert r["ged"] == pytest.approx(2 * (1 - 1 / 3))  # one label, one sample: only the cross term
    assert r["dice_each_identity"][:2] == pytest.approx([0.5, 0.5]) and np.isnan(r["dice_each_identity"][2])
    assert r["n_samples"] == 1 and r["n_marked"] == 2
    assert human_reference_image(masks, np.array([True, False, False])) is None  # nobody to compare with
