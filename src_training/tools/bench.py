"""``multirater bench``: speed and memory benchmark of one model on this machine (not a test).

Everything is measured in one run, on one machine, with the thread count and machine facts recorded:

1. sampling latency of one 128x128 image for N = 1, 10, 100, 500 samples: ``model.sample``
   (backbone + prior once, all N decoded in one batched call) against :func:`~src_training.tools.naive_sampling.sample_naive`
   (the reference per-sample loop, same random draws) on the same model, interleaved run by run;
2. one latent-explorer re-decode, the per-persona output of all K raters, and through the inference
   engine a CT-like 64x512x512 volume slice by slice (whole slices, then a centred 32x128x128 ROI);
3. one training step (``Trainer.step``: forward + backward + Adam step) per method at batch 12 on 128x128, each with
   its compact default config from ``src_training/configs`` (D-Persona stage II too);
4. the process's peak resident memory after each section.

Without ``--checkpoint`` a freshly built compact D-Persona stage I (random weights) is timed; the
output says so. Timings are medians with p10/p90 over ``--repeats`` runs after warm-up runs (CUDA is
synchronized around every timed call). ``--out DIR`` writes ``bench.json`` and ``bench.md``; the
markdown is also printed. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

SCHEMA = "multirater-bench/1"
SAMPLE_NS = (1, 10, 100, 500)
TRAIN_CONFIGS = ("unet", "prob_unet", "dpersona", "dpersona_stage2", "proseg", "umanet", "pionono")
ANCHORS = {
    "source": "reference D-Persona code (Python per-sample loop), same 2-core CPU",
    "sample_n10_ms": 110.0,
    "sample_n100_ms": 515.0,
    "backbone_forward_ms": 57.0,
    "dpersona_stage1_train_step_s": 3.7,
}
TARGETS = {
    "n100_over_n1_max": 3.0,  # sampling N=100 costs at most 3x N=1
    "speedup_n100_min": 8.0,  # vectorized at least 8x faster than the naive loop at N=100
    "marginal_ms_max": 0.06,  # (N=100 - N=1) / 99 at 128x128
    "decode_ms_max": 10.0,  # one latent-explorer re-decode
    "volume_whole_s_max": 8.0,  # 64x512x512 at N=8 samples per slice
}
HU_WINDOW = (-1000.0, 400.0)


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    quick: bool = False
    repeats: int = 20
    warmup: int = 2
    image_size: int = 128
    sample_ns: tuple = SAMPLE_NS
    naive_budget_s: float = 20.0  # per (device, N): the naive loop gets fewer (>= 3) runs past this
    volume_shape: tuple = (64, 512, 512)
    roi_shape: tuple = (32, 128, 128)
    volume_samples: int = 8
    volume_repeats: int = 1
    train_batch: int = 12
    train_size: int = 128
    train_steps: int = 5
    train_warmup: int = 2
    train_configs: tuple = TRAIN_CONFIGS

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            quick=True,
            repeats=3,
            warmup=1,
            image_size=64,
            sample_ns=(1, 10, 100),
            naive_budget_s=2.0,
            volume_shape=(4, 128, 128),
            roi_shape=(2, 32, 32),
            volume_samples=2,
            train_batch=2,
            train_size=64,
            train_steps=2,
            train_warmup=1,
        )

    @classmethod
    def from_args(cls, args) -> Settings:
        s = cls.quick_settings() if args.quick else cls()
        if args.image_size:
            s.image_size = 16 * max(1, round(args.image_size / 16))
        if args.repeats is not None:
            s.repeats = max(1, int(args.repeats))
        if args.volume_samples is not None:
            s.volume_samples = int(args.volume_samples)
        if args.train_configs:
            s.train_configs = tuple(c.strip() for c in args.train_configs.split(",") if c.strip())
        return s


# ----------------------------------------------------------------------------- timing helpers
def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def _stats(seconds: list[float], unit: str = "ms") -> dict:
    scale = 1000.0 if unit == "ms" else 1.0
    v = np.asarray(seconds, dtype=float) * scale
    return {
        "unit": unit,
        "median": float(np.median(v)),
        "p10": float(np.percentile(v, 10)),
        "p90": float(np.percentile(v, 90)),
        "min": float(v.min()),
        "n": int(len(v)),
    }


def _timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def measure(fn, repeats: int, warmup: int = 1, device="cpu", unit: str = "ms") -> dict:
    """Median / p10 / p90 of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return _stats([_timed(fn, device) for _ in range(max(1, repeats))], unit)


