"""Per-rater presence (issue 32): stratified samples, gating that follows P, deterministic
personas, the presence head and its calibration, the selection / report split (tiny, CPU)."""

import numpy as np
import pytest
import torch

from napari_multirater.inference.presence_text import presence_sentence, presence_summary
from src_training.models.presence import (
    EMPTY_LOGIT,
    PresenceHead,
    gate_personas,
    gate_samples,
    presence_loss,
    presence_targets,
    stratified_raters,
)
from src_training.presence_metrics import presence_calibration, presence_record
from src_training.protocol_split import SELECTION_IMAGES, ItemSubset, subset_indices
from tests.test_models import make

torch.set_num_threads(1)


def test_stratified_sampling_gives_every_rater_n_over_k_samples():
    r = stratified_raters(3, 16, 4, torch.Generator().manual_seed(0), "cpu")
    assert r.shape == (3, 16)
    assert all(torch.bincount(row, minlength=4).tolist() == [4, 4, 4, 4] for row in r)
    r6 = stratified_raters(50, 6, 4, torch.Generator().manual_seed(1), "cpu")
    counts = torch.stack([torch.bincount(row, minlength=4) for row in r6])
    assert counts.min() >= 1 and counts.max() <= 2  # the 2 left-over samples go to distinct raters
    again = stratified_raters(50, 6, 4, torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(r6, again)  # deterministic from the generator


def test_gating_follows_the_presence_probability():
    n = 4000
    logits = torch.full((1, n, 1, 1), 5.0)
    strata = torch.arange(n)[None] % 4
    probs = torch.tensor([[0.0, 1.0, 0.5, 0.2]])
    out = gate_samples(logits, strata, probs, torch.Generator().manual_seed(0))
    kept = out[0, :, 0, 0] > 0
    frac = [float(kept[strata[0] == k].float().mean()) for k in range(4)]
    assert frac[0] == 0.0 and frac[1] == 1.0
    assert abs(frac[2] - 0.5) < 0.05 and abs(frac[3] - 0.2) < 0.05
    assert float(out.min()) == EMPTY_LOGIT and gate_samples(logits, strata, None, None) is logits
    pers = gate_personas(torch.ones(1, 4, 2, 2), probs)
    assert [bool((pers[0, k] > 0).all()) for k in range(4)] == [False, True, True, False]


def test_presence_head_shapes_and_loss_ignore_missing_raters():
    head = PresenceHead([8, 4], 3, hidden=4)
    assert head([torch.randn(2, 8, 4, 4), torch.randn(2, 4, 8, 8)]).shape == (2, 3)
    masks = torch.zeros(2, 3, 4, 4)
    masks[0, 1, 1, 1] = 1
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert presence_targets(masks, valid).tolist() == [[0, 1, 0], [0, 0, 0]]
    logits = torch.tensor([[-9.0, 9.0, 9.0], [-9.0, -9.0, -9.0]])  # wrong only where rater 3 is missing
    assert float(presence_loss(logits, masks, valid)) < 1e-3


@pytest.mark.parametrize(
    "method,stage,inputs", [("pionono", 1, "bottleneck"), ("proseg", 1, "all_levels"), ("dpersona", 2, "bottleneck")]
)
def test_models_gate_samples_and_personas_by_presence(method, stage, inputs):
    model = make(method, stage, presence={"enabled": True, "hidden": 4, "inputs": inputs}).eval()
    assert model.capabilities.presence and not make(method, stage).capabilities.presence
    x = torch.randn(2, 1, 16, 16)
    assert model.presence(x).shape == (2, 3)
    with torch.no_grad():  # rater 1 never marks, rater 2 always
        model.presence_head.mlp[-1].weight.zero_()
        model.presence_head.mlp[-1].bias.copy_(torch.tensor([-50.0, 50.0, 50.0]))
    s = model.sample(x, 9, torch.Generator().manual_seed(0))
    assert s.shape == (2, 9, 16, 16)
    assert bool((s[:, 0::3] == EMPTY_LOGIT).all()) and not bool((s[:, 1::3] == EMPTY_LOGIT).all())
    s2 = model.sample(x, 9, torch.Generator().manual_seed(0))
    assert torch.equal(s, s2)
    p = model.personalize(x, torch.Generator().manual_seed(0))
    assert bool((p[:, 0] == EMPTY_LOGIT).all()) and not bool((p[:, 1] == EMPTY_LOGIT).all())


@pytest.mark.parametrize(
    "heads", [{"bank_seed": 0, "n_infer": 20}, {"code": "bounded"}, {"query_cap": 3.0, "bank_seed": 1}]
)
def test_dpersona_personas_are_identical_on_every_call(heads):
    model = make("dpersona", 2, heads={"widths": [8, 8], "n_train": 20, "n_infer": 30, **heads}).eval()
    x = torch.randn(3, 1, 16, 16)
    a = model.personalize(x, torch.Generator().manual_seed(0))
    b = model.personalize(x, torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    assert torch.allclose(model.personalize(x[1:2]), a[1:2], atol=1e-5)  # not tied to the batch
    loss = model.loss({"image": x, "masks": (torch.rand(3, 3, 16, 16) > 0.5).float()})
    assert torch.isfinite(loss["loss"])


def test_dpersona_bounded_code_stays_within_the_prior_box():
    model = make("dpersona", 2, heads={"widths": [8, 8], "code": "bounded", "code_scale": 2.0}).eval()
    ctx = model._encode(torch.randn(2, 1, 16, 16))
    z = model.persona_codes(ctx, torch.full((2, 3, model.latent_dim), 1e4), 10)
    mu, sigma = ctx["prior"]
    assert torch.all((z - mu[:, None]).abs() <= 2.0 * sigma[:, None] + 1e-5)


def test_shape_loss_only_where_the_expert_drew():
    masks = torch.zeros(2, 3, 16, 16)
    masks[0, 2, 4:8, 4:8] = 1  # expert 3 drew on image 1 only: image 2's prediction no longer counts
    x = torch.randn(2, 1, 16, 16)
    torch.manual_seed(0)
    on = make("dpersona", 2, loss={"shape_only_where_drawn": True}).loss({"image": x, "masks": masks})
    torch.manual_seed(0)
    off = make("dpersona", 2).loss({"image": x, "masks": masks})
    assert float(on["seg"]) != pytest.approx(float(off["seg"]))


def test_selection_and_report_split_indices():
    assert subset_indices(1552, "select") == range(0, SELECTION_IMAGES)
    assert (
        subset_indices(1552, "report") == range(SELECTION_IMAGES, 1552) and len(subset_indices(1552, "report")) == 952
    )
    assert subset_indices(1552, "report", max_images=10) == range(600, 610)
    assert subset_indices(1552, "all") == range(1552)
    with pytest.raises(ValueError, match="empty"):
        subset_indices(500, "report")

    class Items:
        rater_names = ["a"]

        def raw(self, i):
            return i

    view = ItemSubset(Items(), subset_indices(700, "report"))
    assert len(view) == 100 and view.raw(0) == 600


def test_presence_calibration_against_the_constant_prior():
    masks = [np.array([[1], [1]]), np.array([[0], [1]])]
    valid = [np.array([True, True])] * 2
    recs = [presence_record(p, m, v) for p, m, v in zip([[1.0, 1.0], [0.0, 1.0]], masks, valid)]
    cal = presence_calibration(recs, [2, 1], [0.5, 1.0], buckets=[1, 2])
    assert cal["presence_brier"] == 0.0 and cal["presence_brier_prior"] == pytest.approx(0.125)
    assert cal["per_bucket"][2]["presence_expected"] == 2.0 and cal["per_bucket"][1]["presence_true"] == 1.0
    assert sum(b["n"] for b in cal["reliability"]) == 4


def test_presence_in_plain_words():
    scores = {"presence_expert_1": [0.1, 0.2], "presence_expert_2": [0.9, 0.95], "quality": [0.5, 0.5]}
    s = presence_summary(scores, first_slice=10)
    assert s["text"].startswith("about 1 of 2 experts would mark a lesion here (expert_1 20%, expert_2 95%)")
    assert "slice 11" in s["text"] and s["expected_raters"] == pytest.approx([1.0, 1.15])
    assert "expert_1 20% (shown empty)" in s["persona_text"]
    assert presence_summary({"quality": [1.0]}) is None
    assert presence_sentence({"a": 0.9, "b": 0.8, "c": 0.9}).startswith("about 3 of 3 experts")


def test_engine_reports_presence_per_slice_for_predict_and_the_dock(tmp_path):
    from napari_multirater.inference.engine import InferenceEngine
    from src_training.checkpoint import save_checkpoint
    from src_training.tools.testing import tiny_card

    model = make("pionono", presence={"enabled": True, "hidden": 4}).eval()
    save_checkpoint(tmp_path / "p.pt", model, tiny_card("pionono", model.rater_names))
    engine = InferenceEngine.load(str(tmp_path / "p.pt"), device="cpu", precision="fp32")
    result = engine.predict_volume(np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32), samples=4)
    block = presence_summary(result.scores, first_slice=0)
    assert set(block["per_rater"]) == {"a", "b", "c"} and len(block["expected_raters"]) == 2
    assert block["text"].startswith("about ") and "of 3 experts would mark a lesion here" in block["text"]


def test_feature_cache_key_follows_the_backbone_weights_only():
    from src_training.presence_fit import backbone_digest

    a, b = make("dpersona", 2, seed=0), make("dpersona", 2, seed=0)
    with torch.no_grad():
        b.heads.layers[0].weight.add_(1.0)  # stage-II heads differ, the frozen backbone does not
    assert backbone_digest(a) == backbone_digest(b)
    with torch.no_grad():
        b.backbone.out[0].weight.add_(1.0)
    assert backbone_digest(a) != backbone_digest(b)
