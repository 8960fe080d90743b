"""Precision option (auto | fp32 | bf16): resolution per device, fp32 islands under bf16 autocast,
bf16 training and inference that stay close to fp32 (CPU, tiny models, no Qt)."""

import pytest
import torch

from src_training import losses as L
from src_training.models.fcomb import Fcomb
from src_training.models.gaussian import ConvGaussian
from src_training.precision import FP32, autocast, prepare_input, prepare_model, resolve_precision
from tests.test_models import IDS, VARIANTS, disk_batch, make

torch.set_num_threads(1)
BF16 = resolve_precision("bf16", "cpu")


def test_resolve_precision_choices():
    assert resolve_precision("fp32", "cpu") == resolve_precision("FP32", "cpu")
    assert resolve_precision("fp32", "cpu").dtype is None
    assert BF16.dtype == torch.bfloat16 and BF16.channels_last
    auto = resolve_precision("auto", "cpu")
    assert auto.name in ("fp32", "bf16") and "auto" in auto.reason
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match="not supported on mps"):
        resolve_precision("bf16", "mps")


def test_losses_and_latents_stay_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=g)
    target = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    gauss = ConvGaussian(1, (8, 16), latent_dim=4, convs_per_block=1)
    x = torch.rand(2, 1, 16, 16, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gdl = L.generalized_dice_loss(torch.sigmoid(logits[:, :1].bfloat16()), target)
        bound = L.bound_loss(logits.bfloat16(), target.expand(-1, 3, -1, -1))
        mu, sigma = gauss(x)
        kl = L.kl_gaussian_diag(mu, sigma, torch.zeros_like(mu), torch.ones_like(sigma))
    for t in (gdl, bound, mu, sigma, kl):
        assert t.dtype == torch.float32
    ref = L.bound_loss(logits.bfloat16().float(), target.expand(-1, 3, -1, -1))
    assert float(bound) == pytest.approx(float(ref), abs=1e-6)
    mu32, sigma32 = gauss(x)
    # the encoder runs in bf16, the (mu, sigma) head in fp32: close, not identical
    assert torch.allclose(mu, mu32, atol=0.05) and torch.allclose(sigma, sigma32, rtol=0.05)


def test_fcomb_codes_fp32_and_chunked_path_matches_autograd_under_autocast():
    torch.manual_seed(0)
    head = Fcomb(8, 3, hidden=8).eval()
    feats, z = torch.randn(1, 8, 20, 20), torch.randn(1, 5, 3)
    ref = head(feats, z)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = head(feats, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slow = head(feats, z)
    assert fast.dtype == torch.float32 and slow.dtype == torch.float32
    assert torch.allclose(fast, ref, atol=0.05) and torch.allclose(slow.detach(), ref, atol=0.05)


@pytest.mark.parametrize("method,stage", VARIANTS, ids=IDS)
def test_bf16_training_step_and_inference_track_fp32(method, stage):
    batch = disk_batch(n=4, size=32)
    outs = {}
    for prec in (FP32, BF16):
        model = prepare_model(make(method, stage, seed=0), prec).train()
        b = dict(batch, image=prepare_input(batch["image"], prec))
        torch.manual_seed(1)
        with autocast(prec, "cpu"):
            losses = model.loss(b, 0)
        assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])
        losses["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        model.eval()
        with torch.no_grad(), autocast(prec, "cpu"):
            probs = torch.sigmoid(model.personalize(b["image"], torch.Generator().manual_seed(2)).float())
        outs[prec.name] = (float(losses["loss"].detach()), probs)
    (l32, p32), (l16, p16) = outs["fp32"], outs["bf16"]
    assert l16 == pytest.approx(l32, rel=0.05, abs=0.02)
    agree = ((p32 > 0.5) == (p16 > 0.5)).float().mean().item()
    assert agree > 0.97, f"bf16 and fp32 masks agree on only {agree:.3f} of pixels"


@pytest.mark.parametrize("size,n,grouped", [(40, 3, False), (8, 7, False), (40, 5, True), (8, 6, True)])
def test_fused_bf16_head_matches_fp32(size, n, grouped):
    """The fused bf16 inference head (one sample per matmul, or several small images per chunk, with
    ProSeg-style grouped projections) gives the fp32 logits up to bf16 rounding."""
    torch.manual_seed(0)
    head = Fcomb(8, 3, hidden=8).eval()
    feats = torch.randn(2, 4 if grouped else 1, 8, size, size)
    z = torch.randn(2, n, 3)
    index = torch.randint(0, 4, (2, n)) if grouped else None
    with torch.no_grad():
        proj = head.project(feats)
        ref = head.decode(proj if grouped else proj[:, 0], z, (size, size), index=index)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused = head.decode(proj if grouped else proj[:, 0], z, (size, size), index=index)
    assert fused.dtype == torch.float32 and fused.shape == ref.shape
    assert torch.allclose(fused, ref, atol=0.05, rtol=0.02), float((fused - ref).abs().max())


@pytest.mark.parametrize("method", ["prob_unet", "proseg", "pionono"])
def test_bf16_sampling_is_seeded(method):
    """Within one precision the same seed gives the same samples (bf16 adds no randomness)."""
    model = prepare_model(make(method, 1, seed=0), BF16).eval()
    x = prepare_input(disk_batch(n=2, size=32)["image"], BF16)
    with torch.no_grad(), autocast(BF16, "cpu"):
        a = model.sample(x, 5, torch.Generator().manual_seed(3))
        b = model.sample(x, 5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
