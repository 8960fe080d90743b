"""Model interface tests: shapes, determinism, training signal, missing raters, D-Persona stage II,
checkpoints (CPU, tiny widths, no Qt / napari)."""

import copy
import math

import pytest
import torch

from src_training.checkpoint import CheckpointError, load_checkpoint, load_checkpoint_dict, save_checkpoint
from src_training.models import METHODS, MultiRaterModel, build_model, default_config, dpersona_stage2_from_stage1
from src_training.tools.naive_sampling import has_naive_loop, sample_naive

torch.set_num_threads(1)  # tiny tensors; robust when the CPU is shared

TINY = {
    "in_channels": 1,
    "num_raters": 3,
    "rater_names": ["a", "b", "c"],
    "backbone": {"widths": [8, 16], "features": 8, "norm": "batch", "convs_per_block": 1},
    "prior": {"widths": [8, 16], "convs_per_block": 1},
    "heads": {"widths": [8, 8], "n_train": 20, "n_infer": 30},
    "stat_hidden": [8, 8],
    "z_channels": 8,
    "head": {"hidden": 8},
    "fcomb": {"hidden": 8},
    "head_hidden": 8,
    "auem": {"hidden": 8},
    "classifier_hidden": 8,
}
VARIANTS = [(m, 1) for m in METHODS] + [("dpersona", 2)]
IDS = [f"{m}{'_s2' if s == 2 else ''}" for m, s in VARIANTS]


def tiny_config(method, stage=1, **extra):
    cfg = copy.deepcopy(TINY)
    cfg.update(method=method, stage=stage)
    cfg.update(extra)
    return cfg


def make(method, stage=1, seed=0, **extra):
    torch.manual_seed(seed)
    return build_model(tiny_config(method, stage, **extra))


