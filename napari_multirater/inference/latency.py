"""Latency benchmark of the inference engine on this machine (not a test).

    python -m napari_multirater.inference.latency [--checkpoint X] [--method prob_unet] [--threads 2]

Without ``--checkpoint`` it builds the compact default config of ``--method`` (src_training/
configs/<method>.json; random weights, phantom HU card). Reports the median of ``--repeats`` runs
after one warm-up (the big volume: one cold run): samples N=16 and N=100 on a 128x128 crop, one latent re-decode, personas for K
raters, the 24x96x96 3D phantom and a 64x512x512 random volume (whole slices).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _timeit(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build_engine(checkpoint: str | None, method: str, device: str):
    from .engine import InferenceEngine

    if checkpoint:
        return InferenceEngine.load(checkpoint, device=device)
    import torch

    from src_training.models import build_model, default_config

    name = "dpersona_stage2" if method == "dpersona" else method
    cfg = {k: v for k, v in default_config(name).items() if not k.startswith("_") and k != "train"}
    torch.manual_seed(0)
    card = {"method": method, "intensity": {"window": [-1000.0, 400.0]}, "input": {"pad_multiple": 16}}
    return InferenceEngine(build_model(cfg), card, device=device, name=f"{name} (compact default, random weights)")


def run(engine, repeats: int = 5, big: bool = True, samples_volume: int = 8) -> list[tuple[str, float]]:
    from ..datasets.phantom import make_phantom_case

    case2 = make_phantom_case(0, ndim=2)
    crop = case2.image[:128, :128]
    rows = [("sample N=16, 128x128", _timeit(lambda: engine.sample(crop, 16, seed=0), repeats)),
            ("sample N=100, 128x128", _timeit(lambda: engine.sample(crop, 100, seed=0), repeats))]
    caps = engine.capabilities
    if caps.latent_dim:
        enc = engine.encode(crop)
        z = engine.latent_samples(enc, 1, seed=0)
        rows.append(("explorer re-decode (1 latent), 128x128", _timeit(lambda: engine.decode(enc, z), repeats * 4)))
        rows.append(("explorer encode (once per image), 128x128", _timeit(lambda: engine.encode(crop), repeats)))
    rows.append((f"personas K={len(engine.rater_names)}, 128x128", _timeit(lambda: engine.personas(crop, seed=0), repeats)))
    rows.append(("uncertainty (N=16, all maps), 128x128", _timeit(lambda: engine.uncertainty(crop, 16, seed=0), repeats)))
    case3 = make_phantom_case(0, ndim=3)
    rows.append((f"3D phantom {case3.image.shape}, N={samples_volume} + uncertainty",
                 _timeit(lambda: engine.predict_volume(case3.image, case3.geometry, samples=samples_volume,
                                                       uncertainty=True), max(repeats // 2, 1))))
    if big:
        vol = np.random.default_rng(0).normal(-500, 300, (64, 512, 512)).astype(np.float32)
        rows.append((f"random volume {vol.shape}, N={samples_volume}, whole slices",
                     _timeit(lambda: engine.predict_volume(vol, samples=samples_volume), 1, warmup=False)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_multirater.inference.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--method", default="prob_unet")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples-volume", type=int, default=8)
    p.add_argument("--no-big", action="store_true", help="skip the 64x512x512 volume")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    engine = build_engine(args.checkpoint, args.method, args.device)
    n_params = sum(t.numel() for t in engine.model.parameters())
    print(f"model: {engine.name} ({engine.model.method}, {n_params:,} parameters); device {engine.device_message}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, sec in run(engine, args.repeats, not args.no_big, args.samples_volume):
        print(f"{name:55s} {sec * 1000:10.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
