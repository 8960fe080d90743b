"""Inference engine (Qt-free): devices, seeds, batching, slices/ROIs, intensity, CUDA fallback, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_multirater.datasets.phantom import make_phantom_case
from napari_multirater.inference import (
    LIDC_HU_MAPPING,
    ROI,
    InferenceEngine,
    InputNormalizer,
    ModelLoadError,
    available_models,
    find_model,
    hu_to_lidc_uint8,
    resolve_device,
    run_with_fallback,
)
from napari_multirater.io import Geometry, read_image, write_image
from napari_multirater.progress import Progress, run_to_completion
from src_training.precision import FP32
from src_training.tools.testing import make_tiny_checkpoint, tiny_card

torch.set_num_threads(2)
DIVERSE = ("prob_unet", "dpersona", "proseg", "pionono")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {m: make_tiny_checkpoint(d / f"{m}.pt", m) for m in (*DIVERSE, "umanet", "unet")}


@pytest.fixture(scope="module")
def engines(ckpts):
    return {m: InferenceEngine.load(p, device="cpu") for m, p in ckpts.items()}


@pytest.fixture(scope="module")
def case3():
    return make_phantom_case(0, ndim=3)


@pytest.fixture(scope="module")
def case2():
    return make_phantom_case(1, ndim=2)


# ------------------------------------------------------------------ layering
def test_core_does_not_import_the_napari_layer():
    """The Qt-free engine gets Progress from the core module; the napari side re-exports it."""
    import subprocess
    import sys

    code = (
        "import sys, napari_multirater.inference.engine, napari_multirater.inference.predict_cli; "
        "bad = [m for m in sys.modules if m.startswith(('napari_multirater._napari', 'napari_multirater.widgets', "
        "'napari.', 'qtpy')) or m == 'napari']; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from napari_multirater._napari import workers

    assert workers.Progress is Progress and workers.run_to_completion is run_to_completion
    assert callable(workers.threads_disabled)


# ------------------------------------------------------------------ devices
def test_resolve_device(monkeypatch):
    dev, msg = resolve_device("cpu")
    assert dev.type == "cpu" and msg.startswith("cpu")
    with pytest.raises(ValueError):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dev, msg = resolve_device("cuda")
    assert dev.type == "cpu" and "not available" in msg
    assert resolve_device("auto")[0].type in ("cpu", "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    dev, msg = resolve_device("auto")
    assert dev.type == "cuda" and "Fake GPU" in msg


def test_run_with_fallback_only_for_gpu_errors():
    seen = []

    def fn(dev):
        if dev.type == "cuda":
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        return dev.type

    result, used, warning = run_with_fallback(fn, torch.device("cuda"), on_fallback=seen.append)
    assert result == "cpu" and used.type == "cpu" and "falling back to CPU" in warning and seen == [warning]
    with pytest.raises(ValueError):
        run_with_fallback(lambda dev: (_ for _ in ()).throw(ValueError("bad input")), torch.device("cuda"))
    with pytest.raises(RuntimeError):
        run_with_fallback(lambda dev: (_ for _ in ()).throw(RuntimeError("CUDA oom")), torch.device("cpu"))


def test_engine_cuda_fallback(engines, case2, monkeypatch):
    eng = engines["prob_unet"]
    ref = eng.sample(case2.image, 4, seed=3)
    orig_prepare, orig_sample = eng._prepare, eng.model.sample
    monkeypatch.setattr(eng, "_prepare", lambda images, dev, size=None: orig_prepare(images, torch.device("cpu"), size))
    monkeypatch.setattr(eng.model, "to", lambda *a, **k: eng.model)

    def cuda_failing_sample(x, n, generator=None):
        if eng.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return orig_sample(x, n, generator)

    monkeypatch.setattr(eng.model, "sample", cuda_failing_sample)
    monkeypatch.setattr(eng, "precision", FP32)  # the fake "cuda" attempt runs without autocast
    monkeypatch.setattr(eng, "warnings", [])
    monkeypatch.setattr(eng, "device", torch.device("cuda"))
    out = eng.sample(case2.image, 4, seed=3)
    assert eng.device.type == "cpu" and "fell back" in eng.device_message
    assert len(eng.warnings) == 1 and "falling back to CPU" in eng.warnings[0]
    np.testing.assert_array_equal(out, ref)


# ------------------------------------------------------------------ loading
def test_load_errors_and_registry(tmp_path, ckpts, monkeypatch):
    with pytest.raises(ModelLoadError, match="not found"):
        InferenceEngine.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError):
        InferenceEngine.load(bad)
    with pytest.raises(ModelLoadError, match="no model named"):
        InferenceEngine.load("no-such-model")
    monkeypatch.setenv("NAPARI_MULTIRATER_MODELS", str(ckpts["unet"].parent))
    assert "umanet" in available_models() and find_model("umanet.pt") == ckpts["umanet"]
    eng = InferenceEngine.load("umanet", device="cpu")
    assert eng.name == "umanet" and eng.rater_names == ["tight", "generous", "smooth", "misses_faint"]
    s = eng.summary()
    assert s["method"] == "umanet" and "window [-1000, 400]" in s["intensity"] and s["device"].startswith("cpu")


# ------------------------------------------------------------------ seeds, batching, slices
@pytest.mark.parametrize("method", DIVERSE)
def test_seeded_reproducibility(engines, case2, method):
    eng = engines[method]
    a = eng.sample(case2.image, 6, seed=1)
    assert a.shape == (6, *case2.image.shape) and a.dtype == np.float32
    np.testing.assert_array_equal(a, eng.sample(case2.image, 6, seed=1))
    assert np.abs(a - eng.sample(case2.image, 6, seed=2)).max() > 1e-4
    np.testing.assert_array_equal(eng.personas(case2.image, seed=5), eng.personas(case2.image, seed=5))


def test_deterministic_model_ignores_seed(engines, case2):
    eng = engines["unet"]
    np.testing.assert_array_equal(eng.sample(case2.image, 3, seed=1), eng.sample(case2.image, 3, seed=2))


@pytest.mark.parametrize("method", ["dpersona", "umanet"])
def test_batched_equals_per_slice(engines, case3, method):
    eng = engines[method]
    kw = dict(samples=3, personas=True, uncertainty=True, seed=7)
    full = eng.predict_volume(case3.image, case3.geometry, batch_slices=8, **kw)
    single = eng.predict_volume(case3.image, case3.geometry, batch_slices=1, **kw)
    np.testing.assert_array_equal(full.samples, single.samples)
    np.testing.assert_allclose(full.mean_prob, single.mean_prob, atol=1e-5)
    for k in full.uncertainty:
        np.testing.assert_allclose(full.uncertainty[k], single.uncertainty[k], atol=1e-5)
    z = 11
    cur = eng.predict_volume(case3.image, case3.geometry, slice_index=z, **kw)
    assert cur.samples.shape == full.samples.shape and cur.region[0] == slice(z, z + 1)
    np.testing.assert_array_equal(cur.samples[:, z], full.samples[:, z])
    assert cur.samples[:, :z].max() == 0 and cur.mean_prob[z + 1 :].max() == 0
    for r in eng.rater_names:
        np.testing.assert_array_equal(cur.personas[r][z], full.personas[r][z])
    # a 2D run equals the batched 2D API (same slice key 0)
    img = case3.image[0]
    res2 = eng.predict_volume(img, samples=3, seed=7)
    assert res2.samples.shape == (3, *img.shape)
    np.testing.assert_array_equal(res2.samples, (eng.sample(img, 3, seed=7) > 0.5).astype(np.uint8))


def test_uncertainty_maps(engines, case2):
    u = engines["dpersona"].uncertainty(case2.image, 8, seed=0)
    assert set(u) == {"entropy", "variance", "mutual_information", "persona_disagreement"}
    for v in u.values():
        assert v.shape == case2.image.shape and v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1
    assert np.all(u["mutual_information"] <= u["entropy"] + 1e-6)
    um = engines["umanet"].uncertainty(case2.image, 4)
    assert {"reliability", "quality"} <= set(um) and isinstance(um["quality"], float)
    assert np.all(um["variance"] == 0)  # not diverse: identical samples


# ------------------------------------------------------------------ latent explorer, blend
def test_latent_explorer(engines, case2):
    eng = engines["prob_unet"]
    enc = eng.encode(case2.image)
    mu, sigma = eng.latent_prior(enc)
    assert mu.shape == sigma.shape == (eng.capabilities.latent_dim,) and np.all(sigma > 0)
    z = eng.latent_samples(enc, 5, seed=4)
    np.testing.assert_allclose(eng.decode(enc, z), eng.sample(case2.image, 5, seed=4), atol=1e-5)
    d, s = eng.latent_directions(enc, "principal", n=32)
    np.testing.assert_allclose(d @ d.T, np.eye(len(mu)), atol=1e-4)
    seen = []  # the worker form reports progress per chunk of decodes and gives the same result
    d2, s2 = run_to_completion(eng.iter_latent_directions(enc, "principal", n=32, chunk=8), seen.append)
    assert [p.done for p in seen] == [0, 8, 16, 24, 32] and all(p.total == 32 for p in seen)
    np.testing.assert_allclose(d2, d, atol=1e-5)
    np.testing.assert_allclose(s2, s, rtol=1e-5)
    assert np.all(np.diff(s) <= 1e-6)
    np.testing.assert_allclose(eng.latent_from_coefficients(enc, np.zeros(len(mu))), mu)
    np.testing.assert_allclose(eng.interpolate(enc, z[0], z[1], 0.0), eng.decode(enc, z[0])[0], atol=1e-6)
    assert engines["umanet"].latent_prior(engines["umanet"].encode(case2.image)) is None


def test_blend(engines, case2):
    b = engines["pionono"].blend(case2.image, 0, 1, 0.5)
    assert b.shape == case2.image.shape and 0 <= b.min() <= b.max() <= 1
    with pytest.raises(ValueError, match="cannot blend"):
        engines["prob_unet"].blend(case2.image, 0, 1, 0.5)


# ------------------------------------------------------------------ regions of interest
def test_roi_rect_zero_outside(engines, case3):
    eng = engines["prob_unet"]
    res = eng.predict_volume(
        case3.image, case3.geometry, samples=2, uncertainty=True, roi=ROI.rect((5, 9), 10, 20, 50, 70)
    )
    assert res.region == (slice(5, 9), slice(10, 50), slice(20, 70))
    inside = np.zeros(case3.image.shape, bool)
    inside[res.region] = True
    assert res.mean_prob[~inside].max() == 0 and res.mean_prob[inside].min() > 0
    assert res.samples[:, ~inside].max() == 0 and res.samples.shape == (2, *case3.image.shape)
    assert res.uncertainty["entropy"][~inside].max() == 0
    assert res.geometry is case3.geometry


def test_roi_point_uses_geometry(engines, case3):
    rot = np.diag([1.0, -1.0, 1.0])  # y flipped (x, y, z order)
    g = case3.geometry
    geo = Geometry(g.spacing, g.origin, tuple(rot.ravel()))
    centre = geo.index_to_physical((12, 48, 48))
    roi = ROI.point(centre, 14.0)
    assert roi.resolve(case3.image.shape, geo) == (slice(7, 17), slice(38, 58), slice(38, 58))
    res = engines["umanet"].predict_volume(case3.image, geo, samples=1, roi=roi)
    assert res.mean_prob[:7].max() == 0 and res.mean_prob[7:17, 38:58, 38:58].min() > 0
    with pytest.raises(ValueError, match="outside"):
        ROI.rect(3, 200, 200, 250, 250).resolve(case3.image.shape)


def test_roi_resampled_to_target_spacing(engines, case3):
    eng = engines["proseg"]
    roi = ROI.rect(12, 16, 16, 80, 80)
    res = eng.predict_volume(case3.image, case3.geometry, samples=2, personas=True, roi=roi, target_spacing_mm=1.4)
    assert res.info["model_size"] == (32, 32)  # 64 px * 0.7 mm / 1.4 mm
    sub = res.samples[:, 12, 16:80, 16:80]
    assert set(np.unique(sub)) <= {0, 1} and res.samples[:, 12].sum() == sub.sum()
    assert res.mean_prob[12, 16:80, 16:80].shape == (64, 64) and res.mean_prob[11].max() == 0


def _disc_image(shape=(128, 160), centre=(50, 80), radius=14.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    return np.where(disc, 100.0, -1000.0).astype(np.float32), disc


def _input_following_sampler(eng, monkeypatch, seen):
    """Make ``model.sample`` return logits that threshold its (normalised) input, recording the
    tile shape the model saw; the real model still runs on the tile."""
    orig = eng.model.sample

    def sample(x, n, generator=None):
        seen.append(tuple(x.shape))
        orig(x, n, generator)
        return ((x[:, :1] - 0.4) * 40).expand(x.shape[0], int(n), *x.shape[-2:])

    monkeypatch.setattr(eng.model, "sample", sample)


def test_roi_resampled_to_card_pixel_size_and_pasted_back(tmp_path, monkeypatch):
    """Issue 5 §1: an ROI is cropped, resampled to the model's training resolution (card
    ``input.pixel_size_mm``) and the result put back on the image's native grid."""
    card = tiny_card("prob_unet", input={"channels": 1, "pad_multiple": 16, "pixel_size_mm": [0.7, 0.7]})
    eng = InferenceEngine.load(make_tiny_checkpoint(tmp_path / "px.pt", "prob_unet", card=card), device="cpu")
    assert eng.target_spacing_mm == (0.7, 0.7) and "0.7 x 0.7 mm" in eng.summary()["resolution"]
    image, disc = _disc_image()
    geo = Geometry((0.35, 0.35), (5.0, -3.0), (1.0, 0.0, 0.0, 1.0))
    seen = []
    _input_following_sampler(eng, monkeypatch, seen)
    roi = ROI.rect(None, 20, 30, 84, 126)  # 64 x 96 px at 0.35 mm -> 32 x 48 px at 0.7 mm
    res = eng.predict_volume(image, geo, samples=2, roi=roi)
    assert seen == [(1, 1, 32, 48)] and res.info["model_size"] == (32, 48)
    assert res.region == (slice(20, 84), slice(30, 126)) and res.mean_prob.shape == image.shape
    inside = np.zeros(image.shape, bool)
    inside[20:84, 30:126] = True
    assert res.mean_prob[~inside].max() == 0 and res.samples[:, ~inside].max() == 0
    pred, truth = res.mean_prob > 0.5, disc & inside  # at the disc, on the native grid
    assert truth.sum() > 400 and (pred & truth).sum() / (pred | truth).sum() > 0.9
    # explicit "native", no geometry (spacing unknown) and a card with pixel_size_mm null: native size
    seen.clear()
    eng.predict_volume(image, geo, samples=1, roi=roi, target_spacing_mm="native")
    eng.predict_volume(image, None, samples=1, roi=roi)
    assert seen == [(1, 1, 64, 96)] * 2
    null_card = tiny_card("unet", input={"channels": 1, "pad_multiple": 16, "pixel_size_mm": None})
    lidc_like = InferenceEngine.load(make_tiny_checkpoint(tmp_path / "null.pt", "unet", card=null_card), device="cpu")
    assert lidc_like.target_spacing_mm is None
    assert lidc_like.predict_volume(image, geo, samples=1, roi=roi).info["model_size"] is None
    with pytest.raises(ValueError, match="pixel_size_mm"):
        InferenceEngine(eng.model, {**card, "input": {"pixel_size_mm": [0.7, -1]}}, device="cpu")