def disk_batch(n=4, size=32, k=3, seed=0):
    """Disks with a rater-specific radius offset and a random centre per image."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs, masks = [], []
    for _ in range(n):
        cy, cx = (torch.randint(10, size - 10, (2,), generator=g)).tolist()
        r0 = 4 + 3 * torch.rand((), generator=g).item()
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        imgs.append((d2 <= r0**2).float() + 0.1 * torch.randn(size, size, generator=g))
        masks.append(torch.stack([(d2 <= (r0 - 2 + 2 * r) ** 2).float() for r in range(k)]))
    return {
        "image": torch.stack(imgs)[:, None],
        "masks": torch.stack(masks),
        "mask_valid": torch.ones(n, k, dtype=torch.bool),
    }


@pytest.fixture(scope="module")
def batch():
    return disk_batch()


# ----------------------------------------------------------------------------- interface / shapes
@pytest.mark.parametrize("method,stage", VARIANTS, ids=IDS)
def test_interface_shapes(method, stage, batch):
    model = make(method, stage).eval()
    assert isinstance(model, MultiRaterModel)
    caps = model.capabilities
    x = batch["image"][:2, :, :24, :20]  # non-square, non-power-of-two
    b, h, w, k = 2, 24, 20, 3
    g = torch.Generator().manual_seed(0)
    assert model.sample(x, 5, g).shape == (b, 5, h, w)
    assert sample_naive(model, x, 3, g).shape == (b, 3, h, w)
    assert model.personalize(x).shape == (b, k, h, w)
    unc = model.uncertainty(x)
    assert sorted(unc) == sorted(caps.uncertainty)
    for v in unc.values():
        assert v.shape in ((b, h, w), (b,))
        assert float(v.min()) >= 0 and float(v.max()) <= 1
    ctx = model.encode(x)
    lp = model.latent_prior(ctx)
    if caps.latent_dim:
        assert lp[0].shape == (b, caps.latent_dim) and lp[1].shape == (b, caps.latent_dim)
        assert bool((lp[1] > 0).all())
    else:
        assert lp is None
    z = torch.randn(b, 4, caps.latent_dim)
    assert model.decode(ctx, z).shape == (b, 4, h, w)
    if caps.blend:
        assert model.blend(x, 0, 2, 0.3).shape == (b, 1, h, w)
    else:
        with pytest.raises(NotImplementedError):
            model.blend(x, 0, 1, 0.5)
    assert model.config["rater_names"] == ["a", "b", "c"]
    assert build_model(model.config).config == model.config


@pytest.mark.parametrize("method,stage", VARIANTS, ids=IDS)
def test_seeded_determinism_and_diversity(method, stage, batch):
    model = make(method, stage).eval()
    x = batch["image"][:2]
    s1 = model.sample(x, 6, torch.Generator().manual_seed(7))
    s2 = model.sample(x, 6, torch.Generator().manual_seed(7))
    assert torch.equal(s1, s2)
    naive = sample_naive(model, x, 6, torch.Generator().manual_seed(7))
    assert has_naive_loop(model) == (method in ("prob_unet", "dpersona", "pionono", "proseg"))
    assert not hasattr(model, "sample_naive"), "the naive loop is a benchmark oracle, not the model interface"
    assert torch.allclose(s1, naive, atol=1e-4), "vectorized and naive sampling must agree"
    spread = (s1 - s1[:, :1]).abs().amax().item()
    if model.capabilities.diverse:
        assert spread > 1e-4
    else:
        assert spread == 0.0
    with torch.no_grad():
        ctx = model.encode(x)
        z = torch.randn(2, 3, model.capabilities.latent_dim)
        assert torch.equal(model.decode(ctx, z), model.decode(ctx, z))


def test_default_configs_build():
    for name in ("unet", "prob_unet", "dpersona", "dpersona_stage2", "proseg", "umanet", "pionono"):
        cfg = default_config(name)
        model = build_model(cfg)
        assert model.method == cfg["method"]
        assert "widths" in cfg["backbone"] and "_large" in cfg and "train" in cfg
    with pytest.raises(ValueError, match="unknown method"):
        build_model({"method": "nope"})


# ----------------------------------------------------------------------------- training signal
def _eval_loss(model, batch):
    torch.manual_seed(1234)  # same rater choice / noise for every evaluation
    with torch.no_grad():
        return float(model.loss(batch, 0)["loss"])


@pytest.mark.parametrize("method,stage", VARIANTS, ids=IDS)
def test_loss_decreases(method, stage, batch):
    model = make(method, stage, seed=1)
    if stage == 2:  # heads on a (briefly) trained stage-I model
        s1 = make("dpersona", 1, seed=1)
        model = dpersona_stage2_from_stage1(s1.state_dict(), s1.config)
    model.train()
    opt = torch.optim.Adam(model.param_groups(3e-3))
    before = _eval_loss(model, batch)
    torch.manual_seed(0)
    for step in range(25):
        out = model.loss(batch, step)
        assert "loss" in out and torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = _eval_loss(model, batch)
    assert after < before, f"{method}: loss {before:.4f} -> {after:.4f}"


# ----------------------------------------------------------------------------- missing raters
@pytest.mark.parametrize("method,stage", VARIANTS, ids=IDS)
def test_missing_raters_masked(method, stage, batch):
    model = make(method, stage).train()
    b = dict(batch)
    b["mask_valid"] = torch.tensor(
        [[True, False, True], [False, False, True], [True, True, True], [False, False, False]]
    )
    torch.manual_seed(5)
    out = model.loss(b, 0)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # changing the content of missing raters must not change the loss
    b2 = dict(b)
    noisy = b["masks"].clone()
    noisy[~b["mask_valid"]] = 1.0 - noisy[~b["mask_valid"]]
    b2["masks"] = noisy
    torch.manual_seed(5)
    out2 = model.loss(b2, 0)
    assert out2["loss"].item() == pytest.approx(out["loss"].detach().item(), rel=1e-6, abs=1e-7)


# ----------------------------------------------------------------------------- D-Persona stage II
def test_dpersona_stage2_only_heads_train_and_bn_frozen(batch):
    s1 = make("dpersona", 1).train()
    opt = torch.optim.Adam(s1.trainable_parameters(), 1e-3)
    for _ in range(2):  # move BN stats / weights away from init
        out = s1.loss(batch, 0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model = dpersona_stage2_from_stage1(s1.state_dict(), s1.config)
    assert model.stage == 2 and model.capabilities.personalized
    head_names = {n for n, _ in model.named_parameters() if n.startswith("heads.")}
    assert {id(p) for p in model.trainable_parameters()} == {
        id(p) for n, p in model.named_parameters() if n in head_names
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not model.backbone.training and not model.prior.training and not model.fcomb.training
    assert model.heads.training
    opt = torch.optim.Adam(model.trainable_parameters(), 1e-2)
    for step in range(3):
        out = model.loss(batch, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("heads.") for k in changed)
    assert any("running_mean" in k for k in before)  # BN present and untouched
    with pytest.raises(ValueError):
        dpersona_stage2_from_stage1(make("prob_unet").state_dict(), s1.config)


PERSONALIZING = {
    "posterior_target": "mask+index",
    "heads": {**TINY["heads"], "query_relu": False, "scale": True, "key_proj": True},
}


def _stage2(batch, **extra):
    s1 = make("dpersona", 1, seed=2, **extra).train()
    s1.loss(batch, 0)["loss"].backward()  # the stage-I loss runs with these options
    if hasattr(s1, "rater_code"):  # the rater codes learn in stage I
        assert s1.rater_code.grad is not None and s1.rater_code.grad.abs().sum() > 0
    model = dpersona_stage2_from_stage1(s1.state_dict(), s1.config)
    torch.manual_seed(3)
    for m in model.heads.modules():  # non-trivial queries and key maps
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.5)
    if getattr(model.heads, "key_proj", None) is not None:
        model.heads.key_proj.data += 0.3 * torch.randn_like(model.heads.key_proj)
    return model.eval()


def test_dpersona_attention_stays_fp32_under_bf16_autocast(batch):
    model = _stage2(batch)
    x = batch["image"]
    with torch.no_grad():
        q = model.heads(model.backbone(x)) * 40  # large scores: bf16 would round them in steps of >= 0.25
        z = model._prior_draws(model._encode(x), 50, torch.Generator().manual_seed(0))
        ref = model.attention(q, z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ctx = model._encode(x)
            a = model.attention(q.bfloat16(), z)
            codes = model._prior_draws(ctx, 50, torch.Generator().manual_seed(0))
            mu_q, s_q = model._gaussian_fp32(model.posterior, torch.cat([x, batch["masks"], batch["masks"]], 1))
            logits = model.personalize(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.float32 and codes.dtype == torch.float32
    assert ctx["prior"][0].dtype == ctx["prior"][1].dtype == mu_q.dtype == s_q.dtype == torch.float32
    # q itself was rounded to bf16 by the caller, so compare against the fp32 path on the same q
    assert torch.allclose(a, model.attention(q.bfloat16().float(), z), atol=1e-6)
    assert (ref.max(-1).values > 0.5).any()  # the test exercises a peaked softmax
    assert torch.isfinite(logits).all() and logits.shape == (4, 3, 32, 32)


def test_dpersona_personalizing_options_blend_and_diagnostics(batch):
    model = _stage2(batch, **PERSONALIZING)
    assert model.heads.key_proj.requires_grad and model.posterior.encoder[0].in_channels == 1 + 1 + 2 * 3
    assert model.rater_code.shape == (3, model.latent_dim) and not model.rater_code.requires_grad
    x = batch["image"][:2]
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    p = model.personalize(x, g())
    assert torch.allclose(model.blend(x, 0, 2, 0.0, g())[:, 0], p[:, 0], atol=1e-5)
    assert torch.allclose(model.blend(x, 0, 2, 1.0, g())[:, 0], p[:, 2], atol=1e-5)
    d = model.diagnostics(x, 30, g())
    assert set(d) == {"z_spread"} | {f"{k}_{i}" for k in ("q_norm", "attn_entropy", "attn_max") for i in (1, 2, 3)}
    assert all(0.0 <= d[f"attn_entropy_{i}"] <= 1.0 + 1e-6 for i in (1, 2, 3)) and d["z_spread"] > 0
    out = model.train().loss(batch, 0)
    assert {"q_norm_1", "attn_entropy_3", "z_spread"} <= set(out) and out["loss"].requires_grad


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("method,stage", VARIANTS, ids=IDS)
def test_checkpoint_round_trip(method, stage, batch, tmp_path):
    model = make(method, stage).eval()
    card = {"name": f"tiny {method}", "raters": model.rater_names}
    path = save_checkpoint(tmp_path / "m.pt", model, card, extra={"epoch": 3, "optimizer": {"lr": [0.1]}})
    loaded, card2 = load_checkpoint(path)
    assert card2 == card and loaded.config == model.config and not loaded.training
    x = batch["image"][:2]
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    assert torch.equal(model.sample(x, 4, g()), loaded.sample(x, 4, g()))
    assert torch.equal(model.personalize(x, g()), loaded.personalize(x, g()))
    raw = load_checkpoint_dict(path)
    assert raw["epoch"] == 3 and raw["format_version"] == 1
    # fp16 storage restores float32
    path16 = save_checkpoint(tmp_path / "m16.pt", model, card, fp16=True)
    m16, _ = load_checkpoint(path16)
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    assert torch.allclose(model.personalize(x, g()), m16.personalize(x, g()), atol=0.05)


def test_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    partial = tmp_path / "partial.pt"
    torch.save({"state_dict": {}}, partial)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(partial)
    unknown = tmp_path / "unknown.pt"
    torch.save({"format_version": 1, "config": {"method": "nope"}, "model_card": {}, "state_dict": {}}, unknown)
    with pytest.raises(CheckpointError, match="unknown method"):
        load_checkpoint(unknown)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "absent.pt")


def test_param_groups_pionono_proseg():
    for method, default in (("pionono", 0.02), ("proseg", 2e-3)):
        model = make(method)
        assert [g["lr"] for g in model.param_groups(1e-4)] == [1e-4, default]
        groups = model.param_groups(1e-4, latent_lr=0.05)
        assert [g["lr"] for g in groups] == [1e-4, 0.05]
        n = sum(len(g["params"]) for g in groups)
        assert n == len(model.trainable_parameters())
    assert len(make("prob_unet").param_groups(1e-4, latent_lr=0.05)) == 1


def test_umanet_quality_split_and_annotation_uncertainty(batch):
    model = make("umanet").eval()
    s = torch.tensor([0.9, 0.1, 0.5, 0.7])
    has = torch.tensor([True, True, True, False])
    assert model.split_high(s, has).tolist() == [True, False, True, False]
    u = model.annotation_uncertainty(batch["image"], batch["masks"])
    assert u.shape == batch["masks"].shape and float(u.min()) >= 0 and float(u.max()) <= 1
    assert not math.isnan(float(model.uncertainty(batch["image"])["quality"].mean()))


@pytest.mark.parametrize(
    "method,extra",
    [
        ("proseg", {"sample_z": "rater_sample", "recon_branch": True, "loss": {"recon_weight": 0.1}}),
        ("pionono", {"personalize_mode": "mc", "sample_mode": "prior"}),
        ("umanet", {"loss": {"penalty_type": "linear"}, "quality": {"split": "threshold"}}),
        ("umanet", {"loss": {"penalty_type": "log"}, "backbone": {"norm": "group"}}),
        ("unet", {"target": "mean", "loss": {"type": "bce"}}),
        ("unet", {"target": "majority"}),
        ("prob_unet", {"loss": {"recon": "bce"}, "rater_sampling": "per_batch"}),
        ("dpersona", {"posterior_validity_channels": False, "heads": {"query_relu": False, "scale": True}}),
    ],
)
def test_config_options(method, extra, batch):
    model = make(method, **extra)
    out = model.loss(batch, 0)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    model.eval()
    x = batch["image"][:2]
    assert model.sample(x, 3, torch.Generator().manual_seed(0)).shape == (2, 3, 32, 32)
    assert model.personalize(x, torch.Generator().manual_seed(0)).shape == (2, 3, 32, 32)


def _one_image_seg(model, logits, masks, u, vmask):
    """UMA-Net's segmentation loss of one head on a batch treated as one group."""
    valid = vmask[:, :, 0, 0].bool()
    return model._group_loss(logits, masks, u, vmask, valid, torch.ones(masks.shape[0], dtype=torch.bool))


