"""UMA-Net ablation options (issue: UMA-Net below U-Net on few-rater slices) and U-Net with
UMA-Net's base loss; CPU, tiny models."""

import torch

from src_training import losses as L
from tests.test_models import disk_batch, make

torch.set_num_threads(1)


def test_batch_dice_scope_penalises_drawing_on_empty_annotations():
    probs = torch.zeros(1, 2, 8, 8)
    probs[0, :, 2:5, 2:5] = 0.9  # the head draws a lesion
    masks = torch.zeros(1, 2, 8, 8)  # both raters drew nothing
    w = torch.ones_like(masks)
    valid = torch.ones(1, 2, dtype=torch.bool)
    num, den, marked = L.annotation_dice_terms(probs, masks, w)
    group = torch.ones(1, dtype=torch.bool)
    assert float(L.group_dice_loss(num, den, marked, valid, group, "marked")) == 0.0  # empty raters ignored
    assert float(L.group_dice_loss(num, den, marked, valid, group, "batch")) > 0.9  # false positives cost


def test_marked_and_batch_scopes_agree_when_every_annotation_is_marked():
    b = disk_batch(n=3, k=3)
    probs = torch.rand(3, 3, 32, 32)
    num, den, marked = L.annotation_dice_terms(probs, b["masks"], torch.ones_like(b["masks"]))
    group = torch.ones(3, dtype=torch.bool)
    m = L.group_dice_loss(num, den, marked, b["mask_valid"], group, "marked")
    bt = L.group_dice_loss(num, den, marked, b["mask_valid"], group, "batch")
    assert 0 < float(m) < 1 and 0 < float(bt) < 1 and abs(float(m) - float(bt)) < 0.2


def test_quality_split_all_sends_every_annotated_image_to_the_h_head():
    model = make("umanet", quality={"split": "all"})
    has = torch.tensor([True, False, True, True])
    assert torch.equal(model.split_high(torch.tensor([0.1, 0.9, 0.5, 0.2]), has), has)
    median = make("umanet")
    assert int(median.split_high(torch.tensor([0.1, 0.9, 0.5, 0.2]), has).sum()) == 2


def test_auem_without_the_prediction_ignores_the_h_head():
    b = disk_batch(n=2, k=3)
    model = make("umanet", auem={"sees_prediction": False}).eval()
    u1 = model.annotation_uncertainty(b["image"], b["masks"])
    with torch.no_grad():
        for p in model.h_head.parameters():
            p.add_(1.0)
    assert torch.allclose(u1, model.annotation_uncertainty(b["image"], b["masks"]))


def test_unet_with_umanet_base_loss_learns_every_rater():
    torch.manual_seed(0)
    model = make("unet", loss={"type": "umanet_base", "dice_scope": "batch"})
    b = disk_batch(n=4, k=3)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(25):
        loss = model.loss(b)["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first