def test_non_finite_input_is_refused_with_a_clear_error(engines, ckpts, case2, case3, tmp_path, capsys):
    from napari_multirater.cli import main
    from napari_multirater.inference.engine import NonFiniteInputError

    eng = engines["prob_unet"]
    img = case2.image.astype(np.float32)
    img[10:15, 20:25] = np.nan
    img[0, 0] = np.inf
    with pytest.raises(NonFiniteInputError, match=r"26 non-finite voxel\(s\).*25 NaN, 1 inf"):
        eng.predict_volume(img, case2.geometry, samples=2, source="scan.nrrd")
    with pytest.raises(NonFiniteInputError, match="scan.nrrd"):
        eng.predict_volume(img, case2.geometry, samples=2, source="scan.nrrd")
    for call in (lambda: eng.sample(img, 2), lambda: eng.encode(img), lambda: engines["pionono"].blend(img, 0, 1, 0.5)):
        with pytest.raises(NonFiniteInputError, match="non-finite"):
            call()
    # a region of interest away from the bad voxels runs (and gives finite output)
    res = eng.predict_volume(img, case2.geometry, samples=2, roi=ROI.rect(None, 40, 40, 80, 80))
    assert np.isfinite(res.mean_prob).all()
    vol = case3.image.astype(np.float32)
    vol[7, 30:35, 30:35] = np.nan
    src = tmp_path / "nan.nrrd"
    write_image(src, vol, case3.geometry)
    rc = main(["predict", "--checkpoint", str(ckpts["prob_unet"]), "--image", str(src), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "25 non-finite" in err and str(src) in err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------ intensity
def test_intensity_mapping_rules():
    lo, hi = LIDC_HU_MAPPING["fixed_hu_lo"], LIDC_HU_MAPPING["fixed_hu_hi"]
    np.testing.assert_allclose(hu_to_lidc_uint8([lo, hi, -3000, 3000]), [0, 255, 0, 255], atol=1e-3)
    a = np.stack([np.linspace(-1000, 1000, 64).reshape(8, 8), np.linspace(-500, 0, 64).reshape(8, 8)])
    mm = hu_to_lidc_uint8(a, "minmax")
    assert mm[0].min() == 0 and mm[0].max() == 255 and mm[1].min() == 0 and mm[1].max() == 255
    phantom = InputNormalizer.from_card(tiny_card("unet"))
    np.testing.assert_allclose(phantom(np.array([-1000.0, -300.0, 400.0])), [0, 0.5, 1])
    lidc_card = tiny_card("unet", window=(0, 255), attribution="Trained on LIDC-IDRI ...")
    lidc = InputNormalizer.from_card(lidc_card)
    assert lidc.model_units == "lidc_uint8" and lidc.needs_lidc_mapping(np.zeros(3, np.int16))
    np.testing.assert_allclose(lidc(np.array([lo, hi], np.float32)), [0, 1], atol=1e-5)
    raw = np.array([0, 51, 255], np.uint8)  # uint8 input = already LIDC units
    np.testing.assert_allclose(lidc(raw), [0, 0.2, 1], atol=1e-6)
    assert "HU -> LIDC 8-bit" in lidc.describe(np.zeros(2, np.int16))
    with pytest.raises(ValueError):
        InputNormalizer.from_card({"intensity": {}})


def test_intensity_mapping_reproduces_lidc_shards(shared_data):
    """HU of LIDC-IDRI-0006 (DICOM) -> 8-bit scale vs the shard crops located by NCC."""
    from src_training.tools.fit_lidc_intensity import _best_match, _shard_crops

    crops = _shard_crops(shared_data / "lidc-slices", ["LIDC-IDRI-0006"])
    series = shared_data / "lidc-ct" / "LIDC-IDRI-0006" / "series"
    if "LIDC-IDRI-0006" not in crops or not series.is_dir():
        pytest.skip("LIDC-IDRI-0006 slices or DICOM series not in the shared data")
    vol = read_image(series)[0].astype(np.float32)
    imgs = crops["LIDC-IDRI-0006"][0]
    for u8 in (imgs[2], imgs[7]):
        ncc, z, y, x = _best_match(vol, u8, crop_in_big=True)
        assert ncc > 0.999
        hu = vol[z, y : y + 128, x : x + 128]
        exact = np.round(hu_to_lidc_uint8(hu, "minmax"))
        assert np.abs(exact - u8).max() <= 1 and np.mean(exact == u8) > 0.99
        err = np.abs(hu_to_lidc_uint8(hu, "fixed") - u8)
        assert np.median(err) < 3 and np.percentile(err, 95) < 12


# ------------------------------------------------------------------ predict CLI
@pytest.mark.parametrize("ndim,fmt", [(3, "nii.gz"), (2, "nrrd"), (3, "nrrd")])
def test_predict_cli_writes_outputs_with_geometry(tmp_path, ckpts, ndim, fmt, capsys):
    from napari_multirater.cli import main

    case = make_phantom_case(0, ndim=ndim)
    src = tmp_path / f"img.{fmt}"
    write_image(src, case.image, case.geometry)
    out = tmp_path / "out"
    roi = ["--roi", "4,10,10,12,60,70"] if ndim == 3 else ["--roi-point", "0,0", "--roi-size-mm", "30"]
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(ckpts["dpersona"]),
            "--image",
            str(src),
            "--out",
            str(out),
            "--samples",
            "2",
            "--personas",
            "--format",
            fmt,
            "--seed",
            "3",
            *roi,
        ]
    )
    assert rc == 0
    ext = "." + fmt
    expected = {f"sample_0{i}{ext}" for i in range(2)} | {
        f"persona_{r}{ext}" for r in ("tight", "generous", "smooth", "misses_faint")
    }
    expected |= {f"mean_prob{ext}"} | {
        f"uncertainty_{k}{ext}" for k in ("entropy", "variance", "mutual_information", "persona_disagreement")
    }
    assert expected <= {p.name for p in out.iterdir()}
    for name in (f"sample_00{ext}", f"mean_prob{ext}"):
        arr, geo, _ = read_image(out / name)
        assert arr.shape == case.image.shape and geo.matches(case.geometry)
    err = capsys.readouterr().err
    assert "predict: 0/" in err and "wrote" in err  # one progress line per chunk (not a TTY)