def test_umanet_weight_floor_keeps_foreground_in_the_loss():
    """Regression (LIDC collapse): even where U = 1 everywhere, predicting the annotation must beat
    predicting empty, so the head cannot settle on "background everywhere" and blame the annotators."""
    model = make("umanet")
    masks = torch.zeros(1, 2, 16, 16)
    masks[:, :, 6:10, 6:10] = 1
    vmask = torch.ones(1, 2, 1, 1)
    u = torch.ones_like(masks)
    right = _one_image_seg(model, torch.where(masks[:, :1] > 0, 8.0, -8.0), masks, u, vmask)
    empty = _one_image_seg(model, torch.full((1, 1, 16, 16), -8.0), masks, u, vmask)
    assert float(empty - right) > 0.3
    model.config["loss"]["min_weight"] = 0.0  # the unfloored weight 1 - U: nothing distinguishes the two
    right = _one_image_seg(model, torch.where(masks[:, :1] > 0, 8.0, -8.0), masks, u, vmask)
    empty = _one_image_seg(model, torch.full((1, 1, 16, 16), -8.0), masks, u, vmask)
    assert abs(float(empty - right)) < 1e-3


def test_umanet_empty_annotations_do_not_pull_the_head_to_empty():
    """Regression (LIDC collapse): on a slice where only one of four raters drew the lesion, raising
    the head's shared bias from a near-empty prediction must lower the loss. A per-annotation Dice on
    the three EMPTY annotations used to win and drive every logit to about -11."""
    model = make("umanet")
    masks = torch.zeros(1, 4, 64, 64)
    masks[0, 3, 20:27, 20:27] = 1
    bias = torch.tensor(-6.0, requires_grad=True)
    logits = torch.where(masks[:, 3:] > 0, 2.0, -2.0) + bias  # image-aware head + shared bias
    loss = _one_image_seg(model, logits, masks, torch.zeros_like(masks), torch.ones(1, 4, 1, 1))
    (grad,) = torch.autograd.grad(loss, bias)
    assert float(grad) < 0


def test_dpersona_rec_bce_weight_adds_a_scaled_per_pixel_term(batch):
    """``loss.rec_bce_weight`` adds w x (pixel-mean BCE of the reconstruction) to stage I's rec term:
    0 is the paper's GDL alone, and the added part grows linearly with w (same weights and draws)."""
    recs = []
    for w in (0.0, 1.0, 2.0):
        model = make("dpersona", loss={"rec_bce_weight": w})
        torch.manual_seed(1)
        recs.append(float(model.loss(batch)["rec"]))
    assert recs[1] > recs[0]
    assert recs[2] - recs[0] == pytest.approx(2 * (recs[1] - recs[0]), rel=1e-4)
