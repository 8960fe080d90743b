"""Issue 30 measurements in one run: the spatial (3x3) Fcomb's sampling before / after the faster
exact evaluation, and the per-sample cost of head designs that would need retraining.

Part A times ``model.sample`` of the shipped models on the bench's 128x128 crop, N = 1, 10, 100, for
``before`` (the previous inference path: plain conv2d, chunks of 16 samples) and ``after`` (oneDNN
fused conv + bias + ReLU in fp32, chunks of 4 samples), fp32 and bf16 autocast, all variants
interleaved run by run (medians). Part B times one batched decode of 32 samples per head design
(random weights: the cost does not depend on them) and reports ms per sample. Part C asks whether a
band of the image could be skipped exactly: interval bounds over N=100 prior draws per LIDC slice
(``--lidc`` npz, the CI fixture by default) give the fraction of hidden units whose ReLU state is
the same for every draw, and the fraction of output pixels whose whole receptive field is such.
Not a test; prints markdown. Usage: ``PYTHONPATH=. python tools/fcomb_head_timings.py [--threads 1] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import src_training.models.fcomb as fcomb
from napari_multirater.inference.engine import InferenceEngine
from src_training.precision import autocast, prepare_input, prepare_model, resolve_precision
from src_training.tools.bench_common import _model_input
from src_training.tools.bench_inputs import image_crop


class _OldPath:
    """Within the block the k x k Fcomb runs its previous inference path (conv2d, 16-sample chunks)."""

    def __enter__(self):
        self.saved = fcomb._SPATIAL_CHUNK, fcomb._fused_conv_available
        fcomb._SPATIAL_CHUNK, fcomb._fused_conv_available = 16, lambda t: False

    def __exit__(self, *exc):
        fcomb._SPATIAL_CHUNK, fcomb._fused_conv_available = self.saved


def _interleaved(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
    times: dict = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: 1000.0 * float(np.median(v)) for k, v in times.items()}


def part_a(rounds: int) -> list[str]:
    rows = []
    for name in ("lidc_dpersona", "lidc_pionono"):
        eng = InferenceEngine.load(name, device="cpu", threads=None)
        x0 = _model_input(eng, image_crop(128), "cpu")
        spatial = getattr(getattr(eng.model, "fcomb", None), "kernel_size", 1) > 1
        for n in (1, 10, 100):
            fns = {}
            for p in ("fp32", "bf16"):
                prec = resolve_precision(p, "cpu")
                for old in (True, False) if spatial else (False,):

                    def run(prec=prec, old=old, n=n, eng=eng, x0=x0):
                        prepare_model(eng.model, prec)
                        with _OldPath() if old else _Null(), torch.inference_mode(), autocast(prec, "cpu"):
                            eng.model.sample(prepare_input(x0, prec), n, torch.Generator().manual_seed(0))

                    fns[(p, "before" if old else "after")] = run
            med = _interleaved(fns, rounds)
            for (p, when), ms in med.items():
                rows.append((name, p, when, n, ms))
    out = [
        "| model | precision | path | N=1 (ms) | N=10 (ms) | N=100 (ms) | marginal ms/sample |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    keys = sorted({(m, p, w) for m, p, w, _, _ in rows}, key=lambda k: (k[0], k[1], k[2] != "before"))
    for m, p, w in keys:
        v = {n: ms for mm, pp, ww, n, ms in rows if (mm, pp, ww) == (m, p, w)}
        out.append(f"| {m} | {p} | {w} | {v[1]:.1f} | {v[10]:.1f} | {v[100]:.1f} | {(v[100] - v[1]) / 99:.3f} |")
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def part_b(rounds: int, n: int = 32, hid: int = 16, size: int = 128) -> list[str]:
    """ms per sample of the per-sample part of candidate heads (random weights, bf16 and fp32)."""
    torch.manual_seed(0)
    feats, z = torch.randn(1, 16, size, size), torch.randn(1, n, 6)
    k3 = fcomb.Fcomb(16, 6, hid, 4, kernel_size=3).eval()
    k1 = fcomb.Fcomb(16, 6, hid, 4, kernel_size=1).eval()
    half = fcomb.Fcomb(16, 6, hid, 4, kernel_size=3).eval()
    dw = [torch.nn.Conv2d(hid, hid, 3, padding=1, groups=hid) for _ in range(2)]
    pw = [torch.nn.Conv2d(hid, hid, 1) for _ in range(2)]
    proj3, proj1 = k3.project(feats), k1.project(feats)
    proj_half = half.project(F.avg_pool2d(feats, 2))
    wz = k3.layers[0].weight[:, 16:, 0, 0]

    def separable():
        h = torch.relu(proj3[:, None] + (z @ wz.t())[:, :, None]).view(n, size, size, hid).permute(0, 3, 1, 2)
        for d, p in zip(dw, pw):
            h = torch.relu(p(d(h)))
        return k3.last_layer(h)

    designs = {
        "3x3 hidden layers, full resolution (shipped)": lambda: k3.decode(proj3, z, (size, size)),
        "1x1 hidden layers (paper Fcomb, lidc_pionono-like)": lambda: k1.decode(proj1, z, (size, size)),
        "3x3 hidden layers at half resolution (+ bilinear up)": lambda: F.interpolate(
            half.decode(proj_half, z, (size // 2, size // 2)), size=(size, size), mode="bilinear"
        ),
        "depthwise 3x3 + pointwise 1x1 (separable)": separable,
    }
    fns = {}
    for p in ("fp32", "bf16"):
        for name, fn in designs.items():

            def run(fn=fn, p=p):
                with torch.inference_mode(), autocast(resolve_precision(p, "cpu"), "cpu"):
                    fn()

            fns[(name, p)] = run
    med = _interleaved(fns, rounds)
    out = [
        f"| head design (per-sample part, {size}x{size}, {n} samples per call) | fp32 ms/sample | bf16 ms/sample |",
        "|---|---:|---:|",
    ]
    for name in designs:
        out.append(f"| {name} | {med[(name, 'fp32')] / n:.3f} | {med[(name, 'bf16')] / n:.3f} |")
    return out


def part_c(npz: str, n: int = 100, slices: int = 8) -> list[str]:
    eng = InferenceEngine.load("lidc_dpersona", device="cpu", precision="fp32", threads=None)
    m, fc = eng.model, eng.model.fcomb
    d = np.load(npz)
    rows = []
    with torch.inference_mode():
        for i in np.linspace(0, len(d["images"]) - 1, slices).astype(int):
            x = torch.from_numpy(d["images"][i : i + 1].astype(np.float32) / 255.0)[:, None]
            ctx = m.encode(x)
            zb = (
                m._prior_draws(ctx, n, torch.Generator().manual_seed(0))[0]
                @ fc.layers[0].weight[:, fc.features :, 0, 0].t()
            )
            a = ctx["proj"][0].reshape(*x.shape[-2:], -1).permute(2, 0, 1)
            lo, hi = a + zb.min(0).values[:, None, None], a + zb.max(0).values[:, None, None]
            stable = [(lo > 0) | (hi <= 0)]
            for layer in fc.layers[1:]:  # interval propagation: centre through W, radius through |W|
                c, r = (lo.relu() + hi.relu()) / 2, (hi.relu() - lo.relu()) / 2
                cc, rr = layer(c[None])[0], F.conv2d(r[None], layer.weight.abs(), padding=layer.padding)[0]
                lo, hi = cc - rr, cc + rr
                stable.append((lo > 0) | (hi <= 0))
            k = fc.kernel_size
            need = torch.zeros(x.shape[-2:], dtype=torch.bool)
            for li, st in enumerate(stable):  # an output pixel needs every unit of its receptive field fixed
                rad = (k // 2) * (len(stable) - 1 - li)
                bad = (~st.all(0)).float()[None, None]
                need |= (F.max_pool2d(bad, 2 * rad + 1, 1, rad)[0, 0] > 0) if rad else bad[0, 0] > 0
            rows.append([float(st.float().mean()) for st in stable] + [1.0 - float(need.float().mean())])
    r = np.asarray(rows).mean(0)
    return [
        f"Part C ({slices} LIDC slices of {npz}, N={n} prior draws): hidden units with one ReLU state for all draws, "
        + ", ".join(f"layer {i + 1}: {v:.1%}" for i, v in enumerate(r[:-1]))
        + f"; output pixels that could be skipped exactly: {r[-1]:.2%}"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--lidc", default="../shared/data/lidc-slices/ci-fixture.npz")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load = os.getloadavg()[0]
    lines = part_a(a.rounds) + [""] + part_b(a.rounds) + [""] + part_c(a.lidc)
    print(f"torch threads {a.threads}; 1-min load {load:.2f} at start / {os.getloadavg()[0]:.2f} at end (2 cores)\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