def test_predict_cli_errors(tmp_path, ckpts):
    from napari_multirater.cli import main

    case = make_phantom_case(0, ndim=2)
    src = tmp_path / "img.nii.gz"
    write_image(src, case.image, case.geometry)
    assert (
        main(["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--image", str(src), "--out", str(tmp_path / "o")])
        == 2
    )
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(ckpts["unet"]),
                "--image",
                str(tmp_path / "nope.nrrd"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    with pytest.raises(SystemExit) as info:  # refused by the parser (exit code 2), before any work
        main(
            [
                "predict",
                "--checkpoint",
                str(ckpts["unet"]),
                "--image",
                str(src),
                "--out",
                str(tmp_path / "o"),
                "--roi",
                "1,2,3",
            ]
        )
    assert info.value.code == 2


def test_model_card_summary_prefers_the_full_val_evaluation_over_the_selection_numbers():
    from napari_multirater.inference.model_info import plain_metrics

    selection = {"ged": 0.34, "dice_soft": 0.62, "dice_match": 0.78, "n_images": 600}
    full = {"ged": 0.38, "dice_soft": 0.59, "dice_match": 0.71, "n_images": 1552}
    shown = plain_metrics({"val_metrics": selection, "evaluation": full})
    assert "0.71" in shown and "0.78" not in shown and "all 1552 val images" in shown
    only_selection = plain_metrics({"val_metrics": selection})
    assert "0.78" in only_selection and "the selection subset of 600 val images" in only_selection
    held_out = dict(full, split="all", data="/runs/phantom_test", n_images=80)
    assert "80 images of phantom_test (split all)" in plain_metrics({"evaluation": held_out})
    assert plain_metrics({}) == "n/a"