def measure_pair(fast, slow, repeats: int, warmup: int, device, slow_budget_s: float) -> tuple[dict, dict]:
    """Time two variants interleaved run by run (alternating order), so load drift on a busy
    machine hits both alike. ``slow`` stops after ``slow_budget_s`` of timed runs (at least 3);
    ``fast`` always gets all ``repeats``."""
    for _ in range(warmup):
        fast()
    slow()  # one warm-up of the slow variant
    tf, ts = [], []
    for i in range(max(1, repeats)):
        with_slow = len(ts) < 3 or sum(ts) < slow_budget_s
        order = (fast, slow) if i % 2 == 0 else (slow, fast)
        for fn in order:
            if fn is fast:
                tf.append(_timed(fast, device))
            elif with_slow:
                ts.append(_timed(slow, device))
    return _stats(tf), _stats(ts)


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- inputs
def ct_like_volume(shape=(64, 512, 512), seed: int = 0) -> np.ndarray:
    """A float32 CT-like volume in HU: air -1000 around an elliptical body (soft tissue ~40), two
    lungs (~-850) whose size changes along z, a spine (~700), a few soft-tissue nodules in the
    lungs, Gaussian noise (sigma 20 HU)."""
    z, h, w = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(
        np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij"
    )
    body = (xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1
    spine = xx**2 + (yy - 0.45) ** 2 < 0.1**2
    nodules = [
        (
            rng.uniform(0.1, 0.9),
            rng.choice([-0.4, 0.4]) + rng.uniform(-0.1, 0.1),
            rng.uniform(-0.25, 0.15),
            rng.uniform(0.03, 0.08),
        )
        for _ in range(4)
    ]
    vol = rng.standard_normal(size=(z, h, w), dtype=np.float32)
    vol *= 20.0
    for k in range(z):
        t = (k + 0.5) / z
        grow = 0.6 + 0.4 * math.sin(math.pi * t)
        sl = np.full((h, w), -1000.0, np.float32)
        sl[body] = 40.0
        for cx in (-0.4, 0.4):
            sl[((xx - cx) / (0.27 * grow)) ** 2 + ((yy + 0.05) / (0.45 * grow)) ** 2 < 1] = -850.0
        sl[spine] = 700.0
        for zc, cx, cy, r in nodules:
            rz = r**2 - (0.5 * (t - zc)) ** 2
            if rz > 0:
                sl[(xx - cx) ** 2 + (yy - cy) ** 2 < rz] = 30.0
        vol[k] += sl
    return vol


def centred_box(shape, box) -> tuple[int, ...]:
    """``(z0, y0, x0, z1, y1, x1)`` of a ``box``-sized region centred in ``shape`` (clipped)."""
    lo = [max(0, (s - min(b, s)) // 2) for s, b in zip(shape, box)]
    return (*lo, *(a + min(b, s) for a, b, s in zip(lo, box, shape)))


def image_crop(size: int = 128) -> np.ndarray:
    """A ``size`` x ``size`` HU crop around the right lung of a CT-like slice (for the 2D timings)."""
    sl = ct_like_volume((1, 512, 512), seed=1)[0]
    cy, cx = int(512 * 0.475), int(512 * 0.3)
    half = size // 2
    y0, x0 = max(0, min(512 - size, cy - half)), max(0, min(512 - size, cx - half))
    return sl[y0 : y0 + size, x0 : x0 + size]


# ----------------------------------------------------------------------------- model / engine
def compact_config(name: str) -> dict:
    """The compact default model config ``src_training/configs/<name>.json`` (no ``train``/``_*`` keys)."""
    from src_training.models import default_config

    return {k: v for k, v in default_config(name).items() if not k.startswith("_") and k != "train"}


def fresh_model(name: str, seed: int = 0):
    """A compact default model with random weights; ``dpersona_stage2`` is built from a fresh stage I."""
    import torch

    from src_training.models import build_model, dpersona_stage2_from_stage1

    torch.manual_seed(seed)
    if name == "dpersona_stage2":
        stage1 = build_model(compact_config("dpersona"))
        return dpersona_stage2_from_stage1(stage1.state_dict(), compact_config("dpersona_stage2"))
    return build_model(compact_config(name))


def default_card(method: str) -> dict:
    return {"method": method, "intensity": {"window": list(HU_WINDOW)}, "input": {"pad_multiple": 16}}


def build_engine(checkpoint: str | None, method: str = "dpersona", device="cpu"):
    """An :class:`InferenceEngine` for ``checkpoint`` (file or model name) or, without one, for a
    fresh compact default model of ``method`` (``dpersona``: stage I; ``dpersona_stage2`` works too)."""
    from napari_multirater.inference.engine import InferenceEngine

    if checkpoint:
        return InferenceEngine.load(checkpoint, device=device)
    name = method
    model = fresh_model(name)
    label = "stage I " if name == "dpersona" else ""
    return InferenceEngine(
        model,
        default_card(model.method),
        device=device,
        name=f"fresh compact {name} {label}(src_training/configs/{name}.json, random weights)",
    )


def model_info(engine, checkpoint: str | None) -> dict:
    m = engine.model
    caps = m.capabilities
    from .naive_sampling import has_naive_loop

    return {
        "name": engine.name,
        "source": f"checkpoint {checkpoint}"
        if checkpoint
        else "no --checkpoint given: freshly built compact default model with random weights",
        "method": m.method,
        "stage": m.config.get("stage"),
        "num_raters": m.num_raters,
        "latent_dim": int(caps.latent_dim),
        "parameters": int(sum(p.numel() for p in m.parameters())),
        "has_naive_loop": has_naive_loop(m),
        "backbone_widths": (m.config.get("backbone") or {}).get("widths"),
    }


def _model_input(engine, crop: np.ndarray, device):
    import torch

    x = torch.from_numpy(engine.normalizer(crop))[None, None]
    return x.expand(1, engine.model.in_channels, *x.shape[-2:]).contiguous().to(device)


# ----------------------------------------------------------------------------- sections
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


def synthetic_batch(b: int, k: int, size: int, device, seed: int = 0) -> dict:
    """Images in [0, 1] with a bright blob and K rater masks of that blob at different radii."""
    import torch

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    imgs, masks = np.empty((b, 1, size, size), np.float32), np.empty((b, k, size, size), np.float32)
    for i in range(b):
        cy, cx, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(0.08, 0.2) * size
        d = np.hypot(yy - cy, xx - cx)
        imgs[i, 0] = np.clip(0.3 + 0.4 * (d < r) + rng.normal(0, 0.05, (size, size)), 0, 1)
        for j in range(k):
            masks[i, j] = d < r * (0.8 + 0.15 * j)
    valid = np.ones((b, k), bool)
    if b > 1 and k > 1:
        valid[0, -1] = False  # one missing annotation, as in real multi-rater data
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return {"image": t(imgs), "masks": t(masks), "mask_valid": t(valid)}


def bench_training(device, s: Settings, precision=None) -> dict:
    """Section 3: one :meth:`src_training.trainer.Trainer.step` (forward + backward + Adam + schedule)
    per method (compact default configs)."""
    import torch

    from src_training.models import default_config
    from src_training.precision import FP32, prepare_model
    from src_training.trainer import Trainer

    precision = precision or FP32
    rows = []
    for name in s.train_configs:
        model = prepare_model(fresh_model(name).to(device).train(), precision)
        lr = float((default_config(name).get("train") or {}).get("lr", 5e-4))
        trainer = Trainer(model, lr=lr, total_steps=s.train_steps + s.train_warmup, device=device, precision=precision)
        batch = synthetic_batch(s.train_batch, model.num_raters, s.train_size, device)
        torch.manual_seed(0)
        st = measure(partial(trainer.step, batch), s.train_steps, s.train_warmup, device, unit="s")
        rows.append(
            {
                "config": name,
                "method": model.method,
                "stage": model.config.get("stage"),
                "trainable_parameters": int(sum(p.numel() for p in model.trainable_parameters())),
                "step": st,
                "images_per_s": s.train_batch / st["median"],
            }
        )
        _log(f"{device.type} train {name}: {st['median']:.3f} s/step")
        del model, trainer, batch
    return {
        "batch": s.train_batch,
        "size": s.train_size,
        "optimizer": "adam",
        "precision": precision.describe(),
        "rows": rows,
    }


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 2)
    except OSError:
        pass
    return None


def machine_info(devices) -> dict:
    import torch

    info = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": _mem_total_gb(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device_names": {},
    }
    from src_training.precision import cpu_bf16_native

    native, why = cpu_bf16_native()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["cpu_bf16"] = why
    for d in devices:
        info["device_names"][d.type] = (
            f"{torch.cuda.get_device_name(d)} (CUDA {torch.version.cuda})"
            if d.type == "cuda"
            else f"{info['cpu_model']} ({info['torch_threads']} torch thread(s))"
        )
    return info


def resolve_devices(choice: str | None) -> list:
    import torch

    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise ValueError("--device cuda: CUDA is not available on this machine")
    names = {
        "cpu": ["cpu"],
        "cuda": ["cuda"],
        "all": ["cpu", "cuda"] if cuda else ["cpu"],
        None: ["cpu", "cuda"] if cuda else ["cpu"],
    }[choice]
    return [torch.device(n) for n in names]


# ----------------------------------------------------------------------------- targets / markdown
def _miss(value: float, limit: float, upper: bool, unit: str = "") -> str:
    if (value <= limit) if upper else (value >= limit):
        return "PASS"
    if upper:
        return f"MISS by {value - limit:.3g}{unit} ({100 * (value / limit - 1):.0f}% over)"
    return f"MISS by {limit - value:.3g}{unit} ({100 * (1 - value / limit):.0f}% short)"


def evaluate_targets(result: dict) -> list[dict]:
    out = []
    for dev, r in result["devices"].items():
        smp = r.get("sampling") or {}
        if "n100_over_n1" in smp:
            v = smp["n100_over_n1"]
            out.append(
                {
                    "device": dev,
                    "target": f"sampling N=100 costs <= {TARGETS['n100_over_n1_max']:g}x N=1",
                    "measured": f"{v:.2f}x",
                    "value": v,
                    "limit": TARGETS["n100_over_n1_max"],
                    "result": _miss(v, TARGETS["n100_over_n1_max"], True, "x"),
                }
            )
        if "marginal_ms_per_sample" in smp:
            v = smp["marginal_ms_per_sample"]
            out.append(
                {
                    "device": dev,
                    "target": f"marginal cost per sample <= {TARGETS['marginal_ms_max']:g} ms ((N=100 - N=1) / 99)",
                    "measured": f"{v:.3f} ms",
                    "value": v,
                    "limit": TARGETS["marginal_ms_max"],
                    "result": _miss(v, TARGETS["marginal_ms_max"], True, " ms"),
                }
            )
        vol = (r.get("volume") or {}).get("whole")
        if vol and not result["settings"].get("quick"):
            v = vol["seconds"]["median"]
            out.append(
                {
                    "device": dev,
                    "target": f"64x512x512 volume, N=8 per slice, < {TARGETS['volume_whole_s_max']:g} s",
                    "measured": f"{v:.2f} s",
                    "value": v,
                    "limit": TARGETS["volume_whole_s_max"],
                    "result": _miss(v, TARGETS["volume_whole_s_max"], True, " s"),
                }
            )
        rows = {row["n"]: row for row in smp.get("rows", [])}
        if 100 in rows:
            sp = rows[100]["speedup"]
            out.append(
                {
                    "device": dev,
                    "target": f"vectorized >= {TARGETS['speedup_n100_min']:g}x faster than naive at N=100",
                    "measured": f"{sp:.1f}x" if sp is not None else "n/a",
                    "value": sp,
                    "limit": TARGETS["speedup_n100_min"],
                    "result": _miss(sp, TARGETS["speedup_n100_min"], False, "x")
                    if sp is not None
                    else "n/a (no per-sample loop for this method)",
                }
            )
        dec = (r.get("interactive") or {}).get("decode_one")
        if dec:
            out.append(
                {
                    "device": dev,
                    "target": "one latent re-decode < 10 ms",
                    "measured": f"{dec['median']:.2f} ms",
                    "value": dec["median"],
                    "limit": TARGETS["decode_ms_max"],
                    "result": _miss(dec["median"], TARGETS["decode_ms_max"], True, " ms"),
                }
            )
    return out


def _ms(st: dict | None, digits: int = 1) -> str:
    if not st:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(st['median'])} ({f.format(st['p10'])}–{f.format(st['p90'])}, n={st['n']})"


