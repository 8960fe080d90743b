"""``multirater bench`` sections 1-2b: sampling latency against the naive loop, interactive
operations, a volume through the engine."""

from __future__ import annotations

import numpy as np

from .bench_common import Settings, _log, _model_input, measure, measure_pair, model_info
from .bench_inputs import centred_box, image_crop


def bench_sampling(engine, device, s: Settings) -> dict:
    """Section 1: vectorized ``sample`` vs the naive loop on one image, N in ``s.sample_ns``."""
    import torch

    from src_training.precision import autocast

    from .naive_sampling import sample_naive

    model = engine.model.to(device).eval()
    x = _model_input(engine, image_crop(s.image_size), device)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - identical draws for both variants
    has_naive = model_info(engine, None)["has_naive_loop"]
    out = {"image": list(x.shape), "precision": engine.precision.describe(), "rows": []}
    with torch.inference_mode(), autocast(engine.precision, device):
        a, b = model.sample(x, 10, gen()), sample_naive(model, x, 10, gen())
        out["check_n10_max_abs_diff"] = float((a - b).abs().max())
        out["encode"] = measure(lambda: model.encode(x), s.repeats, s.warmup, device)
        if hasattr(model, "backbone"):
            out["backbone"] = measure(lambda: model.backbone(x), s.repeats, s.warmup, device)
        for n in s.sample_ns:
            vec = lambda: model.sample(x, n, gen())  # noqa: E731
            if has_naive:
                v, nv = measure_pair(
                    vec, lambda: sample_naive(model, x, n, gen()), s.repeats, s.warmup, device, s.naive_budget_s
                )
            else:
                v, nv = measure(vec, s.repeats, s.warmup, device), None
            row = {"n": n, "vectorized": v, "naive": nv, "speedup": nv["median"] / v["median"] if nv else None}
            out["rows"].append(row)
            _log(
                f"{device.type} sample N={n}: {v['median']:.1f} ms"
                + (f", naive {nv['median']:.1f} ms ({row['speedup']:.1f}x)" if nv else "")
            )
    rows = {r["n"]: r for r in out["rows"]}
    if 1 in rows and 100 in rows:
        t1, t100 = rows[1]["vectorized"]["median"], rows[100]["vectorized"]["median"]
        out["n100_over_n1"] = t100 / t1
        out["marginal_ms_per_sample"] = (t100 - t1) / 99.0
    return out


def bench_interactive(engine, device, s: Settings) -> dict:
    """Section 2a: one latent re-decode, personas of all K raters, encode, engine uncertainty."""
    import torch

    from src_training.models import dpersona_stage2_from_stage1
    from src_training.precision import autocast

    model = engine.model.to(device).eval()
    crop = image_crop(s.image_size)
    x = _model_input(engine, crop, device)
    reps = s.repeats
    out = {}
    with torch.inference_mode(), autocast(engine.precision, device):
        ctx = model.encode(x)
        if model.capabilities.latent_dim > 0:
            z = model.latent_prior(ctx)[0][:, None].contiguous()
            out["decode_one"] = measure(lambda: model.decode(ctx, z), reps * 2, s.warmup, device)
        out["personalize"] = measure(
            lambda: model.personalize(x, torch.Generator().manual_seed(1)), reps, s.warmup, device
        )
        out["personalize_k"] = model.num_raters
        if model.method == "dpersona" and int(model.config.get("stage", 1)) == 1:
            m2 = dpersona_stage2_from_stage1(model.state_dict(), model.config).to(device).eval()
            out["personalize_stage2"] = measure(
                lambda: m2.personalize(x, torch.Generator().manual_seed(1)), reps, s.warmup, device
            )
            out["personalize_stage2_n_infer"] = int(m2.config["heads"]["n_infer"])
            del m2
    if engine.capabilities.latent_dim > 0:
        enc = engine.encode(crop)
        zz = engine.latent_samples(enc, 1, seed=0)
        out["engine_decode_one"] = measure(lambda: engine.decode(enc, zz), reps * 2, s.warmup, device)
    out["engine_uncertainty_n16"] = measure(lambda: engine.uncertainty(crop, 16, seed=0), max(3, reps // 4), 1, device)
    _log(
        f"{device.type} interactive: "
        + ", ".join(f"{k} {v['median']:.1f} ms" for k, v in out.items() if isinstance(v, dict))
    )
    return out


def bench_volume(engine, device, s: Settings, volume: np.ndarray) -> dict:
    """Section 2b: the engine on a CT-like volume, whole slices and a centred ROI."""
    from napari_multirater.inference.roi import ROI
    from napari_multirater.io.geometry import Geometry

    geom = Geometry((0.7, 0.7, 2.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))  # x, y, z mm
    n = s.volume_samples
    box = centred_box(volume.shape, s.roi_shape)
    mid = volume.shape[0] // 2
    warm = engine.predict_volume(volume, geom, samples=n, slice_index=mid)  # warm-up (one slice)
    out = {
        "samples": n,
        "batch_slices": 8,
        "precision": engine.precision.describe(),
        "spacing_xyz_mm": list(geom.spacing),
        "model_size": warm.info.get("model_size"),
    }
    for key, roi, reps in (("whole", None, s.volume_repeats), ("roi", ROI.box(*box), max(1, min(3, s.repeats)))):
        st = measure(lambda: engine.predict_volume(volume, geom, samples=n, roi=roi), reps, 0, device, unit="s")
        shape = list(volume.shape) if roi is None else [box[3] - box[0], box[4] - box[1], box[5] - box[2]]
        out[key] = {
            "region": shape,
            "box": None if roi is None else list(box),
            "seconds": st,
            "slices_per_s": shape[0] / st["median"],
            "ms_per_slice": 1000.0 * st["median"] / shape[0],
        }
        _log(f"{device.type} volume {key} {shape}: {st['median']:.2f} s ({out[key]['slices_per_s']:.2f} slices/s)")
    return out