def side_by_side(result: dict) -> list[str]:
    """One table, one column per (device, precision) run: the headline medians of every section."""
    runs = result["devices"]
    if not runs:
        return []
    keys = list(runs)

    def cell(r, path, scale=1.0, digits=1):
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
            if v is None:
                return "n/a"
        return f"{v * scale:.{digits}f}"

    rows = []
    ns = [row["n"] for row in (runs[keys[0]].get("sampling") or {}).get("rows", [])]
    for n in ns:
        rows.append(
            (
                f"sample N={n} (ms)",
                [
                    next(
                        (
                            cell(row, ("vectorized", "median"))
                            for row in (runs[k].get("sampling") or {}).get("rows", [])
                            if row["n"] == n
                        ),
                        "n/a",
                    )
                    for k in keys
                ],
            )
        )
    rows.append(
        ("marginal ms per sample", [cell(runs[k], ("sampling", "marginal_ms_per_sample"), digits=3) for k in keys])
    )
    rows.append(("personas, all K (ms)", [cell(runs[k], ("interactive", "personalize", "median")) for k in keys]))
    rows.append(
        ("latent re-decode (ms)", [cell(runs[k], ("interactive", "decode_one", "median"), digits=2) for k in keys])
    )
    rows.append(
        ("volume whole slices (s)", [cell(runs[k], ("volume", "whole", "seconds", "median"), digits=2) for k in keys])
    )
    rows.append(("volume ROI (s)", [cell(runs[k], ("volume", "roi", "seconds", "median"), digits=2) for k in keys]))
    configs = [row["config"] for row in (runs[keys[0]].get("training") or {}).get("rows", [])]
    for c in configs:
        rows.append(
            (
                f"train step {c} (s)",
                [
                    next(
                        (
                            cell(row, ("step", "median"), digits=3)
                            for row in (runs[k].get("training") or {}).get("rows", [])
                            if row["config"] == c
                        ),
                        "n/a",
                    )
                    for k in keys
                ],
            )
        )
    L = [
        "## Precision side by side (medians)",
        "",
        "| measurement | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    L += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
    L += ["", "Precisions: " + "; ".join(f"`{k}` = {runs[k].get('precision', k)}" for k in keys), ""]
    return L


def to_markdown(result: dict) -> str:
    mi, mo, st = result["machine"], result["model"], result["settings"]
    busy = (mi.get("loadavg_start") or [0.0])[0]  # before this process did anything
    busy = busy if busy > 0.5 + 0.25 * (mi.get("usable_cores") or 1) else 0.0
    L = [
        "# multirater bench",
        "",
        f"- created: {result['created']}",
        f"- model: **{mo['name']}** — {mo['source']}; method `{mo['method']}`"
        + (f" stage {mo['stage']}" if mo.get("stage") else "")
        + f", {mo['parameters']:,} parameters, "
        f"K={mo['num_raters']} raters, latent {mo['latent_dim']}",
        f"- machine: {mi['cpu_model']}, {mi['logical_cores']} logical cores ({mi['usable_cores']} usable), "
        f"{mi['memory_gb']} GB; ISA {mi.get('cpu_capability', '?')}, {mi.get('cpu_bf16', '?')}; "
        f"torch {mi['torch']}, `torch.set_num_threads({mi['torch_threads']})`; "
        f"devices: {', '.join(f'{k}: {v}' for k, v in mi['device_names'].items())}",
        f"- load average at start / end: {_load(mi.get('loadavg_start'))} / {_load(mi.get('loadavg_end'))}"
        + (
            f" — **WARNING: the machine was busy (1-min load {busy:.1f} on {mi['usable_cores']} cores); other "
            "processes inflate these timings (much more with several torch threads): re-run on a quiet machine**"
            if busy
            else ""
        ),
        f"- settings: {'QUICK smoke-test settings (not comparable to the targets); ' if st['quick'] else ''}"
        f"{st['repeats']} timed run(s) after {st['warmup']} warm-up run(s), median (p10–p90); "
        f"2D image {st['image_size']}x{st['image_size']}, batch 1",
        "",
    ]
    if result.get("targets"):
        L += ["## Targets", ""]
        if st["quick"]:
            L += ["_Quick smoke-test settings: these rows show the machinery works, not whether a target is met._", ""]
        L += ["| device | target | measured | result |", "|---|---|---|---|"]
        L += [f"| {t['device']} | {t['target']} | {t['measured']} | {t['result']} |" for t in result["targets"]]
        L.append("")
    L += side_by_side(result)
    for dev, r in result["devices"].items():
        L += [f"## {dev}: {mi['device_names'].get(r.get('device', dev), dev)}, {r.get('precision', 'fp32')}", ""]
        if r.get("engine_warnings"):
            L += [f"**WARNING: the engine fell back ({r['engine_device']}): {'; '.join(r['engine_warnings'])}**", ""]
        smp = r.get("sampling")
        if smp:
            L += [
                f"### 1. Sampling latency, one {st['image_size']}x{st['image_size']} image (ms)",
                "",
                "| N | vectorized `sample` | naive loop | speed-up | vectorized ms/sample | "
                "reference code (2-core CPU) |",
                "|---:|---|---|---:|---:|---:|",
            ]
            comparable = r.get("device", dev) == "cpu" and st["image_size"] == 128 and not st["quick"]
            ref = {10: ANCHORS["sample_n10_ms"], 100: ANCHORS["sample_n100_ms"]} if comparable else {}
            for row in smp["rows"]:
                sp = f"{row['speedup']:.1f}x" if row["speedup"] is not None else "n/a"
                L.append(
                    f"| {row['n']} | {_ms(row['vectorized'])} | {_ms(row['naive'])} | {sp} | "
                    f"{row['vectorized']['median'] / row['n']:.2f} | "
                    f"{'~%.0f' % float(ref[row['n']]) if row['n'] in ref else ''} |"
                )
            L += [
                "",
                f"- `encode` (the once-per-image part: backbone, prior, projection): {_ms(smp['encode'])} ms; "
                f"backbone forward: {_ms(smp.get('backbone'))} ms",
                f"- N=100 / N=1: {smp.get('n100_over_n1', float('nan')):.2f}x; marginal cost "
                f"{smp.get('marginal_ms_per_sample', float('nan')):.3f} ms per extra sample; "
                f"vectorized vs naive max |diff| at N=10: {smp['check_n10_max_abs_diff']:.2e} (same draws)",
                f"- anchor (reference D-Persona code, 2-core CPU): ~{ANCHORS['sample_n10_ms']:.0f} ms for N=10, "
                f"~{ANCHORS['sample_n100_ms']:.0f} ms for N=100, "
                f"backbone forward ~{ANCHORS['backbone_forward_ms']:.0f} ms",
                f"- model-level calls in {smp.get('precision', 'fp32')}; naive runs interleaved with vectorized runs, capped by a time "
                "budget (n shows the runs)",
                "",
            ]
        it = r.get("interactive")
        if it:
            k = it.get("personalize_k")
            L += [
                "### 2. Interactive operations (ms)",
                "",
                "| operation | median (p10–p90) | target |",
                "|---|---|---|",
            ]
            rows = [
                ("latent-explorer re-decode, `model.decode(ctx, z)`, one z", it.get("decode_one"), "< 10 ms"),
                ("same through the engine (+ sigmoid, unpad, to numpy)", it.get("engine_decode_one"), ""),
                (f"per-persona output, `personalize`, K={k}", it.get("personalize"), ""),
                (
                    f"D-Persona stage II `personalize` (heads fresh on these weights, "
                    f"{it.get('personalize_stage2_n_infer')} prior keys), K={k}",
                    it.get("personalize_stage2"),
                    "",
                ),
                ("engine uncertainty maps (N=16)", it.get("engine_uncertainty_n16"), ""),
            ]
            L += [f"| {a} | {_ms(b)} | {c} |" for a, b, c in rows if b]
            L.append("")
        vol = r.get("volume")
        if vol:
            L += [
                f"### 2b. Volume through the engine, CT-like {'x'.join(map(str, st['volume_shape']))} HU, "
                f"N={vol['samples']} samples/slice, {vol['batch_slices']} slices per batch"
                + f", {vol.get('precision', 'fp32')}",
                "",
                "| run | region (z, y, x) | seconds | slices/s | ms/slice |",
                "|---|---|---:|---:|---:|",
            ]
            for key, label in (("whole", "whole slices"), ("roi", "centred ROI")):
                v = vol[key]
                L.append(
                    f"| {label} | {'x'.join(map(str, v['region']))} | {_ms(v['seconds'], 2)} | "
                    f"{v['slices_per_s']:.2f} | {v['ms_per_slice']:.0f} |"
                )
            L.append("")
        tr = r.get("training")
        if tr:
            L += [
                f"### 3. Training step (forward + backward + Adam), batch {tr['batch']}, {tr['size']}x{tr['size']}"
                + f", {tr.get('precision', 'fp32')}",
                "",
                "| config | trainable params | s/step median (p10–p90) | images/s | anchor |",
                "|---|---:|---|---:|---|",
            ]
            for row in tr["rows"]:
                anchor = (
                    f"reference code ~{ANCHORS['dpersona_stage1_train_step_s']} s (2-core CPU)"
                    if row["config"] == "dpersona"
                    and r.get("device", dev) == "cpu"
                    and not st["quick"]
                    and (tr["batch"], tr["size"]) == (12, 128)
                    else ""
                )
                L.append(
                    f"| {row['config']} | {row['trainable_parameters']:,} | {_ms(row['step'], 3)} | "
                    f"{row['images_per_s']:.1f} | {anchor} |"
                )
            L.append("")
    L += [
        "## 4. Peak resident memory (process, `ru_maxrss`, cumulative)",
        "",
        "| after | peak RSS MB | CUDA peak allocated MB (this section) | load avg (1 min, incl. this run) |",
        "|---|---:|---:|---:|",
    ]
    for m in result["memory"]:
        cu = f"{m['cuda_peak_mb']:.0f}" if m.get("cuda_peak_mb") is not None else ""
        la = f"{m['loadavg_1min']:.2f}" if m.get("loadavg_1min") is not None else ""
        L.append(f"| {m['after']} | {m['peak_rss_mb']:.0f} | {cu} | {la} |")
    L += [
        "",
        "ru_maxrss never goes down: each row is the process peak so far. Section 1 includes the naive "
        "reference loop, whose transient allocations at large N are far larger than the vectorized path's.",
    ]
    if result.get("skipped"):
        L += ["", "Skipped: " + ", ".join(result["skipped"]) + "."]
    return "\n".join(L) + "\n"


def _load(v) -> str:
    return "n/a" if not v else "/".join(f"{x:.2f}" for x in v)


# ----------------------------------------------------------------------------- driver
def device_precisions(devices, precisions=("fp32", "auto")) -> list:
    """(device, Precision) pairs to time, side by side: each choice resolved, duplicates dropped."""
    from src_training.precision import resolve_precision

    pairs, seen = [], set()
    for dev in devices:
        for choice in precisions:
            prec = resolve_precision(choice, dev)
            if (dev.type, prec.name) not in seen:
                seen.add((dev.type, prec.name))
                pairs.append((dev, prec))
    return pairs


def benchmark(
    checkpoint: str | None = None,
    devices=None,
    settings: Settings | None = None,
    skip_train: bool = False,
    skip_3d: bool = False,
    method: str = "dpersona",
    argv=None,
    engine=None,
    precisions=("fp32", "auto"),
) -> dict:
    """Run every section on every device; returns the JSON-able result (targets evaluated).
    ``engine``: an already built :func:`build_engine` for ``checkpoint`` / ``method`` (else built here)."""
    import torch

    s = settings or Settings()
    devices = devices or resolve_devices(None)
    base = engine or build_engine(checkpoint, method, device="cpu")
    result = {
        "schema": SCHEMA,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": argv,
        "settings": {**asdict(s), "devices": [d.type for d in devices]},
        "machine": machine_info(devices),
        "model": model_info(base, checkpoint),
        "anchors": ANCHORS,
        "target_limits": TARGETS,
        "devices": {},
        "memory": [],
        "skipped": [],
    }
    _log(
        f"model: {base.name} ({result['model']['source']}); torch threads {torch.get_num_threads()}; "
        f"devices {', '.join(d.type for d in devices)}{'; QUICK settings' if s.quick else ''}"
    )
    if skip_3d:
        result["skipped"].append("3D volume (--skip-3d)")
    if skip_train:
        result["skipped"].append("training (--skip-train)")
    if "cuda" not in [d.type for d in devices] and not torch.cuda.is_available():
        result["skipped"].append("cuda (not available on this machine)")
    volume = None if skip_3d else ct_like_volume(s.volume_shape)

    def mem(label, dev, run=None):
        cu = None
        if dev.type == "cuda":
            cu = torch.cuda.max_memory_allocated(dev) / 1024**2
            torch.cuda.reset_peak_memory_stats(dev)
        result["memory"].append(
            {
                "after": label if label.startswith("start") else f"{run or dev.type}: {label}",
                "peak_rss_mb": peak_rss_mb(),
                "cuda_peak_mb": cu,
                "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            }
        )

    from napari_multirater.inference.engine import InferenceEngine

    mem("start (model and test volume built)", torch.device("cpu"))
    for dev, prec in device_precisions(devices, precisions):
        key = f"{dev.type} {prec.name}"
        r = result["devices"][key] = {"device": dev.type, "precision": prec.describe()}
        _log(f"--- {key}: {prec.describe()}")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        engine = InferenceEngine(base.model, base.card, device=dev, name=base.name, precision=prec.name)
        r["sampling"] = bench_sampling(engine, dev, s)
        mem("1 sampling", dev, key)
        r["interactive"] = bench_interactive(engine, dev, s)
        mem("2 interactive", dev, key)
        if volume is not None:
            r["volume"] = bench_volume(engine, dev, s, volume)
            mem("2b volume", dev, key)
        if not skip_train:
            r["training"] = bench_training(dev, s, prec)
            mem("3 training", dev, key)
        r["engine_device"], r["engine_warnings"] = engine.device_message, list(engine.warnings)
        if dev.type == "cuda":
            base.model.to("cpu")
            torch.cuda.empty_cache()
    base.model.to(memory_format=torch.contiguous_format)
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["targets"] = evaluate_targets(result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    from napari_multirater.argtypes import POSITIVE_INT, int_at_least

    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT_OR_NAME",
        help="trained model to time (file or bundled/cached name); default: a freshly built compact "
        "D-Persona stage I with random weights",
    )
    p.add_argument("--out", default=None, help="folder for bench.json and bench.md (created); default: print only")
    p.add_argument("--overwrite", action="store_true", help="replace bench.json / bench.md in --out")
    p.add_argument(
        "--device", default=None, choices=("cpu", "cuda", "all"), help="default: cpu, and cuda too when available"
    )
    p.add_argument(
        "--repeats", type=POSITIVE_INT, default=None, help="timed runs per measurement (default 20; --quick 3)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small settings for smoke tests (64x64 image, N<=100, tiny volume, batch 2)",
    )
    p.add_argument("--skip-train", action="store_true", help="skip the training-step section")
    p.add_argument("--skip-3d", action="store_true", help="skip the 3D volume runs")
    p.add_argument(
        "--threads", type=POSITIVE_INT, default=None, help="torch.set_num_threads (default: torch's default)"
    )
    p.add_argument(
        "--method",
        default="dpersona",
        help="method of the fresh model when no --checkpoint "
        "(a config name in src_training/configs; dpersona = stage I)",
    )
    p.add_argument("--image-size", type=int_at_least(16), default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--volume-samples", type=POSITIVE_INT, default=None, help="samples per slice in the volume runs (default 8)"
    )
    p.add_argument(
        "--precision",
        default="fp32,auto",
        help="comma-separated precisions timed side by side: auto, fp32, bf16 (default fp32,auto; "
        "auto = bf16 + channels_last where the CPU/GPU computes bf16 natively)",
    )
    p.add_argument(
        "--train-configs", default=None, help=f"comma-separated configs to time (default: {','.join(TRAIN_CONFIGS)})"
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark sampling, interactive ops, volumes and training on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    try:
        devices = resolve_devices(args.device)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    s = Settings.from_args(args)
    precisions = tuple(c.strip().lower() for c in str(args.precision).split(",") if c.strip())
    bad = [c for c in precisions if c not in ("auto", "fp32", "bf16")]
    if bad or not precisions:
        print(f"bench: --precision takes auto, fp32, bf16 (comma-separated), got {args.precision!r}", file=sys.stderr)
        return 2
    from napari_multirater.inference.engine import ModelLoadError
    from napari_multirater.io.outputs import OutputError, check_output_files

    if args.out:  # before any work: never replaces the checkpoint or, without --overwrite, a result
        try:
            files = [Path(args.out) / "bench.json", Path(args.out) / "bench.md"]
            check_output_files(files, [args.checkpoint], overwrite=getattr(args, "overwrite", False))
        except OutputError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
    try:
        base = build_engine(args.checkpoint, args.method, device="cpu")
    except (ModelLoadError, ValueError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    try:
        result = benchmark(
            args.checkpoint,
            devices,
            s,
            args.skip_train,
            args.skip_3d,
            args.method,
            argv=getattr(args, "argv", None) or sys.argv[1:],
            engine=base,
            precisions=precisions,
        )
    finally:
        torch.set_num_threads(threads)  # the Python entry point leaves the process as it found it
    md = to_markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from napari_multirater.io.atomic import atomic_write_text

        atomic_write_text(out / "bench.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(out / "bench.md", md)
        _log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    print(md)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="multirater bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
